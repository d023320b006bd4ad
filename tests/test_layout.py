"""The package's layout holds: no import circles, stages import only the stages before them, the
subscriber side needs no model runtime, no class past ~250 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "frametok"

# the pipeline's stages in the order a frame takes them: a stage imports only those before it
STAGES = ["ipc", "source", "delivery", "worker", "supervision"]
# the floors below the pipeline: they never import it (nor the index, viewer, exporters, CLI)
ABOVE = ("frametok.streamer", "frametok.index", "frametok.viewer", "frametok.exporters", "frametok.cli",
         "frametok.demo")
LOWER = ("frametok.errors", "frametok.grid", "frametok.packet", "frametok.keys", "frametok.zmq_parts",
         "frametok.config", "frametok.sdk", "frametok.models")
# what the subscriber side may import of frametok
SDK_MAY_IMPORT = ("frametok.errors", "frametok.grid", "frametok.packet", "frametok.keys", "frametok.zmq_parts",
                  "frametok.sdk")
MAX_CLASS_LINES = 260


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Every import inside frametok, module-level or not (a lazy import closes a circle just the same)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import frametok.x.y` names a module or its package
                    target = target.rpartition(".")[0]
                if target.startswith("frametok") and target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    assert _cycles(import_graph()) == []


def test_stages_import_only_earlier_stages() -> None:
    wrong = []
    for mod, targets in import_graph().items():
        for target in targets:
            if _under(mod, LOWER) and not mod.startswith("frametok.sdk") and _under(target, ABOVE):
                wrong.append(f"{mod} -> {target}")
            if mod.startswith("frametok.streamer.") and target.startswith("frametok.streamer."):
                a, b = mod.split(".")[2], target.split(".")[2]
                if a in STAGES and b in STAGES and STAGES.index(b) > STAGES.index(a):
                    wrong.append(f"{mod} -> {target}")
            if mod.startswith("frametok.sdk") and target.startswith("frametok") and not _under(target, SDK_MAY_IMPORT):
                wrong.append(f"{mod} -> {target}")
            if _under(mod, ("frametok.packet", "frametok.grid")) and not _under(
                    target, ("frametok.errors", "frametok.grid", "frametok.packet")):
                wrong.append(f"{mod} -> {target}")
    assert wrong == []


def test_every_streamer_module_is_in_a_stage() -> None:
    loose = [m for m in _modules() if m.startswith("frametok.streamer.") and m.split(".")[2] not in STAGES]
    assert loose == []


def test_a_subscriber_imports_no_model_runtime() -> None:
    code = ("import sys; from frametok import Subscriber, TokenPacket; "
            "print(','.join(m for m in ('onnxruntime', 'cv2', 'av', 'lancedb', 'torch', 'supervision') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("name", ["Index", "run_pipeline", "RunSummary"])
def test_lazy_names_still_resolve(name: str) -> None:
    import frametok

    assert getattr(frametok, name).__name__ == name


def test_no_class_past_its_size() -> None:
    big = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    big.append(f"{path.relative_to(PACKAGE.parent)}:{node.name} {lines} lines")
    assert big == []
