"""Logs: `log_format: text | json`, one access line per request, and secrets redacted from every line.

Every handler `configure` installs formats through a `Redactor`: the formatted line (message, arguments,
exception text) has each configured secret (upstream keys, header values of deployments, the compaction key)
replaced by `[REDACTED]`, and so have header-shaped credentials (`Authorization: Bearer …`, `api-key: …`,
`x-api-key: …`) whatever their value. Redacting the finished line, not the record, also covers exception text
and `%r` of objects that hold a key.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, Final

from manifold import _json
from manifold.observability.record import RequestRecord

__all__ = ["ACCESS_LOGGER", "AccessLog", "JsonFormatter", "Redactor", "TextFormatter", "configure"]

ACCESS_LOGGER: Final = "manifold.access"
REDACTED: Final = "[REDACTED]"
# Shorter "secrets" (a test key "x") would redact ordinary words.
_MIN_SECRET = 6
_CREDENTIAL = re.compile(
    r"(?i)((?:authorization|proxy-authorization|api[-_]key|x-api-key|x-goog-api-key)[\"']?\s*[:=,]\s*[\"']?)"
    r"(?:(bearer|basic)\s+)?[^\s\"',;}]+"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


class Redactor:
    """Replaces secrets in text. `secrets`: the plaintexts to hide wherever they appear."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first: a secret that contains another is hidden whole.
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "earer" in text or "pi-key" in text or "pi_key" in text or "uthorization" in text:
            text = _CREDENTIAL.sub(_credential, text)
            text = _BEARER.sub(r"\1" + REDACTED, text)
        return text


def _credential(m: re.Match[str]) -> str:
    scheme = m.group(2)
    return m.group(1) + (scheme + " " if scheme else "") + REDACTED


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
            # The access line: its own fields; nothing in them comes from free-form client input but the
            # model name, which is JSON-escaped like the rest.
            return self.redact(_json.encode(fields).decode())
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


def _iso(created: float) -> str:
    t = time.gmtime(created)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', t)}.{int(created % 1 * 1000):03d}Z"


_HANDLER_MARK = "_manifold_handler"


def configure(level: str, log_format: str, secrets: Iterable[str] = ()) -> None:
    """Install Manifold's one stderr handler on the root logger (replacing one installed before: each worker
    process calls this again) and route uvicorn's loggers through it."""
    redact = Redactor(secrets)
    formatter: logging.Formatter = JsonFormatter(redact) if log_format == "json" else TextFormatter(redact)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False) or isinstance(handler, logging.StreamHandler):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level.lower() == "trace" else level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Third-party debug chatter that could print a request with its headers: not at debug.
    for name in ("urllib3", "httpx", "httpcore", "hpack"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))


class AccessLog:
    """Writes the one access line per request at INFO on `manifold.access`."""

    __slots__ = ("logger",)

    def __init__(self) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)

    def write(self, rec: RequestRecord) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        ttft = rec.ttft
        fields = {
            "time": _iso(time.time()),
            "request_id": rec.request_id,
            "trace_id": rec.trace_id,
            "method": rec.method,
            "route": rec.route,
            "model": rec.model,
            "deployment": rec.deployment,
            "status": rec.status,
            "stream": rec.stream,
            "attempts": rec.attempts,
            "input_tokens": rec.input_tokens,
            "output_tokens": rec.output_tokens,
            "cost": rec.cost,
            "latency_ms": round((rec.end - rec.start) * 1000, 3),
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "key_alias": rec.key_alias,
            "client": rec.client,
        }
        logger.info("access", extra={"access": fields})
