"""Issue 14: thirteen promises pinned end to end, each test named for the promise it guards
and shown to fail on a planted bug (see the closing note of issue 14). The real CLI runs
against the emulator, or a small server that misbehaves on purpose, over a real loopback
socket; where the promise lives in one function, the test is at that level."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

from ads_emulator import Emulator, Faults, Item, World
from conftest import TIMEOUT, Running, serve_in_thread
from contribute import AckBatch, Closed, Pending, Session, Settings
from test_e2e import ENV, args_for, contribute, logins, received
from test_ops import accept_login, raw_server

FAST = ["--reconnect-min", "0.05", "--reconnect-max", "0.2"]


def post(port: int, *args: str, opts=()) -> subprocess.CompletedProcess:
    return contribute(port, *opts, "post", "--service", "NIPROV", *args)


# 1 ------------------------------------------------------------------------------------------

def test_a_nak_without_text_is_a_nak_not_an_ack(tmp_path):
    """A Nak is told by its NakCode alone: one with no Text must not take the plain-Ack path."""
    faults = Faults(nak_rics=[("NAK.*", "AccessDenied", "")], naks_without_text=True)
    with Emulator(faults=faults) as emu:
        emu.server.world.items[("NIPROV", "MarketPrice", "NAK.TST")] = Item({"BID": 1.0})
        one = post(emu.port, "--ric", "NAK.TST", "--field", "BID=2")
        rows = tmp_path / "rows.csv"
        rows.write_text("RIC,BID\nUMER.TST,1\nNAK.TST,2\nUMER.TST,3\n")
        bulk = post(emu.port, "--file", str(rows), opts=["--json"])
    assert one.returncode == 5 and one.stdout == "NAK NIPROV NAK.TST post 1 AccessDenied\n", one.stderr
    summary = json.loads(bulk.stdout.splitlines()[-1])["summary"]
    assert bulk.returncode == 5 and summary["acknowledged"] == 2 and summary["nakked"] == {"AccessDenied": 1}


# 2, 3 --------------------------------------------------------------------------------------

def test_a_real_login_denial_is_neither_retried_nor_failed_over():
    """Closed/Suspect means no: another attempt, or another host, would say the same. Only
    ClosedRecover (DACS down) is retried."""
    denying, other = World.default(), World.default()
    denying.deny_users = {"tester"}
    with Emulator(denying) as first, Emulator(other) as second:
        started = time.monotonic()
        cmd = args_for(first.port, "--retries", "2", "post", "--service", "NIPROV", "--ric", "UMER.TST",
                       "--field", "BID=1")
        cmd[cmd.index("--host") + 1] = f"127.0.0.1:{first.port},127.0.0.1:{second.port}"
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV,
                                stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
        assert (logins(first), logins(second)) == (1, 0)
    assert result.returncode == 4 and "UserUnknownToPermSys" in result.stderr
    assert elapsed < TIMEOUT                          # not retried until the 10 s connect deadline
    with Emulator(faults=Faults(login_recover=1)) as recovering:
        assert contribute(recovering.port, "login").returncode == 0 and logins(recovering) == 2


# 4 ------------------------------------------------------------------------------------------

def test_the_client_pings_after_a_third_of_ping_timeout_of_silence():
    """PingTimeout 3 from an ADS that then says nothing: the client sends its own Ping after
    about 1 s of silence (PingTimeout/3), so the ADS hears from an idle client."""
    with Emulator(ping_timeout=3, ping_interval=3600) as emu:
        run = Running(args_for(emu.port, "run", "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=1",
                               "--no-refresh", "--count", "2", "--interval", "3600"), ENV, stdin=subprocess.DEVNULL)
        try:
            emu.wait_for(lambda m: m.get("Type") == "Post", TIMEOUT)
            acked_at = time.monotonic()
            emu.wait_for(lambda m: m.get("Type") == "Ping", TIMEOUT)
            silence = time.monotonic() - acked_at
        finally:
            run.proc.send_signal(signal.SIGTERM)
            code = run.finish()
    assert code == 0, run.err
    assert 0.5 <= silence < 1 + TIMEOUT / 2            # about PingTimeout/3: neither at once nor never


# 5 ------------------------------------------------------------------------------------------

def test_a_silent_ads_is_found_dead_after_ping_timeout_not_ten_times_later():
    with Emulator(faults=Faults(hang_after_login=True), ping_timeout=2) as emu:
        started = time.monotonic()
        result = post(emu.port, "--ric", "UMER.TST", "--field", "BID=1", "--ack-timeout", "60")
        elapsed = time.monotonic() - started
    assert result.returncode == 3 and "nothing received from" in result.stderr and "for 2s" in result.stderr
    assert 2 <= elapsed < 2 + TIMEOUT                  # 20 s would mean a check ten times too slow


# 6 ------------------------------------------------------------------------------------------

def test_a_resent_post_keeps_the_ack_deadline_it_was_made_with():
    """An ADS that drops the connection at every post: the post is resent on each new connection
    (the same PostID), and ends TIMEOUT when its first deadline passes, not later."""
    with Emulator(faults=Faults(drop_after_posts=1)) as emu:
        started = time.monotonic()
        result = contribute(emu.port, *FAST, "run", "--service", "NIPROV", "--ric", "UMER.TST", "--field",
                            "BID=1", "--no-refresh", "--count", "1", "--ack-timeout", "1.5")
        elapsed = time.monotonic() - started
        sent = [m["PostID"] for m in received(emu, "Post")]
    assert result.returncode == 6 and result.stdout.startswith("TIMEOUT NIPROV UMER.TST post 1"), result.stderr
    assert len(sent) >= 2 and set(sent) == {1}
    assert elapsed < 1.5 + TIMEOUT


# 7 ------------------------------------------------------------------------------------------

def test_bulk_packs_its_frames_to_the_max_msg_size_the_ads_announced(tmp_path):
    log = tmp_path / "frames.jsonl"
    rows = tmp_path / "rows.csv"
    rows.write_text("RIC,BID,GEN_TEXT16\n" + "".join(f"UMER.TST,{i},text number {i}\n" for i in range(300)))
    with open(log, "w") as log_file, Emulator(log_file=log_file, max_msg_size=4000) as emu:
        result = post(emu.port, "--file", str(rows))
    assert result.returncode == 0 and "acknowledged 300" in result.stderr, result.stderr
    frames = [json.loads(line) for line in log.read_text().splitlines()]
    posts = [f["frame"].encode() for f in frames if f["dir"] == "in" and '"Type":"Post"' in f["frame"]]
    assert len(posts) > 10 and max(map(len, posts)) <= 4000 and "reconnect" not in result.stderr


# 8 ------------------------------------------------------------------------------------------

def test_failed_out_gets_every_row_that_did_not_reach_the_ads(tmp_path):
    """Nak'd, Error, TIMEOUT and LOST rows all go to --failed-out, not the Nak'd ones only."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"ric": "UMER.TST", "fields": {"BID": 1}},
        {"ric": "NAK.TST", "fields": {"BID": 2}},                  # a Nak
        {"ric": "UMER.TST", "fields": {"NO_SUCH_FIELD": 3}},       # an ADS Error
        {"ric": "SLOW.TST", "fields": {"BID": 4}},                 # no Ack: TIMEOUT
    ]) + "\n")
    failed = tmp_path / "failed.jsonl"
    faults = Faults(nak_rics=[("NAK.*", "SymbolUnknown", "no")], no_ack_rics=["SLOW.*"])
    with Emulator(faults=faults) as emu:
        emu.server.world.items[("NIPROV", "MarketPrice", "SLOW.TST")] = Item({"BID": 0.0})
        result = post(emu.port, "--file", str(rows), "--ack-timeout", "0.5", "--failed-out", str(failed))
    assert result.returncode == 5, result.stderr
    assert [json.loads(line)["ric"] for line in failed.read_text().splitlines()] == ["NAK.TST", "UMER.TST", "SLOW.TST"]
    lost_rows = tmp_path / "lost.csv"
    lost_rows.write_text("RIC,BID\n" + "".join(f"UMER.TST,{i}\n" for i in range(5)))
    lost_out = tmp_path / "lost_failed.csv"
    with Emulator(faults=Faults(close_login_after_posts=3)) as emu:
        ended = post(emu.port, "--file", str(lost_rows), "--failed-out", str(lost_out))
    assert ended.returncode == 4 and "LOST" in ended.stdout
    written = lost_out.read_text().splitlines()
    assert written[0] == "RIC,BID" and len(written) - 1 == ended.stdout.count("\n") >= 1


