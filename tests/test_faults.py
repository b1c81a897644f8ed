"""Issue 10: the promise kept under faults: no hang, no livelock, no silent loss, no internal error.

One test (or more) per numbered item of the issue, named for the promise it guards; the item's
number ends the name. The real CLI runs as a process against the emulator, or against a small
misbehaving server, over a real loopback socket. Every wait is bounded.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter

import pytest

from ads_emulator import Emulator, Faults, Item, World
from conftest import TIMEOUT, Client, Running, serve_in_thread, unread_bytes_to, wait_until
from contribute import ContributeError, Reporter, Session, Settings
from test_e2e import CONTRIBUTE, ENV, args_for, contribute, logins, post, received
from test_ops import accept_login, raw_server

FAST = ["--reconnect-min", "0.05", "--reconnect-max", "0.2"]


def bulk_args(port: int, *args: str, opts=()) -> list[str]:
    return args_for(port, *opts, "post", "--service", "NIPROV", *args)


def bulk(port: int, *args: str, opts=(), stdin: str | None = None, timeout: float = TIMEOUT * 4):
    return subprocess.run(bulk_args(port, *args, opts=opts), capture_output=True, text=True, env=ENV,
                          timeout=timeout, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def parsed(out: str) -> tuple[list[dict], dict]:
    """--json output: the outcome lines, and the summary."""
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if "status" in line], next(line["summary"] for line in lines if "summary" in line)


def interrupt_twice(run: Running, sig: signal.Signals) -> None:
    """Two interrupts, the second once the first was handled (-v logs it): a signal sent while
    the same one is still pending is merged into it by the kernel."""
    run.proc.send_signal(sig)
    run.wait_line("err", lambda line: f"interrupted ({sig.name})" in line)
    run.proc.send_signal(sig)


def csv_file(tmp_path, rows: list[str], name: str = "rows.csv"):
    path = tmp_path / name
    path.write_text("RIC,BID\n" + "".join(f"{row}\n" for row in rows))
    return path


# ------------------------------------------------------------ hangs and livelocks

def test_a_peer_that_stops_reading_cannot_hang_the_tool_1(tmp_path):
    """20 MB of posts to an ADS that reads nothing after the login: sending stalls in the kernel,
    and still SIGTERM stops the tool (the second one ends the wait for Acks); every row read before
    the stop is accounted for, and the summary says how far the input was read."""
    path = tmp_path / "rows.csv"
    path.write_text("RIC,GEN_TEXT16\n" + "".join(f"R{i},{'x' * 20000}\n" for i in range(1000)))
    with Emulator(faults=Faults(hang_after_login=True)) as emu:
        run = Running(bulk_args(emu.port, "--file", str(path), "--ack-timeout", "60", opts=["--json", "-v"]),
                      ENV, stdin=subprocess.DEVNULL)
        wait_until(lambda: unread_bytes_to(emu.port) > 1_000_000, what="the ADS falling behind")
        interrupt_twice(run, signal.SIGTERM)
        code = run.finish(TIMEOUT * 2)
    assert code == 130, run.err
    outcomes, summary = parsed(run.out)
    rows = summary["lines"] - 1                                       # read before the stop, after the header
    assert 0 < rows <= 1000 and summary["acknowledged"] == 0 and summary["lost"] + summary["unsent"] == rows
    assert len(outcomes) == rows and {o["status"] for o in outcomes} <= {"lost", "unsent"}


def test_a_post_that_keeps_failing_is_not_resent_forever_2():
    """An ADS that drops the connection at every post: each post is resent only within its ack
    timeout (the deadline is set once), then ends TIMEOUT."""
    with Emulator(faults=Faults(drop_after_posts=1)) as emu:
        result = contribute(emu.port, *FAST, "run", "--service", "NIPROV", "--ric", "UMER.TST", "--field",
                            "BID=1", "--no-refresh", "--interval", "0.01", "--count", "2", "--ack-timeout", "1")
        applied = Counter(m["PostID"] for m in received(emu, "Post"))
    assert result.returncode == 6, result.stderr[-1000:]
    assert result.stdout.splitlines() == [f'TIMEOUT NIPROV UMER.TST post {i} "no ack within the ack timeout"'
                                          for i in (1, 2)]
    assert applied[1] > 1 and set(applied) <= {1, 2}                  # resent, but not forever


def test_a_hung_ads_ends_posts_as_timeout_not_endless_reconnects_2(tmp_path):
    """A hung ADS announcing PingTimeout 1: the tool reconnects, and its posts still end at their
    ack deadline."""
    path = csv_file(tmp_path, [f"UMER.TST,{i}" for i in range(20)])
    with Emulator(faults=Faults(hang_after_login=True), ping_timeout=1) as emu:
        result = bulk(emu.port, "--file", str(path), "--ack-timeout", "2", opts=FAST)
        assert logins(emu) >= 2                                       # it did reconnect
    assert result.returncode == 6, result.stderr[-1000:]
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["TIMEOUT"] * 20


@pytest.mark.parametrize("args,env", [
    (["post", "--ric", "X", "--field", "BID=1", "--ack-timeout", "nan"], {}),
    (["run", "--ric", "X", "--field", "BID=1", "--interval", "nan"], {}),
    (["post", "--file", "-", "--rate", "nan"], {}),
    (["post", "--ric", "X", "--field", "BID=1"], {"CONTRIBUTE_ACK_TIMEOUT": "nan"}),
    (["--connect-timeout", "inf", "login"], {}),
    (["--connect-timeout", "1e10", "login"], {}),
    (["--connect-timeout", "nan", "login"], {}),
    (["get", "--ric", "X", "--timeout", "nan"], {}),
])
def test_options_in_seconds_refuse_nan_and_infinity_3(emu, args, env):
    if args[0] in ("post", "run", "get"):
        args = [args[0], "--service", "NIPROV", *args[1:]]
    result = subprocess.run(args_for(emu.port, *args), capture_output=True, text=True, timeout=TIMEOUT * 4,
                            env={**ENV, **env}, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert not emu.logged_in.is_set()


def test_failed_connection_attempts_leave_no_thread_or_descriptor_behind_4():
    """A host that accepts TCP but never answers the upgrade: each failed attempt's reader thread
    and socket end with the attempt, while the host still holds its side open."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return
    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    before = set(threading.enumerate())
    fds = len(os.listdir("/proc/self/fd"))
    try:
        settings = Settings(f"127.0.0.1:{listener.getsockname()[1]}", user="tester", connect_timeout=0.3)
        for _ in range(5):
            with Session(settings, Reporter(io.StringIO(), io.StringIO())) as session:
                with pytest.raises(ContributeError):
                    session.connect()
        for thread in set(threading.enumerate()) - before:
            thread.join(TIMEOUT)
        assert set(threading.enumerate()) <= before
        assert len(held) == 5 and len(os.listdir("/proc/self/fd")) == fds + len(held)   # ours all closed
    finally:
        listener.close()
        for conn in held:
            conn.close()
        acceptor.join(TIMEOUT)


