"""The source modules import without a cycle: no adapter imports ``discover``."""
import ast
from pathlib import Path

SOURCES = Path(__file__).resolve().parents[1] / "pipeline" / "sources"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline.sources."):
            out.add(node.module.rsplit(".", 1)[1])
    return out


def test_no_import_cycle_among_source_modules():
    graph = {p.stem: _imports(p) for p in SOURCES.glob("*.py")}
    seen, stack = set(), []

    def visit(m):
        assert m not in stack, f"import cycle: {' -> '.join(stack + [m])}"
        if m in seen:
            return
        stack.append(m)
        for n in graph.get(m, ()):
            visit(n)
        stack.pop()
        seen.add(m)
    for m in graph:
        visit(m)
