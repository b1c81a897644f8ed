"""The pure layers of contribute.py: message building, classification, fields, ledger, config."""
from __future__ import annotations

import random

import pytest

import contribute
from conftest import DICTIONARY
from contribute import (Acked, ConfigError, Exit, ItemRefresh, ItemStatus, ItemUpdate, Ledger,
                        LoginAccepted, LoginDenied, Mismatch, Nakked, Other, PingReceived,
                        ProtocolViolation, ServerError, UsageProblem, build_close, build_login,
                        build_login_close, build_post, build_request, classify, compare_fields,
                        encode, in_fid_order, item_state_words, load_field_names, parse_field,
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
    assert isinstance(classify({"ID": 1, "Type": "Status", "Domain": "Login",
                                "State": {"Stream": "Open", "Data": "Ok"}}), Other)
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
    names = load_field_names(str(path))
    assert names.fid_of["GEN_TEXT16"] == 1000 and names.name_of[22] == "BID"
    fields = {"GEN_TEXT16": "x", "LOCAL": 1, "ASK": 2.0, "TRDPRC_1": 3.0}
    assert [k for k, _ in in_fid_order(fields, names)] == ["TRDPRC_1", "ASK", "GEN_TEXT16", "LOCAL"]
    assert [k for k, _ in in_fid_order(fields, None)] == list(fields)       # as the ADS sent them
    path.write_text("BID no quotes here\n")
    with pytest.raises(UsageProblem, match=":1: not an RDMFieldDictionary line"):
        load_field_names(str(path))


def test_view_of_names_and_fids(tmp_path):
    path = tmp_path / "dict"
    path.write_text(DICTIONARY)
    names = load_field_names(str(path))
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
    assert compare_fields({"22": 22.1, "25": 1.0}, read, load_field_names(str(path))) == \
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

def test_ledger_ids_resolve_and_exit_codes():
    ledger = Ledger()
    a, b = ledger.add("S", "A", 10.0), ledger.add("S", "B", 11.0)
    assert (a, b) == (1, 2)
    assert ledger.resolve(a, "ack").render() == "ACK S A post 1"
    assert ledger.resolve(a, "ack") is None                  # already ended
    assert ledger.resolve("junk", "ack") is None
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
        ledger.add("S", f"R{i}", 10.0 + i)
    assert ledger.next_deadline() == 10.0
    assert [o.ric for o in ledger.expire(11.0)] == ["R0", "R1"]
    assert ledger.next_deadline() == 12.0
    assert ledger.exit_code() == Exit.TIMEOUT
    assert [o.status for o in ledger.fail_all("lost", "gone")] == ["lost"]
    assert not ledger.pending and ledger.next_deadline() is None
    assert ledger.summary().startswith("3 posts: 0 acknowledged")


# ------------------------------------------------------------------ config

def test_read_config(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text("; comment\n[contribute]\nhost = ads1   ; inline\nPort=15001\n# more\nservice = CACHE\n")
    assert read_config(str(path)) == {"host": "ads1", "port": "15001", "service": "CACHE"}


@pytest.mark.parametrize("text,words", [
    ("[contribute]\nhots = x\n", ["unknown key 'hots'", ":2"]),
    ("[other]\nhost = x\n", ["unknown section [other]"]),
    ("host = x\n", ["expected 'key = value'"]),
    ("[contribute]\njust words\n", ["expected 'key = value'"]),
])
def test_read_config_errors_name_the_file_and_key(tmp_path, text, words):
    path = tmp_path / "c.ini"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_config(str(path))
    assert str(path) in info.value.message
    for word in words:
        assert word in info.value.message


def test_shipped_config_is_valid_and_sets_the_service():
    values = read_config(str(contribute.find_config()))
    assert values == {"service": "NIPROV"}
