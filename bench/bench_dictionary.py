"""What --dictionary costs: reading a full-size RDMFieldDictionary and its enumtype.def.

Writes a synthetic dictionary of --fields lines (the size of the one an ADS ships, about
15,000) with every RWF type, and an enumtype.def of --tables tables, then times
load_dictionary() in this process (median of --runs), and a one-shot `post --dictionary`
against `post` without one, process start to exit, against the emulator (median of --runs
alternating runs each).

    python bench/bench_dictionary.py [--fields 15000] [--tables 300] [--runs 20]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_emulator import start_emulator  # noqa: E402
from bench_post import timed  # noqa: E402
from contribute import load_dictionary  # noqa: E402

TYPES = [("PRICE", "17", "REAL64", "7"), ("INTEGER", "15", "INT64", "4"), ("INTEGER", "5", "UINT64", "2"),
         ("ENUMERATED", "3 ( 3 )", "ENUM", "1"), ("DATE", "11", "DATE", "4"), ("TIME", "8", "TIME", "5"),
         ("ALPHANUMERIC", "16", "RMTES_STRING", "16"), ("ALPHANUMERIC", "12", "ASCII_STRING", "12")]


def write_files(folder: Path, fields: int, tables: int) -> Path:
    lines = ["!ACRONYM    DDE ACRONYM          FID  RIPPLES TO  FIELD TYPE     LENGTH  RWF TYPE   RWF LEN"]
    lines += ["BID        \"BID\"                   22  BID_1       PRICE              17  REAL64           7"]
    for i in range(1, fields):
        kind, length, rwf, rwf_len = TYPES[i % len(TYPES)]
        lines.append(f'FLD_{i:05d}  "FIELD {i}"  {1000 + i}  NULL  {kind}  {length}  {rwf}  {rwf_len}')
    (folder / "RDMFieldDictionary").write_text("\n".join(lines) + "\n")
    enum_lines = []
    for t in range(tables):
        enum_lines.append(f"FLD_{(t * len(TYPES) + 3):05d}  {1000 + t * len(TYPES) + 3}")
        enum_lines += [f'  {v}  "V{t}_{v}"  value {v}' for v in range(20)]
    (folder / "enumtype.def").write_text("\n".join(enum_lines) + "\n")
    return folder / "RDMFieldDictionary"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=15000)
    parser.add_argument("--tables", type=int, default=300)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_files(Path(tmp), args.fields, args.tables)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            dictionary = load_dictionary(str(path))
            times.append(time.perf_counter() - start)
        assert len(dictionary.by_name) == args.fields and dictionary.by_name["FLD_00003"].enums
        print(f"load_dictionary: {args.fields:,} fields, {args.tables} enum tables: "
              f"median {statistics.median(times) * 1000:.1f} ms over {args.runs} runs (target < 50 ms)")
        emulator, url, port = start_emulator()
        try:
            base = [sys.executable, str(ROOT / "contribute.py"), "--config", "/dev/null", "--host",
                    f"127.0.0.1:{port}", "--user", "bench"]
            tail = ["post", "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=22.1"]
            plain, typed = [], []
            for _ in range(args.runs):
                plain.append(timed(base + tail))
                typed.append(timed(base + ["--dictionary", str(path)] + tail))
        finally:
            emulator.terminate()
            emulator.wait()
        print(f"one-shot post: {statistics.median(plain) * 1000:.1f} ms without --dictionary, "
              f"{statistics.median(typed) * 1000:.1f} ms with it (median of {args.runs})")


if __name__ == "__main__":
    main()
