"""The pure layers of contribute.py: message building, classification, fields, ledger, config."""
from __future__ import annotations

import gc
import io
import json
import random
import re

import pytest

import contribute
from conftest import DICTIONARY
from contribute import (STDLIB, Digits, fast_codec, started, AckBatch, BadRow, Lines, LoginNotice, csv_rows, decode,
                        Row, typed_value, jsonl_rows, load_config, pack, parse_host)
from contribute import (Acked, ConfigError, Exit, ItemRefresh, ItemStatus, ItemUpdate, Ledger, Pending,
                        LoginAccepted, LoginDenied, Mismatch, Nakked, Other, PingReceived,
                        ProtocolViolation, ServerError, UsageProblem, build_close, build_login,
                        build_login_close, build_post, build_request, classify, compare_fields,
                        encode, in_fid_order, item_state_words, load_dictionary, parse_field,
                        read_config, view_of, walk)


# ------------------------------------------------------ golden wire messages

def test_login_golden():
    assert encode(build_login("fred", "256", "10.0.0.1/host")) == \
        '{"ID":1,"Domain":"Login","Key":{"Name":"fred","Elements":' \
        '{"ApplicationId":"256","Position":"10.0.0.1/host"}}}'


def test_login_close_golden():
    assert encode(build_login_close()) == '{"ID":1,"Type":"Close","Domain":"Login"}'


def test_update_post_golden():
    msg = build_post(7, "NIPROV", "UMER.TST", {"BID": 22.1},
                     post_user_info={"Address": "10.0.0.1", "UserID": 42})
    assert encode(msg) == (
        '{"ID":1,"Type":"Post","Domain":"MarketPrice","Ack":true,"PostID":7,'
        '"Key":{"Service":"NIPROV","Name":"UMER.TST"},'
        '"PostUserInfo":{"Address":"10.0.0.1","UserID":42},'
        '"Message":{"ID":0,"Type":"Update","Domain":"MarketPrice","Fields":{"BID":22.1}}}')


def test_refresh_post_golden():
    msg = build_post(1, "NIPROV", "UMER.TST", {"ASK": 24.5, "GEN_TEXT16": "some text"}, refresh=True)
    assert encode(msg) == (
        '{"ID":1,"Type":"Post","Domain":"MarketPrice","Ack":true,"PostID":1,'
        '"Key":{"Service":"NIPROV","Name":"UMER.TST"},'
        '"Message":{"ID":0,"Type":"Refresh","Domain":"MarketPrice","Solicited":false,'
        '"State":{"Stream":"Open","Data":"Ok"},"Fields":{"ASK":24.5,"GEN_TEXT16":"some text"}}}')


# ---------------------------------------------------------- classification

LOGIN_REFRESH = {"ID": 1, "Type": "Refresh", "Domain": "Login",
                 "Key": {"Name": "api", "Elements": {"SupportOMMPost": 1, "ApplicationName": "ADS"}},
                 "State": {"Stream": "Open", "Data": "Ok", "Text": "Login accepted by host apis11."},
                 "Elements": {"PingTimeout": 30, "MaxMsgSize": 61430}}


def test_classify_login_refresh():
    event = classify(LOGIN_REFRESH)
    assert isinstance(event, LoginAccepted)
    assert event.text == "Login accepted by host apis11."
    assert event.attributes["SupportOMMPost"] == 1 and event.ping_timeout == 30
    assert event.attributes["MaxMsgSize"] == 61430


def test_classify_login_denial():
    event = classify({"ID": 1, "Type": "Status", "Domain": "Login", "Key": {"Name": "fred"},
                      "State": {"Stream": "Closed", "Data": "Suspect", "Code": "UserUnknownToPermSys",
                                "Text": "fred, unknown to system."}})
    assert event == LoginDenied("Closed", "Suspect", "UserUnknownToPermSys", "fred, unknown to system.")


def test_classify_acks_and_naks():
    assert classify({"ID": 1, "Type": "Ack", "AckID": 3, "Key": {"Name": "X"}}) == Acked(3, "")
    nak = classify({"ID": 1, "Type": "Ack", "AckID": 4, "NakCode": "SymbolUnknown",
                    "Text": "F44: Unable to find item on post update."})
    assert nak == Nakked(4, "SymbolUnknown", "F44: Unable to find item on post update.")
    assert isinstance(classify({"ID": 1, "Type": "Ack", "AckID": 5, "NakCode": "None"}), Acked)


def test_classify_error_finds_the_offending_post():
    offending = encode(build_post(9, "NIPROV", "X", {"BIDX": 1}))
    event = classify({"ID": 1, "Type": "Error", "Text": "JSON Unexpected FID. Received 'BIDX' for key 'Fields'",
                      "Debug": {"Message": offending}})
    assert event == ServerError(1, "JSON Unexpected FID. Received 'BIDX' for key 'Fields'", 9)
    assert classify({"ID": 0, "Type": "Error", "Text": "x", "Debug": {"Message": "{bad"}}).post_id is None


def test_classify_ping_and_others():
    assert isinstance(classify({"Type": "Ping"}), PingReceived)
    assert classify({"ID": 1, "Type": "Status", "Domain": "Login",
                     "State": {"Stream": "Open", "Data": "Suspect", "Text": "busy"}}) == \
        LoginNotice("Open", "Suspect", "None", "busy")
    assert isinstance(classify({"ID": 2, "Type": "Generic", "Domain": "Contribution"}), Other)
    with pytest.raises(ProtocolViolation):
        classify(["not", "an", "object"])


