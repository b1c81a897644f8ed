"""A local stand-in for the WebSocket interface of a Refinitiv Real-Time ADS.

It speaks the `tr_json2` protocol as ../shared/protocol.md documents it, so a
contributor can be tested, benchmarked and demonstrated without a real ADS.
It is not a mock that accepts anything: logins are checked, posts are routed
to services, fields are checked against a field dictionary, and malformed
input gets the ADS's documented Error messages.

Usage:
    python ads_emulator.py --port 15000 [--world FILE] [--users alice,bob] ...
    (prints "listening on ws://127.0.0.1:15000/WebSocket", runs until Ctrl-C)

In-process (tests, benchmarks, `contribute.py --sim`):
    with Emulator(port=0, world=World.default()) as emu:
        ... connect to emu.url ...        # server failures re-raise on exit

Documented ADS behaviour (protocol.md section 11, "confirmed"): handshake on
/WebSocket with tr_json2 (and its alias rssl.json.v2); frames of one object or
an array, replies always arrays; Login Refresh with SupportOMMPost,
PingTimeout and MaxMsgSize; "<user>, unknown to system." denials; Ping/Pong
and the PingTimeout disconnect; Ack with AckID = PostID echoing the Key;
SymbolUnknown "F44: ...", DeniedBySrc and SourceDown "A9: ..." Naks; a posted
Refresh creating the item; "JSON Unexpected FID" Errors instead of Acks;
disconnect on a message larger than MaxMsgSize; a login Close ends every stream.

This emulator's own choices, where no public source says what an ADS does:
- Anything but a Login or a Ping/Pong before the login is accepted gets an
  Error "Login required before any other message." on its ID, then the
  connection is closed (close code 1008).
- A denied login leaves the connection open (the client may log in again).
  A Login on another stream ID while logged in gets a Login Status
  Closed/Suspect "AlreadyOpen"; on the same ID it is a reissue and is answered
  with a fresh Login Refresh (none when it says "Refresh": false).
- A disallowed ApplicationId gets Closed/Suspect "UserAccessToAppDenied",
  text "Application <id> is not permitted for user <user>."
- A user without post permission on a service gets Nak "AccessDenied",
  text "User <user> is not permitted to post to service <service>."
- An unknown service *name* is treated like an unknown service ID: Nak
  "DeniedBySrc", "Unable to find service for post message.".
- A Post on a stream ID that is neither the login stream nor an open item
  stream gets Nak "NotOpen", "Item stream <id> is not open.".
- Posts with "Ack": false get no Ack and no Nak (Errors are still sent).
- An off-stream post without Key.Name gets Nak "SymbolUnknown"
  "Post message has no item name."; one without Key.Service goes to the
  default service (the first one in the world). A Post without "Message"
  gets an Error "JSON Missing required key 'Message'".
- A posted message type other than Refresh or Update gets Nak
  "InvalidContent" "Only Refresh and Update messages can be posted.".
- A posted Refresh replaces the item's whole field list; an Update merges.
  Both fan out to every open stream on the item, the poster's own included,
  as an unsolicited Refresh or an Update carrying the poster's PostUserInfo
  (and the Key, unless the Request said "KeyInUpdates": false).
- A wrong JSON type for a field gets an Error "JSON Converter Token Type
  error: Expected '<T>' for key '<FIELD>' Received '<T>'"; a badly formatted
  date or time gets "JSON RSSL Conversion Error. RSSL error code : -1".
- Field values are converted as RTSDK's C converter does (see check_value):
  an Enum given a display string draws the Token Type Error (with
  --enum-display-strings, as a converter allowing display strings: mapped
  through the enum table, an unknown one stored blank); INT, UINT and ENUM
  read a number with atoi (22.5 is stored 22); strings are stored whole
  whatever the dictionary's length; a Real keeps the decimal places it was
  written with, as its hint does, in the cache (the JSON written back is the
  shortest float: 22.10 reads back as 22.1 here, as 22.10 from an ADS).
- Item not found: Status Closed/Suspect "NotFound", "**The record could not be
  found"; unknown service: Closed/Suspect "SourceUnknown"; service down:
  ClosedRecover/Suspect "A9: Service is unavailable." (a State carries a Code
  only when it is not None).
- Batch (protocol.md section 8, confirmed): a Request whose Key.Name is a list
  gets a Status Closed/Ok "Processed N total items from Batch Request. N Ok."
  on its ID, then each item on ID+1, ID+2... in list order, the View and
  Streaming applying to each; a Close whose ID is a list closes each stream
  (open or not) and gets "Processed N total stream ids from Batch Close
  Request. N Ok. " on its first ID. The login announces SupportBatchRequests 7.
- A reissue Request on an open stream with "Refresh": false gets no Refresh.
- A token login ("NameType": "AuthnToken", Elements.AuthenticationToken, no
  Name) is accepted, echoing AuthenticationErrorCode 0 / "Success"; its user
  name is derived from the token (section 3).
- A login Close, or any Close on the login stream's ID, closes every item
  stream of the connection and leaves the connection open, logged out. A
  denial of a login reissue on the open login stream ends it the same way. A
  Close of an unknown stream is ignored.
- A posted Update's UpdateType (a name or its number) reaches the watchers;
  Unspecified is only the default. A Post may carry Fields directly instead of
  a Message (then it is an Update); a nested Message's Type may be a number.
- Keepalive: a Ping after --ping-interval seconds without inbound traffic,
  again after each further --ping-interval of silence; if nothing arrives
  within PingTimeout of a Ping, close with 1008 "ping timeout". An oversized
  message (over --max-msg-size, announced as MaxMsgSize) is closed with 1009.
- Malformed JSON gets "JSON parser error: -2" (or -3 for a frame cut short:
  jsmn's codes, as the converter writes them). A Type or Domain that is not a
  string or a number, a Name or Elements of the wrong JSON type get the
  converter's Token Type Errors. Before the login, any message but a Login
  or a Ping/Pong, malformed or not, gets its Error and the connection closes
  with 1008.
- Debug.Message of an Error holds the offending message re-encoded, cut to
  1,000 characters (protocol.md does not say what an ADS puts there for a
  message packed in an array with others: a client must not depend on it).
- permessage-deflate is negotiated when the client offers it (section 1).
- A View of names and FIDs mixed draws "JSON Mixed Types in OMM Array";
  a name not in the dictionary is dropped from the View, as the converter's
  encodeBatchView does. An Update posted without PostUserInfo leaves the
  item's last poster in place (section 11.9).
- --drop-after-posts N: every Nth post (counted across the server) is applied
  to the cache, its Ack is not sent, and the TCP connection is aborted.
- --login-recover N: the first N logins get a Login Status ClosedRecover/
  Suspect "DacsDown" with H-STATE's text "A21: Connection to DACS down, users
  are not allowed to connect". --close-login-after-posts N: the Nth post is
  applied, then the login stream is closed (Status Closed/Suspect
  "NotEntitled", "<user>, access revoked.") instead of the Ack.
"""
from __future__ import annotations

import argparse
import asyncio
import configparser
import fnmatch
import functools
import hashlib
import itertools
import json
import json.scanner
import logging
import os
import re
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger("ads_emulator")

# ---------------------------------------------------------------- constants

