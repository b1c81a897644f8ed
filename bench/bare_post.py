"""The baseline for bench_post.py: the same one-shot exchange as `contribute.py post`,
written as plainly as websocket-client allows (no CLI, no config, no thread)."""
import json
import os
import sys

import websocket

url = sys.argv[1]
ws = websocket.create_connection(url, subprotocols=["tr_json2"], skip_utf8_validation=True)
address = ws.sock.getsockname()[0]
ws.send(json.dumps({"ID": 1, "Domain": "Login", "Key": {"Name": "bench", "Elements": {
    "ApplicationId": "256", "Position": address}}}))


def wait_for(mtype):
    while True:
        for msg in json.loads(ws.recv()):
            if msg.get("Type") == "Ping":
                ws.send('{"Type":"Pong"}')
            elif msg.get("Type") == mtype:
                return msg


wait_for("Refresh")
ws.send(json.dumps({"ID": 1, "Type": "Post", "Domain": "MarketPrice", "Ack": True, "PostID": 1,
                    "Key": {"Service": "NIPROV", "Name": "UMER.TST"},
                    "PostUserInfo": {"Address": address, "UserID": os.getpid()},
                    "Message": {"ID": 0, "Type": "Update", "Domain": "MarketPrice",
                                "Fields": {"BID": 22.1}}}))
ack = wait_for("Ack")
ws.send(json.dumps({"ID": 1, "Type": "Close", "Domain": "Login"}))
ws.close()
print("ACK" if "NakCode" not in ack else "NAK")
