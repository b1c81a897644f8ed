"""Soak: `contribute.py run` for a while against an emulator that drops connections
and delays acks at random; reports posts sent, acknowledged, resent and lost.

    python bench/soak.py [--seconds 60] [--interval 0.005] [--mean-drop-seconds 2]
                         [--max-ack-delay-ms 50] [--seed N]

The emulator runs in this process on 127.0.0.1. A harness thread aborts every
client connection at random moments (exponentially distributed, mean
--mean-drop-seconds) and sets a new random ack delay each second. At the end
the run is stopped with SIGINT. Exit status 0 only when no post was lost and
the cached item equals the last value posted.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ads_emulator import Emulator, Faults  # noqa: E402


def chaos(emu: Emulator, stop: threading.Event, rng: random.Random, mean_drop: float,
          max_delay_ms: int, counts: dict) -> None:
    next_drop = time.monotonic() + rng.expovariate(1 / mean_drop)
    next_delay = time.monotonic()
    while not stop.wait(0.05):
        if time.monotonic() >= next_delay:       # a new ack delay every second
            emu.server.faults.ack_delay_ms = rng.randint(0, max_delay_ms)
            next_delay += 1.0
        if time.monotonic() >= next_drop:
            emu.drop_connections()
            counts["drops"] += 1
            next_drop = time.monotonic() + rng.expovariate(1 / mean_drop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--mean-drop-seconds", type=float, default=2.0)
    parser.add_argument("--max-ack-delay-ms", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    counts = {"drops": 0}
    with Emulator(faults=Faults()) as emu:
        cmd = [sys.executable, str(ROOT / "contribute.py"), "--config", os.devnull, "--host",
               f"127.0.0.1:{emu.port}", "--user", "soak", "--reconnect-min", "0.1", "--reconnect-max", "1",
               "--json", "run", "--service", "NIPROV", "--ric", "SOAK.TST", "--field", "BID=100.0",
               "--field", "ASK=101.0", "--interval", str(args.interval), "--walk"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stop = threading.Event()
        harness = threading.Thread(target=chaos, args=(emu, stop, rng, args.mean_drop_seconds,
                                                       args.max_ack_delay_ms, counts), daemon=True)
        harness.start()
        lines: list[dict] = []
        reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in proc.stdout),
                                  daemon=True)
        reader.start()
        time.sleep(args.seconds)        # the soak's duration: this is the workload, not a sync
        stop.set()
        harness.join(5)
        emu.server.faults.ack_delay_ms = 0
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit("contribute.py did not stop within 60 s of SIGINT") from None
        reader.join(10)
        cached = emu.item("NIPROV", "SOAK.TST")
        posts = [m for m in emu.received() if isinstance(m, dict) and m.get("Type") == "Post"]
        last = max(posts, key=lambda m: m["PostID"])["Message"]["Fields"] if posts else None
    outcomes = [line for line in lines if "status" in line]
    by_status: dict[str, int] = {}
    for outcome in outcomes:
        by_status[outcome["status"]] = by_status.get(outcome["status"], 0) + 1
    resent = sum(line.get("resent", 0) for line in lines if line.get("event") == "reconnected")
    reconnects = sum(1 for line in lines if line.get("event") == "reconnected")
    sent = len({o["post_id"] for o in outcomes})
    lost = sent - by_status.get("ack", 0)
    print(f"soak: {args.seconds:g} s, interval {args.interval:g} s, {counts['drops']} drops injected, "
          f"{reconnects} reconnects, exit {proc.returncode}")
    print(f"posts sent {sent}, acknowledged {by_status.get('ack', 0)}, resent {resent}, lost {lost} "
          f"(outcomes by status: {by_status})")
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    print(f"cached item: {cached}, last posted: {last}, {'equal' if cached == last else 'DIFFERENT'}")
    return 0 if lost == 0 and proc.returncode == 0 and cached == last else 1


if __name__ == "__main__":
    sys.exit(main())
