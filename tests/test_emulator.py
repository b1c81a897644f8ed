"""The ADS emulator over real sockets: each behaviour of protocol.md it claims."""
from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from ads_emulator import (Dictionary, Emulator, EmulatorError, Faults, Item, Service, Session,
                          World, parse_nak_rule)
from conftest import ROOT, TIMEOUT, TLS, Client, post


def by_type(messages, mtype):
    return [m for m in messages if m.get("Type") == mtype]


# ---------------------------------------------------------------- handshake

def test_handshake_tr_json2(emu):
    c = Client(emu.url)
    assert c.ws.subprotocol == "tr_json2"
    c.close()


def test_handshake_accepts_and_echoes_alias(emu):
    c = Client(emu.url, "rssl.json.v2")
    assert c.ws.subprotocol == "rssl.json.v2"
    c.close()


def test_handshake_without_subprotocol_is_refused(emu):
    with pytest.raises(InvalidStatus) as info:
        connect(emu.url, open_timeout=TIMEOUT)
    assert info.value.response.status_code == 400


def test_handshake_on_wrong_path_is_refused(emu):
    with pytest.raises(InvalidStatus) as info:
        connect(emu.url.replace("/WebSocket", "/other"), subprotocols=["tr_json2"],
                open_timeout=TIMEOUT)
    assert info.value.response.status_code == 404
    assert b"/WebSocket" in info.value.response.body


# -------------------------------------------------------------------- login

def test_login_refresh_is_shaped_like_an_ads(client):
    [refresh] = client.login("alice", stream=7)
    assert refresh["ID"] == 7 and refresh["Type"] == "Refresh" and refresh["Domain"] == "Login"
    elements = refresh["Key"]["Elements"]
    assert refresh["Key"]["Name"] == "alice"
    assert elements["SupportOMMPost"] == 1
    assert elements["ApplicationId"] == "256" and elements["Position"] == "127.0.0.1"
    assert elements["ApplicationName"] == "ADS"
    assert refresh["Elements"] == {"PingTimeout": 30, "MaxMsgSize": 61430}
    assert refresh["State"]["Stream"] == "Open" and refresh["State"]["Data"] == "Ok"
    assert refresh["State"]["Text"].startswith("Login accepted by host ")


def test_login_refresh_can_share_a_frame_with_a_ping():
    with Emulator(faults=Faults(ping_with_login=True)) as emu:
        c = Client(emu.url)
        frame = c.login()
        assert [m["Type"] for m in frame] == ["Refresh", "Ping"]
        c.close()


def test_unknown_user_is_denied_when_a_user_list_is_set():
    world = World.default()
    world.users = {"alice": None}
    with Emulator(world) as emu:
        c = Client(emu.url)
        [status] = c.login("fred")
        assert status == {"ID": 1, "Type": "Status", "Domain": "Login", "Key": {"Name": "fred"},
                          "State": {"Stream": "Closed", "Data": "Suspect",
                                    "Code": "UserUnknownToPermSys",
                                    "Text": "fred, unknown to system."}}
        assert c.login("alice")[0]["Type"] == "Refresh"   # the connection stays usable
        c.close()


def test_denied_user_and_denied_app_id():
    world = World.default()
    world.deny_users.add("mallory")
    world.deny_app_ids.add("999")
    with Emulator(world) as emu:
        c = Client(emu.url)
        assert c.login("mallory")[0]["State"]["Code"] == "UserUnknownToPermSys"
        [status] = c.login("bob", app_id="999")
        assert status["State"]["Code"] == "UserAccessToAppDenied"
        assert status["State"]["Stream"] == "Closed"
        assert not emu.logged_in.is_set()
        c.close()


def test_message_before_login_gets_an_error_then_close(client):
    client.send(post())
    [error] = client.recv()
    assert error["Type"] == "Error" and error["ID"] == 1
    assert error["Text"] == "Login required before any other message."
    with pytest.raises(ConnectionClosed) as info:
        client.recv()
    assert info.value.rcvd.code == 1008


def test_second_login_on_another_stream_is_refused(client):
    client.login(stream=1)
    [status] = client.login(stream=2)
    assert status["State"]["Code"] == "AlreadyOpen"


# ---------------------------------------------------------------- ping/pong

def test_client_ping_gets_pong_as_object_and_in_array(client):
    client.send({"Type": "Ping"})
    assert client.recv() == [{"Type": "Pong"}]
    client.send([{"Type": "Ping"}])
    assert client.recv() == [{"Type": "Pong"}]


def test_emulator_pings_an_idle_client_and_drops_a_silent_one():
    with Emulator(ping_interval=0.2, ping_timeout=1) as emu:
        c = Client(emu.url)
        c.login()
        assert c.recv() == [{"Type": "Ping"}]
        with pytest.raises(ConnectionClosed) as info:
            c.recv(timeout=TIMEOUT + 1)
        assert info.value.rcvd.code == 1008 and info.value.rcvd.reason == "ping timeout"


