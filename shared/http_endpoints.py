"""Prometheus metrics and Kubernetes probes over HTTP: /metrics, /healthz (liveness), /readyz (readiness)."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


def start_http_endpoints(
    port: int, ready: Callable[[], bool], alive: Callable[[], bool] = lambda: True, host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Serve in a daemon thread; return the server (its `server_port` is the bound port when `port` is 0)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = alive()
                self._answer(200 if ok else 503, b"ok\n" if ok else b"not alive\n")
            elif self.path == "/readyz":
                ok = ready()
                self._answer(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._answer(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="http-endpoints", daemon=True).start()
    return server


def scrape_metrics(port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> str:
    """A process's /metrics page, as Prometheus would read it."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:
        return str(response.read().decode())


def wait_until_ready(port: int, alive: Callable[[], bool], timeout_s: float, host: str = "127.0.0.1") -> bool:
    """Poll a process's /readyz until it answers 200 (True), or the process dies or time runs out (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False
