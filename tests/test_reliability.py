"""Issue 4: surviving disconnects, failover between hosts, losing no post.

The real CLI runs as a subprocess against emulators on loopback; faults come
from the emulator's fault injection or from stopping and starting emulators.
"""
from __future__ import annotations

import io
import json
import signal
import subprocess
import time

from ads_emulator import Emulator, Faults
from conftest import TIMEOUT
from contribute import PostSpec, Reporter, Session, Settings
from test_e2e import ENV, args_for, contribute, free_port

FAST = ["--reconnect-min", "0.05", "--reconnect-max", "0.2"]


def run_args(*extra: str) -> list[str]:
    return ["run", "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=10.0", *extra]


def hosts(*ports: int) -> str:
    return ",".join(f"127.0.0.1:{p}" for p in ports)


def start(host: str, *args: str) -> subprocess.Popen:
    cmd = args_for(15000, *FAST, *args)      # the port is a placeholder: host entries carry theirs
    cmd[cmd.index("--host") + 1] = host
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def run_cli(host: str, *args: str) -> subprocess.CompletedProcess:
    cmd = args_for(15000, *args)             # the port is a placeholder: host entries carry theirs
    cmd[cmd.index("--host") + 1] = host
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 4, env=ENV,
                          stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=TIMEOUT * 4)
    finally:
        proc.kill()


def posted(emu: Emulator) -> list[dict]:
    return [m for m in emu.received() if isinstance(m, dict) and m.get("Type") == "Post"]


def test_every_update_is_acked_through_repeated_drops():
    with Emulator(faults=Faults(drop_after_posts=300)) as emu:
        result = contribute(emu.port, *FAST, "--json", *run_args("--no-refresh", "--interval", "0.001",
                                                                "--count", "2000", "--walk"),
                            timeout=TIMEOUT * 12)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        outcomes = [line for line in lines if "status" in line]
        assert sorted(o["post_id"] for o in outcomes) == list(range(1, 2001))
        assert {o["status"] for o in outcomes} == {"ack"}
        reconnects = [line for line in lines if line.get("event") == "reconnected"]
        assert reconnects and sum(r["resent"] for r in reconnects) >= 1
        logins = [m for m in emu.received() if m.get("Domain") == "Login" and m.get("Type", "Request") == "Request"]
        assert len(logins) >= 7                       # a new login after each of the >= 6 drops
        last = max(posted(emu), key=lambda m: m["PostID"])
        assert last["PostID"] == 2000
        assert emu.item("NIPROV", "UMER.TST")["BID"] == last["Message"]["Fields"]["BID"]
        ids = [m["PostID"] for m in posted(emu)]
        assert len(ids) > 2000                          # some were posted twice: at-least-once
        assert "(interrupted)" not in result.stderr and "resent)" in result.stderr


def test_failover_to_the_second_host_and_back_to_the_first():
    primary_port = free_port()                        # nothing listening there yet
    with Emulator() as secondary:
        proc = start(hosts(primary_port, secondary.port), *run_args("--interval", "0.02"))
        try:
            secondary.wait_for(lambda m: m.get("PostID") == 3, TIMEOUT)
            with Emulator(port=primary_port) as primary:
                secondary.stop()                      # the secondary goes away: back to the primary
                primary.wait_for(lambda m: m.get("Type") == "Post", TIMEOUT * 2)
                out, err = stop(proc)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"reconnected to 127.0.0.1:{primary_port}" in err
    acks = out.splitlines()
    assert len(acks) >= 4 and all(line.startswith("ACK ") for line in acks)


def test_a_hung_ads_is_detected_within_ping_timeout_and_left():
    """Detected by the clock, not only by the message: a hung ADS announcing PingTimeout 1 is
    left within a few seconds (the 30 s of a default PingTimeout would fail this)."""
    with Emulator(faults=Faults(hang_after_login=True), ping_timeout=1) as hung, Emulator() as good:
        started = time.monotonic()
        proc = start(hosts(hung.port, good.port), *run_args("--interval", "0.05", "--count", "3"))
        try:
            out, err = proc.communicate(timeout=TIMEOUT * 4)
        finally:
            proc.kill()
        elapsed = time.monotonic() - started
        assert hung.logged_in.is_set()
    assert proc.returncode == 0, err
    assert "for 1s (PingTimeout)" in err and f"reconnected to 127.0.0.1:{good.port}" in err
    assert elapsed < 1 + TIMEOUT                       # PingTimeout, a reconnect, three posts
    assert out.splitlines() == [f"ACK NIPROV UMER.TST post {i}" for i in range(1, 5)]


