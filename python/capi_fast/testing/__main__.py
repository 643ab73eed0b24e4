"""``python -m capi_fast.testing --port N``: serve the CAPI simulator until interrupted."""

from __future__ import annotations

import argparse
import threading

from capi_fast.testing.simulator import CapiSimulator


def main() -> None:
    """Parses arguments and serves until Ctrl-C."""
    p = argparse.ArgumentParser(prog="python -m capi_fast.testing", description="serve the CAPI simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token-lifetime", type=float, default=3600.0)
    args = p.parse_args()
    with CapiSimulator(host=args.host, port=args.port, token_lifetime=args.token_lifetime) as sim:
        print(f"CAPI simulator at {sim.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
