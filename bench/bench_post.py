"""One-shot latency: `contribute.py post` from process start to exit, next to a bare
websocket-client script doing the same exchange (bench/bare_post.py), and to the floor of the
project's shape (bench/floor_post.py: the bare exchange after compiling contribute.py and
importing click, which every `python contribute.py` pays before any of its code runs). Also
timed: `python -m contribute`, README's form for one-shot runs from cron or a loop, which Python
runs from the module's cached bytecode (written here first, into the project's __pycache__, as
Python itself does on a first run where it may write) instead of compiling it on every run.

All run against one standalone emulator on loopback; the figure is the median
wall time of --runs alternating runs of each.

    python bench/bench_post.py [--runs 30]
"""
from __future__ import annotations

import argparse
import os
import platform
import py_compile
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_emulator import start_emulator  # noqa: E402


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or "ACK" not in proc.stdout:
        raise SystemExit(f"{cmd[1]} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    emulator, url, port = start_emulator()
    try:
        post = ["--config", os.devnull, "--host", "127.0.0.1", "--port", port, "--user", "bench", "post",
                "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=22.1"]
        py_compile.compile(str(ROOT / "contribute.py"), doraise=True)      # the cache that -m reads
        commands = {"contribute.py post": [sys.executable, str(ROOT / "contribute.py"), *post],
                    "bare websocket-client": [sys.executable, str(ROOT / "bench" / "bare_post.py"), url],
                    "floor of the shape": [sys.executable, str(ROOT / "bench" / "floor_post.py"), url],
                    "python -m contribute": [sys.executable, "-m", "contribute", *post]}
        for cmd in commands.values():                  # warm the file cache
            timed(cmd)
        results: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                results[name].append(timed(cmd))
    finally:
        emulator.terminate()
        emulator.wait(10)
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    medians = {name: statistics.median(times) * 1000 for name, times in results.items()}
    for name, ms in medians.items():
        print(f"{name:24} median {ms:6.1f} ms over {args.runs} runs")
    bare = medians["bare websocket-client"]
    print(f"ratio: {medians['contribute.py post'] / bare:.2f}x (target <= 1.8x); "
          f"the floor of the shape: {medians['floor of the shape'] / bare:.2f}x; "
          f"python -m contribute: {medians['python -m contribute'] / bare:.2f}x")


if __name__ == "__main__":
    main()
