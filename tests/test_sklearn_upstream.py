"""scikit-learn's own tests of its MLP estimators, run against fastbp.sklearn: the installed release's
``sklearn/neural_network/tests/test_mlp.py``, with its import of the estimators pointed at ``fastbp.sklearn`` and
nothing else changed ("change the import and nothing else"). The file is read from the installed scikit-learn, not
copied into this repository, so the test follows scikit-learn's releases."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sklearn

IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
OURS = "from fastbp.sklearn import MLPClassifier, MLPRegressor"

#: Tests of the file that call private methods of scikit-learn's class, deselected by name, each with its reason.
DESELECTED = {
    "test_gradient": (
        "calls scikit-learn's private _loss_grad_lbfgs, which unpacks parameters with the _coef_indptr table that only "
        "scikit-learn's own _fit_lbfgs builds, and computes scikit-learn's NumPy gradient, not fastbp's (fastbp's "
        "gradients are checked against finite differences in test_reference.py and test_sklearn.py)"
    ),
}

#: Seconds allowed for the file's run in a subprocess: 5 to 10 s measured with the kernels cached on disk, minutes
#: when it compiles them first.
TIMEOUT = 900


def test_scikit_learns_mlp_tests_pass_with_fastbp(tmp_path):
    source = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
    if not source.exists():
        pytest.skip(f"this scikit-learn {sklearn.__version__} was installed without its tests ({source})")
    text = source.read_text()
    assert text.count(IMPORT) == 1, f"{source} no longer imports the estimators as {IMPORT!r}: update IMPORT"
    for name in DESELECTED:
        assert f"def {name}(" in text, f"{name} is no longer in {source}: remove it from DESELECTED"
    (tmp_path / "test_mlp_fastbp.py").write_text(text.replace(IMPORT, OURS))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # the rootdir, without this project's pytest settings
    report = tmp_path / "report.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "test_mlp_fastbp.py",
        "-p",
        "sklearn.conftest",  # scikit-learn's test configuration: its fixtures (global_random_seed) and markers
        "-p",
        "no:cacheprovider",
        "-q",
        f"--junitxml={report}",
        *(f"--deselect=test_mlp_fastbp.py::{name}" for name in DESELECTED),
    ]
    env = {k: val for k, val in os.environ.items() if k != "PYTEST_ADDOPTS"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts
    assert counts["tests"] >= 50, counts  # the file's 58 tests with scikit-learn 1.9.1, less the deselected
    assert OURS in (tmp_path / "test_mlp_fastbp.py").read_text()
