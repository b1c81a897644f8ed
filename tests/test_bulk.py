"""Issue 5: `post --file`, from a file or a pipe, against the emulator over real sockets."""
from __future__ import annotations

import io
import json
import subprocess
import threading
import time

import pytest

from ads_emulator import Emulator, Faults
from conftest import TIMEOUT, serve_in_thread
import contribute as contribute_module
from contribute import Bulk, PostSpec, Reporter, Session, Settings, run_bulk
from test_e2e import ENV, args_for, contribute, logins, received
from test_ops import accept_login


def bulk(emu: Emulator, path: str, *args: str, opts=(), stdin: str | None = None):
    cmd = args_for(emu.port, *opts, "post", "--service", "NIPROV", "--file", path, *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 6, env=ENV,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def posts(emu: Emulator) -> list[dict]:
    return [m for m in emu.received() if isinstance(m, dict) and m.get("Type") == "Post"]


CSV = ("RIC,SERVICE,TYPE,BID,ASK,GEN_TEXT16\n"
       "NEW.A,,Refresh,1.5,2,hello\n"
       "NEW.B,DIRECT_FEED,refresh,3,,\n"
       "UMER.TST,,,22.25,24.5,text with, comma\n")


def test_csv_file_every_row_acked(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(CSV.replace("text with, comma", '"text with, comma"'))
    result = bulk(emu, str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""                                   # only failures are printed
    assert "posted 3, acknowledged 3" in result.stderr
    assert emu.item("NIPROV", "NEW.A") == {"BID": 1.5, "ASK": 2, "GEN_TEXT16": "hello"}
    assert emu.item("DIRECT_FEED", "NEW.B") == {"BID": 3, "ASK": None, "GEN_TEXT16": None}
    assert emu.item("NIPROV", "UMER.TST")["GEN_TEXT16"] == "text with, comma"
    assert [p["Message"]["Type"] for p in posts(emu)] == ["Refresh", "Refresh", "Update"]


def test_jsonl_file(emu, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"ric": "J.A", "type": "Refresh", "fields": {"BID": 1, "GEN_TEXT16": "0042"}}\n'
                    '\n'
                    '{"ric": "J.A", "fields": {"BID": 2.5}}\n')
    result = bulk(emu, str(path), opts=["--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["posted"] == 2 and summary["acknowledged"] == 2 and summary["invalid"] == 0
    assert emu.item("NIPROV", "J.A") == {"BID": 2.5, "GEN_TEXT16": "0042"}


def test_stdin_csv_and_jsonl(emu):
    result = bulk(emu, "-", stdin="RIC,BID\nUMER.TST,30\n")
    assert result.returncode == 0, result.stderr
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 30
    result = bulk(emu, "-", "--format", "jsonl", stdin='{"ric": "UMER.TST", "fields": {"BID": 31}}\n')
    assert result.returncode == 0, result.stderr
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 31


def test_malformed_rows_are_reported_with_line_numbers_and_skipped(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("RIC,TYPE,BID\n"
                    "UMER.TST,,1\n"
                    "UMER.TST,,2,extra\n"
                    ",,3\n"
                    "UMER.TST,Delete,4\n"
                    "UMER.TST,,5\n")
    result = bulk(emu, str(path))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        'INVALID line 3 "4 cells where the header has 3"',
        'INVALID line 4 "no RIC"',
        "INVALID line 5 \"type 'Delete' is not Refresh or Update\""]
    assert [p["Message"]["Fields"]["BID"] for p in posts(emu)] == [1, 5]
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 5


def test_malformed_jsonl_lines_as_json(emu, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"ric": "UMER.TST", "fields": {"BID": 1}}\nnot json\n[1]\n'
                    '{"ric": "UMER.TST", "fields": 3}\n{"fields": {}}\n')
    result = bulk(emu, str(path), opts=["--json"])
    assert result.returncode == 2
    invalid = [r for r in map(json.loads, result.stdout.splitlines()) if r.get("status") == "invalid"]
    assert [(i["line"], i["text"].split(":")[0]) for i in invalid] == [
        (2, "not JSON"), (3, "not a JSON object"), (4, "fields is not an object"), (5, "no ric")]


def test_strict_stops_at_the_first_malformed_row(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("RIC,BID\n" + "UMER.TST,1\n" + "UMER.TST\n" + "".join(f"UMER.TST,{i}\n" for i in range(50)))
    result = bulk(emu, str(path), "--strict")
    assert result.returncode == 2
    assert "INVALID line 3" in result.stdout
    assert [p["Message"]["Fields"]["BID"] for p in posts(emu)] == [1]   # only the row before it


def test_no_ric_column_is_reported(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("NAME,BID\nX,1\n")
    result = bulk(emu, str(path))
    assert result.returncode == 2 and 'INVALID line 1 "the CSV header has no RIC column"' in result.stdout


def test_frames_are_packed_under_max_msg_size(emu, tmp_path):
    path = tmp_path / "rows.csv"
    text = "x" * 600                                 # 100 such posts would be ~75 kB, over 61,430
    path.write_text("RIC,GEN_TEXT16\n" + "".join(f"UMER.TST,{text}{i}\n" for i in range(300)))
    result = bulk(emu, str(path))
    assert result.returncode == 0, result.stderr
    assert logins(emu) == 1                          # never disconnected for an oversized frame
    assert len(posts(emu)) == 300


def test_a_post_larger_than_max_msg_size_is_an_error_not_a_disconnect(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(f"RIC,GEN_TEXT16\nUMER.TST,{'y' * 70000}\nUMER.TST,fine\n")
    result = bulk(emu, str(path))
    assert result.returncode == 5
    assert result.stdout.startswith("ERROR NIPROV UMER.TST post 1 line 2")
    assert "MaxMsgSize" in result.stdout and logins(emu) == 1
    assert emu.item("NIPROV", "UMER.TST")["GEN_TEXT16"] == "fine"


def test_naks_and_timeouts_in_a_bulk_run():
    with Emulator(faults=Faults(no_ack_rics=["SILENT"])) as emu:
        rows = "RIC,TYPE,BID\nUMER.TST,,1\nNOPE.TST,,2\nSILENT,Refresh,3\nUMER.TST,,4\n"
        result = bulk(emu, "-", "--ack-timeout", "0.3", stdin=rows)
    assert result.returncode == 5                     # a Nak outranks a timeout
    lines = result.stdout.splitlines()
    assert lines[0].startswith('NAK NIPROV NOPE.TST post 2 line 3 SymbolUnknown "F44:')
    assert lines[1].startswith("TIMEOUT NIPROV SILENT post 3 line 4")
    assert "acknowledged 2" in result.stderr and "SymbolUnknown" in result.stderr


def test_failed_out_round_trip_csv(emu, tmp_path):
    path, failed = tmp_path / "rows.csv", tmp_path / "failed.csv"
    path.write_text("RIC,BID,ASK\nUMER.TST,1,2\nNEW.ONE,3,4\nNEW.TWO,5,\n")
    result = bulk(emu, str(path), "--failed-out", str(failed))
    assert result.returncode == 5
    assert failed.read_bytes() == b"RIC,BID,ASK\r\nNEW.ONE,3,4\r\nNEW.TWO,5,\r\n"   # RFC 4180 line ends
    again = bulk(emu, str(failed), "--refresh")        # create them this time
    assert again.returncode == 0, again.stdout
    assert emu.item("NIPROV", "NEW.ONE") == {"BID": 3, "ASK": 4}
    assert emu.item("NIPROV", "NEW.TWO") == {"BID": 5, "ASK": None}


def test_failed_out_round_trip_jsonl(emu, tmp_path):
    path, failed = tmp_path / "rows.jsonl", tmp_path / "failed.jsonl"
    bad = '{"ric": "NEW.J", "fields": {"BID": 1}}'
    path.write_text('{"ric": "UMER.TST", "fields": {"BID": 9}}\n' + bad + "\n")
    assert bulk(emu, str(path), "--failed-out", str(failed)).returncode == 5
    assert failed.read_text() == bad + "\n"
    assert bulk(emu, str(failed), "--refresh").returncode == 0
    assert emu.item("NIPROV", "NEW.J") == {"BID": 1}


def test_service_per_row_or_a_usage_error(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("RIC,SERVICE,BID\nUMER.TST,NIPROV,1\nUMER.TST,,2\n")
    cmd = args_for(emu.port, "post", "--file", str(path))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == 2
    assert result.stdout == 'INVALID line 3 "no service: give --service or a SERVICE column"\n'
    assert [p["Key"]["Service"] for p in posts(emu)] == ["NIPROV"]


def test_file_excludes_ric_and_field(emu, tmp_path):
    result = contribute(emu.port, "post", "--service", "NIPROV", "--file", "x.csv", "--ric", "A")
    assert result.returncode == 2 and "--file excludes --ric" in result.stderr


def test_unreadable_file_is_a_usage_error(emu):
    result = bulk(emu, "/nonexistent/rows.csv")
    assert result.returncode == 2 and "cannot read /nonexistent/rows.csv" in result.stderr


def test_window_bounds_posts_in_flight(tmp_path):
    """With acks withheld, post W+1 can only go once one of the first W has timed out."""
    path = tmp_path / "rows.csv"
    path.write_text("RIC,BID\n" + "SILENT,1\n" * 6)
    out = io.StringIO()
    with Emulator(faults=Faults(no_ack_rics=["SILENT"])) as emu:
        spec = PostSpec("NIPROV", "", {}, ack_timeout=0.3)
        runner = threading.Thread(target=run_bulk, daemon=True, kwargs=dict(
            settings=Settings(f"127.0.0.1:{emu.port}", user="tester"), spec=spec, refresh=True,
            reporter=Reporter(out, io.StringIO()), path=str(path), fmt="csv", window=3, rate=None,
            strict=False, failed_out=None))
        runner.start()
        emu.wait_for(lambda m: m.get("PostID") == 3, TIMEOUT)
        emu.wait_for(lambda m: m.get("PostID") == 4, TIMEOUT)
        assert "TIMEOUT" in out.getvalue()           # written before post 4 could be sent
        runner.join(TIMEOUT * 2)
        assert not runner.is_alive()
    assert out.getvalue().count("TIMEOUT") == 6


def test_rate_limit_spaces_the_posts(tmp_path):
    log = io.StringIO()
    with Emulator(log_file=log) as emu:
        result = bulk(emu, "-", "--rate", "20", stdin="RIC,BID\n" + "UMER.TST,1\n" * 10)
        assert result.returncode == 0, result.stderr
    times = []                                       # when each Post frame arrived
    for line in log.getvalue().splitlines():
        record = json.loads(line)
        frame = json.loads(record["frame"]) if record["dir"] == "in" else []
        frame = frame if isinstance(frame, list) else [frame]   # one post goes as an object
        times += [record["t"] for m in frame if m.get("Type") == "Post"]
    assert len(times) == 10
    assert times[-1] - times[0] >= 9 / 20 * 0.9      # 10 posts at 20/s span at least 0.45 s


def test_progress_bar_only_on_a_terminal(emu, tmp_path):
    import os
    import pty
    path = tmp_path / "rows.csv"
    path.write_text("RIC,BID\n" + "UMER.TST,1\n" * 50)
    for quiet, expected in ((False, True), (True, False)):
        primary, secondary = pty.openpty()
        try:
            cmd = args_for(emu.port, *(["-q"] if quiet else []), "post", "--service", "NIPROV",
                           "--file", str(path))
            result = subprocess.run(cmd, stdout=secondary, stderr=subprocess.PIPE, text=True,
                                    timeout=TIMEOUT * 4, env=ENV, stdin=subprocess.DEVNULL)
        finally:
            os.close(secondary)
            os.close(primary)
        assert result.returncode == 0
        assert ("posting" in result.stderr) is expected
    result = bulk(emu, str(path))                    # stdout is a pipe here: no bar
    assert "posting" not in result.stderr


def test_bulk_run_survives_drops_and_resends():
    with Emulator(faults=Faults(drop_after_posts=150)) as emu:
        rows = "RIC,BID\n" + "".join(f"UMER.TST,{i}\n" for i in range(1000))
        result = bulk(emu, "-", opts=["--json", "--reconnect-min", "0.05"], stdin=rows)
        assert result.returncode == 0, result.stderr[-1500:]
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        summary = lines[-1]["summary"]
        assert summary["posted"] == 1000 and summary["acknowledged"] == 1000 and summary["resent"] >= 1
        assert logins(emu) >= 7                      # a new login after each of the >= 6 drops
        assert emu.item("NIPROV", "UMER.TST")["BID"] == 999        # the last row won


@pytest.mark.parametrize("kind", ["Refresh", "Update"])
def test_a_resent_post_is_the_message_first_sent(kind):
    """Issue 12: a post's message is dropped once sent and made again from its ledger entry for
    a resend. Through repeated drops, every copy of a post the ADS received is the same message
    (PostID, Key, PostUserInfo, the row's TYPE, typed fields) and every post arrived."""
    with Emulator(faults=Faults(drop_after_posts=40)) as emu:
        rows = "RIC,TYPE,BID,GEN_TEXT16\n" + "".join(
            f"R{i % 7}.TST,{'Refresh' if i < 7 else kind},{i}.25,t{i}\n" for i in range(300))
        result = bulk(emu, "-", opts=["--json", "--reconnect-min", "0.05"], stdin=rows)
        copies: dict[int, list[dict]] = {}
        for message in posts(emu):
            copies.setdefault(message["PostID"], []).append(message)
    assert result.returncode == 0, result.stderr[-1500:]
    assert sorted(copies) == list(range(1, 301))
    resent = [sent for sent in copies.values() if len(sent) > 1]
    assert len(resent) >= 5 and all(again == sent[0] for sent in resent for again in sent)
    assert {sent[0]["Message"]["Type"] for sent in resent} == {kind}
    assert all(sent[0]["PostUserInfo"]["UserID"] > 0 for sent in resent)
    assert copies[300][0]["Message"]["Fields"] == {"BID": 299.25, "GEN_TEXT16": "t299"}


def test_interrupted_feed_exits_130_after_acking_what_was_read(emu):
    import signal
    cmd = args_for(emu.port, "post", "--service", "NIPROV", "--file", "-")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        proc.stdin.write("RIC,BID\n" + "".join(f"UMER.TST,{i}\n" for i in range(10)))
        proc.stdin.flush()                            # the pipe stays open: an endless feed
        emu.wait_for(lambda m: m.get("PostID") == 10, TIMEOUT)
        proc.send_signal(signal.SIGINT)
        proc.wait(TIMEOUT * 4)                        # stdin still open: no end of input
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        proc.kill()
        proc.stdin.close()
    assert proc.returncode == 130, err
    assert "acknowledged 10" in err and out == ""
    assert emu.wait_for(lambda m: m.get("Type") == "Close", TIMEOUT)


# ------------------------------------------------------------ issue 12: rows and Acks a frame at a time

def test_a_file_read_in_batches_never_waits_on_its_own_held_rows(emu, tmp_path):
    """A file is read up to 100 rows at a time, as the credits allow; with --window 1 every row
    must still be read, posted and acked, one credit at a time, or the run would wait forever."""
    path = tmp_path / "rows.csv"
    path.write_text("RIC,BID\n" + "".join(f"UMER.TST,{i}\n" for i in range(250)))
    result = bulk(emu, str(path), "--window", "1", opts=("--json",))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])["summary"]
    assert (summary["lines"], summary["posted"], summary["acknowledged"]) == (251, 250, 250)


def test_a_file_read_to_its_end_with_nothing_in_flight_ends_the_run_then(tmp_path):
    """A file is read by the main thread between its waits: when a read leaves nothing in flight
    (a header refused; the last row taken with --window 1 and acked), the run must end then,
    not wait for the next event. With the keepalives an hour apart, such a wait is a hang."""
    with Emulator(ping_interval=3600, ping_timeout=3600) as emu:
        refused, rows = tmp_path / "refused.csv", tmp_path / "rows.csv"
        refused.write_text("BID,ASK\n1,2\n")
        rows.write_text("RIC,BID\n" + "".join(f"UMER.TST,{i}\n" for i in range(5)))
        result = bulk(emu, str(refused))
        assert result.returncode == 2 and "no RIC column" in result.stdout, result.stderr
        result = bulk(emu, str(rows), "--window", "1")
        assert result.returncode == 0 and "posted 5, acknowledged 5" in result.stderr, result.stderr


def test_a_frame_of_acks_settles_its_posts_and_reports_the_strays(tmp_path):
    """A frame of plain Acks ends its posts in one step; an AckID of no post in the same frame
    (unknown, or one already acked) is reported, not counted, and changes nothing else."""
    async def ads(ws):
        await accept_login(ws, {"SupportOMMPost": 1})
        async for frame in ws:
            msgs = json.loads(frame)
            ids = [m["PostID"] for m in (msgs if isinstance(msgs, list) else [msgs]) if m.get("Type") == "Post"]
            if ids:
                acks = [{"ID": 1, "Type": "Ack", "AckID": i} for i in ids + [ids[0], 999999, "x"]]
                await ws.send(json.dumps(acks))
    path = tmp_path / "rows.csv"
    path.write_text("RIC,BID\n" + "".join(f"UMER.TST,{i}\n" for i in range(150)))
    with serve_in_thread(ads) as port:
        result = subprocess.run(args_for(port, "--json", "post", "--service", "NIPROV", "--file", str(path)),
                                capture_output=True, text=True, timeout=TIMEOUT * 6, env=ENV,
                                stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])["summary"]
    assert (summary["posted"], summary["acknowledged"], summary["acknowledged_late"]) == (150, 150, 0)
    assert "an Ack for unknown or already ended post 999999 was ignored" in result.stderr
    assert "an Ack for unknown or already ended post 1 was ignored" in result.stderr
    assert "post 'x' was ignored" in result.stderr


class FailingFile(io.BytesIO):
    """A file whose reads fail with EIO after its first fail_at bytes (a disk error)."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self.fail_at = fail_at

    def read1(self, size: int = -1) -> bytes:
        if self.tell() >= self.fail_at:
            raise OSError(5, "Input/output error")
        return super().read1(min(size, 4096))


def test_rows_read_before_an_input_error_are_all_posted_and_counted(emu, monkeypatch, caplog):
    """An I/O error part-way through a file ends the reading with a one-line error naming the
    last line taken; every row up to that line is posted and acknowledged: here every whole
    line of the 8 KiB read before the error."""
    data = b"RIC,BID\n" + b"".join(b"UMER.TST,%d\n" % i for i in range(2000))
    monkeypatch.setattr(contribute_module, "open_input", lambda path: (FailingFile(data, 8192), False))
    out, err = io.StringIO(), io.StringIO()
    code = run_bulk(Settings(f"127.0.0.1:{emu.port}", user="tester"), PostSpec("NIPROV", "", {}), False,
                    Reporter(out, err), path="rows.csv", fmt="csv", window=150, rate=None, strict=False,
                    failed_out=None)
    summary = err.getvalue()
    lines = int(summary.split("bulk: lines ")[1].split(",")[0])
    assert code == 2 and lines == data[:8192].count(b"\n"), summary
    assert f"posted {lines - 1}, acknowledged {lines - 1}," in summary
    assert f"input: OSError: [Errno 5] Input/output error after line {lines}" in caplog.text


def test_a_read_cut_short_by_an_error_keeps_the_rows_it_had(emu):
    """Bulk.read takes up to a frame's rows; when the input fails after some of them, those
    rows are taken and posted, and the error ends the input: none is lost."""
    def rows():
        for line in range(2, 32):
            yield contribute_module.Row(line, "UMER.TST", None, None, {"BID": line}, "")
        raise OSError(5, "Input/output error")

    spec = PostSpec("NIPROV", "", {})
    with Session(Settings(f"127.0.0.1:{emu.port}", user="tester"), Reporter(io.StringIO(), io.StringIO()),
                 spec=spec) as session:
        session.connect()
        bulk = Bulk(session, spec, False, 1000, None, False, None)
        session.on_acks = bulk.on_acks
        assert bulk.read(rows())
        assert (bulk.posted, bulk.last_line, bulk.ended) == (30, 31, True)
        assert bulk.read_error == "OSError: [Errno 5] Input/output error"
        session.flush()
        session.drain()
    assert session.ledger.counts == {"ack": 30}


def test_a_post_stopped_before_its_frame_went_counts_as_unsent_not_posted(emu):
    """Rows made into posts wait for a frame (less than PER_FRAME here); an interrupt then ends
    them UNSENT, and the summary counts each row once: not posted, unsent (a SIGTERM at that
    moment once gave "posted 101" with 100 posts on the wire and the 101st also unsent)."""
    from contribute import Interrupted, Row, bulk_summary

    spec = PostSpec("NIPROV", "", {})
    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(out, err)
    with Session(Settings(f"127.0.0.1:{emu.port}", user="tester"), reporter, spec=spec) as session:
        session.connect()
        bulk = Bulk(session, spec, False, 1000, None, False, None)
        session.outcome, session.on_acks = bulk.on_outcome, bulk.on_acks
        bulk.post([Row(line, "UMER.TST", None, None, {"BID": line}, "") for line in (2, 3, 4)])
        session.events.put((None, Interrupted("SIGTERM")))
        session.wait(time.monotonic() + TIMEOUT)
        assert session.stopping
        session.drain()
    bulk_summary(bulk, reporter, 1.0, None)
    assert not received(emu, "Post")
    assert session.ledger.counts == {"unsent": 3}
    assert "bulk: lines 0, posted 0, acknowledged 0," in err.getvalue() and ", unsent 3," in err.getvalue()
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["UNSENT"] * 3


def test_a_pipes_rows_go_to_the_main_thread_a_chunk_at_a_time():
    """Bulk.feed hands a pipe's rows over together: those the input gave at once (up to
    CHUNK_END), at most a frame's, and those it holds before it waits for a credit (their posts
    are what frees credits); each row still takes a credit."""
    from contribute import CHUNK_END, EndOfInput, PER_FRAME, Row, SimpleQueue

    class Stub:
        reporter = None

    def rows(*lines):
        return [Row(n, "UMER.TST", None, None, {"BID": n}, "") if n else CHUNK_END for n in lines]

    def feed(bulk, items, events):                          # a feed waiting for a credit fails, bounded
        reader = threading.Thread(target=bulk.feed, args=(items, events), daemon=True)
        reader.start()
        reader.join(TIMEOUT)
        assert not reader.is_alive(), "the feed waits for a credit"

    bulk, events = Bulk(Stub(), PostSpec("NIPROV", "", {}), False, 4, None, False, None), SimpleQueue()
    bulk.slots.put(2)                                        # two credits back while the feed reads
    feed(bulk, rows(2, 3, 4, 0, 5, 6, 0), events)
    handed = []
    while not events.empty():
        handed.append([getattr(item, "line", item) for item in events.get()[1]])
    assert handed == [[2, 3, 4], [5], [6], [EndOfInput(None)]]
    assert bulk.credits == 1                                 # 4 + 2 credits, 5 rows

    bulk, events = Bulk(Stub(), PostSpec("NIPROV", "", {}), False, 1000, None, False, None), SimpleQueue()
    feed(bulk, rows(*range(2, 252)), events)
    sizes = []
    while not events.empty():
        sizes.append(len(events.get()[1]))
    assert sizes == [PER_FRAME, PER_FRAME, 51]               # the last 50 rows and the end of input