def test_request_and_close_golden():
    assert encode(build_request(2, "NIPROV", "UMER.TST")) == \
        '{"ID":2,"Domain":"MarketPrice","Key":{"Service":"NIPROV","Name":"UMER.TST"}}'
    assert encode(build_request(3, "NIPROV", "UMER.TST", streaming=False, view=["BID", "ASK"])) == \
        '{"ID":3,"Domain":"MarketPrice","Key":{"Service":"NIPROV","Name":"UMER.TST"},' \
        '"Streaming":false,"View":["BID","ASK"]}'
    assert encode(build_close(3)) == '{"ID":3,"Type":"Close","Domain":"MarketPrice"}'


def test_on_stream_post_golden():
    """On-stream (protocol.md section 6): the item stream's ID and no Key."""
    msg = build_post(4, "NIPROV", "UMER.TST", {"ASK": 45.57}, stream=2)
    assert encode(msg) == ('{"ID":2,"Type":"Post","Domain":"MarketPrice","Ack":true,"PostID":4,'
                           '"Message":{"ID":0,"Type":"Update","Domain":"MarketPrice","Fields":{"ASK":45.57}}}')


def test_classify_item_messages():
    """Shapes from protocol.md section 8: Refresh, Update and Status on an item stream."""
    info = {"Address": "10.0.0.1", "UserID": 7}
    refresh = classify({"ID": 2, "Type": "Refresh", "Key": {"Service": "NIPROV", "Name": "UMER.TST"},
                        "State": {"Stream": "NonStreaming", "Data": "Ok", "Text": "All is well"},
                        "PostUserInfo": info, "Fields": {"BID": 22.1}})
    assert refresh == ItemRefresh(2, {"Stream": "NonStreaming", "Data": "Ok", "Text": "All is well"},
                                  {"BID": 22.1}, info)
    assert classify({"ID": 2, "Type": "Update", "UpdateType": "Quote", "Fields": {"ASK": 1}}) == \
        ItemUpdate(2, {"ASK": 1}, None)
    status = classify({"ID": 3, "Type": "Status", "State": {
        "Stream": "Closed", "Data": "Suspect", "Code": "NotFound", "Text": "**The record could not be found"}})
    assert isinstance(status, ItemStatus) and status.stream == 3
    assert item_state_words(status.state) == 'Closed/Suspect NotFound "**The record could not be found"'
    assert item_state_words(refresh.state) == 'NonStreaming/Ok "All is well"'


# ------------------------------------------------------- reading items back

def test_field_dictionary_orders_fields_and_names_fids(tmp_path):
    path = tmp_path / "RDMFieldDictionary"
    path.write_text(DICTIONARY)
    names = load_dictionary(str(path))
    assert names.fid_of["GEN_TEXT16"] == 1000 and names.name_of[22] == "BID"
    fields = {"GEN_TEXT16": "x", "LOCAL": 1, "ASK": 2.0, "TRDPRC_1": 3.0}
    assert [k for k, _ in in_fid_order(fields, names)] == ["TRDPRC_1", "ASK", "GEN_TEXT16", "LOCAL"]
    assert [k for k, _ in in_fid_order(fields, None)] == list(fields)       # as the ADS sent them
    path.write_text("BID no quotes here\n")
    with pytest.raises(UsageProblem, match=":1: not an RDMFieldDictionary line"):
        load_dictionary(str(path))


def test_view_of_names_and_fids(tmp_path):
    path = tmp_path / "dict"
    path.write_text(DICTIONARY)
    names = load_dictionary(str(path))
    assert view_of((), None) is None
    assert view_of(("BID", "ASK"), None) == ["BID", "ASK"]
    assert view_of(("22", "25"), None) == [22, 25]               # FIDs go as numbers
    assert view_of(("22", "ASK"), names) == ["BID", "ASK"]        # named through the dictionary
    with pytest.raises(UsageProblem, match="names or FIDs, not both"):
        view_of(("22", "ASK"), None)


def test_compare_fields(tmp_path):
    read = {"BID": 22.1, "ASK": 24.0, "GEN_TEXT16": "0042", "RDN_EXCHID": None}
    assert compare_fields({"BID": 22.1, "ASK": 24, "GEN_TEXT16": "0042"}, read) == ([], [])
    mismatches, unverified = compare_fields({"BID": 22.2, "GEN_TEXT16": 42, "RDN_EXCHID": "NYS",
                                             "TRDPRC_1": 1.0, "22": 22.1}, read)
    assert mismatches == [Mismatch("BID", 22.2, 22.1, True), Mismatch("GEN_TEXT16", 42, "0042", True),
                          Mismatch("RDN_EXCHID", "NYS", None, True), Mismatch("TRDPRC_1", 1.0, None, False)]
    assert unverified == ["22"]                      # a FID, and no dictionary to name it
    assert mismatches[3].render() == "TRDPRC_1 posted 1.0, read (absent)"
    path = tmp_path / "dict"
    path.write_text(DICTIONARY)
    assert compare_fields({"22": 22.1, "25": 1.0}, read, load_dictionary(str(path))) == \
        ([Mismatch("25", 1.0, 24.0, True)], [])


