"""How many acknowledged posts per second the emulator sustains.

A bare websocket-client client logs in, then pipelines N off-stream Updates
packed PER_FRAME to a frame (at most WINDOW frames unacknowledged) and counts
the Acks. The emulator runs in a separate process, as `ads_emulator.py`
standalone, so client and server each have a core.

    python bench/bench_emulator.py [--posts 200000] [--per-frame 100]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import websocket

ROOT = Path(__file__).resolve().parent.parent


def start_emulator() -> tuple[subprocess.Popen, str, str]:
    """The standalone emulator on a free loopback port: (process, URL, port). Shared by the benches."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "ads_emulator.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    url = line.split()[-1]
    return proc, url, url.rsplit(":", 1)[1].split("/")[0]


def run(url: str, posts: int, per_frame: int, window: int) -> float:
    ws = websocket.create_connection(url, subprotocols=["tr_json2"], skip_utf8_validation=True)
    ws.send(json.dumps({"ID": 1, "Domain": "Login",
                        "Key": {"Name": "bench", "Elements": {"ApplicationId": "256",
                                                              "Position": "127.0.0.1"}}}))
    json.loads(ws.recv())
    start = time.perf_counter()
    sent = acked = 0
    while acked < posts:
        while sent < posts and sent - acked < window * per_frame:
            batch = [{"ID": 1, "Type": "Post", "Ack": True, "PostID": sent + i + 1,
                      "Key": {"Service": "NIPROV", "Name": "UMER.TST"},
                      "Message": {"ID": 0, "Type": "Update", "Fields": {"BID": 22.1 + i}}}
                     for i in range(min(per_frame, posts - sent))]
            ws.send(json.dumps(batch, separators=(",", ":")))
            sent += len(batch)
        for msg in json.loads(ws.recv()):
            if msg.get("Type") == "Ack":
                if "NakCode" in msg:
                    raise SystemExit(f"unexpected nak: {msg}")
                acked += 1
            elif msg.get("Type") == "Ping":
                ws.send('{"Type":"Pong"}')
    elapsed = time.perf_counter() - start
    ws.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--per-frame", type=int, default=100)
    parser.add_argument("--window", type=int, default=20, help="frames in flight")
    args = parser.parse_args()
    proc, url, _ = start_emulator()
    try:
        elapsed = run(url, args.posts, args.per_frame, args.window)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    print(f"emulator: {args.posts} posts, {args.per_frame}/frame: {elapsed:.2f} s, "
          f"{args.posts / elapsed:,.0f} acked posts/s")


if __name__ == "__main__":
    main()