def test_answered_ping_keeps_the_connection():
    with Emulator(ping_interval=0.2, ping_timeout=1) as emu:
        c = Client(emu.url)
        c.login()
        for _ in range(3):                       # three Ping/Pong rounds, each > PingTimeout/5
            assert c.recv() == [{"Type": "Ping"}]
            c.send({"Type": "Pong"})
        c.send({"Type": "Ping"})
        assert c.recv_until(lambda m: m["Type"] == "Pong")
        c.close()


# -------------------------------------------------------------------- posts

def test_off_stream_update_is_acked_with_the_key(client, emu):
    client.login()
    [ack] = client.roundtrip(post(fields={"BID": 30.5}, post_id=42))
    assert ack == {"ID": 1, "Type": "Ack", "AckID": 42,
                   "Key": {"Service": "NIPROV", "Name": "UMER.TST"}}
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 30.5
    assert emu.item("NIPROV", "UMER.TST")["ASK"] == 24.5     # merged, not replaced


def test_numeric_service_id_is_acked_with_the_name(client, emu):
    client.login()
    [ack] = client.roundtrip(post(service=1))
    assert ack["Key"] == {"Service": "NIPROV", "Name": "UMER.TST"} and "NakCode" not in ack


def test_refresh_creates_and_replaces_an_item(client, emu):
    client.login()
    [ack] = client.roundtrip(post(ric="NEW.TST", mtype="Refresh", fields={"BID": 1, "ASK": 2}))
    assert "NakCode" not in ack
    assert emu.item("NIPROV", "NEW.TST") == {"BID": 1, "ASK": 2}
    client.roundtrip(post(ric="NEW.TST", mtype="Refresh", fields={"TRDPRC_1": 3}, post_id=2))
    assert emu.item("NIPROV", "NEW.TST") == {"TRDPRC_1": 3}


def test_update_to_unknown_item_is_nakked_symbol_unknown(client, emu):
    client.login()
    [nak] = client.roundtrip(post(ric="DAVE.TST"))
    assert nak == {"ID": 1, "Type": "Ack", "AckID": 1, "NakCode": "SymbolUnknown",
                   "Text": "F44: Unable to find item on post update.",
                   "Key": {"Service": "NIPROV", "Name": "DAVE.TST"}}
    assert emu.item("NIPROV", "DAVE.TST") is None


@pytest.mark.parametrize("service", ["NOSUCH", 9999])
def test_unknown_service_is_nakked_denied_by_src(client, service):
    client.login()
    [nak] = client.roundtrip(post(service=service))
    assert nak["NakCode"] == "DeniedBySrc"
    assert nak["Text"] == "Unable to find service for post message."
    assert nak["Key"]["Service"] == service


def test_service_down_is_nakked_source_down():
    world = World.default()
    world.services.append(Service("NI_PUB", 3, up=False))
    with Emulator(world) as emu:
        c = Client(emu.url)
        c.login()
        [nak] = c.roundtrip(post(service="NI_PUB"))
        assert (nak["NakCode"], nak["Text"]) == ("SourceDown", "A9: Service is unavailable.")
        c.close()


def test_user_without_post_permission_is_nakked_access_denied():
    world = World.default()
    world.users = {"alice": {"DIRECT_FEED"}}
    with Emulator(world) as emu:
        c = Client(emu.url)
        c.login("alice")
        [nak] = c.roundtrip(post(service="NIPROV"))
        assert nak["NakCode"] == "AccessDenied" and "NIPROV" in nak["Text"]
        [ack] = c.roundtrip(post(service="DIRECT_FEED", mtype="Refresh", post_id=2))
        assert "NakCode" not in ack
        c.close()


def test_post_without_ack_gets_no_reply(client, emu):
    client.login()
    assert client.roundtrip(post(fields={"BID": 7}, Ack=False)) == []
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 7


def test_post_on_a_stream_that_is_not_open_is_nakked(client):
    client.login()
    msg = post(stream=5)
    del msg["Key"]
    [nak] = client.roundtrip(msg)
    assert nak["ID"] == 5 and nak["NakCode"] == "NotOpen"