# ------------------------------------------------------------ field values

@pytest.mark.parametrize("text,expected", [
    ("BID=22.1", ("BID", 22.1)),
    ("BIDSIZE=100", ("BIDSIZE", 100)),
    ("NETCHNG_1=-0.5", ("NETCHNG_1", -0.5)),
    ("ASK=1e3", ("ASK", 1000.0)),
    ("GEN_TEXT16=some text", ("GEN_TEXT16", "some text")),
    ("GEN_TEXT16=a=b", ("GEN_TEXT16", "a=b")),
    ("BID=", ("BID", None)),
    ("TRADE_DATE=2024-01-02", ("TRADE_DATE", "2024-01-02")),
    ("BID=NaN", ("BID", "NaN")),
    ("22=45.5", ("22", 45.5)),
    ('GEN_TEXT16:="0042"', ("GEN_TEXT16", "0042")),
    ("BID:=null", ("BID", None)),
    ("X:=[1,2]", ("X", [1, 2])),
])
def test_parse_field(text, expected):
    assert parse_field(text) == expected


@pytest.mark.parametrize("text", ["BID", "=1", "B D=1", "BID:={bad", "BÏD=1"])
def test_parse_field_rejects(text):
    with pytest.raises(ValueError):
        parse_field(text)


def test_walk_moves_numbers_only():
    rng = random.Random(1)
    fields = {"BID": 22.1, "BIDSIZE": 10, "GEN_TEXT16": "x", "ASK": None}
    moved = [walk(fields, rng) for _ in range(50)]
    assert all(m["GEN_TEXT16"] == "x" and m["ASK"] is None for m in moved)
    assert any(m["BID"] != 22.1 for m in moved)
    assert all(abs(m["BID"] - 22.1) <= 0.03 for m in moved)
    assert all(m["BIDSIZE"] in (9, 10, 11) for m in moved)


# ------------------------------------------------------------------ ledger

def message_of(post_id: int, post: Pending) -> dict:
    return build_post(post_id, post.service, post.ric, post.fields, post.refresh, post.domain, None, post.stream)


def make(ledger: Ledger, ric: str, deadline: float) -> int:
    post_id = ledger.new_id()
    post = Pending("S", ric, deadline, {"BID": post_id}, post_id % 2 == 0, "MarketPrice", 1)
    ledger.add(post_id, post, message_of(post_id, post))
    return post_id


def test_ledger_ids_resolve_and_exit_codes():
    ledger = Ledger()
    a, b = make(ledger, "A", 10.0), make(ledger, "B", 11.0)
    assert (a, b) == (1, 2)
    assert ledger.resolve(a, "ack").render() == "ACK S A post 1"
    assert ledger.resolve(a, "ack") is None                  # already ended
    assert ledger.resolve("junk", "ack") is None
    assert ledger.resolve(True, "ack") is None               # AckID true is not PostID 1
    assert ledger.exit_code() == Exit.OK
    nak = ledger.resolve(b, "nak", "AccessDenied", "no")
    assert nak.render() == 'NAK S B post 2 AccessDenied "no"'
    assert nak.data() == {"status": "nak", "service": "S", "ric": "B", "post_id": 2,
                          "nak_code": "AccessDenied", "text": "no"}
    assert ledger.exit_code() == Exit.REJECTED
    assert ledger.exit_code(interrupted=True) == Exit.INTERRUPTED


def test_ledger_expires_in_deadline_order():
    ledger = Ledger()
    for i in range(3):
        make(ledger, f"R{i}", 10.0 + i)
    assert ledger.next_deadline() == 10.0
    assert [o.ric for o in ledger.expire(11.0)] == ["R0", "R1"]
    assert ledger.next_deadline() == 12.0
    assert ledger.exit_code() == Exit.TIMEOUT
    assert [o.status for o in ledger.fail_all("gone")] == ["unsent"]     # R2 was never sent
    assert not ledger.pending and ledger.next_deadline() is None
    assert ledger.summary().startswith("3 posts: 0 acknowledged")


def test_ledger_sent_unsent_and_resends_keep_ids_and_deadlines():
    ledger = Ledger()
    a, b = make(ledger, "A", 10.0), make(ledger, "B", 11.0)
    sent = ledger.take_unsent()
    assert [m["PostID"] for m in sent] == [a, b] and not ledger.unsent
    c = make(ledger, "C", 12.0)
    waiting = ledger.unsent[c]
    ledger.new_connection(message_of)                        # everything pending goes again
    assert list(ledger.unsent) == [a, b, c] and ledger.resent == 2
    assert list(ledger.unsent.values()) == [*sent, waiting]  # made again the same; C's as it was
    assert ledger.unsent[c] is waiting and sent[1]["Message"]["Type"] == "Refresh"
    assert [p.deadline for p in ledger.pending.values()] == [10.0, 11.0, 12.0]
    ledger.take_unsent()
    d = make(ledger, "D", 13.0)
    outcomes = ledger.fail_all("gone")
    assert [(o.post_id, o.status) for o in outcomes] == [(d, "unsent"), (a, "lost"), (b, "lost"), (c, "lost")]
    assert outcomes[0].text == "never sent: gone"
    assert ledger.exit_code() == Exit.CONNECT


