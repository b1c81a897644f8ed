"""The yardsticks for bench_bulk.py: a bare pipelined websocket-client script that posts every
row of a CSV file (RIC,SERVICE,BID,ASK,BIDSIZE), 100 posts per frame and at most 5,000 in
flight, and counts the Acks, with the stdlib json codec or with orjson (--orjson). Its posts
are the same JSON as contribute.py's (PostUserInfo included).

    python bench/bare_bulk.py URL FILE [--orjson]
"""
import csv
import json
import os
import sys

import websocket

if "--orjson" in sys.argv:
    import orjson
    dumps, loads = orjson.dumps, orjson.loads
else:
    dumps, loads = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode, json.loads

PER_FRAME, WINDOW = 100, 50           # posts per frame; frames in flight

url, path = sys.argv[1], sys.argv[2]
INFO = {"Address": "127.0.0.1", "UserID": os.getpid()}
ws = websocket.create_connection(url, subprotocols=["tr_json2"], skip_utf8_validation=True)
ws.send(dumps({"ID": 1, "Domain": "Login", "Key": {"Name": "bench", "Elements": {
    "ApplicationId": "256", "Position": "127.0.0.1"}}}))
loads(ws.recv())
sent = acked = 0
with open(path, newline="") as f:
    rows = csv.reader(f)
    next(rows)                        # RIC,SERVICE,BID,ASK,BIDSIZE
    done = False
    while not done or acked < sent:
        while not done and sent - acked < PER_FRAME * WINDOW:
            batch = []
            for ric, service, bid, ask, size in rows:
                sent += 1
                batch.append({"ID": 1, "Type": "Post", "Domain": "MarketPrice", "Ack": True,
                              "PostID": sent, "Key": {"Service": service, "Name": ric},
                              "PostUserInfo": INFO,
                              "Message": {"ID": 0, "Type": "Update", "Domain": "MarketPrice",
                                          "Fields": {"BID": float(bid), "ASK": float(ask), "BIDSIZE": int(size)}}})
                if len(batch) == PER_FRAME:
                    break
            else:
                done = True
            if batch:
                ws.send(dumps(batch))
        for msg in loads(ws.recv()):
            if msg.get("Type") == "Ack" and "NakCode" not in msg:
                acked += 1
            elif msg.get("Type") == "Ping":
                ws.send('{"Type":"Pong"}')
            elif msg.get("Type") in ("Ack", "Error"):
                sys.exit(f"not acked: {msg}")
ws.close()
print(f"ACKED {acked}")