# 9 ------------------------------------------------------------------------------------------

def test_check_refuses_an_upgrade_answer_with_a_wrong_sec_websocket_accept():
    reply = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Accept: d3JvbmcgYWNjZXB0IGtleSE=\r\nSec-WebSocket-Protocol: tr_json2\r\n\r\n")
    with raw_server(reply) as port:
        result = contribute(port, "--connect-timeout", "2", "check")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "FAIL  websocket" in result.stdout and "Sec-WebSocket-Accept" in result.stdout


# 10 -----------------------------------------------------------------------------------------

def test_acks_from_an_earlier_connection_still_settle_their_posts():
    """After a reconnect, an Ack that the old connection delivered late still ends its post
    (PostIDs outlive connections); the old connection's other news (its close) is stale."""
    session = Session(Settings("127.0.0.1:1", user="tester"), reporter=None,
                      on_outcome=lambda outcome: ended.append(outcome))
    ended: list = []
    old, new = object(), object()
    post = Pending("NIPROV", "UMER.TST", time.monotonic() + 60, {}, False, "MarketPrice", 1)
    session.ledger.add(1, post, session.message(1, post))
    session.ledger.take_unsent()
    session.conn = new
    session.events.put((old, Closed(1006, "gone", None)))
    session.events.put((old, AckBatch([1])))
    assert session.next_event(time.monotonic() + TIMEOUT) == AckBatch([1])       # the close was dropped
    session.dispatch(AckBatch([1]))
    assert [(o.status, o.post_id) for o in ended] == [("ack", 1)] and not session.ledger.pending


