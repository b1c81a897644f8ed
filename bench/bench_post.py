"""One-shot latency: `contribute.py post` from process start to exit, next to a bare
websocket-client script doing the same exchange (bench/bare_post.py).

Both run against one standalone emulator on loopback; the figure is the median
wall time of --runs alternating runs of each.

    python bench/bench_post.py [--runs 30]
"""
from __future__ import annotations

import argparse
import os
import platform
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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
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
        ours = [sys.executable, str(ROOT / "contribute.py"), "--config", os.devnull,
                "--host", "127.0.0.1", "--port", port, "--user", "bench", "post", "--service", "NIPROV",
                "--ric", "UMER.TST", "--field", "BID=22.1"]
        bare = [sys.executable, str(ROOT / "bench" / "bare_post.py"), url]
        timed(ours), timed(bare)                       # warm the file cache
        results: dict[str, list[float]] = {"contribute.py post": [], "bare websocket-client": []}
        for _ in range(args.runs):
            results["contribute.py post"].append(timed(ours))
            results["bare websocket-client"].append(timed(bare))
    finally:
        emulator.terminate()
        emulator.wait(10)
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    medians = {name: statistics.median(times) * 1000 for name, times in results.items()}
    for name, ms in medians.items():
        print(f"{name:24} median {ms:6.1f} ms over {args.runs} runs")
    ratio = medians["contribute.py post"] / medians["bare websocket-client"]
    print(f"ratio: {ratio:.2f}x (target <= 1.8x)")


if __name__ == "__main__":
    main()
