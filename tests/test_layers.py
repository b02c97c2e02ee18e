"""Layers, loss and model: finite-difference gradient checks in float64, stability, seeding."""

import numpy as np
import pytest

import convlab
from convlab.layers import Conv2D, Dense, Flatten, ReLU
from convlab.losses import softmax, softmax_cross_entropy
from convlab.optimizers import cosine_lr


def dot_product_check(forward, backward, x, rng, eps=1e-6):
    """Check <dy, (f(x+eps v) - f(x-eps v)) / 2eps> == <backward(dy), v>."""
    y = forward(x)
    dy = rng.standard_normal(y.shape)
    dx = backward(dy)
    v = rng.standard_normal(x.shape)
    numeric = np.sum(dy * (forward(x + eps * v) - forward(x - eps * v))) / (2 * eps)
    assert numeric == pytest.approx(np.sum(dx * v), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("make_layer, shape", [
    (lambda: ReLU(), (3, 4, 5)),
    (lambda: Flatten(), (2, 3, 4, 5)),
    (lambda: Dense(6, 4, rng=0, dtype=np.float64), (5, 6)),
    (lambda: Conv2D(2, 3, (3, 2), stride=(2, 1), padding=1, rng=0, dtype=np.float64), (2, 2, 7, 6)),
])
def test_layer_input_gradient(make_layer, shape):
    rng = np.random.default_rng(0)
    layer = make_layer()
    x = rng.standard_normal(shape)
    if isinstance(layer, ReLU):
        x[np.abs(x) < 1e-3] = 0.5  # finite differences are meaningless at the kink
    dot_product_check(layer.forward, lambda dy: layer.backward(dy), x, rng)


@pytest.mark.parametrize("make_layer, shape", [
    (lambda: Dense(6, 4, rng=0, dtype=np.float64), (5, 6)),
    (lambda: Conv2D(2, 3, 3, padding=2, rng=0, dtype=np.float64), (2, 2, 5, 4)),
])
@pytest.mark.parametrize("param", ["w", "b"])
def test_layer_parameter_gradients(make_layer, shape, param):
    rng = np.random.default_rng(1)
    layer = make_layer()
    x = rng.standard_normal(shape)
    original = layer.params[param].copy()

    def forward(p):
        layer.params[param][...] = p
        return layer.forward(x)

    def backward(dy):
        layer.params[param][...] = original
        layer.forward(x)
        layer.backward(dy)
        return layer.grads[param]

    dot_product_check(forward, backward, original.copy(), rng)


def test_softmax_cross_entropy_gradient_and_value():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 10))
    labels = rng.integers(0, 10, 6)
    loss, dlogits = softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(-np.mean(np.log(softmax(logits)[np.arange(6), labels])))
    v = rng.standard_normal(logits.shape)
    eps = 1e-6
    numeric = (softmax_cross_entropy(logits + eps * v, labels)[0]
               - softmax_cross_entropy(logits - eps * v, labels)[0]) / (2 * eps)
    assert numeric == pytest.approx(np.sum(dlogits * v), rel=1e-6)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], dtype=np.float32)
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 0]))
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert loss == pytest.approx(1e4)  # second row: log-prob of class 0 is -2e4, mean with 0
    assert dlogits.dtype == np.float32


def test_softmax_cross_entropy_of_a_row_does_not_depend_on_the_other_rows():
    """Each row's log-sum-exp is shifted by that row's own max: shifted by the batch's max,
    a row of logits far below another row's (here by 2000) underflows to exp(.) = 0 and
    its loss to log(0)."""
    logits = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -999.0, -1001.0]])
    labels = np.array([0, 1])
    loss, dlogits = softmax_cross_entropy(logits, labels)
    alone = [softmax_cross_entropy(logits[i:i + 1], labels[i:i + 1]) for i in range(2)]
    assert loss == pytest.approx(np.mean([row_loss for row_loss, _ in alone]))
    np.testing.assert_allclose(dlogits, np.concatenate([row_grad for _, row_grad in alone]) / 2)


