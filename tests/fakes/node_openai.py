"""The official Node `openai` SDK for tests: installed with npm into `.cache/node-openai` (under a file lock,
reused after) by `python -m tests.fakes.node_openai install`, which scripts/test runs before pytest (so the tests
themselves talk to 127.0.0.1 only; a test run without it installs on first use), and a runner for small scripts
against a real server.

`run_script(body, base_url, api_key)` runs `body` inside an async function where `client` is an `OpenAI` client
(no retries) and `OpenAI` the module; the script returns a JSON-able value and the runner returns it. A call that
throws is caught by `caught(promise)`: `{name, status, code, type, message}` of the SDK's typed error. Any test
can use it (401, 404, 429 …). `node_missing()` says why a test must be skipped: only when `node` is absent.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = ROOT / ".cache"
PACKAGE = "openai@7.59.0"
TARGET = CACHE / "node-openai"

PRELUDE = """
const OpenAI = require("openai").default ?? require("openai");
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY, maxRetries: 0 });
async function caught(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    return { name: err.constructor.name, status: err.status ?? null, code: err.code ?? null,
             type: err.type ?? null, message: err.message, isApiError: err instanceof OpenAI.APIError };
  }
}
"""


def node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed on this machine"
    return None


def ensure_installed() -> Path:
    """The `node_modules` folder holding the SDK."""
    stamp = TARGET / f".installed-{PACKAGE}"
    modules = TARGET / "node_modules"
    if stamp.exists():
        return modules
    CACHE.mkdir(exist_ok=True)
    with (CACHE / "node-openai.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return modules
        if TARGET.exists():
            shutil.rmtree(TARGET)
        TARGET.mkdir(parents=True)
        (TARGET / "package.json").write_text('{"name": "manifold-node-openai", "private": true}\n')
        result = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", PACKAGE],
            cwd=TARGET,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm install {PACKAGE} failed:\n{result.stdout}\n{result.stderr}")
        stamp.write_text("installed\n")
    return modules


def run_script(body: str, base_url: str, api_key: str) -> Any:
    modules = ensure_installed()
    script = PRELUDE + "(async () => {\n" + textwrap.indent(textwrap.dedent(body), "  ") + "\n})()"
    script += (
        ".then((out) => { console.log(JSON.stringify(out)); }, (err) => { console.error(err); process.exit(1); });\n"
    )
    result = subprocess.run(
        ["node", "-e", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NODE_PATH": str(modules), "BASE_URL": base_url, "API_KEY": api_key},
    )
    if result.returncode != 0:
        raise RuntimeError(f"node failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m tests.fakes.node_openai install")
    why = node_missing()
    print(f"node-openai: not installed ({why})" if why else ensure_installed())