SUBPROTOCOLS = ("tr_json2", "rssl.json.v2")
WS_PATH = "/WebSocket"
MAX_MSG_SIZE = 61430
DEFAULT_PING_TIMEOUT = 30
DEFAULT_PING_INTERVAL = 10
PING = {"Type": "Ping"}
PONG = {"Type": "Pong"}

MESSAGE_TYPES = {"Request", "Refresh", "Update", "Status", "Close", "Ack",
                 "Generic", "Post", "Ping", "Pong", "Error"}
DOMAINS = {"Analytics", "Contribution", "Dictionary", "EconomicIndicator",
           "Forecast", "Headline", "History", "Login", "MarketByOrder",
           "MarketByPrice", "MarketByTime", "MarketMaker", "MarketPrice",
           "NewsTextAnalytics", "Poll", "ProviderAdmin", "Reference",
           "ReplayHeadline", "ReplayStory", "ServiceProviderStatus", "Source",
           "Story", "SymbolList", "System", "Transaction", "YieldCurve"}
# RWF numbers a client may send instead of the names.
UPDATE_TYPE_NAMES = {0: "Unspecified", 1: "Quote", 2: "Trade", 3: "NewsAlert", 4: "VolumeAlert",
                     5: "OrderIndication", 6: "ClosingRun", 7: "Correction", 8: "MarketDigest",
                     9: "QuotesTrade", 10: "Multiple", 11: "Verify"}          # protocol.md section 8
MESSAGE_TYPE_NUMBERS = {1: "Request", 2: "Refresh", 3: "Status", 4: "Update", 5: "Close",
                        6: "Ack", 7: "Generic", 8: "Post"}
DOMAIN_NUMBERS = {1: "Login", 4: "Source", 5: "Dictionary", 6: "MarketPrice",
                  7: "MarketByOrder", 8: "MarketByPrice", 9: "MarketMaker", 10: "SymbolList"}
NAK_CODES = ("None", "AccessDenied", "DeniedBySrc", "SourceDown",
             "SourceUnknown", "NoResources", "NoResponse", "GatewayDown",
             "SymbolUnknown", "NotOpen", "InvalidContent")

# --------------------------------------------------------- field dictionary


@dataclass(frozen=True)
class FieldDef:
    """One entry of the field dictionary: acronym, FID and RWF type (and an ENUM's table)."""
    name: str
    fid: int
    rwf_type: str
    enums: dict[str, int] | None = field(default=None, compare=False)   # display string -> value


# FIDs and RWF types as in the RDMFieldDictionary every ADS ships.
BUILTIN_FIELDS = [FieldDef(*f) for f in [
    ("DSPLY_NAME", 3, "RMTES_STRING"), ("RDN_EXCHID", 4, "ENUM"),
    ("TRDPRC_1", 6, "REAL64"), ("NETCHNG_1", 11, "REAL64"),
    ("HIGH_1", 12, "REAL64"), ("LOW_1", 13, "REAL64"),
    ("PRCTCK_1", 14, "ENUM"), ("CURRENCY", 15, "ENUM"),
    ("TRADE_DATE", 16, "DATE"), ("TRDTIM_1", 18, "TIME"),
    ("OPEN_PRC", 19, "REAL64"), ("HST_CLOSE", 21, "REAL64"),
    ("BID", 22, "REAL64"), ("ASK", 25, "REAL64"),
    ("BIDSIZE", 30, "REAL64"), ("ASKSIZE", 31, "REAL64"),
    ("ACVOL_1", 32, "REAL64"), ("PCTCHNG", 56, "REAL64"),
    ("TRDVOL_1", 178, "REAL64"), ("VALUE_DT1", 875, "DATE"),
    ("GEN_TEXT16", 1000, "RMTES_STRING"), ("VALUE_TS1", 1010, "TIME"),
    ("QUOTIM", 1025, "TIME"),
]]

# Enum tables for the built-in ENUM fields (a few values each, of this emulator's making).
BUILTIN_ENUMS = {
    "RDN_EXCHID": {"   ": 0, "ASE": 1, "NYS": 2, "BOS": 3},
    "PRCTCK_1": {" ": 0, "\u21e7": 1, "\u21e9": 2},
    "CURRENCY": {"   ": 0, "GBP": 826, "USD": 840, "EUR": 978},
}


class Dictionary:
    """Field definitions by acronym and by FID."""

    def __init__(self, fields: Iterable[FieldDef], enum_names: bool = False) -> None:
        self.by_name = {f.name: f for f in fields}
        self.by_fid = {f.fid: f for f in self.by_name.values()}
        self.enum_names = enum_names     # the converter maps enum display strings (off: an Error)

    @classmethod
    def builtin(cls) -> Dictionary:
        return cls(FieldDef(f.name, f.fid, f.rwf_type, BUILTIN_ENUMS.get(f.name)) for f in BUILTIN_FIELDS)

    @classmethod
    def from_files(cls, path: str, enum_path: str | None = None) -> Dictionary:
        """An RDMFieldDictionary and its enumtype.def (given, else the one beside it, if any)."""
        dictionary = cls.load(path)
        beside = os.path.join(os.path.dirname(path), "enumtype.def")
        if enum_path or os.path.isfile(beside):
            dictionary.add_enums(enum_path or beside)
        return dictionary

    def add_enums(self, path: str) -> None:
        """An enumtype.def: tables of `ACRONYM FID` lines, then `VALUE "DISPLAY" MEANING` lines
        (a DISPLAY may be #hex#), each table given to the ENUM fields it names."""
        tables: list[tuple[list[str], dict[str, int]]] = []
        with open(path, encoding="latin-1") as f:
            for number, line in enumerate(f, 1):
                text = line.strip()
                if not text or text.startswith("!"):
                    continue
                match = re.fullmatch(r'(\d+)\s+(?:"([^"]*)"|#([0-9A-Fa-f]*)#)(\s.*)?', text)
                if match and tables:
                    display = match[2] if match[3] is None else bytes.fromhex(match[3]).decode("latin-1")
                    tables[-1][1].setdefault(display, int(match[1]))
                elif re.fullmatch(r"\S+\s+-?\d+", text) and not text[0].isdigit():
                    if not tables or tables[-1][1]:
                        tables.append(([], {}))
                    tables[-1][0].append(text.split()[0])
                else:
                    raise ValueError(f"{path}:{number}: not an enumtype.def line")
        for acronyms, table in tables:
            for acronym in acronyms:
                fdef = self.by_name.get(acronym)
                if fdef is not None and fdef.rwf_type == "ENUM":
                    fdef = self.by_name[acronym] = FieldDef(fdef.name, fdef.fid, fdef.rwf_type, table)
                    self.by_fid[fdef.fid] = fdef

    @classmethod
    def load(cls, path: str) -> Dictionary:
        """Read an RDMFieldDictionary file: ACRONYM "DDE" FID RIPPLES TYPE LEN RWF_TYPE RWF_LEN."""
        fields = []
        with open(path, encoding="latin-1") as f:
            for number, line in enumerate(f, 1):
                if not line.strip() or line.startswith("!"):
                    continue
                try:
                    tokens = shlex.split(line)
                    fields.append(FieldDef(tokens[0], int(tokens[2]), tokens[-2].upper()))
                except (ValueError, IndexError) as exc:
                    raise ValueError(f"{path}:{number}: not a dictionary line ({exc})") from None
        return cls(fields)

    def lookup(self, key: str) -> FieldDef | None:
        """A field by acronym, or by FID when the key is all digits (with an optional '-')."""
        fdef = self.by_name.get(key)
        if fdef is None and _FID.fullmatch(key):
            return self.by_fid.get(int(key))
        return fdef


