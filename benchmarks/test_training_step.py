"""One training step of the reference network (forward, loss, backward, SGD step with
momentum) on a batch of 64, per backend, with PyTorch CPU as an optional reference row.
The loss and the updated conv weights must match a float64 step computed once with the
``naive`` oracle."""

import numpy as np
import pytest

import convlab
from benchmarks.conftest import measure
from benchmarks.reference_run import BATCH_SIZE, LR, MOMENTUM, SEED
from convlab.timing import is_tuner
from convlab.training import train_step

GROUP = f"training step, reference net, batch {BATCH_SIZE}"


def batch(dtype=np.float32):
    rng = np.random.default_rng(SEED)
    return rng.random((BATCH_SIZE, 1, 28, 28)).astype(dtype), rng.integers(0, 10, BATCH_SIZE)


def convlab_step(backend, dtype=np.float32):
    """(setup, run): setup restores the initial weights and a fresh optimizer; run takes
    one step and returns (loss, updated conv weights)."""
    model = convlab.reference_net(seed=SEED, backend=backend, dtype=dtype)
    initial = {name: p.copy() for name, p in model.state_dict().items()}
    x, y = batch(dtype)
    state = {}

    def setup():
        model.load_state_dict(initial)
        state["optimizer"] = convlab.SGD(model, lr=LR, momentum=MOMENTUM)

    def run():
        loss, _ = train_step(model, state["optimizer"], x, y)
        return loss, model.layers[0].params["w"].copy()

    return setup, run


def torch_step():
    """The same network, weights, batch and optimizer in PyTorch (float32)."""
    torch = pytest.importorskip("torch")
    start = convlab.reference_net(seed=SEED).state_dict()  # "0.w", "0.b", "3.w" (in, out), "3.b"
    conv, dense = torch.nn.Conv2d(1, 32, 7, padding=1), torch.nn.Linear(32 * 24 * 24, 10)
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), dense)
    x, y = (torch.from_numpy(a) for a in batch())
    state = {}

    def setup():
        with torch.no_grad():
            for param, value in ((conv.weight, start["0.w"]), (conv.bias, start["0.b"]),
                                 (dense.weight, start["3.w"].T), (dense.bias, start["3.b"])):
                param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        state["optimizer"] = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

    def run():
        state["optimizer"].zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        state["optimizer"].step()
        return loss.item(), conv.weight.detach().numpy().copy()

    return setup, run


@pytest.fixture(scope="module")
def reference():
    setup, run = convlab_step("naive", np.float64)
    setup()
    return run()


@pytest.mark.parametrize("row", convlab.list_backends() + ["torch"])
def test_training_step(benchmark, row, reference):
    benchmark.group = GROUP
    if row != "torch":
        reason = convlab.get_backend(row).supports((BATCH_SIZE, 1, 28, 28), (32, 1, 7, 7), 1, 1)
        if reason is not None:
            pytest.skip(f"{row} does not support {reason}")
    setup, run = torch_step() if row == "torch" else convlab_step(row)
    if row != "torch" and is_tuner(row):
        # auto tunes at its first step, and again at its second, having learned that the
        # layer needs no dx: untimed, or measure() sizes the rounds by a tuning step (3, not 20).
        for _ in range(2):
            setup()
            run()
    loss, conv_w = measure(benchmark, run, setup)
    assert loss == pytest.approx(reference[0], rel=1e-4)
    np.testing.assert_allclose(conv_w, reference[1], rtol=1e-3, atol=1e-5)
