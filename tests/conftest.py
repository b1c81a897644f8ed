"""Shared test helpers: one timeout constant, a small tr_json2 test client."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from pathlib import Path

import pytest
from websockets.asyncio.server import serve
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ads_emulator import Emulator  # noqa: E402

# A small RDMFieldDictionary (the format of the ADS's field dictionary file).
DICTIONARY = """\
! ACRONYM    DDE ACRONYM          FID  RIPPLES TO  FIELD TYPE     LENGTH  RWF TYPE   RWF LEN
TRDPRC_1   "LAST"                 6  TRDPRC_2  PRICE           17      REAL64      7
BID        "BID"                 22  BID_1     PRICE           17      REAL64      7
ASK        "ASK"                 25  ASK_1     PRICE           17      REAL64      7
GEN_TEXT16 "GEN TEXT 16"       1000  NULL      ALPHANUMERIC    16      RMTES_STRING 16
"""

# A self-signed certificate for 127.0.0.1 (test use only), for the emulator's wss://.
TLS = (str(ROOT / "tests" / "tls" / "cert.pem"), str(ROOT / "tests" / "tls" / "key.pem"))

# Every bounded wait in the suite; scale it on a slow machine with TEST_TIMEOUT.
TIMEOUT = float(os.environ.get("TEST_TIMEOUT", "5"))


class Client:
    """A bare tr_json2 client over a real socket, for testing the emulator."""

    def __init__(self, url: str, subprotocol: str = "tr_json2") -> None:
        self.ws = connect(url, subprotocols=[subprotocol], open_timeout=TIMEOUT, legacy=True)

    def send(self, msg) -> None:
        self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def recv(self, timeout: float = TIMEOUT) -> list[dict]:
        frame = json.loads(self.ws.recv(timeout=timeout))
        assert isinstance(frame, list), f"replies must be arrays: {frame!r}"
        return frame

    def recv_until(self, predicate, timeout: float = TIMEOUT) -> list[dict]:
        """Every message up to and including the first one matching predicate."""
        seen: list[dict] = []
        while True:
            for msg in self.recv(timeout):
                seen.append(msg)
                if predicate(msg):
                    return seen

    def roundtrip(self, msg) -> list[dict]:
        """Send msg then a Ping: everything the emulator answered before the Pong."""
        self.send(msg if isinstance(msg, list) else [msg])
        self.send({"Type": "Ping"})
        return self.recv_until(lambda m: m.get("Type") == "Pong")[:-1]

    def login(self, user: str = "alice", stream: int = 1, app_id: str = "256") -> list[dict]:
        self.send({"ID": stream, "Domain": "Login",
                   "Key": {"Name": user, "Elements": {"ApplicationId": app_id,
                                                      "Position": "127.0.0.1"}}})
        return self.recv()

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def emu():
    """A default-world emulator on an ephemeral loopback port; its failures fail the test."""
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def client(emu):
    c = Client(emu.url)
    yield c
    c.close()


def post(stream=1, ric="UMER.TST", service="NIPROV", fields=None, mtype="Update",
         post_id=1, **extra) -> dict:
    """An off-stream post as protocol.md section 6 shows it."""
    msg = {"ID": stream, "Type": "Post", "Domain": "MarketPrice", "Ack": True, "PostID": post_id,
           "Key": {"Service": service, "Name": ric},
           "Message": {"ID": 0, "Type": mtype, "Domain": "MarketPrice",
                       "Fields": fields if fields is not None else {"BID": 1.0}}}
    if mtype == "Refresh":
        msg["Message"].update({"Solicited": False, "State": {"Stream": "Open", "Data": "Ok"}})
    msg.update(extra)
    return msg


def serve_in_thread(handler, subprotocols=("tr_json2",)):
    """A deliberately broken WebSocket server on a loopback port; returns (port, stop)."""
    ready, loop_box = threading.Event(), {}

    async def main():
        stop = asyncio.Event()
        loop_box["stop"], loop_box["loop"] = stop, asyncio.get_running_loop()
        async with serve(handler, "127.0.0.1", 0, subprotocols=list(subprotocols)) as server:
            loop_box["port"] = server.sockets[0].getsockname()[1]
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT)

    def stop():
        loop_box["loop"].call_soon_threadsafe(loop_box["stop"].set)
        thread.join(TIMEOUT)
    return loop_box["port"], stop
