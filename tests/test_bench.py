"""The benchmark report's check of the targets of docs/benchmarks.md (on made-up results: no timing here)."""

import pytest

from fastbp import bench


def _cell(shape, dtype, peak_percent=50.0, **ratios):
    peers = {"fastbp": {"ratio": 1.0}} | {name: {"ratio": r} for name, r in ratios.items()}
    return {"shape": shape, "dtype": dtype, "peak_percent": peak_percent, "peers": peers}


def _fit(dtype, ratio, ours, theirs):
    return {"dtype": dtype, "ratio": ratio, "fastbp_accuracy": ours, "sklearn_accuracy": theirs}


def test_targets_compare_each_cell_with_its_peers_and_the_fastest_one():
    results = {
        "cells": [
            _cell("S", "float32", numpy=3.5, torch=9.0, jax=2.9),
            _cell("M", "float32", numpy=1.9, torch=2.0, jax=1.06),
            _cell("L", "float32", numpy=1.2, torch=2.0, jax=0.98),  # jax under 1x: jax is faster than fastbp
            _cell("XL", "float32", peak_percent=89.6, numpy=1.5, torch=2.0, jax=1.05),
            _cell("M", "float64", numpy=0.9, torch=2.0),  # not a step target, but slower than numpy
        ],
        "sklearn": [_fit("float32", 8.5, 0.970, 0.975), _fit("float64", 9.0, 0.95, 0.97)],
    }
    met = {target: (measured, ok) for target, measured, ok in bench.targets(results)}
    assert met["S: >= 8x torch"] == ("9.00x", True)
    assert met["S: >= 3x numpy"][1] and not met["S: >= 3x jax"][1]
    assert met["M: >= 1.05x the fastest peer"] == ("1.06x (jax)", True)
    assert met["L: >= 1x the fastest peer"] == ("0.98x (jax)", False)
    assert met["XL: >= 1x the fastest peer"][1]
    assert met["XL: >= 90% of the sgemm peak"] == ("89.6%", False)
    assert met["never slower than the lean NumPy step (every cell)"] == ("0.90x at its lowest (M float64)", False)
    assert met["scikit-learn fit float32: >= 8x, accuracy within 1 point"] == ("8.5x, 0.50 points apart", True)
    assert met["scikit-learn fit float64: >= 8x, accuracy within 1 point"] == ("9.0x, 2.00 points apart", False)
    assert len(met) == 20  # and the 7 bfloat16 targets and the 3 of D, not measured here
    assert met["L in bfloat16: >= 1.6x the fastest float32 peer"] == ("not measured (no L bfloat16 cell)", None)


def test_targets_not_measured_are_shown_never_dropped_or_passed():
    # S with numpy and torch only (jax not installed), M with numpy alone, no scikit-learn fit
    results = {
        "cells": [_cell("S", "float32", numpy=4.0, torch=9.0), _cell("M", "float32", numpy=1.5)],
        "sklearn": [],
    }
    rows = bench.targets(results)
    met = {target: (measured, ok) for target, measured, ok in rows}
    assert len(rows) == 20  # every target, measured or not
    assert met["S: >= 8x torch"] == ("9.00x", True)
    assert met["S: >= 3x jax"] == ("not measured (jax not installed)", None)
    # numpy alone is above 1.05x, but torch and jax were not measured: no verdict
    assert met["M: >= 1.05x the fastest peer"] == ("1.50x (numpy); torch, jax not measured", None)
    assert met["L: >= 1x the fastest peer"] == ("not measured (no L float32 cell)", None)
    assert met["XL: >= 90% of the sgemm peak"][1] is None
    assert met["never slower than the lean NumPy step (every cell)"][1] is True
    assert met["scikit-learn fit float64: >= 8x, accuracy within 1 point"] == ("not measured", None)
    table = bench.targets_table(results)
    assert "| S: >= 3x numpy | 4.00x | yes |" in table
    assert "| S: >= 3x jax | not measured (jax not installed) | not measured |" in table


def test_bfloat16_cells_are_checked_against_float32_peers_torch_autocast_and_the_bf16_peak():
    results = {
        "cells": [
            _cell("M", "bfloat16", numpy=2.6, torch=1.7, jax=1.5, torch_bf16=1.9),
            _cell("L", "bfloat16", numpy=3.0, torch=1.8, jax=1.75, torch_bf16=0.63),
            # torch float32 is the fastest float32 peer here: the target is checked against it, not jax
            _cell("XL", "bfloat16", peak_percent=38.6, numpy=3.9, torch=1.55, jax=2.4, torch_bf16=1.3),
        ],
        "sklearn": [],
    }
    met = {target: (measured, ok) for target, measured, ok in bench.targets(results)}
    assert met["M in bfloat16: >= 1.3x the fastest float32 peer"] == ("1.50x (jax)", True)
    assert met["M in bfloat16: >= 1.2x torch bf16"] == ("1.90x", True)
    assert met["L in bfloat16: >= 1.2x torch bf16"] == ("0.63x", False)
    assert met["XL in bfloat16: >= 1.6x the fastest float32 peer"] == ("1.55x (torch)", False)
    assert met["XL in bfloat16: >= 1.2x torch bf16"] == ("1.30x", True)
    assert met["XL in bfloat16: >= 70% of the bfloat16 GEMM peak"] == ("38.6%", False)
    # the float32 targets, with no float32 cell, are shown as not measured
    assert met["M: >= 1.05x the fastest peer"] == ("not measured (no M float32 cell)", None)


