"""A training step of the PyTorch bridge against the equivalent torch.nn.Sequential (torch eager), shapes S and M.

One step is the user's torch loop: ``opt.zero_grad()``, forward, ``CrossEntropyLoss``, ``backward()``,
``torch.optim.SGD`` step; both modules start from the same weights and train on the same batch. torch keeps its
default thread count. ``scripts/torch_bridge_bench.py`` interleaves the same steps in rounds (docs/measurements.md).
"""

import pytest
from conftest import batch_data

torch = pytest.importorskip("torch", reason="torch is not installed")
import fastbp.torch  # noqa: E402


@pytest.mark.parametrize("module", ["fastbp.torch", "torch"])
@pytest.mark.parametrize("shape", ["S", "M"])
def test_torch_training_step(benchmark, shape, module):
    sizes, _, X, y = batch_data(shape, "float32")
    model = fastbp.torch.MLP(sizes, activation="relu", output="identity", seed=0)
    if module == "torch":
        model = model.to_sequential()
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step()

    benchmark.group = f"torch training step|{shape}-float32"
    step()  # warm-up: compilation, the bridge's choice of GEMMs
    benchmark(step)
