"""Compaction items: a summary of a conversation, made by the model itself, sealed so that the client holds it
without being able to read or forge it, and opened again when it comes back as input.

`encrypted_content` is `mfc1.` + base64url(nonce ‖ AES-256-GCM(summary JSON)), with a key derived (SHA-256)
from `responses.compaction_key`. With no key configured each process draws a random one: its compaction items
then stop working after a restart, and in other workers or replicas.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from manifold import _json
from manifold.errors import InvalidRequestError

_PREFIX = "mfc1."
_AAD = b"manifold-compaction-v1"
_NONCE = 12
SUMMARY_PROMPT = (
    "You are performing a context checkpoint compaction. Summarize the conversation above so that it can be "
    "continued from your summary alone: keep every fact, name, number, decision, instruction and open task, "
    "and what the user asked for. Answer with the summary only."
)


class CompactionSeal:
    def __init__(self, secret: str | None) -> None:
        self.ephemeral = secret is None
        key = hashlib.sha256(secret.encode()).digest() if secret is not None else os.urandom(32)
        self._aead = AESGCM(key)

    def seal(self, summary: str, model: str) -> str:
        nonce = os.urandom(_NONCE)
        payload = _json.encode({"summary": summary, "model": model})
        sealed = self._aead.encrypt(nonce, payload, _AAD)
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, encrypted_content: str, param: str) -> str:
        """The summary in a compaction item, or a 400 naming the item when it is not one of ours."""
        if not encrypted_content.startswith(_PREFIX):
            raise self._invalid(param)
        text = encrypted_content[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            payload: Any = _json.decode(self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD))
        except (ValueError, InvalidTag, _json.DecodeError):
            raise self._invalid(param) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("summary"), str):
            raise self._invalid(param)
        return str(payload["summary"])

    def _invalid(self, param: str) -> InvalidRequestError:
        hint = (
            " This server has no configured compaction key (responses.compaction_key), so items from before a"
            " restart or from another worker cannot be opened."
            if self.ephemeral
            else ""
        )
        return InvalidRequestError(
            "The compaction item could not be decrypted: it was not made by this server or was altered." + hint,
            param=param,
            code="invalid_encrypted_content",
        )
