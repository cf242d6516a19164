"""Logs: `log_format: text | json`, one access line per request, and secrets redacted from every line.

Every handler `configure` installs formats through a `Redactor`: the formatted line (message, arguments,
exception text) has each configured secret (upstream keys, header values of deployments, the compaction key)
replaced by `[REDACTED]`, and so have header-shaped credentials (`Authorization: Bearer …`, `api-key: …`,
`x-api-key: …`) whatever their value. Redacting the finished line, not the record, also covers exception text
and `%r` of objects that hold a key.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from manifold import _json
from manifold.observability.record import CURRENT, RequestRecord
from manifold.observability.redaction import Redactor, add_secrets, redact

__all__ = ["ACCESS_LOGGER", "AccessLog", "JsonFormatter", "Redactor", "TextFormatter", "configure"]

ACCESS_LOGGER: Final = "manifold.access"
_PID = os.getpid()
_LOGGING_START: float = getattr(logging, "_startTime", time.time())


class RequestContext(logging.Filter):
    """Puts the request id and trace id of the request being served on every other log line, so that a
    warning can be found next to its access line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if type(record) is not _AccessRecord:
            rec = CURRENT.get()
            if rec is not None:
                record.request_id = rec.request_id
                record.trace_id = rec.trace_id
        return True


class TextFormatter(logging.Formatter):
    """`time level logger message`, then an access line's fields as `key=value`."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "access", None)
        if fields is not None:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        else:
            for key in ("request_id", "trace_id"):
                value = getattr(record, key, None)
                if value is not None:
                    line += f" {key}={value}"
        return self.redact(line)


def _text_value(value: object) -> str:
    if isinstance(value, str):
        return value if value and " " not in value and '"' not in value else _json.encode(value).decode()
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time`, `level`, `logger`, `message`, the request and trace ids when known,
    `error` (the exception's type and text, plus `traceback` for unexpected ones); an access line's fields at
    the top level."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "access", None)
        if fields is not None:
            # The access line: nothing in it comes from free-form client input but the model name, which
            # AccessLog redacts when it is not a model of the config.
            fields["time"] = _iso(record.created)
            return _json.encode(fields).decode()
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["error"] = {"type": type(exc).__name__, "message": str(exc)}
            out["traceback"] = self.formatException(record.exc_info)
        return self.redact(_json.encode(out).decode())


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text
_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))


def _iso(created: float) -> str:
    """RFC 3339 UTC with milliseconds; strftime runs once a second, not once a line (and the milliseconds are
    looked up, not formatted)."""
    whole = int(created)
    cached = _second
    if cached[0] != whole:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        cached[0] = whole
    return cached[1] + _MILLIS[int((created - whole) * 1000)]  # type: ignore[no-any-return]


class BlockBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr with the access lines written in blocks, at most `interval` seconds late; every other line is
    written at once (with the access lines before it). A write per access line would cost more than everything
    else the log does (a system call each, tens of microseconds on some filesystems).

    The stream is binary (a `BufferedWriter`, which serialises its own writes): lines are encoded here, and
    `AccessLog` writes its JSON bytes as msgspec made them, without a decode and an encode back."""

    def __init__(self, fd: int, interval: float = 0.2) -> None:
        # Kept open for the process's life; closefd=False leaves fd 2 alone.
        stream = open(fd, "wb", buffering=1 << 16, closefd=False)  # noqa: SIM115
        super().__init__(stream)
        self._stop = threading.Event()
        self._interval = interval
        threading.Thread(target=self._flush_often, name="manifold-log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write((self.format(record) + "\n").encode("utf-8", "backslashreplace"))
            if type(record) is not _AccessRecord:
                self.stream.flush()
        except Exception:  # noqa: BLE001 (logging's own contract: report, never raise)
            self.handleError(record)

    def _flush_often(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()


_HANDLER_MARK = "_manifold_handler"


def configure(level: str, log_format: str, secrets: Iterable[str] = ()) -> None:
    """Install Manifold's one stderr handler on the root logger (replacing one installed before: each worker
    process calls this again) and route uvicorn's loggers through it."""
    redact = add_secrets(secrets)
    formatter: logging.Formatter = JsonFormatter(redact) if log_format == "json" else TextFormatter(redact)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False) or isinstance(old, logging.StreamHandler):
            root.removeHandler(old)
            if getattr(old, _HANDLER_MARK, False):
                old.close()
    handler: logging.Handler
    try:
        interactive = sys.stderr.isatty()
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        interactive, fd = True, -1
    handler = logging.StreamHandler(sys.stderr) if interactive else BlockBufferedHandler(fd)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(formatter)
    handler.addFilter(RequestContext())
    global _direct
    _direct = (
        (handler, formatter)
        if isinstance(handler, BlockBufferedHandler) and isinstance(formatter, JsonFormatter)
        else None
    )
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level.lower() == "trace" else level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # uvicorn's own access line: Manifold writes its own (`manifold.access`, `server.access_log`), with the
    # request's model, tokens and key alias. uvicorn's HTTP protocol decides whether to log each request by
    # `hasHandlers()` alone (not by `access_log=False`), so the logger gets no handler and does not propagate:
    # no second line, and none of its cost (a record formatted and written per request).
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    # Third-party debug chatter that could print a request with its headers: not at debug.
    for name in ("urllib3", "httpx", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))


