"""Bulk contribution, in one run, side by side (issues 5 and 12):

1. throughput and CPU: 100,000 Updates from a CSV file (RIC,SERVICE,BID,ASK,BIDSIZE, 1,000
   RICs created beforehand) with `contribute.py -q post --file`, next to two bare pipelined
   websocket-client scripts posting the same rows (bench/bare_bulk.py: 100 posts per frame,
   5,000 in flight), one with the stdlib json codec, one with orjson, and to the floor of our
   own design (bench/floor_bulk.py: contribute's Connection threads under a bare main loop).
   Runs alternate; each figure is a median over --runs: posts per second of wall time from
   process start to exit, and CPU seconds (user + system, the process's own rusage) per
   acknowledged post;
2. one-shot latency: `contribute.py post` next to bench/bare_post.py and to the floor of the
   project's shape, bench/floor_post.py (median);
3. peak memory (VmHWM) of `contribute.py post --file -` fed 1,000,000 rows through a pipe.

The emulator runs as a separate process on 127.0.0.1; its own CPU per post is reported too.

    python bench/bench_bulk.py [--rows 100000] [--pipe-rows 1000000] [--runs 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import py_compile
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


def ours(port: str, *args: str, quiet: bool = False) -> list[str]:
    return [sys.executable, str(ROOT / "contribute.py"), "--config", os.devnull, "--host",
            f"127.0.0.1:{port}", "--user", "bench", *(["-q"] if quiet else []), "post", "--service", "NIPROV",
            *args]


RICS = 1000


def csv_rows(count: int):
    yield "RIC,SERVICE,BID,ASK,BIDSIZE\n"
    for i in range(count):
        yield f"R{i % RICS:04d}.TST,NIPROV,{22 + i % 1000 / 1000:.3f},{24 + i % 997 / 1000:.3f},{100 + i % 50}\n"


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process itself, stdout + stderr) of one run."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed ({proc.returncode}): {text[-500:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, text


def cpu_of(pid: int) -> float:
    """CPU seconds a running process has used so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latency-runs", type=int, default=30)
    args = parser.parse_args()
    emulator, url, port = start_emulator()
    bare = [sys.executable, str(ROOT / "bench" / "bare_bulk.py"), url]
    names = ("contribute.py post --file", "bare websocket-client + json", "bare websocket-client + orjson",
             "floor: our threads, a bare loop")
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    emulator_cpu = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            seed, path = os.path.join(tmp, "seed.csv"), os.path.join(tmp, "rows.csv")
            with open(seed, "w") as f:
                f.writelines(csv_rows(RICS))
            with open(path, "w") as f:
                f.writelines(csv_rows(args.rows))
            measured(ours(port, "--refresh", "--file", seed))          # the items, created once
            # The floor imports contribute: from its cached bytecode, as wherever Python may write
            # __pycache__ (ours, run as a script, is compiled on every run whatever the cache).
            py_compile.compile(str(ROOT / "contribute.py"), doraise=True)
            commands = {names[0]: ours(port, "--file", path, quiet=True), names[1]: bare + [path],
                        names[2]: bare + [path, "--orjson"],
                        names[3]: [sys.executable, str(ROOT / "bench" / "floor_bulk.py"), url, path]}
            for _ in range(args.runs):
                for name, cmd in commands.items():
                    before = cpu_of(emulator.pid)
                    elapsed, cpu, text = measured(cmd)
                    if name != names[0] and f"ACKED {args.rows}" not in text:
                        raise SystemExit(f"{name}: not every post acked: {text[-300:]}")
                    walls[name].append(elapsed)
                    cpus[name].append(cpu)
                    emulator_cpu.append((cpu_of(emulator.pid) - before) / args.rows)
        one_ours, one_bare, one_floor = [], [], []
        post_cmd = ours(port, "--ric", "UMER.TST", "--field", "BID=22.1")
        for _ in range(args.latency_runs):
            one_ours.append(timed(post_cmd))
            one_bare.append(timed([sys.executable, str(ROOT / "bench" / "bare_post.py"), url]))
            one_floor.append(timed([sys.executable, str(ROOT / "bench" / "floor_post.py"), url]))
        peak_mb, pipe_seconds = peak_memory_from_pipe(port, args.pipe_rows)
    finally:
        emulator.terminate()
        emulator.wait(10)
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    print(f"1. {args.rows:,} rows, median of {args.runs} alternating runs:")
    rate = {name: args.rows / statistics.median(walls[name]) for name in names}
    per_post = {name: statistics.median(cpus[name]) / args.rows * 1e6 for name in names}
    yardstick = names[2]
    for name in names:
        print(f"   {name:32} {rate[name]:9,.0f} posts/s ({rate[name] / rate[yardstick]:.2f}x)   "
              f"{per_post[name]:5.1f} us CPU per acked post ({per_post[name] / per_post[yardstick]:.2f}x)")
    print(f"   the emulator: {statistics.median(emulator_cpu) * 1e6:.1f} us CPU per post "
          "(target for ours: >= 0.9x the orjson script's posts/s, <= 1.5x its CPU per post)")
    for name in (names[0], names[3]):    # the machine's noise: the ratio to the yardstick, round by round
        rounds = sorted(ours_cpu / bare_cpu for ours_cpu, bare_cpu in zip(cpus[name], cpus[yardstick]))
        print(f"   {name}: CPU ratio to the orjson script round by round, {rounds[0]:.2f}x to "
              f"{rounds[-1]:.2f}x (median {statistics.median(rounds):.2f}x)")
    lo, lb, lf = (statistics.median(times) * 1000 for times in (one_ours, one_bare, one_floor))
    print(f"2. one-shot post, median of {args.latency_runs}: contribute.py {lo:.1f} ms, bare {lb:.1f} ms: "
          f"{lo / lb:.2f}x (target <= 1.8x); the floor of the shape {lf:.1f} ms: {lf / lb:.2f}x")
    print(f"3. {args.pipe_rows:,} rows through a pipe: peak RSS {peak_mb:.1f} MB (target < 60 MB), "
          f"{pipe_seconds:.1f} s, {args.pipe_rows / pipe_seconds:,.0f} posts/s")


if __name__ == "__main__":
    main()
