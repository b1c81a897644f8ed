"""Contribute real-time data to Refinitiv Real-Time (LSEG Real-Time) through an ADS.

Connects to the ADS's WebSocket API (tr_json2), logs in with a DACS user,
ApplicationId and Position, sends off-stream Post messages (a Refresh creates
an item, an Update changes fields) and waits for each post's Ack.

For ops engineers it also reads items back (get, watch, post --verify) and
diagnoses a setup step by step (check).

    python contribute.py post --ric UMER.TST --field BID=22.1
    python contribute.py --sim post --ric UMER.TST --field BID=22.1   # built-in emulator
    python contribute.py check --ric UMER.TST --field BID=22.1

Exit codes:
    0    every post acknowledged (login: accepted; get: found; check: passed)
    1    internal error, or a protocol violation by the server
    2    usage or configuration error
    3    could not connect, or the connection was lost
    4    login denied
    5    rejected: a Nak or Error about a post, an item not found, a read-back mismatch
    6    timed out waiting for the login response, an ack or an item
    130  interrupted before every post was acknowledged
"""
import itertools
import json
import logging
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
from enum import IntEnum
from typing import IO, Any, Callable, Iterable, Iterator, NamedTuple

import click

log = logging.getLogger("contribute")

# ================================================================ constants

SUBPROTOCOL = "tr_json2"
LOGIN_STREAM = 1
DEFAULT_PORT = 15000
DEFAULT_APP_ID = "256"
DEFAULT_PATH = "/WebSocket"
CLOSE_TIMEOUT = 2.0          # seconds to wait for the server's close frame
PONG_TEXT = '{"Type":"Pong"}'
PING_TEXT = '{"Type":"Ping"}'
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"     # RFC 6455: Sec-WebSocket-Accept


class Exit(IntEnum):
    """Exit statuses; the table is in the module docstring and the README."""
    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONNECT = 3
    LOGIN = 4
    REJECTED = 5
    TIMEOUT = 6
    INTERRUPTED = 130


EXIT_TABLE = "\n".join(line.strip() for line in __doc__.split("Exit codes:")[1].strip().splitlines())

# The login attributes `login` shows, with their --json names.
LOGIN_ATTRIBUTES = {"SupportOMMPost": "support_omm_post", "PingTimeout": "ping_timeout",
                    "MaxMsgSize": "max_msg_size", "ApplicationName": "application_name",
                    "ApplicationId": "application_id", "Position": "position"}

# Hints for the common cases of an item request's closed Status, keyed by State Code.
ITEM_HINTS = {
    "NotFound": "the item is not in that service: check --ric and --service (post --refresh creates it)",
    "NotEntitled": "DACS does not permit this user to that item or service: ask your market data team",
    "SourceUnknown": "the ADS does not know that service: check --service",
}

# Hints for the common cases, keyed by NakCode or login State Code.
HINTS = {
    "SymbolUnknown": "the item does not exist in that service yet: post a Refresh first (--refresh)",
    "AccessDenied": "the DACS user lacks post permission on that service: ask your market data team",
    "DeniedBySrc": "the service refused the post: check --service (a cache or contribution service)",
    "SourceDown": "the service is down or unavailable on this ADS: try later or another service",
    "NotOpen": "the item stream is not open",
    "InvalidContent": "the post content does not match what the service expects",
    "UserUnknownToPermSys": "the user is unknown to DACS: check --user with your market data team",
    "UserAccessToAppDenied": "the user may not use this application id: check --app-id",
    "NotEntitled": "DACS denied the login: check --user, --app-id and --position",
    "DacsDown": "the ADS cannot reach DACS: try again later",
    "MaxLoginsReached": "the user has too many sessions open on this ADS",
    "UnexpectedFID": "the field name is not in the ADS's field dictionary: check the spelling, or use a FID",
}

# ================================================================== errors


class ContributeError(Exception):
    """The root of every failure this tool reports; carries its exit status and a hint."""
    exit_code = Exit.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageProblem(ContributeError):
    exit_code = Exit.USAGE


class ConnectFailed(ContributeError):
    exit_code = Exit.CONNECT


class ConnectionLost(ConnectFailed):
    """An established connection ended (closed, failed, or silent beyond PingTimeout)."""


class LoginRefused(ContributeError):
    exit_code = Exit.LOGIN

    def __init__(self, message: str, hint: str | None = None, state: Any = None) -> None:
        super().__init__(message, hint)
        self.state = state                 # the LoginDenied event, when the ADS sent one


class Timeout(ContributeError):
    exit_code = Exit.TIMEOUT


class Rejected(ContributeError):
    """The ADS refused what was asked of it: the item is not there, or it did not read back as posted."""
    exit_code = Exit.REJECTED


class ProtocolViolation(ContributeError):
    """The server broke the protocol (we were right, the peer was wrong)."""
    exit_code = Exit.INTERNAL


# ================================================================ protocol

def build_login(user: str, app_id: str, position: str, stream: int = LOGIN_STREAM) -> dict:
    return {"ID": stream, "Domain": "Login",
            "Key": {"Name": user, "Elements": {"ApplicationId": app_id, "Position": position}}}


def build_close(stream: int, domain: str = "MarketPrice") -> dict:
    """A Close: Domain is required for every stream but MarketPrice (the login's included)."""
    return {"ID": stream, "Type": "Close", "Domain": domain}


def build_login_close(stream: int = LOGIN_STREAM) -> dict:
    return build_close(stream, "Login")


def build_request(stream: int, service: str, ric: str, *, domain: str = "MarketPrice",
                  streaming: bool = True, view: list | None = None) -> dict:
    """An item Request: streaming (a Refresh, then Updates) or a snapshot (one Refresh)."""
    request: dict[str, Any] = {"ID": stream, "Domain": domain, "Key": {"Service": service, "Name": ric}}
    if not streaming:
        request["Streaming"] = False
    if view:
        request["View"] = view
    return request


def build_post(post_id: int, service: str, ric: str, fields: dict[str, Any], *,
               refresh: bool = False, domain: str = "MarketPrice",
               post_user_info: dict | None = None, stream: int = LOGIN_STREAM) -> dict:
    """A Post asking for an Ack: off-stream (on the login stream, with the item's Key) by default,
    on-stream (on an open item stream, which names the item) when stream is that stream's ID."""
    message: dict[str, Any] = {"ID": 0, "Type": "Refresh" if refresh else "Update", "Domain": domain}
    if refresh:
        message["Solicited"] = False
        message["State"] = {"Stream": "Open", "Data": "Ok"}
    message["Fields"] = fields
    post: dict[str, Any] = {"ID": stream, "Type": "Post", "Domain": domain, "Ack": True, "PostID": post_id}
    if stream == LOGIN_STREAM:
        post["Key"] = {"Service": service, "Name": ric}
    if post_user_info:
        post["PostUserInfo"] = post_user_info
    post["Message"] = message
    return post


def encode(msg: dict | list) -> str:
    return json.dumps(msg, separators=(",", ":"))


# Events: everything the reader thread hands to the main thread. Immutable
# records (NamedTuple: cheaper to define at start-up than dataclasses).

class Opened(NamedTuple):
    pass


class LoginAccepted(NamedTuple):
    text: str
    attributes: dict[str, Any]     # Key.Elements and the top-level Elements together

    @property
    def ping_timeout(self) -> int | None:
        return self.attributes.get("PingTimeout")


class LoginDenied(NamedTuple):
    stream_state: str
    data_state: str
    code: str
    text: str


class Acked(NamedTuple):
    ack_id: Any
    text: str


class Nakked(NamedTuple):
    ack_id: Any
    code: str
    text: str


class AckBatch(NamedTuple):
    """Positive Acks with no Text, as one event per frame: the bulk fast path."""
    ack_ids: list


class ServerError(NamedTuple):
    stream: Any
    text: str
    post_id: int | None             # read from Debug.Message when it is one of our posts


class PingReceived(NamedTuple):
    pass


class Other(NamedTuple):
    msg: Any


class ItemRefresh(NamedTuple):
    """A Refresh on an item stream: the item's whole image."""
    stream: Any
    state: dict                     # the ADS's State object: Stream, Data, Code, Text
    fields: dict
    post_user_info: dict | None     # the last poster, when the ADS tells


class ItemUpdate(NamedTuple):
    stream: Any
    fields: dict
    post_user_info: dict | None


class ItemStatus(NamedTuple):
    stream: Any
    state: dict


class Closed(NamedTuple):
    code: int | None
    reason: str
    error: BaseException | None     # what ended the connection, when it was not a close frame


class Failure(NamedTuple):
    error: BaseException            # raised inside a callback: handled by the main thread


class Interrupted(NamedTuple):
    pass


POST_OUTCOMES = (Acked, AckBatch, Nakked, ServerError)

Event = (Opened | LoginAccepted | LoginDenied | Acked | AckBatch | Nakked | ServerError
         | ItemRefresh | ItemUpdate | ItemStatus | PingReceived | Other | Closed | Failure | Interrupted)

# Stream states after which no more messages come on the stream.
CLOSED_STREAM_STATES = {"NonStreaming", "ClosedRecover", "Closed", "Redirected"}


def classify(msg: Any) -> Event:
    """Turn one inbound tr_json2 message into an event."""
    if not isinstance(msg, dict):
        raise ProtocolViolation(f"the server sent a message that is not a JSON object: {msg!r:.200}")
    mtype = msg.get("Type")
    if mtype == "Ping":
        return PingReceived()
    if msg.get("Domain") == "Login" and mtype in ("Refresh", "Status"):
        state = msg.get("State") or {}
        if state.get("Stream") == "Open" and state.get("Data", "Ok") == "Ok":
            if mtype == "Refresh":
                attributes = dict((msg.get("Key") or {}).get("Elements") or {})
                attributes.update(msg.get("Elements") or {})
                return LoginAccepted(state.get("Text", ""), attributes)
            return Other(msg)
        return LoginDenied(state.get("Stream", ""), state.get("Data", ""),
                           state.get("Code", "None"), state.get("Text", ""))
    if mtype == "Ack":
        if msg.get("NakCode") not in (None, "None", 0):
            return Nakked(msg.get("AckID"), str(msg["NakCode"]), msg.get("Text", ""))
        return Acked(msg.get("AckID"), msg.get("Text", ""))
    if mtype == "Error":
        return ServerError(msg.get("ID"), msg.get("Text", ""), offending_post_id(msg))
    if msg.get("Domain") != "Login":
        if mtype == "Refresh":
            return ItemRefresh(msg.get("ID"), msg.get("State") or {}, msg.get("Fields") or {},
                               msg.get("PostUserInfo"))
        if mtype == "Update":
            return ItemUpdate(msg.get("ID"), msg.get("Fields") or {}, msg.get("PostUserInfo"))
        if mtype == "Status":
            return ItemStatus(msg.get("ID"), msg.get("State") or {})
    return Other(msg)


def state_words(stream: str, data: str, code: Any = None, text: str = "") -> str:
    """A State in the ADS's own words: `Stream/Data Code "Text"` (no Code when it is None)."""
    words = f"{stream}/{data}"
    if code not in (None, "None", 0):
        words += f" {code}"
    return f"{words} {json.dumps(text)}" if text else words


def item_state_words(state: dict) -> str:
    return state_words(state.get("Stream", ""), state.get("Data", ""), state.get("Code"),
                       state.get("Text", ""))


def state_data(state: dict) -> dict:
    """An item State for --json output."""
    return {"stream": state.get("Stream"), "data": state.get("Data"),
            "code": state.get("Code", "None"), "text": state.get("Text", "")}


def offending_post_id(error: dict) -> int | None:
    """The PostID of the message an Error is about, from its Debug.Message, if it was a Post."""
    try:
        offending = json.loads((error.get("Debug") or {}).get("Message", ""))
    except (TypeError, ValueError):
        return None
    if isinstance(offending, dict) and offending.get("Type") == "Post":
        post_id = offending.get("PostID")
        return post_id if isinstance(post_id, int) else None
    return None


# ============================================================ field values

_DECIMAL = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")
_NAME = re.compile(r"-?[A-Za-z0-9_]+")


def typed_value(raw: str) -> Any:
    """A text value typed as --field and CSV cells type it: int, decimal, blank (''), else string."""
    if raw == "":
        return None
    if _DECIMAL.fullmatch(raw):               # one match for both: this runs per CSV cell
        return float(raw) if "." in raw or "e" in raw or "E" in raw else int(raw)
    return raw


