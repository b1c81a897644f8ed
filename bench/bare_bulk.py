"""The baseline for bench_bulk.py: a bare pipelined websocket-client script that posts
every row of a CSV file (RIC,BID,ASK), 100 posts per frame, and counts the Acks.
Its posts are the same JSON as contribute.py's (PostUserInfo included).

    python bench/bare_bulk.py URL FILE
"""
import csv
import json
import os
import sys

import websocket

PER_FRAME, WINDOW = 100, 20           # posts per frame; frames in flight

url, path = sys.argv[1], sys.argv[2]
INFO = {"Address": "127.0.0.1", "UserID": os.getpid()}
ws = websocket.create_connection(url, subprotocols=["tr_json2"], skip_utf8_validation=True)
ws.send(json.dumps({"ID": 1, "Domain": "Login", "Key": {"Name": "bench", "Elements": {
    "ApplicationId": "256", "Position": "127.0.0.1"}}}))
json.loads(ws.recv())
sent = acked = 0
with open(path, newline="") as f:
    rows = csv.reader(f)
    header = next(rows)
    done = False
    while not done or acked < sent:
        while not done and sent - acked < PER_FRAME * WINDOW:
            batch = []
            for row in rows:
                sent += 1
                batch.append({"ID": 1, "Type": "Post", "Domain": "MarketPrice", "Ack": True,
                              "PostID": sent, "Key": {"Service": "NIPROV", "Name": row[0]},
                              "PostUserInfo": INFO,
                              "Message": {"ID": 0, "Type": "Update", "Domain": "MarketPrice",
                                          "Fields": {"BID": float(row[1]), "ASK": float(row[2])}}})
                if len(batch) == PER_FRAME:
                    break
            else:
                done = True
            if batch:
                ws.send(json.dumps(batch, separators=(",", ":")))
        for msg in json.loads(ws.recv()):
            if msg.get("Type") == "Ack":
                acked += 1
            elif msg.get("Type") == "Ping":
                ws.send('{"Type":"Pong"}')
ws.close()
print(f"ACKED {acked}")