def test_ledger_recognises_a_late_ack_once():
    ledger = Ledger()
    a = make(ledger, "A", 1.0)
    assert [o.status for o in ledger.expire(2.0)] == ["timeout"]
    assert ledger.late_ack(a) and not ledger.late_ack(a) and not ledger.late_ack(99)
    assert ledger.late == 1 and ledger.exit_code() == Exit.TIMEOUT    # TIMEOUT was printed: it stands


@pytest.mark.parametrize("counts,flags,code", [
    ({"ack": 3}, {}, Exit.OK),
    ({"ack": 3}, {"interrupted": True}, Exit.OK),                       # run stopped, all acked
    ({"ack": 3}, {"interrupted": True, "complete": False}, Exit.INTERRUPTED),   # feed cut short
    ({"ack": 2, "lost": 1}, {"interrupted": True}, Exit.INTERRUPTED),
    ({"nak": 1, "timeout": 1}, {}, Exit.REJECTED),
    ({"timeout": 1, "lost": 1}, {}, Exit.TIMEOUT),
    ({"unsent": 1}, {}, Exit.CONNECT),
    ({"ack": 1, "unsent": 2}, {"bad_input": True}, Exit.USAGE),        # --strict left rows unsent
    ({"ack": 1}, {"bad_input": True}, Exit.USAGE),
])
def test_one_exit_rule(counts, flags, code):
    ledger = Ledger()
    ledger.counts = dict(counts)
    assert ledger.exit_code(**flags) == code


# ----------------------------------------------------------------- framing

def test_pack_splits_by_count_and_bytes_and_refuses_what_cannot_go():
    posts = [build_post(i, "S", "R", {"GEN_TEXT16": "x" * 400}) for i in range(1, 251)]   # ~540 bytes each
    frames = list(pack(posts, 61430))
    assert [len(f.messages) for f in frames] == [100, 100, 50]         # PER_FRAME, then bytes fit
    assert all(f.data and len(f.data) <= 61430 for f in frames)
    assert json.loads(frames[0].data)[0]["PostID"] == 1
    small = list(pack(posts[:10], 3000))
    assert sum(len(f.messages) for f in small) == 10 and all(len(f.data) <= 3000 for f in small)
    one = list(pack(posts[:1], 61430))
    assert json.loads(one[0].data)["PostID"] == 1                       # a lone message: an object
    odd = [build_post(1, "S", "R", {"BID": 1.0}), build_post(2, "S", "R", {"BID": float("inf")}),
           build_post(3, "S", "R", {"GEN_TEXT16": "y" * 70000})]
    frames = list(pack(odd, 61430))
    assert [(f.messages[0]["PostID"], f.data is None) for f in frames] == [(1, False), (2, True), (3, True)]
    assert "NaN, Infinity" in frames[1].problem and "MaxMsgSize" in frames[2].problem


@pytest.mark.parametrize("codec", ["stdlib", "orjson"])
def test_max_msg_size_counts_utf8_bytes(codec):
    """Text goes as UTF-8 (3 bytes for each "€"), and MaxMsgSize counts those bytes."""
    dumps = (STDLIB if codec == "stdlib" else fast_codec()).dumps
    posts = [build_post(i, "S", "R", {"GEN_TEXT16": "€" * 1000}) for i in range(1, 5)]    # ~3,100 bytes each
    frames = list(pack(posts, 7000, dumps))
    assert [len(f.messages) for f in frames] == [2, 2] and all(len(f.data) <= 7000 for f in frames)
    assert "€".encode() in frames[0].data and b"\\u20ac" not in frames[0].data


def test_both_codecs_write_the_same_bytes():
    fast = fast_codec()
    messages = [build_login("fred", "256", "10.0.0.1/host"),
                build_post(7, "NIPROV", "É.TST", {"BID": 22.1, "ASK": Digits("24.50"), "GEN_TEXT16": "café",
                                                  "BIDSIZE": 100, "RDN_EXCHID": None, "22": -1.5e-07},
                           refresh=True, post_user_info={"Address": "127.0.0.1", "UserID": 42})]
    for message in messages + [messages]:
        assert STDLIB.dumps(message) == fast.dumps(message).replace(b"e-7", b"e-07")
    assert json.loads(STDLIB.dumps(messages[1])) == json.loads(fast.dumps(messages[1]))   # 1.5e-07: one number
    assert b'"ASK":24.50,' in fast.dumps(messages[1]) and "café".encode() in fast.dumps(messages[1])


def test_decode_batches_plain_acks_and_keeps_order():
    frame = json.dumps([{"ID": 1, "Type": "Ack", "AckID": 1}, {"ID": 1, "Type": "Ack", "AckID": 2},
                        {"ID": 1, "Type": "Ack", "AckID": 3, "NakCode": "AccessDenied"},
                        {"ID": 1, "Type": "Ack", "AckID": 4, "NakCode": "DeniedBySrc", "Text": "x"},
                        {"Type": "Ping"}, {"ID": 1, "Type": "Ack", "AckID": 5}])
    assert decode(frame) == [AckBatch([1, 2]), Nakked(3, "AccessDenied", ""), Nakked(4, "DeniedBySrc", "x"),
                             PingReceived(), AckBatch([5])]
    assert decode(b"") == []
    with pytest.raises(ProtocolViolation):
        decode("not json")


