"""artifacts.read_parquet: parquet read by path through pyarrow's file system, never through a
Python file object (which pyarrow may release on one of its threads as the interpreter exits:
the process then aborts with "terminate called without an active exception", exit 134)."""
import ast
from pathlib import Path

import pandas as pd
import pandas.io.parquet
import pytest

from pipeline.artifacts import read_parquet

REPO = Path(__file__).resolve().parents[1]


def test_read_parquet_reads_by_path_not_through_a_python_file(tmp_path, monkeypatch):
    frame = pd.DataFrame({"subject_id": [1, 2, 3], "value": [0.5, None, 2.0]})
    frame.to_parquet(tmp_path / "f.parquet")
    (tmp_path / "dir").mkdir()
    frame.iloc[:2].to_parquet(tmp_path / "dir" / "a.parquet")
    frame.iloc[2:].to_parquet(tmp_path / "dir" / "b.parquet")

    def no_python_file(*args, **kwargs):
        raise AssertionError("a Python file object was handed to pyarrow")
    monkeypatch.setattr(pandas.io.parquet, "get_handle", no_python_file)
    with pytest.raises(AssertionError, match="Python file object"):
        pd.read_parquet(tmp_path / "f.parquet")          # what plain pandas does with a path
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "f.parquet"), frame)
    pd.testing.assert_frame_equal(read_parquet(str(tmp_path / "f.parquet"), columns=["value"]), frame[["value"]])
    got = read_parquet(tmp_path / "dir").sort_values("subject_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, frame)
    monkeypatch.setenv("HOME", str(tmp_path))
    pd.testing.assert_frame_equal(read_parquet("~/f.parquet"), frame)
    with pytest.raises(FileNotFoundError, match=r"No such file or directory: '.*missing\.parquet'"):
        read_parquet(tmp_path / "missing.parquet")


def test_no_parquet_read_bypasses_artifacts_read_parquet():
    """No pd.read_parquet / pandas.read_parquet call in the package or the benchmarks except the
    one inside read_parquet."""
    calls = []
    for path in sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "read_parquet(" in node.value:
                for line in node.value.splitlines():  # code run as a child process (benchmarks' CHILD)
                    if "pd.read_parquet(" in line or "pandas.read_parquet(" in line:
                        calls.append(f"{path.name}: {line.strip()}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "read_parquet"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("pd", "pandas")):
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert calls == ["pipeline/artifacts.py:" + str(_artifacts_read_line())], calls


def _artifacts_read_line() -> int:
    text = (REPO / "pipeline" / "artifacts.py").read_text()
    fn = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef) and n.name == "read_parquet")
    return next(n.lineno for n in ast.walk(fn) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "read_parquet")