def test_on_stream_post_is_acked_and_fanned_out(emu):
    watcher, poster = Client(emu.url), Client(emu.url)
    watcher.login("w")
    poster.login("p")
    watcher.send({"ID": 2, "Key": {"Name": "UMER.TST", "Service": "NIPROV"}})
    assert watcher.recv()[0]["Type"] == "Refresh"
    poster.send({"ID": 5, "Key": {"Name": "UMER.TST", "Service": "NIPROV"}})
    assert poster.recv()[0]["State"]["Stream"] == "Open"
    info = {"Address": "127.0.0.1", "UserID": 77}
    on_stream = {"ID": 5, "Type": "Post", "Ack": True, "PostID": 3, "PostUserInfo": info,
                 "Message": {"ID": 0, "Type": "Update", "Fields": {"ASK": 45.57}}}
    replies = poster.roundtrip(on_stream)
    assert replies == [
        {"ID": 5, "Type": "Update", "UpdateType": "Unspecified",
         "Key": {"Service": "NIPROV", "Name": "UMER.TST"}, "PostUserInfo": info, "Fields": {"ASK": 45.57}},
        {"ID": 5, "Type": "Ack", "AckID": 3, "Text": "All is well"}]
    [update] = watcher.recv()
    assert update["ID"] == 2 and update["Fields"] == {"ASK": 45.57}
    watcher.close()
    poster.close()


def test_updates_carry_the_key_unless_key_in_updates_is_false(client):
    client.login()
    client.send([{"ID": 2, "Key": {"Name": "UMER.TST", "Service": "NIPROV"}},
                 {"ID": 3, "Key": {"Name": "UMER.TST", "Service": "NIPROV"}, "KeyInUpdates": False}])
    client.recv_until(lambda m: m["ID"] == 3)
    updates = client.roundtrip(post(fields={"BID": 2.5}))[:-1]       # the Ack comes last
    assert [(u["ID"], u.get("Key")) for u in updates] == [
        (2, {"Service": "NIPROV", "Name": "UMER.TST"}), (3, None)]


# --------------------------------------------------------------- dictionary

def test_unknown_field_gets_an_error_and_no_ack(client, emu):
    client.login()
    [error] = client.roundtrip(post(fields={"BID_CUSTOM": 1}, post_id=3))
    assert error["ID"] == 1 and error["Type"] == "Error"
    assert error["Text"] == "JSON Unexpected FID. Received 'BID_CUSTOM' for key 'Fields'"
    assert json.loads(error["Debug"]["Message"])["PostID"] == 3


def test_numeric_fid_is_accepted_and_stored_by_name(client, emu):
    client.login()
    [ack] = client.roundtrip(post(fields={"22": 45.5, "1000": "txt"}))
    assert "NakCode" not in ack
    item = emu.item("NIPROV", "UMER.TST")
    assert item["BID"] == 45.5 and item["GEN_TEXT16"] == "txt"


@pytest.mark.parametrize("fields,text", [
    ({"GEN_TEXT16": 42}, "Expected 'STRING' for key 'GEN_TEXT16' Received 'PRIMITIVE'"),
    ({"BID": "abc"}, "Expected 'PRIMITIVE' for key 'BID' Received 'STRING'"),
    ({"TRADE_DATE": 20240102}, "Expected 'STRING' for key 'TRADE_DATE' Received 'PRIMITIVE'"),
    ({"TRADE_DATE": "02/01/2024"}, "JSON RSSL Conversion Error. RSSL error code : -1"),
    ({"BID": True}, "JSON invalid primitive type."),
])
def test_wrong_value_type_gets_an_error(client, emu, fields, text):
    client.login()
    [error] = client.roundtrip(post(fields=fields))
    assert error["Type"] == "Error" and text in error["Text"]


def test_special_values_and_blanks_are_accepted(client, emu):
    client.login()
    [ack] = client.roundtrip(post(fields={"BID": "NaN", "ASK": None, "TRDTIM_1": "15:37:34.624"}))
    assert "NakCode" not in ack and ack["Type"] == "Ack"
    assert emu.item("NIPROV", "UMER.TST")["ASK"] is None


def test_dictionary_file_is_loaded(tmp_path):
    path = tmp_path / "RDMFieldDictionary"
    path.write_text(
        '!ACRONYM    DDE ACRONYM          FID  RIPPLES TO  FIELD TYPE     LENGTH  RWF TYPE   RWF LEN\n'
        'BID        "BID"                   22  BID_1      PRICE            17  REAL64            7\n'
        'MY_FIELD   "MY FIELD"            9001  NULL       ALPHANUMERIC     10  RMTES_STRING     10\n'
        'MY_ENUM    "MY ENUM"             9002  NULL       ENUMERATED    3 ( 2 )  ENUM          1\n')
    dictionary = Dictionary.load(str(path))
    assert dictionary.lookup("MY_ENUM").rwf_type == "ENUM"
    with Emulator(dictionary=dictionary) as emu:
        c = Client(emu.url)
        c.login()
        [ack] = c.roundtrip(post(fields={"MY_FIELD": "x", "9002": 3}))
        assert "NakCode" not in ack
        [error] = c.roundtrip(post(fields={"ASK": 1}))
        assert error["Type"] == "Error"
        c.close()


# ---------------------------------------------------------- malformed input

