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


def test_discover_eicu_and_mimic_iv_each_import_alone_in_a_fresh_interpreter():
    """Each module first in a fresh interpreter (a cycle between them breaks whichever is
    imported first, so every one of them goes first once); the three run side by side."""
    import subprocess
    import sys
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import pipeline.sources.{m}"], cwd=SOURCES.parents[1],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for m in ("discover", "eicu", "mimic_iv")}
    for m, p in procs.items():
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, f"import pipeline.sources.{m} alone failed:\n{out[-2000:]}"
