"""Shared test helpers: one timeout constant, a small tr_json2 test client."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
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


@contextlib.contextmanager
def serve_in_thread(handler, subprotocols=("tr_json2",)):
    """A deliberately broken WebSocket server on a loopback port, for a with block: its port.

    Leaving the block stops it, and fails the test if the server's thread did not end, or if
    the handler raised anything but the client going away: a test server's own bug must not
    pass unseen."""
    ready, loop_box, failures = threading.Event(), {}, []

    async def guarded(ws):
        try:
            await handler(ws)
        except ConnectionClosed:
            pass
        except Exception as exc:
            failures.append(exc)
            raise

    async def main():
        stop = asyncio.Event()
        loop_box["stop"], loop_box["loop"] = stop, asyncio.get_running_loop()
        async with serve(guarded, "127.0.0.1", 0, subprotocols=list(subprotocols)) as server:
            loop_box["port"] = server.sockets[0].getsockname()[1]
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT)

    try:
        yield loop_box["port"]
    finally:
        loop_box["loop"].call_soon_threadsafe(loop_box["stop"].set)
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the test server did not stop"
        if failures:
            raise AssertionError(f"the test server failed: {failures[0]!r}") from failures[0]


class Running:
    """A command running as a real process: its stdout and stderr read line by line on threads
    of their own, so that a test can wait (bounded) for a given line while it runs."""

    def __init__(self, cmd: list[str], env: dict, stdin=None) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is None else stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: dict[str, list[str]] = {"out": [], "err": []}
        self.changed = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))]
        for reader in self.readers:
            reader.start()

    def _read(self, name: str, stream) -> None:
        for line in stream:
            with self.changed:
                self.lines[name].append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_line(self, name: str, predicate, timeout: float = TIMEOUT) -> str:
        """The first line of stdout ("out") or stderr ("err") matching predicate, waiting for it."""
        with self.changed:
            assert self.changed.wait_for(lambda: any(map(predicate, self.lines[name])), timeout), \
                f"no such line on {name} within {timeout}s: {self.lines}"
            return next(line for line in self.lines[name] if predicate(line))

    def write(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def finish(self, timeout: float = TIMEOUT * 4) -> int:
        """The exit status, waiting (bounded) for the exit; the process is killed either way."""
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            for reader in self.readers:
                reader.join(TIMEOUT)
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:                  # a stdin pipe whose reader is gone
                        pass

    @property
    def out(self) -> str:
        return "\n".join(self.lines["out"])

    @property
    def err(self) -> str:
        return "\n".join(self.lines["err"])


def wait_until(predicate, timeout: float = TIMEOUT, what: str = "condition") -> None:
    """For the few states nothing announces (the kernel's socket queues): check, bounded, every 20 ms."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout}s"
        time.sleep(0.02)


def unread_bytes_to(port: int) -> int:
    """The most bytes any established loopback connection to `port` has queued unsent or unread
    (the sender's tx_queue in /proc/net/tcp): how far a peer has fallen behind reading."""
    most = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote, state, queues = fields[2], fields[3], fields[4]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                most = max(most, int(queues.split(":")[0], 16))
    return most
