"""The notebooks run top to bottom without errors (nbclient, python3 kernel of this venv).

They run on a small synthetic cohort when ``pipeline.synthetic.generate_cohort``
and the stages of every modality exist, else on the real MIMIC-IV demo (skipped
when that is absent too).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = REPO / "notebooks"
N_PATIENTS = "120"


# what training on a synthetic cohort (EHR, ECG, notes, imaging) imports
SYNTHETIC_NEEDS = ("pipeline.stages.featurize_ecg", "pipeline.stages.featurize_notes",
                   "pipeline.stages.featurize_imaging", "pipeline.sources.ecg", "pipeline.sources.notes",
                   "pipeline.sources.imaging")


def synthetic_missing() -> list[str]:
    """What is missing to train on a synthetic cohort (empty when everything is there)."""
    import pipeline.synthetic
    missing = [] if hasattr(pipeline.synthetic, "generate_cohort") else ["pipeline.synthetic.generate_cohort"]
    return missing + [m for m in SYNTHETIC_NEEDS if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def kernel() -> str:
    """The 'python3' kernelspec, installed into this venv when absent."""
    from jupyter_client.kernelspec import KernelSpecManager
    if "python3" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                       check=True, capture_output=True)
    spec = KernelSpecManager().get_kernel_spec("python3")
    # jupyter_client swaps a bare 'python' for sys.executable, so the kernel runs in this venv
    assert spec.argv[0] in ("python", "python3", sys.executable), spec.argv
    return "python3"


@pytest.fixture(scope="module")
def nb_data(request) -> Path | None:
    """The data ROOT given to the notebooks: None = let them generate a cohort."""
    missing = synthetic_missing()
    if not missing:
        return None
    p = SHARED / "mimic-iv-demo"
    if not p.exists():
        pytest.skip(f"no synthetic cohort ({', '.join(missing)} missing) and the real demo is absent at {p}")
    return p


@pytest.fixture(scope="module")
def shared_root(nb_data, request) -> Path:
    """One data ROOT for the notebooks that do not demonstrate generation: the session's synthetic cohort."""
    return nb_data if nb_data is not None else request.getfixturevalue("synth_root")


def run_notebook(name: str, kernel: str, work: Path, monkeypatch, data: Path | None, **env) -> dict:
    monkeypatch.setenv("MMPIPE_NB_PATIENTS", N_PATIENTS)
    monkeypatch.setenv("MMPIPE_NB_WORK", str(work))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    if data is None:
        monkeypatch.delenv("MMPIPE_NB_DATA", raising=False)
    else:
        monkeypatch.setenv("MMPIPE_NB_DATA", str(data))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=300, allow_errors=False,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError naming the cell on the first error
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{name}: {out.get('ename')}: {out.get('evalue')}"
    return nb


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
            parts.append(out.get("data", {}).get("text/html", ""))
    return "\n".join(parts)


def _n_images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


def test_notebooks_are_valid_v4_with_python3_kernel():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3", path
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path}: outputs not cleared"


PUBLIC_API = {"Run", "PatientExplanation", "RunConfig", "synthesize"}


def test_notebooks_import_only_the_public_api():
    """Notebooks reach the project only through ``from pipeline import <public name>``."""
    import ast
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        src = "\n".join(line for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
                        if not line.lstrip().startswith(("%", "!")))
        used = set()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                bad = [a.name for a in node.names if a.name.split(".")[0] == "pipeline"]
                assert not bad, f"{path.name}: 'import {bad[0]}' (use 'from pipeline import ...')"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pipeline":
                assert node.module == "pipeline", f"{path.name}: imports from internal module {node.module}"
                names = {a.name for a in node.names}
                assert names <= PUBLIC_API, f"{path.name}: non-public names {names - PUBLIC_API}"
                used |= names
        assert "Run" in used, f"{path.name} does not use pipeline.Run"


def test_quickstart(kernel, nb_data, tmp_path, monkeypatch):
    nb = run_notebook("quickstart.ipynb", kernel, tmp_path, monkeypatch, nb_data)
    text = _text(nb)
    assert "test AUROC" in text and "admissions scored" in text
    work = next(tmp_path.glob("mmpipe-quickstart-*"))
    assert (work / "run" / "report" / "index.html").exists()
    if nb_data is None:
        assert (work / "cohort").is_dir() and (work / "new_patients").is_dir()
    import pandas as pd
    scores = pd.read_parquet(work / "scores.parquet")
    assert len(scores) > 0 and scores["risk"].between(0, 1).all()
    last = nb.cells[-2].outputs[-1]  # the score table head
    assert last["output_type"] == "execute_result" and "risk" in last["data"]["text/plain"]


def test_fusion_comparison(kernel, shared_root, tmp_path, monkeypatch):
    nb = run_notebook("fusion_comparison.ipynb", kernel, tmp_path, monkeypatch, shared_root)
    text = _text(nb)
    work = next(tmp_path.glob("mmpipe-fusion-*"))
    import json
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert {"gbm_early", "gbm_late"} <= set(metrics["models"])
    if importlib.util.find_spec("pipeline.models.fusion") is not None:
        assert any(m.startswith("fusion_") for m in metrics["models"])
    for name in metrics["models"]:
        assert name in text, f"{name} missing from the comparison table"
    assert "auroc_lo" in text and _n_images(nb) >= 1


def test_explain_patient(kernel, shared_root, tmp_path, monkeypatch):
    nb = run_notebook("explain_patient.ipynb", kernel, tmp_path, monkeypatch, shared_root)
    text = _text(nb)
    work = next(tmp_path.glob("mmpipe-explain-*"))
    import pandas as pd
    scores = pd.read_parquet(work / "run" / "test_scores.parquet")
    top = scores.loc[scores["risk"].idxmax()]
    assert f"hadm_id {int(top['hadm_id'])}: risk {top['risk']:.3f}" in text
    assert _n_images(nb) >= 2  # waterfall and modality contributions
    assert "contribution" in text and "shap" in text