def test_the_deep_shape_is_checked_against_its_peers_and_the_plain_network():
    deep = _cell("D", "float32", torch=2.4, jax=1.1, plain=0.86)
    deep["options"] = bench.LAYER_OPTIONS["D"]
    results = {"cells": [_cell("M", "float32", numpy=1.9, torch=2.0, jax=1.06), deep], "sklearn": []}
    met = {target: (measured, ok) for target, measured, ok in bench.targets(results)}
    assert met["D: >= 2x torch (the same model)"] == ("2.40x", True)
    assert met["D: >= 1.25x jax (the same model)"] == ("1.10x", False)
    # plain / fastbp = 0.86: the options cost 1 / 0.86 - 1 = 16%
    assert met["D: the layer options cost <= 20% over the plain network"] == ("+16%", True)
    # numpy has no step with layer options: D without numpy leaves the numpy target measured
    assert met["never slower than the lean NumPy step (every cell)"] == ("1.90x at its lowest (M float32)", True)
    deep["peers"]["plain"]["ratio"] = 0.8
    met = {target: (measured, ok) for target, measured, ok in bench.targets(results)}
    assert met["D: the layer options cost <= 20% over the plain network"] == ("+25%", False)


def test_a_deep_bfloat16_cell_times_plain_in_bfloat16_and_keeps_each_rounds_time(monkeypatch):
    # plain is fastbp without the layer options: in the same matmul precision, or the column mixes both costs
    built = {}

    def recorder(name):
        def step(sizes, batch, dtype, matmul_precision="float32", options=None):
            built[name] = (matmul_precision, options)
            return name

        return step

    for name in ("fastbp", "plain"):
        monkeypatch.setitem(bench.CONTENDERS, name, recorder(name))
    monkeypatch.setattr(bench, "interleaved", lambda steps, rounds, min_time: {n: [3.0, 1.0, 2.0] for n in steps})
    monkeypatch.setattr(bench, "gradient_check", lambda *args: 0.0)
    result = bench.measure_cell("D", "bfloat16", ["fastbp", "plain"], 3, 0.0)
    assert built["fastbp"] == ("bfloat16", bench.shape_of("D")[2]) and built["plain"][0] == "bfloat16"
    assert result["peers"]["plain"]["times_s"] == [3.0, 1.0, 2.0]  # --json keeps the inputs of the ratios


def test_a_peer_that_is_installed_but_broken_is_skipped_with_a_note(tmp_path, monkeypatch):
    (tmp_path / "brokenpeer.py").write_text("raise OSError('libbroken.so: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    notes = []
    assert bench.available_peers(("brokenpeer",), report=notes.append) == []
    assert notes == [
        "note: brokenpeer is installed but fails to import (OSError: libbroken.so: cannot open shared object file); "
        "its column is skipped"
    ]


def test_the_machine_line_says_whose_blas_each_library_is():
    scipy = {"filepath": "/env/site-packages/scipy.libs/libscipy_openblas-1.so"}
    numpy = {"filepath": "/env/site-packages/numpy.libs/libscipy_openblas64_-2.so"}
    assert bench._owner(scipy, numpy["filepath"]) == "scipy's"
    assert bench._owner(numpy, numpy["filepath"]) == "numpy's, fastbp's GEMMs"
    # no OpenBLAS of the wheels: SciPy's cython_blas, whose library lives beside the installed SciPy
    import os

    from scipy import __file__ as scipy_init

    scipy_here = {"filepath": os.path.realpath(os.path.dirname(scipy_init)) + ".libs/libscipy_openblas-1.so"}
    assert bench._owner(scipy_here, None) == "scipy's, fastbp's GEMMs"
    assert bench._owner({}, None) == "unknown copy"
    # a system's or conda's library is named by its folder, not "lib's" or "x86_64-linux-gnu's"
    assert bench._owner({"filepath": "/opt/conda/lib/libopenblasp-r0.3.21.so"}, None) == "from /opt/conda/lib"


def test_breakdown_names_the_shapes_it_takes():
    # profile("D") raised a bare KeyError: 'D'
    from fastbp import breakdown

    with pytest.raises(ValueError, match=r"shape must be one of S, M, L, XL .*got 'D' \(the step of a network with"):
        breakdown.profile("D")


@pytest.mark.parametrize(
    ("dtype", "autocast", "loss_dtype"), [("float64", False, "float64"), ("float32", True, "float32")]
)
def test_the_torch_peer_computes_its_loss_in_the_cell_s_dtype(monkeypatch, dtype, autocast, loss_dtype):
    # the float64 cells' loss ran in float32 (a cast meant for autocast's bfloat16 output only)
    torch = pytest.importorskip("torch")
    seen = []
    forward = torch.nn.CrossEntropyLoss.forward
    monkeypatch.setattr(
        torch.nn.CrossEntropyLoss, "forward", lambda self, out, y: seen.append(str(out.dtype)) or forward(self, out, y)
    )
    steps, _ = bench.torch_step([4, 5, 3], 8, dtype, autocast=autocast)
    steps()
    assert seen and set(seen) == {f"torch.{loss_dtype}"}
