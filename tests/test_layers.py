"""The layers stay layers: the engine imports neither training nor the toy world, training does not import the
toy world, and no module of the project imports itself back through others (lazy imports inside functions
included, as a cycle through them still ties the layers together)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["instant3d", "instant3d_app", "training", "toyworld", "bench"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    modules["app"] = ROOT / "app.py"
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports, resolved to the longest module name that exists."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_import_resolution_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "instant3d.pipeline" in graph["instant3d"]  # from .pipeline-style and absolute both resolve
    assert "toyworld.scenes" in graph["toyworld.render"]  # the lazy import inside render_prompt
    assert "training.prompt_sets" in graph["toyworld"]


def test_engine_and_training_do_not_reach_up():
    graph = import_graph()
    for name, targets in graph.items():
        top = name.split(".")[0]
        forbidden = {"instant3d": ("training", "toyworld", "instant3d_app", "bench", "app"),
                     "training": ("toyworld", "instant3d_app", "bench", "app"),
                     "toyworld": ("instant3d_app", "bench", "app")}.get(top, ())
        bad = sorted(t for t in targets if t.split(".")[0] in forbidden)
        assert not bad, f"{name} imports {bad}, a layer above it"


def test_no_import_cycles():
    graph = import_graph()
    # Tarjan's strongly connected components: any component of more than one module is a cycle
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