def test_whole_model_gradient_check():
    rng = np.random.default_rng(3)
    model = convlab.Sequential(Conv2D(1, 2, 3, padding=1, rng=rng, dtype=np.float64), ReLU(), Flatten(),
                               Dense(2 * 6 * 6, 3, rng=rng, dtype=np.float64))
    x = rng.standard_normal((4, 1, 6, 6))
    labels = rng.integers(0, 3, 4)
    loss, dlogits = softmax_cross_entropy(model.forward(x), labels)
    model.backward(dlogits)
    eps = 1e-6
    for name, param, grad in model.named_parameters():
        v = rng.standard_normal(param.shape)
        param += eps * v
        plus = softmax_cross_entropy(model.forward(x), labels)[0]
        param -= 2 * eps * v
        minus = softmax_cross_entropy(model.forward(x), labels)[0]
        param += eps * v
        assert (plus - minus) / (2 * eps) == pytest.approx(np.sum(grad * v), rel=1e-5, abs=1e-9), name


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = convlab.reference_net(seed=7), convlab.reference_net(seed=7), convlab.reference_net(seed=8)
    for (name, pa, _), (_, pb, _), (_, pc, _) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(pa, pb)
        assert pa.dtype == np.float32, name
        if name.endswith("w"):
            assert not np.array_equal(pa, pc)


def test_conv_weights_start_with_he_scale_over_channels_and_kernel():
    """He initialisation: w ~ N(0, 2 / fan_in), fan_in = in_channels * kh * kw (every input a
    filter sees), so a ReLU network's activations neither grow nor shrink layer to layer."""
    w = Conv2D(4, 64, (5, 3), rng=0).params["w"]  # 3840 draws each: the std within about 1 %
    assert w.std() == pytest.approx(np.sqrt(2.0 / (4 * 5 * 3)), rel=0.05)
    assert Conv2D(60, 64, 1, rng=0).params["w"].std() == pytest.approx(np.sqrt(2.0 / 60), rel=0.05)


def test_reference_net_shapes():
    model = convlab.reference_net(seed=0)
    assert model.forward(np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 10)
    conv = model.conv_layers()[0]
    assert conv.params["w"].shape == (32, 1, 7, 7) and conv.stride == (1, 1) and conv.padding == (1, 1)


def test_sgd_momentum_matches_the_pytorch_formula():
    model = convlab.Sequential(Dense(2, 1, rng=0, dtype=np.float64))
    w0 = model.layers[0].params["w"].copy()
    opt = convlab.SGD(model, lr=0.1, momentum=0.9)
    g = np.array([[1.0], [2.0]])
    for _ in range(2):
        model.layers[0].grads.update(w=g, b=np.zeros(1))
        opt.step()
    # v1 = g, v2 = 0.9 g + g; w = w0 - 0.1 (v1 + v2)
    np.testing.assert_allclose(model.layers[0].params["w"], w0 - 0.1 * (g + 1.9 * g))


def test_cosine_schedule_starts_at_the_base_rate_and_halves_it_midway():
    """Epochs count from 1: epoch 1 trains at the full rate, epoch 1 + epochs/2 at half of it,
    and the last epoch still learns (the rate reaches 0 only one epoch after it)."""
    rates = [cosine_lr(0.1, epoch, 4) for epoch in range(1, 5)]
    assert rates[0] == 0.1 and rates[2] == pytest.approx(0.05)
    assert rates[3] > 0 and rates == sorted(rates, reverse=True)


def test_load_state_dict_rejects_other_networks():
    model = convlab.reference_net(seed=0)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    with pytest.raises(ValueError, match="do not match"):
        model.load_state_dict({"0.w": state["0.w"]})
    state["0.w"] = state["0.w"][:16]
    with pytest.raises(ValueError, match="shape"):
        model.load_state_dict(state)


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_channels=0, out_channels=2, kernel_size=3), "in_channels"),
    (dict(in_channels=1, out_channels=2, kernel_size=0), "kernel_size"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, stride=0), "stride"),
    (dict(in_channels=1, out_channels=2, kernel_size=3, padding=-1), "padding"),
    (dict(in_channels=1, out_channels=2, kernel_size=(3, 3, 3)), "pair"),
])
def test_conv2d_layer_rejects_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Conv2D(**kwargs)


def test_set_backends_refuses_a_string_and_pins_nothing_when_a_name_is_unknown():
    model = convlab.get_model("c4k3 relu c4k3 relu dense10").build()
    with pytest.raises(ValueError, match=r"set_backends takes a list of backend names, one per conv layer \(2\), "
                                         r"got the string 'fft'; for every layer: \['fft'\] \* 2"):
        model.set_backends("fft")
    with pytest.raises(ValueError, match="unknown backend 'nope'; valid backends are: "):
        model.set_backends(("fft", "nope"))
    assert [layer.backend for layer in model.conv_layers()] == [None, None]
    model.set_backends(iter(["fft", None]))
    assert [layer.backend for layer in model.conv_layers()] == ["fft", None]


