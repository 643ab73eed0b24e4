"""The daemon as a child process, for the tests that run ``capi-fast run``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CAPI_FAST = [sys.executable, "-m", "capi_fast.cli"]


def until(what: str, check: Callable[[], bool], limit: float = 30.0) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling a separate process's effect on the kernel
    return time.monotonic() - start


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class Running:
    """The daemon as a child process; its log is read at the end."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.log = config.with_suffix(".log")
        self.out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*CAPI_FAST, "run", "--config", str(config)], stdout=self.out, stderr=subprocess.STDOUT, env=env
        )

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.out.close()
        return code
