"""The console behind a proxy: X-Forwarded-For names the client only when it comes from a configured proxy.

The login throttle counts attempts per user and client address; behind an ingress every client has the
ingress's address unless its forwarded header is trusted, and a header trusted from anyone would let a
guesser name a new address at every attempt. Served by a real uvicorn with the options `fleetwatch console`
uses.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from shared.console_auth import Role
from tests.console_support import PASSWORD, make_services, serving
from workers.console import create_app, proxy_options

PROXY = "127.0.0.2"
"""Where the requests come from: a loopback address uvicorn's own default (127.0.0.1) does not trust."""


def attempt(url: str, forwarded_for: str, password: str = "wrong!", source: str = PROXY) -> int:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as client:
        answer = client.post(
            f"{url}/api/login",
            json={"username": "olga", "password": password},
            headers={"X-Forwarded-For": forwarded_for},
        )
    return answer.status_code


@pytest.mark.parametrize("trusted", [[PROXY], ["127.0.0.0/8", "10.42.7.0/24"]], ids=["address", "networks"])
def test_a_trusted_proxys_forwarded_address_is_the_client_the_throttle_counts(
    trusted: list[str], tmp_path: Path
) -> None:
    services = make_services(f"sqlite:///{tmp_path}/console.db", trusted_proxies=trusted)
    services.users.put("olga", PASSWORD, Role.OPERATOR)
    with serving(create_app(services), **proxy_options(services.settings)) as url:
        for _ in range(services.settings.login_max_failures):
            assert attempt(url, "203.0.113.5") == 401
        assert attempt(url, "203.0.113.5", PASSWORD) == 429, "the guessing client is paused"
        assert attempt(url, "203.0.113.6", PASSWORD) == 200, "another client behind the same proxy is not"


def test_without_trusted_proxies_a_forwarded_header_names_no_one(tmp_path: Path) -> None:
    services = make_services(f"sqlite:///{tmp_path}/console.db")
    services.users.put("olga", PASSWORD, Role.OPERATOR)
    with serving(create_app(services), **proxy_options(services.settings)) as url:
        for index in range(services.settings.login_max_failures):  # from the address uvicorn trusts by default
            assert attempt(url, f"203.0.113.{index}", source="127.0.0.1") == 401  # a new address at every guess...
        assert attempt(url, "198.51.100.1", PASSWORD, source="127.0.0.1") == 429, "...is still the one peer, paused"