def test_invalid_json_gets_error_on_id_0(client):
    client.login()
    client.send('{"ID": 2, ')
    [error] = client.recv()
    assert error["ID"] == 0 and error["Type"] == "Error"
    assert error["Text"].startswith("JSON parser error")
    assert error["Debug"]["Message"] == '{"ID": 2, '


@pytest.mark.parametrize("msg,stream,text", [
    ({"Key": {"Name": "TRI.N"}}, 0, "JSON Missing required key 'ID'"),
    ({"ID": "2", "Key": {"Name": "TRI.N"}}, 0,
     "JSON Converter Token Type error: Expected 'PRIMITIVE' for key 'ID' Received 'STRING'"),
    ({"ID": 2, "Type": "ExtraInfo"}, 2, "JSON Unexpected Value. Received 'ExtraInfo' for key 'Type'"),
    ({"ID": 2, "Domain": "Nope", "Key": {"Name": "X"}}, 2,
     "JSON Unexpected Value. Received 'Nope' for key 'Domain'"),
])
def test_malformed_messages_get_documented_errors(client, msg, stream, text):
    client.login()
    [error] = client.roundtrip(msg)
    assert (error["ID"], error["Type"], error["Text"]) == (stream, "Error", text)
    assert set(error["Debug"]) == {"File", "Line", "Offset", "Message"}


def test_frame_is_processed_in_order(client, emu):
    client.login()
    replies = client.roundtrip([post(ric="A.TST", mtype="Refresh", post_id=1),
                                post(ric="A.TST", fields={"BID": 2.0}, post_id=2),
                                post(ric="B.TST", post_id=3)])
    assert [(m["AckID"], m.get("NakCode")) for m in replies] == \
        [(1, None), (2, None), (3, "SymbolUnknown")]


def test_oversized_message_disconnects(client):
    client.login()
    client.send(post(fields={"GEN_TEXT16": "x" * 70000}))
    with pytest.raises(ConnectionClosed) as info:
        client.recv()
    assert info.value.rcvd.code == 1009


# ---------------------------------------------------------------- requests

def test_request_returns_cached_fields_and_last_poster(client):
    client.login()
    info = {"Address": "10.0.0.1", "UserID": 5}
    client.roundtrip(post(fields={"BID": 9.0}, PostUserInfo=info))
    [refresh] = client.roundtrip({"ID": 3, "Key": {"Name": "UMER.TST", "Service": "NIPROV"}})
    assert refresh["Type"] == "Refresh" and refresh["Key"] == {"Service": "NIPROV", "Name": "UMER.TST"}
    assert refresh["State"] == {"Stream": "Open", "Data": "Ok", "Text": "All is well"}
    assert refresh["Fields"]["BID"] == 9.0 and refresh["PostUserInfo"] == info


def test_unknown_item_gets_not_found(client):
    client.login()
    [status] = client.roundtrip({"ID": 3, "Key": {"Name": "NONE.TST", "Service": "NIPROV"}})
    assert status["Type"] == "Status"
    assert status["State"]["Stream"] == "Closed" and status["State"]["Code"] == "NotFound"


def test_snapshot_is_non_streaming_and_gets_no_updates(client):
    client.login()
    [refresh] = client.roundtrip({"ID": 3, "Streaming": False,
                                  "Key": {"Name": "UMER.TST", "Service": "NIPROV"}})
    assert refresh["State"]["Stream"] == "NonStreaming"
    assert [m["Type"] for m in client.roundtrip(post())] == ["Ack"]


def test_close_and_login_close_stop_updates(client, emu):
    client.login()
    client.roundtrip([{"ID": 3, "Key": {"Name": "UMER.TST"}}, {"ID": 4, "Key": {"Name": "UMER.TST"}}])
    assert [m["ID"] for m in client.roundtrip(post())] == [3, 4, 1]
    client.send({"ID": 3, "Type": "Close"})
    assert [m["ID"] for m in client.roundtrip(post(post_id=2))] == [4, 1]
    client.send({"ID": 1, "Type": "Close", "Domain": "Login"})
    emu.wait_for(lambda m: m.get("Type") == "Close" and m.get("Domain") == "Login", TIMEOUT)
    client.login()
    assert [m["ID"] for m in client.roundtrip(post(post_id=3))] == [1]


def test_view_limits_fields(client):
    client.login()
    [refresh] = client.roundtrip({"ID": 3, "View": ["BID", "ASK"], "Key": {"Name": "UMER.TST"}})
    assert refresh["Fields"] == {"BID": 22.1, "ASK": 24.5}
    [by_fid] = client.roundtrip({"ID": 4, "View": [22, 25], "Key": {"Name": "UMER.TST"}})
    assert by_fid["Fields"] == {"BID": 22.1, "ASK": 24.5}


# ------------------------------------------------------------------- world