_FID = re.compile(r"-?\d+", re.ASCII)


# ------------------------------------------------------------ errors & checks


class ProtocolError(Exception):
    """Input the ADS answers with an Error message; `stream` is the ID to answer on."""

    def __init__(self, text: str, stream: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.stream = stream


def token_type(value: Any) -> str:
    """The JSON token kind the converter names in its errors."""
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, dict):
        return "OBJECT"
    if isinstance(value, list):
        return "ARRAY"
    return "PRIMITIVE"


def expect(key: str, value: Any, wanted: str, stream: int = 0) -> None:
    got = token_type(value)
    if got != wanted:
        raise ProtocolError(f"JSON Converter Token Type error: Expected '{wanted}' "
                            f"for key '{key}' Received '{got}'", stream)


_DATE = r"\d{4}-\d{2}-\d{2}"
_TIME = r"\d{2}:\d{2}(:\d{2}([.:]\d{1,9})*)?"
DATE_FORMS = {"DATE": re.compile(_DATE), "TIME": re.compile(_TIME),
              "DATETIME": re.compile(f"{_DATE}(T{_TIME})?")}


def converter_string(text: str, end: int, strict: bool = True) -> tuple[str, int]:
    """A JSON string value as the ADS's converter reads it (jsonToRwfBase.C,
    processAsciiString): each backslash is dropped and the character after it kept as it is,
    so "caf\\u00e9" is stored as cafu00e9 and "a\\"b" as a"b (protocol.md section 10)."""
    chars, i = [], end
    try:
        while (char := text[i]) != '"':
            if char == "\\":
                i += 1
                char = text[i]
            chars.append(char)
            i += 1
    except IndexError:
        raise json.JSONDecodeError("Unterminated string", text, end) from None
    return "".join(chars), i + 1


class ConverterDecoder(json.JSONDecoder):
    """json, but string values read as the converter reads them (used only for a frame that
    holds a backslash: the pure-Python scanner is slower)."""

    def __init__(self) -> None:
        super().__init__(parse_float=RealText)
        self.parse_string = converter_string
        self.scan_once = json.scanner.py_make_scanner(self)


class RealText(float):
    """A JSON decimal with the text it was written as: the converter keeps a Real's decimal
    places as its hint (22.10 is 2210 at hint 10^-2), so the cache keeps them too. (The
    emulator's JSON output writes the float, 22.1; an ADS writes 22.10.)"""
    __slots__ = ("text",)

    def __new__(cls, text: str) -> RealText:
        real = super().__new__(cls, text)
        real.text = text
        return real


CONVERTER_JSON = ConverterDecoder()


def atoi(value: int | float) -> int:
    """An integer field's number as the C converter reads it (rtr_atoi_size): the digits up to
    the first other character, so 22.5 is 22 and 1e5 is 1."""
    if isinstance(value, int):
        return value
    text = value.text if isinstance(value, RealText) else repr(value)
    return int(re.match(r"-?\d*", text)[0].rstrip("-") or 0)


def check_value(fdef: FieldDef, value: Any, stream: int, enum_names: bool = False) -> Any:
    """The value as the cache stores it, or ProtocolError when the converter would refuse it.

    As RTSDK's C converter (jsonToRwfBase.C) does: INT, UINT and ENUM take a JSON number read
    with atoi (truncated, see atoi()); an ENUM given a string draws a Token Type Error, unless
    enum_names (the Java converter's allowEnumDisplayStrings) maps a known display string and
    stores an unknown one blank; an ENUM beyond 0..65535 is a conversion Error. Strings are
    stored whole, whatever the dictionary's length.
    """
    if value is None:
        return None
    kind = fdef.rwf_type
    if isinstance(value, bool):
        raise ProtocolError("JSON invalid primitive type.", stream)
    if kind == "ENUM" and isinstance(value, str) and enum_names:
        return (fdef.enums or {}).get(value)     # a known display string, else blank
    if kind.startswith(("INT", "UINT")) or kind == "ENUM":
        expect(fdef.name, value, "PRIMITIVE", stream)
        number = atoi(value)
        if kind == "ENUM" and not 0 <= number < 1 << 16 or kind.startswith("UINT") and number < 0:
            raise ProtocolError("JSON RSSL Conversion Error. RSSL error code : -1", stream)
        return number
    elif kind.startswith(("REAL", "FLOAT", "DOUBLE")):
        if isinstance(value, str) and value in ("Inf", "-Inf", "NaN"):
            return value
        expect(fdef.name, value, "PRIMITIVE", stream)
    elif kind in DATE_FORMS:
        expect(fdef.name, value, "STRING", stream)
        if not DATE_FORMS[kind].fullmatch(value):
            raise ProtocolError("JSON RSSL Conversion Error. RSSL error code : -1", stream)
    elif kind.endswith("STRING") or kind == "BUFFER":
        expect(fdef.name, value, "STRING", stream)
    return value


def check_fields(dictionary: Dictionary, fields: Any, stream: int) -> dict[str, Any]:
    """Fields keyed by acronym, checked against the dictionary."""
    if fields is None:
        return {}
    expect("Fields", fields, "OBJECT", stream)
    out = {}
    for key, value in fields.items():
        fdef = dictionary.lookup(key)
        if fdef is None:
            raise ProtocolError(f"JSON Unexpected FID. Received '{key}' for key 'Fields'", stream)
        out[fdef.name] = check_value(fdef, value, stream, dictionary.enum_names)
    return out


# ------------------------------------------------------------------- world


@dataclass
class Service:
    name: str
    id: int
    up: bool = True


@dataclass
class Item:
    fields: dict[str, Any]
    post_user_info: dict[str, Any] | None = None


