"""The configuration reference is generated from the config types (scripts/gen-config-docs): a key added to a
Struct and not to the page, or a default changed in one place only, fails here (issue 17: `server.kserve_urls`
and provider `python` were missing from configuration.md)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import msgspec

from manifold.config import DEPLOYMENT_KINDS, Config, ServerSettings
from manifold.providers.registry import PROVIDERS

ROOT = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    path = ROOT / "scripts" / "gen-config-docs"
    loader = importlib.machinery.SourceFileLoader("gen_config_docs", str(path))
    spec = importlib.util.spec_from_loader("gen_config_docs", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_committed_pages_equal_the_generated_ones() -> None:
    gen = generator()
    stale = [str(p.relative_to(ROOT)) for p, text in gen.generate().items() if p.read_text(encoding="utf-8") != text]
    assert not stale, f"{stale} differ from the config types: run scripts/gen-config-docs"


def test_every_key_and_provider_kind_is_in_the_reference() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for field in msgspec.structs.fields(ServerSettings):
        assert f"| `{field.name}` |" in page
    assert "| `kserve_urls` | true |" in page
    provider_row = next(line for line in page.splitlines() if line.startswith("| `provider` |"))
    for kind in PROVIDERS:
        assert f"`{kind}`" in provider_row, kind
    # each kind's own keys have their table (issue 11: one Struct per kind)
    for kind, cls in DEPLOYMENT_KINDS.items():
        for field in msgspec.structs.fields(cls):
            assert f"| `{field.name}` |" in page or f"| `{field.name}." in page, (kind, field.name)
    assert "<!-- config-keys model_list.http -->" in page and "<!-- config-keys model_list.local -->" in page


def test_a_new_field_gets_a_row_with_its_comment_and_a_new_section_gets_a_table(tmp_path: Path) -> None:
    gen = generator()

    class Extra(msgspec.Struct, kw_only=True):
        # how long to wait
        read_timeout: float = 2.5

    page = "\n".join(
        ["## `extra`", "", "<!-- config-keys extra -->", "| key | default | meaning |", "|---|---|---|", gen._END, ""]
    )
    text, seen = gen.render(page, {"extra": Extra}, None)
    assert seen == {"extra"}
    assert "| `read_timeout` | 2.5 | (undocumented: describe it in the page) |" in text
    text, _ = gen.render("# C\n\n## Environment\n", {"server": ServerSettings}, set())
    assert text.index("<!-- config-keys server -->") < text.index("## Environment")
    assert "| `port` | 8080 |" in text
    assert {f.name for f in msgspec.structs.fields(Config)} >= {"server", "storage", "responses", "router"}