def test_default_world():
    world = World.default()
    assert [s.name for s in world.services] == ["NIPROV", "DIRECT_FEED"]
    assert world.items[("NIPROV", "MarketPrice", "UMER.TST")].fields == \
        {"BID": 22.1, "ASK": 24.5, "TRDPRC_1": 23.3, "GEN_TEXT16": "some text"}
    assert world.users is None


def test_world_file(tmp_path):
    path = tmp_path / "world.ini"
    path.write_text("[service CACHE]\nid = 10\n[service DOWN]\nid = 11\nup = no\n"
                    "[user alice]\npost = CACHE\n[user ops]\n"
                    "[item CACHE RATE.TST]\nBID = 1.5\nGEN_TEXT16 = \"hello\"\n"
                    "[login]\ndeny_app_ids = 256\nhost = ads1\n")
    world = World.load(str(path))
    assert world.service(10).name == "CACHE" and not world.service("DOWN").up
    assert world.users == {"alice": {"CACHE"}, "ops": None}
    assert world.items[("CACHE", "MarketPrice", "RATE.TST")] == Item({"BID": 1.5, "GEN_TEXT16": "hello"})
    with Emulator(world) as emu:
        c = Client(emu.url)
        assert c.login("alice", app_id="256")[0]["State"]["Code"] == "UserAccessToAppDenied"
        [refresh] = c.login("alice", app_id="1")
        assert refresh["State"]["Text"] == "Login accepted by host ads1."
        c.close()


def test_world_file_rejects_unknown_sections(tmp_path):
    path = tmp_path / "world.ini"
    path.write_text("[service A]\n[servce B]\n")
    with pytest.raises(ValueError, match="unknown section"):
        World.load(str(path))


# ----------------------------------------------------------- fault injection

def test_ack_delay_sends_the_ack_after_later_replies():
    with Emulator(faults=Faults(ack_delay_ms=300)) as emu:
        c = Client(emu.url)
        c.login()
        assert c.roundtrip(post()) == []              # the Pong came first
        [ack] = c.recv()
        assert ack["AckID"] == 1
        c.close()


def test_no_ack_ric_withholds_only_matching_acks():
    with Emulator(faults=Faults(no_ack_rics=["UMER.*"])) as emu:
        c = Client(emu.url)
        c.login()
        replies = c.roundtrip([post(fields={"BID": 3}), post(ric="X.TST", mtype="Refresh", post_id=2)])
        assert [m["AckID"] for m in replies] == [2]
        assert emu.item("NIPROV", "UMER.TST")["BID"] == 3   # applied, just not acked
        c.close()


def test_nak_ric_rule():
    faults = Faults(nak_rics=[parse_nak_rule("BAD*:NoResources:too busy")])
    with Emulator(faults=faults) as emu:
        c = Client(emu.url)
        c.login()
        [nak] = c.roundtrip(post(ric="BAD1", mtype="Refresh"))
        assert (nak["NakCode"], nak["Text"]) == ("NoResources", "too busy")
        c.close()
    with pytest.raises(ValueError):
        parse_nak_rule("X:Bogus:text")


def test_drop_after_posts_applies_then_aborts():
    with Emulator(faults=Faults(drop_after_posts=2)) as emu:
        c = Client(emu.url)
        c.login()
        c.send([post(fields={"BID": 1}), post(fields={"BID": 2}, post_id=2),
                post(fields={"BID": 3}, post_id=3)])
        [ack] = c.recv()
        assert ack["AckID"] == 1
        with pytest.raises(ConnectionClosed):
            c.recv()
        assert emu.item("NIPROV", "UMER.TST")["BID"] == 2   # the 2nd applied, the 3rd never read


def test_hang_after_login_neither_reads_nor_writes():
    with Emulator(faults=Faults(hang_after_login=True), ping_interval=0.1) as emu:
        c = Client(emu.url)
        assert c.login()[0]["Type"] == "Refresh"
        c.send({"Type": "Ping"})
        with pytest.raises(TimeoutError):
            c.recv(timeout=0.5)                 # no Pong, and no Ping of its own either
        c.close()


def test_login_recover_then_accepted_on_the_same_connection():
    with Emulator(faults=Faults(login_recover=2)) as emu:
        c = Client(emu.url)
        for _ in range(2):
            [status] = c.login()
            assert status["State"] == {"Stream": "ClosedRecover", "Data": "Suspect", "Code": "DacsDown",
                                       "Text": "A21: Connection to DACS down, users are not allowed to connect"}
        assert c.login()[0]["Type"] == "Refresh"
        c.close()


def test_close_login_after_posts():
    with Emulator(faults=Faults(close_login_after_posts=2)) as emu:
        c = Client(emu.url)
        c.login("bob")
        [ack] = c.roundtrip(post())
        [status] = c.roundtrip(post(fields={"BID": 5}, post_id=2))
        assert status["Type"] == "Status" and status["Domain"] == "Login"
        assert status["State"]["Stream"] == "Closed" and status["State"]["Code"] == "NotEntitled"
        assert emu.item("NIPROV", "UMER.TST")["BID"] == 5
        c.send(post(post_id=3))                     # logged out now: Error, then close
        assert c.recv()[0]["Text"] == "Login required before any other message."
        c.close()


