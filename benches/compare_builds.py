"""Two builds of capi_fast side by side in one run: the hot paths (``hot_paths.py``) under each.

Usage: ``python benches/compare_builds.py NAME=PYTHON NAME=PYTHON [--rounds R]``, each PYTHON an
interpreter whose venv has one build installed (``make bench-abi3`` makes them: the stable-ABI
wheel and the build for this one interpreter). The builds run in alternation, one fresh process
per round and build, so drift on the machine falls on both; the table has each build's median
over the rounds (ns per address or decision) and the ratio of the second build to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HOT_PATHS = Path(__file__).resolve().parent / "hot_paths.py"
LABELS = {
    "single": "lookup(), one address",
    "remediator": "engine answer (Remediator.get)",
    "batch_str": "lookup_many(list of str)",
    "batch_packed": "lookup_many(packed IPv4)",
    "stream": "startup stream parsed + applied",
}


def run_once(python: str) -> dict[str, object]:
    """One fresh process of ``python`` timing the hot paths; its JSON line."""
    done = subprocess.run([python, str(HOT_PATHS)], capture_output=True, text=True, check=False, cwd="/")
    if done.returncode != 0:
        raise SystemExit(f"{python} {HOT_PATHS.name} failed:\n{done.stderr.strip()}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs=2, metavar="NAME=PYTHON")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if any("=" not in b for b in args.builds):
        parser.error("each build is NAME=PYTHON")
    # abspath, not resolve(): a venv's python is a symlink out of the venv.
    builds = [(name, os.path.abspath(python)) for name, python in (b.split("=", 1) for b in args.builds)]
    samples: dict[str, dict[str, list[float]]] = {name: {k: [] for k in LABELS} for name, _ in builds}
    natives: dict[str, str] = {}
    for r in range(args.rounds):
        for name, python in builds if r % 2 == 0 else reversed(builds):
            out = run_once(python)
            natives[name] = f"{out['native']} on CPython {out['python']}"
            ns = out["ns"]
            assert isinstance(ns, dict)
            for k in LABELS:
                samples[name][k].append(float(ns[k]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    (a, _), (b, _) = builds
    for name, native in natives.items():
        print(f"{name}: {native}")
    print(f"| hot path (ns per item, median of {args.rounds}) | {a} | {b} | {b}/{a} |")
    print("|---|---|---|---|")
    for k, label in LABELS.items():
        ma, mb = statistics.median(samples[a][k]), statistics.median(samples[b][k])
        print(f"| {label} | {ma:.1f} | {mb:.1f} | {mb / ma:.3f} |")


if __name__ == "__main__":
    main()
