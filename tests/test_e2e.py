"""The real CLI, as a subprocess, against the emulator over a real loopback socket.

Every exit code of the table is reached here. Servers that misbehave on
purpose (not JSON, never answering, not WebSocket) are small test servers
defined below; everything else is the emulator.
"""
from __future__ import annotations

import json
import os
import py_compile
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from ads_emulator import Emulator, Faults, World
from conftest import ROOT, TIMEOUT, TLS, serve_in_thread

CONTRIBUTE = str(ROOT / "contribute.py")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CONTRIBUTE_")}


def args_for(port: int, *args: str) -> list[str]:
    return [sys.executable, CONTRIBUTE, "--config", os.devnull, "--host", "127.0.0.1",
            "--port", str(port), "--user", "tester", *args]


def contribute(port: int, *args: str, timeout: float = TIMEOUT * 4) -> subprocess.CompletedProcess:
    return subprocess.run(args_for(port, *args), capture_output=True, text=True, timeout=timeout,
                          env=ENV, stdin=subprocess.DEVNULL)


def post(emu: Emulator, *args: str, ric: str = "UMER.TST", fields=("BID=22.1",), opts=()):
    """`contribute.py [opts] post --service NIPROV --ric RIC --field ... [args]`."""
    field_args = [a for f in fields for a in ("--field", f)]
    return contribute(emu.port, *opts, "post", "--service", "NIPROV", "--ric", ric, *field_args, *args)


def received(emu: Emulator, mtype: str) -> list[dict]:
    return [m for m in emu.received() if isinstance(m, dict) and m.get("Type", "Request") == mtype]


def logins(emu: Emulator) -> int:
    """How many Login Requests the emulator received."""
    return sum(1 for m in received(emu, "Request") if m.get("Domain") == "Login")


# ---------------------------------------------------------------- exit 0

def test_post_is_acked_exit_0(emu):
    result = post(emu)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ACK NIPROV UMER.TST post 1\n"
    assert emu.item("NIPROV", "UMER.TST")["BID"] == 22.1


def test_post_sends_login_post_with_post_user_info_then_login_close(emu):
    assert post(emu).returncode == 0
    login, the_post, close = [m for m in emu.received() if m.get("Type") != "Pong"]
    assert login["ID"] == 1 and login["Domain"] == "Login" and login["Key"]["Name"] == "tester"
    assert login["Key"]["Elements"]["ApplicationId"] == "256"
    assert login["Key"]["Elements"]["Position"].startswith("127.0.0.1/")
    assert the_post["Type"] == "Post" and the_post["ID"] == 1 and the_post["Ack"] is True
    assert the_post["PostID"] == 1 and the_post["Key"] == {"Service": "NIPROV", "Name": "UMER.TST"}
    assert the_post["PostUserInfo"]["Address"] == "127.0.0.1"
    assert isinstance(the_post["PostUserInfo"]["UserID"], int)
    assert the_post["Message"]["Type"] == "Update" and the_post["Message"]["Fields"] == {"BID": 22.1}
    assert close == {"ID": 1, "Type": "Close", "Domain": "Login"}


def test_post_user_info_options(emu):
    assert post(emu, "--post-user-address", "10.1.2.3", "--post-user-id", "77").returncode == 0
    assert received(emu, "Post")[0]["PostUserInfo"] == {"Address": "10.1.2.3", "UserID": 77}
    assert post(emu, "--no-post-user-info").returncode == 0
    assert "PostUserInfo" not in received(emu, "Post")[1]


def test_refresh_creates_an_item(emu):
    result = post(emu, "--refresh", ric="NEW.TST", fields=("BID=1.5", "GEN_TEXT16:=\"0042\"", "ASK="))
    assert result.returncode == 0, result.stderr
    assert emu.item("NIPROV", "NEW.TST") == {"BID": 1.5, "GEN_TEXT16": "0042", "ASK": None}
    message = received(emu, "Post")[0]["Message"]
    assert message["Type"] == "Refresh" and message["Solicited"] is False
    assert message["State"] == {"Stream": "Open", "Data": "Ok"}


