"""Run a local model once in a child process before the server loads it into its own.

llama.cpp is native code: a build for instructions this CPU or its operating system does not allow (AMX on a
host whose sandbox does not enable tile state, AVX-512 on an older CPU) kills the whole process with a signal
at the first matrix multiply, taking every other request with it and leaving no log line. One token generated
in a child first turns that into a clear error for this deployment while the server keeps serving the rest.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

from manifold.errors import ServiceUnavailableError

log = logging.getLogger("manifold.local")

# The prompt must be a batch of tokens: a native build on a host that disables AMX tiles answers a one-token
# prompt and dies on the first multi-row matrix multiply.
_CODE = """
import sys
from llama_cpp import Llama
llama = Llama(model_path=sys.argv[1], n_ctx=256, verbose=False)
llama("The quick brown fox jumps over the lazy dog. " * 4, max_tokens=1, temperature=0.0)
"""


def refuse_if_it_crashes(model_path: Path, model_name: str) -> None:
    """Before llama.cpp loads `model_path` into the server: llama-cpp-python importable, and one token generated
    in a child; a 503 for this deployment (logged once) when either fails."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ServiceUnavailableError(
            "The local provider needs llama-cpp-python: pip install 'manifold[local]'."
        ) from None
    crash = crash_in_child(model_path)
    if crash is not None:
        log.error("model %r is unavailable: %s", model_name, crash)
        raise ServiceUnavailableError(f"The model '{model_name}' is unavailable: {crash}")


def crash_in_child(model_path: Path, timeout: float = 120.0) -> str | None:
    """What killed a child that generated one token with this model, or None when it did not die by a signal
    (other failures are left to the load in this process, which reports them with their own message)."""
    if not sys.executable:
        return None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CODE, str(model_path)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        log.warning("the crash check of %s did not finish in %.0f s; loading it anyway", model_path.name, timeout)
        return None
    except OSError as exc:
        log.warning("the crash check of %s could not start (%s); loading it anyway", model_path.name, exc)
        return None
    if done.returncode >= 0:
        return None
    try:
        name = signal.Signals(-done.returncode).name
    except ValueError:
        name = f"signal {-done.returncode}"
    detail = done.stderr.strip().splitlines()[-1:] if done.stderr.strip() else []
    return (
        f"llama.cpp crashed with {name} generating one token from {model_path.name} in a test process: this "
        "llama-cpp-python build uses instructions this CPU or its operating system does not allow. Reinstall "
        "the portable build (scripts/install, or MANIFOLD_LLAMA_BUILD=portable; see docs/local-models.md)"
        + (f". Last line: {detail[0]}" if detail else "")
    )
