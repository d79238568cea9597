"""The house rules of the layout, read from the source itself.

- no service package imports another or the gateway; the shared contract (`protos`) imports
  none of them;
- the cores (engine, models, kernels) import no grpc, and kernels import nothing of ours but
  the shared contract;
- a gateway with only remote backends never loads the engine, the models, kernels or towers;
- no source file is over 500 lines (generated stubs aside).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.tools.tiny_models import tiny_model_path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protos", "kernels", "lm_service", "encoder_service", "gateway")
MAX_LINES = 500

# package (or sub-package) -> what it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "protos": ("gateway", "lm_service", "encoder_service", "kernels"),
    "kernels": ("gateway", "lm_service", "encoder_service", "grpc", "grpc_health"),
    "lm_service": ("gateway", "encoder_service"),
    "encoder_service": ("gateway", "lm_service", "kernels"),
    "lm_service.engine": ("grpc", "grpc_health", "grpc_reflection"),
    "lm_service.models": ("grpc", "grpc_health", "grpc_reflection"),
}

# What a remote-only gateway must not load: the LM's cores and the encoders' towers.
CORE_MODULES = ("lm_service.engine", "lm_service.models", "kernels", "encoder_service.towers")


def source_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_pb2" not in path.name:
                yield path


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every module an import statement names, lazy (function-local) and TYPE_CHECKING included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from gateway import app` imports gateway.app
                yield node.lineno, f"{node.module}.{alias.name}"


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations() -> Iterator[str]:
    for path in source_files():
        importer = module_name(path)
        rules = [bad for owner, bad in FORBIDDEN.items() if _within(importer, owner)]
        for lineno, imported in imported_modules(path):
            for forbidden in (name for bad in rules for name in bad):
                if _within(imported, forbidden):
                    where = path.relative_to(ROOT)
                    yield f"{where}:{lineno}: {importer} imports {imported}"


def test_no_service_imports_another_and_cores_import_no_grpc() -> None:
    found = sorted(set(violations()))
    assert not found, "import rules broken:\n" + "\n".join(found)


def test_the_rule_walker_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    # A walker that missed function-local imports would let the rules pass vacuously.
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from gateway import app\n    import lm_service.engine\n")
    found = {name for _, name in imported_modules(sample)}
    assert {"gateway", "gateway.app", "lm_service.engine"} <= found


def test_no_source_file_over_500_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in source_files()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, "split these by concept:\n" + "\n".join(long)


REMOTE_GATEWAY = """
import asyncio, sys
from gateway.api.grpc_servicer import GatewayServicer
from gateway.api.http.app import build_app
from gateway.api.http.options import HttpOptions
from gateway.app import build_orchestrator, remote_backends, served_model
from gateway.tools.cli import build_parser

build_parser()
served = served_model(sys.argv[1], "generate", {"image": 2})

async def main():
    encoders, lm = remote_backends(["127.0.0.1:1"], {"image": ["127.0.0.1:2"]})
    orchestrator = build_orchestrator(served, encoders, lm)
    GatewayServicer(orchestrator, "native", 128)
    build_app(orchestrator, HttpOptions(), is_serving=None)  # the OpenAI HTTP front too
    await encoders.close()
    await lm.close()

asyncio.run(main())
print("\\n".join(sorted(sys.modules)))
"""


@pytest.mark.parametrize("model", ["llava", "qwen2_vl"])
def test_a_remote_only_gateway_loads_no_engine_kernels_or_towers(model: str) -> None:
    path = tiny_model_path(model)
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_GATEWAY, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split()
    assert "gateway.backends.remote" in loaded  # the probe really built a remote gateway
    cores = [m for m in loaded if any(_within(m, core) for core in CORE_MODULES)]
    assert not cores, f"a remote-only gateway imported {cores}"


def _import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in source_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {imported for _, imported in imported_modules(path) if imported in modules}
        graph[name] = targets - {name}
    return graph


def _a_circle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_two_modules_import_each_other_in_a_circle() -> None:
    # Packages' __init__ re-exports aside: a package importing its own children is no circle.
    graph = {
        name: {t for t in targets if not name.startswith(t + ".") and not t.startswith(name + ".")}
        for name, targets in _import_graph().items()
    }
    assert _a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # it sees one
    circle = _a_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or ())