# ---------------------------------------------------- harness & standalone

def test_server_failures_are_reraised_at_exit(monkeypatch):
    def broken(self, *args):
        raise RuntimeError("boom")
    monkeypatch.setattr(Session, "login", broken)
    emu = Emulator().start()
    c = Client(emu.url)
    c.send({"ID": 1, "Domain": "Login", "Key": {"Name": "a"}})
    with pytest.raises(ConnectionClosed):
        c.recv()
    with pytest.raises(EmulatorError, match="boom"):
        emu.stop()


def test_wait_for_and_milestones(client, emu):
    client.login()
    assert emu.logged_in.wait(TIMEOUT)
    client.send(post())
    assert emu.post_received.wait(TIMEOUT)
    msg = emu.wait_for(lambda m: m.get("Type") == "Post", TIMEOUT)
    assert msg["PostID"] == 1
    with pytest.raises(TimeoutError):
        emu.wait_for(lambda m: m.get("Type") == "Generic", 0.05)


def test_standalone_command(tmp_path):
    log_path = tmp_path / "frames.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "ads_emulator.py"), "--port", "0",
                             "--log", str(log_path), "--deny-user", "fred"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on ws://127.0.0.1:") and line.endswith("/WebSocket")
        c = Client(line.split()[-1])
        assert c.login("fred")[0]["State"]["Code"] == "UserUnknownToPermSys"
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.stdout.close()
    frames = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [f["dir"] for f in frames] == ["in", "out"]
    assert json.loads(frames[1]["frame"])[0]["State"]["Text"] == "fred, unknown to system."


def test_standalone_rejects_bad_options():
    proc = subprocess.run([sys.executable, str(ROOT / "ads_emulator.py"), "--port", "0",
                           "--nak-ric", "X:Nope:t"], capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert proc.returncode == 2 and "--nak-ric" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "ads_emulator.py"), "--port", "0",
                           "--tls-cert", TLS[0]], capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert proc.returncode == 2 and "--tls-cert and --tls-key go together" in proc.stderr