def test_json_output(emu):
    result = post(emu, opts=["--json"])
    assert json.loads(result.stdout) == {"status": "ack", "service": "NIPROV", "ric": "UMER.TST",
                                         "post_id": 1}


def test_quiet_prints_nothing_on_success(emu):
    result = post(emu, opts=["-q"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_pong_for_a_ping_packed_with_the_login_refresh():
    with Emulator(faults=Faults(ping_with_login=True)) as emu:
        assert post(emu).returncode == 0
        assert {"Type": "Pong"} in emu.received()


def test_pong_for_a_ping_while_waiting_for_the_ack():
    with Emulator(faults=Faults(ack_delay_ms=600), ping_interval=0.1) as emu:
        result = post(emu)
        assert result.returncode == 0, result.stderr
        types = [m.get("Type", "Request") for m in emu.received()]
        assert types.index("Pong") > types.index("Post")


def test_verbose_logs_every_frame_on_stderr(emu):
    result = post(emu, opts=["-vv"])
    assert result.returncode == 0
    assert "contribute: > {\"ID\":1,\"Domain\":\"Login\"" in result.stderr
    assert "contribute: < [{\"ID\":1,\"Type\":\"Refresh\"" in result.stderr


def test_login_command_accepted(emu):
    result = contribute(emu.port, "login")
    assert result.returncode == 0
    assert result.stdout.startswith('LOGIN accepted "Login accepted by host ads-emulator."')
    assert "SupportOMMPost=1 PingTimeout=30 MaxMsgSize=61430 ApplicationName=ADS" in result.stdout
    assert received(emu, "Close")


def test_login_command_json(emu):
    result = contribute(emu.port, "--json", "login")
    data = json.loads(result.stdout)
    assert data["status"] == "accepted" and data["support_omm_post"] == 1 and data["ping_timeout"] == 30


def test_run_posts_a_refresh_then_updates(emu):
    result = contribute(emu.port, "run", "--service", "NIPROV", "--ric", "RUN.TST", "--field", "BID=10.0",
                        "--field", "BIDSIZE=5", "--interval", "0.05", "--count", "3", "--walk")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"ACK NIPROV RUN.TST post {i}" for i in range(1, 5)]
    assert [p["Message"]["Type"] for p in received(emu, "Post")] == ["Refresh"] + ["Update"] * 3
    assert "4 posts: 4 acknowledged" in result.stderr
    assert received(emu, "Close")


def test_run_without_refresh(emu):
    result = contribute(emu.port, "run", "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=1",
                        "--interval", "0.01", "--count", "2", "--no-refresh")
    assert result.returncode == 0
    assert [p["Message"]["Type"] for p in received(emu, "Post")] == ["Update", "Update"]


def test_sim_runs_the_readme_command_in_process():
    result = subprocess.run([sys.executable, CONTRIBUTE, "--sim", "post", "--ric", "UMER.TST",
                             "--field", "BID=22.1"], capture_output=True, text=True,
                            timeout=TIMEOUT * 4, env=ENV, cwd=str(ROOT), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ACK NIPROV UMER.TST post 1\n"
    assert "built-in ADS emulator" in result.stderr and "not a real ADS" in result.stderr


def test_python_m_runs_the_module_from_its_cached_bytecode(tmp_path):
    """README's form for one-shot runs, `python -m contribute` from the project's directory: the
    same command and output, run from the bytecode Python cached on an earlier run (compiled
    here into a copy's __pycache__, as Python does where it may write) instead of compiling
    the module again; -v makes Python say which file its code came from."""
    for name in ("contribute.py", "ads_emulator.py", "config.ini"):
        shutil.copy(ROOT / name, tmp_path / name)
    cached = py_compile.compile(str(tmp_path / "contribute.py"), doraise=True)
    result = subprocess.run([sys.executable, "-v", "-m", "contribute", "--sim", "post", "--ric", "UMER.TST",
                             "--field", "BID=22.1"], capture_output=True, text=True,
                            timeout=TIMEOUT * 4, env=ENV, cwd=str(tmp_path), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "ACK NIPROV UMER.TST post 1\n"
    assert f"code object from '{cached}'" in result.stderr


# ---------------------------------------------------------------- exit 1

def test_server_sending_non_json_is_a_protocol_violation_exit_1():
    async def handler(ws):
        await ws.recv()
        await ws.send("this is not json")
        await ws.wait_closed()
    with serve_in_thread(handler) as port:
        result = contribute(port, "login")
    assert result.returncode == 1
    assert "not JSON" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- exit 2

def test_usage_error_exit_2(emu):
    result = contribute(emu.port, "post", "--ric", "X", "--field", "nonsense")
    assert result.returncode == 2 and "'nonsense'" in result.stderr
    assert not emu.logged_in.is_set()


# ---------------------------------------------------------------- exit 3

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_exit_3():
    result = contribute(free_port(), "login")
    assert result.returncode == 3
    assert "nothing is listening at 127.0.0.1:" in result.stderr and "hint:" in result.stderr


def test_unresolvable_host_exit_3():
    result = subprocess.run([sys.executable, CONTRIBUTE, "--config", os.devnull, "--host",
                             "no-such-host.invalid", "login"], capture_output=True, text=True,
                            timeout=TIMEOUT * 4, env=ENV)
    assert result.returncode == 3 and "cannot resolve" in result.stderr


def test_server_that_is_not_websocket_exit_3():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        result = contribute(server.getsockname()[1], "login")
    finally:
        thread.join(TIMEOUT)
        server.close()
    assert result.returncode == 3
    assert "refused the WebSocket upgrade" in result.stderr and "HTTP 200" in result.stderr


def test_refused_subprotocol_exit_3():
    async def handler(ws):
        await ws.wait_closed()
    with serve_in_thread(handler, subprotocols=("some.other.protocol",)) as port:
        result = contribute(port, "login")
    assert result.returncode == 3 and "HTTP 400" in result.stderr


def test_connection_lost_while_waiting_for_the_ack_exit_3():
    with Emulator(faults=Faults(drop_after_posts=1)) as emu:
        result = post(emu)
    assert result.returncode == 3
    assert result.stdout.startswith("LOST NIPROV UMER.TST post 1")
    assert "connection lost" in result.stderr


# ---------------------------------------------------------------- exit 4

def test_login_denied_exit_4():
    world = World.default()
    world.deny_users.add("tester")
    with Emulator(world) as emu:
        result = post(emu)
        assert not received(emu, "Post")
    assert result.returncode == 4
    assert 'Closed/Suspect UserUnknownToPermSys "tester, unknown to system."' in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr


def test_login_command_denied_exit_4():
    world = World.default()
    world.deny_app_ids.add("256")
    with Emulator(world) as emu:
        result = contribute(emu.port, "login")
    assert result.returncode == 4
    assert result.stdout.startswith("LOGIN denied Closed/Suspect UserAccessToAppDenied")


# ---------------------------------------------------------------- exit 5

def test_nak_exit_5_with_the_ads_words_and_a_hint(emu):
    result = post(emu, ric="DAVE.TST")
    assert result.returncode == 5
    assert result.stdout == 'NAK NIPROV DAVE.TST post 1 SymbolUnknown "F44: Unable to find item on post update."\n'
    assert "--refresh" in result.stderr


def test_nak_json(emu):
    result = post(emu, ric="DAVE.TST", opts=["--json"])
    assert json.loads(result.stdout) == {"status": "nak", "service": "NIPROV", "ric": "DAVE.TST",
                                         "post_id": 1, "nak_code": "SymbolUnknown",
                                         "text": "F44: Unable to find item on post update."}


def test_access_denied_exit_5():
    world = World.default()
    world.users = {"tester": {"DIRECT_FEED"}}
    with Emulator(world) as emu:
        result = post(emu)
    assert result.returncode == 5 and "AccessDenied" in result.stdout and "post permission" in result.stderr


def test_unknown_field_error_exit_5(emu):
    result = post(emu, fields=("BID_CUSTOM=1",))
    assert result.returncode == 5
    assert result.stdout == ("ERROR NIPROV UMER.TST post 1 "
                             "\"JSON Unexpected FID. Received 'BID_CUSTOM' for key 'Fields'\"\n")
    assert "field dictionary" in result.stderr


# ---------------------------------------------------------------- exit 6

def test_ack_timeout_exit_6():
    with Emulator(faults=Faults(no_ack_rics=["UMER.TST"])) as emu:
        result = post(emu, "--ack-timeout", "0.3")
        assert received(emu, "Close")            # a clean logout after the timeout
    assert result.returncode == 6
    assert result.stdout.startswith("TIMEOUT NIPROV UMER.TST post 1")


def test_login_response_timeout_exit_6():
    async def handler(ws):                        # reads the Login, never answers
        await ws.recv()
        await ws.wait_closed()
    with serve_in_thread(handler) as port:
        result = contribute(port, "--connect-timeout", "0.5", "login")
    assert result.returncode == 6 and "no login response" in result.stderr


# -------------------------------------------------------------- exit 130

def start_run(emu: Emulator, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(args_for(emu.port, "run", "--service", "NIPROV", "--ric", "UMER.TST",
                                     "--field", "BID=1.0", "--interval", "0.05", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_with_every_post_acked_exits_0(emu, sig):
    proc = start_run(emu, "--no-refresh")
    try:
        emu.wait_for(lambda m: m.get("PostID") == 3, TIMEOUT)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=TIMEOUT * 4)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "(interrupted)" in err and "Traceback" not in err
    assert emu.wait_for(lambda m: m.get("Type") == "Close" and m.get("Domain") == "Login", TIMEOUT)
    acked = out.splitlines()
    assert len(acked) >= 3 and all(line.startswith("ACK ") for line in acked)


def test_interrupted_run_with_an_unacked_post_exits_130():
    with Emulator(faults=Faults(no_ack_rics=["UMER.TST"])) as emu:
        proc = start_run(emu, "--no-refresh", "--ack-timeout", "0.5")
        try:
            emu.wait_for(lambda m: m.get("Type") == "Post", TIMEOUT)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=TIMEOUT * 4)
        finally:
            proc.kill()
        assert emu.wait_for(lambda m: m.get("Type") == "Close", TIMEOUT)
    assert proc.returncode == 130
    assert "TIMEOUT NIPROV UMER.TST" in out and "(interrupted)" in err


# ---------------------------------------------------------------- TLS

def test_post_over_tls():
    with Emulator(tls=TLS) as emu:
        result = subprocess.run(args_for(emu.port, "--tls", "post", "--service", "NIPROV", "--ric", "UMER.TST",
                                         "--field", "BID=7"),
                                capture_output=True, text=True, timeout=TIMEOUT * 4,
                                env={**ENV, "SSL_CERT_FILE": TLS[0]})
        assert result.returncode == 0, result.stderr
        assert result.stdout == "ACK NIPROV UMER.TST post 1\n"
        assert emu.item("NIPROV", "UMER.TST")["BID"] == 7


def test_post_over_tls_to_an_untrusted_certificate_exit_3():
    with Emulator(tls=TLS) as emu:
        result = contribute(emu.port, "--tls", "post", "--service", "NIPROV", "--ric", "UMER.TST",
                            "--field", "BID=7")
    assert result.returncode == 3
    assert "TLS with 127.0.0.1" in result.stderr and "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "SSL_CERT_FILE" in result.stderr