def test_login_refresh_oddities_are_survived():
    suspect = classify({"ID": 1, "Type": "Refresh", "Domain": "Login",
                        "State": {"Stream": "Open", "Data": "Suspect", "Text": "degraded"},
                        "Elements": {"PingTimeout": "20", "MaxMsgSize": "lots"}})
    assert isinstance(suspect, LoginAccepted) and suspect.data == "Suspect"
    assert suspect.ping_timeout == 20 and suspect.max_msg_size == 61430
    stateless = classify({"ID": 1, "Type": "Refresh", "Domain": "Login"})
    assert isinstance(stateless, LoginAccepted) and not stateless.stated
    assert isinstance(classify({"ID": 1, "Type": "Refresh", "Domain": "Login",
                                "State": {"Stream": "Closed", "Data": "Suspect"}}), LoginDenied)


# ------------------------------------------------------------------ input

def lines_of(data: bytes, pipe: bool = False) -> tuple[list[str], list]:
    lines = Lines(io.BytesIO(data), pipe)
    return list(lines), list(lines.problems)


def test_lines_isolate_bad_lines_and_keep_the_count():
    texts, problems = lines_of(b"\xef\xbb\xbfRIC,BID\nA,1\nB\xe9,2\nC,3\n")
    assert texts == ["RIC,BID\n", "A,1\n", "\n", "C,3\n"]
    assert problems == [(3, "not UTF-8: byte 0xe9 at byte 2 of the line")]
    assert lines_of(b"A,1\nB,1", pipe=False)[0] == ["A,1\n", "B,1"]        # a file's last line is posted
    texts, problems = lines_of(b"A,1\nB,1", pipe=True)                    # a pipe's is cut off
    assert texts == ["A,1\n", "\n"] and problems[0][0] == 2 and "incomplete" in problems[0][1]


def test_lines_skip_an_endless_line_in_bounded_memory(monkeypatch):
    monkeypatch.setattr(contribute, "MAX_LINE", 64)
    texts, problems = lines_of(b"x" * 1000 + b"\nA,1\n")
    assert texts == ["\n", "A,1\n"] and problems[0][0] == 1 and "longer than 64 bytes" in problems[0][1]


