"""Real MCP servers from PyPI (`mcp-server-time`, `mcp-server-git`) in their own virtualenv under ``.cache/``.

They pin their own `mcp` SDK, so they stay out of the gateway's environment (like MLServer in ``mlserver.py``).
The pins are the ``mcp-test`` extra in ``pyproject.toml``; the virtualenv is built on first use (under a file
lock) and reused after: ``python -m tests.fakes.mcp_servers install`` builds it ahead of a test run.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = ROOT / ".cache"


def requirements() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    return list(extras["mcp-test"])


def venv_dir() -> Path:
    digest = hashlib.sha256("\n".join(requirements()).encode()).hexdigest()[:10]
    return CACHE / f"mcp-servers-venv-{digest}"


def ensure_venv() -> Path:
    """The virtualenv's `bin` folder (with `mcp-server-time` and `mcp-server-git`), installing it once."""
    target = venv_dir()
    stamp = target / ".installed"
    if stamp.exists():
        return target / "bin"
    CACHE.mkdir(exist_ok=True)
    with (CACHE / "mcp-servers-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return target / "bin"
        if target.exists():
            shutil.rmtree(target)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        result = subprocess.run([*pip, *requirements()], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"installing {requirements()} failed:\n{result.stdout}\n{result.stderr}")
        stamp.write_text(f"installed in {time.monotonic() - started:.0f} s\n")
    return target / "bin"


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        print(ensure_venv())
    else:
        sys.exit("usage: python -m tests.fakes.mcp_servers install")
