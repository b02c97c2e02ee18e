"""The registry: names, errors that list the valid names, use_backend, entry points."""

import numpy as np
import pytest

import convlab
from convlab import registry


def test_builtin_backends_are_listed():
    names = convlab.list_backends()
    assert {"naive", "im2col"} <= set(names)
    assert names == sorted(names)


def test_unknown_backend_error_lists_valid_names():
    with pytest.raises(ValueError) as e:
        convlab.get_backend("nope")
    message = str(e.value)
    assert "'nope'" in message
    for name in convlab.list_backends():
        assert name in message


class Doubling:
    """Convolves with naive, then doubles everything (a visibly different backend)."""

    def forward(self, x, w, b, stride, padding):
        y, cache = convlab.get_backend("naive").impl.forward(x, w, b, stride, padding)
        return 2 * y, cache

    def backward(self, dy, cache, need_dx=True):
        return tuple(None if g is None else 2 * g for g in convlab.get_backend("naive").impl.backward(dy, cache, need_dx))


@pytest.fixture
def doubling():
    convlab.register_backend("doubling")(Doubling)
    yield convlab.get_backend("doubling")
    del registry._registry["doubling"]


def test_register_backend_decorator(doubling):
    assert "doubling" in convlab.list_backends()
    assert doubling.description.startswith("Convolves with naive")
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(convlab.conv2d(x, w, backend="doubling"), 8 * np.ones((1, 1, 2, 2)))


def test_register_rejects_objects_without_forward():
    with pytest.raises(TypeError, match="forward"):
        convlab.register_backend("broken")(object())


def test_use_backend_sets_and_restores(doubling):
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    layer = convlab.Conv2D(1, 1, 2, rng=0, dtype=np.float64)
    pinned = convlab.Conv2D(1, 1, 2, backend="naive", rng=0, dtype=np.float64)
    before = layer.forward(x)
    with convlab.use_backend("doubling") as active:
        assert active.name == "doubling"
        np.testing.assert_allclose(layer.forward(x), 2 * before)
        np.testing.assert_allclose(pinned.forward(x), before)
        assert convlab.conv2d(x, w)[0, 0, 0, 0] == 8
        with convlab.use_backend("naive"):
            np.testing.assert_allclose(layer.forward(x), before)
        np.testing.assert_allclose(layer.forward(x), 2 * before)
    np.testing.assert_allclose(layer.forward(x), before)


def test_use_backend_unknown_name_fails_on_entry():
    with pytest.raises(ValueError, match="valid backends"):
        with convlab.use_backend("nope"):
            pass


def test_layer_backend_can_be_swapped_between_forward_and_backward(doubling):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 5, 5))
    layer = convlab.Conv2D(1, 2, 3, backend="naive", rng=0, dtype=np.float64)
    y = layer.forward(x)
    layer.backend = "doubling"
    dx = layer.backward(np.ones_like(y))  # uses naive, which ran the forward
    reference = convlab.Conv2D(1, 2, 3, backend="naive", rng=0, dtype=np.float64)
    reference.forward(x)
    np.testing.assert_allclose(dx, reference.backward(np.ones_like(y)))
    with pytest.raises(ValueError, match="valid backends"):
        layer.backend = "nope"


def test_entry_point_declared_backends_are_discovered():
    from importlib.metadata import entry_points
    declared = {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert {"naive", "im2col"} <= declared <= set(convlab.list_backends())


def test_entry_point_naming_a_plain_class_is_registered(monkeypatch):
    class FakeEntryPoint:
        name = "from-plugin"

        def load(self):
            return Doubling

    monkeypatch.setattr(registry, "entry_points", lambda group: [FakeEntryPoint()])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        assert "from-plugin" in convlab.list_backends()
    finally:
        registry._registry.pop("from-plugin", None)


def test_cache_from_another_call_is_rejected():
    with pytest.raises(ValueError, match="cache"):
        convlab.get_backend("naive").backward(np.ones((1, 1, 1, 1)), object())
