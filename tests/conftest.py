import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real open data not present at {p} (../shared/data is provided beside the repo)")
    return p


@pytest.fixture(scope="session")
def mimic_demo() -> Path:
    return shared("mimic-iv-demo")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic cohort in the real layouts, generated once per session."""
    from pipeline.synthetic import generate_cohort
    root = tmp_path_factory.mktemp("synth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate_cohort(root, n_patients=160, seed=7, progress=False)
    return root