@pytest.mark.parametrize("layers, message", [
    (([ReLU(), Flatten()],), r"Sequential's argument 0 \(\[.*\]\) is a list; pass the layers as separate arguments"),
    ((Flatten(), ReLU), r"argument 1 \(<class 'convlab.layers.ReLU'>\) is a class, not a layer; make one: ReLU\(...\)"),
    ((np.abs,), r"argument 0 \(<ufunc 'absolute'>\) is not a layer: it has no forward, backward, params, grads; "
                r"a layer has forward\(x\), backward\(dy, need_dx\) and dicts params and grads"),
])
def test_sequential_refuses_what_is_not_a_layer_up_front(layers, message):
    with pytest.raises(TypeError, match=message):
        convlab.Sequential(*layers)


def test_sequential_refuses_one_layer_object_at_two_positions():
    # act = ReLU() after a conv and after a dense layer: fused into the conv, it passed the
    # dense layer's output through untouched (negative logits, silently).
    act = ReLU()
    with pytest.raises(ValueError, match=r"^Sequential's arguments 1 and 4 are the same layer object \(ReLU\(.*\)\); "
                                         r"a layer keeps its last input or output for its backward, so make a new "
                                         r"layer for each position \(ReLU\(...\) each time\)$"):
        convlab.Sequential(Conv2D(1, 2, 3, rng=0), act, Flatten(), Dense(32, 10, rng=1), act)
    # One max-pool twice, as in PyTorch's LeNet tutorial: the backward failed on a shape.
    pool = convlab.MaxPool2D(2)
    with pytest.raises(ValueError, match=r"^Sequential's arguments 2 and 4 .* \(MaxPool2D\(...\) each time\)$"):
        convlab.Sequential(Conv2D(1, 2, 3, rng=0), ReLU(), pool, Conv2D(2, 2, 1, rng=0), pool, Flatten(),
                           Dense(2, 10, rng=0))


def test_a_layer_given_to_a_sequential_keeps_what_the_fusion_made_it():
    """As the docs say: the Conv2D then applies the ReLU when called alone, the fused ReLU
    passes its input through, and the one after a Dense writes over its input."""
    conv, fused, after_dense = Conv2D(1, 2, 3, rng=0), ReLU(), ReLU()
    convlab.Sequential(conv, fused, Flatten(), Dense(32, 4, rng=0), after_dense, Dense(4, 10, rng=0))
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6), dtype=np.float32)
    assert conv.relu and conv.forward(x).min() == 0
    assert fused.forward(x) is x
    v = np.array([1, -1], np.float32)
    assert after_dense.forward(v) is v and v.tolist() == [1, 0]


def test_a_network_s_backward_leaves_the_callers_dy_as_it_is():
    # A last ReLU after a Dense was made in-place, and its backward wrote over dy (a
    # read-only one: numpy's "output array is read-only").
    model = convlab.get_model("c2k3 relu dense10 relu").build(seed=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28), dtype=np.float32)
    _, d = softmax_cross_entropy(model.forward(x), np.array([1, 2]))
    d0 = d.copy()
    d.flags.writeable = False
    model.backward(d)
    np.testing.assert_array_equal(d, d0)
    assert not model.layers[-1].inplace


def test_sequential_runs_a_layer_of_ones_own():
    class Double(convlab.Layer):
        def forward(self, x):
            return 2 * x

        def backward(self, dy, need_dx=True):
            return 2 * dy

    model = convlab.Sequential(Flatten(), Double())
    np.testing.assert_array_equal(model.forward(np.ones((2, 1, 2, 2))), np.full((2, 4), 2.0))


def test_conv2d_layer_names_its_dtype_for_an_input_of_the_other():
    """As Dense does: not "x is float64 but w is float32", of weights its user never passed."""
    layer = Conv2D(1, 2, 3)
    with pytest.raises(ValueError, match=r"^Conv2D\(1, 2, kernel_size=\(3, 3\).*\): x is float64 but the layer is "
                                         r"float32; pass x as float32 \(e.g. x.astype\(np.float32\)\)$"):
        layer.forward(np.ones((1, 1, 5, 5)))
    with pytest.raises(ValueError, match="^x must be float32 or float64, got int64$"):
        layer.forward(np.ones((1, 1, 5, 5), np.int64))


def test_a_network_prints_every_layer_by_its_settings():
    # Not as <convlab.layers.ReLU object at 0x...>: what Sequential did to each layer shows.
    assert repr(convlab.get_model("c4k3 relu dense16 relu dense10").build()).splitlines() == [
        "Sequential(",
        "  Conv2D(1, 4, kernel_size=(3, 3), stride=(1, 1), padding=(0, 0), backend=None)",
        "  ReLU(inplace=False, fused=True)",
        "  Flatten()",
        "  Dense(2704, 16)",
        "  ReLU(inplace=True, fused=False)",
        "  Dense(16, 10)",
        ")"]