def lines_oracle(data: bytes, pipe: bool, max_line: int) -> tuple[list[str], list]:
    """What Lines must give, worked out line by line: a line is cut at \\n only; one that is
    max_line bytes or longer, not UTF-8, or (in a pipe) has no newline at the end becomes "\\n"
    with its problem."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    parts = data.split(b"\n")
    texts, problems = [], []
    for number, raw in enumerate(parts, 1):
        last = number == len(parts)
        if last and not raw:
            break
        if len(raw) >= max_line:
            problems.append((number, f"longer than {max_line} bytes: not posted (a post must fit the ADS's "
                                     "MaxMsgSize)"))
        elif last and pipe:
            problems.append((number, "incomplete last line (no newline at the end of the input): not posted"))
        else:
            try:
                texts.append(raw.decode() + ("" if last else "\n"))
                continue
            except UnicodeDecodeError as exc:
                problems.append((number, f"not UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                                         "of the line"))
        texts.append("\n")
    return texts, problems


class Trickle(io.BytesIO):
    """A pipe that gives a few bytes at a time."""

    def read1(self, size: int = -1) -> bytes:
        return super().read1(min(size, 3))


@pytest.mark.parametrize("seed", range(30))
def test_lines_read_in_blocks_are_the_lines_read_one_by_one(seed, monkeypatch):
    """Issue 12: Lines reads blocks and decodes each at once; whatever the block size and
    wherever a block ends (inside a line, a UTF-8 character, a BOM, a CRLF, a line too long),
    the lines and their problems are the ones a line-by-line reading finds."""
    rng = random.Random(seed)
    max_line = rng.choice([16, 40, 1 << 20])
    monkeypatch.setattr(contribute, "MAX_LINE", max_line)
    monkeypatch.setattr(Lines, "BLOCK", rng.choice([1, 2, 5, 16, 64, 1 << 16]))
    pieces = [b"A,1", b"B,2\r", "é,ü".encode(), b"\xe9,1", b"", b"x" * 15, b"y" * 16, b"z" * 100,
              b"\xef\xbb\xbfC,3", "€".encode()[:2] + b",4"]
    data = (b"\xef\xbb\xbf" if rng.random() < 0.3 else b"") + \
        b"\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
    if rng.random() < 0.7:
        data += b"\n"
    for pipe in (False, True):
        binary = Trickle(data) if pipe and seed % 2 else io.BytesIO(data)
        lines = Lines(binary, pipe)
        assert (list(lines), list(lines.problems)) == lines_oracle(data, pipe, max_line)


def test_a_bad_json_line_is_reported_in_its_place():
    data = b"".join(b'{"ric": "R%d", "fields": {"BID": %d}}\n' % (i, i) for i in range(1, 6))
    data = data.replace(b'"R3"', b'"R\xe9"')
    rows = list(jsonl_rows(Lines(io.BytesIO(data), False)))
    assert [r.line for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2] == BadRow(3, "not UTF-8: byte 0xe9 at byte 11 of the line") and rows[3].ric == "R4"


def test_csv_rows_report_bad_cells_and_duplicate_columns():
    rows = list(csv_rows(Lines(io.BytesIO(b"RIC,BID\nA,1e999\nB,\xd9\xa3\nC,2\n"), False)))
    assert rows[0] == BadRow(2, "1e999 is beyond the range of a number")
    assert rows[1].fields == {"BID": "\u0663"}                              # an Arabic-Indic digit: text
    assert rows[2].fields == {"BID": 2}
    assert list(csv_rows(Lines(io.BytesIO(b"RIC,BID,bid\nA,1,2\n"), False))) == \
        [BadRow(1, "the CSV header has column 'bid' twice")]


def test_jsonl_rows_refuse_non_finite_and_deep_values():
    data = (b'{"ric": "A", "fields": {"BID": NaN}}\n{"ric": "B", "fields": {"BID": 1e999}}\n'
            + b"[" * 100000 + b"]" * 100000 + b'\n{"ric": "C", "fields": {"BID": 1}}\n')
    rows = list(jsonl_rows(Lines(io.BytesIO(data), False)))
    assert [type(r).__name__ for r in rows] == ["BadRow", "BadRow", "BadRow", "Row"]
    assert "NaN is not JSON" in rows[0].text and "beyond the range" in rows[1].text
    assert "nested too deeply" in rows[2].text or "not JSON" in rows[2].text


@pytest.mark.parametrize("entry", ["127.0.0.1:", "ws://h:1", "h/x", "h:1:1", "h:0", "h:x", "[::1", "a b"])
def test_bad_host_entries_are_named(entry):
    with pytest.raises(ValueError) as info:
        parse_host(entry)
    assert repr(entry) in str(info.value)


def test_good_host_entries():
    assert [parse_host(e) for e in ("ads1", "ads1:15001", "10.0.0.1:1", "[::1]:2", "::1")] == [
        ("ads1", None), ("ads1", 15001), ("10.0.0.1", 1), ("::1", 2), ("::1", None)]


def test_walk_keeps_sign_and_scale():
    rng = random.Random(2)
    for _ in range(200):
        moved = walk({"A": -5, "B": 0.0005, "C": 1, "D": 0}, rng)
        assert -6 <= moved["A"] <= -4 and abs(moved["B"] - 0.0005) <= 0.0005 * 0.0011
        assert moved["C"] in (1, 2) and moved["D"] == 0


# ------------------------------------------------------------------ config

def test_read_config(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text("\ufeff; comment\n[contribute]\nhost = ads1   ; inline\nPort=15001\n# more\nservice = CACHE\n",
                    encoding="utf-8")                       # with a BOM, as Notepad saves it
    assert read_config(str(path)) == {"host": (3, "ads1"), "port": (4, "15001"), "service": (6, "CACHE")}
    assert load_config(str(path), contribute.cli) == {
        "host": "ads1", "port": "15001", "post": {"service": "CACHE"}, "run": {"service": "CACHE"},
        "login": {}, "get": {"service": "CACHE"}, "watch": {"service": "CACHE"}, "check": {"service": "CACHE"}}


def test_config_keys_are_the_options_with_an_environment_variable():
    keys = contribute.config_keys(contribute.cli)
    assert keys[""]["json"].name == "as_json"               # `json = yes` reaches --json
    assert set(keys["post"]) >= {"service", "ack_timeout", "window", "rate", "on_stream"}
    assert "ric" not in keys["post"] and "config" not in keys[""]


@pytest.mark.parametrize("text,words", [
    ("[contribute]\nhots = x\n", ["unknown key 'hots'", ":2"]),
    ("[other]\nhost = x\n", ["unknown section [other]"]),
    ("host = x\n", ["expected 'key = value'"]),
    ("[contribute]\njust words\n", ["expected 'key = value'"]),
    ("[contribute]\nport = 1\nport = 2\n", ["key 'port' is already set on line 2", ":3"]),
    ("[contribute]\nport = abc\n", ["port = abc", ":2"]),
    ("[contribute]\nack_timeout = nan\n", ["ack_timeout = nan", "not a number"]),
    ("[contribute]\nhost = ws://x:1\n", ["host = ws://x:1", "not HOST"]),
])
def test_read_config_errors_name_the_file_and_key(tmp_path, text, words):
    path = tmp_path / "c.ini"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), contribute.cli)
    assert str(path) in info.value.message
    for word in words:
        assert word in info.value.message


def test_shipped_config_is_valid_and_sets_the_service():
    values = read_config(str(contribute.find_config()))
    assert {k: v for k, (_, v) in values.items()} == {"service": "NIPROV"}
    load_config(str(contribute.find_config()), contribute.cli)


def csv_oracle(data: bytes) -> list:
    """What csv_rows must give for a UTF-8 CSV, worked out the plain way: csv.reader over the
    text's lines (cut at \\n only, as Lines cuts them), each cell typed alone by typed_value."""
    import csv
    lines = re.findall(r"[^\n]*\n|[^\n]+$", data.decode())
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader)]
    upper = [h.upper() for h in header]
    ric_at = upper.index("RIC")
    service_at = upper.index("SERVICE") if "SERVICE" in upper else None
    type_at = upper.index("TYPE") if "TYPE" in upper else None
    rows = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            rows.append(BadRow(reader.line_num, f"CSV: {exc}"))
            continue
        line = reader.line_num
        if not cells:
            continue
        if len(cells) != len(header):
            rows.append(BadRow(line, f"{len(cells)} cells where the header has {len(header)}"))
            continue
        if not cells[ric_at].strip():
            rows.append(BadRow(line, "no RIC"))
            continue
        try:
            kind = cells[type_at].strip().lower() if type_at is not None else ""
            if kind not in ("", "refresh", "update"):
                raise ValueError(f"type {cells[type_at].strip()!r} is not Refresh or Update")
            fields = {name: typed_value(cell) for i, (name, cell) in enumerate(zip(header, cells))
                      if i not in (ric_at, service_at, type_at)}
        except ValueError as exc:
            rows.append(BadRow(line, str(exc)))
            continue
        service = cells[service_at].strip() or None if service_at is not None else None
        rows.append(("Row", line, cells[ric_at].strip(), service, kind == "refresh" if kind else None,
                     fields, cells))


