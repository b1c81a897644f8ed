"""The ops engineers' commands end to end: get, watch, post --verify and --on-stream, check.

The real CLI runs as a subprocess against the emulator (or a deliberately
wrong server) over a real loopback socket.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import queue
import signal
import socket
import subprocess
import threading
from typing import ContextManager, Iterator

import pytest

from ads_emulator import Dictionary, Emulator, Faults, Item, World, parse_nak_rule
from conftest import DICTIONARY, TIMEOUT, TLS, Client, post as post_msg, serve_in_thread
from test_e2e import ENV, args_for, contribute, post, received


def get(emu: Emulator, *args: str, ric: str = "UMER.TST", opts=()) -> subprocess.CompletedProcess:
    return contribute(emu.port, *opts, "get", "--service", "NIPROV", "--ric", ric, *args)


def requests(emu: Emulator) -> list[dict]:
    return [m for m in received(emu, "Request") if m.get("Domain") != "Login"]


async def accept_login(ws, key_elements: dict) -> None:
    """For a test server: read the Login, answer with a Login Refresh (protocol.md section 3)."""
    login = json.loads(await ws.recv())
    await ws.send(json.dumps([{
        "ID": login["ID"], "Type": "Refresh", "Domain": "Login",
        "Key": {"Name": login["Key"]["Name"], "Elements": key_elements},
        "State": {"Stream": "Open", "Data": "Ok", "Text": "Login accepted by host ads9."},
        "Elements": {"PingTimeout": 30, "MaxMsgSize": 61430}}]))


# ---------------------------------------------------------------------- get

def test_get_prints_fields_state_and_last_poster(emu):
    assert post(emu, "--refresh", "--post-user-id", "77",
                fields=("ASK=24.5", "BID=22.3", "GEN_TEXT16=hello")).returncode == 0
    result = get(emu)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ('NIPROV UMER.TST NonStreaming/Ok "All is well"\n'
                             "last posted by 127.0.0.1, UserID 77\n"
                             "ASK         24.5\n"
                             "BID         22.3\n"
                             'GEN_TEXT16  "hello"\n')
    [request] = requests(emu)
    assert request == {"ID": 2, "Domain": "MarketPrice", "Key": {"Service": "NIPROV", "Name": "UMER.TST"},
                       "Streaming": False}


def test_get_as_json(emu):
    result = get(emu, opts=("--json",))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "service": "NIPROV", "ric": "UMER.TST",
        "state": {"stream": "NonStreaming", "data": "Ok", "code": "None", "text": "All is well"},
        "fields": {"BID": 22.1, "ASK": 24.5, "TRDPRC_1": 23.3, "GEN_TEXT16": "some text"},
        "post_user_info": None}


def test_get_fields_in_fid_order_with_a_dictionary_and_a_view(emu, tmp_path):
    dictionary = tmp_path / "RDMFieldDictionary"
    dictionary.write_text(DICTIONARY)
    result = get(emu, "--field", "GEN_TEXT16", "--field", "TRDPRC_1", "--field", "BID",
                 opts=("--dictionary", str(dictionary)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["TRDPRC_1    23.3", "BID         22.1", 'GEN_TEXT16  "some text"']
    assert requests(emu)[0]["View"] == ["GEN_TEXT16", "TRDPRC_1", "BID"]


def test_get_names_requested_fields_the_item_lacks(emu):
    result = get(emu, "--field", "BID", "--field", "ASKSIZE")
    assert result.returncode == 0
    assert result.stdout.splitlines()[1:] == ["BID  22.1"]
    assert "not in the item: ASKSIZE" in result.stderr


def test_get_filters_fields_itself_when_the_ads_has_no_views():
    """A login without SupportViewRequests: no View is sent, and the answer is filtered here."""
    seen = []

    async def ads_without_views(ws):
        await accept_login(ws, {"SupportOMMPost": 1})
        request = json.loads(await ws.recv())
        seen.append(request)
        await ws.send(json.dumps([{
            "ID": request["ID"], "Type": "Refresh", "Key": request["Key"],
            "State": {"Stream": "NonStreaming", "Data": "Ok", "Text": "All is well"},
            "Fields": {"BID": 1.5, "ASK": 2.5, "TRDPRC_1": 2.0}}]))
        await ws.wait_closed()
    with serve_in_thread(ads_without_views) as port:
        result = contribute(port, "get", "--service", "NIPROV", "--ric", "X.TST", "--field", "ASK",
                            "--field", "BID")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["BID  1.5", "ASK  2.5"]
    assert "View" not in seen[0]


def test_get_not_found_exit_5_with_the_ads_words(emu):
    result = get(emu, ric="NOPE.TST")
    assert result.returncode == 5
    assert result.stdout == 'NIPROV NOPE.TST Closed/Suspect NotFound "**The record could not be found"\n'
    assert "hint: the item is not in that service" in result.stderr


def test_get_not_found_as_json(emu):
    result = get(emu, ric="NOPE.TST", opts=("--json",))
    assert result.returncode == 5
    assert json.loads(result.stdout) == {
        "service": "NIPROV", "ric": "NOPE.TST",
        "state": {"stream": "Closed", "data": "Suspect", "code": "NotFound",
                  "text": "**The record could not be found"},
        "fields": None, "post_user_info": None}


def test_get_unknown_service_exit_5(emu):
    result = contribute(emu.port, "get", "--service", "NOSUCH", "--ric", "UMER.TST")
    assert result.returncode == 5 and "SourceUnknown" in result.stdout
    assert "check --service" in result.stderr


def test_get_no_reply_exit_6():
    with Emulator(faults=Faults(hang_after_login=True)) as emu:
        result = get(emu, "--timeout", "0.3")
    assert result.returncode == 6
    assert "no reply to the request for NIPROV UMER.TST within 0.3s" in result.stderr


def test_get_needs_a_service_and_a_ric(emu):
    result = contribute(emu.port, "get", "--ric", "UMER.TST")
    assert result.returncode == 2 and "no service" in result.stderr
    assert contribute(emu.port, "get", "--service", "NIPROV").returncode == 2


# -------------------------------------------------------------------- watch

class Lines:
    """A subprocess's stdout, line by line, with a bounded wait for each line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))

    def next(self) -> str:
        return self.queue.get(timeout=TIMEOUT)


