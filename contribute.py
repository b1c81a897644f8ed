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
    2    usage or configuration error, or malformed input rows (post --file)
    3    could not connect, or the connection was lost
    4    login denied
    5    rejected: a Nak or Error about a post, an item not found, a read-back mismatch
    6    timed out: no answer to the connection, the login, an ack or a request
    130  interrupted (Ctrl-C, SIGTERM, stdout closed) before every post was acknowledged
"""
try:                                      # a Ctrl-C before the handlers below are set: nothing was sent yet
    import gc

    gc.disable()                          # until started(): collecting while importing only costs time
    from _signal import SIG_IGN, SIGINT, SIGTERM, signal as set_handler    # signal.py's enums: 0.7 ms a run

    # Run as a script, SIGINT and SIGTERM only note themselves until a command's handlers take
    # over (Group.run then ends the command as interrupted, 130, before anything is sent) and
    # again once the command has ended, until the end below ignores them (the exit status
    # stands). Without this, a SIGTERM during start-up killed us without a word, a SIGINT while
    # the module's body ran gave a traceback, and either, as Python shut down after a command,
    # could change its status. Signals are the process's, so their note is too. One while Python
    # compiles this file, before any line of it runs, still ends it: a SIGTERM kills it, a SIGINT
    # is Python's KeyboardInterrupt.
    INTERRUPTS_NOTED: list[int] = []

    def note_interrupt(signum: int, frame: object) -> None:
        INTERRUPTS_NOTED.append(signum)

    if __name__ == "__main__":
        set_handler(SIGINT, note_interrupt)
        set_handler(SIGTERM, note_interrupt)

    import io
    import itertools
    import json
    import logging
    import os
    import re
    import socket
    import sys
    import threading
    import time
    # queue.py's SimpleQueue and Empty are these; queue.py itself (and the heapq it imports
    # for queues this tool does not use) would add 0.8 ms to every run.
    from _queue import Empty as QueueEmpty, SimpleQueue
    from collections import deque
    from enum import IntEnum
    from typing import IO, Any, Callable, Iterable, Iterator, NamedTuple, Sequence

    import click
except KeyboardInterrupt:
    raise SystemExit(130) from None

log = logging.getLogger("contribute")


def started() -> None:
    """Start-up is over: the garbage collector comes back on. While the modules were imported
    its passes cost about 4 ms of a one-shot post and found a few hundred objects (kept, not
    worth a full pass); what exists now lives as long as the process, so it is frozen out of
    every later pass. Only once: a freeze at a later connection would keep what a long run
    has made by then, garbage included, for good."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def handle_interrupts(handler: Any) -> Callable[[], None]:
    """SIGINT and SIGTERM go to handler (a function, or SIG_IGN) from now on; returns what puts
    back the handlers they had. Only the main thread may set them: on another, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    saved = [(sig, set_handler(sig, handler)) for sig in (SIGINT, SIGTERM)]

    def restore() -> None:
        for sig, old in saved:
            set_handler(sig, old)
    return restore

# ================================================================ constants

SUBPROTOCOL = "tr_json2"
LOGIN_STREAM = 1
DEFAULT_PORT = 15000
DEFAULT_APP_ID = "256"
DEFAULT_PATH = "/WebSocket"
DEFAULT_MAX_MSG_SIZE = 61430     # bytes: the usual MaxMsgSize, when the login does not announce one
SEND_STALL = 30.0                # seconds the ADS may leave what we send unread, when no PingTimeout says
PER_FRAME = 100                  # messages packed into one frame, at most
CLOSE_TIMEOUT = 2.0              # seconds to wait for the server's close frame
MAX_SECONDS = 86400.0            # the longest wait any option may ask for
MAX_LINE = 1 << 20               # bytes: a longer input line could never fit in a post
LATE_MEMORY = 65536              # timed-out PostIDs remembered, to recognise their late Acks
BULK_GC_THRESHOLD = 50_000       # new containers between collector passes in a bulk run (Python's: 700)
PONG_TEXT = '{"Type":"Pong"}'
PING_TEXT = '{"Type":"Ping"}'
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"     # RFC 6455: Sec-WebSocket-Accept
SIGNAL_NAMES = {SIGINT: "SIGINT", SIGTERM: "SIGTERM"}   # the names of the signals that interrupt a command


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

    @property
    def retryable(self) -> bool:
        """ClosedRecover (DACS down, say): the same login may succeed later. Anything else is a denial
        that another attempt, or another host, would only repeat."""
        return self.state is not None and self.state.stream_state == "ClosedRecover"


class Timeout(ContributeError):
    exit_code = Exit.TIMEOUT


class Rejected(ContributeError):
    """The ADS refused what was asked of it: the item is not there, or it did not read back as posted."""
    exit_code = Exit.REJECTED


class ProtocolViolation(ContributeError):
    """The server broke the protocol (we were right, the peer was wrong)."""
    exit_code = Exit.INTERNAL


class Stopped(ContributeError):
    """Interrupted (Ctrl-C, SIGTERM, stdout closed) while connecting or logging in."""
    exit_code = Exit.INTERRUPTED


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


def build_payload(refresh: bool, domain: str, fields: dict[str, Any]) -> dict:
    """What a Post carries: an Update, or a Refresh (creates the item or replaces its field list)."""
    if refresh:
        return {"ID": 0, "Type": "Refresh", "Domain": domain, "Solicited": False,
                "State": {"Stream": "Open", "Data": "Ok"}, "Fields": fields}
    return {"ID": 0, "Type": "Update", "Domain": domain, "Fields": fields}


def build_post(post_id: int, service: str, ric: str, fields: dict[str, Any],
               refresh: bool = False, domain: str = "MarketPrice",
               post_user_info: dict | None = None, stream: int = LOGIN_STREAM) -> dict:
    """A Post asking for an Ack: off-stream (on the login stream, with the item's Key) by default,
    on-stream (on an open item stream, which names the item) when stream is that stream's ID."""
    post: dict[str, Any] = {"ID": stream, "Type": "Post", "Domain": domain, "Ack": True, "PostID": post_id}
    if stream == LOGIN_STREAM:
        post["Key"] = {"Service": service, "Name": ric}
    if post_user_info:
        post["PostUserInfo"] = post_user_info
    post["Message"] = build_payload(refresh, domain, fields)
    return post


_WIRE = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
_OUTPUT = json.JSONEncoder(separators=(",", ":"))


def encode(msg: dict | list) -> str:
    """Compact JSON for the wire, with text as itself (UTF-8 on the wire), never \\u escapes: the
    ADS's converter drops a backslash and keeps the next character, so an escaped é would be
    stored as u00e9 (protocol.md section 10). ValueError for a value that is not a finite
    number: NaN and Infinity are not JSON, and the ADS would reject the whole frame."""
    return with_digits(_WIRE.encode(msg))


class Codec(NamedTuple):
    """A session's JSON codec for frames: UTF-8 bytes out, messages in. Both write the same
    bytes for what this tool sends (compact, keys in order, text as UTF-8), but for the
    exponent of a float that needs one: 1.5e-07 from json, 1.5e-7 from orjson."""
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes | str], Any]


def _stdlib_dumps(msg: Any) -> bytes:
    return encode(msg).encode()


# The stdlib codec, for one-shot commands: websocket-client imports json anyway, and importing
# orjson would cost a one-shot post about 2 ms, more than it saves on three frames.
STDLIB = Codec(_stdlib_dumps, json.loads)


def import_orjson() -> Any:
    """orjson, imported with SIGINT and SIGTERM held back, then delivered as they came. orjson's
    module takes the imports it makes as it starts (dataclasses, datetime, uuid) to succeed and
    crashes the process when one fails (ijl/orjson#310): a KeyboardInterrupt raised in one did
    that here, a SIGSEGV in 3 of 200 bulk runs sent SIGTERM about 0.1 s after their start."""
    if "orjson" in sys.modules:
        import orjson
        return orjson
    held: list[int] = []
    restore = handle_interrupts(lambda signum, frame: held.append(signum))
    try:
        import orjson
    finally:
        restore()
        for signum in held:
            os.kill(os.getpid(), signum)
    return orjson


def fast_codec() -> Codec:
    """orjson, for the commands that send many frames (post --file, run, watch): it encodes a
    frame of posts about ten times faster than json. What it does differently is kept out
    before: it writes NaN as null and refuses integers beyond 64 bits, and both are refused
    when the values are typed (FieldTypes)."""
    orjson = import_orjson()
    digits = _DIGITS.encode()

    def dumps(msg: Any) -> bytes:
        data = orjson.dumps(msg)
        return re.sub(digits, rb"\1", data) if b"\\u0000" in data else data
    return Codec(dumps, orjson.loads)


class Digits(str):
    """A Real as the user wrote it (`22.10`, not 22.1): the ADS keeps a Real's decimal places as
    its hint, and consumers see them. The json encoder has no way to write a number's own
    text, so a Digits is a string marked with a NUL (which no posted text can hold, see
    check_text) that with_digits() unquotes after encoding."""

    def __new__(cls, text: str) -> "Digits":
        digits = super().__new__(cls, "\0" + text)
        digits.number = float(text)
        return digits

    @property
    def text(self) -> str:
        return self[1:]


# A Digits as json and orjson write it. (Patterns a one-shot post does not need are compiled on
# first use, through re's own cache.)
_DIGITS = r'"\\u0000(-?[0-9][0-9.eE+-]*)"'


def with_digits(text: str) -> str:
    """Encoded JSON with each Digits written as the number it holds."""
    return re.sub(_DIGITS, r"\1", text) if "\\u0000" in text else text


def positive_int(value: Any) -> int | None:
    """A count the ADS announced (PingTimeout, MaxMsgSize): a positive int, also when sent as digits."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return value if type(value) is int and value > 0 else None


# Events: everything the reader thread hands to the main thread. Immutable
# records (NamedTuple: cheaper to define at start-up than dataclasses).

class Opened(NamedTuple):
    pass


class LoginAccepted(NamedTuple):
    text: str
    attributes: dict[str, Any]     # Key.Elements and the top-level Elements together
    data: str = "Ok"               # the State's Data: Ok, or Suspect (accepted all the same)
    stated: bool = True            # False: the Refresh carried no State at all

    @property
    def ping_timeout(self) -> int | None:
        return positive_int(self.attributes.get("PingTimeout"))

    @property
    def max_msg_size(self) -> int:
        return positive_int(self.attributes.get("MaxMsgSize")) or DEFAULT_MAX_MSG_SIZE


class LoginNotice(NamedTuple):
    """A Status on the login stream that leaves it open (Open/Suspect): news, not an end."""
    stream_state: str
    data_state: str
    code: str
    text: str


class LoginDenied(NamedTuple):
    """The login stream closed: a refused login, or a session ended by the ADS."""
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
    """Positive Acks with no Text, as one event per run of them in a frame: the bulk fast path."""
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
    error: BaseException            # raised on the reader thread: handled by the main thread


class Interrupted(NamedTuple):
    reason: str = "interrupted"     # the signal, or "stdout closed"


POST_OUTCOMES = (Acked, AckBatch, Nakked, ServerError)

Event = (Opened | LoginAccepted | LoginNotice | LoginDenied | Acked | AckBatch | Nakked | ServerError
         | ItemRefresh | ItemUpdate | ItemStatus | PingReceived | Other | Closed | Failure | Interrupted)

# Stream states after which no more messages come on the stream.
CLOSED_STREAM_STATES = {"NonStreaming", "ClosedRecover", "Closed", "Redirected"}


def decode(data: str | bytes, loads: Callable[[Any], Any] = json.loads) -> list[Event]:
    """One inbound frame as events, in order: the one parsing boundary. A run of plain positive
    Acks (no NakCode, no Text) becomes one AckBatch; an empty frame (an obsolete keepalive) none."""
    if not data:
        return []
    try:
        parsed = loads(data)
    except ValueError as exc:
        raise ProtocolViolation(f"the server sent a frame that is not JSON ({exc})") from None
    if parsed.__class__ is list and data.__class__ is bytes and b'"NakCode"' not in data \
            and b'"Text"' not in data:          # the bulk case: a frame of plain Acks and nothing else
        try:
            ack_ids = [msg["AckID"] for msg in parsed if msg["Type"] == "Ack"]
        except (KeyError, TypeError):
            ack_ids = None
        if ack_ids and len(ack_ids) == len(parsed):
            return [AckBatch(ack_ids)]
    events: list[Event] = []
    acks: list = []
    for msg in parsed if isinstance(parsed, list) else (parsed,):
        if type(msg) is dict and msg.get("Type") == "Ack" and "NakCode" not in msg and "Text" not in msg:
            acks.append(msg.get("AckID"))
            continue
        if acks:
            events.append(AckBatch(acks))
            acks = []
        events.append(classify(msg))
    if acks:
        events.append(AckBatch(acks))
    return events


def classify(msg: Any) -> Event:
    """Turn one inbound tr_json2 message into an event."""
    if not isinstance(msg, dict):
        raise ProtocolViolation(f"the server sent a message that is not a JSON object: {msg!r:.200}")
    mtype = msg.get("Type")
    if mtype == "Ping":
        return PingReceived()
    if msg.get("Domain") == "Login" and mtype in ("Refresh", "Status"):
        state = msg.get("State")
        stated = isinstance(state, dict)
        state = state if stated else {}          # none: a Refresh opens, a Status changes nothing
        stream, data = state.get("Stream", "Open"), state.get("Data", "Ok")
        code, text = str(state.get("Code", "None")), str(state.get("Text", ""))
        if stream != "Open":
            return LoginDenied(str(stream), str(data), code, text)
        if mtype == "Status":
            return LoginNotice(stream, str(data), code, text)
        attributes = dict((msg.get("Key") or {}).get("Elements") or {})
        attributes.update(msg.get("Elements") or {})
        return LoginAccepted(text, attributes, str(data), stated)
    if mtype == "Ack":
        if msg.get("NakCode") not in (None, "None", 0):
            return Nakked(msg.get("AckID"), str(msg["NakCode"]), str(msg.get("Text", "")))
        return Acked(msg.get("AckID"), str(msg.get("Text", "")))
    if mtype == "Error":
        return ServerError(msg.get("ID"), str(msg.get("Text", "")), offending_post_id(msg))
    if msg.get("Domain") != "Login":
        if mtype == "Refresh":
            return ItemRefresh(msg.get("ID"), msg.get("State") or {}, msg.get("Fields") or {},
                               msg.get("PostUserInfo"))
        if mtype == "Update":
            return ItemUpdate(msg.get("ID"), msg.get("Fields") or {}, msg.get("PostUserInfo"))
        if mtype == "Status":
            return ItemStatus(msg.get("ID"), msg.get("State") or {})
    return Other(msg)


def word(text: Any) -> str:
    """A name for an output line (a RIC, service, code): as it is when it is one printable word,
    else JSON-quoted, so that nothing from the input or the server can forge or break a line."""
    text = str(text)
    return text if text.isprintable() and text.split() == [text] and '"' not in text else json.dumps(text)


def state_words(stream: str, data: str, code: Any = None, text: str = "") -> str:
    """A State in the ADS's own words: `Stream/Data Code "Text"` (no Code when it is None)."""
    words = f"{word(stream)}/{word(data)}"
    if code not in (None, "None", 0):
        words += f" {word(code)}"
    return f"{words} {json.dumps(text)}" if text else words


def item_state_words(state: dict) -> str:
    return state_words(state.get("Stream", ""), state.get("Data", ""), state.get("Code"),
                       state.get("Text", ""))


def state_data(state: dict) -> dict:
    """An item State for --json output."""
    return {"stream": state.get("Stream"), "data": state.get("Data"),
            "code": state.get("Code", "None"), "text": state.get("Text", "")}


def offending_post_id(error: dict) -> int | None:
    """The PostID of the message an Error is about, from its Debug.Message, if it was a Post.

    What an ADS puts in Debug.Message is not documented for a message packed in a frame with
    others, and it may be cut short (the emulator keeps 1,000 characters): a message that does
    not parse is searched for its Type and PostID, which this tool writes near the start."""
    text = (error.get("Debug") or {}).get("Message", "")
    if not isinstance(text, str):
        return None
    try:
        offending = json.loads(text)
    except (ValueError, RecursionError):
        if re.search(r'"Type"\s*:\s*"Post"', text):
            match = re.search(r'"PostID"\s*:\s*(\d+)', text)
            return int(match[1]) if match else None
        return None
    if isinstance(offending, dict) and offending.get("Type") == "Post":
        post_id = offending.get("PostID")
        return post_id if type(post_id) is int else None
    return None


# ============================================================ field values

_DECIMAL = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", re.ASCII)
_NAME = re.compile(r"-?[A-Za-z0-9_]+")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON: post the string \"{name[:3] if name != '-Infinity' else '-Inf'}\"")


def finite(value: Any) -> bool:
    """False for a float that is NaN or infinite (it could not be sent: not JSON)."""
    return value.__class__ is not float or value - value == 0


def decimal_of(text: str) -> Any:
    """A JSON decimal as the number to send: a float, or Digits when the float would not write
    back the digits given (22.10, or more digits than a float holds). ValueError for a number
    beyond the range of a float."""
    number = float(text)
    if not finite(number):
        raise ValueError(f"{text} is beyond the range of a number")
    if "e" in text or "E" in text or repr(number) == text:
        return number
    return Digits(text)


# NaN and Infinity refused; decimals kept as written (Digits) where a float would drop places
_JSON_VALUES = json.JSONDecoder(parse_constant=_no_constant, parse_float=decimal_of)


def typed_value(raw: str) -> Any:
    """A text value typed as --field and CSV cells type it: int, decimal, blank (''), else string
    (only ASCII digits make a number). ValueError for a number that could not be sent."""
    if raw == "":
        return None
    if "\0" in raw:
        check_text("the value", raw)
    if _DECIMAL.fullmatch(raw):               # one match for both: this runs per CSV cell
        if "." in raw or "e" in raw or "E" in raw:
            number = float(raw)
            if not finite(number):
                raise ValueError(f"{raw} is beyond the range of a number")
            return number
        number = int(raw)
        if not -1 << 63 <= number < 1 << 64:
            raise ValueError(f"{raw} is beyond the range of a 64-bit integer")
        return number
    return raw


