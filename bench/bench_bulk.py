"""Bulk contribution, in one run, side by side (issue 5):

1. throughput: 100,000 Updates from a CSV file with `contribute.py post --file`,
   next to bench/bare_bulk.py (a bare pipelined websocket-client script sending
   the same posts 100 per frame); rows divided by each process's wall time
   from start to exit, median of --runs alternating runs;
2. one-shot latency: `contribute.py post` next to bench/bare_post.py (median);
3. peak memory (VmHWM) of `contribute.py post --file -` fed 1,000,000 rows
   through a pipe.

The emulator runs as a separate process on 127.0.0.1.

    python bench/bench_bulk.py [--rows 100000] [--pipe-rows 1000000] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_emulator import start_emulator  # noqa: E402
from bench_post import timed  # noqa: E402


def ours(port: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "contribute.py"), "--config", os.devnull, "--host",
            f"127.0.0.1:{port}", "--user", "bench", "post", "--service", "NIPROV", *args]


def csv_rows(count: int):
    yield "RIC,BID,ASK\n"
    for i in range(count):
        yield f"UMER.TST,{22 + i % 1000 / 1000:.3f},{24 + i % 1000 / 1000:.3f}\n"


def wall(cmd: list[str], expect: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or expect not in proc.stdout + proc.stderr:
        raise SystemExit(f"{cmd[1]} failed ({proc.returncode}): {proc.stdout[-500:]}{proc.stderr[-500:]}")
    return elapsed


def peak_memory_from_pipe(port: str, rows: int) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of post --file - fed `rows` rows through a pipe."""
    err_file = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(ours(port, "--file", "-"), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=err_file, text=True)

    def write() -> None:
        for line in csv_rows(rows):
            proc.stdin.write(line)
        proc.stdin.close()
    start = time.perf_counter()
    threading.Thread(target=write, daemon=True).start()
    peak_kb = 0
    status = f"/proc/{proc.pid}/status"
    while proc.poll() is None:           # VmHWM is the high-water mark: sample it until exit
        try:
            with open(status) as f:
                peak_kb = max(peak_kb, next(int(line.split()[1]) for line in f if line.startswith("VmHWM")))
        except (OSError, StopIteration):
            pass
        time.sleep(0.1)
    err_file.seek(0)
    err = err_file.read()
    if proc.returncode != 0 or f"acknowledged {rows}" not in err:
        raise SystemExit(f"pipe run failed ({proc.returncode}): {err[-500:]}")
    return peak_kb / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pipe-rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=30)
    args = parser.parse_args()
    emulator, url, port = start_emulator()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "rows.csv")
            with open(path, "w") as f:
                f.writelines(csv_rows(args.rows))
            ours_times, bare_times = [], []
            for _ in range(args.runs):
                ours_times.append(wall(ours(port, "--file", path), f"acknowledged {args.rows}"))
                bare_times.append(wall([sys.executable, str(ROOT / "bench" / "bare_bulk.py"), url, path],
                                       f"ACKED {args.rows}"))
        one_ours, one_bare = [], []
        post_cmd = ours(port, "--ric", "UMER.TST", "--field", "BID=22.1")
        for _ in range(args.latency_runs):
            one_ours.append(timed(post_cmd))
            one_bare.append(timed([sys.executable, str(ROOT / "bench" / "bare_post.py"), url]))
        peak_mb, pipe_seconds = peak_memory_from_pipe(port, args.pipe_rows)
    finally:
        emulator.terminate()
        emulator.wait(10)
    ours_rate = args.rows / statistics.median(ours_times)
    bare_rate = args.rows / statistics.median(bare_times)
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    print(f"1. throughput, {args.rows:,} rows, median of {args.runs}: contribute.py {ours_rate:,.0f} posts/s, "
          f"bare {bare_rate:,.0f} posts/s: {ours_rate / bare_rate:.2f}x (target >= 0.8x)")
    lo, lb = statistics.median(one_ours) * 1000, statistics.median(one_bare) * 1000
    print(f"2. one-shot post, median of {args.latency_runs}: contribute.py {lo:.1f} ms, bare {lb:.1f} ms: "
          f"{lo / lb:.2f}x (target <= 1.8x)")
    print(f"3. {args.pipe_rows:,} rows through a pipe: peak RSS {peak_mb:.1f} MB (target < 60 MB), "
          f"{pipe_seconds:.1f} s, {args.pipe_rows / pipe_seconds:,.0f} posts/s")


if __name__ == "__main__":
    main()