def start_watch(emu: Emulator, *args: str, opts=()) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen(args_for(emu.port, *opts, "watch", "--service", "NIPROV", *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    return proc, Lines(proc)


def finish(proc: subprocess.Popen, lines: Lines) -> str:
    """Wait for the exit (bounded); its stderr. stdout stays with the Lines reader."""
    try:
        proc.wait(timeout=TIMEOUT * 4)
        return proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        lines.thread.join(TIMEOUT)           # at EOF once the process is gone
        proc.stdout.close()
        proc.stderr.close()


def posting_client(emu: Emulator) -> Client:
    poster = Client(emu.url)
    poster.login("poster")
    return poster


def test_watch_prints_the_refresh_then_each_update_until_count(emu):
    proc, lines = start_watch(emu, "--ric", "UMER.TST", "--count", "2")
    assert lines.next() == ('REFRESH NIPROV UMER.TST Open/Ok "All is well" '
                            'BID=22.1 ASK=24.5 TRDPRC_1=23.3 GEN_TEXT16="some text"')
    poster = posting_client(emu)
    poster.roundtrip(post_msg(fields={"BID": 22.2}, post_id=1))
    poster.roundtrip(post_msg(fields={"ASK": 24.6, "GEN_TEXT16": "x"}, post_id=2))
    assert lines.next() == "UPDATE NIPROV UMER.TST BID=22.2"
    assert lines.next() == 'UPDATE NIPROV UMER.TST ASK=24.6 GEN_TEXT16="x"'
    err = finish(proc, lines)
    poster.close()
    assert proc.returncode == 0, err
    assert emu.wait_for(lambda m: m.get("Type") == "Close" and m.get("Domain") == "Login", TIMEOUT)


def test_watch_json_lines(emu):
    proc = subprocess.Popen(args_for(emu.port, "--json", "watch", "--service", "NIPROV", "--ric", "UMER.TST",
                                     "--field", "BID", "--count", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lines = Lines(proc)
    refresh = json.loads(lines.next())
    assert refresh["type"] == "refresh" and refresh["fields"] == {"BID": 22.1}
    assert refresh["state"]["stream"] == "Open"
    poster = posting_client(emu)
    poster.roundtrip(post_msg(fields={"BID": 1.5}, PostUserInfo={"Address": "10.0.0.9", "UserID": 5}))
    assert json.loads(lines.next()) == {"type": "update", "service": "NIPROV", "ric": "UMER.TST",
                                        "fields": {"BID": 1.5},
                                        "post_user_info": {"address": "10.0.0.9", "user_id": 5}}
    finish(proc, lines)
    poster.close()
    assert proc.returncode == 0
    assert requests(emu)[0]["View"] == ["BID"]


def test_watch_reports_an_item_not_found_and_goes_on_exit_5(emu):
    proc, lines = start_watch(emu, "--ric", "NOPE.TST", "--ric", "UMER.TST", "--count", "1")
    first = {lines.next(), lines.next()}
    assert 'STATUS NIPROV NOPE.TST Closed/Suspect NotFound "**The record could not be found"' in first
    poster = posting_client(emu)
    poster.roundtrip(post_msg(fields={"BID": 3.0}))
    assert lines.next() == "UPDATE NIPROV UMER.TST BID=3.0"
    err = finish(proc, lines)
    poster.close()
    assert proc.returncode == 5 and "hint: the item is not in that service" in err


def test_watch_ends_when_every_stream_is_closed(emu):
    proc, lines = start_watch(emu, "--ric", "NOPE.TST")
    assert lines.next().startswith("STATUS NIPROV NOPE.TST Closed/Suspect NotFound")
    finish(proc, lines)
    assert proc.returncode == 5


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_watch_until_interrupted_exit_0(emu, sig):
    proc, lines = start_watch(emu, "--ric", "UMER.TST")
    assert lines.next().startswith("REFRESH NIPROV UMER.TST")
    proc.send_signal(sig)
    err = finish(proc, lines)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert emu.wait_for(lambda m: m.get("Type") == "Close" and m.get("Domain") == "Login", TIMEOUT)


def test_watch_no_reply_exit_6():
    with Emulator(faults=Faults(hang_after_login=True)) as emu:
        proc, lines = start_watch(emu, "--ric", "UMER.TST", "--timeout", "0.3")
        assert lines.next() == 'TIMEOUT NIPROV UMER.TST "no reply within 0.3s"'
        finish(proc, lines)
    assert proc.returncode == 6


def test_watch_requests_the_items_again_after_a_reconnect(emu):
    proc, lines = start_watch(emu, "--ric", "UMER.TST", "--count", "1", opts=("--reconnect-min", "0.01"))
    assert lines.next().startswith("REFRESH NIPROV UMER.TST")
    emu.drop_connections()
    assert lines.next().startswith("REFRESH NIPROV UMER.TST")      # the stream, requested again
    poster = posting_client(emu)
    poster.roundtrip(post_msg(fields={"BID": 4.0}))
    assert lines.next() == "UPDATE NIPROV UMER.TST BID=4.0"
    err = finish(proc, lines)
    poster.close()
    assert proc.returncode == 0, err
    assert len(requests(emu)) == 2 and "reconnected" in err


# ------------------------------------------------------------ post --verify

def test_verify_reads_the_item_back(emu):
    result = post(emu, "--verify", fields=("BID=23", "GEN_TEXT16=abc"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ('ACK NIPROV UMER.TST post 1\n'
                             'VERIFIED NIPROV UMER.TST BID=23 GEN_TEXT16="abc"\n')
    [request] = requests(emu)
    assert request["Streaming"] is False and request["View"] == ["BID", "GEN_TEXT16"]


@pytest.fixture
def permissive_emu():
    """An emulator whose converter allows enum display strings (protocol.md section 10): an
    unknown one is acknowledged and stored blank."""
    dictionary = Dictionary.builtin()
    dictionary.enum_names = True
    with Emulator(dictionary=dictionary) as emulator:
        yield emulator


def test_verify_mismatch_field_by_field_exit_5(permissive_emu):
    """A permissive converter stores an unknown enum display string as blank, after an Ack."""
    result = post(permissive_emu, "--verify", fields=("RDN_EXCHID=NYX", "BID=1.25", "CURRENCY=USX", "ASK=2"))
    assert result.returncode == 5
    assert result.stdout == ("ACK NIPROV UMER.TST post 1\n"
                             'MISMATCH NIPROV UMER.TST RDN_EXCHID posted "NYX", read null\n'
                             'MISMATCH NIPROV UMER.TST CURRENCY posted "USX", read null\n')
    assert "hint: RDN_EXCHID, CURRENCY stored blank" in result.stderr


def test_verify_a_known_display_name_maps_on_a_permissive_converter(permissive_emu):
    result = post(permissive_emu, "--verify", fields=("CURRENCY=USD",))
    assert result.returncode == 5 and 'CURRENCY posted "USD", read 840' in result.stdout


def test_verify_mismatch_as_json(permissive_emu):
    emu = permissive_emu
    result = post(emu, "--verify", fields=("RDN_EXCHID=NYX",), opts=("--json",))
    assert result.returncode == 5
    ack, mismatch = map(json.loads, result.stdout.splitlines())
    assert ack["status"] == "ack"
    assert mismatch == {"status": "mismatch", "service": "NIPROV", "ric": "UMER.TST",
                        "mismatches": [{"field": "RDN_EXCHID", "posted": "NYX", "read": None, "present": True}],
                        "post_user_info": mismatch["post_user_info"]}
    assert mismatch["post_user_info"]["address"] == "127.0.0.1"


def test_verify_names_fids_through_the_dictionary(emu, tmp_path):
    result = post(emu, "--verify", fields=("22=30.5",))
    assert result.returncode == 0 and "not verified: FID 22" in result.stderr
    dictionary = tmp_path / "RDMFieldDictionary"
    dictionary.write_text(DICTIONARY)
    result = post(emu, "--verify", fields=("22=30.5",), opts=("--dictionary", str(dictionary)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "VERIFIED NIPROV UMER.TST 22=30.5"
    assert requests(emu)[-1]["View"] == ["BID"]


def test_verify_after_a_nak_reads_nothing_back(emu):
    result = post(emu, "--verify", ric="NOPE.TST")
    assert result.returncode == 5 and result.stdout.startswith("NAK ")
    assert requests(emu) == []


# --------------------------------------------------------- post --on-stream

def test_on_stream_post_opens_the_item_and_posts_on_its_stream(emu):
    result = post(emu, "--on-stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ACK NIPROV UMER.TST post 1\n"
    kinds = [(m.get("Type", "Request"), m["ID"]) for m in emu.received() if m.get("Type") != "Pong"]
    assert kinds == [("Request", 1), ("Request", 2), ("Post", 2), ("Close", 2), ("Close", 1)]
    [the_post] = received(emu, "Post")
    assert "Key" not in the_post and the_post["Message"]["Fields"] == {"BID": 22.1}
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 22.1


def test_on_stream_post_to_a_missing_item_exit_5(emu):
    result = post(emu, "--on-stream", ric="NEW.TST")
    assert result.returncode == 5 and result.stdout == ""
    assert 'cannot open NIPROV NEW.TST to post on its stream: Closed/Suspect NotFound' in result.stderr
    assert "off-stream post --refresh" in result.stderr
    assert received(emu, "Post") == []


def test_on_stream_nak_exit_5():
    with Emulator(faults=Faults(nak_rics=[parse_nak_rule("UMER.TST:DeniedBySrc:[500]: Unknown Item")])) as emu:
        result = post(emu, "--on-stream", "--verify")
    assert result.returncode == 5
    assert result.stdout == 'NAK NIPROV UMER.TST post 1 DeniedBySrc "[500]: Unknown Item"\n'


def test_verify_and_on_stream_are_for_one_post(emu, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("RIC,BID\nUMER.TST,1\n")
    result = contribute(emu.port, "post", "--service", "NIPROV", "--file", str(rows), "--verify")
    assert result.returncode == 2 and "not with --file" in result.stderr


# -------------------------------------------------------------------- check

def check(port: int, *args: str, opts=(), host: str = "127.0.0.1", env=None) -> subprocess.CompletedProcess:
    cmd = args_for(port, "--connect-timeout", "1", *opts, "check", *args)
    cmd[cmd.index("--host") + 1] = host
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=env or ENV,
                          stdin=subprocess.DEVNULL)


def check_server(server: ContextManager[int]) -> subprocess.CompletedProcess:
    """`check` against a test server (serve_in_thread, raw_server); the server is stopped after."""
    with server as port:
        return check(port)


def marks(result: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(mark, step) for each step line of a text checklist."""
    return [tuple(line.split()[:2]) for line in result.stdout.splitlines() if line.startswith("  ")
            and line.split()[0] in ("ok", "FAIL", "skip")]


STEPS = ["resolve", "tcp", "websocket", "login", "post", "read-back"]


def expect(result, passed: int, code: int) -> None:
    """The first `passed` steps ok, then (when code != 0) one FAIL and the rest skipped."""
    wanted = [("ok", s) for s in STEPS[:passed]]
    if code:
        wanted += [("FAIL", STEPS[passed])] + [("skip", s) for s in STEPS[passed + 1:]]
    assert marks(result) == wanted, result.stdout
    assert result.returncode == code, result.stdout + result.stderr


def test_check_a_good_setup_passes_every_step(emu):
    result = check(emu.port, "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=22.4")
    expect(result, 6, 0)
    lines = result.stdout.splitlines()
    assert lines[0] == f"check ws://127.0.0.1:{emu.port}/WebSocket"
    assert "HTTP 101, subprotocol tr_json2" in lines[3]
    assert 'tester (ApplicationId 256, Position 127.0.0.1/' in lines[4]
    assert "SupportOMMPost=1 PingTimeout=30 MaxMsgSize=61430" in lines[4]
    assert "Update BID=22.4: ACK NIPROV UMER.TST post 1" in lines[5]
    assert 'BID=22.4 as posted (NonStreaming/Ok "All is well")' in lines[6]
    assert lines[-1] == "passed: 6 steps"
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 22.4


def test_check_without_a_ric_stops_after_the_login(emu):
    result = check(emu.port)
    assert marks(result) == [("ok", s) for s in STEPS[:4]] + [("skip", "post"), ("skip", "read-back")]
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "passed: 4 steps, 2 skipped"


def test_check_refresh_creates_the_item(emu):
    result = check(emu.port, "--service", "NIPROV", "--ric", "NEW.TST", "--field", "BID=1", "--refresh")
    expect(result, 6, 0)
    assert emu.item("NIPROV", "NEW.TST") == {"BID": 1}


def test_check_as_one_json_document(emu):
    result = check(emu.port, "--service", "NIPROV", "--ric", "NOPE.TST", "--field", "BID=1", opts=("--json",))
    assert result.returncode == 5
    doc = json.loads(result.stdout)
    assert doc["result"] == "failed" and doc["exit_code"] == 5 and doc["failed_step"] == "post"
    assert [(s["step"], s["status"]) for s in doc["steps"]] == [
        ("resolve", "ok"), ("tcp", "ok"), ("websocket", "ok"), ("login", "ok"), ("post", "fail"),
        ("read-back", "skipped")]
    failed = doc["steps"][4]
    assert failed["detail"] == 'NAK NIPROV NOPE.TST post 1 SymbolUnknown "F44: Unable to find item on post update."'
    assert "--refresh" in failed["hint"]


def test_check_unresolvable_host_exit_3():
    result = check(15000, host="::1%nosuchif")     # fails in getaddrinfo without asking a DNS server
    expect(result, 0, 3)
    assert "cannot resolve ::1%nosuchif" in result.stdout and "hint: check --host" in result.stdout


def test_check_invalid_host_name_exit_3():
    name = "a" * 64 + ".example"                   # a DNS label holds 63 characters at most
    result = check(15000, host=name)
    expect(result, 0, 3)
    assert f"{name} is not a valid host name" in result.stdout


def test_check_closed_port_exit_3():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                  # bound, never listening: refused
        result = check(port)
    expect(result, 1, 3)
    assert f"127.0.0.1:{port}: connection refused, nothing is listening" in result.stdout


class HelloHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<html>hello</html>\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_check_a_web_server_is_not_websocket_exit_3():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HelloHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = check(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    expect(result, 2, 3)
    assert "answered the WebSocket upgrade on /WebSocket with HTTP 200 OK: <html>hello</html>" in result.stdout
    assert "not an ADS WebSocket port" in result.stdout


@contextlib.contextmanager
def raw_server(reply: bytes | None) -> Iterator[int]:
    """A TCP server on loopback that answers every connection with `reply` (None: never answers),
    for a with block: its port. Leaving the block closes it and every connection it holds."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.recv(4096)
                conn.sendall(reply)
                conn.close()
    threading.Thread(target=serve, daemon=True).start()

    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_check_a_server_that_does_not_speak_http_exit_3():
    result = check_server(raw_server(b"SSH-2.0-OpenSSH_9.6\r\n"))
    expect(result, 2, 3)
    assert "does not speak HTTP or WebSocket: it answered b'SSH-2.0-OpenSSH_9.6" in result.stdout


def test_check_a_server_that_never_answers_the_upgrade_exit_6():
    result = check_server(raw_server(None))
    expect(result, 2, 6)
    assert "no answer to the WebSocket upgrade within 1s" in result.stdout


async def idle(ws):
    await ws.wait_closed()


def test_check_a_refused_subprotocol_exit_3():
    result = check_server(serve_in_thread(idle, subprotocols=("tr_json",)))    # speaks only the older tr_json
    expect(result, 2, 3)
    assert "the server refused subprotocol tr_json2: HTTP 400 Bad Request" in result.stdout
    assert "expected one of tr_json" in result.stdout            # the server's own words


def test_check_a_websocket_server_without_tr_json2_exit_3():
    result = check_server(serve_in_thread(idle, subprotocols=()))               # upgrades, picks no subprotocol
    expect(result, 2, 3)
    assert "accepted the WebSocket upgrade but not subprotocol tr_json2 (it chose none)" in result.stdout


def test_check_a_denied_login_exit_4():
    world = World.default()
    world.deny_users = {"tester"}
    with Emulator(world) as emu:
        result = check(emu.port, "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=1")
    expect(result, 3, 4)
    assert 'Closed/Suspect UserUnknownToPermSys "tester, unknown to system."' in result.stdout
    assert "hint: the user is unknown to DACS" in result.stdout
    assert result.stdout.splitlines()[-1] == "failed at login: exit 4"


def test_check_a_login_without_an_answer_exit_6():
    async def silent(ws):
        await ws.recv()
        await ws.wait_closed()
    result = check_server(serve_in_thread(silent))
    expect(result, 3, 6)
    assert "no login response" in result.stdout


def test_check_a_login_without_post_support_exit_4():
    async def no_posting(ws):
        await accept_login(ws, {"SupportOMMPost": 0})
        await ws.wait_closed()
    result = check_server(serve_in_thread(no_posting))
    expect(result, 3, 4)
    assert "the login was accepted, but SupportOMMPost is 0" in result.stdout


def test_check_a_nak_on_the_test_post_exit_5():
    world = World.default()
    world.users = {"tester": {"DIRECT_FEED"}}            # may post to DIRECT_FEED only
    with Emulator(world) as emu:
        result = check(emu.port, "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=1")
    expect(result, 4, 5)
    assert "NAK NIPROV UMER.TST post 1 AccessDenied" in result.stdout
    assert "post permission" in result.stdout


def test_check_an_unknown_field_on_the_test_post_exit_5(emu):
    result = check(emu.port, "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID_CUSTOM=1")
    expect(result, 4, 5)
    assert "Unexpected FID" in result.stdout and "field dictionary" in result.stdout


def test_check_no_ack_for_the_test_post_exit_6():
    with Emulator(faults=Faults(no_ack_rics=["UMER.TST"])) as emu:
        result = check(emu.port, "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=1",
                       "--ack-timeout", "0.3")
    expect(result, 4, 6)
    assert "TIMEOUT NIPROV UMER.TST post 1" in result.stdout


def test_check_a_read_back_mismatch_exit_5(permissive_emu):
    result = check(permissive_emu.port, "--service", "NIPROV", "--ric", "UMER.TST", "--field", "RDN_EXCHID=NYX")
    expect(result, 5, 5)
    assert 'RDN_EXCHID posted "NYX", read null' in result.stdout


def test_check_quiet_prints_only_a_failure(emu):
    assert check(emu.port, opts=("-q",)).stdout == ""
    result = check(emu.port, "--service", "NIPROV", "--ric", "NOPE.TST", "--field", "BID=1", opts=("-q",))
    assert result.returncode == 5 and "FAIL  post" in result.stdout


def test_check_uses_the_configured_service(emu, tmp_path):
    config = tmp_path / "config.ini"
    config.write_text("[contribute]\nservice = NIPROV\n")
    cmd = args_for(emu.port, "check", "--ric", "UMER.TST", "--field", "BID=2")
    cmd[cmd.index("--config") + 1] = str(config)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_over_tls_with_a_trusted_certificate():
    with Emulator(tls=TLS) as emu:
        result = check(emu.port, "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=5",
                       opts=("--tls",), env={**ENV, "SSL_CERT_FILE": TLS[0]})
    expect(result, 6, 0)
    assert result.stdout.startswith(f"check wss://127.0.0.1:{emu.port}/WebSocket")
    assert f"connected to 127.0.0.1:{emu.port}, TLSv1." in result.stdout


def test_check_over_tls_with_an_untrusted_certificate_exit_3():
    with Emulator(tls=TLS) as emu:
        result = check(emu.port, opts=("--tls",))
    expect(result, 1, 3)
    assert "TLS: [SSL: CERTIFICATE_VERIFY_FAILED]" in result.stdout and "SSL_CERT_FILE" in result.stdout


def test_watch_requests_many_items_again_after_a_reconnect():
    """800 streaming Requests are about 64 KB: sent again in one frame they would pass MaxMsgSize."""
    world = World.default()
    rics = [f"R{i:04d}.TST" for i in range(800)]
    for ric in rics:
        world.items[("NIPROV", "MarketPrice", ric)] = Item({"BID": 1.0})
    with Emulator(world) as emu:
        proc, lines = start_watch(emu, *[a for ric in rics for a in ("--ric", ric)], "--count", "1",
                                  opts=("--reconnect-min", "0.01"))
        assert all(lines.next().startswith("REFRESH NIPROV R") for _ in rics)
        emu.drop_connections()
        assert all(lines.next().startswith("REFRESH NIPROV R") for _ in rics)   # every stream again
        poster = posting_client(emu)
        poster.roundtrip(post_msg(ric="R0799.TST", fields={"BID": 2.0}))
        assert lines.next() == "UPDATE NIPROV R0799.TST BID=2.0"
        err = finish(proc, lines)
        poster.close()
    assert proc.returncode == 0, err
    assert "reconnecting" in err and err.count("reconnected") == 1       # one drop, one recovery: no 1009 loop
