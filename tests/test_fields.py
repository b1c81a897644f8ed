"""Issue 11: the value posted is the value stored. Every value is typed by the field dictionary
(tests/dictionary: an RDMFieldDictionary and an enumtype.def of our own making) before anything
is sent, through post, run and post --file (CSV and JSON Lines); the emulator loads the same
files and converts as the ADS's converter does. Without a dictionary, the two classic failures
end with a hint that says what to do.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from ads_emulator import Dictionary, Emulator
from conftest import ROOT, TIMEOUT
from contribute import (Digits, FieldTypes, UsageProblem, encode, load_dictionary, parse_field)
from test_e2e import ENV, args_for, contribute

DICT = str(ROOT / "tests" / "dictionary" / "RDMFieldDictionary")
ENUMS = str(ROOT / "tests" / "dictionary" / "enumtype.def")


@pytest.fixture
def emu():
    """The emulator with the test dictionary and its enum tables (found beside it)."""
    with Emulator(dictionary=Dictionary.from_files(DICT)) as emulator:
        yield emulator


def typed(port: int, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args_for(port, "--dictionary", DICT, *args), capture_output=True, text=True,
                          timeout=TIMEOUT * 4, env=ENV, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def connections(emu: Emulator) -> int:
    return len(emu.received())


# What a user types, and what the item holds after it is posted.
GOOD = [
    ("GEN_TEXT16=12345", "GEN_TEXT16", "12345"),          # digits in a text field stay text
    ("DSPLY_NAME=0042", "DSPLY_NAME", "0042"),
    ("RDN_EXCHID=NYS", "RDN_EXCHID", 2),                   # an enum by its display name
    ("RDN_EXCHID=3", "RDN_EXCHID", 3),                     # and by its number
    ("CURRENCY=usd", "CURRENCY", 840),                     # case and padding aside
    ("TRADE_DATE=2024-02-29", "TRADE_DATE", "2024-02-29"),
    ("TRDTIM_1=14:30", "TRDTIM_1", "14:30"),
    ("QUOTIM=09:05:07.125", "QUOTIM", "09:05:07.125"),
    ("TRD_DTTM=2024-01-02T10:00:00", "TRD_DTTM", "2024-01-02T10:00:00"),
    ("BID=22.10", "BID", 22.1),                            # digits as written: see the next test
    ("NUM_MOVES=-17", "NUM_MOVES", -17),
    ("PROD_PERM=5", "PROD_PERM", 5),
    ("25=24.5", "ASK", 24.5),                              # a FID key
    ("ASK=", "ASK", None),                                 # a blank
    ("BID=NaN", "BID", "NaN"),                             # a Real's documented special values
]


@pytest.mark.parametrize("field,name,stored", GOOD)
def test_post_stores_each_value_as_typed_and_verifies_it(emu, field, name, stored):
    result = typed(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST", "--refresh", "--field", field,
                   "--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[1].startswith("VERIFIED NIPROV UMER.TST")
    assert emu.item("NIPROV", "UMER.TST")[name] == stored


def test_a_real_keeps_the_decimal_places_written(emu):
    """22.10 goes on the wire as 22.10 (not 22.1), so the ADS keeps two decimal places."""
    result = typed(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST", "--field", "BID=22.10",
                   "--field", "ASK=1.2500", "--field", "TRDPRC_1=+.5")
    assert result.returncode == 0, result.stderr
    fields = emu.item("NIPROV", "UMER.TST")
    assert (fields["BID"].text, fields["ASK"].text, fields["TRDPRC_1"]) == ("22.10", "1.2500", 0.5)


# What a user types that the field cannot take: refused before anything is sent.
BAD = [
    ("RDN_EXCHID=NYX", "'NYX' is not in its enum table (did you mean NYS?)"),
    ("RDN_EXCHID=7", "7 is not in its enum table"),
    ("CURRENCY=70000", "CURRENCY is an enum (its number or display name): 70000 is not one"),
    ("NUM_MOVES=9223372036854775808", "NUM_MOVES is an integer"),
    ("NUM_MOVES=1.5", "NUM_MOVES is an integer"),
    ("PROD_PERM=-1", "PROD_PERM is a whole number from 0"),
    ("BIDD=1", "'BIDD' is not in the field dictionary (did you mean BID?)"),
    ("999=1", "FID 999 is not in the field dictionary"),
    ("TRADE_DATE=2024-02-30", "TRADE_DATE is a date (YYYY-MM-DD)"),
    ("TRDTIM_1=25:00", "TRDTIM_1 is a time"),
    ("BID=abc", "BID is a number"),
    ("BID=0.000000000000001", "does not fit a Real"),
    ("GEN_TEXT16=a text longer than sixteen", "GEN_TEXT16 holds 16 characters"),
    ("ISIN_CODE=US03783310é", "ISIN_CODE is an ASCII field"),
    ("GEN_TEXT16:=12345", "GEN_TEXT16 is text"),
    ("BID:=\"22.1\"", "BID is a number"),
]


@pytest.mark.parametrize("field,words", BAD)
def test_post_refuses_a_value_its_field_cannot_take_before_connecting(emu, field, words):
    result = typed(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST", "--field", field)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and connections(emu) == 0


def test_truncate_cuts_text_to_its_field(emu):
    result = typed(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST", "--truncate",
                   "--field", "GEN_TEXT16=a text longer than sixteen")
    assert result.returncode == 0, result.stderr
    assert emu.item("NIPROV", "UMER.TST")["GEN_TEXT16"] == "a text longer th"


def test_run_types_its_fields_by_the_dictionary(emu):
    result = typed(emu.port, "run", "--service", "NIPROV", "--ric", "RUN.TST", "--field", "GEN_TEXT16=0042",
                   "--field", "CURRENCY=EUR", "--field", "BID=1.10", "--interval", "0.01", "--count", "2")
    assert result.returncode == 0, result.stderr
    fields = emu.item("NIPROV", "RUN.TST")
    assert (fields["GEN_TEXT16"], fields["CURRENCY"], fields["BID"].text) == ("0042", 978, "1.10")
    refused = typed(emu.port, "run", "--service", "NIPROV", "--ric", "RUN.TST", "--field", "CURRENCY=XXX")
    assert refused.returncode == 2 and "CURRENCY: 'XXX' is not in its enum table" in refused.stderr


def test_a_csv_is_typed_column_by_column(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("RIC,GEN_TEXT16,RDN_EXCHID,TRADE_DATE,BID\n"
                    "A.TST,12345,NYS,2024-01-02,22.10\n"
                    "B.TST,0042,1,2024-02-30,1\n"              # not a date: that row only
                    "C.TST,x,NYX,,\n"                          # not in the enum table
                    "D.TST,,BOS,2024-12-31,-0.5\n")
    result = typed(emu.port, "post", "--service", "NIPROV", "--refresh", "--file", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stdout.splitlines() == [
        'INVALID line 3 "TRADE_DATE is a date (YYYY-MM-DD): \\"2024-02-30\\" is not one"',
        'INVALID line 4 "RDN_EXCHID: \'NYX\' is not in its enum table (did you mean NYS?)"']
    a, d = emu.item("NIPROV", "A.TST"), emu.item("NIPROV", "D.TST")
    assert (a["GEN_TEXT16"], a["RDN_EXCHID"], a["TRADE_DATE"], a["BID"].text) == ("12345", 2, "2024-01-02", "22.10")
    assert (d["GEN_TEXT16"], d["RDN_EXCHID"], d["BID"]) == (None, 3, -0.5)


def test_a_csv_column_unknown_to_the_dictionary_is_refused_at_the_header(emu, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("RIC,BIDD\nA.TST,1\n")
    result = typed(emu.port, "post", "--service", "NIPROV", "--refresh", "--file", str(path))
    assert result.returncode == 2
    assert result.stdout == ('INVALID line 1 "header column 2: \'BIDD\' is not in the field dictionary '
                             '(did you mean BID?)"\n')
    assert emu.item("NIPROV", "A.TST") is None


def test_json_lines_values_are_checked_against_their_fields(emu):
    rows = [{"ric": "A.TST", "fields": {"GEN_TEXT16": "12345", "CURRENCY": "GBP", "BID": 1.50}},
            {"ric": "B.TST", "fields": {"GEN_TEXT16": 12345}},
            {"ric": "C.TST", "fields": {"NUM_MOVES": 2.5}},
            {"ric": "D.TST", "fields": {"22": 3, "QUOTIM": "10:00:00", "RDN_EXCHID": 2}}]
    text = "\n".join(json.dumps(row) for row in rows).replace("1.5}", "1.50}") + "\n"
    result = typed(emu.port, "post", "--service", "NIPROV", "--refresh", "--file", "-", "--format", "jsonl",
                   stdin=text)
    assert result.returncode == 2, result.stderr
    assert result.stdout.splitlines() == ['INVALID line 2 "GEN_TEXT16 is text: 12345 is not one"',
                                          'INVALID line 3 "NUM_MOVES is an integer: 2.5 is not one"']
    a, d = emu.item("NIPROV", "A.TST"), emu.item("NIPROV", "D.TST")
    assert (a["GEN_TEXT16"], a["CURRENCY"], a["BID"].text) == ("12345", 826, "1.50")
    assert (d["BID"], d["QUOTIM"], d["RDN_EXCHID"]) == (3, "10:00:00", 2)


# ------------------------------------------------------------ without a dictionary

def test_digits_for_a_text_field_end_with_a_hint_that_says_how_to_quote_them():
    with Emulator() as emu:
        result = contribute(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST",
                            "--field", "GEN_TEXT16=12345")
        quoted = contribute(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST",
                            "--field", "GEN_TEXT16:=\"12345\"")
        stored = emu.item("NIPROV", "UMER.TST")["GEN_TEXT16"]
    assert result.returncode == 5
    assert "hint: GEN_TEXT16 is a text field: to post digits as text, quote them as JSON, " \
           "--field GEN_TEXT16:='\"0042\"'" in result.stderr and "--dictionary" in result.stderr
    assert quoted.returncode == 0 and stored == "12345"


def test_an_enum_display_name_ends_with_a_hint_to_post_its_number():
    with Emulator() as emu:
        result = contribute(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST",
                            "--field", "RDN_EXCHID=NYS")
    assert result.returncode == 5
    assert "Expected 'PRIMITIVE' for key 'RDN_EXCHID' Received 'STRING'" in result.stdout
    assert "hint: RDN_EXCHID takes a number (an enum its number, not its display name)" in result.stderr


# ------------------------------------------------------------ the pure parts

def test_the_dictionary_files_are_read_whole(tmp_path):
    names = load_dictionary(DICT)
    assert names.by_name["RDN_EXCHID"].enums["NYS"] == 2 and names.by_name["PRCTCK_1"].enums["\u00de"] == 1
    assert names.by_name["GEN_TEXT16"].length == 16 and names.by_fid[9001].rwf_type == "DATETIME"
    assert load_dictionary(DICT, ENUMS).by_name["CURRENCY"].enums["USD"] == 840
    bad = tmp_path / "RDMFieldDictionary"
    bad.write_text('BID "BID" 22 BID_1 PRICE\n')
    with pytest.raises(UsageProblem, match=r"RDMFieldDictionary:1: not an RDMFieldDictionary line"):
        load_dictionary(str(bad))
    bad.write_text((ROOT / "tests" / "dictionary" / "RDMFieldDictionary").read_text())
    (tmp_path / "enumtype.def").write_text("RDN_EXCHID 4\n1 ASE unquoted\n")
    with pytest.raises(UsageProblem, match=r"enumtype.def:2: not an enumtype.def line"):
        load_dictionary(str(bad))


def test_digits_go_on_the_wire_as_written_and_nothing_else_does():
    types = FieldTypes(load_dictionary(DICT))
    fields = dict(parse_field(f, types) for f in ("BID=22.10", "ASK=22.1", "TRDPRC_1=100", "GEN_TEXT16=1.50"))
    assert fields["BID"] == Digits("22.10") and fields["ASK"] == 22.1 and fields["TRDPRC_1"] == 100
    assert encode({"Fields": fields}) == '{"Fields":{"BID":22.10,"ASK":22.1,"TRDPRC_1":100,"GEN_TEXT16":"1.50"}}'
    with pytest.raises(ValueError, match="NUL"):
        parse_field("GEN_TEXT16:=\"\\u000022.10\"", types)          # could pass for a Digits
    with pytest.raises(ValueError, match="NUL"):
        parse_field("GEN_TEXT16:=\"\\u000022.10\"")


# ------------------------------------------------------------ text as itself (issue 12)

@pytest.mark.parametrize("bulk", [False, True])
def test_non_ascii_text_goes_as_utf8_not_as_escapes(tmp_path, bulk):
    """The ADS's converter drops a backslash and keeps the next character (protocol.md section
    10), so text must go as UTF-8: an escaped é would be stored as u00e9. Both codecs (json for
    one post, orjson for a file) write it as itself."""
    log = tmp_path / "frames.jsonl"
    with open(log, "w") as log_file, Emulator(log_file=log_file) as emu:
        if bulk:
            rows = tmp_path / "rows.csv"
            rows.write_text("RIC,GEN_TEXT16\nUMER.TST,Café ☕ 1€\n", encoding="utf-8")
            result = contribute(emu.port, "post", "--service", "NIPROV", "--file", str(rows))
        else:
            result = contribute(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST",
                                "--field", "GEN_TEXT16=Café ☕ 1€")
        stored = emu.item("NIPROV", "UMER.TST")["GEN_TEXT16"]
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line)["frame"] for line in log.read_text().splitlines()]
    posted = next(frame for frame in frames if '"Type":"Post"' in frame)
    assert "Café ☕ 1€" in posted and "\\u" not in posted and stored == "Café ☕ 1€"


def test_an_integer_beyond_64_bits_is_refused_before_sending(tmp_path):
    """orjson cannot write one; json could, but no field holds it: a usage error, not a traceback."""
    with Emulator() as emu:
        result = contribute(emu.port, "post", "--service", "NIPROV", "--ric", "UMER.TST",
                            "--field", "BIDSIZE:=184467440737095516160")
        rows = tmp_path / "rows.jsonl"
        rows.write_text('{"ric": "UMER.TST", "fields": {"BIDSIZE": 184467440737095516160}}\n'
                        '{"ric": "UMER.TST", "fields": {"BIDSIZE": 5}}\n')
        bulk = contribute(emu.port, "post", "--service", "NIPROV", "--file", str(rows))
        stored = emu.item("NIPROV", "UMER.TST")["BIDSIZE"]
    assert result.returncode == 2 and "beyond the range of a 64-bit integer" in result.stderr
    assert bulk.returncode == 2 and bulk.stdout.startswith("INVALID line 1") and stored == 5