# 11 -----------------------------------------------------------------------------------------

def test_check_calls_a_tcp_connect_timeout_a_timeout_not_a_refusal():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)   # the backlog is full now
    try:
        result = contribute(listener.getsockname()[1], "--connect-timeout", "0.5", "check")
    finally:
        filler.close()
        listener.close()
    assert result.returncode == 6, result.stdout + result.stderr
    assert "FAIL  tcp" in result.stdout and "no answer within 0.5s" in result.stdout
    assert "refused" not in result.stdout


# 12 -----------------------------------------------------------------------------------------

def test_an_error_that_names_no_post_is_the_single_pending_posts():
    async def ads(ws):
        await accept_login(ws, {"SupportOMMPost": 1})
        json.loads(await ws.recv())
        await ws.send(json.dumps([{"ID": 1, "Type": "Error", "Text": "JSON Unexpected FID. Received 'X'"}]))
        await ws.wait_closed()
    with serve_in_thread(ads) as port:
        result = post(port, "--ric", "UMER.TST", "--field", "X=1", "--ack-timeout", "3")
    assert result.returncode == 5, result.stderr
    assert result.stdout == "ERROR NIPROV UMER.TST post 1 \"JSON Unexpected FID. Received 'X'\"\n"


# 13 -----------------------------------------------------------------------------------------

def test_a_read_back_absent_or_different_is_a_mismatch_end_to_end():
    """--verify against an ADS that stores ASK a little differently and drops BID."""
    async def ads(ws):
        await accept_login(ws, {"SupportOMMPost": 1, "SupportViewRequests": 1})
        posted = json.loads(await ws.recv())
        await ws.send(json.dumps([{"ID": 1, "Type": "Ack", "AckID": posted["PostID"]}]))
        request = json.loads(await ws.recv())
        await ws.send(json.dumps([{"ID": request["ID"], "Type": "Refresh", "Key": request["Key"],
                                   "State": {"Stream": "NonStreaming", "Data": "Ok", "Text": "All is well"},
                                   "Fields": {"ASK": 24.51, "GEN_TEXT16": "same"}}]))
        await ws.wait_closed()
    with serve_in_thread(ads) as port:
        result = post(port, "--ric", "UMER.TST", "--field", "BID=22.1", "--field", "ASK=24.5",
                      "--field", "GEN_TEXT16=same", "--verify")
    assert result.returncode == 5, result.stderr
    assert result.stdout.splitlines() == ["ACK NIPROV UMER.TST post 1",
                                          "MISMATCH NIPROV UMER.TST BID posted 22.1, read (absent)",
                                          "MISMATCH NIPROV UMER.TST ASK posted 24.5, read 24.51"]


def test_an_error_inside_a_bulk_frame_ends_that_row_only(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"ric": "UMER.TST", "fields": {"NO_SUCH" if i == 2 else "BID": i}})
                              for i in range(5)) + "\n")
    with Emulator() as emu:
        result = post(emu.port, "--file", str(rows), opts=["--json"])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 5
    assert [(o["status"], o["line"]) for o in lines if "status" in o] == [("error", 3)]
    assert lines[-1]["summary"]["acknowledged"] == 4 and lines[-1]["summary"]["errored"] == 1


def test_errors_about_posts_with_long_text_still_name_their_rows(tmp_path):
    """Issue 13: the emulator cuts Debug.Message to 1,000 characters, and what an ADS puts there
    for a packed frame is not documented: three rows with an unknown field and a long text end
    as ERROR, each its own, not as TIMEOUT."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"ric": "UMER.TST", "fields": {"GEN_TEXT16": "x" * 1500, "NO_SUCH": i}}) + "\n"
                            for i in range(3)) + json.dumps({"ric": "UMER.TST", "fields": {"BID": 1}}) + "\n")
    with Emulator() as emu:
        result = post(emu.port, "--file", str(rows), "--ack-timeout", "2")
    assert result.returncode == 5, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["ERROR"] * 3
    assert "acknowledged 1" in result.stderr and "timed out 0" in result.stderr
