"""Constants shared by the test modules (kept out of conftest.py, whose name benches/ shares)."""

NOW = 1_800_000_000.0


class Clock:
    """A controllable Unix clock for the simulator and the clients."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