class _AccessRecord(logging.LogRecord):
    """A LogRecord without the per-record work an access line has no use for (the caller's frame, thread and
    process names are constants here)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        now = time.time()
        self.name = ACCESS_LOGGER
        self.msg = "access"
        self.args = None
        self.levelname = "INFO"
        self.levelno = logging.INFO
        self.pathname = self.filename = ""
        self.module = "access"
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.lineno = 0
        self.funcName = ""
        self.created = now
        self.msecs = (now - int(now)) * 1000
        self.relativeCreated = (now - _LOGGING_START) * 1000
        self.thread = None
        self.threadName = None
        self.processName = None
        self.process = _PID
        self.taskName = None
        self.access = fields


# `configure`'s handler and formatter when it installed a block-buffered JSON handler (what a server runs): an
# access line that only they would see is written by `AccessLog` itself (`_direct_handler`).
_direct: tuple[BlockBufferedHandler, JsonFormatter] | None = None


def _direct_handler(logger: logging.Logger) -> BlockBufferedHandler | None:
    """The handler an access line goes to when all logging would do with it is `configure`'s block-buffered
    JSON handler writing it: that handler alone on the root logger, no handler on `manifold.access` or on a
    logger between, its level passing INFO, its formatter and its one filter (which skips access lines) the ones
    `configure` gave it, and no filter on `manifold.access`. Else None (a handler a library user or a test
    added, the text format...), and the line goes through `Logger.handle`. Checked per line (handlers come and
    go): a few attribute reads."""
    direct = _direct
    if direct is None or logger.handlers or logger.filters or not logger.propagate:
        return None
    parent = logger.parent
    while parent is not None and not parent.handlers and parent.propagate:  # loggers between (`manifold`)
        parent = parent.parent
    handler = direct[0]
    if parent is None or parent.parent is not None:  # not the root logger
        return None
    handlers = parent.handlers
    if (
        len(handlers) != 1
        or handlers[0] is not handler
        or handler.level > logging.INFO
        or handler.formatter is not direct[1]
        or len(handler.filters) != 1
    ):
        return None
    return handler


class _AccessLine(msgspec.Struct):
    """The access line's fields, in their order (docs/observability.md). Encoded as a struct, not a dict: msgspec
    writes a struct's keys from names it encoded once."""

    time: str | None
    request_id: str | None
    trace_id: str | None
    method: str
    route: str | None
    model: str | None
    deployment: str | None
    status: int
    stream: bool
    attempts: int
    input_tokens: int | None
    output_tokens: int | None
    cost: float | None
    latency_ms: float
    ttft_ms: float | None
    key_alias: str | None
    client: str | None


_now = time.time  # the access line's clock (a test moves it)


class AccessLog:
    """Writes the one access line per request at INFO on `manifold.access` (a record made here: `Logger.info`
    would look up the caller's frame, which nobody reads in an access line). When the only thing logging would
    do with the line is `configure`'s JSON handler writing it (`_direct_handler`), the line is written to that
    handler's stream here, the same bytes without a `LogRecord` or the walk through `Logger.handle`.

    Whether that holds (and the logger's level) is worked out once a second, with the second's RFC 3339 text,
    not once a line: a handler, filter or level set on the way to the root logger while a server runs is
    followed from the next whole second on. Lines that go through logging check the level on each line."""

    __slots__ = ("_direct", "_second", "_stamp", "logger")

    def __init__(self) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._second = -1  # the whole second `_direct` and `_stamp` were worked out in
        self._direct: BlockBufferedHandler | None = None
        self._stamp = ""

    def _refresh(self, whole: int) -> None:
        logger = self.logger
        self._second = whole
        self._direct = _direct_handler(logger) if logger.isEnabledFor(logging.INFO) else None
        self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))

    def write(self, rec: RequestRecord) -> None:
        now = _now()
        whole = int(now)
        if whole != self._second:
            self._refresh(whole)
        handler = self._direct
        if handler is None and not self.logger.isEnabledFor(logging.INFO):
            return
        ttft = rec.ttft
        model = rec.model
        if model is not None and model != rec.model_label:
            model = redact(model)  # an alias, a wildcard's name, or whatever the client typed
        line = _AccessLine(
            # Else the record's own time, set by the formatter.
            None if handler is None else self._stamp + _MILLIS[int((now - whole) * 1000)],
            rec.request_id,
            rec.trace_id,
            rec.method,
            rec.route,
            model,
            rec.deployment,
            rec.status,
            rec.stream,
            rec.attempts,
            rec.input_tokens,
            rec.output_tokens,
            rec.cost,
            int((rec.end - rec.start) * 1e6) / 1000,  # to the microsecond; cheaper than round()
            None if ttft is None else int(ttft * 1e6) / 1000,
            rec.key_alias,
            rec.client,
        )
        if handler is None:
            self.logger.handle(_AccessRecord(msgspec.structs.asdict(line)))
            return
        try:
            # One write of the binary stream: it takes its own lock (the flush thread's flush takes it too).
            handler.stream.write(_json.encode(line) + b"\n")
        except Exception:  # noqa: BLE001 (as BlockBufferedHandler.emit: report, never raise)
            handler.handleError(_AccessRecord(msgspec.structs.asdict(line)))