@dataclass
class World:
    """Services, users and cached items. `users` None means any user may log in and post."""
    services: list[Service]
    users: dict[str, set[str] | None] | None = None   # user -> services it may post to (None: all)
    deny_users: set[str] = field(default_factory=set)
    deny_app_ids: set[str] = field(default_factory=set)
    items: dict[tuple[str, str, str], Item] = field(default_factory=dict)  # (service, domain, ric)
    host: str = "ads-emulator"

    @classmethod
    def default(cls) -> World:
        """NIPROV and DIRECT_FEED, any user, and the seed article's test item NIPROV/UMER.TST."""
        world = cls(services=[Service("NIPROV", 1), Service("DIRECT_FEED", 2)])
        world.items[("NIPROV", "MarketPrice", "UMER.TST")] = Item(
            {"BID": 22.1, "ASK": 24.5, "TRDPRC_1": 23.3, "GEN_TEXT16": "some text"})
        return world

    @classmethod
    def load(cls, path: str) -> World:
        """Read a world file (see README): [service NAME], [user NAME], [item SERVICE RIC], [login]."""
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str                  # field names are case sensitive
        if not parser.read(path):
            raise ValueError(f"{path}: cannot read the world file")
        world = cls(services=[])
        for section in parser.sections():
            kind, _, rest = section.partition(" ")
            body = parser[section]
            if kind == "service" and rest:
                world.services.append(Service(rest, body.getint("id", len(world.services) + 1),
                                              body.getboolean("up", True)))
            elif kind == "user" and rest:
                post = body.get("post", "*").strip()
                allowed = None if post == "*" else {s.strip() for s in post.split(",") if s.strip()}
                world.users = world.users or {}
                world.users[rest] = allowed
            elif kind == "item" and len(rest.split()) == 2:
                service, ric = rest.split()
                domain = body.get("domain", "MarketPrice")
                fields = {k: json.loads(v) for k, v in body.items() if k != "domain"}
                world.items[(service, domain, ric)] = Item(fields)
            elif kind == "login":
                world.deny_users |= set(body.get("deny_users", "").split(",")) - {""}
                world.deny_app_ids |= set(body.get("deny_app_ids", "").split(",")) - {""}
                world.host = body.get("host", world.host)
            else:
                raise ValueError(f"{path}: unknown section [{section}]")
        if not world.services:
            raise ValueError(f"{path}: the world has no [service NAME] section")
        return world

    def service(self, ref: Any) -> Service | None:
        """A service by name or numeric ID; None (no Service key) means the default service."""
        if ref is None:
            return self.services[0]
        for svc in self.services:
            if ref == svc.name or (isinstance(ref, int) and not isinstance(ref, bool) and ref == svc.id):
                return svc
        return None

    def may_post(self, user: str, service: str) -> bool:
        if self.users is None:
            return True
        allowed = self.users.get(user)
        return allowed is None or service in allowed


@dataclass
class Faults:
    """Fault injection, per emulator."""
    ack_delay_ms: int = 0
    no_ack_rics: list[str] = field(default_factory=list)                   # globs
    nak_rics: list[tuple[str, str, str]] = field(default_factory=list)     # (glob, NakCode, Text)
    drop_after_posts: int = 0
    hang_after_login: bool = False
    ping_with_login: bool = False          # pack a Ping into the login Refresh's frame
    login_recover: int = 0                 # answer the first N logins ClosedRecover (DACS down)
    close_login_after_posts: int = 0       # close the login stream (Closed) at the Nth post
    naks_without_text: bool = False        # Naks carry their NakCode but no Text

    def nak_for(self, ric: str) -> tuple[str, str] | None:
        for glob, code, text in self.nak_rics:
            if fnmatch.fnmatchcase(ric, glob):
                return code, text
        return None

    def withholds_ack(self, ric: str) -> bool:
        return any(fnmatch.fnmatchcase(ric, g) for g in self.no_ack_rics)


def parse_nak_rule(text: str) -> tuple[str, str, str]:
    """GLOB:CODE:TEXT, as --nak-ric takes it."""
    glob, code, message = (text.split(":", 2) + ["", ""])[:3]
    if not glob or code not in NAK_CODES or code == "None":
        raise ValueError(f"--nak-ric wants GLOB:CODE:TEXT with CODE one of {', '.join(NAK_CODES)}")
    return glob, code, message or f"Post rejected ({code})."


# ------------------------------------------------------------------ server


def encode(messages: list[dict]) -> str:
    """Compact JSON, text as UTF-8 (orjson: the emulator must not be the slowest part of a
    benchmark); a RealText is written as its float."""
    return orjson.dumps(messages, default=float).decode()


