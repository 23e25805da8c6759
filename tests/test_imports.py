"""The package's modules import each other without cycles (read from their source with ``ast``, every import
counted, the ones inside functions too, except a module's ``if __name__ == "__main__":`` block, which runs only
when the file is the program), and the runtime never imports TensorFlow or the factory."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: installed package -> folder in the checkout (pyproject.toml's package-dir)
PACKAGES = {"fer_sdk": "fer_sdk", "fer_sdk.export": "export", "fer_sdk.benchmarks": "benchmarks", "fer_sdk.web": "web"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _imports(tree: ast.Module):
    stack: list[ast.AST] = [n for n in tree.body if not _is_main_guard(n)]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from . import registry` imports the submodule; `from .errors import X` the module errors
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_every_module():
    graph = import_graph()
    assert {"fer_sdk.classifier", "fer_sdk.export.train", "fer_sdk.benchmarks.run", "fer_sdk.webapp"} <= set(graph)
    assert "fer_sdk.registry" in graph["fer_sdk.classifier"]  # `from . import registry`
    assert "fer_sdk.export.convert" in graph["fer_sdk.export.train"]  # an import inside a function counts


def test_there_is_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_runtime_does_not_import_tensorflow_or_the_factory():
    graph = import_graph()
    runtime = [
        m for m in graph if m.startswith("fer_sdk.") and not m.startswith(("fer_sdk.export", "fer_sdk.benchmarks"))
    ]
    for name in runtime:
        if name == "fer_sdk.cli":  # the CLI's train/export/models commands load the factory on demand
            continue
        assert not {m for m in graph[name] if m.startswith("fer_sdk.export")}, name
    code = (
        "import sys, fer_sdk, fer_sdk.classifier, fer_sdk.webapp, fer_sdk.photos, fer_sdk.video, fer_sdk.cli\n"
        "from fer_sdk import Classifier\n"
        "Classifier().predict_proba(__import__('numpy').zeros((1, 48, 48), 'uint8'))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
