"""Constants shared by the test modules (kept out of conftest.py, whose name benches/ shares)."""

from __future__ import annotations

import subprocess
from typing import Any

NOW = 1_800_000_000.0


class Clock:
    """A controllable Unix clock for the simulator and the clients."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stop(proc: subprocess.Popen[Any], grace: float = 30.0) -> None:
    """Terminates a child process, killing it if it has not exited after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