def parse_field(text: str) -> tuple[str, Any]:
    """NAME=VALUE (typed: int, decimal, blank, else string) or NAME:=JSON (raw)."""
    if ":=" in text and ("=" not in text or text.index(":=") < text.index("=")):
        name, raw = text.split(":=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            raise ValueError(f"{text!r}: the value after ':=' is not JSON") from None
    elif "=" in text:
        name, raw = text.split("=", 1)
        value = typed_value(raw)
    else:
        raise ValueError(f"{text!r}: expected NAME=VALUE or NAME:=JSON")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{text!r}: {name!r} is not a field name or FID")
    return name, value


def walk(fields: dict[str, Any], rng: Any) -> dict[str, Any]:
    """Numeric fields moved by a small random step (about 0.1 %); others unchanged."""
    out = {}
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out[name] = value
        elif isinstance(value, int):
            out[name] = max(0, value + rng.choice((-1, 0, 1)))
        else:
            step = max(abs(value) * 0.001, 0.01)
            out[name] = round(value + rng.uniform(-step, step), 4)
    return out


# Reading items back (get, watch, post --verify, check).

_FID = re.compile(r"-?\d+")


class FieldNames(NamedTuple):
    """A field dictionary (--dictionary): to list fields in FID order and name posted FIDs."""
    fid_of: dict[str, int]
    name_of: dict[int, str]


def load_field_names(path: str) -> FieldNames:
    """The acronyms and FIDs of an RDMFieldDictionary: `ACRONYM "DDE NAME" FID ...` lines, `!` comments."""
    fid_of: dict[str, int] = {}
    try:
        with open(path, encoding="latin-1") as f:
            for number, line in enumerate(f, 1):
                if not line.strip() or line.startswith("!"):
                    continue
                match = re.match(r'\s*(\S+)\s+"[^"]*"\s+(-?\d+)\s', line)
                if not match:
                    raise UsageProblem(f"--dictionary {path}:{number}: not an RDMFieldDictionary line")
                fid_of[match[1]] = int(match[2])
    except OSError as exc:
        raise UsageProblem(f"--dictionary: cannot read {path}: {exc.strerror or exc}") from None
    return FieldNames(fid_of, {fid: name for name, fid in fid_of.items()})


def field_name(key: str, names: FieldNames | None) -> str | None:
    """The name a field comes back under: a FID is named through the dictionary, if there is one."""
    if not _FID.fullmatch(key):
        return key
    return names.name_of.get(int(key)) if names else None


def view_of(fields: tuple[str, ...], names: FieldNames | None) -> list[str | int] | None:
    """A Request's View for --field NAME|FID ...: names where the dictionary knows them, FIDs as
    numbers. An OMM array holds one type, so names and unnamed FIDs cannot be mixed."""
    view = [field_name(f, names) or int(f) for f in fields]
    if len({type(v) for v in view}) > 1:
        raise UsageProblem("--field: give names or FIDs, not both (or --dictionary to name the FIDs)")
    return view or None


def in_fid_order(fields: dict[str, Any], names: FieldNames | None) -> list[tuple[str, Any]]:
    """Fields in FID order when the dictionary is known (unknown names last), else as the ADS sent them."""
    if names is None:
        return list(fields.items())
    last = float("inf")
    return sorted(fields.items(), key=lambda item: names.fid_of.get(item[0], last))


def render_value(value: Any) -> str:
    """A field value as JSON: strings quoted, blank as null, so 42 and "42" stay distinct."""
    return json.dumps(value, ensure_ascii=False)


def render_fields(pairs: Iterable[tuple[str, Any]]) -> str:
    return " ".join(f"{name}={render_value(value)}" for name, value in pairs)


class Mismatch(NamedTuple):
    """A posted field that did not read back as posted."""
    field: str
    posted: Any
    read: Any
    present: bool                   # False: the field is not in the item at all

    def render(self) -> str:
        read = render_value(self.read) if self.present else "(absent)"
        return f"{self.field} posted {render_value(self.posted)}, read {read}"


def same_value(posted: Any, read: Any) -> bool:
    """Equal, numbers within a relative 1e-9 (the ADS stores Reals with a decimal hint)."""
    numbers = (int, float)
    if isinstance(posted, numbers) and isinstance(read, numbers) \
            and not isinstance(posted, bool) and not isinstance(read, bool):
        return abs(posted - read) <= 1e-9 * max(abs(posted), abs(read)) or posted == read
    return posted == read


def compare_fields(posted: dict[str, Any], read: dict[str, Any],
                   names: FieldNames | None = None) -> tuple[list[Mismatch], list[str]]:
    """Posted fields against the item read back: the mismatches, and the FIDs that cannot be
    checked (posted by number with no dictionary to name them)."""
    mismatches, unverified = [], []
    for key, value in posted.items():
        name = field_name(key, names)
        if name is None:
            unverified.append(key)
        elif name not in read:
            mismatches.append(Mismatch(key, value, None, False))
        elif not same_value(value, read[name]):
            mismatches.append(Mismatch(key, value, read[name], True))
    return mismatches, unverified


def describe_poster(info: dict | None) -> str:
    if not info:
        return "unknown"
    return f"{info.get('Address')}, UserID {info.get('UserID')}"


# ============================================================= bulk input
# `post --file`: CSV or JSON Lines, read as a stream of Row (or BadRow) items.

class Row(NamedTuple):
    line: int
    ric: str
    service: str | None                # None: --service or the config
    refresh: bool | None               # None: --refresh decides
    fields: dict[str, Any]
    raw: Any                           # as read: the CSV cells, or the JSON line (for --failed-out)


class BadRow(NamedTuple):
    line: int
    text: str


class EndOfInput(NamedTuple):
    error: str | None                  # why reading stopped early, if it did


def parse_type(value: Any) -> bool | None:
    """A row's TYPE/type: Refresh -> True, Update -> False, empty -> None."""
    if value in (None, ""):
        return None
    if isinstance(value, str) and value.lower() in ("refresh", "update"):
        return value.lower() == "refresh"
    raise ValueError(f"type {value!r} is not Refresh or Update")


def csv_rows(lines: Iterator[str], header_out: list[str] | None = None) -> Iterator[Row | BadRow]:
    """Rows of a CSV with a header: RIC, optional SERVICE and TYPE, then one column per field.

    The header as read is also added to header_out (for --failed-out).
    """
    import csv

    reader = csv.reader(lines)
    raw_header = next(reader, [])
    if header_out is not None:
        header_out.extend(raw_header)
    header = [h.strip() for h in raw_header]
    upper = [h.upper() for h in header]
    if "RIC" not in upper:
        yield BadRow(1, "the CSV header has no RIC column")
        return
    special = {name: upper.index(name) for name in ("RIC", "SERVICE", "TYPE") if name in upper}
    columns = [(i, name) for i, name in enumerate(header) if i not in special.values()]
    for i, name in columns:
        if not _NAME.fullmatch(name):
            yield BadRow(1, f"header column {i + 1} {name!r} is not a field name or FID")
            return
    ric_at, service_at, type_at = special["RIC"], special.get("SERVICE"), special.get("TYPE")
    for cells in reader:
        line = reader.line_num
        if not cells:
            continue
        if len(cells) != len(header):
            yield BadRow(line, f"{len(cells)} cells where the header has {len(header)}")
            continue
        ric = cells[ric_at].strip()
        if not ric:
            yield BadRow(line, "no RIC")
            continue
        try:
            refresh = parse_type(cells[type_at].strip()) if type_at is not None else None
        except ValueError as exc:
            yield BadRow(line, str(exc))
            continue
        service = cells[service_at].strip() or None if service_at is not None else None
        yield Row(line, ric, service, refresh, {name: typed_value(cells[i]) for i, name in columns}, cells)


def jsonl_rows(lines: Iterator[str]) -> Iterator[Row | BadRow]:
    """Rows of JSON Lines: {"ric": ..., "service": ..., "type": "Refresh"|"Update", "fields": {...}}."""
    for line, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            yield BadRow(line, f"not JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield BadRow(line, "not a JSON object")
            continue
        ric, service, fields = obj.get("ric"), obj.get("service"), obj.get("fields")
        problem = ("no ric" if not isinstance(ric, str) or not ric else
                   "service is not a string" if service is not None and not isinstance(service, str) else
                   "fields is not an object" if not isinstance(fields, dict) else None)
        if problem is None:
            try:
                refresh = parse_type(obj.get("type"))
            except ValueError as exc:
                problem = str(exc)
        if problem:
            yield BadRow(line, problem)
            continue
        yield Row(line, ric, service or None, refresh, fields, text.rstrip("\r\n"))


def input_format(path: str, fmt: str | None) -> str:
    """csv or jsonl: --format, else the file's extension; stdin is CSV unless --format says."""
    if fmt:
        return fmt
    return "jsonl" if path.lower().endswith((".jsonl", ".ndjson", ".json")) else "csv"


# ========================================================= ack bookkeeping

class Outcome(NamedTuple):
    """How one post ended: status is ack, nak, error, timeout or lost."""
    status: str
    service: str
    ric: str
    post_id: int
    nak_code: str | None = None
    text: str | None = None
    line: int | None = None            # the input line, for posts read from a file

    def render(self) -> str:
        words = [self.status.upper(), self.service, self.ric, f"post {self.post_id}"]
        if self.line is not None:
            words.append(f"line {self.line}")
        if self.nak_code:
            words.append(self.nak_code)
        if self.text:
            words.append(json.dumps(self.text))
        return " ".join(words)

    def data(self) -> dict:
        """The --json form: every field that is set."""
        return {k: v for k, v in self._asdict().items() if v is not None}

    def hint_key(self) -> str | None:
        """The HINTS key for this outcome: its NakCode, or UnexpectedFID for that ADS Error."""
        if self.status == "error" and self.text and "Unexpected FID" in self.text:
            return "UnexpectedFID"
        return self.nak_code


class Pending(NamedTuple):
    service: str
    ric: str
    deadline: float
    message: dict | None = None        # the Post as sent, kept to send again after a reconnect


class Ledger:
    """Posts awaiting an Ack, by PostID. Owned by the main thread only, so it needs no lock."""

    def __init__(self) -> None:
        self.pending: dict[int, Pending] = {}
        self.counts: dict[str, int] = {}        # outcomes by status
        self.resent = 0
        self._ids = itertools.count(1)

    def add(self, service: str, ric: str, deadline: float, message: dict | None = None) -> int:
        """A new pending post; its PostID is also written into message."""
        post_id = next(self._ids)
        if message is not None:
            message["PostID"] = post_id
        self.pending[post_id] = Pending(service, ric, deadline, message)
        return post_id

    def resend(self, deadline: float) -> list[dict]:
        """Every pending post's message, oldest first, each with a fresh ack deadline."""
        for post_id, post in self.pending.items():
            self.pending[post_id] = post._replace(deadline=deadline)
        self.resent += len(self.pending)
        return [post.message for post in self.pending.values() if post.message is not None]

    def resolve(self, post_id: Any, status: str, nak_code: str | None = None,
                text: str | None = None) -> Outcome | None:
        """The outcome for post_id, or None when it is not pending (unknown or already ended)."""
        post = self.pending.pop(post_id, None) if isinstance(post_id, int) else None
        if post is None:
            return None
        self.counts[status] = self.counts.get(status, 0) + 1
        return Outcome(status, post.service, post.ric, post_id, nak_code, text)

    # Every post of a session has the same ack timeout, so deadlines rise in
    # insertion order and the oldest pending post is always the next to expire.

    def expire(self, now: float) -> list[Outcome]:
        late = list(itertools.takewhile(lambda pid: self.pending[pid].deadline <= now, self.pending))
        return [self.resolve(pid, "timeout", text="no ack within the ack timeout") for pid in late]

    def fail_all(self, status: str, text: str) -> list[Outcome]:
        return [self.resolve(pid, status, text=text) for pid in list(self.pending)]

    def next_deadline(self) -> float | None:
        return next(iter(self.pending.values())).deadline if self.pending else None

    def exit_code(self, interrupted: bool = False) -> Exit:
        """0 only when every post was acknowledged; 130 for an interrupted session that was not."""
        if interrupted and set(self.counts) - {"ack"}:
            return Exit.INTERRUPTED
        if self.counts.get("nak") or self.counts.get("error"):
            return Exit.REJECTED
        if self.counts.get("timeout"):
            return Exit.TIMEOUT
        if self.counts.get("lost"):
            return Exit.CONNECT
        return Exit.OK

    def summary(self) -> str:
        total = sum(self.counts.values())
        parts = [f"{self.counts.get(s, 0)} {label}" for s, label in
                 (("ack", "acknowledged"), ("nak", "nakked"), ("error", "errored"),
                  ("timeout", "timed out"), ("lost", "not acknowledged"))]
        return f"{total} posts: " + ", ".join(parts) + f" ({self.resent} resent)"


# ============================================================= connection

class Connection:
    """A WebSocketApp on a background thread, feeding events to the session's queue.

    The reader thread answers Ping with Pong at once and turns every other
    message into an event, queued as (this connection, event).
    Callbacks never raise: an exception becomes a Failure event, and the end
    of the socket always becomes a Closed event.
    """

    def __init__(self, url: str, events: "queue.SimpleQueue[tuple[Connection | None, Event]]") -> None:
        self.url = url
        self.events = events             # the session's queue; each event says which connection
        self.last_rx = time.monotonic()  # when anything last arrived (liveness)
        self._app: Any = None
        self._sock: Any = None           # the websocket.WebSocket, kept to close its fd
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.closed = False              # set by the websocket thread when the socket is gone

    def open(self) -> None:
        """Start connecting; Opened or Closed arrives as an event."""
        import websocket                  # costly: imported only when a command connects

        self._app = websocket.WebSocketApp(
            self.url, subprotocols=[SUBPROTOCOL], header={"User-Agent": "contribute.py"},
            on_open=self._on_open, on_message=self._on_message,
            on_error=self._on_error, on_close=self._on_close)
        self._thread = threading.Thread(target=self._run, name="websocket", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._app.run_forever(skip_utf8_validation=True)
        except BaseException as exc:      # run_forever itself failed: still end with Closed
            self._error = exc
        if not self.closed:               # run_forever ended without calling on_close
            self.closed = True
            self.events.put((self, Closed(None, "", self._error)))

    # Callbacks run on the websocket thread: never block, never raise.

    def _on_open(self, app: Any) -> None:
        self._sock = app.sock
        self.last_rx = time.monotonic()
        self.events.put((self, Opened()))

    def _on_message(self, app: Any, data: bytes | str) -> None:
        self.last_rx = time.monotonic()
        try:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("< %s", data.decode("utf-8", "replace") if isinstance(data, bytes) else data)
            if not data:
                return                    # an empty frame: an obsolete keepalive, ignored
            try:
                parsed = json.loads(data)
            except ValueError as exc:
                raise ProtocolViolation(f"the server sent a frame that is not JSON ({exc})") from None
            acks: list = []                 # plain positive Acks travel as one event
            for msg in parsed if isinstance(parsed, list) else [parsed]:
                if type(msg) is dict and msg.get("Type") == "Ack" and "NakCode" not in msg \
                        and "Text" not in msg:
                    acks.append(msg.get("AckID"))
                    continue
                if acks:
                    self.events.put((self, AckBatch(acks)))
                    acks = []
                event = classify(msg)
                if isinstance(event, PingReceived):
                    self.send_text(PONG_TEXT)
                else:
                    self.events.put((self, event))
            if acks:
                self.events.put((self, AckBatch(acks)))
        except Exception as exc:
            self.events.put((self, Failure(exc)))

    def _on_error(self, app: Any, error: BaseException) -> None:
        self._error = self._error or error

    def _on_close(self, app: Any, code: int | None, reason: str | None) -> None:
        self.closed = True
        self.events.put((self, Closed(code, reason or "", self._error)))

    # Main thread.

    def send(self, msg: dict | list) -> None:
        self.send_text(encode(msg))

    def send_text(self, text: str) -> None:
        """The one way out: every frame is logged with '>' at debug level."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("> %s", text)
        try:
            self._app.send(text)
        except Exception as exc:          # websocket-client's closed-socket errors, OSError
            raise ConnectionLost(f"connection lost while sending: {exc or type(exc).__name__}") from None

    def local_address(self) -> str:
        return self._sock.sock.getsockname()[0]

    def close(self) -> None:
        """Close frame, wait for the server's close (bounded), join the thread."""
        sock = self._sock
        if self._app is None or sock is None:    # never opened: the thread ends on its own
            return
        if sock.connected and not self.closed:
            try:
                sock.send_close()
            except Exception as exc:       # the socket died under us: nothing to wait for
                log.debug("close frame not sent: %s", exc)
        self._app.keep_running = False
        if self._thread:
            self._thread.join(CLOSE_TIMEOUT)
        sock.shutdown()


# =========================================================== orchestration

class Settings(NamedTuple):
    """Connection and identity settings, built once from flags, environment and config."""
    host: str | None = None
    port: int = DEFAULT_PORT
    user: str | None = None
    app_id: str = DEFAULT_APP_ID
    position: str | None = None
    path: str = DEFAULT_PATH
    tls: bool = False
    connect_timeout: float = 10.0
    retries: int = 0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0

    def hosts(self) -> list[tuple[str, int]]:
        """--host as a list: `ads1:15000,ads2,[::1]:15001`; an entry without a port uses --port."""
        if not self.host:
            raise UsageProblem("no ADS host: give --host, CONTRIBUTE_HOST or 'host' in the config file "
                               "(or --sim for the built-in emulator)")
        hosts = []
        for entry in filter(None, (e.strip() for e in self.host.split(","))):
            if entry.startswith("["):                     # [IPv6]:port
                host, _, rest = entry[1:].partition("]")
                port = rest[1:] if rest.startswith(":") else ""
            elif entry.count(":") == 1:
                host, port = entry.split(":")
            else:                                         # a name, or a bare IPv6 address
                host, port = entry, ""
            if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
                raise UsageProblem(f"--host: {entry!r} is not HOST or HOST:PORT")
            hosts.append((host, int(port) if port else self.port))
        if not hosts:
            raise UsageProblem("--host is empty")
        return hosts

    def url_for(self, host: str, port: int) -> str:
        return f"{'wss' if self.tls else 'ws'}://{host_port(host, port)}{self.path}"


def host_port(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PostSpec(NamedTuple):
    """What to post: one item's fields to one service."""
    service: str
    ric: str
    fields: dict[str, Any]
    domain: str = "MarketPrice"
    ack_timeout: float = 10.0
    post_user_info: bool = True
    post_user_address: str | None = None
    post_user_id: int | None = None


class Reporter:
    """Outcomes on stdout (text lines or JSON lines), hints and notices on stderr."""

    def __init__(self, out: IO[str], err: IO[str], as_json: bool = False, quiet: bool = False) -> None:
        self.out, self.err, self.as_json, self.quiet = out, err, as_json, quiet

    def emit(self, text: str, data: dict) -> None:
        """One result on stdout: `data` as a JSON line with --json, else `text`."""
        self.out.write((encode(data) if self.as_json else text) + "\n")
        self.out.flush()

    def outcome(self, outcome: Outcome) -> None:
        if not (self.quiet and outcome.status == "ack"):
            self.emit(outcome.render(), outcome.data())
        self.hint(outcome.hint_key())

    def result(self, text: str, data: dict, success: bool) -> None:
        if not (self.quiet and success):
            self.emit(text, data)

    def hint(self, key: Any, hints: dict[str, str] = HINTS) -> None:
        if key in hints and not self.quiet:
            self.err.write(f"hint: {hints[key]}\n")

    def notice(self, text: str) -> None:
        if not self.quiet:
            self.err.write(f"{text}\n")

    def event(self, kind: str, message: str, **data: Any) -> None:
        """A session event (reconnect, login retry): a JSON line with --json, else a stderr line."""
        if self.as_json:
            self.emit("", {"event": kind, **data})
        else:
            self.notice(f"contribute: {message}")


class Session:
    """One contributing session: connection, login, ledger. Used by the main thread only.

    With recover=True (long-running commands) a lost connection is not the
    end: recover() backs off, reconnects through the host list, logs in again
    and resends every post still pending, keeping its PostID.
    """

    def __init__(self, settings: Settings, reporter: Reporter, *, recover: bool = False,
                 resend: bool = True, window: int | None = None, ack_timeout: float = 10.0) -> None:
        self.settings = settings
        self.ack_timeout = ack_timeout           # for posts sent again after a reconnect
        self.hosts = settings.hosts()            # validated now: a usage error before any I/O
        self.reporter = reporter
        self.recover_enabled = recover
        self.resend_enabled = resend
        self.window = window
        # SimpleQueue: its put() is reentrant, so the signal handler may use it too.
        self.events: queue.SimpleQueue[tuple[Connection | None, Event]] = queue.SimpleQueue()
        self.conn: Connection | None = None
        self.where = ""                          # host:port of the current connection
        self.ledger = Ledger()
        self.login: LoginAccepted | None = None
        self.interrupts = 0
        self._pinged_at = 0.0
        self._post_user_info: dict | None = None
        self._rng: Any = None
        self._saved_handlers: dict[int, Any] = {}
        self.on_other: Callable[[Any], None] | None = None   # events that are not the protocol's
        self.login_request: dict | None = None   # the Login as last sent (who we are)
        # Item streams: each open stream's handler, and the Requests to send again after a
        # reconnect (streaming ones only). Stream IDs follow the login's.
        self.items: dict[int, Callable[[Any], None]] = {}
        self.item_requests: dict[int, dict] = {}
        self._stream_ids = itertools.count(LOGIN_STREAM + 1)

    def __enter__(self) -> "Session":
        self._catch_signals()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """The one shutdown path: login Close, close the socket, report what is still pending."""
        try:
            self._disconnect(logout=True)
        finally:
            for outcome in self.ledger.fail_all("lost", "not acknowledged before the session ended"):
                self.reporter.outcome(outcome)
            self._restore_signals()

    def _disconnect(self, logout: bool) -> None:
        conn, self.conn = self.conn, None        # from now on its events are stale
        if conn is None:
            return
        if logout and self.login is not None and not conn.closed:
            try:
                conn.send(build_login_close())
            except ContributeError as exc:
                log.debug("login Close not sent: %s", exc)
        self.login = None
        conn.close()

    # Signals: SIGINT and SIGTERM become an Interrupted event on the queue the
    # main thread waits on, so it wakes at once, whatever it was waiting for.
    def _catch_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            self.events.put((None, Interrupted()))
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved_handlers[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        for sig, old in self._saved_handlers.items():
            signal.signal(sig, old)

    def next_event(self, deadline: float | None) -> Event | None:
        """The next event of the current connection (or a signal), None at the deadline.

        An Ack, Nak or Error names its post, so it counts whichever connection
        brought it; an earlier connection's other events (its close, say) are
        dropped.
        """
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                source, event = self.events.get(timeout=timeout)
            except queue.Empty:
                return None
            if source is None or source is self.conn or isinstance(event, POST_OUTCOMES):
                return event                     # else: an earlier connection's state, now stale

    # -- connect and log in

    def connect(self) -> LoginAccepted:
        """Log in through the first host that accepts; --retries more rounds of the list.

        With one host and no retries the error is that host's own; otherwise
        it names every host and why it failed.
        """
        failures = []
        rounds = self.settings.retries + 1
        delays = self.backoff()
        for round_number in range(rounds):
            for host, port in self.hosts:
                try:
                    return self._open(host, port)
                except LoginRefused as exc:
                    if exc.state is None or exc.state.stream_state != "ClosedRecover":
                        raise                    # a real denial: another host will say the same
                    error: ContributeError = exc
                except (ConnectFailed, Timeout) as exc:
                    error = exc
                if len(self.hosts) == 1 and rounds == 1:
                    raise error
                failures.append(f"{host}:{port} ({error})")
                log.info("%s:%s failed: %s", host, port, error)
            if round_number + 1 < rounds and not self.pause(next(delays)):
                raise KeyboardInterrupt
        raise ConnectFailed("could not log in to any ADS: " + "; ".join(failures),
                            "check --host, --port and that the ADS is up")

    def _open(self, host: str, port: int) -> LoginAccepted:
        """Connect to one host and log in, within --connect-timeout.

        On failure the connection is closed at once, so that nothing it still
        delivers is mistaken for news of the next attempt.
        """
        self._disconnect(logout=False)
        self.where = f"{host}:{port}"
        self.conn = Connection(self.settings.url_for(host, port), self.events)
        try:
            return self._login(self.conn)
        except BaseException:
            self._disconnect(logout=False)
            raise

    def _login(self, conn: Connection) -> LoginAccepted:
        s = self.settings
        deadline = time.monotonic() + s.connect_timeout
        log.info("connecting to %s", conn.url)
        conn.open()
        event = self.next_event(deadline)
        if event is None:
            raise ConnectFailed(f"could not connect to {self.where} within {s.connect_timeout:g}s",
                                "check --host and --port, and that no firewall drops the traffic")
        if isinstance(event, Interrupted):
            raise KeyboardInterrupt
        if isinstance(event, Closed):
            raise connect_error(event, self.where, conn.url)
        if not isinstance(event, Opened):
            raise ProtocolViolation(f"unexpected event before the connection opened: {event}")
        position = s.position or f"{conn.local_address()}/{socket.gethostname()}"
        user = s.user or default_user()
        login = self.login_request = build_login(user, s.app_id, position)
        log.info("logging in as %s (ApplicationId %s, Position %s)", user, s.app_id, position)
        conn.send(login)
        delays = self.backoff()
        while True:
            event = self.next_event(deadline)
            if event is None:
                raise Timeout(f"no login response from {self.where} within {s.connect_timeout:g}s")
            if isinstance(event, LoginAccepted):
                self.login = event
                self._pinged_at = 0.0
                if event.attributes.get("SupportOMMPost", 1) != 1:
                    log.warning("the ADS does not announce SupportOMMPost: posts may be refused")
                return event
            if isinstance(event, LoginDenied):
                delay = next(delays)
                if event.stream_state != "ClosedRecover" or time.monotonic() + delay >= deadline:
                    raise LoginRefused(login_error(event), HINTS.get(event.code), event)
                self.reporter.event("login_retry", f"login: {describe_state(event)}; "
                                    f"logging in again in {delay:.1f}s", where=self.where,
                                    code=event.code, text=event.text, delay=round(delay, 3))
                if not self.pause(delay):
                    raise KeyboardInterrupt
                conn.send(login)
            elif isinstance(event, Interrupted):
                raise KeyboardInterrupt
            else:
                self.dispatch(event)

    def backoff(self) -> Iterator[float]:
        """Exponential backoff with jitter: from --reconnect-min (at most 0.5 s) doubling to the cap."""
        if self._rng is None:
            import random                     # kept off the start-up path of one-shot commands
            self._rng = random.Random()
        delay = self.settings.reconnect_min
        while True:
            yield delay / 2 + self._rng.uniform(0, delay / 2)
            delay = min(self.settings.reconnect_max, delay * 2)

    def pause(self, seconds: float) -> bool:
        """Wait while still handling events; False when interrupted."""
        until = time.monotonic() + seconds
        while True:
            event = self.next_event(until)
            if event is None:
                return True
            if isinstance(event, Interrupted):
                self.interrupts += 1
                return False
            self.dispatch(event)

    def recover(self, reason: str) -> None:
        """Back off, reconnect (cycling through the hosts), log in and resend what is pending."""
        start = next((i for i, h in enumerate(self.hosts) if f"{h[0]}:{h[1]}" == self.where), -1)
        self.reporter.event("disconnected", f"{reason} ({self.where})",
                            where=self.where, reason=reason, pending=len(self.ledger.pending))
        self._disconnect(logout=False)
        if not self.resend_enabled:
            for outcome in self.ledger.fail_all("lost", reason):
                self.reporter.outcome(outcome)
        delays = self.backoff()
        for attempt in itertools.count(1):
            host, port = self.hosts[(start + attempt) % len(self.hosts)]
            delay = next(delays)
            self.reporter.event("reconnecting", f"reconnecting to {host}:{port} in {delay:.2f}s "
                                f"(attempt {attempt})", where=f"{host}:{port}", delay=round(delay, 3),
                                attempt=attempt)
            if not self.pause(delay):
                for outcome in self.ledger.fail_all("lost", f"interrupted while reconnecting: {reason}"):
                    self.reporter.outcome(outcome)
                return
            try:
                self._open(host, port)
                messages = self.ledger.resend(time.monotonic() + self.ack_timeout)
                self.send_posts(messages)         # oldest first, before anything new
                requests = list(self.item_requests.values())    # item streams open again (watch)
                for i in range(0, len(requests), self.PER_FRAME):  # frames well under MaxMsgSize
                    self.conn.send(requests[i:i + self.PER_FRAME])
            except LoginRefused as exc:
                if exc.state is None or exc.state.stream_state != "ClosedRecover":
                    raise
                log.info("%s:%s: %s", host, port, exc)
            except (ConnectFailed, Timeout) as exc:  # ConnectionLost too: lost again while resending
                log.info("%s:%s: %s", host, port, exc)
                self._disconnect(logout=False)       # its late events must not reach the next pause
            else:
                self.reporter.event("reconnected", f"reconnected to {self.where}; resent "
                                    f"{len(messages)} posts", where=self.where, resent=len(messages))
                return

    # -- posts

    def post(self, spec: PostSpec, fields: dict[str, Any], refresh: bool, stream: int = LOGIN_STREAM) -> int:
        """Send one post (waiting first while --window posts are in flight); off-stream unless
        stream is an open item stream."""
        while self.window and len(self.ledger.pending) >= self.window and not self.interrupts:
            self.wait(None)
        message = build_post(0, spec.service, spec.ric, fields, refresh=refresh, domain=spec.domain,
                             post_user_info=self.post_user_info(spec), stream=stream)
        post_id = self.ledger.add(spec.service, spec.ric, time.monotonic() + spec.ack_timeout, message)
        try:
            self.conn.send(message)
        except ConnectionLost as exc:
            if not self.recover_enabled:
                raise
            self.recover(str(exc))               # resends this post too
        return post_id

    PER_FRAME = 100                              # posts packed into one frame, at most

    def send_posts(self, messages: list[dict]) -> None:
        """Send posts packed into frames of PER_FRAME, each within the login's MaxMsgSize."""
        for i in range(0, len(messages), self.PER_FRAME):
            self._send_frame(messages[i:i + self.PER_FRAME])

    def _send_frame(self, messages: list[dict]) -> None:
        limit = int(self.login.attributes.get("MaxMsgSize") or 61430) if self.login else 61430
        text = encode(messages)                  # ASCII (json escapes the rest): length is bytes
        if len(text) <= limit:
            self.conn.send_text(text)
        elif len(messages) == 1:
            self.settle(messages[0]["PostID"], "error",
                        text=f"the post is larger than the ADS's MaxMsgSize ({limit} bytes)")
        else:
            half = len(messages) // 2
            self._send_frame(messages[:half])
            self._send_frame(messages[half:])

    def post_user_info(self, spec: PostSpec) -> dict | None:
        """PostUserInfo for this session's posts, worked out once."""
        if not spec.post_user_info:
            return None
        if self._post_user_info is None:
            address = spec.post_user_address or ipv4_of(self.conn.local_address())
            user_id = spec.post_user_id if spec.post_user_id is not None else os.getpid()
            self._post_user_info = {"Address": address, "UserID": user_id} if address else {}
        return self._post_user_info or None

    def wait(self, until: float | None) -> Event | None:
        """Handle one event, expire overdue posts and keep the connection alive.

        Returns the event, or None at a deadline. A lost connection is
        recovered from when the session recovers, else it raises.
        """
        try:
            return self._wait(until)
        except ConnectionLost as exc:
            if self.interrupts:                  # stopping anyway: what is pending is lost
                for outcome in self.ledger.fail_all("lost", str(exc)):
                    self.reporter.outcome(outcome)
                return None
            if not self.recover_enabled:
                raise
            self.recover(str(exc))
            return None

    BURST = 256                                  # events handled per wait, when they are queued

    def _wait(self, until: float | None) -> Event | None:
        deadlines = [d for d in (until, self.ledger.next_deadline(), self._liveness()) if d is not None]
        event = self.next_event(min(deadlines) if deadlines else None)
        last, handled = event, 0
        while event is not None:                 # then what is already queued, up to BURST
            self.dispatch(event)
            last, handled = event, handled + 1
            if isinstance(event, Interrupted) or handled >= self.BURST:
                break
            event = self.next_event(0)
        if self.ledger.pending and self.ledger.next_deadline() <= time.monotonic():
            for outcome in self.ledger.expire(time.monotonic()):
                self.reporter.outcome(outcome)
        return last

    def _liveness(self) -> float | None:
        """Ping after PingTimeout/3 of silence; ConnectionLost after PingTimeout; the next check time."""
        timeout = self.login.ping_timeout if self.login else None
        if not timeout or self.conn is None:
            return None
        now, last_rx = time.monotonic(), self.conn.last_rx
        if now - last_rx >= timeout:
            raise ConnectionLost(f"nothing received from {self.where} for {timeout}s (PingTimeout)")
        if self._pinged_at > last_rx:
            return last_rx + timeout
        if now - last_rx >= timeout / 3:
            self.conn.send_text(PING_TEXT)
            self._pinged_at = now
            return last_rx + timeout
        return last_rx + timeout / 3

    # -- item streams (get, watch, post --on-stream, read-backs)

    def request(self, service: str, ric: str, domain: str, handler: Callable[[Any], None], *,
                streaming: bool = True, view: list | None = None) -> int:
        """Open an item stream; its Refresh, Updates and Status go to handler. The stream's ID."""
        stream = next(self._stream_ids)
        if view and self.login and self.login.attributes.get("SupportViewRequests") != 1:
            log.info("the ADS does not announce SupportViewRequests: requesting every field")
            view = None
        request = build_request(stream, service, ric, domain=domain, streaming=streaming, view=view)
        self.items[stream] = handler
        if streaming:
            self.item_requests[stream] = request
        self.conn.send(request)
        return stream

    def close_item(self, stream: int, domain: str, *, send: bool = True) -> None:
        """Forget an item stream; send its Close unless the ADS closed it (send=False)."""
        self.items.pop(stream, None)
        self.item_requests.pop(stream, None)
        if send and self.conn and not self.conn.closed:
            self.conn.send(build_close(stream, domain))

    def first_reply(self, service: str, ric: str, domain: str, timeout: float, *, streaming: bool,
                    view: list | None = None) -> tuple[int, "ItemRefresh | ItemStatus"]:
        """Request an item and wait for its Refresh or a Status that closes it (an open Status,
        such as Open/Suspect, is only a notice). Timeout when neither comes in time."""
        replies: list[ItemRefresh | ItemStatus] = []

        def keep(event: Any) -> None:
            if replies or isinstance(event, ItemUpdate):
                return                           # the stream's later traffic (post --on-stream)
            if isinstance(event, ItemRefresh) or event.state.get("Stream") in CLOSED_STREAM_STATES:
                replies.append(event)
            else:
                log.info("%s %s: %s", service, ric, item_state_words(event.state))

        stream = self.request(service, ric, domain, keep, streaming=streaming, view=view)
        deadline = time.monotonic() + timeout
        while not replies and time.monotonic() < deadline:
            self.wait(deadline)
            if self.interrupts:
                raise KeyboardInterrupt
        if not replies:
            self.close_item(stream, domain)
            raise Timeout(f"no reply to the request for {service} {ric} within {timeout:g}s")
        reply = replies[0]
        if reply.state.get("Stream") in CLOSED_STREAM_STATES:
            self.close_item(stream, domain, send=False)
        return stream, reply

    def snapshot(self, service: str, ric: str, domain: str, timeout: float,
                 view: list | None = None) -> "ItemRefresh | ItemStatus":
        """The item's image now: a non-streaming request."""
        stream, reply = self.first_reply(service, ric, domain, timeout, streaming=False, view=view)
        if stream in self.items:                 # the ADS left it open after all: Close it
            self.close_item(stream, domain)
        return reply

    def drain(self) -> None:
        """Wait until no post is pending (each has its own ack deadline)."""
        while self.ledger.pending:
            if isinstance(self.wait(None), Interrupted) and self.interrupts > 1:
                return

    def dispatch(self, event: Event) -> None:
        """Every event's effect, in one place: a handler per event type."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event)
        elif self.on_other is not None:
            self.on_other(event)

    def _on_ack_batch(self, event: AckBatch) -> None:
        for ack_id in event.ack_ids:
            self.settle(ack_id, "ack")

    def _on_acked(self, event: Acked) -> None:
        self.settle(event.ack_id, "ack")

    def _on_nakked(self, event: Nakked) -> None:
        self.settle(event.ack_id, "nak", event.code, event.text)

    def _on_server_error(self, event: ServerError) -> None:
        post_id = event.post_id
        if post_id is None and len(self.ledger.pending) == 1:
            post_id = next(iter(self.ledger.pending))
        if post_id is None or not self.settle(post_id, "error", text=event.text):
            log.error("the ADS sent an Error on stream %s: %s", event.stream, event.text)

    def _on_login_denied(self, event: LoginDenied) -> None:
        if event.stream_state == "ClosedRecover" and self.recover_enabled:
            raise ConnectionLost(f"login stream closed: {describe_state(event)}")
        raise LoginRefused(login_error(event, during_session=True), HINTS.get(event.code), event)

    def _on_closed(self, event: Closed) -> None:
        raise ConnectionLost(f"connection lost: {describe_close(event)}")

    def _on_failure(self, event: Failure) -> None:
        if isinstance(event.error, ContributeError):
            raise event.error
        raise ProtocolViolation(f"failure in the websocket thread: {event.error!r}")

    def _on_interrupted(self, event: Interrupted) -> None:
        self.interrupts += 1
        log.info("interrupted: no new posts")

    def _on_item(self, event: Any) -> None:
        handler = self.items.get(event.stream)
        if handler is not None:
            handler(event)
        else:
            log.debug("ignored: %s on stream %s, which is not open", type(event).__name__, event.stream)

    def _on_other(self, event: Other) -> None:
        log.debug("ignored: %s", event.msg)

    _handlers: dict[type, Callable[["Session", Any], None]] = {
        AckBatch: _on_ack_batch, Acked: _on_acked, Nakked: _on_nakked, ServerError: _on_server_error,
        LoginDenied: _on_login_denied, Closed: _on_closed, Failure: _on_failure,
        Interrupted: _on_interrupted, Other: _on_other,
        ItemRefresh: _on_item, ItemUpdate: _on_item, ItemStatus: _on_item}

    def settle(self, post_id: Any, status: str, code: str | None = None, text: str | None = None) -> bool:
        outcome = self.ledger.resolve(post_id, status, code, text)
        if outcome is None:
            log.warning("an Ack for unknown or already ended post %r was ignored", post_id)
            return False
        self.reporter.outcome(outcome)
        return True


def default_user() -> str:
    import getpass
    try:
        return getpass.getuser()
    except Exception:
        return "contribute"


def ipv4_of(address: str) -> str | None:
    """The local address as the IPv4 string PostUserInfo needs, or None (the ADS has no IPv6)."""
    if address.startswith("::ffff:"):
        address = address[7:]
    if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", address):
        return address
    log.warning("local address %s is not IPv4: PostUserInfo is left out", address)
    return None


def describe_close(event: Closed) -> str:
    if event.error is not None:
        return f"{type(event.error).__name__}: {event.error}" if str(event.error) else type(event.error).__name__
    if event.code is not None:
        return f"closed by the server (code {event.code}{', ' + event.reason if event.reason else ''})"
    return "closed"


def connect_error(event: Closed, where: str, url: str) -> ContributeError:
    """A one-line, hinted error for a connection that never opened."""
    error = event.error
    status = getattr(error, "status_code", None)
    if isinstance(error, socket.gaierror) or type(error).__name__ == "WebSocketAddressException":
        return ConnectFailed(f"cannot resolve the host of {where}: {error}", "check --host")
    if isinstance(error, UnicodeError):                  # Python's IDNA check of the name
        return ConnectFailed(f"{where}: not a valid host name ({error})", "check --host")
    if is_tls_error(error):
        return ConnectFailed(f"TLS with {where} failed: {error}", TLS_HINT)
    if isinstance(error, ConnectionRefusedError):
        return ConnectFailed(f"nothing is listening at {where} (connection refused)",
                             "check --host and --port: the ADS WebSocket port is often 15000")
    if status is not None:
        return ConnectFailed(f"the server at {where} refused the WebSocket upgrade on {url}: HTTP {status}",
                             f"check --path (usually /WebSocket) and that the port is an ADS "
                             f"WebSocket port accepting subprotocol {SUBPROTOCOL}")
    if error is not None and "subprotocol" in str(error).lower():
        return ConnectFailed(f"the server at {where} did not accept subprotocol {SUBPROTOCOL}: {error}")
    return ConnectFailed(f"could not connect to {where}: {describe_close(event)}",
                         "is this an ADS WebSocket port? (--tls if it needs wss://)")


TLS_HINT = "an untrusted certificate? add its CA with SSL_CERT_FILE=ca.pem (or drop --tls for ws://)"


def is_tls_error(error: BaseException | None) -> bool:
    """An ssl.SSLError (its module is imported only by a --tls connection)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(error, ssl.SSLError)


def login_error(event: LoginDenied, during_session: bool = False) -> str:
    what = "the login stream was closed by the ADS" if during_session else "login denied by the ADS"
    return f"{what}: {describe_state(event)}"


def describe_state(event: LoginDenied) -> str:
    """The ADS's own words: Stream/Data Code "Text"."""
    return f"{event.stream_state}/{event.data_state} {event.code} {json.dumps(event.text)}"


# The three commands. Each returns an exit status; errors propagate as ContributeError.

def run_login(settings: Settings, reporter: Reporter) -> Exit:
    with Session(settings, reporter) as session:
        try:
            login = session.connect()
        except LoginRefused as exc:
            denied = exc.state
            if denied is None:
                raise
            reporter.result(f"LOGIN denied {describe_state(denied)}",
                            {"status": "denied", "stream": denied.stream_state,
                             "data": denied.data_state, "code": denied.code, "text": denied.text},
                            success=False)
            reporter.hint(denied.code)
            return Exit.LOGIN
        attrs = login.attributes
        text = f"LOGIN accepted {json.dumps(login.text)} " + \
            " ".join(f"{k}={attrs.get(k)}" for k in LOGIN_ATTRIBUTES)
        reporter.result(text, {"status": "accepted", "text": login.text,
                               **{name: attrs.get(k) for k, name in LOGIN_ATTRIBUTES.items()}},
                        success=True)
    return Exit.OK


def run_post(settings: Settings, spec: PostSpec, refresh: bool, reporter: Reporter, *,
             verify: bool = False, on_stream: bool = False, names: FieldNames | None = None) -> Exit:
    """One post. on_stream: open the item's stream first and post on it; verify: after the Ack,
    read the item back and compare the fields just posted."""
    with Session(settings, reporter, ack_timeout=spec.ack_timeout) as session:
        session.connect()
        stream = open_for_posting(session, spec) if on_stream else LOGIN_STREAM
        session.post(spec, spec.fields, refresh, stream)
        session.drain()
        code = session.ledger.exit_code(interrupted=bool(session.interrupts))
        if verify and code == Exit.OK:
            code = verify_post(session, spec, reporter, names)
        if on_stream:
            session.close_item(stream, spec.domain)
    return code


def open_for_posting(session: Session, spec: PostSpec) -> int:
    """Open the item's stream for an on-stream post (waiting up to the ack timeout); its ID."""
    stream, reply = session.first_reply(spec.service, spec.ric, spec.domain, spec.ack_timeout,
                                        streaming=True)
    if reply.state.get("Stream") in CLOSED_STREAM_STATES:
        hint = ITEM_HINTS.get(reply.state.get("Code"))
        if reply.state.get("Code") == "NotFound":
            hint = "on-stream posts need an existing item: create it with an off-stream post --refresh"
        raise Rejected(f"cannot open {spec.service} {spec.ric} to post on its stream: "
                       f"{item_state_words(reply.state)}", hint)
    return stream


def item_refused(reply: "ItemRefresh | ItemStatus") -> bool:
    """The ADS answered a request by closing the stream (not found, not entitled, ...)."""
    return isinstance(reply, ItemStatus) or reply.state.get("Stream") in CLOSED_STREAM_STATES - {"NonStreaming"}


def read_back(session: Session, spec: PostSpec,
              names: FieldNames | None) -> tuple[ItemRefresh, list[Mismatch], dict[str, Any]]:
    """Snapshot the item just posted (waiting up to the ack timeout) and compare the posted fields:
    the reply, the mismatches, and the posted fields that could be checked."""
    view = [name for name in (field_name(key, names) for key in spec.fields) if name]
    reply = session.snapshot(spec.service, spec.ric, spec.domain, spec.ack_timeout, view or None)
    if item_refused(reply):
        raise Rejected(f"reading {spec.service} {spec.ric} back: {item_state_words(reply.state)}",
                       ITEM_HINTS.get(reply.state.get("Code")))
    mismatches, unverified = compare_fields(spec.fields, reply.fields, names)
    if unverified:
        session.reporter.notice(f"contribute: not verified: FID {', '.join(unverified)} "
                                "(give --dictionary to name FIDs)")
    return reply, mismatches, {k: v for k, v in spec.fields.items() if k not in unverified}


def mismatch_hint(session: Session, spec: PostSpec, reply: ItemRefresh) -> str:
    if reply.post_user_info and reply.post_user_info != session.post_user_info(spec):
        return f"the item was last posted by someone else ({describe_poster(reply.post_user_info)})"
    return ("the ADS stored another value: check the field's type in the ADS dictionary "
            "(an enum takes its number, a date YYYY-MM-DD)")


def verify_post(session: Session, spec: PostSpec, reporter: Reporter, names: FieldNames | None) -> Exit:
    """post --verify: VERIFIED, or a MISMATCH line per field (exit 5)."""
    reply, mismatches, checked = read_back(session, spec, names)
    head = f"{spec.service} {spec.ric}"
    if not mismatches:
        reporter.result(f"VERIFIED {head} {render_fields(checked.items())}",
                        {"status": "verified", "service": spec.service, "ric": spec.ric, "fields": checked},
                        success=True)
        return Exit.OK
    reporter.result("\n".join(f"MISMATCH {head} {m.render()}" for m in mismatches),
                    {"status": "mismatch", "service": spec.service, "ric": spec.ric,
                     "mismatches": [m._asdict() for m in mismatches],
                     "post_user_info": poster_data(reply.post_user_info)}, success=False)
    reporter.notice(f"hint: {mismatch_hint(session, spec, reply)}")
    return Exit.REJECTED


def poster_data(info: dict | None) -> dict | None:
    """PostUserInfo for --json output."""
    return {"address": info.get("Address"), "user_id": info.get("UserID")} if info else None


def run_get(settings: Settings, reporter: Reporter, service: str, ric: str, *, domain: str = "MarketPrice",
            fields: tuple[str, ...] = (), timeout: float = 10.0, names: FieldNames | None = None) -> Exit:
    """A snapshot of one item: its fields, State and last poster. 0 when found, 5 when the ADS
    answered with a closed Status."""
    view = view_of(fields, names)                 # a usage error before any I/O
    with Session(settings, reporter) as session:
        session.connect()
        reply = session.snapshot(service, ric, domain, timeout, view)
    head = f"{service} {ric} {item_state_words(reply.state)}"
    data: dict[str, Any] = {"service": service, "ric": ric, "state": state_data(reply.state)}
    if item_refused(reply):
        reporter.result(head, {**data, "fields": None, "post_user_info": None}, success=False)
        reporter.hint(reply.state.get("Code"), ITEM_HINTS)
        return Exit.REJECTED
    shown = reply.fields
    wanted = [field_name(f, names) for f in fields]
    if wanted and None not in wanted:        # the ADS may not apply a View: filter here too
        shown = {k: v for k, v in reply.fields.items() if k in wanted}
        missing = [f for f, name in zip(fields, wanted) if name not in shown]
        if missing:
            reporter.notice(f"contribute: not in the item: {', '.join(missing)}")
    ordered = in_fid_order(shown, names)
    lines = [head]
    if reply.post_user_info:
        lines.append(f"last posted by {describe_poster(reply.post_user_info)}")
    width = max((len(name) for name, _ in ordered), default=0)
    lines += [f"{name.ljust(width)}  {render_value(value)}" for name, value in ordered]
    reporter.result("\n".join(lines), {**data, "fields": dict(ordered),
                                        "post_user_info": poster_data(reply.post_user_info)}, success=True)
    return Exit.OK


class Watch:
    """`watch`: item streams printed as their messages arrive, and how each ended."""
    SEVERITY = (Exit.OK, Exit.TIMEOUT, Exit.REJECTED)          # the worst ending decides the exit
    KINDS = {ItemRefresh: "refresh", ItemUpdate: "update", ItemStatus: "status"}

    def __init__(self, session: Session, reporter: Reporter, service: str, domain: str,
                 count: int | None, names: FieldNames | None) -> None:
        self.session, self.reporter = session, reporter
        self.service, self.domain, self.count, self.names = service, domain, count, names
        self.updates = 0
        self.open: dict[int, str] = {}           # stream -> RIC, until the ADS closes it
        self.waiting: set[int] = set()           # streams with no Refresh or Status yet
        self.code = Exit.OK

    def start(self, ric: str, view: list | None) -> None:
        stream = self.session.request(self.service, ric, self.domain,
                                      lambda event: self.handle(ric, event), view=view)
        self.open[stream] = ric
        self.waiting.add(stream)

    @property
    def done(self) -> bool:
        return not self.open or (self.count is not None and self.updates >= self.count)

    def handle(self, ric: str, event: Any) -> None:
        if self.done:                            # events already queued past --count
            return
        self.waiting.discard(event.stream)
        data: dict[str, Any] = {"type": self.KINDS[type(event)], "service": self.service, "ric": ric}
        words = [data["type"].upper(), self.service, ric]
        state = getattr(event, "state", None)
        if state is not None:
            data["state"] = state_data(state)
            words.append(item_state_words(state))
        if not isinstance(event, ItemStatus):
            data["fields"] = dict(in_fid_order(event.fields, self.names))
            data["post_user_info"] = poster_data(event.post_user_info)
            words.append(render_fields(data["fields"].items()))
        self.reporter.emit(" ".join(w for w in words if w), data)
        if isinstance(event, ItemUpdate):
            self.updates += 1
        elif state.get("Stream") in CLOSED_STREAM_STATES:
            self.session.close_item(event.stream, self.domain, send=False)
            del self.open[event.stream]
            if state.get("Stream") != "NonStreaming":
                self.end(Exit.REJECTED)
                self.reporter.hint(state.get("Code"), ITEM_HINTS)

    def time_out(self, timeout: float) -> None:
        """Streams still without a reply are reported, closed and dropped."""
        for stream in sorted(self.waiting):
            ric = self.open.pop(stream)
            self.reporter.emit(f"TIMEOUT {self.service} {ric} \"no reply within {timeout:g}s\"",
                               {"type": "timeout", "service": self.service, "ric": ric})
            self.session.close_item(stream, self.domain)
            self.end(Exit.TIMEOUT)
        self.waiting.clear()

    def end(self, code: Exit) -> None:
        self.code = max(self.code, code, key=self.SEVERITY.index)


def run_watch(settings: Settings, reporter: Reporter, service: str, rics: tuple[str, ...], *,
              domain: str = "MarketPrice", fields: tuple[str, ...] = (), timeout: float = 10.0,
              count: int | None = None, names: FieldNames | None = None) -> Exit:
    """Streaming requests for the items; every Refresh, Update and Status printed until --count
    Updates, Ctrl-C, or the ADS closing every stream. Lost connections are recovered and the
    streams requested again."""
    view = view_of(fields, names)                 # a usage error before any I/O
    with Session(settings, reporter, recover=True) as session:
        session.connect()
        watch = Watch(session, reporter, service, domain, count, names)
        for ric in dict.fromkeys(rics):
            watch.start(ric, view)
        first_deadline = time.monotonic() + timeout
        while not watch.done and not session.interrupts:
            session.wait(first_deadline if watch.waiting else None)
            if watch.waiting and time.monotonic() >= first_deadline:
                watch.time_out(timeout)
    return watch.code


def run_run(settings: Settings, spec: PostSpec, reporter: Reporter, *, refresh: bool = True,
            interval: float = 5.0, count: int | None = None, walk_fields: bool = False,
            window: int | None = None, resend: bool = True) -> Exit:
    """A Refresh (unless refresh is False), then an Update every interval, count times or until
    stopped; recovering from lost connections."""
    import random                         # only run needs it: kept off the start-up path
    rng = random.Random()
    fields = dict(spec.fields)
    with Session(settings, reporter, recover=True, resend=resend, window=window,
                 ack_timeout=spec.ack_timeout) as session:
        session.connect()
        if refresh:
            session.post(spec, fields, refresh=True)
        sent = 0
        next_at = time.monotonic()
        while not session.interrupts and (count is None or sent < count):
            now = time.monotonic()
            if now >= next_at:
                if walk_fields:
                    fields = walk(fields, rng)
                session.post(spec, fields, refresh=False)
                sent += 1
                next_at = max(next_at + interval, now)
                continue
            session.wait(next_at)
        session.drain()
    interrupted = bool(session.interrupts)
    reporter.notice(f"run: {session.ledger.summary()}{' (interrupted)' if interrupted else ''}")
    return session.ledger.exit_code(interrupted)


class Bulk:
    """`post --file`: rows from a reader thread, packed into frames, pipelined.

    The reader thread puts rows on the session's queue and takes one slot of
    the window for each; a slot is given back when the row's post ends. So
    rows read plus posts in flight never exceed --window: memory stays flat
    whatever the input's size. A frame is sent as soon as the queue is
    momentarily empty or PER_FRAME posts are waiting, so a slow pipe is posted
    row by row and a file in full frames, never over the login's MaxMsgSize.
    """

    PER_FRAME = Session.PER_FRAME

    def __init__(self, spec: PostSpec, refresh: bool, window: int, rate: float | None,
                 strict: bool, reporter: Reporter, failed_out: str | None, fmt: str) -> None:
        self.spec, self.refresh, self.rate, self.strict = spec, refresh, rate, strict
        self.reporter = reporter
        # The window's slots, as tokens in a SimpleQueue (its get and put are C: cheap per row).
        self.slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(window):
            self.slots.put(None)
        self.batch: list[Row] = []
        self.held: list[Row] = []           # rows waiting for --rate
        self.next_at = 0.0                  # when --rate lets the next row go
        self.rows: dict[int, Row] = {}      # post id -> row, while in flight
        self.ended = False                  # all input read
        self.stopped = False                # --strict met a bad row
        self.read_error: str | None = None
        self.invalid = 0
        self.unsent = 0                     # read but never posted (no connection at the end)
        self.posted = 0
        self.header: list[str] = []         # CSV header, for --failed-out
        self.session: Session | None = None
        self.failed_out = FailedRows(failed_out, fmt, self.header) if failed_out else None

    # -- rows in

    def feed(self, rows: Iterator[Row | BadRow], events: Any) -> None:
        """The reader thread: every row takes a window slot, then goes on the session queue."""
        try:
            for item in rows:
                self.slots.get()
                events.put((None, item))
            events.put((None, EndOfInput(None)))
        except Exception as exc:            # unreadable input (I/O, not UTF-8): reported, not raised
            events.put((None, EndOfInput(f"{type(exc).__name__}: {exc}")))

    def take(self, item: Any) -> None:
        """The main thread's side of the queue (Session.on_other)."""
        if isinstance(item, Row):
            if self.stopped:                     # --strict has stopped: nothing after the bad row
                self.slots.put(None)
                return
            (self.held if self.rate else self.batch).append(item)
            if len(self.batch) >= self.PER_FRAME and self.connected():
                self.flush()
        elif isinstance(item, BadRow):
            self.slots.put(None)
            self.reject(item.line, item.text)
        elif isinstance(item, EndOfInput):
            self.ended, self.read_error = True, item.error
            if item.error:
                log.error("input: %s", item.error)

    def reject(self, line: int, text: str) -> None:
        self.invalid += 1
        self.reporter.emit(f"INVALID line {line} {json.dumps(text)}",
                           {"status": "invalid", "line": line, "text": text})
        if self.strict:
            self.stopped = True

    def release_held(self) -> None:
        """Move the rows --rate allows now into the batch."""
        now = time.monotonic()
        while self.held and self.next_at <= now:
            self.batch.append(self.held.pop(0))
            self.next_at = max(self.next_at, now) + 1 / self.rate

    def next_release(self) -> float | None:
        """When --rate lets the next held row go (None: nothing held)."""
        return self.next_at if self.held else None

    # -- posts out

    def connected(self) -> bool:
        """Logged in now (not, say, between a lost connection and the reconnect)."""
        return self.session is not None and self.session.conn is not None \
            and self.session.login is not None

    def flush(self) -> None:
        """Post the batch: one frame, split where MaxMsgSize demands."""
        if not self.connected():                 # e.g. interrupted while reconnecting
            for row in self.batch:
                self.slots.put(None)
                self.unsent += 1
                self.reporter.emit(f"UNSENT line {row.line} {row.ric}",
                                   {"status": "unsent", "line": row.line, "ric": row.ric})
            self.batch = []
            return
        session, (batch, self.batch) = self.session, (self.batch, [])
        deadline = time.monotonic() + self.spec.ack_timeout
        info = session.post_user_info(self.spec)
        messages = []
        for row in batch:
            service = row.service or self.spec.service
            if not service:
                self.slots.put(None)
                self.reject(row.line, "no service: give --service or a SERVICE column")
                continue
            refresh = self.refresh if row.refresh is None else row.refresh
            message = build_post(0, service, row.ric, row.fields, refresh=refresh,
                                 domain=self.spec.domain, post_user_info=info)
            self.rows[session.ledger.add(service, row.ric, deadline, message)] = row
            messages.append(message)
        self.posted += len(messages)
        try:
            session.send_posts(messages)
        except ConnectionLost as exc:       # recover() posts them again with the others pending
            session.recover(str(exc))


class FailedRows:
    """--failed-out: failed rows written back in the input's format, to be posted again."""

    def __init__(self, path: str, fmt: str, header: list[str]) -> None:
        self.path, self.fmt, self.header = path, fmt, header
        self.file: IO[str] | None = None
        self.writer: Any = None
        self.count = 0

    def write(self, row: Row) -> None:
        if self.file is None:
            self.file = open(self.path, "w", encoding="utf-8", newline="")
            if self.fmt == "csv":
                import csv
                self.writer = csv.writer(self.file)
                self.writer.writerow(self.header)
        if self.writer is not None:
            self.writer.writerow(row.raw)
        else:
            self.file.write(row.raw + "\n")
        self.count += 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class BulkReporter(Reporter):
    """Outcomes of a bulk run: only failures are printed, each with its input line."""

    def __init__(self, base: Reporter, bulk: Bulk) -> None:
        super().__init__(base.out, base.err, base.as_json, base.quiet)
        self.bulk = bulk
        self.nak_codes: dict[str, int] = {}

    def outcome(self, outcome: Outcome) -> None:
        row = self.bulk.rows.pop(outcome.post_id, None)
        if row is not None:
            self.bulk.slots.put(None)
        if outcome.status == "ack":
            return
        if row is not None:
            outcome = outcome._replace(line=row.line)
        if outcome.nak_code:
            self.nak_codes[outcome.nak_code] = self.nak_codes.get(outcome.nak_code, 0) + 1
        super().outcome(outcome)
        if row is not None and self.bulk.failed_out is not None:
            self.bulk.failed_out.write(row)


def run_bulk(settings: Settings, spec: PostSpec, refresh: bool, reporter: Reporter, *, path: str,
             fmt: str, window: int, rate: float | None, strict: bool, failed_out: str | None) -> Exit:
    """post --file: every row posted and accounted for, with a summary at the end."""
    import io

    try:
        # stdin through a file object of its own: the reader thread may still be
        # blocked in it at exit, and Python's shutdown would fail on sys.stdin's lock.
        binary = os.fdopen(os.dup(sys.stdin.fileno()), "rb") if path == "-" else open(path, "rb")
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror}") from None
    text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
    bulk = Bulk(spec, refresh, window, rate, strict, reporter, failed_out, fmt)
    rows = jsonl_rows(text) if fmt == "jsonl" else csv_rows(text, bulk.header)
    started = time.monotonic()
    progress = progress_bar(reporter, path)
    try:
        with Session(settings, BulkReporter(reporter, bulk), recover=True,
                     ack_timeout=spec.ack_timeout) as session:
            session.on_other = bulk.take
            bulk.session = session
            session.connect()
            threading.Thread(target=bulk.feed, args=(rows, session.events), name="input",
                             daemon=True).start()
            while not (bulk.ended and not bulk.batch and not bulk.held) and not session.interrupts \
                    and not bulk.stopped:
                if bulk.held:
                    bulk.release_held()
                event = session.wait(time.monotonic() if bulk.batch else bulk.next_release())
                if bulk.batch and (event is None or len(bulk.batch) >= bulk.PER_FRAME):
                    bulk.flush()
                    if progress is not None:
                        progress.update(binary.tell() - progress.pos)
            bulk.batch += bulk.held        # stopping: what was read is still posted
            bulk.held = []
            bulk.flush()
            session.drain()
    finally:
        if progress is not None:
            progress.render_finish()
        if bulk.failed_out is not None:
            bulk.failed_out.close()
        if path != "-":                  # a blocked reader may still hold the stdin copy
            binary.close()
    elapsed = time.monotonic() - started
    ledger = session.ledger
    summary = {"posted": bulk.posted, "acknowledged": ledger.counts.get("ack", 0),
               "nakked": session.reporter.nak_codes, "errored": ledger.counts.get("error", 0),
               "timed_out": ledger.counts.get("timeout", 0), "lost": ledger.counts.get("lost", 0),
               "invalid": bulk.invalid, "unsent": bulk.unsent, "resent": ledger.resent,
               "elapsed": round(elapsed, 3),
               "posts_per_second": round(bulk.posted / elapsed) if elapsed else 0}
    if reporter.as_json:
        reporter.emit("", {"summary": summary})
    else:
        reporter.notice("bulk: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items()))
    if bulk.failed_out is not None and bulk.failed_out.count:
        reporter.notice(f"bulk: {bulk.failed_out.count} failed rows written to {failed_out}")
    code = ledger.exit_code(interrupted=bool(session.interrupts))
    if code == Exit.OK and session.interrupts and not bulk.ended:
        return Exit.INTERRUPTED                  # stopped before the end of the input
    if code == Exit.OK and bulk.unsent:
        return Exit.INTERRUPTED if session.interrupts else Exit.CONNECT
    if code == Exit.OK and (bulk.invalid or bulk.read_error):
        return Exit.USAGE
    return code


def progress_bar(reporter: Reporter, path: str) -> Any:
    """A progress bar on stderr for a file of known size, when stdout is a terminal."""
    if reporter.quiet or path == "-" or not reporter.out.isatty() or not os.path.isfile(path):
        return None
    bar = click.progressbar(length=os.path.getsize(path), label="posting", file=reporter.err)
    bar.render_progress()
    return bar


# ============================================================== diagnostics
# `check`: the way to a working post taken one step at a time, so that a
# failure names its step: resolve, tcp, websocket, login, post, read-back.

class Step(NamedTuple):
    name: str
    status: str                      # ok, fail or skipped
    detail: str = ""
    hint: str | None = None
    ms: float | None = None


class Checklist:
    """Runs steps in order; after the first failure the rest are skipped.

    In text mode each step is printed as it ends (a step may take a timeout's
    length); with --json the checklist is one document at the end.
    """
    MARKS = {"ok": "ok", "fail": "FAIL", "skipped": "skip"}

    def __init__(self, reporter: Reporter, url: str) -> None:
        self.reporter, self.url = reporter, url
        self.steps: list[Step] = []
        self.failed: Step | None = None
        self.code = Exit.OK                      # the failed step's exit status
        self.live = not (reporter.as_json or reporter.quiet)
        if self.live:
            self._write(f"check {url}")

    def step(self, name: str, action: Callable[[], tuple[str, Any]]) -> Any:
        """Run action (returning its finding and a value for later steps); the value, or None."""
        if self.failed:
            return self._add(Step(name, "skipped"))
        start = time.perf_counter()
        try:
            detail, value = action()
        except ContributeError as exc:
            self.failed = Step(name, "fail", str(exc), exc.hint, self._ms(start))
            self.code = exc.exit_code
            return self._add(self.failed)
        self._add(Step(name, "ok", detail, None, self._ms(start)))
        return value

    def skip(self, name: str, why: str) -> None:
        self._add(Step(name, "skipped", why))

    def finish(self) -> Exit:
        code = self.code if self.failed else Exit.OK
        skipped = sum(s.status == "skipped" for s in self.steps)
        summary = (f"failed at {self.failed.name}: exit {int(code)}" if self.failed else
                   f"passed: {len(self.steps) - skipped} steps" + (f", {skipped} skipped" if skipped else ""))
        if self.reporter.as_json:
            steps = [{"step": s.name, "status": s.status, "detail": s.detail, "hint": s.hint, "ms": s.ms}
                     for s in self.steps]
            self.reporter.result("", {"url": self.url, "result": "failed" if self.failed else "ok",
                                      "exit_code": int(code), "failed_step": self.failed and self.failed.name,
                                      "steps": steps}, success=not self.failed)
        elif self.live:
            self._write(summary)
        elif self.failed:                        # -q: the checklist only when it failed
            self._write("\n".join([f"check {self.url}", *map(self.render, self.steps), summary]))
        return code

    @staticmethod
    def render(step: Step) -> str:
        line = f"  {Checklist.MARKS[step.status]:<5} {step.name:<10} {step.detail}".rstrip()
        if step.ms is not None and step.status == "ok":
            line += f"  ({step.ms:.1f} ms)"
        if step.hint:
            line += f"\n{'':19}hint: {step.hint}"             # under the detail column
        return line

    def _add(self, step: Step) -> None:
        self.steps.append(step)
        if self.live:
            self._write(self.render(step))

    def _write(self, text: str) -> None:
        self.reporter.out.write(text + "\n")
        self.reporter.out.flush()

    @staticmethod
    def _ms(start: float) -> float:
        return round((time.perf_counter() - start) * 1000, 1)


def check_resolve(host: str, port: int) -> tuple[str, list]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectFailed(f"cannot resolve {host}: {exc.strerror or exc}",
                            "check --host: the name is not known to DNS or the hosts file") from None
    except UnicodeError as exc:                          # Python's IDNA check, before any lookup
        raise ConnectFailed(f"{host} is not a valid host name ({exc})", "check --host") from None
    infos = list({info[4]: info for info in infos}.values())    # one per address
    return f"{host} -> {', '.join(info[4][0] for info in infos)}", infos


def check_tcp(infos: list, host: str, settings: Settings) -> tuple[str, socket.socket]:
    """A TCP connection to the first address that accepts (and TLS with --tls)."""
    failures, timeouts, hint = [], 0, "check --host and --port: the ADS WebSocket port is often 15000"
    for family, kind, proto, _, address in infos:
        where = host_port(address[0], address[1])
        sock = socket.socket(family, kind, proto)
        sock.settimeout(settings.connect_timeout)
        try:
            sock.connect(address)
            if settings.tls:
                import ssl
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
                return f"connected to {where}, {sock.version()}", sock
            return f"connected to {where}", sock
        except TimeoutError:
            timeouts += 1
            failures.append(f"{where}: no answer within {settings.connect_timeout:g}s")
        except ConnectionRefusedError:
            failures.append(f"{where}: connection refused, nothing is listening")
        except OSError as exc:                     # unreachable, TLS failures, ...
            if is_tls_error(exc):
                failures.append(f"{where}: TLS: {exc}")
                hint = TLS_HINT
            else:
                failures.append(f"{where}: {exc.strerror or exc}")
        sock.close()
    if timeouts == len(failures):
        raise Timeout("; ".join(failures), "a firewall may be dropping the traffic: check --host and --port")
    raise ConnectFailed("; ".join(failures), hint)


def check_upgrade(sock: socket.socket, host: str, port: int, settings: Settings) -> tuple[str, None]:
    """The WebSocket upgrade offering tr_json2, by hand, so that every way of failing can be told
    apart: no answer, not HTTP, a refusal (with the server's own words), or no tr_json2."""
    import base64
    import hashlib

    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {settings.path} HTTP/1.1\r\nHost: {host_port(host, port)}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\nUser-Agent: contribute.py\r\n\r\n")
    not_ads = "this port is not an ADS WebSocket port: check --host, --port and --path"
    try:
        sock.sendall(request.encode())
        response = read_http_response(sock, time.monotonic() + settings.connect_timeout)
    except TimeoutError:
        raise Timeout(f"no answer to the WebSocket upgrade within {settings.connect_timeout:g}s",
                      not_ads) from None
    except OSError as exc:
        raise ConnectFailed(f"the connection failed during the WebSocket upgrade: {exc}", not_ads) from None
    if not response:
        raise ConnectFailed("the server closed the connection without answering the WebSocket upgrade",
                            not_ads)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = re.fullmatch(r"HTTP/\d\.\d (\d{3}) ?(.*)", lines[0])
    if not status_line:
        raise ConnectFailed(f"the server does not speak HTTP or WebSocket: it answered {response[:60]!r}",
                            not_ads)
    status, reason = int(status_line[1]), status_line[2]
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in lines[1:])}
    said = body.decode("utf-8", "replace").strip().split("\n")[0].strip()[:200]
    if status != 101:
        words = f"HTTP {status} {reason}".rstrip() + (f": {said}" if said else "")
        if "subprotocol" in said.lower():
            raise ConnectFailed(f"the server refused subprotocol {SUBPROTOCOL}: {words}",
                                "the port speaks WebSocket but not tr_json2: is it an ADS WebSocket port?")
        hint = "check --path: the ADS's is /WebSocket" if status == 404 else not_ads
        raise ConnectFailed(f"the server answered the WebSocket upgrade on {settings.path} with {words}", hint)
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    if headers.get("upgrade", "").lower() != "websocket" or headers.get("sec-websocket-accept") != accept:
        raise ConnectFailed("the server answered 101 without a valid WebSocket upgrade", not_ads)
    chosen = headers.get("sec-websocket-protocol")
    if (chosen or "").lower() != SUBPROTOCOL:
        raise ConnectFailed(f"the server accepted the WebSocket upgrade but not subprotocol {SUBPROTOCOL} "
                            f"(it chose {chosen or 'none'})",
                            "the port speaks WebSocket but not tr_json2: is it an ADS WebSocket port?")
    mask = os.urandom(4)                           # a masked Close frame, code 1000: a clean goodbye
    sock.sendall(b"\x88\x82" + mask + bytes(b ^ mask[i] for i, b in enumerate(b"\x03\xe8")))
    return f"HTTP 101, subprotocol {chosen}, path {settings.path}", None


def read_http_response(sock: socket.socket, deadline: float) -> bytes:
    """An HTTP response head (and the body, up to 4 KB, when Content-Length says there is one),
    or what came before the server closed. TimeoutError at the deadline with nothing."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head + b"\r\n")
            if not length or len(body) >= min(int(length[1]), 4096):
                return data
        elif len(data) > 65536:
            return data
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            if data:
                return data
            raise
        if not chunk:
            return data
        data += chunk


class Collector(Reporter):
    """A reporter that keeps post outcomes for the caller instead of printing them."""

    def __init__(self, base: Reporter) -> None:
        super().__init__(base.out, base.err, base.as_json, quiet=True)
        self.outcomes: list[Outcome] = []

    def outcome(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def event(self, kind: str, message: str, **data: Any) -> None:
        log.info("%s", message)


def check_login(session: Session) -> tuple[str, None]:
    login = session.connect()
    attrs = login.attributes
    support = attrs.get("SupportOMMPost")
    if support is not None and support != 1:
        raise LoginRefused(f"the login was accepted, but SupportOMMPost is {support}: the ADS will not "
                           "take posts on it", "ask your market data team to enable posting for this user")
    key = session.login_request["Key"]
    elements = key["Elements"]
    return (f"{key['Name']} (ApplicationId {elements['ApplicationId']}, Position {elements['Position']}) "
            f"accepted: {json.dumps(login.text)}; SupportOMMPost={support if support is not None else 'absent'}"
            f" PingTimeout={attrs.get('PingTimeout')} MaxMsgSize={attrs.get('MaxMsgSize')}", None)


OUTCOME_ERRORS = {"nak": Rejected, "error": Rejected, "timeout": Timeout, "lost": ConnectFailed}


def check_post(session: Session, spec: PostSpec, refresh: bool, collector: Collector) -> tuple[str, None]:
    session.post(spec, spec.fields, refresh)
    session.drain()
    if not collector.outcomes:
        raise KeyboardInterrupt                    # drain returns early only when interrupted
    outcome = collector.outcomes[-1]
    if outcome.status == "ack":
        return f"{'Refresh' if refresh else 'Update'} {render_fields(spec.fields.items())}: " \
               f"{outcome.render()}", None
    raise OUTCOME_ERRORS[outcome.status](outcome.render(), HINTS.get(outcome.hint_key()))


def check_read_back(session: Session, spec: PostSpec, names: FieldNames | None) -> tuple[str, None]:
    reply, mismatches, checked = read_back(session, spec, names)
    if mismatches:
        raise Rejected("; ".join(m.render() for m in mismatches), mismatch_hint(session, spec, reply))
    return f"{render_fields(checked.items())} as posted ({item_state_words(reply.state)})", None


def run_check(settings: Settings, reporter: Reporter, spec: PostSpec | None, refresh: bool = False,
              names: FieldNames | None = None) -> Exit:
    """The checklist; its exit status is the failing step's (3 connect, 4 login, 5 post or
    read-back, 6 a step that timed out). Only the first host of --host is checked."""
    hosts = settings.hosts()
    host, port = hosts[0]
    if len(hosts) > 1:
        reporter.notice(f"contribute: check: checking the first host only ({host}:{port})")
    checks = Checklist(reporter, settings.url_for(host, port))
    infos = checks.step("resolve", lambda: check_resolve(host, port))
    sock = checks.step("tcp", lambda: check_tcp(infos, host, settings))
    try:
        checks.step("websocket", lambda: check_upgrade(sock, host, port, settings))
    finally:
        if sock is not None:
            sock.close()
    collector = Collector(reporter)
    one_host = settings._replace(host=host_port(host, port), retries=0)
    with Session(one_host, collector, ack_timeout=spec.ack_timeout if spec else 10.0) as session:
        checks.step("login", lambda: check_login(session))
        if spec is None:
            checks.skip("post", "give --ric and --field to test a post")
            checks.skip("read-back", "")
        else:
            checks.step("post", lambda: check_post(session, spec, refresh, collector))
            checks.step("read-back", lambda: check_read_back(session, spec, names))
    return checks.finish()


# =========================================================== configuration

CONFIG_SECTION = "contribute"
GLOBAL_KEYS = {"host", "port", "user", "app_id", "position", "path", "tls", "connect_timeout",
               "retries", "reconnect_min", "reconnect_max", "dictionary", "verbose", "quiet", "json", "sim"}
SHARED_KEYS = {"service", "domain", "ack_timeout", "post_user_info", "post_user_address", "post_user_id"}
READ_KEYS = {"service", "domain", "timeout"}
KEYS_BY_COMMAND = {"post": SHARED_KEYS | {"window", "rate", "on_stream"},
                   "run": SHARED_KEYS | {"window", "interval", "count", "walk", "resend"},
                   "get": READ_KEYS, "watch": READ_KEYS, "check": SHARED_KEYS}
COMMAND_KEYS = set().union(*KEYS_BY_COMMAND.values())


class ConfigError(click.ClickException):
    exit_code = Exit.USAGE


def find_config() -> str | None:
    """./config.ini, else config.ini beside this module."""
    for candidate in ("config.ini", os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.ini")):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_config(path: str) -> dict[str, str]:
    """The [contribute] section of an INI file: `key = value` lines, `;` or `#` comments.

    A reader of our own rather than configparser: the file has one flat section,
    and configparser's import alone costs a tenth of a one-shot post's budget.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    values: dict[str, str] = {}
    section = None
    for number, line in enumerate(lines, 1):
        line = re.split(r"\s[;#]", line, maxsplit=1)[0].strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section != CONFIG_SECTION:
                raise ConfigError(f"config file {path}:{number}: unknown section [{section}] "
                                  f"(the only section is [{CONFIG_SECTION}])")
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or section is None:
            raise ConfigError(f"config file {path}:{number}: expected 'key = value' "
                              f"in a [{CONFIG_SECTION}] section")
        if key not in GLOBAL_KEYS | COMMAND_KEYS:
            raise ConfigError(f"config file {path}:{number}: unknown key '{key}' in [{CONFIG_SECTION}]")
        values[key] = value.strip()
    return values


def load_config(path: str) -> dict[str, Any]:
    """The click default_map for a config file: global keys, and command keys per command."""
    values = read_config(path)
    defaults: dict[str, Any] = {k: v for k, v in values.items() if k in GLOBAL_KEYS}
    for command, keys in KEYS_BY_COMMAND.items():
        defaults[command] = {k: v for k, v in values.items() if k in keys}
    return defaults


def config_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    path = value or find_config()
    if value and not os.path.exists(value):
        raise ConfigError(f"config file {value} not found")
    if path is not None:
        ctx.default_map = load_config(path)
        log.debug("config file: %s", path)
    return path


# ===================================================================== CLI

class FieldType(click.ParamType):
    """--field NAME=VALUE or NAME:=JSON."""
    name = "NAME=VALUE"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_field(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Group(click.Group):
    """Translates ContributeError into one stderr line and the exit status, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ContributeError as exc:
            click.echo(f"contribute: error: {exc}", err=True)
            if exc.hint and not (ctx.obj and ctx.obj.get("quiet")):
                click.echo(f"hint: {exc.hint}", err=True)
            log.debug("details", exc_info=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("contribute: interrupted", err=True)
            ctx.exit(Exit.INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            click.echo(f"contribute: internal error: {type(exc).__name__}: {exc}", err=True)
            log.debug("traceback", exc_info=True)
            ctx.exit(Exit.INTERNAL)


def env(name: str) -> str:
    return f"CONTRIBUTE_{name.upper()}"


@click.group(cls=Group, epilog=f"Exit codes:\n\n\b\n{EXIT_TABLE}",
             context_settings={"help_option_names": ["-h", "--help"], "show_default": True,
                               "max_content_width": 100})
@click.option("--config", metavar="PATH", envvar=env("config"), is_eager=True, expose_value=False,
              callback=config_callback,
              help="INI file with a [contribute] section  [default: ./config.ini, else beside contribute.py]")
@click.option("--host", metavar="HOST[:PORT],...", envvar=env("host"),
              help="ADS host, or a comma-separated list tried in order (failover)")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, envvar=env("port"),
              help="ADS WebSocket port")
@click.option("--path", default=DEFAULT_PATH, envvar=env("path"), metavar="PATH", help="WebSocket path")
@click.option("--tls/--no-tls", default=False, envvar=env("tls"), help="use wss://")
@click.option("--connect-timeout", type=click.FloatRange(0, min_open=True), default=10.0,
              envvar=env("connect_timeout"), metavar="SECONDS", help="limit for connect and login")
@click.option("--retries", type=click.IntRange(0), default=0, envvar=env("retries"), metavar="N",
              help="more rounds through the host list before giving up on connecting")
@click.option("--reconnect-min", type=click.FloatRange(0, 0.5, min_open=True), default=0.5,
              envvar=env("reconnect_min"), metavar="SECONDS", help="first reconnect backoff (doubles)")
@click.option("--reconnect-max", type=click.FloatRange(0, min_open=True), default=30.0,
              envvar=env("reconnect_max"), metavar="SECONDS", help="longest reconnect backoff")
@click.option("--dictionary", metavar="PATH", envvar=env("dictionary"),
              help="RDMFieldDictionary: list read fields in FID order, name posted FIDs")
@click.option("--user", metavar="NAME", envvar=env("user"), help="DACS user name  [default: your login name]")
@click.option("--app-id", default=DEFAULT_APP_ID, envvar=env("app_id"), metavar="ID",
              help="DACS ApplicationId")
@click.option("--position", metavar="IP[/HOST]", envvar=env("position"),
              help="DACS Position  [default: the connection's local IPv4/hostname]")
@click.option("-v", "--verbose", count=True, envvar=env("verbose"), show_default=False,
              help="-v progress, -vv every frame sent and received")
@click.option("-q", "--quiet", is_flag=True, envvar=env("quiet"), help="print nothing on success")
@click.option("--json", "as_json", is_flag=True, envvar=env("json"), help="JSON lines on stdout")
@click.option("--sim", is_flag=True, envvar=env("sim"),
              help="use the built-in ADS emulator instead of a real ADS")
@click.pass_context
def cli(ctx: click.Context, host: str | None, port: int, path: str, tls: bool, connect_timeout: float,
        retries: int, reconnect_min: float, reconnect_max: float, dictionary: str | None, user: str | None,
        app_id: str, position: str | None, verbose: int, quiet: bool, as_json: bool, sim: bool) -> None:
    """Contribute data to an ADS (Refinitiv Real-Time) over its WebSocket API."""
    setup_logging(verbose, quiet)
    settings = Settings(host, port, user, app_id, position, path, tls, connect_timeout, retries,
                        reconnect_min, max(reconnect_min, reconnect_max))
    ctx.obj = {"settings": settings, "sim": sim, "quiet": quiet, "dictionary": dictionary,
               "reporter": Reporter(sys.stdout, sys.stderr, as_json, quiet)}


def names_of(ctx: click.Context) -> FieldNames | None:
    """The --dictionary, read when a command needs it."""
    path = ctx.obj["dictionary"]
    return load_field_names(path) if path else None


def settings_of(ctx: click.Context) -> Settings:
    """The connection settings; with --sim, those of a freshly started emulator."""
    settings = ctx.obj["settings"]
    return start_sim(ctx.find_root(), settings) if ctx.obj["sim"] else settings


def setup_logging(verbose: int, quiet: bool) -> None:
    """Diagnostics on stderr: warnings by default, -v progress, -vv every frame."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("contribute: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else
                 logging.ERROR if quiet else logging.WARNING)


def start_sim(ctx: click.Context, settings: Settings) -> Settings:
    """Start the emulator in-process on a free loopback port; stopped when the command ends."""
    import ads_emulator

    emulator = ads_emulator.Emulator(host="127.0.0.1", port=0, keep_received=False).start()

    def stop() -> None:
        try:
            emulator.stop()
        except ads_emulator.EmulatorError as exc:
            raise click.ClickException(f"the built-in emulator failed: {exc}") from None

    ctx.call_on_close(stop)
    click.echo(f"contribute: --sim: using the built-in ADS emulator at {emulator.url}, "
               "not a real ADS", err=True)
    return settings._replace(host=f"127.0.0.1:{emulator.port}", path=ads_emulator.WS_PATH, tls=False)


def post_options(required: bool = True) -> Callable[[Callable], Callable]:
    """The options post, run and check share: what to post, where, and how long to wait."""
    mark = "  [required]" if required else ""
    options = [
        click.option("--ric", metavar="RIC", help=f"item name{mark}"),
        click.option("--service", metavar="NAME", envvar=env("service"),
                     help="ADS service to post to (a cache or contribution service)"),
        click.option("--field", "fields", type=FieldType(), multiple=True,
                     help=f"a field: NAME=VALUE (typed), NAME= (blank) or NAME:=JSON; repeatable{mark}"),
        click.option("--domain", default="MarketPrice", envvar=env("domain"), metavar="DOMAIN",
                     help="message domain"),
        click.option("--ack-timeout", type=click.FloatRange(0, min_open=True), default=10.0,
                     envvar=env("ack_timeout"), metavar="SECONDS", help="how long to wait for each Ack"),
        click.option("--post-user-info/--no-post-user-info", default=True, envvar=env("post_user_info"),
                     help="send PostUserInfo (address and user id) with each post"),
        click.option("--post-user-address", metavar="IPV4", envvar=env("post_user_address"),
                     help="PostUserInfo Address  [default: the connection's local IPv4 address]"),
        click.option("--post-user-id", type=int, metavar="N", envvar=env("post_user_id"),
                     help="PostUserInfo UserID  [default: this process id]"),
    ]

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def make_spec(ric: str | None, service: str | None, fields: tuple, domain: str, ack_timeout: float,
              post_user_info: bool, post_user_address: str | None, post_user_id: int | None,
              bulk: bool = False) -> PostSpec:
    """What to post, checked: --ric and --field (or a file), and a service."""
    if bulk and (ric or fields):
        raise click.UsageError("--file excludes --ric and --field: the file gives the items and fields")
    if not bulk and not ric:
        raise click.UsageError("Missing option '--ric' (or --file).")
    if not bulk and not fields:
        raise click.UsageError("Missing option '--field'.")
    service = (service or "") if bulk else need_service(service)    # rows may name their service
    return PostSpec(service, ric or "", dict(fields), domain, ack_timeout, post_user_info,
                    post_user_address, post_user_id)


def need_service(service: str | None) -> str:
    if not service:
        raise UsageProblem("no service: give --service, CONTRIBUTE_SERVICE or 'service' in the config file")
    return service


def read_options(command: Callable) -> Callable:
    """The options get and watch share: which service, which fields, how long to wait."""
    options = [
        click.option("--service", metavar="NAME", envvar=env("service"), help="ADS service of the item"),
        click.option("--field", "fields", multiple=True, metavar="NAME",
                     help="only this field (a View); repeatable  [default: every field]"),
        click.option("--domain", default="MarketPrice", envvar=env("domain"), metavar="DOMAIN",
                     help="message domain"),
        click.option("--timeout", type=click.FloatRange(0, min_open=True), default=10.0,
                     envvar=env("timeout"), metavar="SECONDS", help="how long to wait for the item's reply"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@post_options()
@click.option("--refresh", is_flag=True, help="post a Refresh: create the item or replace its field list")
@click.option("--file", "path", metavar="PATH", help="post every row of a CSV or JSON Lines file ('-': stdin)")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]),
              help="input format  [default: by extension; stdin: csv]")
@click.option("--window", type=click.IntRange(1), default=1000, envvar=env("window"), metavar="N",
              help="with --file: most posts in flight")
@click.option("--rate", type=click.FloatRange(0, min_open=True), envvar=env("rate"), metavar="N",
              help="with --file: at most N posts per second")
@click.option("--strict", is_flag=True, help="with --file: stop at the first malformed row")
@click.option("--failed-out", metavar="FILE", help="with --file: write failed rows here, in the input's format")
@click.option("--verify", is_flag=True, help="after the Ack, read the item back and compare the fields")
@click.option("--on-stream", is_flag=True, envvar=env("on_stream"),
              help="open the item's stream and post on it (when off-stream posts are not routed)")
@click.pass_context
def post(ctx: click.Context, refresh: bool, path: str | None, fmt: str | None, window: int,
         rate: float | None, strict: bool, failed_out: str | None, verify: bool, on_stream: bool,
         **spec: Any) -> None:
    """Post once and wait for the Ack. An Update by default (changes only the given fields).

    With --file, post every row of a CSV file (header: RIC, optional SERVICE
    and TYPE, then one column per field) or of JSON Lines ({"ric", "service",
    "type", "fields"}), pipelined; only failed rows are printed, then a summary.
    """
    spec = make_spec(**spec, bulk=path is not None)
    if path is None:
        ctx.exit(run_post(settings_of(ctx), spec, refresh, ctx.obj["reporter"], verify=verify,
                          on_stream=on_stream, names=names_of(ctx) if verify else None))
    if verify or on_stream:
        raise click.UsageError("--verify and --on-stream are for one post, not with --file")
    ctx.exit(run_bulk(settings_of(ctx), spec, refresh, ctx.obj["reporter"], path=path,
                      fmt=input_format(path, fmt), window=window, rate=rate, strict=strict,
                      failed_out=failed_out))


@cli.command()
@post_options()
@click.option("--refresh/--no-refresh", default=True, help="post a Refresh first")
@click.option("--interval", type=click.FloatRange(0, min_open=True), default=5.0, envvar=env("interval"),
              metavar="SECONDS", help="time between Updates")
@click.option("--count", type=click.IntRange(0), envvar=env("count"), metavar="N",
              help="number of Updates  [default: until interrupted]")
@click.option("--walk", is_flag=True, envvar=env("walk"), help="move numeric fields by a small random step")
@click.option("--window", type=click.IntRange(1), default=1000, envvar=env("window"), metavar="N",
              help="most posts in flight; posting waits while it is full")
@click.option("--resend/--no-resend", default=True, envvar=env("resend"),
              help="after a reconnect, post again what was in flight (at-least-once)")
@click.pass_context
def run(ctx: click.Context, refresh: bool, interval: float, count: int | None, walk: bool, window: int,
        resend: bool, **spec: Any) -> None:
    """Contribute continuously: a Refresh, then an Update every --interval until stopped.

    A lost connection is recovered: backoff, reconnect through the host list,
    log in, and post again what was in flight (unless --no-resend).
    """
    spec = make_spec(**spec)
    ctx.exit(run_run(settings_of(ctx), spec, ctx.obj["reporter"], refresh=refresh,
                     interval=interval, count=count, walk_fields=walk, window=window, resend=resend))


@cli.command()
@click.pass_context
def login(ctx: click.Context) -> None:
    """Connect and log in only: check a DACS user, application id and position."""
    ctx.exit(run_login(settings_of(ctx), ctx.obj["reporter"]))


@cli.command()
@click.option("--ric", required=True, metavar="RIC", help="item name")
@read_options
@click.pass_context
def get(ctx: click.Context, ric: str, service: str | None, fields: tuple[str, ...], domain: str,
        timeout: float) -> None:
    """Read an item once (a snapshot): its fields, State and last poster.

    Exit 0 when the item was found, 5 when the ADS answered with a closed Status.
    """
    service = need_service(service)
    ctx.exit(run_get(settings_of(ctx), ctx.obj["reporter"], service, ric, domain=domain, fields=fields,
                     timeout=timeout, names=names_of(ctx)))


@cli.command()
@click.option("--ric", "rics", required=True, multiple=True, metavar="RIC", help="item name; repeatable")
@read_options
@click.option("--count", type=click.IntRange(1), metavar="N", help="stop after N Updates  [default: Ctrl-C]")
@click.pass_context
def watch(ctx: click.Context, rics: tuple[str, ...], service: str | None, fields: tuple[str, ...], domain: str,
          timeout: float, count: int | None) -> None:
    """Print items' Refresh, Updates and Status as they arrive, until Ctrl-C or --count Updates.

    Exit 0, 5 when the ADS closed an item's stream (not found, not entitled), 6
    when an item got no reply within --timeout.
    """
    service = need_service(service)
    ctx.exit(run_watch(settings_of(ctx), ctx.obj["reporter"], service, rics, domain=domain, fields=fields,
                       timeout=timeout, count=count, names=names_of(ctx)))


@cli.command()
@post_options(required=False)
@click.option("--refresh", is_flag=True, help="test with a Refresh (creates the item) instead of an Update")
@click.pass_context
def check(ctx: click.Context, refresh: bool, **options: Any) -> None:
    """Diagnose step by step: resolve, TCP, WebSocket upgrade, login and, with --ric and
    --field, a test post read back. Stops at the first failing step and exits with its
    code: 3 connect, 4 login, 5 post or read-back, 6 timed out.
    """
    spec = None
    if options["ric"] or options["fields"]:
        spec = make_spec(**options)
    ctx.exit(run_check(settings_of(ctx), ctx.obj["reporter"], spec, refresh, names_of(ctx)))


def main() -> None:
    try:
        cli(prog_name="contribute.py")
    except BrokenPipeError:
        sys.stderr.close()             # stdout's reader went away: nothing left to say
        sys.exit(Exit.INTERNAL)


if __name__ == "__main__":
    main()
