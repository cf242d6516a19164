"""Import direction: server → responses (the Responses engine) → routing → providers → api. `api` and the leaves
import nothing above them, and no backend kind is imported outside `providers/`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "manifold"
# package → packages it must not import
FORBIDDEN = {
    "api": {"server", "routing", "providers", "config", "cli"},
    "providers": {"server", "routing", "cli"},
    "routing": {"server", "cli"},
    "errors": {"api", "server", "routing", "providers", "config", "cli"},
    "_json": {"api", "server", "routing", "providers", "config", "errors", "cli"},
    "storage": {"api", "server", "routing", "providers", "cli"},
    "responses": {"server", "cli"},
    "mcp": {"server", "cli", "frontend", "responses", "routing", "providers"},
    # Authentication, limits, budgets, prices: the server wires it into the router; it imports neither.
    "access": {"server", "cli", "frontend", "routing", "responses"},
    # Schema and loading only: the checks that need providers or routing live in `validation`, run after loading.
    "config": {
        "api",
        "server",
        "routing",
        "providers",
        "responses",
        "storage",
        "frontend",
        "cli",
        "validation",
    },
    # The validation step after loading: it may read providers and routing, nothing serves from it.
    "validation": {"server", "responses", "storage", "frontend", "cli"},
    # A leaf: the server, the router and the providers call into it, never the reverse.
    "observability": {"api", "server", "routing", "providers", "responses", "storage", "frontend", "config", "cli"},
}
BACKENDS = {"openai_compatible", "local", "anthropic", "kserve_v2", "python_handler"}
# The one backend a package outside providers/ may import: `frontend` is the python handler's own HTTP face.
BACKEND_OWNERS = {"frontend": {"python_handler"}}


def imported(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


def main() -> int:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        top = rel.parts[0].removesuffix(".py")
        for module in imported(ast.parse(path.read_text(), str(path))):
            parts = module.split(".")
            if parts[0] != "manifold" or len(parts) < 2:
                continue
            target = parts[1]
            if target in FORBIDDEN.get(top, set()):
                problems.append(f"{rel}: imports manifold.{target} ({top} must not)")
            if (
                top != "providers"
                and target == "providers"
                and len(parts) > 2
                and parts[2] in BACKENDS
                and parts[2] not in BACKEND_OWNERS.get(top, set())
            ):
                problems.append(f"{rel}: imports backend {module} outside providers/")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
