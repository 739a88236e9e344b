"""Where a worker's time goes, function by function: py-spy attached from outside to the real process.

py-spy samples the running `fleetwatch worker` without changing it (a profiler inside the process
would slow the loop it measures). The raw output is one collapsed stack per line with its sample
count; the summary is self time per function and total time per project function (shared/, workers/).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")
PROJECT_FOLDERS = ("/shared/", "/workers/")


def py_spy() -> str | None:
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


@dataclass
class Profiler:
    """`py-spy record` on one process until stopped (or `max_seconds`), in raw collapsed-stack format."""

    pid: int
    output: Path
    max_seconds: float

    def __enter__(self) -> Profiler:
        binary = py_spy()
        if binary is None:
            raise FileNotFoundError("py-spy is not installed")
        command = [binary, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "100",
                   "--duration", str(int(self.max_seconds)), "--output", str(self.output)]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *_: object) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _label(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = "/" + match["file"].lstrip("/")  # py-spy shortens paths under the working directory
    for folder in PROJECT_FOLDERS:
        if folder in file:
            return f"{match['function']} ({folder.lstrip('/')}{file.rsplit(folder, 1)[1]})"
    return f"{match['function']} ({Path(file).name})"


def summarize(raw_file: Path, top: int = 15) -> dict[str, Any]:
    """Self and project-inclusive shares of the samples, largest first."""
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_label(frame) for frame in stack.split(";") if frame.strip()]
        if not frames:
            continue
        total += count
        self_samples[frames[-1]] += count
        for frame in set(frames):
            if frame.split(" (", 1)[-1].startswith(("shared/", "workers/")):
                inclusive[frame] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self": [{"function": f, "share": round(n / total, 3)} for f, n in self_samples.most_common(top)],
        "project_inclusive": [{"function": f, "share": round(n / total, 3)} for f, n in inclusive.most_common(top)],
    }
