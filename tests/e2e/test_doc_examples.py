"""Every runnable example in README.md and docs/*.md works as written (issue 17).

The examples are read from the pages' fenced blocks and run against a real `manifold serve`, their
`http://127.0.0.1:8080` rewritten to the test server's address, each with a bounded time:

- `yaml` blocks are configs: each must pass the same checks as `manifold check` (its `${VAR}`s set). A block whose
  first line is `# name.yaml` is a file the page's commands use (`$ manifold check --config name.yaml`).
- `python` blocks whose first line is `# name.py` are modules (a handler); the others are client scripts, run
  with this interpreter (a block that uses `client` without making one gets the page's client first).
- `sh` blocks of `curl` commands (and `echo`, `VAR=$(curl …)`) are run by bash; `$ command` lines are run and
  compared with the lines that follow them (the output the page shows). Other shell blocks (installs, test
  commands) are not examples of the API and are left alone.

A marker on the line before a block says what it needs:

    <!-- doc-test: skip REASON -->                  not run here (a real OpenAI key, Azure, a KServe server…)
    <!-- doc-test: handler mymodel:answer -->       run against `manifold serve --handler mymodel:answer`
    <!-- doc-test: gateway -->                      run against the page's own configs, every `openai`/`azure`
                                                    `api_base` pointed at the fake upstream (tests/fakes)

Without a marker a client block runs against `manifold serve` with no config: the embedded models.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from manifold.config import Config, environment_problems
from manifold.errors import ConfigError
from manifold.validation import load_config
from tests.e2e.conftest import ManifoldProcess
from tests.fakes.openai_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOC_URL = "http://127.0.0.1:8080"
EXAMPLE_TIMEOUT = 60
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FENCE = re.compile(r"^```(\w*)$")
_MARKER = re.compile(r"^<!-- doc-test: (\w+)(?: (.*?))? -->$")
_FILE_HEADER = re.compile(r"^# ([\w.-]+\.(?:py|yaml))(?:\s|$)")
_CLIENT = 'from openai import OpenAI\n\nclient = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")\n'


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    marker: str = ""
    marker_arg: str = ""

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def file_name(self) -> str | None:
        first = self.code.split("\n", 1)[0]
        m = _FILE_HEADER.match(first)
        return m.group(1) if m else None


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)


def read_page(path: Path) -> Page:
    lines = path.read_text(encoding="utf-8").split("\n")
    page = Page(path)
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = lines.index("```", i + 1)
        marker = _MARKER.match(lines[i - 1]) if i else None
        block = Block(path, i + 1, fence.group(1), "\n".join(lines[i + 1 : end]) + "\n")
        if marker is not None:
            block.marker, block.marker_arg = marker.group(1), marker.group(2) or ""
        page.blocks.append(block)
        i = end + 1
    return page


def is_config(block: Block) -> bool:
    if block.lang != "yaml" or block.file_name is not None:
        return False
    data = yaml.safe_load(block.code)
    return isinstance(data, dict) and set(data) <= set(Config.__struct_fields__)


def is_curl_block(block: Block) -> bool:
    if block.lang != "sh":
        return False
    if block.code.lstrip().startswith("$ "):
        return True
    commands = [
        line
        for line in _joined(block.code)
        if line.strip() and not line.lstrip().startswith("#") and not re.match(r"^[A-Z_]+=", line)
    ]
    return any("curl " in c for c in commands) and all(c.lstrip().startswith(("curl ", "echo ")) for c in commands)


def _joined(code: str) -> list[str]:
    """Shell lines with backslash continuations and open single quotes joined."""
    out: list[str] = []
    buf = ""
    for line in code.split("\n"):
        buf = f"{buf}\n{line}" if buf else line
        if buf.endswith("\\") or buf.count("'") % 2:
            continue
        out.append(buf)
        buf = ""
    return out


def needs_server(block: Block) -> bool:
    return block.lang == "python" or "curl " in block.code


ALL = [read_page(p) for p in PAGES]
CONFIGS = [b for p in ALL for b in p.blocks if is_config(b) and b.marker != "skip"]
MODULES = [b for p in ALL for b in p.blocks if b.lang == "python" and b.file_name is not None]
CLIENTS = [
    # The embedded model's examples are `local_model` tests, like the rest of the tests that run it.
    pytest.param(b, id=b.id, marks=[pytest.mark.local_model] if not b.marker and needs_server(b) else [])
    for p in ALL
    for b in p.blocks
    if b.marker != "skip" and ((b.lang == "python" and b.file_name is None) or is_curl_block(b))
]


# --- servers ------------------------------------------------------------------------------------------------------


class Servers:
    """One `manifold serve` per kind of target, started on first use and kept for the module."""

    def __init__(self, root: Path, fake: FakeUpstream) -> None:
        self.root, self.fake = root, fake
        self.running: dict[tuple[str, str], ManifoldProcess] = {}

    def workdir(self, page: Path) -> Path:
        folder = self.root / page.stem
        if not folder.exists():
            folder.mkdir()
            for block in read_page(page).blocks:
                if block.file_name is not None:
                    path = folder / block.file_name
                    # Several blocks may show parts of one module, in order.
                    path.write_text((path.read_text() if path.exists() else "") + block.code)
        return folder

    def for_block(self, block: Block) -> ManifoldProcess:
        key = (block.marker or "embedded", block.marker_arg if block.marker != "gateway" else block.page.name)
        if key not in self.running:
            workdir = self.workdir(block.page)
            if block.marker == "handler":
                proc = ManifoldProcess(None, workdir, extra_args=("--handler", block.marker_arg))
            elif block.marker == "gateway":
                config = self.gateway_config(block.page)
                proc = ManifoldProcess(config, workdir, env=env_for(block.page.read_text(encoding="utf-8")))
            else:
                proc = ManifoldProcess(None, workdir)
            self.running[key] = proc
        return self.running[key]

    def gateway_config(self, page: Path) -> dict[str, Any]:
        deployments = []
        for block in read_page(page).blocks:
            if is_config(block):
                for dep in yaml.safe_load(block.code).get("model_list") or []:
                    if dep.get("provider") in ("openai", "azure"):
                        deployments.append({**dep, "api_base": self.fake.base("echo")})
        return {"model_list": deployments}

    def stop(self) -> None:
        for proc in self.running.values():
            proc.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with FakeUpstream() as fake:
        running = Servers(tmp_path_factory.mktemp("doc-examples"), fake)
        try:
            yield running
        finally:
            running.stop()


# --- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", CONFIGS, ids=lambda b: b.id)
def test_config_example_passes_check(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "manifold.yaml"
    path.write_text(block.code)
    handlers = [d.get("handler") for d in (yaml.safe_load(block.code).get("model_list") or []) if d.get("handler")]
    for name, text in _modules(block.page).items():
        (tmp_path / name).write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        for name in [h.split(":")[0] for h in handlers]:
            sys.modules.pop(name, None)
        config = load_config(path, environ={**os.environ, **env_for(block.code)})
    except ConfigError as exc:
        pytest.fail(f"{block.id}: {exc.problems}")
    finally:
        sys.path.remove(str(tmp_path))
    # What `serve` would refuse at start, minus the folders of the machine the page was written for.
    problems = [p for p in environment_problems(config) if not p.startswith("storage.data_dir")]
    assert not problems, f"{block.id}: {problems}"


def _modules(page: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for block in read_page(page).blocks:
        if block.file_name is not None:
            out[block.file_name] = out.get(block.file_name, "") + block.code
    return out


@pytest.mark.parametrize("block", MODULES, ids=lambda b: b.id)
def test_module_example_imports(block: Block, servers: Servers) -> None:
    workdir = servers.workdir(block.page)
    module = Path(str(block.file_name)).stem
    result = _run([sys.executable, "-c", f"import {module}"], workdir)
    assert result.returncode == 0, f"{block.id}: import {module} failed:\n{result.stderr}"


@pytest.mark.parametrize("block", CLIENTS)
def test_client_example_runs(block: Block, servers: Servers) -> None:
    workdir = servers.workdir(block.page)
    if not needs_server(block):
        _run_transcript(block, block.code, workdir)
        return
    server = servers.for_block(block)
    if block.lang == "python":
        code = block.code
        if re.search(r"^client\.|[^.\w]client\.", code) and "client = OpenAI(" not in code:
            code = _CLIENT + code
        code = code.replace(DOC_URL, server.url)
        result = _run([sys.executable, "-c", code], workdir)
        assert result.returncode == 0, f"{block.id} failed:\n{result.stdout}\n{result.stderr}"
        return
    code = block.code.replace(DOC_URL, server.url).replace("localhost:8080", server.url)
    if code.lstrip().startswith("$ "):
        _run_transcript(block, code, workdir)
        return
    result = _run(["bash", "-euo", "pipefail", "-c", code], workdir)
    assert result.returncode == 0, f"{block.id} failed:\n{result.stdout}\n{result.stderr}"
    assert not re.search(r'"error": ?\{', result.stdout), f"{block.id} answered an error:\n{result.stdout}"


def _run_transcript(block: Block, code: str, workdir: Path) -> None:
    """`$ command` lines, each followed by the output the page shows."""
    steps: list[tuple[str, list[str]]] = []
    for line in code.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    for command, shown in steps:
        command = re.sub(r"^manifold ", f"{sys.executable} -m manifold ", command)
        result = _run(["bash", "-c", command + " 2>&1"], workdir)
        expected = "\n".join(shown)
        try:
            assert json.loads(result.stdout) == json.loads(expected), f"{block.id}: {command}"
        except json.JSONDecodeError:
            assert result.stdout.rstrip("\n") == expected, f"{block.id}: {command}\n{result.stdout}"


def env_for(text: str) -> dict[str, str]:
    """A value for every `${VAR}` the text references (the keys a reader would export)."""
    return {name: f"doc-test-{name.lower()}" for name in _ENV_REF.findall(text)}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT, env=env)


def test_the_extractor_finds_the_examples() -> None:
    """The marker grammar in use: every marker is one this test understands, and the README's examples are run."""
    markers = {b.marker for p in ALL for b in p.blocks if b.marker}
    assert markers <= {"skip", "handler", "gateway"}, markers
    readme = [p.values[0].id for p in CLIENTS if p.values[0].page.name == "README.md"]
    assert len(readme) == 2, readme
    assert all(b.marker_arg for p in ALL for b in p.blocks if b.marker == "skip"), "a skip says why"
    # A block that calls the API but mixes in other commands would be left alone silently: none may.
    unrun = [b.id for p in ALL for b in p.blocks if b.lang == "sh" and "curl " in b.code and not is_curl_block(b)]
    assert not [u for u in unrun if not any(b.id == u and b.marker == "skip" for p in ALL for b in p.blocks)], unrun
    python = [b.id for p in ALL for b in p.blocks if b.lang == "python"]
    ran = {m.id for m in MODULES} | {c.values[0].id for c in CLIENTS}
    skipped = {b.id for p in ALL for b in p.blocks if b.marker == "skip"}
    assert set(python) <= ran | skipped, set(python) - ran - skipped
    assert shutil.which("bash") is not None


@pytest.mark.parametrize(
    ("target", "base_path"), [("frontend_app:app", "/v1"), ("mounted:api", "/llm/v1")], ids=["alone", "in-fastapi"]
)
def test_the_frontend_pages_asgi_apps_serve_as_the_page_runs_them(
    target: str, base_path: str, servers: Servers
) -> None:
    """frontend.md: `uvicorn frontend_app:app` and `uvicorn mounted:api` (the FastAPI mount) serve the handler to
    the official SDK, with stored completions listed — the page's modules, run the way the page says."""
    pytest.importorskip("fastapi")
    workdir = servers.workdir(ROOT / "docs" / "frontend.md")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(workdir), os.environ.get("PYTHONPATH", "")) if p),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}{base_path}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)
        reply = client.chat.completions.create(
            model="my-model", messages=[{"role": "user", "content": "Say hi"}], store=True
        )
        assert reply.choices[0].message.content
        listed = client.chat.completions.list(model="my-model")
        assert reply.id in [c.id for c in listed.data]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