def test_standalone_serves_wss():
    proc = subprocess.Popen([sys.executable, str(ROOT / "ads_emulator.py"), "--port", "0",
                             "--tls-cert", TLS[0], "--tls-key", TLS[1]], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on wss://127.0.0.1:")
        context = ssl.create_default_context(cafile=TLS[0])
        with connect(line.split()[-1], subprotocols=["tr_json2"], ssl=context, open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol == "tr_json2"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.stdout.close()


# ------------------------------------------------------------ issue 13: the rest of the confirmed behaviour

def test_a_batch_request_gets_a_status_then_each_item_on_the_next_ids(client):
    client.login()
    replies = client.roundtrip({"ID": 5, "Key": {"Service": "NIPROV", "Name": ["UMER.TST", "NOPE.TST", "UMER.TST"]},
                                "View": ["BID"], "Streaming": False})
    assert replies[0] == {"ID": 5, "Type": "Status", "State": {
        "Stream": "Closed", "Data": "Ok", "Text": "Processed 3 total items from Batch Request. 3 Ok."}}
    assert [(m["ID"], m["Type"]) for m in replies[1:]] == [(6, "Refresh"), (7, "Status"), (8, "Refresh")]
    assert replies[1]["Fields"] == {"BID": 22.1} and replies[1]["State"]["Stream"] == "NonStreaming"
    assert replies[2]["State"]["Code"] == "NotFound"


def test_a_batch_close_closes_open_and_unknown_ids_and_answers_on_the_first(client, emu):
    client.login()
    client.roundtrip({"ID": 2, "Key": {"Service": "NIPROV", "Name": ["UMER.TST", "UMER.TST"]}})   # streams 3, 4
    replies = client.roundtrip({"ID": [3, 4, 99], "Type": "Close"})
    assert replies == [{"ID": 3, "Type": "Status", "State": {
        "Stream": "Closed", "Data": "Ok", "Text": "Processed 3 total stream ids from Batch Close Request. 3 Ok. "}}]
    poster = Client(emu.url)
    poster.login("poster")
    poster.roundtrip(post(fields={"BID": 2.0}))
    assert client.roundtrip({"Type": "Ping"}) == []             # no Update: both streams are closed
    poster.close()


def test_the_login_announces_batch_support(client):
    refresh = client.login()[0]
    assert refresh["Key"]["Elements"]["SupportBatchRequests"] == 7


def test_a_posted_update_type_reaches_the_watchers(client, emu):
    client.login()
    client.roundtrip({"ID": 2, "Key": {"Service": "NIPROV", "Name": "UMER.TST"}})
    poster = Client(emu.url)
    poster.login("poster")
    poster.roundtrip(post(fields={"BID": 2.0}, Message={"ID": 0, "Type": "Update", "UpdateType": "Trade",
                                                         "Domain": "MarketPrice", "Fields": {"BID": 2.0}}))
    poster.roundtrip(post(fields={"BID": 3.0}, post_id=2))      # no UpdateType: Unspecified
    updates = client.recv_until(lambda m: m.get("Fields") == {"BID": 3.0})
    assert [m["UpdateType"] for m in updates if m["Type"] == "Update"] == ["Trade", "Unspecified"]
    poster.close()


def test_a_token_login_is_accepted(emu):
    c = Client(emu.url)
    c.send({"ID": 1, "Domain": "Login", "Key": {"NameType": "AuthnToken", "Elements": {
        "ApplicationId": "256", "Position": "127.0.0.1", "AuthenticationToken": "eyJhbGciOi.token"}}})
    refresh = c.recv()[0]
    c.close()
    assert refresh["Type"] == "Refresh" and refresh["State"]["Stream"] == "Open"
    elements = refresh["Key"]["Elements"]
    assert (elements["AuthenticationErrorCode"], elements["AuthenticationErrorText"]) == (0, "Success")


def test_a_reissue_without_refresh_gets_no_refresh(client):
    client.login()
    request = {"ID": 2, "Key": {"Service": "NIPROV", "Name": "UMER.TST"}}
    assert client.roundtrip(request)[0]["Type"] == "Refresh"
    assert client.roundtrip({**request, "Refresh": False}) == []


def test_pings_come_every_ping_interval_of_silence():
    with Emulator(ping_interval=0.3, ping_timeout=30) as emu:
        c = Client(emu.url)
        c.login()
        started = time.monotonic()
        pings = 0
        while pings < 3:
            for msg in c.recv(timeout=TIMEOUT):
                if msg.get("Type") == "Ping":
                    pings += 1
                    c.send({"Type": "Pong"})
        elapsed = time.monotonic() - started
        c.close()
    assert elapsed < 0.9 + TIMEOUT / 2                 # about 0.9 s: not one per PingTimeout (90 s)


def test_fields_directly_on_a_post_and_a_numeric_message_type_are_accepted(client, emu):
    client.login()
    direct = {"ID": 1, "Type": "Post", "Ack": True, "PostID": 1, "Key": {"Service": "NIPROV", "Name": "UMER.TST"},
              "Fields": {"BID": 5.0}}
    numeric = post(post_id=2, fields={"BID": 6.0})
    numeric["Message"]["Type"] = 4                     # Update, as its RWF number
    replies = client.roundtrip([direct, numeric])
    assert [(m["Type"], m["AckID"], "NakCode" in m) for m in replies] == [("Ack", 1, False), ("Ack", 2, False)]
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 6.0


@pytest.mark.parametrize("bad,text", [
    ({"ID": 2, "Type": ["Request"], "Key": {"Name": "X"}},
     "JSON Converter Token Type error: Expected 'PRIMITIVE' for key 'Type' Received 'ARRAY'"),
    ({"ID": 2, "Domain": {"x": 1}, "Key": {"Name": "X"}},
     "JSON Converter Token Type error: Expected 'PRIMITIVE' for key 'Domain' Received 'OBJECT'"),
    ({"ID": 2, "Key": {"Name": {"x": 1}}},
     "JSON Converter Token Type error: Expected 'STRING' for key 'Name' Received 'OBJECT'"),
])
def test_malformed_messages_draw_the_converter_errors_not_a_crash(client, bad, text):
    client.login()
    replies = client.roundtrip(bad)
    assert [(m["Type"], m["Text"]) for m in replies] == [("Error", text)]
    assert client.roundtrip({"ID": 3, "Key": {"Service": "NIPROV", "Name": "UMER.TST"}})[0]["Type"] == "Refresh"


@pytest.mark.parametrize("login,text", [
    ({"ID": 1, "Domain": "Login", "Key": {"Name": ["a", "b"]}},
     "JSON Converter Token Type error: Expected 'STRING' for key 'Name' Received 'ARRAY'"),
    ({"ID": 1, "Domain": "Login", "Key": {"Name": "a", "Elements": [1]}},
     "JSON Converter Token Type error: Expected 'OBJECT' for key 'Elements' Received 'ARRAY'"),
])
def test_a_malformed_login_draws_its_error_then_the_close(emu, login, text):
    c = Client(emu.url)
    c.send(login)
    assert [(m["Type"], m["Text"]) for m in c.recv()] == [("Error", text)]
    with pytest.raises(ConnectionClosed) as closed:
        c.recv()
    assert closed.value.rcvd.code == 1008


def test_a_denied_login_reissue_ends_the_login_and_its_streams(emu):
    c = Client(emu.url)
    c.login("alice")
    c.roundtrip({"ID": 2, "Key": {"Service": "NIPROV", "Name": "UMER.TST"}})
    emu.server.world.deny_users.add("alice")
    replies = c.roundtrip({"ID": 1, "Domain": "Login", "Key": {"Name": "alice"}})
    assert replies[0]["State"]["Stream"] == "Closed"
    c.send([post()])
    assert [(m["Type"], m["Text"]) for m in c.recv()] == [("Error", "Login required before any other message.")]


def test_a_close_on_the_login_stream_id_closes_the_login(client):
    client.login()
    client.send({"ID": 1, "Type": "Close"})                     # no Domain: still the login stream
    client.send([post()])
    assert [(m["Type"], m["Text"]) for m in client.recv()] == [("Error", "Login required before any other message.")]


def test_escaped_text_is_stored_as_the_converter_reads_it(client, emu):
    """The converter drops a backslash and keeps the next character: \\u00e9 is stored u00e9."""
    client.login()
    client.send('[' + json.dumps(post(fields={"GEN_TEXT16": "caf"})).replace('"caf"', '"caf\\u00e9 \\"x\\""') + ']')
    client.roundtrip({"Type": "Ping"})
    assert emu.item("NIPROV", "UMER.TST")["GEN_TEXT16"] == 'cafu00e9 "x"'


def test_a_view_mixing_names_and_fids_is_an_error(client):
    client.login()
    replies = client.roundtrip({"ID": 2, "Key": {"Service": "NIPROV", "Name": "UMER.TST"}, "View": ["BID", 25]})
    assert [(m["Type"], m["Text"]) for m in replies] == \
        [("Error", "JSON Mixed Types in OMM Array: Received 'STRING' and 'PRIMITIVE' for key 'View'")]


def test_the_announced_max_msg_size_is_configurable():
    with Emulator(max_msg_size=5000) as emu:
        c = Client(emu.url)
        assert c.login()[0]["Elements"]["MaxMsgSize"] == 5000
        c.send("[" + ",".join([json.dumps(post())] * 30) + "]")      # about 7,000 bytes
        with pytest.raises(ConnectionClosed) as closed:
            c.recv()
        assert closed.value.rcvd.code == 1009


def test_the_smaller_points(client, emu):
    """No Code "None" in a State, no AckID for a post without a PostID, no Name for a request
    without one, a Domain on a non-MarketPrice Ack, and the converter's parser error text."""
    client.login()
    emu.server.world.services[0].up = False
    status = client.roundtrip({"ID": 2, "Key": {"Service": "NIPROV", "Name": "UMER.TST"}})[0]
    assert "Code" not in status["State"]
    emu.server.world.services[0].up = True
    unnumbered = post()
    del unnumbered["PostID"]
    assert client.roundtrip(unnumbered)[0] == {"ID": 1, "Type": "Ack", "Key": {"Service": "NIPROV", "Name": "UMER.TST"}}
    nameless = client.roundtrip({"ID": 3, "Key": {"Service": "NIPROV"}})[0]
    assert "Name" not in nameless["Key"]
    mbo = post(post_id=7, mtype="Refresh", Domain="MarketByOrder")
    mbo["Message"]["Domain"] = "MarketByOrder"
    assert client.roundtrip(mbo)[0]["Domain"] == "MarketByOrder"
    client.send('[{"ID": 4, "Key": ')
    assert client.recv()[0]["Text"] == "JSON parser error: -3"
    client.send('[{"ID": 4 "Key": {}}]')
    assert client.recv()[0]["Text"] == "JSON parser error: -2"
    with pytest.raises(ValueError):
        parse_nak_rule("X:None:")


def test_a_snapshot_keeps_the_posters_info_after_an_update_without_one(client, emu):
    """Section 11.9: the Refresh of an item carries the PostUserInfo of who posted it; an Update
    that names no poster does not erase it."""
    client.login()
    info = {"Address": "10.0.0.7", "UserID": 77}
    client.roundtrip(post(mtype="Refresh", fields={"BID": 1.0}, PostUserInfo=info))
    client.roundtrip(post(fields={"BID": 2.0}, post_id=2))
    [refresh] = client.roundtrip({"ID": 2, "Key": {"Service": "NIPROV", "Name": "UMER.TST"}, "Streaming": False})
    assert refresh["PostUserInfo"] == info and refresh["Fields"]["BID"] == 2.0


def test_permessage_deflate_is_negotiated_when_offered(emu):
    with connect(emu.url, subprotocols=["tr_json2"], open_timeout=TIMEOUT, compression="deflate") as ws:
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        ws.send(json.dumps({"ID": 1, "Domain": "Login", "Key": {"Name": "alice"}}))
        assert json.loads(ws.recv(timeout=TIMEOUT))[0]["Type"] == "Refresh"
