"""A yardstick for bench_bulk.py: the floor of contribute.py's own design. The same rows go
out through contribute's real Connection (its reader and writer threads, decode, AckBatch
events on a queue), but the main thread does no more than bare_bulk.py does: the CSV's cells
read by float() and int(), one dict per post, a dict of posts in flight (their deadlines and
fields, not their messages, as contribute keeps them), 1,000 of them at most (contribute's
default --window), orjson. No input checks, no accounting, no click. The module is imported,
so it is compiled only where Python has no cached bytecode of it (PYTHONDONTWRITEBYTECODE).

What contribute.py spends above this figure is its own code; what this spends above
bare_bulk.py is the threads.

    python bench/floor_bulk.py URL FILE
"""
import csv
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contribute  # noqa: E402

WINDOW, PER_FRAME = 1000, 100

url, path = sys.argv[1], sys.argv[2]
events = contribute.SimpleQueue()
conn = contribute.Connection(url, events, 10.0, orjson.loads)


def next_event(kind: type) -> Any:
    _, event = events.get(timeout=10)
    if not isinstance(event, kind):
        sys.exit(f"expected {kind.__name__}, got {event}")
    return event


conn.open()
next_event(contribute.Opened)
conn.send(orjson.dumps(contribute.build_login("bench", "256", "127.0.0.1")))
next_event(contribute.LoginAccepted)
info = {"Address": "127.0.0.1", "UserID": os.getpid()}
ids, pending, acked, done = itertools.count(1), {}, 0, False
with open(path, newline="") as f:
    rows = csv.reader(f)
    next(rows)                                  # RIC,SERVICE,BID,ASK,BIDSIZE
    while not done or pending:
        while not done and WINDOW - len(pending) >= PER_FRAME:
            batch, deadline = [], time.monotonic() + 10
            for ric, service, bid, ask, size in rows:
                post_id = next(ids)
                fields = {"BID": float(bid), "ASK": float(ask), "BIDSIZE": int(size)}
                pending[post_id] = (deadline, fields)      # what a resend needs: the message is not kept
                batch.append({"ID": 1, "Type": "Post", "Domain": "MarketPrice", "Ack": True, "PostID": post_id,
                              "Key": {"Service": service, "Name": ric}, "PostUserInfo": info,
                              "Message": {"ID": 0, "Type": "Update", "Domain": "MarketPrice", "Fields": fields}})
                if len(batch) == PER_FRAME:
                    break
            else:
                done = True
            if batch:
                conn.send(orjson.dumps(batch))
        for ack_id in next_event(contribute.AckBatch).ack_ids:
            del pending[ack_id]
            acked += 1
conn.close([contribute.encode(contribute.build_login_close())])
print(f"ACKED {acked}")
