"""With CI=true a skipped test is a failure (tests/conftest.py); .ci/run refuses to go on
without Chromium or the shared data instead of letting their tests skip."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_skip_fails_under_ci(tmp_path, ci):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_s.py").write_text(
        "import pytest\n"
        "def test_runtime_skip():\n    pytest.skip('no chromium')\n"
        "@pytest.fixture\ndef data():\n    pytest.skip('no shared data')\n"
        "def test_fixture_skip(data):\n    pass\n"
        "def test_ok():\n    pass\n")
    (tmp_path / "test_m.py").write_text("import pytest\npytest.importorskip('no_such_module_xyz')\n")
    env = {**os.environ, "CI": ci}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--continue-on-collection-errors", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    if ci:
        assert r.returncode == 1, r.stdout[-2000:]
        assert r.stdout.count("skipped under CI=true") >= 2 and "module skipped under CI=true" in r.stdout
        assert "1 passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-500:]
    else:
        assert r.returncode == 0 and "1 passed, 3 skipped" in r.stdout.splitlines()[-1], r.stdout[-2000:]


def test_ci_script_fails_without_chromium_or_shared_data():
    text = (HERE.parent / ".ci" / "run").read_text()
    assert "export CI=true" in text and "warning" not in text
    assert text.count("exit 1") >= 2 and "../shared/data" in text