def test_run_carries_on_when_the_ads_restarts_on_the_same_port():
    first = Emulator().start()
    port = first.port
    proc = start(hosts(port), *run_args("--interval", "0.02"))
    try:
        first.wait_for(lambda m: m.get("PostID") == 5, TIMEOUT)
        first.stop()
        with Emulator(port=port) as second:
            second.wait_for(lambda m: m.get("Type") == "Post", TIMEOUT * 2)
            out, err = stop(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    acks = out.splitlines()
    assert "reconnected" in err and len(acks) >= 6 and all(line.startswith("ACK ") for line in acks)


def test_withheld_acks_time_out_exit_6():
    with Emulator(faults=Faults(no_ack_rics=["UMER.TST"])) as emu:
        result = contribute(emu.port, *run_args("--no-refresh", "--interval", "0.01", "--count", "2",
                                                "--ack-timeout", "0.3"))
    assert result.returncode == 6
    assert result.stdout.splitlines() == [
        'TIMEOUT NIPROV UMER.TST post 1 "no ack within the ack timeout"',
        'TIMEOUT NIPROV UMER.TST post 2 "no ack within the ack timeout"']


def test_login_closed_recover_is_retried_then_accepted():
    with Emulator(faults=Faults(login_recover=2)) as emu:
        result = contribute(emu.port, *FAST, "post", "--service", "NIPROV", "--ric", "UMER.TST",
                            "--field", "BID=1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("DacsDown") == 2 and "logging in again" in result.stderr
    assert result.stdout == "ACK NIPROV UMER.TST post 1\n"


def test_login_closed_mid_session_exits_4():
    with Emulator(faults=Faults(close_login_after_posts=3)) as emu:
        result = contribute(emu.port, *run_args("--interval", "0.01", "--count", "10"))
    assert result.returncode == 4
    assert 'Closed/Suspect NotEntitled "tester, access revoked."' in result.stderr
    assert result.stdout.splitlines()[:2] == ["ACK NIPROV UMER.TST post 1", "ACK NIPROV UMER.TST post 2"]
    assert result.stdout.splitlines()[2].startswith("LOST NIPROV UMER.TST post 3")


def test_no_resend_reports_in_flight_posts_as_lost():
    with Emulator(faults=Faults(drop_after_posts=2)) as emu:
        result = contribute(emu.port, *FAST, *run_args("--no-refresh", "--interval", "0.01",
                                                       "--count", "4", "--no-resend"))
        ids = [m["PostID"] for m in posted(emu)]
    assert len(ids) == len(set(ids))                  # nothing was posted a second time
    assert result.returncode == 3
    outcomes = {int(line.split()[4]): line.split()[0] for line in result.stdout.splitlines()}
    assert sorted(outcomes) == [1, 2, 3, 4]           # every post has exactly one outcome
    assert outcomes[1] == "ACK" and outcomes[2] == "LOST"
    assert set(outcomes.values()) <= {"ACK", "LOST"}
    assert "connection lost: connection lost" not in result.stdout


def test_post_fails_over_to_the_next_host():
    with Emulator() as emu:
        result = run_cli(hosts(free_port(), emu.port), "post", "--service", "NIPROV",
                         "--ric", "UMER.TST", "--field", "BID=1")
    assert result.returncode == 0 and result.stdout == "ACK NIPROV UMER.TST post 1\n"


def test_post_names_every_host_when_all_fail():
    dead = [free_port(), free_port()]
    result = run_cli(hosts(*dead), *FAST, "--retries", "1", "login")
    assert result.returncode == 3
    for port in dead:
        assert result.stderr.count(f"127.0.0.1:{port} (nothing is listening") == 2   # two rounds


def test_bad_host_list_is_a_usage_error():
    result = contribute(15000, "--host", "127.0.0.1:99999", "login")
    assert result.returncode == 2 and "'127.0.0.1:99999'" in result.stderr


def test_window_holds_posting_until_a_slot_frees():
    with Emulator(faults=Faults(no_ack_rics=["UMER.TST"])) as emu:
        out = io.StringIO()
        settings = Settings(f"127.0.0.1:{emu.port}", user="tester")
        spec = PostSpec("NIPROV", "UMER.TST", {"BID": 1.0}, ack_timeout=0.2)
        with Session(settings, Reporter(out, io.StringIO()), spec=spec, window=2) as session:
            session.connect()
            for _ in range(3):
                while session.window_full():                    # the third waits for a free slot
                    session.wait(None)
                session.post("NIPROV", "UMER.TST", spec.fields, refresh=False)
                session.flush()
                assert len(session.ledger.pending) <= 2
            assert session.ledger.counts["timeout"] >= 1        # one of the first two timed out first
            session.drain()
    assert out.getvalue().count("TIMEOUT") == 3


def test_acks_withheld_for_some_rics_only_those_time_out():
    with Emulator(faults=Faults(no_ack_rics=["SILENT.*"])) as emu:
        out = io.StringIO()
        settings = Settings(f"127.0.0.1:{emu.port}", user="tester")
        spec = PostSpec("NIPROV", "", {}, ack_timeout=0.3)
        with Session(settings, Reporter(out, io.StringIO()), spec=spec) as session:
            session.connect()
            for ric in ("SILENT.A", "LOUD.A", "SILENT.B", "LOUD.B"):
                session.post("NIPROV", ric, {"BID": 1.0}, refresh=True)
            session.flush()
            session.drain()
        assert session.ledger.counts == {"ack": 2, "timeout": 2}
        assert session.ledger.exit_code() == 6
    lines = sorted(out.getvalue().splitlines())
    assert [line.split()[:3] for line in lines] == [
        ["ACK", "NIPROV", "LOUD.A"], ["ACK", "NIPROV", "LOUD.B"],
        ["TIMEOUT", "NIPROV", "SILENT.A"], ["TIMEOUT", "NIPROV", "SILENT.B"]]
