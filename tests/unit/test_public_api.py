"""The public surface is small on purpose: adding to it is a decision, so this test names it. And light:
`import manifold` loads its names only when they are used."""

import subprocess
import sys

import manifold

# Dependencies a plain `import manifold` must not load (every `import manifold.x` runs it first).
HEAVY = {"msgspec", "yaml", "uvicorn", "sqlalchemy", "httpx", "anyio", "h11", "redis", "openai", "numpy"}


def test_public_names() -> None:
    assert sorted(manifold.__all__) == [
        "Config",
        "ConfigError",
        "Deployment",
        "ManifoldApp",
        "ManifoldError",
        "ServerSettings",
        "Timeouts",
        "__version__",
        "build_app",
        "load_config",
        "parse_config",
    ]
    for name in manifold.__all__:
        assert hasattr(manifold, name), name
    assert not hasattr(manifold, "Store")  # only the public names load through the package


def test_build_app_from_a_mapping() -> None:
    app = manifold.build_app(manifold.parse_config({"model_list": [], "server": {"prefixes": ["/v1", "/v3"]}}))
    assert isinstance(app, manifold.ManifoldApp)
    assert app.settings.prefixes == ["/v1", "/v3"]


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    probe = code + "\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


def test_import_manifold_loads_the_package_alone() -> None:
    modules = _modules_after("import manifold")
    assert sorted(m for m in modules if m.split(".")[0] == "manifold") == ["manifold"]
    assert not HEAVY & {m.split(".")[0] for m in modules}


def test_every_public_name_loads_on_use() -> None:
    names = ", ".join(n for n in manifold.__all__ if n != "__version__")
    modules = _modules_after(f"from manifold import {names}")
    assert {"manifold.config", "manifold.errors", "manifold.server.app"} <= modules
    with_dir = _modules_after("import manifold\nassert set(manifold.__all__) <= set(dir(manifold))")
    assert "manifold.server.app" not in with_dir  # dir() names them without loading them