class Session:
    """One client connection: its login and its item streams."""

    def __init__(self, server: EmulatorServer, ws: ServerConnection, conn_id: int) -> None:
        self.server = server
        self.ws = ws
        self.conn_id = conn_id
        self.login_id: int | None = None
        self.user = ""
        self.streams: dict[int, tuple[str, str, str]] = {}     # stream id -> item key
        self.last_rx = time.monotonic()
        self.hang_pending = False    # --hang-after-login: hang once the login reply is out
        self.hung = False            # neither reads nor writes any more
        self.dropped = False         # --drop-after-posts: abort once earlier replies are out

    # -- output

    async def send(self, messages: list[dict]) -> None:
        if messages and not self.hung:
            text = encode(messages)
            self.server.trace(self.conn_id, "out", text)
            await self.ws.send(text)

    async def send_later(self, messages: list[dict], delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.send(messages)
        except ConnectionClosed:
            pass

    # -- input

    async def run(self) -> None:
        keepalive = asyncio.create_task(self.keepalive())
        try:
            async for frame in self.ws:
                self.last_rx = time.monotonic()
                text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                self.server.trace(self.conn_id, "in", text)
                if not await self.handle_frame(text):
                    break
                if self.hung:                    # a hung ADS: socket open, nothing processed
                    await self.ws.wait_closed()  # or written, until the peer or shutdown closes it
        except ConnectionClosed:
            pass
        finally:
            keepalive.cancel()
            self.server.forget(self)

    async def keepalive(self) -> None:
        """Ping after ping_interval of inbound silence; disconnect if PingTimeout passes unanswered."""
        interval, timeout = self.server.ping_interval, self.server.ping_timeout
        while True:
            idle = time.monotonic() - self.last_rx
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            if self.hung:
                return
            sent = time.monotonic()
            await self.send([PING])
            while self.last_rx < sent and time.monotonic() < sent + timeout:
                await asyncio.sleep(min(interval, sent + timeout - time.monotonic()))
            if self.last_rx < sent:
                log.info("conn %d: no traffic within PingTimeout, disconnecting", self.conn_id)
                await self.ws.close(1008, "ping timeout")
                return

    async def handle_frame(self, text: str) -> bool:
        """Process one frame in order; False when the connection must close.

        Replies to this connection and fan-out to other connections collect in
        one outbox and are sent after the frame, one frame per connection, so
        every connection sees messages in the order they were produced.
        """
        replies: list[dict] = []
        outbox: dict[Session, list[dict]] = {self: replies}
        try:
            try:
                parsed = CONVERTER_JSON.decode(text) if "\\" in text else json.loads(text, parse_float=RealText)
            except json.JSONDecodeError as exc:     # jsmn: -3 a frame cut short, -2 anything else
                code = -3 if exc.pos >= len(text.rstrip()) else -2
                raise ProtocolError(f"JSON parser error: {code}") from None
            messages = parsed if isinstance(parsed, list) else [parsed]
        except ProtocolError as exc:
            await self.send([error_message(exc, text)])
            if self.login_id is None:
                await self.ws.close(1008, "login required")
                return False
            return True
        keep_open = True
        for msg in messages:
            try:
                keep_open = self.handle_message(msg, outbox)
            except ProtocolError as exc:
                replies.append(error_message(exc, encode(msg)))
                keep_open = self.login_id is not None        # before the login: closed, as below
            if not keep_open or self.dropped:
                break
        for session, msgs in outbox.items():
            try:
                await session.send(msgs)
            except ConnectionClosed:
                if session is self:
                    raise
        if self.dropped:
            self.hung = True
            self.ws.transport.abort()
            return False
        if not keep_open:
            await self.ws.close(1008, "login required")
        self.hung = self.hang_pending
        return keep_open

    def handle_message(self, msg: Any, outbox: dict[Session, list[dict]]) -> bool:
        self.server.record(self.conn_id, msg)
        replies = outbox[self]
        if not isinstance(msg, dict):
            raise ProtocolError("JSON invalid container type.")
        raw_id = msg.get("ID")
        for name in ("Type", "Domain"):          # a string or a number, as the converter reads them
            if name in msg and msg[name].__class__ not in (str, int):
                raise ProtocolError(f"JSON Converter Token Type error: Expected 'PRIMITIVE' for key "
                                    f"'{name}' Received '{token_type(msg[name])}'",
                                    raw_id if raw_id.__class__ is int else 0)
        mtype = MESSAGE_TYPE_NUMBERS.get(msg.get("Type"), msg.get("Type", "Request"))
        if mtype not in MESSAGE_TYPES:
            raise ProtocolError(f"JSON Unexpected Value. Received '{mtype}' for key 'Type'",
                                raw_id if raw_id.__class__ is int else 0)
        if mtype == "Ping":
            replies.append(PONG)
            return True
        if mtype == "Pong":
            return True
        if "ID" not in msg:
            raise ProtocolError("JSON Missing required key 'ID'")
        stream = msg["ID"]
        if mtype == "Close" and isinstance(stream, list):
            stream = stream[0] if stream else 0
        expect("ID", stream, "PRIMITIVE")
        if not isinstance(stream, int) or isinstance(stream, bool):
            raise ProtocolError("JSON invalid primitive type.")
        domain = DOMAIN_NUMBERS.get(msg.get("Domain"), msg.get("Domain", "MarketPrice"))
        if domain not in DOMAINS:
            raise ProtocolError(f"JSON Unexpected Value. Received '{domain}' for key 'Domain'", stream)

        if domain == "Login" and mtype == "Request":
            self.login(stream, msg, replies)
            return True
        if self.login_id is None:
            replies.append({"ID": stream, "Type": "Error",
                            "Text": "Login required before any other message."})
            return False
        if mtype == "Close":
            ids = msg["ID"]
            self.close(ids, domain)
            if isinstance(ids, list):          # a batch Close is answered on its first ID
                replies.append(with_domain({"ID": stream, "Type": "Status", "State": {
                    "Stream": "Closed", "Data": "Ok",
                    "Text": f"Processed {len(ids)} total stream ids from Batch Close Request. {len(ids)} Ok. "}},
                    domain))
        elif mtype == "Post":
            self.post(stream, domain, msg, outbox)
        elif mtype == "Request":
            self.request(stream, domain, msg, replies)
        elif mtype != "Generic":
            raise ProtocolError("Unsupported Message Type", stream)
        return True

    # -- login

    def login(self, stream: int, msg: dict, replies: list[dict]) -> None:
        world = self.server.world
        key = msg.get("Key") or {}
        expect("Key", key, "OBJECT", stream)
        elements = key.get("Elements", {})
        expect("Elements", elements, "OBJECT", stream)
        token = elements.get("AuthenticationToken") if key.get("NameType") == "AuthnToken" else None
        if token is not None:                    # a token login: the user comes from the token
            expect("AuthenticationToken", token, "STRING", stream)
            user = "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]
        else:
            user = key.get("Name", "")
            expect("Name", user, "STRING", stream)
        app_id = str(elements.get("ApplicationId", "256"))
        position = str(elements.get("Position", ""))

        def deny(code: str, text: str, stream_state: str = "Closed") -> None:
            """A Login Status that refuses; on the open login stream it ends the login too."""
            replies.append({"ID": stream, "Type": "Status", "Domain": "Login", "Key": {"Name": user},
                            "State": {"Stream": stream_state, "Data": "Suspect", "Code": code, "Text": text}})
            if stream == self.login_id:
                self.close(stream, "Login")

        if self.login_id is not None and stream != self.login_id:
            return deny("AlreadyOpen", f"Login stream already open on ID {self.login_id}.")
        if not user:
            return deny("NotEntitled", "Login rejected: no user name.")
        if user in world.deny_users or (token is None and world.users is not None and user not in world.users):
            return deny("UserUnknownToPermSys", f"{user}, unknown to system.")
        if app_id in world.deny_app_ids:
            return deny("UserAccessToAppDenied", f"Application {app_id} is not permitted for user {user}.")
        if self.server.count_login_recover():
            return deny("DacsDown", "A21: Connection to DACS down, users are not allowed to connect",
                        "ClosedRecover")
        reissue = self.login_id == stream
        self.login_id, self.user = stream, user
        if reissue and msg.get("Refresh") is False:
            return
        replies.append({
            "ID": stream, "Type": "Refresh", "Domain": "Login",
            "Key": {"Name": user, "Elements": {
                "AllowSuspectData": 1, "ApplicationId": app_id, "ApplicationName": "ADS",
                "Position": position, "ProvidePermissionExpressions": 1,
                "ProvidePermissionProfile": 0, "SingleOpen": 1, "SupportEnhancedSymbolList": 1,
                "SupportOMMPost": 1, "SupportPauseResume": 0, "SupportStandby": 1,
                "SupportBatchRequests": 7, "SupportViewRequests": 1,
                "SupportOptimizedPauseResume": 0,
                **({"AuthenticationErrorCode": 0, "AuthenticationErrorText": "Success"} if token else {})}},
            "State": {"Stream": "Open", "Data": "Ok", "Text": f"Login accepted by host {world.host}."},
            "Elements": {"PingTimeout": self.server.ping_timeout, "MaxMsgSize": self.server.max_msg_size}})
        faults = self.server.faults
        if faults.ping_with_login:
            replies.append(PING)
        self.server.logged_in.set()
        self.hang_pending = faults.hang_after_login

    def close(self, ids: Any, domain: str) -> None:
        """Close streams; a Close on the login stream's ID closes the login, and with it every
        stream of this connection, whatever Domain it names."""
        for stream in ids if isinstance(ids, list) else [ids]:
            if stream == self.login_id:
                for sid in list(self.streams):
                    self.server.unwatch(self, sid)
                self.login_id = None
            elif stream in self.streams:
                self.server.unwatch(self, stream)

    # -- posts

    def post(self, stream: int, domain: str, msg: dict, outbox: dict[Session, list[dict]]) -> None:
        server, world = self.server, self.server.world
        replies = outbox[self]
        if "Message" in msg:
            payload = msg["Message"]
            expect("Message", payload, "OBJECT", stream)
        elif "Fields" in msg:                    # a field list directly on the Post: an Update
            payload = {"Type": "Update", "Fields": msg["Fields"]}
        else:
            raise ProtocolError("JSON Missing required key 'Message'", stream)
        ptype = payload.get("Type", "Request")
        if ptype.__class__ is int:
            ptype = MESSAGE_TYPE_NUMBERS.get(ptype, ptype)
        update_type = payload.get("UpdateType", "Unspecified")
        update_type = UPDATE_TYPE_NAMES.get(update_type, update_type) if update_type.__class__ is int \
            else update_type
        fields = check_fields(server.dictionary, payload.get("Fields"), stream)
        info = msg.get("PostUserInfo")
        if info is not None:
            check_post_user_info(info, stream)
        want_ack = msg.get("Ack") is True
        post_id = msg.get("PostID")
        if post_id is not None:
            expect("PostID", post_id, "PRIMITIVE", stream)
        server.post_received.set()

        key: dict[str, Any] = {}
        svc, ric = None, None
        if stream == self.login_id:                                  # off-stream
            raw = msg.get("Key") or {}
            expect("Key", raw, "OBJECT", stream)
            svc = world.service(raw.get("Service"))
            ric = raw.get("Name")
            key = {"Service": svc.name if svc else raw.get("Service"), "Name": ric}
        elif stream in self.streams:                                 # on-stream
            service_name, domain, ric = self.streams[stream]
            svc = world.service(service_name)

        def nak(code: str, text: str) -> None:
            if want_ack:
                replies.append(with_domain(ack_message(stream, post_id, key, code,
                                                       None if server.faults.naks_without_text else text), domain))

        if stream != self.login_id and stream not in self.streams:
            return nak("NotOpen", f"Item stream {stream} is not open.")
        if not ric:
            return nak("SymbolUnknown", "Post message has no item name.")
        if svc is None:
            return nak("DeniedBySrc", "Unable to find service for post message.")
        if not svc.up:
            return nak("SourceDown", "A9: Service is unavailable.")
        if not world.may_post(self.user, svc.name):
            return nak("AccessDenied", f"User {self.user} is not permitted to post to service {svc.name}.")
        rule = server.faults.nak_for(ric)
        if rule:
            return nak(*rule)
        if ptype not in ("Refresh", "Update"):
            return nak("InvalidContent", "Only Refresh and Update messages can be posted.")
        item_key = (svc.name, domain, ric)
        item = world.items.get(item_key)
        if ptype == "Update" and item is None:
            return nak("SymbolUnknown", "F44: Unable to find item on post update.")
        with server.lock:
            if ptype == "Refresh":
                item = world.items[item_key] = Item(fields)
            else:
                item.fields.update(fields)
            if info is not None or ptype == "Refresh":
                item.post_user_info = info       # an Update without PostUserInfo keeps the last one
        server.fan_out(item_key, ptype, fields, info, outbox, update_type)
        drop, close_login = server.count_post()
        if drop:
            self.dropped = True
            return
        if close_login:                    # the Ack is not sent: the login is gone first
            replies.append({"ID": self.login_id, "Type": "Status", "Domain": "Login",
                            "Key": {"Name": self.user},
                            "State": {"Stream": "Closed", "Data": "Suspect", "Code": "NotEntitled",
                                      "Text": f"{self.user}, access revoked."}})
            self.close(self.login_id, "Login")
            return
        if want_ack and not server.faults.withholds_ack(ric):
            ack = with_domain(ack_message(stream, post_id, key), domain)   # key is {} on-stream: not echoed
            if stream != self.login_id:
                ack["Text"] = "All is well"
            if server.faults.ack_delay_ms:
                server.background(self.send_later([ack], server.faults.ack_delay_ms / 1000))
            else:
                replies.append(ack)

    # -- requests

    def request(self, stream: int, domain: str, msg: dict, replies: list[dict]) -> None:
        world = self.server.world
        key = msg.get("Key")
        if key is None:
            raise ProtocolError("JSON Missing required key 'Key'", stream)
        expect("Key", key, "OBJECT", stream)
        ric, svc_ref = key.get("Name"), key.get("Service")
        if isinstance(ric, list):                # a batch: a Status here, the items at ID+1...
            for name in ric:
                expect("Name", name, "STRING", stream)
            replies.append(with_domain({"ID": stream, "Type": "Status", "State": {
                "Stream": "Closed", "Data": "Ok",
                "Text": f"Processed {len(ric)} total items from Batch Request. {len(ric)} Ok."}}, domain))
            for i, name in enumerate(ric, 1):
                self.request(stream + i, domain, {**msg, "ID": stream + i, "Key": {**key, "Name": name}}, replies)
            return
        if ric is not None:
            expect("Name", ric, "STRING", stream)
        if stream in self.streams and msg.get("Refresh") is False:
            return                               # a reissue without a Refresh: nothing to send
        svc = world.service(svc_ref)
        out_key = {"Service": svc.name if svc else svc_ref}
        if ric is not None:
            out_key["Name"] = ric

        def status(stream_state: str, code: str, text: str) -> dict:
            state = {"Stream": stream_state, "Data": "Suspect", "Code": code, "Text": text}
            if code == "None":                   # a State carries a Code only when there is one
                del state["Code"]
            return with_domain({"ID": stream, "Type": "Status", "Key": out_key, "State": state}, domain)

        if stream in self.streams:
            self.server.unwatch(self, stream)
        if svc is None:
            replies.append(status("Closed", "SourceUnknown", f"Service {svc_ref} is unknown."))
            return
        if not svc.up:
            replies.append(status("ClosedRecover", "None", "A9: Service is unavailable."))
            return
        item = world.items.get((svc.name, domain, ric))
        if item is None:
            replies.append(status("Closed", "NotFound", "**The record could not be found"))
            return
        streaming = msg.get("Streaming", True) is not False
        fields = item.fields
        if isinstance(msg.get("View"), list):
            kinds = list(dict.fromkeys(token_type(v) for v in msg["View"]))
            if len(kinds) > 1:                   # an OMM array holds one type
                raise ProtocolError(f"JSON Mixed Types in OMM Array: Received '{kinds[0]}' and '{kinds[1]}' "
                                    "for key 'View'", stream)
            lookup = self.server.dictionary.lookup
            wanted = {f.name for f in (lookup(str(v)) for v in msg["View"]) if f}
            fields = {k: v for k, v in fields.items() if k in wanted}
        refresh = with_domain({"ID": stream, "Type": "Refresh", "Key": out_key,
                               "State": {"Stream": "Open" if streaming else "NonStreaming",
                                         "Data": "Ok", "Text": "All is well"},
                               "Qos": {"Timeliness": "Realtime", "Rate": "TickByTick"}}, domain)
        if item.post_user_info:
            refresh["PostUserInfo"] = item.post_user_info
        refresh["Fields"] = dict(fields)
        replies.append(refresh)
        if streaming:
            self.streams[stream] = (svc.name, domain, ric)
            self.server.watch(self, stream, (svc.name, domain, ric), msg.get("KeyInUpdates") is not False)


def with_domain(msg: dict, domain: str) -> dict:
    """The converter omits Domain for MarketPrice."""
    if domain != "MarketPrice":
        msg["Domain"] = domain
    return msg


@functools.lru_cache(maxsize=1024)
def dotted_ipv4(address: str) -> bool:
    """A dotted-decimal IPv4 address (remembered: a poster sends the same one with every post)."""
    parts = address.split(".")
    return len(parts) == 4 and all(p.isascii() and p.isdigit() and int(p) < 256 for p in parts)


def check_post_user_info(info: Any, stream: int) -> None:
    expect("PostUserInfo", info, "OBJECT", stream)
    for key in ("Address", "UserID"):
        if key not in info:
            raise ProtocolError(f"JSON Missing required key '{key}'", stream)
    address, user_id = info["Address"], info["UserID"]
    if isinstance(address, str):            # dotted-decimal IPv4 only: the ADS has no IPv6 here
        if not dotted_ipv4(address):
            raise ProtocolError("JSON RSSL Conversion Error. RSSL error code : -1", stream)
    elif not isinstance(address, int) or isinstance(address, bool):
        raise ProtocolError("JSON Converter Token Type error: token: Address was not expected "
                            f"type:{'NULL' if address is None else token_type(address)}", stream)
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise ProtocolError("JSON Converter Token Type error: token: UserID was not expected "
                            f"type:{'NULL' if user_id is None else token_type(user_id)}", stream)


def ack_message(stream: int, post_id: Any, key: dict | None,
                nak_code: str | None = None, text: str | None = None) -> dict:
    """An Ack in the converter's key order: ID, Type, AckID, NakCode, Text, Key (no AckID for
    a post without a PostID)."""
    ack: dict[str, Any] = {"ID": stream, "Type": "Ack"}
    if post_id is not None:
        ack["AckID"] = post_id
    if nak_code:
        ack["NakCode"] = nak_code
    if text:
        ack["Text"] = text
    if key:
        ack["Key"] = key
    return ack


def error_message(exc: ProtocolError, offending: str) -> dict:
    return {"ID": exc.stream, "Type": "Error", "Text": exc.text,
            "Debug": {"File": "ads_emulator.py", "Line": 0, "Offset": 0,
                      "Message": offending[:1000]}}


class EmulatorServer:
    """The shared state of one emulator: world, faults, sessions, watchers, records."""

    def __init__(self, world: World, faults: Faults, dictionary: Dictionary,
                 ping_interval: float, ping_timeout: int, log_file: Any = None,
                 echo: bool = False, keep_received: bool = True) -> None:
        self.world = world
        self.keep_received = keep_received
        self.faults = faults
        self.dictionary = dictionary
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_msg_size = MAX_MSG_SIZE         # announced in the login Refresh, and enforced
        self.log_file = log_file
        self.echo = echo
        self.lock = threading.Lock()             # guards received, items (read from other threads)
        self.received: list[tuple[int, Any]] = []
        self.changed = threading.Condition(self.lock)
        self.logged_in = threading.Event()
        self.post_received = threading.Event()
        self.errors: list[BaseException] = []
        self.conn_ids = itertools.count(1)
        self.sessions: set[Session] = set()
        self.tasks: set[asyncio.Task] = set()      # background work, kept until done
        # item key -> {(session, stream): KeyInUpdates}, in the order the streams opened
        self.watchers: dict[tuple[str, str, str], dict[tuple[Session, int], bool]] = {}
        self.posts = 0
        self.logins = 0

    async def handler(self, ws: ServerConnection) -> None:
        session = Session(self, ws, next(self.conn_ids))
        self.sessions.add(session)
        try:
            await session.run()
        except Exception as exc:            # a server bug: record it, fail the test at exit
            log.exception("emulator failure on connection %d", session.conn_id)
            self.errors.append(exc)
            await ws.close(1011, "emulator failure")

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?")[0] != WS_PATH:
            return connection.respond(404, f"Not found: the ADS WebSocket path is {WS_PATH}\n")
        return None

    # -- bookkeeping used by sessions

    def background(self, coro: Any) -> None:
        """Run coro as a task that is kept referenced and whose failure is recorded."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.errors.append(t.exception())
        task.add_done_callback(done)

    def record(self, conn_id: int, msg: Any) -> None:
        if not self.keep_received:
            return
        with self.changed:
            self.received.append((conn_id, msg))
            self.changed.notify_all()

    def trace(self, conn_id: int, direction: str, text: str) -> None:
        if self.log_file is None and not self.echo:
            return
        line = json.dumps({"t": round(time.time(), 6), "conn": conn_id, "dir": direction,
                           "frame": text})
        if self.log_file is not None:
            self.log_file.write(line + "\n")
            self.log_file.flush()
        if self.echo:
            print(f"{conn_id} {'<' if direction == 'in' else '>'} {text}", file=sys.stderr)

    def count_post(self) -> tuple[bool, bool]:
        """Count a post: does it drop the connection, does it close the login (per the faults)?"""
        self.posts += 1
        drop, close = self.faults.drop_after_posts, self.faults.close_login_after_posts
        return bool(drop) and self.posts % drop == 0, self.posts == close

    def count_login_recover(self) -> bool:
        """True while --login-recover says this login is answered ClosedRecover."""
        self.logins += 1
        return self.logins <= self.faults.login_recover

    def watch(self, session: Session, stream: int, key: tuple[str, str, str], key_in_updates: bool) -> None:
        self.watchers.setdefault(key, {})[(session, stream)] = key_in_updates

    def unwatch(self, session: Session, stream: int) -> None:
        key = session.streams.pop(stream, None)
        if key:
            self.watchers.get(key, {}).pop((session, stream), None)

    def forget(self, session: Session) -> None:
        for stream in list(session.streams):
            self.unwatch(session, stream)
        self.sessions.discard(session)

    def fan_out(self, key: tuple[str, str, str], ptype: str, fields: dict, info: Any,
                outbox: dict[Session, list[dict]], update_type: str = "Unspecified") -> None:
        """Queue a posted change for every open stream on the item."""
        for (session, stream), key_in_updates in list(self.watchers.get(key, {}).items()):
            if ptype == "Refresh":
                msg = with_domain({"ID": stream, "Type": "Refresh",
                                   "Key": {"Service": key[0], "Name": key[2]},
                                   "State": {"Stream": "Open", "Data": "Ok", "Text": "All is well"},
                                   "Solicited": False}, key[1])
            else:
                msg = with_domain({"ID": stream, "Type": "Update", "UpdateType": update_type}, key[1])
                if key_in_updates:                 # the Request's KeyInUpdates, true by default
                    msg["Key"] = {"Service": key[0], "Name": key[2]}
            if info:
                msg["PostUserInfo"] = info
            msg["Fields"] = fields
            outbox.setdefault(session, []).append(msg)


# --------------------------------------------------------- in-process handle


class EmulatorError(Exception):
    """The emulator itself failed; raised when the in-process emulator stops."""


class Emulator:
    """An emulator on its own thread and event loop, for tests, benchmarks and --sim.

    `url` is ready once start() returns. received() and wait_for() see every
    message the emulator accepted; logged_in and post_received are Events.
    """

    def __init__(self, world: World | None = None, faults: Faults | None = None,
                 dictionary: Dictionary | None = None, host: str = "127.0.0.1", port: int = 0,
                 ping_interval: float = DEFAULT_PING_INTERVAL,
                 ping_timeout: int = DEFAULT_PING_TIMEOUT,
                 log_file: Any = None, echo: bool = False, keep_received: bool = True,
                 tls: tuple[str, str] | None = None, max_msg_size: int = MAX_MSG_SIZE) -> None:
        self.tls = tls                           # (certificate file, key file): serve wss://
        self.server = EmulatorServer(world or World.default(), faults or Faults(),
                                     dictionary or Dictionary.builtin(),
                                     ping_interval, ping_timeout, log_file, echo, keep_received)
        self.server.max_msg_size = max_msg_size
        self.host, self.port = host, port
        self.url = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._start_error: BaseException | None = None

    @property
    def logged_in(self) -> threading.Event:
        return self.server.logged_in

    @property
    def post_received(self) -> threading.Event:
        return self.server.post_received

    def start(self, timeout: float = 10) -> Emulator:
        self._thread = threading.Thread(target=self._run, name="ads-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EmulatorError("the emulator did not start in time")
        if self._start_error:
            raise EmulatorError(f"the emulator could not start: {self._start_error}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:       # surfaced by start() or stop()
            self._start_error = self._start_error or exc
            self.server.errors.append(exc)
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve_emulator(self.server, self.host, self.port, self.tls) as ws_server:
            self.port = ws_server.sockets[0].getsockname()[1]
            self.url = f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{WS_PATH}"
            self._ready.set()
            await self._stop.wait()

    def stop(self, timeout: float = 10) -> None:
        """Stop serving, join the thread, and raise any failure the server collected."""
        if self.loop and self._stop and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise EmulatorError("the emulator did not stop in time")
        if self.server.errors:
            raise EmulatorError(f"the emulator failed: {self.server.errors[0]!r}") \
                from self.server.errors[0]

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- what it saw

    def received(self) -> list[dict]:
        with self.server.lock:
            return [msg for _, msg in self.server.received]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float) -> dict:
        """The first received message matching predicate, waiting up to timeout seconds."""
        deadline = time.monotonic() + timeout
        with self.server.changed:
            while True:
                for _, msg in self.server.received:
                    if predicate(msg):
                        return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no matching message received in time")
                self.server.changed.wait(remaining)

    def drop_connections(self) -> None:
        """Abort every client's TCP connection at once, as a network fault would."""
        def drop() -> None:
            for session in list(self.server.sessions):
                session.hung = True
                session.ws.transport.abort()
        if self.loop:
            self.loop.call_soon_threadsafe(drop)

    def item(self, service: str, ric: str, domain: str = "MarketPrice") -> dict | None:
        """A copy of a cached item's fields, or None."""
        with self.server.lock:
            item = self.server.world.items.get((service, domain, ric))
            return dict(item.fields) if item else None


def serve_emulator(server: EmulatorServer, host: str, port: int, tls: tuple[str, str] | None = None):
    """The websockets server for an EmulatorServer (an async context manager); wss:// with
    tls = (certificate file, key file)."""
    context = None
    if tls:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
    return serve(server.handler, host, port, subprotocols=list(SUBPROTOCOLS),
                 process_request=server.process_request, max_size=server.max_msg_size,
                 ping_interval=None, compression="deflate", close_timeout=2,
                 server_header="ads-emulator", ssl=context)


# --------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A local ADS WebSocket (tr_json2) emulator.")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=15000, help="port; 0 picks a free one (default %(default)s)")
    p.add_argument("--world", metavar="FILE", help="world file: services, users, items")
    p.add_argument("--users", metavar="LIST", help="comma-separated users allowed to log in")
    p.add_argument("--deny-user", metavar="NAME", action="append", default=[],
                   help="deny this user's login (repeatable)")
    p.add_argument("--deny-app-id", metavar="ID", action="append", default=[],
                   help="deny logins with this ApplicationId (repeatable)")
    p.add_argument("--service-down", metavar="NAME", action="append", default=[],
                   help="mark a service down (repeatable)")
    p.add_argument("--dictionary", metavar="PATH", help="RDMFieldDictionary file to use")
    p.add_argument("--enum-dictionary", metavar="PATH",
                   help="enumtype.def for its ENUM fields (default: the one beside --dictionary)")
    p.add_argument("--enum-display-strings", action="store_true",
                   help="map enum display strings to their values, an unknown one to blank, as a converter "
                        "with allowEnumDisplayStrings does (default: a display string is an Error)")
    p.add_argument("--ping-interval", type=float, default=DEFAULT_PING_INTERVAL, metavar="SECONDS",
                   help="inbound silence before the emulator pings (default %(default)s)")
    p.add_argument("--ping-timeout", type=int, default=DEFAULT_PING_TIMEOUT, metavar="SECONDS",
                   help="PingTimeout announced and enforced (default %(default)s)")
    f = p.add_argument_group("fault injection")
    f.add_argument("--ack-delay-ms", type=int, default=0, metavar="N", help="delay every Ack")
    f.add_argument("--no-ack-ric", metavar="GLOB", action="append", default=[],
                   help="never ack posts to matching RICs")
    f.add_argument("--nak-ric", metavar="GLOB:CODE:TEXT", action="append", default=[],
                   help="nak posts to matching RICs")
    f.add_argument("--drop-after-posts", type=int, default=0, metavar="N",
                   help="abort the connection at every Nth post")
    f.add_argument("--hang-after-login", action="store_true",
                   help="stop reading and writing after the login, keeping the socket open")
    f.add_argument("--ping-with-login", action="store_true",
                   help="pack a Ping into the login Refresh's frame")
    f.add_argument("--login-recover", type=int, default=0, metavar="N",
                   help="answer the first N logins ClosedRecover/DacsDown")
    f.add_argument("--close-login-after-posts", type=int, default=0, metavar="N",
                   help="close the login stream (Closed/NotEntitled) at the Nth post")
    f.add_argument("--naks-without-text", action="store_true",
                   help="send Naks with their NakCode but no Text")
    p.add_argument("--max-msg-size", type=int, default=MAX_MSG_SIZE, metavar="BYTES",
                   help="the MaxMsgSize announced at login and enforced (default %(default)s)")
    p.add_argument("--log", metavar="FILE", help="write every frame as JSON Lines")
    p.add_argument("--tls-cert", metavar="FILE", help="serve wss:// with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every frame on stderr")
    return p


def emulator_from_args(args: argparse.Namespace, log_file: Any = None) -> Emulator:
    world = World.load(args.world) if args.world else World.default()
    if args.users:
        world.users = {u.strip(): None for u in args.users.split(",") if u.strip()}
    world.deny_users |= set(args.deny_user)
    world.deny_app_ids |= set(args.deny_app_id)
    for name in args.service_down:
        svc = world.service(name)
        if svc is None:
            raise ValueError(f"--service-down: no service {name} in the world")
        svc.up = False
    faults = Faults(ack_delay_ms=args.ack_delay_ms, no_ack_rics=args.no_ack_ric,
                    nak_rics=[parse_nak_rule(r) for r in args.nak_ric],
                    drop_after_posts=args.drop_after_posts,
                    hang_after_login=args.hang_after_login, ping_with_login=args.ping_with_login,
                    login_recover=args.login_recover,
                    close_login_after_posts=args.close_login_after_posts,
                    naks_without_text=args.naks_without_text)
    dictionary = Dictionary.from_files(args.dictionary, args.enum_dictionary) if args.dictionary \
        else Dictionary.builtin()
    dictionary.enum_names = args.enum_display_strings
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return Emulator(world, faults, dictionary, args.bind, args.port, args.ping_interval,
                    args.ping_timeout, log_file, args.verbose, keep_received=False,
                    tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
                    max_msg_size=args.max_msg_size)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ads_emulator: %(message)s")
    log_file = open(args.log, "a", encoding="utf-8") if args.log else None
    try:
        emu = emulator_from_args(args, log_file)
    except (OSError, ValueError) as exc:
        print(f"ads_emulator: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        emu.start()
    except EmulatorError as exc:
        print(f"ads_emulator: {exc}", file=sys.stderr)
        return 1
    print(f"listening on {emu.url}", flush=True)
    while not stop.wait(3600):
        pass
    emu.stop()
    if log_file:
        log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