def as_read(rows: list) -> list:
    """csv_rows' rows in csv_oracle's terms (a plain line's raw is the line: its cells, cut)."""
    return [("Row", r.line, r.ric, r.service, r.refresh, r.fields,
             r.raw.split(",") if isinstance(r.raw, str) else r.raw) if isinstance(r, Row) else r
            for r in rows]


def test_a_file_typed_a_column_at_a_time_reads_as_a_pipe_typed_cell_by_cell():
    """Issue 12: a file's rows are typed a column at a time (a column of plain numbers in one
    step), a pipe's row by row; every cell must come out as typed_value() types it alone."""
    rows = [b"R%d,%d.25,%d,+%d,.5" % (i, i, i, i) for i in range(150)]
    rows[3] = b'R3,"1.5\n2.5",7,8,.5'                         # a newline inside a number-like cell
    rows[120] = b"R120," + b"9" * 400 + b".0,1,2,3"          # beyond a float, in a numeric column
    rows[121] = b"R121,1.5,99999999999999999999,2,3"         # beyond 64 bits, in an integer column
    rows[122] = "R122,١٢,1,2,3".encode()                     # not ASCII digits: text
    rows[123] = b"R123,,1,5.,3"                              # a blank, and "5."
    rows[60] = b"R60,1.25,1,2," + b"9" * 400 + b".5"           # the only odd cell of its column
    rows[61] = b"R61,1.25,1,+99999999999999999999,.5"
    data = b"RIC,BID,BIDSIZE,ASKSIZE,ASK\n" + b"\n".join(rows) + b"\n"
    by_column = as_read(csv_rows(Lines(io.BytesIO(data), False), []))
    by_row = as_read(csv_rows(Lines(io.BytesIO(data), True), []))
    assert by_column == by_row == csv_oracle(data) and len(by_column) == 150
    assert by_column[0][5] == {"BID": 0.25, "BIDSIZE": 0, "ASKSIZE": 0, "ASK": 0.5}
    assert by_column[3][5]["BID"] == "1.5\n2.5" and by_column[122][5]["BID"] == "١٢"


def test_plain_chunks_are_cut_at_their_commas_and_only_odd_ones_go_through_csv_reader():
    """Issue 12: the oracle tests would pass with the plain path switched off (csv.reader gives
    the same rows); here the path shows: a plain row keeps its line as raw, a csv.reader row its
    cells. Rows come a frame's lines (PER_FRAME) at a time: a quoted cell sends its chunk alone
    to csv.reader."""
    lines = [f"R{i},NIPROV,{i}.5\n" for i in range(300)]
    lines[150] = 'R150,NIPROV,"150.5"\n'
    data = ("RIC,SERVICE,BID\n" + "".join(lines)).encode()
    rows = list(csv_rows(Lines(io.BytesIO(data), False), []))
    plain = [row.raw.__class__ is str for row in rows]
    assert len(rows) == 300 and rows[150].fields == {"BID": 150.5}
    assert all(plain[:100]) and not any(plain[100:200]) and all(plain[200:])