# ------------------------------------------------------------ silent or hidden loss

def test_failed_out_naming_the_input_is_refused_and_the_input_kept_5(emu, tmp_path):
    path = csv_file(tmp_path, ["UMER.TST,1"] * 10)
    text = path.read_text()
    result = bulk(emu.port, "--file", str(path), "--failed-out", str(path))
    assert result.returncode == 2 and "is the input file" in result.stderr
    with open(path) as stdin:                                   # the same file, as stdin
        result = subprocess.run(bulk_args(emu.port, "--file", "-", "--failed-out", str(path)), stdin=stdin,
                                capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == 2 and "is the input file" in result.stderr
    assert path.read_text() == text and not emu.logged_in.is_set()


def test_a_configured_sim_does_not_override_an_explicit_host_6(emu, tmp_path):
    config = tmp_path / "config.ini"
    config.write_text("[contribute]\nsim = yes\nservice = NIPROV\n")
    cmd = [sys.executable, CONTRIBUTE, "--config", str(config), "--host", f"127.0.0.1:{emu.port}",
           "--user", "tester", "post", "--ric", "UMER.TST", "--field", "BID=5"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == 2 and "--sim (from the config file)" in result.stderr
    assert "ACK" not in result.stdout and not emu.logged_in.is_set()
    config.write_text("[contribute]\nhost = 127.0.0.1:1\nservice = NIPROV\n")    # a --sim flag wins
    cmd = [sys.executable, CONTRIBUTE, "--config", str(config), "--sim", "post", "--ric", "UMER.TST",
           "--field", "BID=5"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == 0 and result.stdout == "ACK NIPROV UMER.TST post 1\n", result.stderr


def test_a_line_that_is_not_utf8_costs_that_line_only_7(emu, tmp_path):
    lines = ("RIC,BID\n" + "".join(f"UMER.TST,{i}\n" for i in range(1000))).encode().split(b"\n")
    lines[701] = b"UMER.TST,caf\xe9"                            # a cp1252 e-acute on line 702
    path = tmp_path / "rows.csv"
    path.write_bytes(b"\n".join(lines))
    result = bulk(emu.port, "--file", str(path), opts=["--json"])
    outcomes, summary = parsed(result.stdout)
    assert result.returncode == 2
    assert outcomes == [{"status": "invalid", "line": 702, "text": "not UTF-8: byte 0xe9 at byte 13 of the line"}]
    assert summary["acknowledged"] == 999 and summary["lines"] == 1001


def test_an_oversized_csv_field_or_a_deep_json_line_costs_that_line_only_7(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("RIC,GEN_TEXT16\n" + "UMER.TST,a\n" * 3 + f"UMER.TST,{'z' * 200000}\n" + "UMER.TST,b\n" * 3)
    result = bulk(emu.port, "--file", str(path), opts=["--json"])
    outcomes, summary = parsed(result.stdout)
    assert [(o["status"], o["line"]) for o in outcomes] == [("invalid", 5)] and "field larger" in outcomes[0]["text"]
    assert summary["acknowledged"] == 6 and result.returncode == 2
    path = tmp_path / "rows.jsonl"
    row = '{"ric": "UMER.TST", "fields": {"BID": 1}}\n'
    path.write_text(row * 2 + "[" * 100000 + "]" * 100000 + "\n" + row * 2)
    result = bulk(emu.port, "--file", str(path), opts=["--json"])
    outcomes, summary = parsed(result.stdout)
    assert [(o["status"], o["line"]) for o in outcomes] == [("invalid", 3)]
    assert summary["acknowledged"] == 4 and result.returncode == 2


def test_rows_read_but_unsent_at_an_interrupt_go_to_failed_out_8(tmp_path):
    """Interrupted while reconnecting to an ADS that went away: rows read meanwhile are reported
    UNSENT and written to --failed-out, so that they can be posted again."""
    failed = tmp_path / "failed.csv"
    emu = Emulator().start()
    try:
        run = Running(bulk_args(emu.port, "--file", "-", "--ack-timeout", "30", "--failed-out", str(failed),
                                opts=["-v", *FAST]), ENV)
        run.write("RIC,BID\n" + "".join(f"UMER.TST,{i}\n" for i in range(5)))
        emu.wait_for(lambda m: m.get("PostID") == 5, TIMEOUT)
    finally:
        emu.stop()                                                    # the ADS is gone
    run.wait_line("err", lambda line: "reconnecting to" in line)
    run.write("UMER.TST,10\nUMER.TST,11\nUMER.TST,12\n")
    run.proc.stdin.close()
    run.wait_line("err", lambda line: "every line read (9)" in line)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 130, run.err
    assert failed.read_bytes().decode() == "RIC,BID\r\nUMER.TST,10\r\nUMER.TST,11\r\nUMER.TST,12\r\n"
    assert [line.split()[0] for line in run.lines["out"]] == ["UNSENT"] * 3


def test_a_value_beyond_the_range_of_a_number_costs_its_row_only_9(emu, tmp_path):
    rows = [f"UMER.TST,{i}" for i in range(300)]
    rows[149] = "UMER.TST,1e999"
    result = bulk(emu.port, "--file", str(csv_file(tmp_path, rows)), opts=["--json"])
    outcomes, summary = parsed(result.stdout)
    assert outcomes == [{"status": "invalid", "line": 151, "text": "1e999 is beyond the range of a number"}]
    assert summary["acknowledged"] == 299 and result.returncode == 2
    path = tmp_path / "rows.jsonl"
    path.write_text('{"ric": "UMER.TST", "fields": {"BID": 1}}\n{"ric": "UMER.TST", "fields": {"BID": NaN}}\n'
                    '{"ric": "UMER.TST", "fields": {"BID": 2}}\n')
    result = bulk(emu.port, "--file", str(path), opts=["--json"])
    outcomes, summary = parsed(result.stdout)
    assert [(o["status"], o["line"]) for o in outcomes] == [("invalid", 2)] and summary["acknowledged"] == 2
    result = post(emu, fields=("BID=1e999",))
    assert result.returncode == 2 and "beyond the range" in result.stderr and logins(emu) == 2


def test_run_creates_its_item_again_on_an_ads_that_restarted_10():
    first = Emulator().start()
    port = first.port
    run = Running(args_for(port, *FAST, "run", "--service", "NIPROV", "--ric", "NEW.RUN", "--field",
                           "BID=1.5", "--interval", "0.02"), ENV, stdin=subprocess.DEVNULL)
    try:
        first.wait_for(lambda m: m.get("PostID") == 3, TIMEOUT)
    finally:
        first.stop()                                         # its cache goes with it
    with Emulator(port=port) as second:
        second.wait_for(lambda m: m.get("Type") == "Post" and m["Message"]["Type"] == "Refresh", TIMEOUT * 2)
        second.wait_for(lambda m: m.get("Type") == "Post" and m["Message"]["Type"] == "Update", TIMEOUT)
        run.proc.send_signal(signal.SIGINT)
        code = run.finish()
        assert second.item("NIPROV", "NEW.RUN") == {"BID": 1.5}
    assert code == 0, run.err
    assert run.lines["out"] and all(line.startswith("ACK ") for line in run.lines["out"])


def test_run_resends_the_post_it_was_waiting_for_as_a_refresh_10():
    """After a reconnect, run's first post is a Refresh also when it is one resent: the post the
    ADS dropped the connection on (applied, not acknowledged) goes again as a Refresh, with its
    PostID and fields, each time the connection drops before its Ack."""
    with Emulator(faults=Faults(drop_after_posts=3)) as emu:
        result = subprocess.run(args_for(emu.port, *FAST, "run", "--service", "NIPROV", "--ric", "NEW.RUN",
                                         "--field", "BID=1.5", "--interval", "0.02", "--count", "4"),
                                capture_output=True, text=True, env=ENV, timeout=TIMEOUT * 4, stdin=subprocess.DEVNULL)
        posts = received(emu, "Post")
    assert result.returncode == 0, result.stderr
    assert [(m["PostID"], m["Message"]["Type"]) for m in posts] == \
        [(1, "Refresh"), (2, "Update"), (3, "Update"), (3, "Refresh"), (4, "Update"), (5, "Update"), (5, "Refresh")]
    assert all(m["Message"]["Fields"] == {"BID": 1.5} for m in posts)


def test_strict_stops_at_a_row_with_no_service_11(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("RIC,SERVICE,BID\nUMER.TST,NIPROV,1\nUMER.TST,,2\nUMER.TST,NIPROV,3\n")
    result = subprocess.run(args_for(emu.port, "post", "--file", str(path), "--strict"), capture_output=True,
                            text=True, timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == 2
    assert [p["Message"]["Fields"]["BID"] for p in received(emu, "Post")] == [1]
    assert 'INVALID line 3 "no service' in result.stdout and "UNSENT NIPROV UMER.TST line 4" in result.stdout


# ------------------------------------------------------------ exit codes and internal errors

@pytest.mark.parametrize("where", ["dir", "missing"])
def test_an_unwritable_failed_out_is_a_usage_error_before_any_post_12(emu, tmp_path, where):
    target = tmp_path if where == "dir" else tmp_path / "no" / "such" / "failed.csv"
    result = bulk(emu.port, "--file", str(csv_file(tmp_path, ["UMER.TST,1"])), "--failed-out", str(target))
    assert result.returncode == 2 and "--failed-out: cannot write" in result.stderr
    assert "internal error" not in result.stderr and not emu.logged_in.is_set()


def test_a_post_interrupted_twice_is_lost_and_exits_130_13():
    with Emulator(faults=Faults(no_ack_rics=["UMER.TST"])) as emu:
        run = Running(args_for(emu.port, "-v", "post", "--service", "NIPROV", "--ric", "UMER.TST", "--field",
                               "BID=1", "--ack-timeout", "30"), ENV, stdin=subprocess.DEVNULL)
        emu.wait_for(lambda m: m.get("Type") == "Post", TIMEOUT)
        interrupt_twice(run, signal.SIGINT)
        assert run.finish() == 130, run.err
    assert run.lines["out"] == ['LOST NIPROV UMER.TST post 1 "not acknowledged before the session ended"']


def test_stdout_closed_by_its_reader_stops_the_run_cleanly_14(emu, tmp_path):
    path = csv_file(tmp_path, [f"NOPE{i}.TST,1" for i in range(300)])       # every row Nak'd: printed
    read, write = os.pipe()
    os.close(read)                                                            # `| head -0`
    try:
        result = subprocess.run(bulk_args(emu.port, "--file", str(path)), stdout=write, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, timeout=TIMEOUT * 4, env=ENV)
    finally:
        os.close(write)
    assert result.returncode == 130, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert "bulk: lines" in result.stderr                         # the summary still goes to stderr


@pytest.mark.parametrize("closed,args,code,words", [
    ("<&-", ["--file", "-"], 2, "stdin is closed"),
    (">&-", ["--ric", "UMER.TST", "--field", "BID=1"], 2, "stdout is closed"),
    ("2>&-", ["--ric", "NOPE.TST", "--field", "BID=1"], 5, None),
])
def test_a_closed_stdin_stdout_or_stderr_is_handled_14(emu, closed, args, code, words):
    cmd = ["sh", "-c", f'exec "$0" "$@" {closed}', *bulk_args(emu.port, *args)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == code, result.stderr
    if words:
        assert words in result.stderr and len(result.stderr.splitlines()) == 1
    else:
        assert result.stdout.startswith("NAK NIPROV NOPE.TST post 1 SymbolUnknown")


def test_ctrl_c_during_start_up_exits_130_without_a_traceback_14(tmp_path):
    fifo = tmp_path / "config.ini"
    os.mkfifo(fifo)                            # reading the config blocks until we write to it
    run = Running([sys.executable, CONTRIBUTE, "--config", str(fifo), "login"], ENV, stdin=subprocess.DEVNULL)
    with open(fifo, "w"):                      # opened once the tool has opened it to read
        run.proc.send_signal(signal.SIGINT)
    # Closed now: a signal that came just before the tool's read() began does not interrupt the
    # read (the kernel had nothing to interrupt yet); the read then returns, and Python runs the
    # pending handler at once. Either way the interrupt is seen while the config is being read.
    code = run.finish()
    assert code == 130 and run.lines["err"] == ["contribute: interrupted"]


def test_a_login_that_is_only_suspect_is_news_not_a_denial_15():
    async def suspect_ads(ws):
        json.loads(await ws.recv())
        await ws.send(json.dumps([{"ID": 1, "Type": "Refresh", "Domain": "Login", "Key": {"Name": "tester"},
                                   "State": {"Stream": "Open", "Data": "Suspect", "Text": "one DACS down"},
                                   "Elements": {"PingTimeout": 30, "MaxMsgSize": 61430}}]))
        the_post = json.loads(await ws.recv())
        await ws.send(json.dumps([{"ID": 1, "Type": "Status", "Domain": "Login",
                                   "State": {"Stream": "Open", "Data": "Suspect", "Text": "DACS link flapping"}},
                                  {"ID": 1, "Type": "Ack", "AckID": the_post["PostID"]}]))
        await ws.wait_closed()
    with serve_in_thread(suspect_ads) as port:
        result = contribute(port, "post", "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ACK NIPROV UMER.TST post 1\n"
    assert 'login accepted with Data Suspect: "one DACS down"' in result.stderr
    assert 'Open/Suspect None "DACS link flapping" (the session goes on)' in result.stderr


def test_one_post_or_request_over_max_msg_size_is_refused_without_a_disconnect_16(emu):
    result = post(emu, fields=(f"GEN_TEXT16={'y' * 70000}",))
    assert result.returncode == 5, result.stderr
    assert result.stdout.startswith('ERROR NIPROV UMER.TST post 1 "the post is larger than the ADS\'s MaxMsgSize')
    assert logins(emu) == 1 and not received(emu, "Post")
    result = contribute(emu.port, "get", "--service", "NIPROV", "--ric", "R" * 70000)
    assert result.returncode == 5 and "larger than the ADS's MaxMsgSize (61430 bytes)" in result.stderr
    assert logins(emu) == 2 and "connection lost" not in result.stderr


def test_a_redirected_upgrade_is_not_followed_17(emu):
    target = f"ws://127.0.0.1:{emu.port}/WebSocket"
    with raw_server(f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n".encode()) as port:
        result = contribute(port, "post", "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=1")
        checked = contribute(port, "check")
    assert result.returncode == 3 and "redirected the WebSocket upgrade" in result.stderr
    assert target in result.stderr and checked.returncode == 3 and target in checked.stdout
    assert not emu.logged_in.is_set()


def test_an_unanswered_upgrade_is_a_timeout_for_post_and_check_alike_17():
    with raw_server(None) as port:
        result = contribute(port, "--connect-timeout", "0.5", "post", "--service", "NIPROV", "--ric", "X",
                            "--field", "BID=1")
        checked = contribute(port, "--connect-timeout", "0.5", "check")
    assert (result.returncode, checked.returncode) == (6, 6), result.stderr
    assert "no answer from 127.0.0.1" in result.stderr


# ------------------------------------------------------------ input handling

def test_input_saved_with_a_bom_is_read_18(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes("RIC,BID\nUMER.TST,31\n".encode("utf-8-sig"))        # Excel's "CSV UTF-8"
    assert bulk(emu.port, "--file", str(path)).returncode == 0
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 31
    path = tmp_path / "rows.jsonl"
    path.write_bytes('{"ric": "UMER.TST", "fields": {"BID": 32}}\n'.encode("utf-8-sig"))
    result = bulk(emu.port, "--file", str(path))
    assert result.returncode == 0 and "posted 1, acknowledged 1" in result.stderr
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 32


def test_a_name_from_the_input_cannot_forge_an_output_line_19(emu, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"ric": "NOPE\nACK NIPROV FORGED post 9", "fields": {"BID": 1}}) + "\n")
    result = bulk(emu.port, "--file", str(path))
    assert result.returncode == 5
    assert result.stdout.splitlines() == [
        'NAK NIPROV "NOPE\\nACK NIPROV FORGED post 9" post 1 line 1 SymbolUnknown '
        '"F44: Unable to find item on post update."']


# Linux counts in a child's ru_maxrss the pages of the process it was forked from, until its exec
# (fork and vfork alike): a child of this test process would carry pytest's own memory, over
# 100 MB late in the suite. So a small Python runs the command and reports its peak; the figure
# includes that Python's few MB.
PEAK_OF = """\
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def run_measured(cmd: list[str]) -> tuple[int, float, str]:
    """Exit status, peak memory in MB and stderr of a command (stdin and stdout closed)."""
    with subprocess.Popen([sys.executable, "-c", PEAK_OF, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True, env=ENV, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT * 4)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return proc.returncode, int(out) / 1024, err


def test_a_huge_window_and_an_endless_line_keep_memory_flat_20(emu, tmp_path):
    code, peak, err = run_measured(bulk_args(emu.port, "--file", str(csv_file(tmp_path, ["UMER.TST,1"] * 100)),
                                             "--window", "100000000"))
    assert code == 0 and peak < 100, (err, peak)
    path = tmp_path / "rows.jsonl"
    with open(path, "wb") as f:                  # 100 MB without a newline (zeros: valid UTF-8)
        f.truncate(100_000_000)
        f.seek(100_000_000)
        f.write(b'\n{"ric": "UMER.TST", "fields": {"BID": 7}}\n')
    code, peak, err = run_measured(bulk_args(emu.port, "--file", str(path)))
    assert code == 2 and peak < 100, (err, peak)
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 7


def test_a_duplicate_csv_column_is_refused_20(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("RIC,BID,ASK,BID\nUMER.TST,1,2,3\n")
    result = bulk(emu.port, "--file", str(path))
    assert result.returncode == 2 and "INVALID line 1 \"the CSV header has column 'BID' twice\"" in result.stdout
    assert not received(emu, "Post")


@pytest.mark.parametrize("option", [["--host", "127.0.0.1:"], ["--host", "ws://127.0.0.1:15000"],
                                    ["--host", "ads1/x"], ["--host", "ads1:15000:1"], ["--path", "WebSocket"]])
def test_a_malformed_host_or_path_is_a_usage_error_naming_it_20(option):
    cmd = [sys.executable, CONTRIBUTE, "--config", os.devnull, "--host", "127.0.0.1", *option, "login"]
    if option[0] == "--host":
        del cmd[4:6]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == 2 and repr(option[1]) in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("text,code,words", [
    ("\ufeff[contribute]\nservice = NIPROV\n", 0, None),
    ("[contribute]\nservice = NIPROV\nservice = DIRECT_FEED\n", 2, "key 'service' is already set on line 2"),
    ("[contribute]\nservice = NIPROV\nport = fifteen\n", 2, "config.ini:3: port = fifteen"),
])
def test_config_file_with_a_bom_duplicate_keys_or_a_bad_value_20(emu, tmp_path, text, code, words):
    config = tmp_path / "config.ini"
    config.write_text(text, encoding="utf-8")
    cmd = [sys.executable, CONTRIBUTE, "--config", str(config), "--host", f"127.0.0.1:{emu.port}",
           "--user", "tester", "post", "--ric", "UMER.TST", "--field", "BID=3"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == code, result.stderr
    if words:
        assert words in result.stderr and str(config) in result.stderr


def test_only_ascii_digits_make_a_number_20(emu):
    result = post(emu, fields=("GEN_TEXT16=\u0663\u0664", "ASK=\uff11\uff12"))
    assert result.returncode == 5                      # ASK is a Real: the text is refused by the ADS
    fields = received(emu, "Post")[0]["Message"]["Fields"]
    assert fields == {"GEN_TEXT16": "\u0663\u0664", "ASK": "\uff11\uff12"}


def test_walk_keeps_negative_numbers_and_moves_small_ones_by_their_scale_20(emu):
    result = contribute(emu.port, "run", "--service", "NIPROV", "--ric", "WALK.TST", "--field", "BIDSIZE=-5",
                        "--field", "BID=0.0005", "--interval", "0.001", "--count", "30", "--walk")
    assert result.returncode == 0, result.stderr
    values = [p["Message"]["Fields"] for p in received(emu, "Post")]
    assert all(v["BIDSIZE"] < 0 for v in values)
    assert all(abs(v["BID"] - 0.0005) <= 0.0005 * 0.031 for v in values)          # 30 steps of 0.1 %


def test_server_oddities_are_survived_with_a_clear_report_21():
    async def odd_ads(ws):
        json.loads(await ws.recv())
        await ws.send(json.dumps([{"ID": 1, "Type": "Refresh", "Domain": "Login", "Key": {"Name": "tester"},
                                   "Elements": {"PingTimeout": "30", "MaxMsgSize": "plenty"}}]))   # no State
        await ws.send(json.dumps([{"ID": 1, "Type": "Ack", "AckID": 77}]))                # before any post
        json.loads(await ws.recv())
        await ws.send(json.dumps([{"ID": 1, "Type": "Ack", "AckID": True}]))              # not PostID 1
        await ws.wait_closed()
    with serve_in_thread(odd_ads) as port:
        result = contribute(port, "post", "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=1",
                            "--ack-timeout", "0.5")
    assert result.returncode == 6, result.stderr
    assert result.stdout.startswith("TIMEOUT NIPROV UMER.TST post 1")
    assert "no State: taken as accepted" in result.stderr and "MaxMsgSize 'plenty'" in result.stderr
    assert "an Ack for unknown or already ended post 77" in result.stderr
    assert "post True was ignored" in result.stderr and "Traceback" not in result.stderr


def test_an_error_without_debug_in_a_bulk_frame_is_reported_21(tmp_path):
    async def ads(ws):
        await accept_login(ws, {"SupportOMMPost": 1})
        async for frame in ws:
            msgs = json.loads(frame)
            replies = []
            for msg in msgs if isinstance(msgs, list) else [msgs]:
                if msg.get("Type") != "Post":
                    continue
                if msg["Key"]["Name"] == "BAD":
                    replies.append({"ID": 1, "Type": "Error", "Text": "JSON Unexpected FID. Received 'X'"})
                else:
                    replies.append({"ID": 1, "Type": "Ack", "AckID": msg["PostID"]})
            if replies:
                await ws.send(json.dumps(replies))
    with serve_in_thread(ads) as port:
        result = bulk(port, "--file", str(csv_file(tmp_path, ["GOOD,1", "BAD,2", "GOOD,3"])), "--ack-timeout", "0.5")
    assert result.returncode == 6, result.stderr
    assert result.stdout.startswith("TIMEOUT NIPROV BAD post 2 line 3")
    assert "the ADS sent an Error on stream 1: \"JSON Unexpected FID. Received 'X'\"" in result.stderr
    assert "acknowledged 2" in result.stderr


def test_requests_sent_again_after_a_reconnect_fit_max_msg_size_22():
    world = World.default()
    rics = [f"R{i:03d}.TST" for i in range(100)]
    for ric in rics:
        world.items[("NIPROV", "MarketPrice", ric)] = Item({"BID": 1.0})
    views = [a for i in range(45) for a in ("--field", f"A_FIELD_NAME_{i:02d}")]    # ~800-byte Requests
    with Emulator(world) as emu:
        run = Running(args_for(emu.port, "--reconnect-min", "0.01", "watch", "--service", "NIPROV", *views,
                               *[a for ric in rics for a in ("--ric", ric)], "--count", "1"), ENV,
                      stdin=subprocess.DEVNULL)
        refreshes = lambda n: lambda line: sum(x.startswith("REFRESH") for x in run.lines["out"]) >= n  # noqa: E731
        run.wait_line("out", refreshes(100))
        emu.drop_connections()
        run.wait_line("out", refreshes(200), TIMEOUT * 2)                   # every stream again
        poster = Client(emu.url)
        poster.login("poster")
        poster.roundtrip({"ID": 1, "Type": "Post", "Ack": True, "PostID": 1, "Key": {"Service": "NIPROV",
                          "Name": "R099.TST"}, "Message": {"ID": 0, "Type": "Update", "Fields": {"BID": 2.0}}})
        poster.close()
        code = run.finish()
        assert logins(emu) == 3                       # ours twice, the poster once: no 1009 loop
    assert code == 0, run.err


def test_the_reconnect_backoff_grows_until_a_connection_proves_itself_22():
    async def closes_after_login(ws):
        await accept_login(ws, {"SupportOMMPost": 1})
    with serve_in_thread(closes_after_login) as port:
        run = Running(args_for(port, "--json", "--reconnect-min", "0.05", "--reconnect-max", "0.8", "watch",
                               "--service", "NIPROV", "--ric", "UMER.TST"), ENV, stdin=subprocess.DEVNULL)
        run.wait_line("out", lambda line: run.out.count('"reconnecting"') >= 5, TIMEOUT * 2)
        run.proc.send_signal(signal.SIGTERM)
        run.finish()
    delays = [json.loads(line)["delay"] for line in run.lines["out"] if '"reconnecting"' in line]
    assert delays[0] <= 0.05 and delays[4] >= 0.4, delays             # 0.05 doubling: 0.8 by the 5th


def test_one_sigterm_stops_an_endless_feed_23():
    with Emulator(faults=Faults(ack_delay_ms=800)) as emu:
        run = Running(bulk_args(emu.port, "--file", "-"), ENV)
        stop_feeding = threading.Event()

        def feed() -> None:                         # a producer that never stops by itself
            try:
                run.write("RIC,BID\n")
                for i in range(10**9):
                    if stop_feeding.is_set():
                        return
                    run.write("".join(f"UMER.TST,{i}.{j}\n" for j in range(10)))
            except (OSError, ValueError):
                return
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        emu.wait_for(lambda m: m.get("PostID") == 50, TIMEOUT)
        run.proc.send_signal(signal.SIGTERM)
        try:
            code = run.finish(TIMEOUT * 2)          # while the producer goes on writing
        finally:
            stop_feeding.set()
            feeder.join(TIMEOUT)
    assert code == 130, run.err[-500:]
    assert any(line.startswith("bulk: lines") for line in run.lines["err"])


def test_an_interrupted_rate_limited_run_accounts_for_every_row_24(tmp_path):
    path = csv_file(tmp_path, [f"UMER.TST,{i}" for i in range(5050)])
    failed = tmp_path / "failed.csv"
    with Emulator(faults=Faults(ack_delay_ms=800)) as emu:
        run = Running(bulk_args(emu.port, "--file", str(path), "--rate", "500", "--window", "10000",
                                "--failed-out", str(failed), opts=["--json"]), ENV, stdin=subprocess.DEVNULL)
        emu.wait_for(lambda m: m.get("PostID") == 100, TIMEOUT)
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish()
        posted = received(emu, "Post")
    outcomes, summary = parsed(run.out)
    assert code == 130, run.err
    assert summary["lines"] == 5051 and len(posted) < 5050                 # --rate held after the signal
    assert summary["acknowledged"] == len(posted) == summary["posted"]     # every post sent was awaited
    assert summary["acknowledged"] + len(outcomes) == 5050                 # every other row reported
    assert {o["status"] for o in outcomes} == {"unsent"} and summary["unsent"] == len(outcomes)
    assert summary["posted"] + summary["unsent"] == 5050                   # each row counted once
    assert len(failed.read_bytes().decode().splitlines()) == 1 + len(outcomes)       # and can be posted again


def test_a_bulk_run_whose_ads_is_gone_for_good_ends_6_25(tmp_path):
    path = csv_file(tmp_path, [f"UMER.TST,{i}" for i in range(20)])
    emu = Emulator(faults=Faults(no_ack_rics=["*"])).start()
    run = Running(bulk_args(emu.port, "--file", str(path), "--ack-timeout", "2", opts=FAST), ENV,
                  stdin=subprocess.DEVNULL)
    try:
        emu.wait_for(lambda m: m.get("PostID") == 20, TIMEOUT)
    finally:
        emu.stop()                                                   # and it never comes back
    assert run.finish(TIMEOUT * 3) == 6, run.err[-500:]
    assert [line.split()[0] for line in run.lines["out"]] == ["TIMEOUT"] * 20


def test_no_new_post_after_sigterm_with_a_full_window_26():
    with Emulator(faults=Faults(no_ack_rics=["UMER.TST"])) as emu:
        run = Running(args_for(emu.port, "-v", "run", "--service", "NIPROV", "--ric", "UMER.TST", "--field",
                               "BID=1", "--no-refresh", "--interval", "0.01", "--window", "1", "--ack-timeout",
                               "30"), ENV, stdin=subprocess.DEVNULL)
        emu.wait_for(lambda m: m.get("PostID") == 1, TIMEOUT)
        interrupt_twice(run, signal.SIGTERM)
        code = run.finish()
        assert len(received(emu, "Post")) == 1
    assert code == 130 and "run: 1 posts" in run.err and "internal error" not in run.err


def test_sigterm_while_reconnecting_ends_with_a_summary_26():
    with Emulator(faults=Faults(drop_after_posts=1)) as emu:
        run = Running(args_for(emu.port, "--reconnect-min", "0.5", "run", "--service", "NIPROV", "--ric",
                               "UMER.TST", "--field", "BID=1", "--no-refresh", "--interval", "0.01",
                               "--window", "1", "--ack-timeout", "3"), ENV, stdin=subprocess.DEVNULL)
        run.wait_line("err", lambda line: "reconnecting to" in line)
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish()
    assert code == 130, run.err
    assert "internal error" not in run.err and "run: 1 posts" in run.err and "(interrupted)" in run.err
    assert run.lines["out"] == ['LOST NIPROV UMER.TST post 1 "SIGTERM while reconnecting"']


def test_a_late_ack_keeps_its_row_out_of_failed_out_27(tmp_path):
    failed = tmp_path / "failed.csv"
    with Emulator(faults=Faults(ack_delay_ms=1000, no_ack_rics=["SILENT"])) as emu:
        run = Running(bulk_args(emu.port, "--file", "-", "--refresh", "--ack-timeout", "0.3", "--failed-out",
                                str(failed), opts=["-v"]), ENV)
        run.write("RIC,BID\nUMER.TST,1\n")
        run.wait_line("out", lambda line: line.startswith("TIMEOUT NIPROV UMER.TST post 1"))
        run.wait_line("err", lambda line: "acknowledged after its ack timeout" in line)
        run.write("SILENT,2\n")
        run.proc.stdin.close()
        code = run.finish()
    assert code == 6
    assert failed.read_bytes().decode() == "RIC,BID\r\nSILENT,2\r\n"
    assert any("timed out 2, acknowledged late 1" in line for line in run.lines["err"])


def test_an_option_given_twice_is_refused_28(emu):
    result = contribute(emu.port, "post", "--service", "NIPROV", "--ric", "A.TST", "--ric", "B.TST", "--field", "BID=1")
    assert result.returncode == 2 and "--ric is given twice ('A.TST', 'B.TST')" in result.stderr
    assert not emu.logged_in.is_set()


def test_a_hint_is_given_once_per_run_28(emu, tmp_path):
    result = bulk(emu.port, "--file", str(csv_file(tmp_path, [f"NOPE{i}.TST,1" for i in range(300)])))
    assert result.returncode == 5 and result.stdout.count("SymbolUnknown") == 300
    assert result.stderr.count("hint:") == 1


def test_a_last_line_cut_off_in_a_pipe_is_not_posted_28(emu, tmp_path):
    result = bulk(emu.port, "--file", "-", stdin="RIC,BID\nUMER.TST,12.5\nUMER.TST,1")
    assert result.returncode == 2
    assert result.stdout == 'INVALID line 3 "incomplete last line (no newline at the end of the input): not posted"\n'
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 12.5
    path = tmp_path / "rows.csv"                               # a file's last line: posted
    path.write_text("RIC,BID\nUMER.TST,13.5")
    assert bulk(emu.port, "--file", str(path)).returncode == 0 and emu.item("NIPROV", "UMER.TST")["BID"] == 13.5


def test_a_clean_run_leaves_no_stale_failed_rows_28(emu, tmp_path):
    failed = tmp_path / "failed.csv"
    failed.write_text("RIC,BID\r\nOLD.TST,1\r\n")              # from an earlier run
    result = bulk(emu.port, "--file", str(csv_file(tmp_path, ["UMER.TST,1"])), "--failed-out", str(failed))
    assert result.returncode == 0 and failed.read_bytes().decode() == "RIC,BID\r\n"


def test_a_bulk_run_ended_by_the_ads_still_accounts_for_every_row_read(tmp_path):
    """The ADS closes the login mid-run (exit 4): a row that timed out earlier still goes to
    --failed-out, every row read has its outcome line or was acknowledged, and the summary says
    how far the input was read."""
    failed = tmp_path / "failed.csv"
    with Emulator(faults=Faults(no_ack_rics=["NOACK.*"], close_login_after_posts=3)) as emu:
        run = Running(bulk_args(emu.port, "--file", "-", "--refresh", "--ack-timeout", "0.3", "--failed-out",
                                str(failed), opts=["--json"]), ENV)
        run.write("RIC,BID\nNOACK.TST,1\n")
        run.wait_line("out", lambda line: '"status":"timeout"' in line)
        run.write("".join(f"UMER.TST,{i}\n" for i in range(2, 50)))
        code = run.finish()
    assert code == 4, run.err
    outcomes, summary = parsed("\n".join(run.lines["out"]))
    assert summary["acknowledged"] + len(outcomes) == summary["lines"] - 1 >= 3
    assert {o["status"] for o in outcomes} <= {"timeout", "lost", "unsent"}
    written = failed.read_bytes().decode().splitlines()
    assert written[0] == "RIC,BID" and "NOACK.TST,1" in written and len(written) == 1 + len(outcomes)


# ------------------------------------------------- frames sent at once or by the writer

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def upgrade(conn: socket.socket) -> None:
    """Answer a WebSocket upgrade on a raw socket (RFC 6455 section 4.2.2), tr_json2."""
    import base64
    import hashlib
    import re
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    key = re.search(rb"(?i)Sec-WebSocket-Key: *(\S+)", request).group(1)
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: tr_json2\r\n\r\n")


def client_frames(reader, count: int) -> list[tuple[int, bytes]]:
    """count frames from a client (masked, RFC 6455 section 5.2): (opcode, payload) each."""
    frames = []
    for _ in range(count):
        first, second = reader.read(2)
        length = second & 0x7F
        if length >= 126:
            length = int.from_bytes(reader.read(2 if length == 126 else 8), "big")
        mask, data = reader.read(4), reader.read(length)
        key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
        frames.append((first & 0x0F, (int.from_bytes(data, "big") ^ key).to_bytes(length, "big")))
    return frames


@pytest.mark.skipif(not hasattr(socket, "MSG_DONTWAIT"), reason="no direct sends without MSG_DONTWAIT")
def test_frames_sent_at_once_or_by_the_writer_go_out_whole_and_in_order():
    """Issue 12: Connection.send writes a frame on the caller's thread when the socket takes it
    without waiting. A frame the socket takes only in part is finished by the writer, and the
    frames after it wait their turn: a peer that reads late gets each frame whole, in order;
    once the writer has caught up, frames go at once again."""
    from contribute import Connection, Opened, SimpleQueue, _Rest
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)      # the accepted socket's too
    release, got = threading.Event(), {}
    sent = ["a" * 10, "b" * 2_000_000, "c" * 10, "d" * 300_000, "e" * 10, "f" * 10]

    def serve():
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as reader:
            upgrade(conn)
            release.wait(TIMEOUT)                # reads nothing until the frames are all sent
            got["first"] = client_frames(reader, 5)
            got["last"] = client_frames(reader, 1)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    events = SimpleQueue()
    conn = Connection(f"ws://127.0.0.1:{listener.getsockname()[1]}/WebSocket", events, TIMEOUT)
    kinds, send_now = [], conn._send_now
    conn._send_now = lambda data: kinds.append(type(result := send_now(data))) or result
    try:
        conn.open()
        assert isinstance(events.get(timeout=TIMEOUT)[1], Opened)
        conn._ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        for text in sent[:5]:
            conn.send(text)
        assert kinds == [type(None), _Rest] and conn._backlog == 4   # the 2 MB frame's rest, and 3 after it
        release.set()
        wait_until(lambda: conn._backlog == 0, what="the writer caught up")
        conn.send(sent[5])
        server.join(TIMEOUT)
        assert kinds == [type(None), _Rest, type(None)]
        assert got["first"] + got["last"] == [(1, text.encode()) for text in sent]
    finally:
        conn.close()
        listener.close()


# ------------------------------------------------- frames read in blocks

def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A frame from a server (unmasked, RFC 6455 section 5.2), with the length in the form its size needs."""
    size = len(payload)
    length = bytes([size]) if size < 126 else bytes([126]) + size.to_bytes(2, "big") if size < 65536 \
        else bytes([127]) + size.to_bytes(8, "big")
    return bytes([(0x80 if fin else 0) | opcode]) + length + payload


def test_frames_read_in_blocks_come_whole_however_the_stream_is_cut():
    """Issue 12: Connection._recv serves websocket-client's reads of a frame's parts from blocks
    read from the socket. Cut anywhere (a byte at a time, mid-header, several frames in one
    read), the frames come whole and in order, each block is read once and nothing is read
    beyond need; the end of the stream raises what websocket-client's own read raises."""
    import itertools
    import random

    import websocket

    from contribute import Connection, SimpleQueue
    payloads = [b"[]", b"x" * 200, bytes(range(256)) * 300, b"y" * 70_000, b"z"]     # every length form
    stream = b"".join(server_frame(1, data) for data in payloads)
    rng = random.Random(12)
    for trial in range(60):
        cuts = sorted({0, len(stream), *(rng.randrange(len(stream)) for _ in range(rng.choice((1, 5, 40))))})
        if trial == 0:
            cuts = [*range(300), len(stream)]        # a byte at a time: two frames and into the third
        blocks = [stream[a:b] for a, b in itertools.pairwise(cuts)] + [b""]
        conn = Connection("ws://127.0.0.1:1/WebSocket", SimpleQueue(), TIMEOUT)
        conn._lost = websocket.WebSocketConnectionClosedException
        conn._sock_recv = lambda size, blocks=blocks: blocks.pop(0)
        frames = websocket._abnf.frame_buffer(conn._recv, True)
        assert [frames.recv_frame().data for _ in payloads] == payloads, cuts
        assert blocks == [b""], "a block was read before it was needed"
        with pytest.raises(websocket.WebSocketConnectionClosedException, match="Connection to remote host was lost"):
            frames.recv_frame()


def test_a_connection_reading_in_blocks_handles_pings_fragments_and_the_close():
    """Issue 12, over a real socket: frames that arrive together, a message in fragments with a
    Ping between them (answered with a Pong carrying its data), a 70 kB message, then the
    server's close: the events come in order, and the close ends the connection with its code."""
    from contribute import AckBatch, Closed, Connection, Opened, SimpleQueue
    listener = socket.create_server(("127.0.0.1", 0))
    acks = [json.dumps([{"ID": 1, "Type": "Ack", "AckID": i}]).encode() for i in range(1, 6)]
    big = json.dumps([{"ID": 1, "Type": "Ack", "AckID": 6, "Key": {"Name": "x" * 70_000}}]).encode()
    got = {}

    def serve():
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as reader:
            upgrade(conn)
            conn.sendall(server_frame(1, acks[0]) + server_frame(1, acks[1]))          # two frames, one write
            conn.sendall(server_frame(1, acks[2][:5], fin=False) + server_frame(9, b"are you there"))
            conn.sendall(server_frame(0, acks[2][5:]) + server_frame(1, acks[3]) + server_frame(1, acks[4]))
            conn.sendall(server_frame(1, big) + server_frame(8, (1000).to_bytes(2, "big") + b"bye"))
            got["frames"] = client_frames(reader, 2)                # the Pong, and the close echoed

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    events = SimpleQueue()
    conn = Connection(f"ws://127.0.0.1:{listener.getsockname()[1]}/WebSocket", events, TIMEOUT)
    try:
        conn.open()
        seen = [events.get(timeout=TIMEOUT)[1] for _ in range(8)]
        server.join(TIMEOUT)
    finally:
        conn.close()
        listener.close()
    assert isinstance(seen[0], Opened) and conn._block.endswith(b"bye")     # read by blocks, to the close
    assert seen[1:7] == [AckBatch([i]) for i in range(1, 7)]
    assert seen[7] == Closed(1000, "bye", None)
    assert got["frames"][0] == (0xA, b"are you there") and got["frames"][1][0] == 8


# contribute.py run as a script (runpy, as `python contribute.py` runs it), with a signal sent to
# itself at a chosen moment: as it imports a module (an audit hook: "import:click"), at the first
# import orjson's own module makes as it starts ("in-orjson"), or once it
# has ended, as Python exits: "exit" (an atexit function) or "teardown" (an object freed when
# Python empties sys.modules, after it has put back the default action of the signals it handles).
SIGNAL_AT = """\
import atexit, os, runpy, sys
moment, signum, script = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def starting_orjson():
    return "orjson.orjson" in sys.modules and not hasattr(sys.modules["orjson"], "dumps")
def on_import(event, args):
    if event == "import" and (moment == "import:" + args[0] or moment == "in-orjson" and starting_orjson()):
        os.kill(os.getpid(), signum)
class Teardown:
    def __del__(self, kill=os.kill, pid=os.getpid()):
        kill(pid, signum)
sys.addaudithook(on_import)
if moment == "exit":
    atexit.register(os.kill, os.getpid(), signum)
if moment == "teardown":
    sys.modules["teardown"] = Teardown()
sys.argv = sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


def signalled(moment: str, sig: signal.Signals, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SIGNAL_AT, moment, str(int(sig)), *args[1:]], capture_output=True,
                          text=True, timeout=TIMEOUT * 4, env=ENV, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_python_starts_us_ends_the_command_as_interrupted(emu, sig):
    """Before the command's handlers: 130 and one line, nothing sent (a SIGTERM killed the
    process without a word, a SIGINT after the imports gave a traceback)."""
    result = signalled("import:click", sig, *args_for(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST",
                                                      "--field", "BID=1"))
    assert result.returncode == 130, result.stderr
    assert result.stderr == "contribute: interrupted\n" and result.stdout == ""
    assert not received(emu, "Login")


@pytest.mark.parametrize("moment", ["exit", "teardown"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_once_the_command_has_ended_leaves_its_status(emu, sig, moment):
    """As Python exits after the command: the status stands (a SIGTERM made it a kill, a SIGINT
    a traceback or a kill)."""
    result = signalled(moment, sig, *args_for(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST",
                                              "--field", "BID=1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ACK NIPROV UMER.TST post 1\n" and result.stderr == ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_orjson_starts_is_held_until_it_has_started(emu, tmp_path, sig):
    """orjson crashes the process when an import it makes as it starts fails (ijl/orjson#310),
    and a KeyboardInterrupt in one did (SIGSEGV): the interrupt now waits until orjson is in,
    then ends the command as interrupted, before anything is sent."""
    path = tmp_path / "rows.csv"
    path.write_text("RIC,BID\nUMER.TST,1\n")
    result = signalled("in-orjson", sig, *args_for(emu.port, "post", "--service", "NIPROV", "--file", str(path)))
    assert result.returncode == 130, result.stderr
    assert result.stderr == "contribute: interrupted\n" and result.stdout == ""
    assert not received(emu, "Login")


def test_handlers_set_for_a_command_or_a_session_are_put_back():
    """catch_start_signals and a Session each take SIGINT and SIGTERM over, and give back the
    handlers they found (Session after the Ctrl-C before it, say, goes back to the command's)."""
    from contribute import catch_start_signals

    found = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    restore = catch_start_signals()
    command = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with Session(Settings("127.0.0.1:1", user="tester"), Reporter(io.StringIO(), io.StringIO())):
        assert signal.getsignal(signal.SIGINT) not in (found[0], command[0])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == command
    restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == found
