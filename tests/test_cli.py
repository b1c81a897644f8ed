"""The click layer with CliRunner: options, precedence, usage errors, help.

Precedence is observed where it matters: in the Login the emulator receives
over a real socket.
"""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from ads_emulator import Emulator, Faults
from conftest import TIMEOUT
from contribute import cli

ENV_CLEAR = {k: None for k in os.environ if k.startswith("CONTRIBUTE_")}


def invoke(args, env=None):
    return CliRunner().invoke(cli, args, env={**ENV_CLEAR, **(env or {})}, catch_exceptions=False)


def login_seen(emu):
    return emu.wait_for(lambda m: m.get("Domain") == "Login" and m.get("Type", "Request") == "Request",
                        TIMEOUT)


@pytest.fixture
def config(tmp_path):
    def write(text):
        path = tmp_path / "config.ini"
        path.write_text("[contribute]\n" + text)
        return str(path)
    return write


def test_precedence_flag_over_env_over_file_over_default(emu, config):
    path = config(f"host = 127.0.0.1\nport = {emu.port}\nuser = from_file\napp_id = 111\n")
    result = invoke(["--config", path, "login"])
    assert result.exit_code == 0, result.output
    elements = login_seen(emu)["Key"]["Elements"]
    assert login_seen(emu)["Key"]["Name"] == "from_file" and elements["ApplicationId"] == "111"

    with Emulator() as emu2:
        path = config(f"host = 127.0.0.1\nport = {emu2.port}\nuser = from_file\n")
        result = invoke(["--config", path, "login"], env={"CONTRIBUTE_USER": "from_env"})
        assert result.exit_code == 0
        login = login_seen(emu2)
        assert login["Key"]["Name"] == "from_env"
        assert login["Key"]["Elements"]["ApplicationId"] == "256"      # built-in default

    with Emulator() as emu3:
        path = config(f"host = 127.0.0.1\nport = {emu3.port}\nuser = from_file\n")
        result = invoke(["--config", path, "--user", "from_flag", "--position", "1.2.3.4/h", "login"],
                        env={"CONTRIBUTE_USER": "from_env"})
        assert result.exit_code == 0
        login = login_seen(emu3)
        assert login["Key"]["Name"] == "from_flag"
        assert login["Key"]["Elements"]["Position"] == "1.2.3.4/h"


def test_config_file_from_environment_and_command_keys(emu, config):
    path = config(f"host = 127.0.0.1\nport = {emu.port}\nservice = DIRECT_FEED\n")
    result = invoke(["post", "--ric", "NEW.TST", "--field", "BID=1", "--refresh"],
                    env={"CONTRIBUTE_CONFIG": path})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ACK DIRECT_FEED NEW.TST post 1")
    assert emu.item("DIRECT_FEED", "NEW.TST") == {"BID": 1}


def test_service_from_environment_beats_the_file(emu, config):
    path = config(f"host = 127.0.0.1\nport = {emu.port}\nservice = DIRECT_FEED\n")
    result = invoke(["--config", path, "post", "--ric", "UMER.TST", "--field", "BID=1"],
                    env={"CONTRIBUTE_SERVICE": "NIPROV"})
    assert result.exit_code == 0 and "ACK NIPROV UMER.TST" in result.output


def test_unknown_config_key_is_a_usage_error(config):
    path = config("colour = blue\n")
    result = invoke(["--config", path, "login"])
    assert result.exit_code == 2
    assert "unknown key 'colour'" in result.output and path in result.output


def test_missing_config_file_is_a_usage_error():
    result = invoke(["--config", "/nonexistent/c.ini", "login"])
    assert result.exit_code == 2 and "/nonexistent/c.ini" in result.output


def test_no_service_is_a_usage_error_naming_the_setting():
    result = invoke(["--config", os.devnull, "--host", "127.0.0.1", "post", "--ric", "X", "--field", "BID=1"])
    assert result.exit_code == 2
    assert "--service" in result.output and "CONTRIBUTE_SERVICE" in result.output


def test_no_host_is_a_usage_error():
    result = invoke(["--config", os.devnull, "login"])
    assert result.exit_code == 2 and "--host" in result.output and "--sim" in result.output


@pytest.mark.parametrize("field", ["BID", "B D=1", "X:={"])
def test_malformed_field_is_a_usage_error_naming_it(field):
    result = invoke(["--config", os.devnull, "--host", "h", "post", "--ric", "X", "--service", "S",
                     "--field", field])
    assert result.exit_code == 2 and repr(field) in result.output


def test_field_is_required():
    result = invoke(["--config", os.devnull, "--host", "h", "post", "--ric", "X", "--service", "S"])
    assert result.exit_code == 2 and "--field" in result.output


def test_help_lists_exit_codes_and_commands():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for word in ("post", "run", "login", "get", "watch", "check", "130", "login denied", "--sim"):
        assert word in result.output


def test_h_and_help_show_each_commands_help_before_anything_else_is_checked():
    for args in (["-h"], ["post", "-h"], ["post", "--ric", "X", "--help"], ["check", "-h"], ["watch", "--help"]):
        result = invoke(["--config", os.devnull, *args])
        assert result.exit_code == 0, (args, result.output)
        assert result.output.startswith("Usage: ") and "-h, --help" in result.output, args


def test_config_keys_reach_get_and_watch(config):
    with Emulator(faults=Faults(hang_after_login=True)) as emu:
        path = config(f"host = 127.0.0.1\nport = {emu.port}\nservice = DIRECT_FEED\ntimeout = 0.2\n")
        result = invoke(["--config", path, "get", "--ric", "UMER.TST"])
        assert result.exit_code == 6
        assert "no reply to the request for DIRECT_FEED UMER.TST within 0.2s" in result.output
        result = invoke(["--config", path, "watch", "--ric", "UMER.TST"])
        assert result.exit_code == 6 and 'TIMEOUT DIRECT_FEED UMER.TST "no reply within 0.2s"' in result.output


def test_bad_dictionary_is_a_usage_error(emu, tmp_path):
    bad = tmp_path / "dict"
    bad.write_text("not a dictionary line\n")
    for path in (str(bad), str(tmp_path / "missing")):
        result = invoke(["--config", os.devnull, "--host", f"127.0.0.1:{emu.port}", "--dictionary", path,
                         "get", "--service", "NIPROV", "--ric", "UMER.TST"])
        assert result.exit_code == 2 and "--dictionary" in result.output and path in result.output