ODD_LINES = [
    'R{i},"quoted, with a comma",1,2', 'R{i},"a ""quote""",1,2', "R{i},1,2", "R{i},1,2,3,4", "", "  ",
    " ,NIPROV,1,2", "R{i},NIPROV,x,2", "R{i},,1,2", "R{i},NIPROV,1e999,2", "R{i}\r,NIPROV,1,2",
    'R{i},NIPROV,"1', '2",3', "R{i},NIPROV, 1 ,2", "R{i},NIPROV,\x00,2", "R{i},N,1,99999999999999999999",
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pipe", [False, True])
def test_csv_rows_read_any_mix_of_plain_and_odd_lines_as_csv_reader_does(seed, pipe):
    """Issue 12: plain chunks are cut at their commas, others go through csv.reader; whatever
    the mix, across chunk boundaries (a quoted cell running from one chunk into the next,
    CRLF lines, blank lines, wrong cell counts, bad TYPEs), the rows are the oracle's."""
    rng = random.Random(seed)
    header = rng.choice(["RIC,SERVICE,BID,ASK", "ric,Service,Type,BID", "BID,RIC,SERVICE,ASK"])
    lines = []
    for i in range(rng.choice([99, 100, 101, 250, 437])):
        if rng.random() < 0.04:
            line = rng.choice(ODD_LINES)
        elif "Type" in header:
            line = f"R{i},NIPROV,{rng.choice(['Refresh', 'update', '', 'Close'])},{i}.5"
        elif header.startswith("BID"):
            line = f"{i}.5,R{i},{rng.choice(['NIPROV', '', ' X '])},{i}"
        else:
            line = f"R{i},NIPROV,{i}.5,{i}"
        lines.append(line.format(i=i) + ("\r\n" if seed % 2 else "\n"))
    if rng.random() < 0.5:
        lines[-1] = lines[-1].rstrip("\r\n")                    # a file's last line without a newline
    data = (header + "\n" + "".join(lines)).encode()
    if pipe and not data.endswith(b"\n"):
        data += b"\n"
    assert as_read(csv_rows(Lines(io.BytesIO(data), pipe), [])) == csv_oracle(data)


def test_bad_lines_come_in_line_order_among_plain_rows():
    """A line Lines refuses (not UTF-8) is reported where it is: between the rows around it,
    so that --strict stops there and no later row goes first."""
    rows = [b"R%d,%d" % (i, i) for i in range(1, 250)]
    rows[150] = b"R\xe9,1"
    rows[40] = b'R40,"4\n0"'
    data = b"RIC,BID\n" + b"\n".join(rows) + b"\n"
    got = list(csv_rows(Lines(io.BytesIO(data), False), []))
    assert [r.line for r in got] == list(range(2, 42)) + list(range(43, 252))   # row 40 ends at line 43
    assert got[150] == BadRow(153, "not UTF-8: byte 0xe9 at byte 2 of the line")


def test_a_pipes_rows_come_as_their_lines_do_never_waiting_for_more():
    """Lines are taken a frame's at a time, but only those already read: a row whose line is in
    the pipe comes out while the producer is still writing (a feed, not a file)."""
    import os
    import queue
    import threading
    from conftest import TIMEOUT
    read_end, write_end = os.pipe()
    got: queue.Queue = queue.Queue()

    def read() -> None:
        with os.fdopen(read_end, "rb") as binary:
            for row in csv_rows(Lines(binary, True), []):
                got.put(row)
        got.put(None)

    threading.Thread(target=read, daemon=True).start()
    with os.fdopen(write_end, "wb", buffering=0) as pipe:     # closed, whatever happens: the reader ends
        pipe.write(b"RIC,BID\nA,1\n")
        assert got.get(timeout=TIMEOUT)[:5] == (2, "A", None, None, {"BID": 1})
        pipe.write(b"B,2\nC,")
        assert got.get(timeout=TIMEOUT).ric == "B"
        pipe.write(b"3\n")
        assert got.get(timeout=TIMEOUT).ric == "C"
    assert got.get(timeout=TIMEOUT) is None


def test_csv_cells_over_the_field_size_limit_are_refused_as_csv_reader_refuses_them():
    import csv
    limit = csv.field_size_limit()
    data = b"RIC,BID\nA,1\nB," + b"x" * (limit + 1) + b"\nC," + b"y" * (limit - 10) + b"\n"
    rows = as_read(csv_rows(Lines(io.BytesIO(data), False), []))
    assert rows == csv_oracle(data) and rows[1] == BadRow(3, f"CSV: field larger than field limit ({limit})")
    assert rows[2][5] == {"BID": "y" * (limit - 10)}


def test_the_collector_is_frozen_once_not_at_every_connection():
    """started() runs at each connection; only the first may freeze what exists (a later freeze
    would keep a long run's garbage for good)."""
    started()
    frozen = gc.get_freeze_count()
    garbage = [[i] for i in range(1000)]
    started()
    assert gc.isenabled() and gc.get_freeze_count() == frozen and garbage


TRICKY_CELLS = ["1", "-1", "0", "-0", "1.5", "-0.0", "1e5", "1E-5", "2.5e+3", "+1", "01", "1.", ".5", " 1", "1 ",
                "\t1", "true", "null", "1,2", "[1]", "", "NaN", "1e999", "1e-400", "9999999999999999999",
                "18446744073709551615", "18446744073709551616", "-9223372036854775808", "-9223372036854775809",
                "99999999999999999999", "123456789012345678.5", "0x10", "١", "1_000"]


@pytest.mark.parametrize("seed", range(40))
def test_a_column_is_typed_as_typed_value_types_each_cell(seed):
    """column_typing reads a column of plain numbers with orjson in one step (plain_numbers) and
    any other column cell by cell: either way, each value is what typed_value gives for the
    cell alone, of the same type (an int stays an int), and a cell typed_value refuses is its
    row's problem."""
    rng = random.Random(seed)
    cells = [rng.choice(TRICKY_CELLS[:7] * 8 + TRICKY_CELLS) for _ in range(rng.randint(1, 12))]
    fields, problems = contribute.column_typing([(0, "F", typed_value)])([cells], len(cells))
    expected, refused = [], {}
    for n, cell in enumerate(cells):
        try:
            expected.append(typed_value(cell))
        except ValueError as exc:
            expected.append(None)
            refused[n] = str(exc)
    assert [(type(row["F"]), row["F"]) for row in fields] == [(type(v), v) for v in expected]
    assert problems == refused


def test_a_column_of_plain_numbers_is_read_in_one_step_and_anything_else_is_not():
    import orjson
    assert contribute.plain_numbers(["1", "-2.5", "3e2", "9999999999999999999"], orjson.loads) == \
        [1, -2.5, 300.0, 9999999999999999999]
    for odd in ["true", " 1", "1,2", "18446744073709551616", "", "+1", "NaN"]:
        assert contribute.plain_numbers(["1", odd], orjson.loads) is None, odd