def parse_field(text: str, types: "FieldTypes | None" = None) -> tuple[str, Any]:
    """NAME=VALUE (typed by the field's type, else guessed: int, decimal, blank, string) or
    NAME:=JSON (checked against the field's type)."""
    types = types or FieldTypes()
    is_json = ":=" in text and ("=" not in text or text.index(":=") < text.index("="))
    if not is_json and "=" not in text:
        raise ValueError(f"{text!r}: expected NAME=VALUE or NAME:=JSON")
    name, raw = text.split(":=" if is_json else "=", 1)
    if not _NAME.fullmatch(name):
        raise ValueError(f"{text!r}: {name!r} is not a field name or FID")
    try:
        if not is_json:
            return name, types.text(name, raw)
        try:
            value = _JSON_VALUES.decode(raw)
        except ValueError as exc:
            raise ValueError(f"the value after ':=' is not JSON ({exc})") from None
        return name, types.json(name, value)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def walk(fields: dict[str, Any], rng: Any) -> dict[str, Any]:
    """Numeric fields moved by a random step of about 0.1 % (integers by whole units), never
    across zero; other fields unchanged."""
    out = {}
    for name, value in fields.items():
        value = value.number if isinstance(value, Digits) else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value:
            out[name] = value
        elif isinstance(value, int):
            step = max(1, abs(value) // 1000)
            moved = value + rng.randint(-step, step)
            out[name] = moved if moved * value > 0 else value
        else:
            out[name] = float(f"{value + rng.uniform(-1, 1) * abs(value) * 0.001:.6g}")
    return out


_FID = re.compile(r"-?\d+", re.ASCII)


# Field types: the RDMFieldDictionary and enumtype.def (--dictionary), for reading items back
# (FID order, names of posted FIDs) and for typing what is posted (FieldTypes).

class FieldDef(NamedTuple):
    """One field of the dictionary: its acronym, FID, RWF type, length and enum table."""
    name: str
    fid: int
    rwf_type: str                      # INT64, UINT64, REAL64, ENUM, DATE, TIME, RMTES_STRING, ...
    length: int                        # the field's display length: the characters it holds
    enums: dict[str, int] | None = None    # ENUM: display string -> value


class FieldDictionary:
    """The field dictionary (RDMFieldDictionary) and, for ENUM fields, their enum tables
    (enumtype.def). `fid_of` and `name_of` map acronyms and FIDs both ways."""

    def __init__(self, fields: Iterable[FieldDef]) -> None:
        self.by_name = {f.name: f for f in fields}
        self.by_fid = {f.fid: f for f in self.by_name.values()}
        self.fid_of = {name: f.fid for name, f in self.by_name.items()}
        self.name_of = {fid: f.name for fid, f in self.by_fid.items()}
        self.has_enums = False

    def lookup(self, key: str) -> FieldDef | None:
        """A field by acronym, or by FID when the key is a number (as the converter reads keys)."""
        return self.by_fid.get(int(key)) if _FID.fullmatch(key) else self.by_name.get(key)

    def unknown(self, key: str) -> str:
        """Why key names no field, with the closest names."""
        if _FID.fullmatch(key):
            return f"FID {key} is not in the field dictionary"
        return f"{key!r} is not in the field dictionary" + did_you_mean(key, self.by_name)


def did_you_mean(word_: str, choices: Iterable[str]) -> str:
    import difflib                        # only on an error, kept off the start-up path
    close = difflib.get_close_matches(word_, list(choices), n=3, cutoff=0.6) or \
        difflib.get_close_matches(word_.upper(), list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def load_dictionary(path: str, enum_path: str | None = None) -> FieldDictionary:
    """An RDMFieldDictionary (and enumtype.def: given, else the one beside it, if there is one).

    A dictionary line: ACRONYM "DDE ACRONYM" FID RIPPLES_TO FIELD_TYPE LENGTH RWF_TYPE RWF_LEN,
    where LENGTH may read `3 ( 3 )` for an enumerated field; `!` starts a comment line."""
    fields = []
    with open_text(path, "--dictionary") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("!"):
                continue
            match = re.fullmatch(_DICTIONARY_LINE, line.strip())
            if not match:
                raise UsageProblem(f"--dictionary {path}:{number}: not an RDMFieldDictionary line "
                                   '(ACRONYM "DDE NAME" FID RIPPLES TYPE LENGTH RWF_TYPE RWF_LEN)')
            name, fid, length, rwf_type = match["name"], int(match["fid"]), int(match["length"]), \
                match["rwf"].upper()
            fields.append(FieldDef(name, fid, rwf_type, length))
    dictionary = FieldDictionary(fields)
    if enum_path is None:
        beside = os.path.join(os.path.dirname(path), "enumtype.def")
        enum_path = beside if os.path.isfile(beside) else None
    if enum_path is not None:
        add_enum_tables(dictionary, enum_path)
    return dictionary


_DICTIONARY_LINE = r'(?a)(?P<name>\S+)\s+"[^"]*"\s+(?P<fid>-?\d+)\s+\S+\s+\S+\s+' \
    r'(?P<length>\d+)(\s*\(\s*\d+\s*\))?\s+(?P<rwf>[A-Za-z_0-9]+)\s+\d+'
_ENUM_VALUE = r'(?a)(?P<value>\d+)\s+(?:"(?P<text>[^"]*)"|#(?P<hex>[0-9A-Fa-f]*)#)(\s.*)?'


def add_enum_tables(dictionary: FieldDictionary, path: str) -> None:
    """enumtype.def: tables, each one or more `ACRONYM FID` lines then `VALUE "DISPLAY" MEANING`
    lines (a DISPLAY may be #hex#); each table goes to the ENUM fields it names."""
    tables: list[tuple[list[str], dict[str, int]]] = []
    with open_text(path, "--enum-dictionary") as lines:
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("!"):
                continue
            if text[0].isdigit():
                match = re.fullmatch(_ENUM_VALUE, text)
                if not match or not tables:
                    raise UsageProblem(f"--enum-dictionary {path}:{number}: not an enumtype.def line "
                                       '(ACRONYM FID, or VALUE "DISPLAY" MEANING)')
                display = match["text"] if match["hex"] is None else \
                    bytes.fromhex(match["hex"]).decode("latin-1")
                tables[-1][1].setdefault(display, int(match["value"]))
            else:
                acronym, *rest = text.split()
                if len(rest) != 1 or not _FID.fullmatch(rest[0]):
                    raise UsageProblem(f"--enum-dictionary {path}:{number}: not an enumtype.def line "
                                       '(ACRONYM FID, or VALUE "DISPLAY" MEANING)')
                if not tables or tables[-1][1]:
                    tables.append(([], {}))
                tables[-1][0].append(acronym)
    for acronyms, table in tables:
        for acronym in acronyms:
            field = dictionary.by_name.get(acronym)
            if field is not None and field.rwf_type == "ENUM":
                dictionary.by_name[acronym] = field = field._replace(enums=table)
                dictionary.by_fid[field.fid] = field
    dictionary.has_enums = True


def open_text(path: str, option: str) -> IO[str]:
    try:
        return open(path, encoding="latin-1")
    except OSError as exc:
        raise UsageProblem(f"{option}: cannot read {path}: {exc.strerror or exc}") from None


class FieldTypes:
    """Every posted value typed before anything is sent: by its field's type in the dictionary,
    or, with no dictionary, by guessing from the text (typed_value).

    Text (a --field VALUE, a CSV cell) is converted; JSON (NAME:=JSON, a JSON Lines value) is
    checked. A value the field's type cannot take is a ValueError naming the field, the value
    and what the type accepts. What the ADS's converter does with each type (RTSDK's C
    converter, jsonToRwfBase.C; the Java one, JsonRealConverter and the like):
    - INT, UINT, ENUM: a JSON number read with atoi, so 22.5 is stored 22 and 1e5 as 1: only
      whole numbers in range are sent. A string draws a Token Type Error.
    - REAL: a JSON number, or the strings "Inf", "-Inf", "NaN". A Real is a mantissa and a
      decimal hint, and the ADS writes it out with the hint (rwfToJsonSimple: rsslRealToString,
      so 2210 at 10^-2 reads 22.10); the C converter's JSON-to-Real parser is not in the files
      we could read (the Java one parses the number's text, but through a double). So the
      digits go as written (Digits), and an ADS that keeps them shows 22.10, one that does not
      shows 22.1: never another number.
    - ENUM: the number only; an ADS whose converter allows display strings maps the known ones
      and stores an unknown one blank. Here a display name is mapped through enumtype.def.
    - DATE, TIME, DATETIME: ISO 8601 strings (2024-01-02, 14:30:05.123, 2024-01-02T14:30:05).
    - ASCII, RMTES, UTF8 strings: JSON strings, stored whole: the converter does not check the
      dictionary's length (consumers then display a cut or overflowing value), so a longer
      value is refused here unless truncate is set. A backslash is dropped by the converter,
      so a NUL (which JSON can only send escaped) cannot be posted.
    """

    def __init__(self, dictionary: FieldDictionary | None = None, truncate: bool = False) -> None:
        self.dictionary, self.truncate = dictionary, truncate

    def key(self, name: str) -> FieldDef | None:
        """The field a --field NAME, CSV column or JSON key names (None with no dictionary)."""
        if self.dictionary is None:
            return None
        field = self.dictionary.lookup(name)
        if field is None:
            raise ValueError(self.dictionary.unknown(name))
        return field

    def text(self, name: str, raw: str) -> Any:
        field = self.key(name)
        return typed_value(raw) if field is None else self.from_text(field, raw)

    def json(self, name: str, value: Any) -> Any:
        field = self.key(name)
        if field is None:
            if not finite(value):
                raise ValueError(f"{name}: {value} is beyond the range of a number")
            if value.__class__ is int and not -1 << 63 <= value < 1 << 64:
                raise ValueError(f"{name}: {value} is beyond the range of a 64-bit integer")
            if isinstance(value, str):
                check_text(name, value)
            return value
        return self.from_json(field, value)

    def column(self, name: str) -> Callable[[str], Any]:
        """The converter of a CSV column's cells, resolved once from the header."""
        field = self.key(name)
        if field is None:
            return typed_value
        return lambda raw: self.from_text(field, raw)

    # -- by type

    def from_text(self, field: FieldDef, raw: str) -> Any:
        if raw == "":
            return None
        kind = field.rwf_type
        if kind.startswith(("INT", "UINT")) or kind == "ENUM":
            if _INTEGER.fullmatch(raw):
                return self.from_json(field, int(raw))
            if kind == "ENUM":
                return self.enum_by_name(field, raw)
            raise self.refused(field, raw)
        if kind.startswith(("REAL", "DOUBLE", "FLOAT")):
            if raw in ("Inf", "-Inf", "NaN"):
                return raw
            if not _DECIMAL.fullmatch(raw):
                raise self.refused(field, raw)
            return self.from_json(field, json_number(raw))
        return self.from_json(field, raw)

    def from_json(self, field: FieldDef, value: Any) -> Any:
        if value is None:
            return None
        kind, number = field.rwf_type, isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind.startswith(("INT", "UINT")) or kind == "ENUM":
            low, high = (0, 1 << 64) if kind.startswith("UINT") else (0, 1 << 16) if kind == "ENUM" \
                else (-1 << 63, 1 << 63)
            if kind == "ENUM" and isinstance(value, str):
                return self.enum_by_name(field, value)
            if not (number and isinstance(value, int)) or not low <= value < high:
                raise self.refused(field, value)
            if kind == "ENUM" and field.enums is not None and value not in field.enums.values():
                raise ValueError(f"{field.name}: {value} is not in its enum table (enumtype.def): "
                                 f"give one of its values or display names")
            return value
        if kind.startswith(("REAL", "DOUBLE", "FLOAT")):
            if value in ("Inf", "-Inf", "NaN"):
                return value
            if not (number or isinstance(value, Digits)):
                raise self.refused(field, value)
            if kind.startswith("REAL") and not real_fits(value):
                raise ValueError(f"{field.name}: {render_value(value)} does not fit a Real (18 digits, "
                                 "14 decimal places and an exponent of 7 at most)")
            return value
        if kind in _DATE_FORMS:
            if not isinstance(value, str) or not valid_date_time(kind, value):
                raise self.refused(field, value)
            return value
        if kind.endswith("STRING"):
            if not isinstance(value, str):
                raise self.refused(field, value)
            check_text(field.name, value)
            if kind == "ASCII_STRING" and not value.isascii():
                raise ValueError(f"{field.name} is an ASCII field: {value!r} holds other characters")
            if field.length and len(value) > field.length:
                if not self.truncate:
                    raise ValueError(f"{field.name} holds {field.length} characters: {value!r} has "
                                     f"{len(value)} (the ADS would store it whole; --truncate cuts it)")
                value = value[:field.length]
            return value
        if kind in ("BUFFER", "OPAQUE"):
            if not isinstance(value, str):
                raise self.refused(field, value)
            return value
        raise ValueError(f"{field.name} is of type {kind}, which cannot be posted as a field value")

    def enum_by_name(self, field: FieldDef, name: str) -> int:
        """An enum's number from its display name (exact, else ignoring case and padding)."""
        if field.enums is None:
            missing = "no enum table has it" if self.dictionary.has_enums else \
                "give --enum-dictionary (enumtype.def) to post display names"
            raise ValueError(f"{field.name} is an enum: post its number ({missing}), not {name!r}")
        table = field.enums
        if name in table:
            return table[name]
        wanted = name.strip().casefold()
        found = {table[d] for d in table if d.strip().casefold() == wanted}
        if len(found) == 1:
            return found.pop()
        names = {d.strip() for d in table if d.strip()}
        raise ValueError(f"{field.name}: {name!r} is not in its enum table" + did_you_mean(name.strip(), names))

    @staticmethod
    def refused(field: FieldDef, value: Any) -> ValueError:
        return ValueError(f"{field.name} is {TYPE_WORDS.get(field.rwf_type, field.rwf_type)}: "
                          f"{render_value(value)} is not one")


_INTEGER = re.compile(r"[-+]?\d+", re.ASCII)
_DATE_FORMS = {"DATE": r"\d{4}-\d{2}-\d{2}", "TIME": r"\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?",
               "DATETIME": r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?"}
TYPE_WORDS = {"INT64": "an integer", "INT32": "an integer", "UINT64": "a whole number from 0",
              "UINT32": "a whole number from 0", "ENUM": "an enum (its number or display name)",
              "REAL64": "a number (or \"Inf\", \"-Inf\", \"NaN\")", "REAL32": "a number",
              "DOUBLE": "a number", "FLOAT": "a number", "DATE": "a date (YYYY-MM-DD)",
              "TIME": "a time (HH:MM, HH:MM:SS or HH:MM:SS.fff)",
              "DATETIME": "a date and time (YYYY-MM-DDTHH:MM:SS)", "ASCII_STRING": "text",
              "RMTES_STRING": "text", "UTF8_STRING": "text", "BUFFER": "base64 text"}


def valid_date_time(kind: str, text: str) -> bool:
    """An ISO 8601 date, time or date-time of the form the converter reads, and a real one."""
    import datetime                        # only with a dictionary: kept off the start-up path
    if not re.fullmatch(_DATE_FORMS[kind], text, re.ASCII):
        return False
    date, _, time_ = text.partition("T") if kind == "DATETIME" else \
        (text, "", "") if kind == "DATE" else ("", "", text)
    try:
        if date:
            datetime.date.fromisoformat(date)
        if time_:
            datetime.time.fromisoformat(time_.split(".")[0])
    except ValueError:
        return False
    return True


def json_number(raw: str) -> Any:
    """A decimal as typed (`+5`, `.5`, `5.`, which JSON does not allow) as a JSON number."""
    text = raw.lstrip("+")
    if text.startswith((".", "-.")):
        text = text.replace(".", "0.", 1)
    if text.endswith("."):
        text = text[:-1]
    return int(text) if _INTEGER.fullmatch(text) else decimal_of(text)


def real_fits(value: Any) -> bool:
    """A number a Real can hold: at most 18 significant digits, 14 decimal places and an
    exponent of 7 (RWF's hints run from 10^-14 to 10^7)."""
    if isinstance(value, int):
        return -1 << 63 <= value < 1 << 63
    text = value.text if isinstance(value, Digits) else repr(value)
    mantissa, _, exponent = text.lower().partition("e")
    places = len(mantissa.partition(".")[2]) - int(exponent or 0)
    digits = mantissa.replace("-", "").replace(".", "").lstrip("0")
    return len(digits) <= 18 and places <= 14 and places >= -7


def check_text(name: str, value: str) -> None:
    if "\0" in value:
        raise ValueError(f"{name}: a NUL character cannot be posted (the ADS's converter drops the "
                         "backslash of its escape)")


# Reading items back (get, watch, post --verify, check).

def field_name(key: str, names: FieldDictionary | None) -> str | None:
    """The name a field comes back under: a FID is named through the dictionary, if there is one."""
    if not _FID.fullmatch(key):
        return key
    return names.name_of.get(int(key)) if names else None


def view_of(fields: tuple[str, ...], names: FieldDictionary | None) -> list[str | int] | None:
    """A Request's View for --field NAME|FID ...: names where the dictionary knows them, FIDs as
    numbers. An OMM array holds one type, so names and unnamed FIDs cannot be mixed."""
    view = [field_name(f, names) or int(f) for f in fields]
    if len({type(v) for v in view}) > 1:
        raise UsageProblem("--field: give names or FIDs, not both (or --dictionary to name the FIDs)")
    return view or None


def in_fid_order(fields: dict[str, Any], names: FieldDictionary | None) -> list[tuple[str, Any]]:
    """Fields in FID order when the dictionary is known (unknown names last), else as the ADS sent them."""
    if names is None:
        return list(fields.items())
    last = float("inf")
    return sorted(fields.items(), key=lambda item: names.fid_of.get(item[0], last))


def render_value(value: Any) -> str:
    """A field value as JSON: strings quoted, blank as null, so 42 and "42" stay distinct."""
    return value.text if isinstance(value, Digits) else json.dumps(value, ensure_ascii=False)


def render_fields(pairs: Iterable[tuple[str, Any]]) -> str:
    return " ".join(f"{word(name)}={render_value(value)}" for name, value in pairs)


class Mismatch(NamedTuple):
    """A posted field that did not read back as posted."""
    field: str
    posted: Any
    read: Any
    present: bool                   # False: the field is not in the item at all

    def render(self) -> str:
        read = render_value(self.read) if self.present else "(absent)"
        return f"{word(self.field)} posted {render_value(self.posted)}, read {read}"


def same_value(posted: Any, read: Any) -> bool:
    """Equal, numbers within a relative 1e-9 (the ADS stores Reals with a decimal hint)."""
    numbers = (int, float)
    posted = posted.number if isinstance(posted, Digits) else posted
    if isinstance(posted, numbers) and isinstance(read, numbers) \
            and not isinstance(posted, bool) and not isinstance(read, bool):
        return abs(posted - read) <= 1e-9 * max(abs(posted), abs(read)) or posted == read
    return posted == read


def compare_fields(posted: dict[str, Any], read: dict[str, Any],
                   names: FieldDictionary | None = None) -> tuple[list[Mismatch], list[str]]:
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
    return f"{word(info.get('Address'))}, UserID {word(info.get('UserID'))}"


# ============================================================= bulk input
# `post --file`: CSV or JSON Lines, read as a stream of Row (or BadRow) items.

# NamedTuples made on the bulk hot path, once per row, are made by tuple.__new__ (a
# NamedTuple's own __new__ is a Python call: 100 ns a row).
_new_tuple = tuple.__new__


class Row(NamedTuple):
    line: int
    ric: str
    service: str | None                # None: --service or the config
    refresh: bool | None               # None: --refresh decides
    fields: dict[str, Any]
    raw: Any                           # as read, for --failed-out: the CSV cells (a plain line: the
                                       # line, cut at its commas), or the JSON line


class BadRow(NamedTuple):
    line: int
    text: str


class EndOfInput(NamedTuple):
    error: str | None                  # why reading stopped early, if it did


# In a pipe's rows (chunk_ends=True): the rows before it are all that the input has given so
# far, so its reader hands them over rather than wait for more.
CHUNK_END: Any = object()


class Lines:
    """The physical lines of an input as text, each with its newline (a file's last line may
    have none), in order: a consumer numbers them from 1.

    A line that is not UTF-8, is MAX_LINE bytes or longer, or is cut off at the end of a pipe
    (no newline: its producer may have died mid-line) is not passed on: an empty line ("\\n")
    stands in for it and its problem waits in `problems` (its number, why), so one bad line never
    stops the reading. A BOM (Excel's "CSV UTF-8") is dropped. The input is read in blocks, a
    pipe's as they come, each decoded at once (blocks(): the lines of each read); memory stays
    bounded whatever the input: an endless line is skipped.
    """

    BLOCK = 1 << 16

    def __init__(self, binary: IO[bytes], pipe: bool) -> None:
        self.binary, self.pipe = binary, pipe
        self.problems: deque[tuple[int, str]] = deque()

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self.blocks())

    def blocks(self) -> Iterator[list[str]]:
        """The lines, a list for each read that ends one or more (never an empty list): a pipe's
        lines as soon as they are there."""
        read = getattr(self.binary, "read1", self.binary.read)
        count, rest, skipping, first = 0, b"", False, True    # lines so far; the next line's start
        while block := read(self.BLOCK):
            if skipping:                           # the rest of a line too long to post
                cut = block.find(b"\n") + 1
                if not cut:
                    continue
                block, skipping = block[cut:], False
            data = rest + block if rest else block
            if first and (len(data) >= 3 or b"\n" in data):     # a line shorter than a BOM has none
                data, first = data.removeprefix(b"\xef\xbb\xbf"), False
            end = data.rfind(b"\n") + 1
            rest = data[end:]
            if end:
                yield self._lines(data[:end], count)
                count += data.count(b"\n")      # none in rest
            if len(rest) >= MAX_LINE:
                count, rest, skipping = count + 1, b"", True
                self.problems.append((count, self._too_long()))
                yield ["\n"]
        if rest and self.pipe:
            self.problems.append((count + 1, "incomplete last line (no newline at the end of the input): not posted"))
            yield ["\n"]
        elif rest:                                 # a file's last line need not end in a newline
            yield self._lines(rest, count)

    def _lines(self, data: bytes, before: int) -> list[str]:
        """The lines in data, numbered from before + 1: decoded at once, unless one of them is
        not UTF-8 or too long."""
        if len(data) <= MAX_LINE:                  # then no line in it is too long
            try:
                return list(io.StringIO(data.decode(), newline="\n"))
            except UnicodeDecodeError:
                pass
        lines = []
        for number, raw in enumerate(io.BytesIO(data), before + 1):     # cut after each b"\n"
            if len(raw) - raw.endswith(b"\n") >= MAX_LINE:
                problem = self._too_long()
            else:
                try:
                    lines.append(raw.decode())
                    continue
                except UnicodeDecodeError as exc:
                    problem = f"not UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line"
            self.problems.append((number, problem))
            lines.append("\n")
        return lines

    @staticmethod
    def _too_long() -> str:
        return f"longer than {MAX_LINE} bytes: not posted (a post must fit the ADS's MaxMsgSize)"


def parse_type(value: Any) -> bool | None:
    """A row's TYPE/type: Refresh -> True, Update -> False, empty -> None."""
    if value in (None, ""):
        return None
    if isinstance(value, str) and value.lower() in ("refresh", "update"):
        return value.lower() == "refresh"
    raise ValueError(f"type {value!r} is not Refresh or Update")


def csv_rows(lines: Lines, header_out: list[str] | None = None, types: "FieldTypes | None" = None,
             chunk_ends: bool = False) -> Iterator[Row | BadRow]:
    """Rows of a CSV with a header: RIC, optional SERVICE and TYPE, then one column per field,
    each column typed once from the header (by the dictionary, or guessed cell by cell).

    Lines are taken a frame's at a time, as many as have been read (a pipe's rows go as they
    come, never waiting for more input). Lines that are plain (plain_rows) are cut at their
    commas, a chunk at once; any other chunk goes through csv.reader, with the same rows as
    the result. The header as read is also added to header_out (for --failed-out). With
    chunk_ends, each chunk's rows are followed by CHUNK_END.
    """
    import csv

    blocks, block, at, queued = lines.blocks(), [], 0, deque()
    problems = lines.problems

    def take(count: int) -> list[str]:
        """Up to count lines of those read; when none is left, of the next read (which may wait)."""
        nonlocal block, at
        if at == len(block):
            block, at = next(blocks, []), 0
        chunk = block[at:at + count]
        at += len(chunk)
        return chunk

    def reader_lines() -> Iterator[str]:
        while True:
            while queued:
                yield queued.popleft()
            line = take(1)                    # a quoted cell may go on past the chunk's lines
            if not line:
                return
            yield line[0]

    reader = csv.reader(reader_lines())
    try:
        raw_header = next(reader, [])
    except csv.Error as exc:
        yield BadRow(reader.line_num, f"CSV header: {exc}")
        return
    if problems and problems[0][0] <= reader.line_num:
        yield BadRow(*problems.popleft())
        return
    if header_out is not None:
        header_out.extend(raw_header)
    header = [h.strip() for h in raw_header]
    upper = [h.upper() for h in header]
    if "RIC" not in upper:
        yield BadRow(1, "the CSV header has no RIC column")
        return
    twice = next((header[i] for i, name in enumerate(upper) if name in upper[:i]), None)
    if twice is not None:
        yield BadRow(1, f"the CSV header has column {twice!r} twice")
        return
    special = {name: upper.index(name) for name in ("RIC", "SERVICE", "TYPE") if name in upper}
    types = types or FieldTypes()
    columns = []
    for i, name in enumerate(header):
        if i in special.values():
            continue
        if not _NAME.fullmatch(name):
            yield BadRow(1, f"header column {i + 1} {name!r} is not a field name or FID")
            return
        try:
            columns.append((i, name, types.column(name)))
        except ValueError as exc:
            yield BadRow(1, f"header column {i + 1}: {exc}")
            return
    ric_at, service_at, type_at = special["RIC"], special.get("SERVICE"), special.get("TYPE")
    width, typed, limit = len(header), column_typing(columns), csv.field_size_limit()
    skipped = 0                               # lines read around the reader (plain chunks)
    while chunk := take(PER_FRAME):
        first = reader.line_num + skipped + 1
        rows = plain_rows(chunk, first, width, ric_at, service_at, type_at, typed, limit)
        if rows is not None:
            skipped += len(chunk)
            yield from rows
            if chunk_ends:
                yield CHUNK_END
            continue
        queued.extend(chunk)
        batch: list[BadRow | tuple] = []      # in input order: bad rows, and rows whose cells to type
        while queued:                         # the reader has a line to read: its next() ends
            try:
                cells = next(reader)
            except csv.Error as exc:
                batch.append(BadRow(reader.line_num + skipped, f"CSV: {exc}"))
                continue
            line = reader.line_num + skipped
            while problems and problems[0][0] <= line:
                batch.append(BadRow(*problems.popleft()))
            if not cells:
                continue
            if len(cells) != width:
                batch.append(BadRow(line, f"{len(cells)} cells where the header has {width}"))
                continue
            ric = cells[ric_at].strip()
            if not ric:
                batch.append(BadRow(line, "no RIC"))
                continue
            try:
                refresh = parse_type(cells[type_at].strip()) if type_at is not None else None
            except ValueError as exc:
                batch.append(BadRow(line, str(exc)))
                continue
            service = cells[service_at].strip() or None if service_at is not None else None
            batch.append((line, ric, service, refresh, cells))
        yield from typed_rows(batch, typed)
        if chunk_ends:
            yield CHUNK_END
    while problems:
        yield BadRow(*problems.popleft())


def plain_rows(chunk: list[str], first: int, width: int, ric_at: int, service_at: int | None,
               type_at: int | None, typed: Callable, limit: int) -> list[Row] | None:
    """The rows of lines first, first + 1, ... when each is plain: no quote, no CR but in a
    CRLF, width cells, no cell over csv's field size limit (limit), a RIC (so not empty), a valid TYPE,
    and every cell typed. csv.reader would read them as str.split(",") does; None for any
    other chunk (csv.reader's turn)."""
    text = "".join(chunk)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if '"' in text or "\r" in text:
        return None
    records = (text[:-1] if text[-1] == "\n" else text).split("\n")
    count, commas = len(records), width - 1
    if set(map(str.count, records, itertools.repeat(","))) != {commas}:
        return None
    cells = ",".join(records).split(",")
    if len(text) > limit and max(map(len, cells)) > limit:
        return None
    columns = [cells[at::width] for at in range(width)]
    rics = list(map(str.strip, columns[ric_at]))
    if not all(rics):
        return None
    services = [cell.strip() or None for cell in columns[service_at]] if service_at is not None \
        else itertools.repeat(None)
    try:
        refreshes = [parse_type(cell.strip()) for cell in columns[type_at]] if type_at is not None \
            else itertools.repeat(None)
    except ValueError:
        return None
    fields, problems = typed(columns, count)
    if problems:
        return None
    return list(map(_new_tuple, itertools.repeat(Row), zip(
        range(first, first + count), rics, services, refreshes, fields, records)))


def typed_rows(batch: list[BadRow | tuple], typed: Callable) -> Iterator[Row | BadRow]:
    """A batch of csv_rows in order, each row's cells typed (a BadRow when one cannot be)."""
    rows = [item[4] for item in batch if item.__class__ is tuple]
    fields, problems = typed(list(zip(*rows)), len(rows)) if rows else ([], {})
    n = 0
    for item in batch:
        if item.__class__ is not tuple:
            yield item
            continue
        line, ric, service, refresh, cells = item
        if n in problems:
            yield BadRow(line, problems[n])
        else:
            yield _new_tuple(Row, (line, ric, service, refresh, fields[n], cells))
        n += 1


def column_typing(columns: list[tuple[int, str, Callable[[str], Any]]]) -> Callable:
    """How to type a batch of CSV rows, given by column (every column of the header), a column
    at a time: (each row's fields, a dict; {row's index: why it cannot be posted, the first
    bad cell's problem}). A column of plain numbers with no dictionary is read by orjson in
    one step (plain_numbers); any other column cell by cell, by its converter."""
    template = dict.fromkeys(name for _, name, _ in columns)
    loads = None
    if all(convert is typed_value for _, _, convert in columns):
        loads = import_orjson().loads         # post --file only, whose frames orjson encodes anyway

    def typed(cells: list[Sequence[str]], count: int) -> tuple[list[dict], dict[int, str]]:
        fields = list(map(dict.copy, itertools.repeat(template, count)))   # in the header's order
        problems: dict[int, str] = {}
        for at, name, convert in columns:
            column = plain_numbers(cells[at], loads) if loads else None
            if column is None:
                column = []
                for n, cell in enumerate(cells[at]):
                    try:
                        column.append(convert(cell))
                    except ValueError as exc:
                        problems.setdefault(n, str(exc))
                        column.append(None)
            for row, value in zip(fields, column):
                row[name] = value
        return fields, problems
    return typed


def plain_numbers(cells: Sequence[str], loads: Callable[[str], Any]) -> list | None:
    """The cells as typed_value types them, when each is a plain JSON number: read by orjson's
    loads as one array, a tenth of the time. None when any is not: a cell with a character no
    JSON number has (a blank, a space, text: true would be a bool) makes the array wrong or
    unreadable; a cell of 20 characters or more might be an integer beyond 64 bits, which
    orjson reads as a float."""
    text = ",".join(cells)
    if text.encode().translate(None, b"0123456789-+.eE,") or max(map(len, cells), default=0) >= 20:
        return None
    try:
        values = loads("[" + text + "]")
    except ValueError:
        return None
    return values if len(values) == len(cells) else None


def jsonl_rows(lines: Lines, types: "FieldTypes | None" = None, chunk_ends: bool = False) -> Iterator[Row | BadRow]:
    """Rows of JSON Lines: {"ric": ..., "service": ..., "type": "Refresh"|"Update", "fields": {...}},
    each value checked against its field's type. With chunk_ends, the rows of each read are
    followed by CHUNK_END."""
    problems, typed, line = lines.problems, (types or FieldTypes()).json, 0
    for block in lines.blocks():
        for text in block:
            line += 1
            if problems and problems[0][0] == line:
                yield BadRow(*problems.popleft())
            elif text.strip():
                yield jsonl_row(line, text, typed)
        if chunk_ends:
            yield CHUNK_END


def jsonl_row(line: int, text: str, typed: Callable[[str, Any], Any]) -> Row | BadRow:
    """The row of one JSON line, or why it cannot be posted."""
    try:
        obj = _JSON_VALUES.decode(text)
    except ValueError as exc:
        return BadRow(line, f"not JSON: {exc}")
    except RecursionError:
        return BadRow(line, "not JSON: nested too deeply")
    if not isinstance(obj, dict):
        return BadRow(line, "not a JSON object")
    ric, service, fields = obj.get("ric"), obj.get("service"), obj.get("fields")
    problem = ("no ric" if not isinstance(ric, str) or not ric else
               "service is not a string" if service is not None and not isinstance(service, str) else
               "fields is not an object" if not isinstance(fields, dict) else None)
    if problem is None:
        try:
            refresh = parse_type(obj.get("type"))
            fields = {name: typed(name, value) for name, value in fields.items()}
        except ValueError as exc:
            problem = str(exc)
    if problem:
        return BadRow(line, problem)
    return Row(line, ric, service or None, refresh, fields, text.rstrip("\r\n"))


def input_format(path: str, fmt: str | None) -> str:
    """csv or jsonl: --format, else the file's extension; stdin is CSV unless --format says."""
    if fmt:
        return fmt
    return "jsonl" if path.lower().endswith((".jsonl", ".ndjson", ".json")) else "csv"


# ========================================================= ack bookkeeping

class Outcome(NamedTuple):
    """How one post (or input row) ended: status is ack, nak, error, timeout, lost or unsent."""
    status: str
    service: str
    ric: str
    post_id: int | None                # None: a row that was never posted
    nak_code: str | None = None
    text: str | None = None
    line: int | None = None            # the input line, for posts read from a file
    row: "Row | None" = None           # the input row it came from (for --failed-out): not printed

    def render(self) -> str:
        words = [self.status.upper(), word(self.service), word(self.ric)]
        if self.post_id is not None:
            words.append(f"post {self.post_id}")
        if self.line is not None:
            words.append(f"line {self.line}")
        if self.nak_code:
            words.append(word(self.nak_code))
        if self.text:
            words.append(json.dumps(self.text))
        return " ".join(words)

    def data(self) -> dict:
        """The --json form: every field that is set."""
        return {k: v for k, v in self._asdict().items() if v is not None and k != "row"}

    def hint_key(self) -> str | None:
        """The HINTS key for this outcome: its NakCode, or for an ADS Error about a field
        (an unknown name, a value of the wrong type) the Error's kind and the field."""
        if self.status == "error" and self.text:
            if "Unexpected FID" in self.text:
                return "UnexpectedFID"
            for kind, pattern in FIELD_ERRORS.items():
                match = re.search(pattern, self.text)
                if match:
                    return f"{kind}:{match['field']}"
        return self.nak_code

    def hint(self) -> str | None:
        key = self.hint_key()
        if key is None or ":" not in key:
            return HINTS.get(key)
        kind, field = key.split(":", 1)
        return FIELD_HINTS[kind].format(field=field)


# The converter's Errors about one field's value, and what to do about each.
FIELD_ERRORS = {
    "Text": r"Expected 'STRING' for key '(?P<field>[^']+)' Received 'PRIMITIVE'",
    "Number": r"Expected 'PRIMITIVE' for key '(?P<field>[^']+)' Received 'STRING'",
    "Value": r"Unexpected Value\. Received '[^']*' for key '(?P<field>[^']+)'",
}
FIELD_HINTS = {
    "Text": "{field} is a text field: to post digits as text, quote them as JSON, --field {field}:='\"0042\"' "
            "(a JSON string in a JSON Lines file); or give --dictionary, which types every field",
    "Number": "{field} takes a number (an enum its number, not its display name): post the number, or give "
              "--dictionary with its enumtype.def, which maps display names",
    "Value": "{field} does not take that value: check its type in the ADS's dictionary, or give --dictionary, "
             "which checks every value before sending",
}


class Pending(NamedTuple):
    """A post awaiting its Ack: what its outcome names, and what its message is made from
    again for a resend (the message itself lives only until it is sent)."""
    service: str
    ric: str
    deadline: float                    # set once, when the post is made: resends keep it
    fields: dict[str, Any]
    refresh: bool
    domain: str
    stream: int                        # the login stream (off-stream) or an open item stream
    row: "Row | None" = None           # the input row it came from (post --file)


class Ledger:
    """Posts awaiting an Ack, by PostID. Owned by the main thread only, so it needs no lock.

    A post is pending from the moment it is made until its Ack, Nak or Error, or its deadline;
    `unsent` holds the messages of the pending posts no connection has taken yet (all of them
    again after a reconnect, made again from their Pending). A message is dropped once sent:
    keeping a window of them alive until their Acks cost 0.6-1.1 us a post in bulk, as they
    were freed long after they were made. Every post's deadline is fixed when it is made, so a
    post that keeps failing is resent only within its ack timeout, never forever.
    """

    def __init__(self) -> None:
        self.pending: dict[int, Pending] = {}
        self.unsent: dict[int, dict] = {}       # the messages of pending posts to send, oldest first
        self.counts: dict[str, int] = {}        # outcomes by status
        self.resent = 0
        self.late = 0                           # Acks that came after their post's TIMEOUT
        self._expired: dict[int, None] = {}     # recently timed-out PostIDs (LATE_MEMORY at most)
        self._next_id = 1

    def new_id(self) -> int:
        return self.new_ids(1)[0]

    def new_ids(self, count: int) -> range:
        """count PostIDs, in order, none used before in this session."""
        first = self._next_id
        self._next_id += count
        return range(first, first + count)

    def add(self, post_id: int, post: Pending, message: dict) -> None:
        self.pending[post_id] = post
        self.unsent[post_id] = message

    def add_all(self, ids: range, posts: list[Pending], messages: list[dict]) -> None:
        """Posts made together (a frame of rows), ids from new_ids."""
        self.pending.update(zip(ids, posts))
        self.unsent.update(zip(ids, messages))

    def take_unsent(self) -> list[dict]:
        """The messages of the posts not yet sent, oldest first; from now on they count as sent."""
        messages = list(self.unsent.values())
        self.unsent.clear()
        return messages

    def new_connection(self, message: Callable[[int, Pending], dict]) -> None:
        """A new connection: every pending post is to be sent on it, oldest first; the message of
        one already sent is made again (message(post_id, post))."""
        unsent = self.unsent
        self.resent += len(self.pending) - len(unsent)
        self.unsent = {post_id: unsent[post_id] if post_id in unsent else message(post_id, post)
                       for post_id, post in self.pending.items()}

    def resolve(self, post_id: Any, status: str, nak_code: str | None = None,
                text: str | None = None) -> Outcome | None:
        """The outcome for post_id, or None when it is not pending (unknown or already ended)."""
        post = self.pending.pop(post_id, None) if type(post_id) is int else None
        if post is None:
            return None
        self.unsent.pop(post_id, None)
        if status == "timeout":
            self._expired[post_id] = None
            if len(self._expired) > LATE_MEMORY:
                del self._expired[next(iter(self._expired))]
        self.tally(status)
        row = post.row
        return Outcome(status, post.service, post.ric, post_id, nak_code, text, row and row.line, row)

    def tally(self, status: str, count: int = 1) -> None:
        """Count outcomes (also one for a row that never became a post)."""
        self.counts[status] = self.counts.get(status, 0) + count

    def acked(self, ack_ids: list) -> tuple[int, list]:
        """End the posts of a frame of plain Acks at once: (how many, the AckIDs of no pending
        post)."""
        pop, others = self.pending.pop, []
        for ack_id in ack_ids:
            if type(ack_id) is not int or pop(ack_id, None) is None:
                others.append(ack_id)
        if self.unsent:                          # Acks from an earlier connection for posts to resend
            for ack_id in ack_ids:
                if type(ack_id) is int:
                    self.unsent.pop(ack_id, None)
        done = len(ack_ids) - len(others)
        self.tally("ack", done)
        return done, others

    def late_ack(self, post_id: Any) -> bool:
        """True, once, for the Ack of a post that has already timed out."""
        if type(post_id) is int and self._expired.pop(post_id, 0) is None:
            self.late += 1
            return True
        return False

    # Every post of a session has the same ack timeout, so deadlines rise in
    # insertion order and the oldest pending post is always the next to expire.

    def expire(self, now: float) -> list[Outcome]:
        late = list(itertools.takewhile(lambda pid: self.pending[pid].deadline <= now, self.pending))
        return [self.resolve(pid, "timeout", text="no ack within the ack timeout") for pid in late]

    def fail_unsent(self, text: str) -> list[Outcome]:
        """End the posts no connection took: they never reached the ADS."""
        return [self.resolve(pid, "unsent", text=text) for pid in list(self.unsent)]

    def fail_all(self, text: str) -> list[Outcome]:
        """End every pending post: unsent ones as such, the others lost (they may have been applied)."""
        return self.fail_unsent("never sent: " + text) + \
            [self.resolve(pid, "lost", text=text) for pid in list(self.pending)]

    def next_deadline(self) -> float | None:
        return next(iter(self.pending.values())).deadline if self.pending else None

    def exit_code(self, *, interrupted: bool = False, complete: bool = True, bad_input: bool = False) -> Exit:
        """The one exit rule for posting commands.

        130 when interrupted before the work was done (a post not acknowledged, or, complete
        False, input left unread); else 5 for a Nak or an Error, 6 for a timeout, 3 for a post
        lost or never sent; else 2 for malformed input (bad_input, which also explains rows left
        unsent by --strict); else 0.
        """
        counts = self.counts
        if interrupted and (not complete or any(status != "ack" for status in counts)):
            return Exit.INTERRUPTED
        if counts.get("nak") or counts.get("error"):
            return Exit.REJECTED
        if counts.get("timeout"):
            return Exit.TIMEOUT
        if counts.get("lost") or (counts.get("unsent") and not bad_input):
            return Exit.CONNECT
        return Exit.USAGE if bad_input else Exit.OK

    def summary(self) -> str:
        total = sum(self.counts.values())
        parts = [f"{self.counts.get(s, 0)} {label}" for s, label in
                 (("ack", "acknowledged"), ("nak", "nakked"), ("error", "errored"),
                  ("timeout", "timed out"), ("lost", "not acknowledged"), ("unsent", "not sent"))]
        late = f", {self.late} acknowledged late" if self.late else ""
        return f"{total} posts: " + ", ".join(parts) + f" ({self.resent} resent{late})"


# ================================================================ framing

class Frame(NamedTuple):
    messages: list[dict]
    data: bytes | None                 # UTF-8; None: this one message cannot be sent (problem says why)
    problem: str = ""


def pack(messages: list[dict], max_bytes: int, dumps: Callable[[Any], bytes] = _stdlib_dumps) -> Iterator[Frame]:
    """The messages in frames of at most PER_FRAME messages and max_bytes bytes (of UTF-8), in
    order: the one framing rule for every send. A lone message goes as an object, several as
    an array. A message that fits no frame (too large, or a value JSON cannot write) comes as
    a Frame without data, so that its sender can report it."""
    for i in range(0, len(messages), PER_FRAME):
        yield from _fit(messages[i:i + PER_FRAME], max_bytes, dumps)


def _fit(messages: list[dict], max_bytes: int, dumps: Callable[[Any], bytes]) -> Iterator[Frame]:
    try:
        data = dumps(messages[0] if len(messages) == 1 else messages)
    except (ValueError, TypeError):        # json: NaN or Infinity; orjson: an integer beyond 64 bits
        if len(messages) == 1:
            yield Frame(messages, None, "a value JSON cannot carry (NaN, Infinity or an integer beyond 64 bits)")
            return
    else:
        if len(data) <= max_bytes:
            yield Frame(messages, data)
            return
        if len(messages) == 1:
            yield Frame(messages, None, f"larger than the ADS's MaxMsgSize ({max_bytes} bytes)")
            return
    half = len(messages) // 2
    yield from _fit(messages[:half], max_bytes, dumps)
    yield from _fit(messages[half:], max_bytes, dumps)


# ============================================================= connection

_CLOSE = "close"         # writer: send the close frame, then stop
_STOP = "stop"           # writer: stop


class _Rest(bytes):
    """The end of a frame that a direct send began (the writer sends it, then releases the
    WebSocket's send lock, which the direct send kept so that no other frame cuts in)."""


class Connection:
    """One WebSocket connection to an ADS: a reader thread and a writer thread around
    websocket-client's WebSocket, so that the main thread never blocks on the network.

    The reader connects (within the timeout, following no redirect), then turns every frame
    into events on the session's queue, tagged with this connection; it answers a Ping by
    queueing a Pong at once; the end of the socket always becomes a Closed event. The writer
    sends the frames send() queued, in order; `sending_since` says how long it has been held
    up by a peer that does not read, which the session treats as a dead connection.

    A frame goes out at once, on the caller's thread, when nothing is queued before it and the
    socket takes it without waiting (a plain TCP socket: MSG_DONTWAIT); the writer then needs
    no wake-up (in bulk, 0.8 us of CPU a post, a ninth of the whole). What the socket does not
    take at once, the writer sends, in order.

    On a plain TCP socket the reader also reads in blocks (_recv): websocket-client asks for a
    frame's header, its length and its payload with a read each, and a block serves them all,
    often for several frames (100,000 posts in bulk: 1,215 reads instead of 3,227; a frame of
    100 Acks read in 26 us of CPU instead of 48). TLS keeps websocket-client's reads: the SSL
    socket buffers its own records.
    """

    READ_SIZE = 1 << 16                      # bytes asked of the socket per read (_recv)

    def __init__(self, url: str, events: "SimpleQueue[tuple[Connection | None, Event]]",
                 timeout: float, loads: Callable[[Any], Any] = json.loads) -> None:
        self.url, self.events, self.timeout, self.loads = url, events, timeout, loads
        self.outbound: SimpleQueue[str | bytes] = SimpleQueue()
        self.last_rx = time.monotonic()          # when anything last arrived (liveness)
        self.sending_since: float | None = None  # when the frame being written was started
        self.closed = False                      # set by the reader when the socket is gone
        self._ws: Any = None
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._closing = False
        self._lock = threading.Lock()            # for _backlog and the direct sends
        self._backlog = 0                        # frames queued for the writer and not yet sent
        self._direct = False                     # frames may be sent at once (a plain socket)
        self._text_frame: Callable[[str | bytes], Any] | None = None
        self._lost: type[Exception] = ConnectionError   # websocket-client's, once open()
        self._sock_recv: Callable[[int], bytes] | None = None   # the plain socket's recv
        self._block, self._at = b"", 0           # what _recv read and has not handed out yet

    def open(self) -> None:
        """Start connecting; Opened or Closed arrives as an event."""
        import websocket                      # costly: imported only when a command connects
        started()

        self._ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True)
        abnf = websocket.ABNF
        self._text_frame = lambda data: abnf.create_frame(data, abnf.OPCODE_TEXT)
        self._lost = websocket.WebSocketConnectionClosedException
        self._reader = threading.Thread(target=self._read, name="websocket-reader", daemon=True)
        self._reader.start()

    # The reader and writer threads: never raise, never wait on the main thread.

    def _read(self) -> None:
        ws, code, reason, error = self._ws, None, "", None
        try:
            try:
                ws.connect(self.url, timeout=self.timeout, subprotocols=[SUBPROTOCOL],
                           header=["User-Agent: contribute.py"], redirect_limit=0)
            except Exception as exc:
                raise redirect_of(ws) or exc from None
            if self._closing:                    # given up on while connecting
                return
            ws.settimeout(None)
            self.last_rx = time.monotonic()
            if type(ws.sock) is socket.socket:   # plain TCP (TLS: an ssl.SSLSocket)
                self._direct = hasattr(socket, "MSG_DONTWAIT")
                self._sock_recv, ws.frame_buffer.recv = ws.sock.recv, self._recv
            self._writer = threading.Thread(target=self._write, name="websocket-writer", daemon=True)
            self._writer.start()
            self.events.put((self, Opened()))
            while True:
                opcode, frame = ws.recv_data_frame(True)
                self.last_rx = time.monotonic()
                if opcode == 0x8:                # a close frame (websocket-client answered it)
                    code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else None
                    reason = frame.data[2:].decode("utf-8", "replace")
                    break
                if opcode in (0x1, 0x2):
                    self._on_frame(frame.data)
        except Exception as exc:                 # websocket-client's errors, OSError, TLS
            error = exc
        finally:
            self.closed = True
            self.outbound.put(_STOP)
            self._abort()
            if ws is not None:
                ws.shutdown()                    # the socket's file descriptor is released here
            self.events.put((self, Closed(code, reason, error)))

    def _recv(self, size: int) -> bytes:
        """websocket-client's read of up to size bytes, served from a block read from the socket
        (READ_SIZE at most): one system call for what would be three or more. The end of the
        stream raises what websocket-client's own read raises."""
        block, at = self._block, self._at
        if at >= len(block):
            block, at = self._sock_recv(self.READ_SIZE), 0
            if not block:
                raise self._lost("Connection to remote host was lost.")
            self._block = block
        self._at = at + size
        return block[at:at + size]

    def _on_frame(self, data: bytes) -> None:
        try:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("< %s", data.decode("utf-8", "replace"))
            for event in decode(data, self.loads):
                if event.__class__ is PingReceived:
                    self.send(PONG_TEXT)
                else:
                    self.events.put((self, event))
        except Exception as exc:
            self.events.put((self, Failure(exc)))

    def _write(self) -> None:
        ws = self._ws
        try:
            while True:
                data = self.outbound.get()
                if data is _STOP:
                    return
                self.sending_since = time.monotonic()
                if data is _CLOSE:
                    ws.send_close()
                    return
                if data.__class__ is _Rest:
                    try:
                        ws.sock.sendall(data)    # blocks while the peer does not read
                    finally:
                        ws.lock.release()
                else:
                    ws.send(data)                # a text frame; blocks while the peer does not read
                self.sending_since = None
                with self._lock:
                    self._backlog -= 1
        except Exception as exc:                 # the socket failed: the reader reports it
            log.debug("send failed: %s", exc)
            self._abort()
        finally:
            self.sending_since = None

    # Main thread (send() also from the reader, for Pongs).

    def send(self, data: str | bytes) -> None:
        """Queue a text frame (str, or UTF-8 bytes) for the writer: never blocks. Every frame is
        logged with '>' at debug level."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("> %s", data if isinstance(data, str) else data.decode("utf-8", "replace"))
        with self._lock:
            if self._direct and not self._backlog:
                data = self._send_now(data)
                if data is None:
                    return
            self._enqueue(data)

    def _enqueue(self, data: str | bytes) -> None:
        """Queue data for the writer, counted in the backlog until it is sent (self._lock held)."""
        self._backlog += 1
        self.outbound.put(data)

    def _send_now(self, data: str | bytes) -> str | bytes | _Rest | None:
        """Send a frame without waiting (nothing is queued before it): None when the socket took
        it all; else what the writer is to send: the frame itself when none of it went, or the
        rest of it (_Rest, the WebSocket's send lock still held)."""
        ws = self._ws
        sock = ws.sock
        if sock is None or not ws.lock.acquire(blocking=False):    # closed, or a control frame going out
            return data
        try:
            frame = self._text_frame(data).format()         # masked, as websocket-client sends it
            sent = sock.send(frame, socket.MSG_DONTWAIT)
        except Exception:                        # the buffer is full, or the socket failed: the writer's turn
            ws.lock.release()
            return data
        if sent == len(frame):
            ws.lock.release()
            return None
        return _Rest(frame[sent:])

    def local_address(self) -> str:
        return self._ws.sock.getsockname()[0]

    def close(self, goodbye: Iterable[str] = ()) -> None:
        """Send the goodbye frames and a close frame, wait (bounded) for the server's close, then
        shut the socket down, which ends both threads. Given up while connecting, the attempt is
        cut short (or ends by itself within the connect timeout)."""
        self._closing = True
        if self._writer is not None and not self.closed:
            for text in goodbye:
                self.send(text)
            with self._lock:
                self._enqueue(_CLOSE)
            self._reader.join(CLOSE_TIMEOUT)
        self._abort()

    def _abort(self) -> None:
        """Shut the socket down: a blocked read or write returns at once."""
        sock = getattr(self._ws, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass


class Redirected(Exception):
    """The server answered the WebSocket upgrade with an HTTP redirect (not followed)."""

    def __init__(self, status: int, location: str | None) -> None:
        super().__init__(f"HTTP {status} to {location or '(no Location)'}")
        self.status, self.location = status, location


def redirect_of(ws: Any) -> Redirected | None:
    """The redirect websocket-client refused to follow, if that is why the upgrade failed."""
    response = getattr(ws, "handshake_response", None)
    if response is not None and 300 <= response.status < 400:
        return Redirected(response.status, (response.headers or {}).get("location"))
    return None


# =========================================================== orchestration

_HOSTNAME = re.compile(r"[\w-]+(\.[\w-]+)*\.?")


def parse_host(entry: str) -> tuple[str, int | None]:
    """One --host entry: NAME, IPV4, [IPV6] or a bare IPv6 address, each with an optional :PORT
    (not for a bare IPv6). ValueError naming the entry otherwise."""
    bad = f"{entry!r} is not HOST or HOST:PORT"
    if "/" in entry or "@" in entry:
        raise ValueError(bad + " (give the host alone: the tool adds ws:// and --path)")
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or not is_ipv6(host) or (rest and not rest.startswith(":")):
            raise ValueError(bad)
        port = rest[1:] if rest else None
    elif entry.count(":") > 1:
        if not is_ipv6(entry):
            raise ValueError(bad + " (an IPv6 address with a port goes in brackets: [::1]:15000)")
        host, port = entry, None
    else:
        host, sep, port = entry.partition(":")
        if not _HOSTNAME.fullmatch(host) or (sep and not port):
            raise ValueError(bad)
        port = port or None
    if port is None:
        return host, None
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def is_ipv6(text: str) -> bool:
    import ipaddress                      # only for IPv6 entries: kept off the start-up path
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def host_port(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        if not self.host or not self.host.strip(", "):
            raise UsageProblem("no ADS host: give --host, CONTRIBUTE_HOST or 'host' in the config file "
                               "(or --sim for the built-in emulator)")
        try:
            entries = [parse_host(e.strip()) for e in self.host.split(",") if e.strip()]
        except ValueError as exc:
            raise UsageProblem(f"--host: {exc}") from None
        return [(host, port or self.port) for host, port in entries]

    def url_for(self, host: str, port: int) -> str:
        return f"{'wss' if self.tls else 'ws'}://{host_port(host, port)}{self.path}"


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
    types: "FieldTypes | None" = None  # how the values were typed (and the rows of a file will be)


class Reporter:
    """Outcomes on stdout (text lines or JSON lines), hints and notices on stderr.

    A stdout whose reader went away (EPIPE) is muted and `on_broken` is called once: the session
    then stops as on Ctrl-C. A broken stderr is ignored: it only ever carries diagnostics.
    """

    def __init__(self, out: IO[str], err: IO[str], as_json: bool = False, quiet: bool = False) -> None:
        self.out, self.err, self.as_json, self.quiet = out, err, as_json, quiet
        self.broken = False
        self.on_broken: Callable[[], None] | None = None
        self._hinted: set[str] = set()

    def emit(self, text: str, data: dict) -> None:
        """One result on stdout: `data` as a JSON line with --json, else `text`."""
        self.line(with_digits(_OUTPUT.encode(data)) if self.as_json else text)

    def line(self, text: str) -> None:
        """A line on stdout: the one place that writes there."""
        if self.broken:
            return
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except (OSError, ValueError):         # EPIPE, EIO, a closed file
            self.broken = True
            mute(self.out)
            if self.on_broken is not None:
                self.on_broken()

    def outcome(self, outcome: Outcome) -> None:
        if not (self.quiet and outcome.status == "ack"):
            self.emit(outcome.render(), outcome.data())
        self.hint_once(outcome.hint())

    def result(self, text: str, data: dict, success: bool) -> None:
        if not (self.quiet and success):
            self.emit(text, data)

    def hint(self, key: Any, hints: dict[str, str] = HINTS) -> None:
        """The hint for a common case (a NakCode, a State Code), if there is one."""
        self.hint_once(hints.get(key))

    def hint_once(self, text: str | None) -> None:
        """A hint on stderr, once per run."""
        if text is not None and not self.quiet and text not in self._hinted:
            self._hinted.add(text)
            self.say(f"hint: {text}")

    def notice(self, text: str) -> None:
        if not self.quiet:
            self.say(text)

    def say(self, text: str) -> None:
        try:
            self.err.write(f"{text}\n")
            self.err.flush()
        except (OSError, ValueError):
            pass

    def event(self, kind: str, message: str, **data: Any) -> None:
        """A session event (reconnect, login retry): a JSON line with --json, else a stderr line."""
        if self.as_json:
            self.emit("", {"event": kind, **data})
        else:
            self.notice(f"contribute: {message}")


def mute(stream: IO[str]) -> None:
    """Point a broken stream's file descriptor at /dev/null, so that nothing fails on it again
    (Python's own flush at exit included)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


class Session:
    """One session with the ADS, used by the main thread only: the link (hosts, login,
    liveness, reconnects), the posts in flight (ledger, framing, resends) and the item streams.

    Nothing it does blocks without a deadline, and every wait wakes on Ctrl-C and SIGTERM. With
    recover=True (long-running commands) a lost connection is not the end: the session backs off
    (growing until a connection proves itself with an Ack or an item message), reconnects through
    the host list, logs in again and sends again every pending post, keeping its PostID and its
    ack deadline, and every streaming request. Meanwhile posts wait in the ledger and time out
    at their deadline like any other, so an ADS gone for good ends every post as TIMEOUT.
    """

    BURST = 256                                  # events handled per wait, when they are queued

    def __init__(self, settings: Settings, reporter: Reporter, *, spec: PostSpec | None = None,
                 recover: bool = False, resend: bool = True, window: int | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None, codec: Codec = STDLIB) -> None:
        self.settings = settings
        self.codec = codec
        self.hosts = settings.hosts()            # validated now: a usage error before any I/O
        self.reporter = reporter
        self.spec = spec
        self.ack_timeout = spec.ack_timeout if spec else 10.0
        self.recover_enabled = recover
        self.resend_enabled = resend
        self.window = window
        self.outcome = on_outcome or reporter.outcome
        # SimpleQueue: its put() is reentrant, so the signal handler may use it too.
        self.events: SimpleQueue[tuple[Connection | None, Event]] = SimpleQueue()
        self.conn: Connection | None = None
        self.login: LoginAccepted | None = None  # set while logged in on self.conn
        self.where = ""                          # host:port of the current connection
        self.ledger = Ledger()
        self.interrupts = 0
        self.connections = 0                     # logins accepted, reconnects included
        self.reconnect_at: float | None = None   # when disconnected and recovering: the next attempt
        self.user_info: dict | None = None       # PostUserInfo, worked out at the first login
        self.login_request: dict | None = None   # the Login as last sent (who we are)
        self.on_other: Callable[[Any], None] | None = None    # events that are not the protocol's
        self.on_reconnect: Callable[[], None] | None = None   # logged in again, before the resend
        self.on_late: Callable[[int], None] | None = None     # an Ack after the post's TIMEOUT
        self.on_acks: Callable[[int], None] | None = None   # how many posts a frame acked, instead of outcomes
        # Item streams: each open stream's handler, and the Requests to send again after a
        # reconnect (streaming ones only). Stream IDs follow the login's.
        self.items: dict[int, Callable[[Any], None]] = {}
        self.item_requests: dict[int, dict] = {}
        self._stream_ids = itertools.count(LOGIN_STREAM + 1)
        self._host = 0                           # index of the host to try next when reconnecting
        self._delays: Iterator[float] | None = None   # the backoff since the last proven connection
        self._attempt = 0
        self._pinged_at = 0.0
        self._rng: Any = None
        self._restore_handlers: Callable[[], None] = lambda: None    # the signals' handlers before ours

    def __enter__(self) -> "Session":
        self._restore_handlers = handle_interrupts(self._on_signal)
        self.reporter.on_broken = lambda: self.events.put((None, Interrupted("stdout closed")))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """The one shutdown path: login Close, close the socket, report what is still pending."""
        try:
            self._disconnect(logout=True)
        finally:
            self._fail_all("not acknowledged before the session ended")
            self.reporter.on_broken = None
            self._restore_handlers()

    @property
    def stopping(self) -> bool:
        """Interrupted (Ctrl-C, SIGTERM, stdout closed): no new posts."""
        return self.interrupts > 0

    @property
    def connected(self) -> bool:
        return self.login is not None

    def _disconnect(self, logout: bool) -> None:
        conn, self.conn = self.conn, None        # from now on its events are stale
        login, self.login = self.login, None
        if conn is not None:
            goodbye = [encode(build_login_close())] if logout and login is not None else []
            conn.close(goodbye)

    def _fail_all(self, text: str) -> None:
        for outcome in self.ledger.fail_all(text):
            self.outcome(outcome)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGINT and SIGTERM, while the session lasts: an Interrupted event on the queue the main
        thread waits on, so it wakes at once, whatever it was waiting for."""
        self.events.put((None, Interrupted(SIGNAL_NAMES[signum])))

    def next_event(self, deadline: float | None) -> Event | None:
        """The next event of the current connection (or a signal, or input), None at the deadline.

        An Ack, Nak or Error names its post, so it counts whichever connection
        brought it; an earlier connection's other events (its close, say) are
        dropped.
        """
        while True:
            timeout = None if deadline is None else min(max(0.0, deadline - time.monotonic()), MAX_SECONDS)
            if timeout == 0 and self.events.empty():   # a poll finding nothing: no QueueEmpty raised
                return None
            try:
                source, event = self.events.get(timeout=timeout)
            except QueueEmpty:
                return None
            if source is None or source is self.conn or isinstance(event, POST_OUTCOMES):
                return event                     # else: an earlier connection's state, now stale

    def take_queued(self) -> None:
        """Handle every event already queued (input rows, say), without waiting."""
        while (event := self.next_event(0)) is not None:
            self.dispatch(event)

    # -- the link: connect, log in, reconnect

    def connect(self) -> LoginAccepted:
        """Log in through the first host that accepts; --retries more rounds of the list.

        With one host and no retries the error is that host's own; otherwise it names every
        host and why it failed (a Timeout when every host timed out).
        """
        failures, timeouts = [], 0
        rounds = self.settings.retries + 1
        delays = self.backoff()
        for round_number in range(rounds):
            for index, (host, port) in enumerate(self.hosts):
                try:
                    login = self._open(host, port)
                    self._host = index
                    return login
                except LoginRefused as exc:
                    if not exc.retryable:
                        raise                    # a real denial: another host will say the same
                    error: ContributeError = exc
                except (ConnectFailed, Timeout) as exc:
                    error = exc
                if len(self.hosts) == 1 and rounds == 1:
                    raise error
                failures.append(f"{host_port(host, port)} ({error})")
                timeouts += isinstance(error, Timeout)
                log.info("%s failed: %s", host_port(host, port), error)
            if round_number + 1 < rounds:
                self.pause(next(delays))
        failed = Timeout if timeouts == len(failures) else ConnectFailed
        raise failed("could not log in to any ADS: " + "; ".join(failures),
                     "check --host, --port and that the ADS is up")

    def _open(self, host: str, port: int) -> LoginAccepted:
        """Connect to one host and log in, within --connect-timeout.

        On failure the connection is closed at once, so that nothing it still
        delivers is mistaken for news of the next attempt.
        """
        self._disconnect(logout=False)
        self.where = host_port(host, port)
        self.conn = Connection(self.settings.url_for(host, port), self.events, self.settings.connect_timeout,
                               self.codec.loads)
        try:
            login = self._login(self.conn)
        except BaseException:
            self._disconnect(logout=False)
            raise
        self._established(login)
        return login

    def _login(self, conn: Connection) -> LoginAccepted:
        s = self.settings
        deadline = time.monotonic() + s.connect_timeout
        log.info("connecting to %s", conn.url)
        conn.open()
        event = self._next_or_stop(deadline)
        if event is None:
            raise Timeout(f"no answer from {self.where} within {s.connect_timeout:g}s (connecting and "
                          "upgrading to WebSocket)", "check --host and --port, and that no firewall "
                          "drops the traffic")
        if isinstance(event, Closed):
            raise connect_error(event, self.where, conn.url, s.connect_timeout)
        if not isinstance(event, Opened):
            raise ProtocolViolation(f"unexpected event before the connection opened: {event}")
        position = s.position or f"{conn.local_address()}/{socket.gethostname()}"
        user = s.user or default_user()
        login = self.login_request = build_login(user, s.app_id, position)
        log.info("logging in as %s (ApplicationId %s, Position %s)", user, s.app_id, position)
        conn.send(encode(login))
        delays = self.backoff()
        while True:
            event = self._next_or_stop(deadline)
            if event is None:
                raise Timeout(f"no login response from {self.where} within {s.connect_timeout:g}s")
            if isinstance(event, LoginAccepted):
                return event
            if isinstance(event, LoginDenied):
                delay = next(delays)
                if event.stream_state != "ClosedRecover" or time.monotonic() + delay >= deadline:
                    raise LoginRefused(login_error(event), HINTS.get(event.code), event)
                self.reporter.event("login_retry", f"login: {describe_state(event)}; "
                                    f"logging in again in {delay:.1f}s", where=self.where,
                                    code=event.code, text=event.text, delay=round(delay, 3))
                self.pause(delay)
                conn.send(encode(login))
            else:
                self.dispatch(event)

    def _next_or_stop(self, deadline: float) -> Event | None:
        """The next event before the deadline, posts expiring meanwhile; Stopped on an interrupt."""
        while True:
            due = self.ledger.next_deadline()
            event = self.next_event(deadline if due is None else min(deadline, due))
            self._expire()
            if isinstance(event, Interrupted):
                self.dispatch(event)
                raise Stopped(f"interrupted ({event.reason})")
            if event is not None or time.monotonic() >= deadline:
                return event

    def pause(self, seconds: float) -> None:
        """Wait while still handling events; Stopped when interrupted."""
        until = time.monotonic() + seconds
        while (event := self._next_or_stop(until)) is not None:
            self.dispatch(event)

    def _established(self, login: LoginAccepted) -> None:
        """Logged in: note what the ADS announced, then send everything pending and every
        streaming request on this connection."""
        self.login = login
        self.connections += 1
        self._pinged_at = 0.0
        attributes = login.attributes
        if attributes.get("SupportOMMPost", 1) != 1:
            log.warning("the ADS does not announce SupportOMMPost: posts may be refused")
        for key in ("PingTimeout", "MaxMsgSize"):
            if key in attributes and positive_int(attributes[key]) is None:
                log.warning("the login's %s %r is not a positive number: ignored", key, attributes[key])
        if not login.stated:
            log.warning("the login Refresh carries no State: taken as accepted")
        elif login.data != "Ok":
            self.reporter.notice(f"contribute: login accepted with Data {word(login.data)}: "
                                 f"{json.dumps(login.text)}")
        if self.spec is not None and self.user_info is None:
            self.user_info = self._post_user_info(self.spec)
        self.ledger.new_connection(self.message)
        if self.connections > 1 and self.on_reconnect is not None:
            self.on_reconnect()
        self.flush()
        refused = self._send_all(list(self.item_requests.values()))
        for request in refused:
            log.error("the request for %s is larger than the ADS's MaxMsgSize: not sent again",
                      request["Key"].get("Name"))
            self.close_item(request["ID"], request.get("Domain", "MarketPrice"), send=False)

    def backoff(self) -> Iterator[float]:
        """Exponential backoff with jitter: from --reconnect-min (at most 0.5 s) doubling to the cap."""
        if self._rng is None:
            import random                     # kept off the start-up path of one-shot commands
            self._rng = random.Random()
        delay = self.settings.reconnect_min
        while True:
            yield delay / 2 + self._rng.uniform(0, delay / 2)
            delay = min(self.settings.reconnect_max, delay * 2)

    def _lost(self, reason: str) -> None:
        """The connection is gone: reconnect later (recover=True), else raise ConnectionLost."""
        self.reporter.event("disconnected", f"{reason} ({self.where})",
                            where=self.where, reason=reason, pending=len(self.ledger.pending))
        self._disconnect(logout=False)
        if self.stopping:
            self._fail_all(f"{reason}, while stopping")
            return
        if not self.recover_enabled:
            raise ConnectionLost(reason)
        if not self.resend_enabled:              # at most once: what was sent is not sent again
            sent = [pid for pid in self.ledger.pending if pid not in self.ledger.unsent]
            for post_id in sent:
                self.settle(post_id, "lost", text=reason)
        self._host += 1
        self._schedule()

    def _schedule(self) -> None:
        if self._delays is None:
            self._delays = self.backoff()
        delay = next(self._delays)
        self._attempt += 1
        host, port = self.hosts[self._host % len(self.hosts)]
        self.reconnect_at = time.monotonic() + delay
        self.reporter.event("reconnecting", f"reconnecting to {host_port(host, port)} in {delay:.2f}s "
                            f"(attempt {self._attempt})", where=host_port(host, port),
                            delay=round(delay, 3), attempt=self._attempt)

    def _reconnect(self) -> None:
        """One reconnect attempt (the next host); another is scheduled if it fails."""
        self.reconnect_at = None
        host, port = self.hosts[self._host % len(self.hosts)]
        try:
            self._open(host, port)
        except Stopped:
            return                               # interrupted: the command ends
        except LoginRefused as exc:
            if not exc.retryable:
                raise
            log.info("%s: %s", host_port(host, port), exc)
        except (ConnectFailed, Timeout) as exc:
            log.info("%s: %s", host_port(host, port), exc)
        else:
            self._attempt = 0
            self.reporter.event("reconnected", f"reconnected to {self.where}; resent "
                                f"{len(self.ledger.pending)} posts", where=self.where,
                                resent=len(self.ledger.pending))
            return
        self._host += 1
        self._schedule()

    def _proven(self) -> None:
        """The connection works (an Ack or an item message came): the next backoff starts afresh."""
        self._delays = None

    # -- waiting

    def wait(self, until: float | None) -> Event | None:
        """Handle the events that come up to `until` (at most BURST at once), expire overdue
        posts, keep the connection alive and reconnect when due. The last event, or None.

        A lost connection is recovered from when the session recovers, else it raises.
        """
        try:
            return self._wait(until)
        except ConnectionLost as exc:
            self._lost(str(exc))
            return None

    def _wait(self, until: float | None) -> Event | None:
        deadlines = [d for d in (until, self.ledger.next_deadline(), self._liveness(), self.reconnect_at)
                     if d is not None]
        event = self.next_event(min(deadlines) if deadlines else None)
        last, handled = event, 0
        while event is not None:                 # then what is already queued, up to BURST
            self.dispatch(event)
            last, handled = event, handled + 1
            if isinstance(event, Interrupted) or handled >= self.BURST:
                break
            event = self.next_event(0)
        self._expire()
        if self.reconnect_at is not None and time.monotonic() >= self.reconnect_at:
            self._reconnect()
        return last

    def _expire(self) -> None:
        ledger = self.ledger
        if ledger.pending and ledger.next_deadline() <= time.monotonic():
            for outcome in ledger.expire(time.monotonic()):
                self.outcome(outcome)

    def _liveness(self) -> float | None:
        """The next time the connection needs looking at, or ConnectionLost when it is dead: nothing
        received for PingTimeout (after our Ping at a third of it), or what we send left unread
        for as long (SEND_STALL when the login gave no PingTimeout)."""
        conn, login = self.conn, self.login
        if conn is None or login is None:
            return None
        now, timeout = time.monotonic(), login.ping_timeout
        stalled = conn.sending_since
        limit = timeout or SEND_STALL
        if stalled is not None and now - stalled >= limit:
            raise ConnectionLost(f"{self.where} has not read what we sent for {limit:g}s")
        next_check = stalled + limit if stalled is not None else None
        if not timeout:
            return next_check
        last_rx = conn.last_rx
        if now - last_rx >= timeout:
            raise ConnectionLost(f"nothing received from {self.where} for {timeout}s (PingTimeout)")
        if self._pinged_at > last_rx:
            due = last_rx + timeout
        elif now - last_rx >= timeout / 3:
            conn.send(PING_TEXT)
            self._pinged_at = now
            due = last_rx + timeout
        else:
            due = last_rx + timeout / 3
        return due if next_check is None else min(due, next_check)

    # -- posts

    def post(self, service: str, ric: str, fields: dict[str, Any], refresh: bool, *,
             domain: str = "MarketPrice", stream: int = LOGIN_STREAM) -> int:
        """Make a post, pending from now with its ack deadline; flush() sends it. Off-stream
        unless stream is an open item stream. Its PostID."""
        post_id = self.ledger.new_id()
        post = Pending(service, ric, time.monotonic() + self.ack_timeout, fields, refresh, domain, stream)
        self.ledger.add(post_id, post, self.message(post_id, post))
        return post_id

    def message(self, post_id: int, post: Pending) -> dict:
        """The Post message of a pending post (made again, the same, for a resend)."""
        return build_post(post_id, post.service, post.ric, post.fields, post.refresh, post.domain,
                          self.user_info, post.stream)

    def make_refresh(self, post_id: int) -> None:
        """A pending post goes (and, after another reconnect, goes again) as a Refresh."""
        post = self.ledger.pending[post_id]._replace(refresh=True)
        self.ledger.add(post_id, post, self.message(post_id, post))    # in its place, oldest first

    def post_rows(self, rows: list["Row"], service: str, refresh: bool, domain: str) -> None:
        """post() for each row of a file, at once (the bulk hot path): one ack deadline for
        them all. A row's own SERVICE and TYPE, where it has them, go before service and refresh."""
        ids, deadline = self.ledger.new_ids(len(rows)), time.monotonic() + self.ack_timeout
        posts = [_new_tuple(Pending, (row.service or service, row.ric, deadline, row.fields,   # Pending(...)
                                      refresh if row.refresh is None else row.refresh, domain, LOGIN_STREAM, row))
                 for row in rows]
        self.ledger.add_all(ids, posts, list(map(self.message, ids, posts)))

    def flush(self) -> None:
        """Send the posts not yet sent, packed into frames under the login's MaxMsgSize, when
        logged in (else they wait for the next connection). A post that cannot be sent at all
        ends as an ERROR here."""
        if self.ledger.unsent and self.login is not None:
            self._send_all(self.ledger.take_unsent(), problems=True)

    def _send_all(self, messages: list[dict], problems: bool = False) -> list[dict]:
        """Send messages in frames (the one send path); those that cannot be sent are returned,
        or with problems=True, as posts, settled as errors."""
        refused = []
        limit = self.login.max_msg_size if self.login else DEFAULT_MAX_MSG_SIZE
        for frame in pack(messages, limit, self.codec.dumps):
            if frame.data is not None:
                self.conn.send(frame.data)
            elif problems:
                self.settle(frame.messages[0]["PostID"], "error", text=f"the post is {frame.problem}")
            else:
                refused.append(frame.messages[0])
        return refused

    def _post_user_info(self, spec: PostSpec) -> dict | None:
        """PostUserInfo for this session's posts."""
        if not spec.post_user_info:
            return None
        address = spec.post_user_address or ipv4_of(self.conn.local_address())
        user_id = spec.post_user_id if spec.post_user_id is not None else os.getpid()
        return {"Address": address, "UserID": user_id} if address else None

    def window_full(self) -> bool:
        return bool(self.window) and len(self.ledger.pending) >= self.window

    def drain(self) -> None:
        """Wait until no post is pending (each has its own ack deadline); a second interrupt
        stops waiting."""
        while self.ledger.pending and self.interrupts < 2:
            self.wait(None)

    def settle(self, post_id: Any, status: str, code: str | None = None, text: str | None = None) -> bool:
        outcome = self.ledger.resolve(post_id, status, code, text)
        if outcome is None:
            if status == "ack" and self.ledger.late_ack(post_id):
                log.info("post %s was acknowledged after its ack timeout", post_id)
                if self.on_late is not None:
                    self.on_late(post_id)
                return True
            log.warning("%s for unknown or already ended post %s was ignored",
                        "an Ack" if status == "ack" else f"a {status}", word(repr(post_id)))
            return False
        self._proven()
        self.outcome(outcome)
        return True

    # -- item streams (get, watch, post --on-stream, read-backs)

    def request(self, service: str, ric: str, domain: str, handler: Callable[[Any], None], *,
                streaming: bool = True, view: list | None = None) -> int:
        """Open an item stream; its Refresh, Updates and Status go to handler. The stream's ID."""
        stream = next(self._stream_ids)
        if view and self.login and self.login.attributes.get("SupportViewRequests") != 1:
            log.info("the ADS does not announce SupportViewRequests: requesting every field")
            view = None
        request = build_request(stream, service, ric, domain=domain, streaming=streaming, view=view)
        if self.login is None:
            raise ConnectionLost(f"not connected to send the request for {service} {ric}")
        if self._send_all([request]):
            raise Rejected(f"the request for {word(service)} {word(ric)} is larger than the ADS's "
                           f"MaxMsgSize ({self.login.max_msg_size} bytes)", "ask for fewer fields")
        self.items[stream] = handler
        if streaming:
            self.item_requests[stream] = request
        return stream

    def close_item(self, stream: int, domain: str, *, send: bool = True) -> None:
        """Forget an item stream; send its Close unless the ADS closed it (send=False)."""
        self.items.pop(stream, None)
        self.item_requests.pop(stream, None)
        if send and self.conn and not self.conn.closed:
            self.conn.send(encode(build_close(stream, domain)))

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
            if self.stopping:
                raise Stopped("interrupted")
        if not replies:
            self.close_item(stream, domain)
            raise Timeout(f"no reply to the request for {word(service)} {word(ric)} within {timeout:g}s")
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

    # -- every event's effect, in one place: a handler per event type

    def dispatch(self, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event)
        elif self.on_other is not None:
            self.on_other(event)

    def _on_ack_batch(self, event: AckBatch) -> None:
        """Plain Acks. With on_acks (bulk, where an Ack prints nothing) they end their posts in
        one step per frame, with no Outcome each; Acks for no pending post are settled one by
        one (late ones are counted)."""
        if self.on_acks is None:
            for ack_id in event.ack_ids:
                self.settle(ack_id, "ack")
            return
        done, others = self.ledger.acked(event.ack_ids)
        if done:
            self._proven()
            self.on_acks(done)
        for ack_id in others:
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
            log.error("the ADS sent an Error on stream %s: %s", word(event.stream), json.dumps(event.text))

    def _on_login_accepted(self, event: LoginAccepted) -> None:
        if self.login is not None:               # a later login Refresh (a reissue's answer)
            self.login = event

    def _on_login_notice(self, event: LoginNotice) -> None:
        self.reporter.notice(f"contribute: login: {describe_state(event)} (the session goes on)")

    def _on_login_denied(self, event: LoginDenied) -> None:
        self.login = None
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
        """The first interrupt: nothing new is sent (posts not sent yet end UNSENT), no reconnect;
        posts in flight are still awaited. The second: drain() stops waiting."""
        self.interrupts += 1
        if self.interrupts > 1:
            return
        log.info("interrupted (%s): no new posts", event.reason)
        for outcome in self.ledger.fail_unsent(f"not sent: {event.reason}"):
            self.outcome(outcome)
        if self.login is None:                   # between connections: nothing can be acked now
            self.reconnect_at = None
            self._fail_all(f"{event.reason} while reconnecting")

    def _on_item(self, event: Any) -> None:
        self._proven()
        handler = self.items.get(event.stream)
        if handler is not None:
            handler(event)
        else:
            log.debug("ignored: %s on stream %s, which is not open", type(event).__name__, event.stream)

    def _on_other(self, event: Other) -> None:
        log.debug("ignored: %s", event.msg)

    def _on_ignored(self, event: Any) -> None:
        pass

    _handlers: dict[type, Callable[["Session", Any], None]] = {
        AckBatch: _on_ack_batch, Acked: _on_acked, Nakked: _on_nakked, ServerError: _on_server_error,
        LoginAccepted: _on_login_accepted, LoginNotice: _on_login_notice, LoginDenied: _on_login_denied,
        Closed: _on_closed, Failure: _on_failure, Interrupted: _on_interrupted, Other: _on_other,
        Opened: _on_ignored, ItemRefresh: _on_item, ItemUpdate: _on_item, ItemStatus: _on_item}


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


def connect_error(event: Closed, where: str, url: str, timeout: float) -> ContributeError:
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
    if isinstance(error, TimeoutError) or type(error).__name__ == "WebSocketTimeoutException":
        return Timeout(f"no answer from {where} within {timeout:g}s (connecting and upgrading to WebSocket)",
                       "check --host and --port, and that no firewall drops the traffic")
    if isinstance(error, Redirected):
        return ConnectFailed(f"the server at {where} redirected the WebSocket upgrade on {url} ({error}): "
                             "not followed", "give the ADS's own host and port (--host, --port, --path)")
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


def describe_state(event: LoginDenied | LoginNotice) -> str:
    """The ADS's own words: Stream/Data Code "Text"."""
    return f"{word(event.stream_state)}/{word(event.data_state)} {word(event.code)} {json.dumps(event.text)}"


# The commands. Each returns an exit status; errors propagate as ContributeError.

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
            " ".join(f"{k}={word(attrs.get(k))}" for k in LOGIN_ATTRIBUTES)
        reporter.result(text, {"status": "accepted", "text": login.text,
                               **{name: attrs.get(k) for k, name in LOGIN_ATTRIBUTES.items()}},
                        success=True)
    return Exit.OK


def run_post(settings: Settings, spec: PostSpec, refresh: bool, reporter: Reporter, *,
             verify: bool = False, on_stream: bool = False, names: FieldDictionary | None = None) -> Exit:
    """One post. on_stream: open the item's stream first and post on it; verify: after the Ack,
    read the item back and compare the fields just posted."""
    verified = Exit.OK
    with Session(settings, reporter, spec=spec) as session:
        session.connect()
        stream = open_for_posting(session, spec) if on_stream else LOGIN_STREAM
        session.post(spec.service, spec.ric, spec.fields, refresh, domain=spec.domain, stream=stream)
        session.flush()
        session.drain()
        if verify and session.ledger.counts == {"ack": 1}:
            verified = verify_post(session, spec, reporter, names)
        if on_stream:
            session.close_item(stream, spec.domain)
    code = session.ledger.exit_code(interrupted=session.stopping)     # after the shutdown's LOST
    return code if code != Exit.OK else verified


def open_for_posting(session: Session, spec: PostSpec) -> int:
    """Open the item's stream for an on-stream post (waiting up to the ack timeout); its ID."""
    stream, reply = session.first_reply(spec.service, spec.ric, spec.domain, spec.ack_timeout,
                                        streaming=True)
    if reply.state.get("Stream") in CLOSED_STREAM_STATES:
        hint = ITEM_HINTS.get(reply.state.get("Code"))
        if reply.state.get("Code") == "NotFound":
            hint = "on-stream posts need an existing item: create it with an off-stream post --refresh"
        raise Rejected(f"cannot open {word(spec.service)} {word(spec.ric)} to post on its stream: "
                       f"{item_state_words(reply.state)}", hint)
    return stream


def item_refused(reply: "ItemRefresh | ItemStatus") -> bool:
    """The ADS answered a request by closing the stream (not found, not entitled, ...)."""
    return isinstance(reply, ItemStatus) or reply.state.get("Stream") in CLOSED_STREAM_STATES - {"NonStreaming"}


def read_back(session: Session, spec: PostSpec,
              names: FieldDictionary | None) -> tuple[ItemRefresh, list[Mismatch], dict[str, Any]]:
    """Snapshot the item just posted (waiting up to the ack timeout) and compare the posted fields:
    the reply, the mismatches, and the posted fields that could be checked."""
    view = [name for name in (field_name(key, names) for key in spec.fields) if name]
    reply = session.snapshot(spec.service, spec.ric, spec.domain, spec.ack_timeout, view or None)
    if item_refused(reply):
        raise Rejected(f"reading {word(spec.service)} {word(spec.ric)} back: {item_state_words(reply.state)}",
                       ITEM_HINTS.get(reply.state.get("Code")))
    mismatches, unverified = compare_fields(spec.fields, reply.fields, names)
    if unverified:
        session.reporter.notice(f"contribute: not verified: FID {', '.join(unverified)} "
                                "(give --dictionary to name FIDs)")
    return reply, mismatches, {k: v for k, v in spec.fields.items() if k not in unverified}


def mismatch_hint(session: Session, reply: ItemRefresh, mismatches: list[Mismatch]) -> str:
    if reply.post_user_info and reply.post_user_info != session.user_info:
        return f"the item was last posted by someone else ({describe_poster(reply.post_user_info)})"
    blanked = [m.field for m in mismatches if m.present and isinstance(m.posted, str) and m.read is None]
    if blanked:
        return (f"{', '.join(blanked)} stored blank: an ADS that allows enum display names blanks one it "
                "does not know, and the value is lost although acknowledged; post the enum's number, "
                "or give --dictionary with its enumtype.def, which maps display names before sending")
    return ("the ADS stored another value: check the field's type in the ADS dictionary "
            "(an enum takes its number, a date YYYY-MM-DD), or give --dictionary to type every value")


def verify_post(session: Session, spec: PostSpec, reporter: Reporter, names: FieldDictionary | None) -> Exit:
    """post --verify: VERIFIED, or a MISMATCH line per field (exit 5)."""
    reply, mismatches, checked = read_back(session, spec, names)
    head = f"{word(spec.service)} {word(spec.ric)}"
    if not mismatches:
        reporter.result(f"VERIFIED {head} {render_fields(checked.items())}",
                        {"status": "verified", "service": spec.service, "ric": spec.ric, "fields": checked},
                        success=True)
        return Exit.OK
    reporter.result("\n".join(f"MISMATCH {head} {m.render()}" for m in mismatches),
                    {"status": "mismatch", "service": spec.service, "ric": spec.ric,
                     "mismatches": [m._asdict() for m in mismatches],
                     "post_user_info": poster_data(reply.post_user_info)}, success=False)
    reporter.notice(f"hint: {mismatch_hint(session, reply, mismatches)}")
    return Exit.REJECTED


def poster_data(info: dict | None) -> dict | None:
    """PostUserInfo for --json output."""
    return {"address": info.get("Address"), "user_id": info.get("UserID")} if info else None


def run_get(settings: Settings, reporter: Reporter, service: str, ric: str, *, domain: str = "MarketPrice",
            fields: tuple[str, ...] = (), timeout: float = 10.0, names: FieldDictionary | None = None) -> Exit:
    """A snapshot of one item: its fields, State and last poster. 0 when found, 5 when the ADS
    answered with a closed Status."""
    view = view_of(fields, names)                 # a usage error before any I/O
    with Session(settings, reporter) as session:
        session.connect()
        reply = session.snapshot(service, ric, domain, timeout, view)
    head = f"{word(service)} {word(ric)} {item_state_words(reply.state)}"
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
    width = max((len(word(name)) for name, _ in ordered), default=0)
    lines += [f"{word(name).ljust(width)}  {render_value(value)}" for name, value in ordered]
    reporter.result("\n".join(lines), {**data, "fields": dict(ordered),
                                        "post_user_info": poster_data(reply.post_user_info)}, success=True)
    return Exit.OK


class Watch:
    """`watch`: item streams printed as their messages arrive, and how each ended."""
    SEVERITY = (Exit.OK, Exit.TIMEOUT, Exit.REJECTED)          # the worst ending decides the exit
    KINDS = {ItemRefresh: "refresh", ItemUpdate: "update", ItemStatus: "status"}

    def __init__(self, session: Session, reporter: Reporter, service: str, domain: str,
                 count: int | None, names: FieldDictionary | None) -> None:
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
        words = [data["type"].upper(), word(self.service), word(ric)]
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
            self.reporter.emit(f"TIMEOUT {word(self.service)} {word(ric)} \"no reply within {timeout:g}s\"",
                               {"type": "timeout", "service": self.service, "ric": ric})
            self.session.close_item(stream, self.domain)
            self.end(Exit.TIMEOUT)
        self.waiting.clear()

    def end(self, code: Exit) -> None:
        self.code = max(self.code, code, key=self.SEVERITY.index)


def run_watch(settings: Settings, reporter: Reporter, service: str, rics: tuple[str, ...], *,
              domain: str = "MarketPrice", fields: tuple[str, ...] = (), timeout: float = 10.0,
              count: int | None = None, names: FieldDictionary | None = None) -> Exit:
    """Streaming requests for the items; every Refresh, Update and Status printed until --count
    Updates, Ctrl-C, or the ADS closing every stream. Lost connections are recovered and the
    streams requested again."""
    view = view_of(fields, names)                 # a usage error before any I/O
    with Session(settings, reporter, recover=True, codec=fast_codec()) as session:
        session.connect()
        watch = Watch(session, reporter, service, domain, count, names)
        for ric in dict.fromkeys(rics):
            watch.start(ric, view)
        first_deadline = time.monotonic() + timeout
        while not watch.done and not session.stopping:
            session.wait(first_deadline if watch.waiting else None)
            if watch.waiting and time.monotonic() >= first_deadline:
                watch.time_out(timeout)
    return watch.code


def run_run(settings: Settings, spec: PostSpec, reporter: Reporter, *, refresh: bool = True,
            interval: float = 5.0, count: int | None = None, walk_fields: bool = False,
            window: int | None = None, resend: bool = True) -> Exit:
    """A Refresh (unless refresh is False), then an Update every interval, count times or until
    stopped; recovering from lost connections.

    Every post carries all the run's fields, so after a reconnect the first post sent (the
    oldest one resent, or else the next) goes as a Refresh: an ADS that restarted with an empty
    cache has the item again, and its watchers get a fresh image, as from any OMM provider
    after a recovery. Intervals that pass while disconnected or while the window is full are
    skipped, not made up."""
    import random                         # only run needs it: kept off the start-up path
    rng = random.Random()
    fields = dict(spec.fields)
    with Session(settings, reporter, spec=spec, recover=True, resend=resend, window=window,
                 codec=fast_codec()) as session:
        pending_refresh = [refresh]

        def refresh_first() -> None:
            first = next(iter(session.ledger.unsent), None)
            if first is None:
                pending_refresh[0] = True
            else:
                session.make_refresh(first)

        if refresh:
            session.on_reconnect = refresh_first
        session.connect()
        updates = 0
        next_at = time.monotonic()
        while not session.stopping and (count is None or updates < count):
            now = time.monotonic()
            if now < next_at or not session.connected or session.window_full():
                session.wait(next_at if now < next_at else None)
                continue
            as_refresh, pending_refresh[0] = pending_refresh[0], False
            if walk_fields and not (as_refresh and session.connections == 1):
                fields = walk(fields, rng)
            session.post(spec.service, spec.ric, fields, as_refresh, domain=spec.domain)
            session.flush()
            if not (as_refresh and session.connections == 1):
                updates += 1                     # the first Refresh is not one of the --count Updates
            next_at = max(next_at + interval, now)
        session.drain()
    interrupted = session.stopping
    reporter.notice(f"run: {session.ledger.summary()}{' (interrupted)' if interrupted else ''}")
    return session.ledger.exit_code(interrupted=interrupted)


class Bulk:
    """`post --file`: rows read as the window allows, posted as they come, each accounted for.

    Every row is read against one of --window credits; a credit comes back when the row's post
    ends (a frame's Acks give theirs back at once). So rows read plus posts in flight never
    exceed --window (and the chunk of at most a frame's rows the CSV reader types ahead), and
    memory stays flat whatever the input's size. A file is read by the main thread, a frame's
    rows at a time (read); a pipe, whose reads may block, by a thread of its own, onto the
    session's queue as many rows at once as the input gave (feed). Posts are sent as soon as the queue is
    momentarily empty or PER_FRAME are waiting: a slow pipe is posted row by row and a file in
    full frames. A row's ack deadline starts when the main thread takes it, so during an
    outage rows time out like posts in flight. Once stopping (Ctrl-C, SIGTERM, stdout closed,
    --strict) nothing more is read or sent: rows read and not yet posted end UNSENT.
    """

    def __init__(self, session: Session, spec: PostSpec, refresh: bool, window: int, rate: float | None,
                 strict: bool, failed: "FailedRows | None") -> None:
        self.session, self.spec, self.refresh, self.rate, self.strict = session, spec, refresh, rate, strict
        self.reporter = session.reporter
        self.failed = failed
        self.credits = window               # the reader's own count of credits
        self.slots: SimpleQueue[int] = SimpleQueue()    # credits given back, in counts
        self.lock = threading.Lock()        # the reader puts rows only while `reading`
        self.reading = True
        self.window = window
        self.held: deque[Row] = deque()     # rows waiting for --rate
        self.next_at = 0.0                  # when --rate lets the next row go
        self.timed_out: dict[int, Row] = {} # TIMEOUT rows, out of --failed-out while a late Ack may come
        self.ended = False                  # all input read
        self.stopped = False                # --strict met a bad row
        self.read_error: str | None = None
        self.last_line = 0                  # the last input line taken
        self.invalid = self.unsent = 0
        self.posted = 0                     # posts sent: made, less those stopped before their frame went
        self.nak_codes: dict[str, int] = {}

    # -- rows in

    def read(self, rows: Iterator[Row | BadRow]) -> bool:
        """A file's next rows, taken on the main thread: as many as the credits allow, up to a
        frame's (a file's read does not block, so it needs no thread). True when it took any."""
        if self.ended or not self.reading:
            return False
        while not self.slots.empty():
            self.credits += self.slots.get()
        count, batch, end = min(self.credits, PER_FRAME), [], None
        if not count:
            return False
        try:
            batch.extend(itertools.islice(rows, count))    # on an error, the rows read so far stay
            if len(batch) < count:
                end = EndOfInput(None)
        except Exception as exc:            # unreadable input (an I/O error): reported, not raised
            end = EndOfInput(f"{type(exc).__name__}: {exc}")
        self.credits -= len(batch)
        self.take(batch + [end] if end else batch)
        return True

    @property
    def readable(self) -> bool:
        """A file has rows to read now: not all read, not stopped, and a credit to read them."""
        return not self.ended and self.reading and bool(self.credits or not self.slots.empty())

    def feed(self, rows: Iterator[Row | BadRow], events: Any) -> None:
        """The reader thread of a pipe (rows with chunk_ends): a credit for each row, and the
        rows go on the queue together, up to a frame's, as soon as the input has given no more
        for now (CHUNK_END), or before waiting for a credit (their posts free credits)."""
        end, batch = EndOfInput(None), []
        try:
            for item in rows:
                if item is CHUNK_END or len(batch) == PER_FRAME or not self.credits:
                    if batch and not self.hand_over(batch, events):
                        return
                    batch = []
                if item is CHUNK_END:
                    continue
                if not self.credits:
                    self.credits = self.slots.get()
                    if not self.reading:
                        return
                self.credits -= 1
                batch.append(item)
        except Exception as exc:            # unreadable input (an I/O error): reported, not raised
            end = EndOfInput(f"{type(exc).__name__}: {exc}")
        self.hand_over(batch + [end], events)

    def hand_over(self, batch: list, events: Any) -> bool:
        """Rows to the main thread, unless it stopped reading (then False)."""
        with self.lock:
            if not self.reading:
                return False
            if batch:
                events.put((None, batch))
            return True

    def take(self, items: list) -> None:
        """The main thread's side of the queue (Session.on_other): a list of rows from the reader.
        Rows that go straight out, the usual case, take the short way."""
        if self.strict or self.rate or self.stopped or not self.reading or self.session.stopping:
            for item in items:
                self.take_one(item)
            return
        service = self.spec.service
        others = [item for item in items if item.__class__ is not Row or not (service or item.service)]
        rows = [item for item in items if item.__class__ is Row and (service or item.service)] \
            if others else items
        if rows:
            self.last_line = max(self.last_line, rows[-1].line)
            self.post(rows)
        for item in others:                 # bad rows, the end of the input
            self.take_one(item)

    def take_one(self, item: Any) -> None:
        if isinstance(item, Row):
            self.last_line = max(self.last_line, item.line)
            if self.stopped or not self.reading or self.session.stopping:
                self.unsend(item, "not sent: --strict stopped at an earlier line" if self.stopped
                            else "not sent: stopped")
            elif not (item.service or self.spec.service):
                self.slots.put(1)
                self.reject(item.line, "no service: give --service or a SERVICE column")
            elif self.rate:
                self.held.append(item)
            else:
                self.post([item])
        elif isinstance(item, BadRow):
            self.last_line = max(self.last_line, item.line)
            self.slots.put(1)
            self.reject(item.line, item.text)
        elif isinstance(item, EndOfInput):
            self.ended, self.read_error = True, item.error
            if item.error:
                log.error("input: %s after line %d", item.error, self.last_line)
            else:
                log.info("input: every line read (%d)", self.last_line)

    def reject(self, line: int, text: str) -> None:
        self.invalid += 1
        self.reporter.emit(f"INVALID line {line} {json.dumps(text)}",
                           {"status": "invalid", "line": line, "text": text})
        if self.strict:
            self.stopped = True

    def unsend(self, row: Row, text: str) -> None:
        """A row read but never posted: reported, counted, and written to --failed-out."""
        self.slots.put(1)
        self.unsent += 1
        self.session.ledger.tally("unsent")
        self.reporter.outcome(Outcome("unsent", row.service or self.spec.service, row.ric, None,
                                      text=text, line=row.line))
        if self.failed is not None:
            self.failed.write(row)

    def release_held(self) -> None:
        """Post the rows --rate allows now."""
        now = time.monotonic()
        while self.held and self.next_at <= now:
            self.post([self.held.popleft()])
            self.next_at = max(self.next_at, now) + 1 / self.rate

    def next_release(self) -> float | None:
        """When --rate lets the next held row go (None: nothing held)."""
        return self.next_at if self.held else None

    def stop(self) -> None:
        """Read nothing more; rows held for --rate end UNSENT (queued ones do as they are taken)."""
        with self.lock:
            self.reading = False
        self.slots.put(1)                # a reader waiting for a credit wakes, and reads no more
        while self.held:
            self.unsend(self.held.popleft(), "not sent: stopped")

    @property
    def done(self) -> bool:
        return self.ended and not self.held and not self.session.ledger.pending

    # -- posts out

    def post(self, rows: list[Row]) -> None:
        session = self.session
        session.post_rows(rows, self.spec.service, self.refresh, self.spec.domain)
        self.posted += len(rows)
        if len(session.ledger.unsent) >= PER_FRAME:
            session.flush()

    def on_outcome(self, outcome: Outcome) -> None:
        """Every post's ending (the session's observer): its credit comes back; failures are
        printed and go to --failed-out (TIMEOUT rows only once no late Ack can keep them out)."""
        row = outcome.row
        if row is not None:
            self.slots.put(1)
        if outcome.status == "ack":
            return
        if outcome.status == "unsent":           # made, but never sent: not posted after all
            self.posted -= 1
        if outcome.nak_code:
            self.nak_codes[outcome.nak_code] = self.nak_codes.get(outcome.nak_code, 0) + 1
        self.reporter.outcome(outcome)
        if row is None or self.failed is None:
            return
        if outcome.status != "timeout":
            self.failed.write(row)
            return
        self.timed_out[outcome.post_id] = row
        if len(self.timed_out) > self.window:
            self.failed.write(self.timed_out.pop(next(iter(self.timed_out))))

    def on_acks(self, count: int) -> None:
        """Posts acknowledged (a frame's plain Acks at once): their credits come back."""
        self.slots.put(count)

    def on_late(self, post_id: int) -> None:
        """An Ack after the TIMEOUT: the ADS has the row, so it stays out of --failed-out."""
        self.timed_out.pop(post_id, None)

    def finish(self) -> None:
        """The end of the run, however it came (after the session): rows read but never taken end
        UNSENT, and TIMEOUT rows no late Ack kept out go to --failed-out."""
        self.stop()
        self.session.take_queued()
        if self.failed is not None:
            for row in self.timed_out.values():
                self.failed.write(row)
            self.timed_out.clear()


class FailedRows:
    """--failed-out: failed rows written back in the input's format, to be posted again.

    The file is opened (and emptied) before anything is sent, so that a bad path is a usage
    error and a clean run leaves no stale rows behind: a CSV gets its header, nothing else.
    """

    def __init__(self, path: str, fmt: str, header: list[str]) -> None:
        self.path, self.fmt, self.header = path, fmt, header
        try:
            self.file: IO[str] = open(path, "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise UsageProblem(f"--failed-out: cannot write {path}: {exc.strerror or exc}") from None
        self.writer: Any = None
        self.count = 0

    def write(self, row: Row) -> None:
        if self.fmt == "csv":
            self._csv().writerow(row.raw.split(",") if row.raw.__class__ is str else row.raw)
        else:
            self.file.write(row.raw + "\n")
        self.count += 1

    def _csv(self) -> Any:
        if self.writer is None:
            import csv
            self.writer = csv.writer(self.file)
            if self.header:
                self.writer.writerow(self.header)
        return self.writer

    def close(self) -> None:
        if self.fmt == "csv" and self.header:
            self._csv()                          # the header, even when no row failed
        self.file.close()


def open_input(path: str) -> tuple[IO[bytes], bool]:
    """The input as a binary file, and whether it is a pipe (or other stream) rather than a file."""
    if path == "-":
        if sys.stdin is None:
            raise UsageProblem("--file -: stdin is closed")
        # stdin through a file object of its own: the reader thread may still be
        # blocked in it at exit, and Python's shutdown would fail on sys.stdin's lock.
        binary = os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    else:
        try:
            binary = open(path, "rb")
        except OSError as exc:
            raise UsageProblem(f"cannot read {path}: {exc.strerror}") from None
    import stat
    return binary, not stat.S_ISREG(os.fstat(binary.fileno()).st_mode)


def same_file(binary: IO[bytes], path: str) -> bool:
    """The open input and the file at path are one file (--failed-out must not truncate it)."""
    try:
        here, there = os.fstat(binary.fileno()), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def run_bulk(settings: Settings, spec: PostSpec, refresh: bool, reporter: Reporter, *, path: str,
             fmt: str, window: int, rate: float | None, strict: bool, failed_out: str | None) -> Exit:
    """post --file: every row posted and accounted for, with a summary at the end, also when
    the session ends in an error (the login closed by the ADS, say) once reading has begun."""
    binary, pipe = open_input(path)
    header: list[str] = []
    failed = bulk = None
    collecting = gc.get_threshold()
    try:
        if failed_out is not None:
            if same_file(binary, failed_out):
                raise UsageProblem(f"--failed-out {failed_out} is the input file: it would be emptied "
                                   "while it is read")
            failed = FailedRows(failed_out, fmt, header)
        lines = Lines(binary, pipe)
        rows = jsonl_rows(lines, spec.types, pipe) if fmt == "jsonl" else csv_rows(lines, header, spec.types, pipe)
        started = time.monotonic()
        progress = progress_bar(reporter, path)
        with Session(settings, reporter, spec=spec, recover=True, codec=fast_codec()) as session:
            session.connect()
            # The window's posts live until their Acks and form no cycles: a pass every 700 new
            # containers (Python's default) would walk them again and again for nothing.
            gc.set_threshold(BULK_GC_THRESHOLD)
            bulk = Bulk(session, spec, refresh, window, rate, strict, failed)
            session.outcome, session.on_other, session.on_late = bulk.on_outcome, bulk.take, bulk.on_late
            session.on_acks = bulk.on_acks
            if pipe:
                threading.Thread(target=bulk.feed, args=(rows, session.events), name="input", daemon=True).start()
            while not (bulk.done or bulk.stopped or session.stopping):
                bulk.release_held()
                took = not pipe and bulk.read(rows)
                sending = session.ledger.unsent and session.connected
                busy = sending or took or not pipe and bulk.readable
                event = session.wait(time.monotonic() if busy else bulk.next_release())
                if sending and (event is None or len(session.ledger.unsent) >= PER_FRAME):
                    session.flush()
                    if progress is not None:
                        progress.update(binary.tell() - progress.pos)
            bulk.stop()
            session.flush()                      # --strict: the rows before the bad one still go
            session.drain()
        if progress is not None:
            progress.render_finish()
    finally:
        gc.set_threshold(*collecting)
        if bulk is not None:
            bulk.finish()
            bulk_summary(bulk, reporter, time.monotonic() - started, failed_out)
        if failed is not None:
            failed.close()
        if path != "-":                          # a blocked reader may still hold the stdin copy
            binary.close()
    return session.ledger.exit_code(interrupted=session.stopping, complete=bulk.ended and not bulk.unsent,
                                    bad_input=bool(bulk.invalid or bulk.read_error or bulk.stopped))


def bulk_summary(bulk: Bulk, reporter: Reporter, elapsed: float, failed_out: str | None) -> None:
    """The summary of a bulk run: a line on stderr, or a JSON line with --json."""
    ledger = bulk.session.ledger
    summary = {"lines": bulk.last_line, "posted": bulk.posted, "acknowledged": ledger.counts.get("ack", 0),
               "nakked": bulk.nak_codes, "errored": ledger.counts.get("error", 0),
               "timed_out": ledger.counts.get("timeout", 0), "acknowledged_late": ledger.late,
               "lost": ledger.counts.get("lost", 0), "invalid": bulk.invalid,
               "unsent": ledger.counts.get("unsent", 0), "resent": ledger.resent,
               "elapsed": round(elapsed, 3), "posts_per_second": round(bulk.posted / elapsed) if elapsed else 0}
    if reporter.as_json:
        reporter.emit("", {"summary": summary})
    else:
        reporter.notice("bulk: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items()))
    if bulk.failed is not None and bulk.failed.count:
        reporter.notice(f"bulk: {bulk.failed.count} failed rows written to {failed_out}")


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
        self.reporter.line(text)

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
        if 300 <= status < 400:
            words += f" to {headers.get('location', '(no Location)')} (not followed)"
            hint = "give the ADS's own host and port (--host, --port, --path)"
        raise ConnectFailed(f"the server answered the WebSocket upgrade on {settings.path} with {words}", hint)
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    if headers.get("upgrade", "").lower() != "websocket":
        raise ConnectFailed("the server answered 101 without an Upgrade: websocket header", not_ads)
    if headers.get("sec-websocket-accept") != accept:
        raise ConnectFailed(f"the server answered 101 with a wrong Sec-WebSocket-Accept "
                            f"({headers.get('sec-websocket-accept') or 'none'}, not {accept})", not_ads)
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


OUTCOME_ERRORS = {"nak": Rejected, "error": Rejected, "timeout": Timeout, "lost": ConnectFailed,
                  "unsent": ConnectFailed}


def check_post(session: Session, spec: PostSpec, refresh: bool, collector: Collector) -> tuple[str, None]:
    session.post(spec.service, spec.ric, spec.fields, refresh, domain=spec.domain)
    session.flush()
    session.drain()
    if not collector.outcomes:
        raise Stopped("interrupted")              # drain returns early only when interrupted
    outcome = collector.outcomes[-1]
    if outcome.status == "ack":
        return f"{'Refresh' if refresh else 'Update'} {render_fields(spec.fields.items())}: " \
               f"{outcome.render()}", None
    raise OUTCOME_ERRORS[outcome.status](outcome.render(), outcome.hint())


def check_read_back(session: Session, spec: PostSpec, names: FieldDictionary | None) -> tuple[str, None]:
    reply, mismatches, checked = read_back(session, spec, names)
    if mismatches:
        raise Rejected("; ".join(m.render() for m in mismatches), mismatch_hint(session, reply, mismatches))
    return f"{render_fields(checked.items())} as posted ({item_state_words(reply.state)})", None


def run_check(settings: Settings, reporter: Reporter, spec: PostSpec | None, refresh: bool = False,
              names: FieldDictionary | None = None) -> Exit:
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
    with Session(one_host, collector, spec=spec) as session:
        checks.step("login", lambda: check_login(session))
        if spec is None:
            checks.skip("post", "give --ric and --field to test a post")
            checks.skip("read-back", "")
        else:
            checks.step("post", lambda: check_post(session, spec, refresh, collector))
            checks.step("read-back", lambda: check_read_back(session, spec, names))
    return checks.finish()


# =========================================================== configuration
# The config file's keys are the options that have an environment variable,
# named as the variable is without its CONTRIBUTE_ prefix, derived from the
# click parameters themselves so that the two never drift apart.

CONFIG_SECTION = "contribute"
ENV_PREFIX = "CONTRIBUTE_"


class ConfigError(click.ClickException):
    exit_code = Exit.USAGE


def find_config() -> str | None:
    """./config.ini, else config.ini beside this module."""
    for candidate in ("config.ini", os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.ini")):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_config(path: str) -> dict[str, tuple[int, str]]:
    """The [contribute] section of an INI file, as key -> (line number, value): `key = value`
    lines, `;` or `#` comments, a BOM allowed. A key set twice is an error.

    A reader of our own rather than configparser: the file has one flat section,
    and configparser's import alone costs a tenth of a one-shot post's budget.
    """
    try:
        with open(path, "rb") as f:              # bytes: the utf-8-sig codec's import costs start-up time
            lines = f.read().decode().removeprefix("\ufeff").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    values: dict[str, tuple[int, str]] = {}
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
        if key in values:
            raise ConfigError(f"config file {path}:{number}: key '{key}' is already set on line "
                              f"{values[key][0]}")
        values[key] = (number, value.strip())
    return values


def config_keys(group: click.Group) -> dict[str, dict[str, click.Parameter]]:
    """The config keys of the global options ("") and of each command, with their parameters."""
    def keys(command: click.Command) -> dict[str, click.Parameter]:
        return {param.envvar[len(ENV_PREFIX):].lower(): param for param in command.params
                if isinstance(param.envvar, str) and param.envvar.startswith(ENV_PREFIX)
                and param.envvar != ENV_PREFIX + "CONFIG"}
    return {"": keys(group), **{name: keys(command) for name, command in group.commands.items()}}


def load_config(path: str, group: click.Group) -> dict[str, Any]:
    """The click default_map for a config file: global keys, and command keys per command.
    An unknown key, or a value its option would refuse, is an error naming the file and line."""
    values = read_config(path)
    keys = config_keys(group)
    for key, (number, _) in values.items():
        if not any(key in command_keys for command_keys in keys.values()):
            raise ConfigError(f"config file {path}:{number}: unknown key '{key}' in [{CONFIG_SECTION}]")
    defaults: dict[str, Any] = {}
    for command, params in keys.items():
        target = defaults if command == "" else defaults.setdefault(command, {})
        for key, param in params.items():
            if key in values:
                number, value = values[key]
                try:
                    param.type.convert(value, param, None)
                except click.BadParameter as exc:
                    raise ConfigError(f"config file {path}:{number}: {key} = {value}: {exc.message}") from None
                target[param.name] = value
    return defaults


def config_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    path = value or find_config()
    if value and not os.path.exists(value):
        raise ConfigError(f"config file {value} not found")
    if path is not None:
        ctx.default_map = load_config(path, ctx.command)
        log.debug("config file: %s", path)
    return path


# ===================================================================== CLI

class FieldType(click.ParamType):
    """--field NAME=VALUE or NAME:=JSON."""
    name = "NAME=VALUE"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        """The text as given, its form checked; make_spec types the value (by the dictionary, if any)."""
        if not _FIELD_FORM.match(value):
            try:
                parse_field(value)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        return value


_FIELD_FORM = re.compile(r"-?[A-Za-z0-9_]+:?=", re.ASCII)


class Finite(click.FloatRange):
    """A FloatRange that also refuses NaN (it compares false with every bound)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


def seconds(most: float = MAX_SECONDS) -> Finite:
    return Finite(0, most, min_open=True)


class HostList(click.ParamType):
    """--host: HOST[:PORT] entries, comma-separated; each one checked before any I/O."""
    name = "HOST[:PORT],..."

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            for entry in str(value).split(","):
                if entry.strip():
                    parse_host(entry.strip())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return value


class WebSocketPath(click.ParamType):
    name = "PATH"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if not value.startswith("/") or not value.isprintable() or " " in value:
            self.fail(f"{value!r} is not a path: it starts with / (the ADS's is /WebSocket)", param, ctx)
        return value


def repeated_option(command: click.Command, args: list[str], stop_at_command: bool) -> str | None:
    """Why args give a single-valued option twice (click would silently keep the last), or None."""
    options = {opt: param for param in command.params if isinstance(param, click.Option)
               for opt in param.opts + param.secondary_opts}
    seen: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i] != "--":
        name, has_value, value = args[i].partition("=")
        param = options.get(name)
        if param is None:
            if stop_at_command and not name.startswith("-"):
                break                            # the subcommand: its options are its own
        elif not (param.is_flag or param.count):
            if not has_value and i + 1 < len(args):
                i += 1
                value = args[i]
            if not param.multiple:
                if param.name in seen:
                    return f"{name} is given twice ({seen[param.name]!r}, {value!r}): give it once"
                seen[param.name] = value
        i += 1
    return None


def show_help(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """-h/--help: the command's help, and nothing else is done."""
    if value and not ctx.resilient_parsing:
        click.echo(ctx.get_help(), color=ctx.color)
        ctx.exit()


class OwnHelp:
    """-h/--help made here, with the same effect as click's own: click's asks gettext for its
    text, which imports locale and looks for translations, about 1 ms of every run."""
    _help: click.Option | None = None

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        if self._help is None:
            self._help = click.Option(["-h", "--help"], is_flag=True, expose_value=False, is_eager=True,
                                      callback=show_help, help="Show this message and exit.")
        return self._help


class Command(OwnHelp, click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        problem = repeated_option(self, args, stop_at_command=False)
        if problem:
            raise click.UsageError(problem, ctx)
        return super().parse_args(ctx, args)


class Group(OwnHelp, click.Group):
    """The CLI's root. Every failure becomes one line on stderr (and a hint) and its exit
    status in main(), and only there."""
    command_class = Command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        problem = repeated_option(self, args, stop_at_command=True)
        if problem:
            raise click.UsageError(problem, ctx)
        return super().parse_args(ctx, args)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:                # before click makes it an Abort (and a blank line)
            raise Stopped("interrupted") from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Stopped("interrupted") from None
        except ContributeError as exc:
            exc.quiet = bool(ctx.obj and ctx.obj.get("quiet"))      # for main(): no hint with -q
            raise

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> int:
        status = self.run(args, prog_name, complete_var, **extra)
        if standalone_mode:
            sys.exit(status)
        return status

    def run(self, args: Any, prog_name: str | None, complete_var: str | None, **extra: Any) -> int:
        restore = catch_start_signals()
        try:
            if INTERRUPTS_NOTED:                 # while Python started us (run as a script)
                raise KeyboardInterrupt
            if sys.stderr is None:               # closed: diagnostics have nowhere to go
                sys.stderr = open(os.devnull, "w")
            if sys.stdout is None:
                raise UsageProblem("stdout is closed: results would have nowhere to go "
                                   "(redirect it to /dev/null to discard them)")
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra) or 0
        except Stopped as exc:
            error_line(str(exc), prefix="contribute: ")
            return exc.exit_code
        except ContributeError as exc:
            error_line(str(exc), None if getattr(exc, "quiet", False) else exc.hint)
            log.debug("details", exc_info=True)
            return exc.exit_code
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            see = f" (see '{ctx.command_path} -h')" if isinstance(exc, click.UsageError) and ctx else ""
            error_line(exc.format_message() + see)
            return exc.exit_code
        except (click.Abort, KeyboardInterrupt):
            error_line("interrupted", prefix="contribute: ")
            return Exit.INTERRUPTED
        except Exception as exc:
            error_line(f"internal error: {type(exc).__name__}: {exc}", prefix="contribute: ")
            log.debug("traceback", exc_info=True)
            return Exit.INTERNAL
        finally:
            restore()


def error_line(message: str, hint: str | None = None, prefix: str = "contribute: error: ") -> None:
    """An error as one line on stderr (a broken stderr is ignored), then its hint."""
    try:
        sys.stderr.write(f"{prefix}{message}\n" + (f"hint: {hint}\n" if hint else ""))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def catch_start_signals() -> Callable[[], None]:
    """Until a session takes them over: SIGINT and SIGTERM end the command as interrupted (130),
    without a traceback. Returns what puts the previous handlers back."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    return handle_interrupts(interrupt)


def env(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


@click.group(cls=Group, epilog=f"Exit codes:\n\n\b\n{EXIT_TABLE}",
             context_settings={"show_default": True, "max_content_width": 100})
@click.option("--config", metavar="PATH", envvar=env("config"), is_eager=True, expose_value=False,
              callback=config_callback,
              help="INI file with a [contribute] section  [default: ./config.ini, else beside contribute.py]")
@click.option("--host", type=HostList(), metavar="HOST[:PORT],...", envvar=env("host"),
              help="ADS host, or a comma-separated list tried in order (failover)")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, envvar=env("port"),
              help="ADS WebSocket port")
@click.option("--path", type=WebSocketPath(), default=DEFAULT_PATH, envvar=env("path"), help="WebSocket path")
@click.option("--tls/--no-tls", default=False, envvar=env("tls"), help="use wss://")
@click.option("--connect-timeout", type=seconds(), default=10.0,
              envvar=env("connect_timeout"), metavar="SECONDS", help="limit for connect and login")
@click.option("--retries", type=click.IntRange(0), default=0, envvar=env("retries"), metavar="N",
              help="more rounds through the host list before giving up on connecting")
@click.option("--reconnect-min", type=seconds(0.5), default=0.5,
              envvar=env("reconnect_min"), metavar="SECONDS", help="first reconnect backoff (doubles)")
@click.option("--reconnect-max", type=seconds(), default=30.0,
              envvar=env("reconnect_max"), metavar="SECONDS", help="longest reconnect backoff")
@click.option("--dictionary", metavar="PATH", envvar=env("dictionary"),
              help="RDMFieldDictionary: type posted values by their fields, list read fields in FID order")
@click.option("--enum-dictionary", metavar="PATH", envvar=env("enum_dictionary"),
              help="enumtype.def, for enum display names  [default: the one beside --dictionary]")
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
        retries: int, reconnect_min: float, reconnect_max: float, dictionary: str | None,
        enum_dictionary: str | None, user: str | None,
        app_id: str, position: str | None, verbose: int, quiet: bool, as_json: bool, sim: bool) -> None:
    """Contribute data to an ADS (Refinitiv Real-Time) over its WebSocket API."""
    setup_logging(verbose, quiet)
    if sim and host:
        sim_beats_host(ctx, host)
    settings = Settings(host, port, user, app_id, position, path, tls, connect_timeout, retries,
                        reconnect_min, max(reconnect_min, reconnect_max))
    ctx.obj = {"settings": settings, "sim": sim, "quiet": quiet, "dictionary": dictionary,
               "enum_dictionary": enum_dictionary, "reporter": Reporter(sys.stdout, sys.stderr, as_json, quiet)}


def sim_beats_host(ctx: click.Context, host: str) -> None:
    """--sim replaces --host only when it was given more explicitly (a --sim flag over a
    configured host); otherwise a post meant for a real ADS would silently go to the emulator."""
    from click.core import ParameterSource
    sources = {ParameterSource.COMMANDLINE: "the command line", ParameterSource.ENVIRONMENT: "the environment",
               ParameterSource.DEFAULT_MAP: "the config file"}
    order = list(sources)
    sim_from, host_from = ctx.get_parameter_source("sim"), ctx.get_parameter_source("host")
    if order.index(host_from) <= order.index(sim_from):
        raise UsageProblem(f"--sim (from {sources[sim_from]}) would post to the built-in emulator, not to "
                           f"--host {host} (from {sources[host_from]}): drop one of them")


def names_of(ctx: click.Context) -> FieldDictionary | None:
    """The --dictionary (with its enum tables), read once, when a command needs it."""
    obj = ctx.find_root().obj
    if "names" not in obj:
        path, enums = obj["dictionary"], obj["enum_dictionary"]
        if enums and not path:
            raise UsageProblem("--enum-dictionary needs --dictionary (the field dictionary it goes with)")
        obj["names"] = load_dictionary(path, enums) if path else None
    return obj["names"]


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
    logging.raiseExceptions = False          # a broken stderr is not worth a report on stderr
    log.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else
                 logging.ERROR if quiet else logging.WARNING)


def start_sim(ctx: click.Context, settings: Settings) -> Settings:
    """Start the emulator in-process on a free loopback port; stopped when the command ends."""
    import_orjson()                       # before the emulator's own import of it (see import_orjson)
    import ads_emulator

    obj = ctx.obj
    try:                                  # the same field dictionary as the contributor's, if given
        dictionary = ads_emulator.Dictionary.from_files(obj["dictionary"], obj["enum_dictionary"]) \
            if obj["dictionary"] else None
    except (OSError, ValueError) as exc:
        raise UsageProblem(f"--sim: the emulator cannot read the dictionary: {exc}") from None
    emulator = ads_emulator.Emulator(host="127.0.0.1", port=0, keep_received=False, dictionary=dictionary).start()

    def stop() -> None:
        try:
            emulator.stop()
        except ads_emulator.EmulatorError as exc:
            raise click.ClickException(f"the built-in emulator failed: {exc}") from None

    ctx.call_on_close(stop)
    ctx.obj["reporter"].say(f"contribute: --sim: using the built-in ADS emulator at {emulator.url}, "
                            "not a real ADS")
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
        click.option("--ack-timeout", type=seconds(), default=10.0,
                     envvar=env("ack_timeout"), metavar="SECONDS", help="how long to wait for each Ack"),
        click.option("--post-user-info/--no-post-user-info", default=True, envvar=env("post_user_info"),
                     help="send PostUserInfo (address and user id) with each post"),
        click.option("--post-user-address", metavar="IPV4", envvar=env("post_user_address"),
                     help="PostUserInfo Address  [default: the connection's local IPv4 address]"),
        click.option("--post-user-id", type=int, metavar="N", envvar=env("post_user_id"),
                     help="PostUserInfo UserID  [default: this process id]"),
        click.option("--truncate", is_flag=True, envvar=env("truncate"),
                     help="with --dictionary: cut text longer than its field holds, instead of refusing it"),
    ]

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def make_spec(ctx: click.Context, ric: str | None, service: str | None, fields: tuple, domain: str,
              ack_timeout: float, post_user_info: bool, post_user_address: str | None,
              post_user_id: int | None, truncate: bool, bulk: bool = False) -> PostSpec:
    """What to post, checked before any I/O: --ric and --field (or a file), a service, and
    every value typed (by --dictionary when given)."""
    if bulk and (ric or fields):
        raise click.UsageError("--file excludes --ric and --field: the file gives the items and fields")
    if not bulk and not ric:
        raise click.UsageError("Missing option '--ric' (or --file).")
    if not bulk and not fields:
        raise click.UsageError("Missing option '--field'.")
    service = (service or "") if bulk else need_service(service)    # rows may name their service
    types = FieldTypes(names_of(ctx), truncate)
    try:
        typed = dict(parse_field(field, types) for field in fields)
    except ValueError as exc:
        raise UsageProblem(f"--field {exc}") from None
    return PostSpec(service, ric or "", typed, domain, ack_timeout, post_user_info,
                    post_user_address, post_user_id, types)


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
        click.option("--timeout", type=seconds(), default=10.0,
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
              help="with --file: most rows read or in flight")
@click.option("--rate", type=Finite(0.001, 1e9), envvar=env("rate"), metavar="N",
              help="with --file: at most N posts per second")
@click.option("--strict", is_flag=True, help="with --file: stop at the first malformed row")
@click.option("--failed-out", metavar="FILE",
              help="with --file: write failed and unsent rows here, in the input's format")
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
    spec = make_spec(ctx, **spec, bulk=path is not None)
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
@click.option("--refresh/--no-refresh", default=True, help="post a Refresh first (and after a reconnect)")
@click.option("--interval", type=seconds(), default=5.0, envvar=env("interval"),
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
    spec = make_spec(ctx, **spec)
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
        spec = make_spec(ctx, **options)
    ctx.exit(run_check(settings_of(ctx), ctx.obj["reporter"], spec, refresh, names_of(ctx)))


def main() -> int:
    return cli.main(prog_name="contribute.py", standalone_mode=False)


if __name__ == "__main__":
    status = main()
    # Decided: an interrupt from now on is ignored. (Python puts the default action back on
    # signals it handles as it shuts down, which would kill us; an ignored one it leaves alone.)
    handle_interrupts(SIG_IGN)
    sys.exit(status)
