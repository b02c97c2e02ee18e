"""The registry: names, errors that list the valid names, use_backend, entry points."""

import copy
import pickle
import re
import threading
import time

import numpy as np
import pytest

import convlab
from convlab import registry
from convlab.layers import forward_only


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


@pytest.mark.parametrize("attributes, message", [
    ({"supports": "stride 1 only"}, "backend 'broken': supports must be a method, got str"),
    ({"check_settings": True}, "backend 'broken': check_settings must be a method, got bool"),
    ({"fuses_relu": True}, r"backend 'broken' says it fuses_relu, but its forward\(\) takes no relu argument"),
], ids=["supports", "check_settings", "fuses_relu"])
def test_register_rejects_optional_attributes_the_registry_could_not_call(attributes, message):
    with pytest.raises(TypeError, match=message):
        convlab.register_backend("broken")(type("Broken", (Doubling,), attributes))
    assert "broken" not in convlab.list_backends()


def test_a_fusing_backend_may_take_relu_among_keyword_options():
    class Fusing(Doubling):
        fuses_relu = True

        def forward(self, x, w, b, stride, padding, **options):
            y, cache = super().forward(x, w, b, stride, padding)
            return (np.maximum(y, 0) if options.get("relu") else y), cache

    convlab.register_backend("fusing")(Fusing)
    try:
        assert convlab.conv2d(-np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), backend="fusing").min() == -8
    finally:
        del registry._registry["fusing"]


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


def test_use_backend_holds_in_its_own_thread_and_task_only():
    """As its docstring says: two threads' blocks do not meet, a thread started inside a
    block starts with the default, and each asyncio task has its own."""
    import asyncio

    seen, inside, done = {}, threading.Event(), threading.Event()

    def in_block():
        with convlab.use_backend("fft"):
            inside.set()
            done.wait(10)
            seen["fft thread"] = convlab.get_backend().name

    def beside():
        inside.wait(10)
        seen["other thread"] = convlab.get_backend().name
        with convlab.use_backend("naive"):
            seen["its own block"] = convlab.get_backend().name
        done.set()

    threads = [threading.Thread(target=in_block), threading.Thread(target=beside)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with convlab.use_backend("fft"):
        child = threading.Thread(target=lambda: seen.setdefault("started inside", convlab.get_backend().name))
        child.start()
        child.join()

    async def task(name):
        with convlab.use_backend(name):
            await asyncio.sleep(0.01)  # the other task runs its block meanwhile
            return convlab.get_backend().name

    async def both():
        return await asyncio.gather(task("fft"), task("naive"))

    assert seen == {"fft thread": "fft", "other thread": registry.DEFAULT_BACKEND, "its own block": "naive",
                    "started inside": registry.DEFAULT_BACKEND}
    assert asyncio.run(both()) == ["fft", "naive"]
    assert convlab.get_backend().name == registry.DEFAULT_BACKEND


@pytest.mark.parametrize("name", ["", " mine", "my backend", "a,b", "mine\n", None, 3])
def test_register_backend_refuses_a_name_the_command_line_cannot_give(name):
    with pytest.raises(ValueError, match=r"a backend name must be a non-empty string without spaces or commas "
                                         r"\(--backend reads 'a,b' as a per-layer list\), got "):
        convlab.register_backend(name)
    assert name not in registry._registry


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


class FakeDistribution:
    def __init__(self, name):
        self.name = name


class DeclaredEntryPoint:
    """An entry point of group convlab.backends declared by distribution ``dist``."""

    def __init__(self, name, value, dist, load):
        self.name, self.value, self.module = name, value, value.partition(":")[0]
        self.dist, self.load = FakeDistribution(dist), load


@pytest.fixture
def fresh_registry(monkeypatch):
    """An empty registry whose entry points are ``set_entry_points(...)``'s."""
    monkeypatch.setattr(registry, "_registry", {})
    monkeypatch.setattr(registry, "_skipped", {})
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    return lambda *points: monkeypatch.setattr(registry, "entry_points", lambda group: list(points))


def test_a_plugin_cannot_take_a_builtin_name_whatever_comes_first_on_the_path(fresh_registry):
    builtin = type("Im2col", (Doubling,), {"__module__": "backends.im2col"})
    fresh_registry(DeclaredEntryPoint("im2col", "impostor:Fast", "convlab-impostor", lambda: StrideOneOnly),
                   DeclaredEntryPoint("im2col", "backends.im2col", "convlab", lambda: builtin))
    with pytest.warns(registry.PluginWarning) as caught:
        assert convlab.list_backends() == ["im2col"]
    assert type(convlab.get_backend("im2col").impl) is builtin
    (warning,) = caught
    assert str(warning.message) == ("skipping backend 'im2col' (entry point impostor:Fast of convlab-impostor): the "
                                    "name is taken by backends.im2col.Im2col; a plugin needs a name of its own")


def test_a_builtin_whose_name_code_registered_first_is_not_loaded_and_that_is_said(fresh_registry):
    fresh_registry(DeclaredEntryPoint("fft", "backends.fft", "convlab", lambda: StrideOneOnly))
    convlab.register_backend("fft")(Doubling)  # before anything listed the backends
    with pytest.warns(registry.PluginWarning, match=r"^skipping backend 'fft' \(entry point backends.fft of convlab\): "
                                                    r"the name is taken by \S*test_registry.Doubling$"):
        assert type(convlab.get_backend("fft").impl) is Doubling


def test_a_plugin_module_registering_a_taken_name_as_it_is_imported_does_not_replace_it(fresh_registry):
    import types

    builtin = type("Im2col", (Doubling,), {"__module__": "backends.im2col"})

    def load():
        convlab.register_backend("im2col")(StrideOneOnly)
        convlab.register_backend("fast")(Doubling)
        return types.ModuleType("fast_module")

    fresh_registry(DeclaredEntryPoint("fast", "fast_module", "convlab-fast", load),
                   DeclaredEntryPoint("im2col", "backends.im2col", "convlab", lambda: builtin))
    with pytest.warns(RuntimeWarning) as caught:
        assert convlab.list_backends() == ["fast", "im2col"]
    assert type(convlab.get_backend("im2col").impl) is builtin
    # Only what happened: register_backend's "is replaced by" came first, and was not true.
    assert [str(warning.message) for warning in caught] == [
        "kept backend 'im2col' as it was: loading entry point fast_module of convlab-fast registered another under "
        "that name; a plugin needs a name of its own"]


def test_an_entry_point_naming_a_module_that_registers_another_name_says_so(fresh_registry):
    import types

    def load():
        convlab.register_backend("my-conv")(Doubling)
        return types.ModuleType("mm_module")

    fresh_registry(DeclaredEntryPoint("mine", "mm_module", "convlab-mine", load))
    message = ("module mm_module registered no backend 'mine' (it registered 'my-conv'); name the entry point as "
               "its @register_backend does, or point it at the class (module:Class)")
    skipped = r"^skipping backend 'mine' \(entry point mm_module of convlab-mine\): it failed to load: TypeError: "
    with pytest.warns(registry.PluginWarning, match=skipped + re.escape(message)):
        assert convlab.list_backends() == ["my-conv"]
    # The backend its import registered is the plugin's, and listed as such, not as convlab's own.
    assert convlab.get_backend("my-conv").distribution == "convlab-mine"
    with pytest.raises(ValueError, match=r"^backend 'mine' is installed but was skipped: it failed to load: "
                                         r"TypeError: module mm_module .*; valid backends are: my-conv$"):
        convlab.get_backend("mine")


def test_a_skipped_backend_given_to_backend_says_why_it_was_skipped(fresh_registry):
    """--backend refuses a name no backend has, but lets an installed one that was skipped
    through, for get_backend to say why it was skipped (not that it is unknown)."""
    from convlab.settings import TrainSettings, backend_names

    fresh_registry(DeclaredEntryPoint("im2col", "backends.im2col", "convlab", lambda: Doubling),
                   DeclaredEntryPoint("mine", "broken_module", "convlab-mine", lambda: 1 / 0))
    with pytest.warns(registry.PluginWarning, match="^skipping backend 'mine'"):
        assert backend_names("im2col,mine") == ["im2col", "mine"]
    with pytest.raises(ValueError, match=r"^backend 'mine' is installed but was skipped: it failed to load: "
                                         r"ZeroDivisionError"):
        TrainSettings(backend="im2col,mine", memory_check=False)


def test_each_backend_of_a_plugin_module_registering_several_names_its_distribution(fresh_registry):
    """One module, two backends, an entry point each: the second is registered by the
    first's import, and comes from the same package all the same (`convlab backends`)."""
    import types

    def load():
        for name in ("pair-one", "pair-two"):
            convlab.register_backend(name)(type(name, (Doubling,), {"__module__": "pair_module"}))
        return types.ModuleType("pair_module")

    fresh_registry(DeclaredEntryPoint("pair-one", "pair_module", "convlab-pair", load),
                   DeclaredEntryPoint("pair-two", "pair_module", "convlab-pair", load))
    assert convlab.list_backends() == ["pair-one", "pair-two"]
    assert [convlab.get_backend(name).distribution for name in ("pair-one", "pair-two")] == ["convlab-pair"] * 2


def test_threads_listing_the_backends_first_all_wait_for_every_entry_point(fresh_registry):
    """The first listing loads the entry points (slow: each imports a module); threads
    that list or get backends meanwhile wait for it, not see a half-filled registry."""
    def slow_load():
        time.sleep(0.02)  # an import
        return Doubling

    names = [f"plugin-{i}" for i in range(4)]
    fresh_registry(*(DeclaredEntryPoint(name, f"plugin_{name}:Doubling", "convlab-plugins", slow_load)
                     for name in names))
    start = threading.Barrier(4)
    seen = []

    def first_look(look):
        start.wait()
        try:
            seen.append(look())
        except ValueError as e:  # unknown backend: not loaded yet
            seen.append([str(e)])

    threads = [threading.Thread(target=first_look, args=(look,)) for look in
               [convlab.list_backends] * 2 + [lambda: [convlab.get_backend(names[-1]).name]] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == [names] * 2 + [[names[-1]]] * 2


def test_a_plugin_that_lists_the_backends_as_it_loads_does_not_wait_for_itself(fresh_registry):
    """The thread loading the entry points sees what is registered so far."""
    listed = []

    def load():
        listed.append(convlab.list_backends())
        return Doubling

    fresh_registry(DeclaredEntryPoint("first", "first:Doubling", "convlab-first", lambda: Doubling),
                   DeclaredEntryPoint("second", "second:Doubling", "convlab-second", load))
    loading = threading.Thread(target=convlab.list_backends, daemon=True)
    loading.start()
    loading.join(timeout=10)
    assert not loading.is_alive(), "the loading thread waits for itself"
    assert listed == [["first"]] and convlab.list_backends() == ["first", "second"]


def test_a_thread_a_loading_plugin_starts_waits_for_every_entry_point(fresh_registry):
    """The limit docs/plugins.md states: that thread is not given a half-filled registry, so a
    plugin that waited for it as it is imported would hang."""
    helper, seen = [], []

    def load():
        helper.append(threading.Thread(target=lambda: seen.append(convlab.list_backends()), daemon=True))
        helper[0].start()
        helper[0].join(timeout=0.2)
        assert helper[0].is_alive()  # waiting for this very load
        return Doubling

    fresh_registry(DeclaredEntryPoint("first", "first:Doubling", "convlab-first", load),
                   DeclaredEntryPoint("second", "second:Doubling", "convlab-second", lambda: Doubling))
    assert convlab.list_backends() == ["first", "second"]
    helper[0].join(timeout=10)
    assert seen == [["first", "second"]]

def test_cache_from_another_call_is_rejected():
    with pytest.raises(ValueError, match="cache"):
        convlab.get_backend("naive").backward(np.ones((1, 1, 1, 1)), object())


class StrideOneOnly(Doubling):
    """Naive, doubled, and only at stride 1 (a backend with limits)."""

    limits = "stride 1 only"

    def supports(self, x_shape, w_shape, stride, padding):
        return None if stride == (1, 1) else f"stride {stride[0]}x{stride[1]} (stride 1 only)"


@pytest.fixture
def stride_one_only():
    convlab.register_backend("stride1")(StrideOneOnly)
    yield convlab.get_backend("stride1")
    del registry._registry["stride1"]


def test_unsupported_problem_is_refused_up_front_naming_who_can(stride_one_only):
    x, w = np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3))
    assert stride_one_only.supports(x.shape, w.shape, 1, 0) is None
    assert stride_one_only.supports(x.shape, w.shape, 2, 0) == "stride 2x2 (stride 1 only)"
    with pytest.raises(convlab.Unsupported) as e:
        convlab.conv2d(x, w, stride=2, backend="stride1")
    message = str(e.value)
    assert message.startswith("backend 'stride1' does not support stride 2x2 (stride 1 only); try ")
    assert "im2col" in message and "naive" not in message  # the oracle only when nothing else can
    assert isinstance(e.value, ValueError)
    np.testing.assert_array_equal(convlab.conv2d(x, w, stride=1, backend="stride1"), 18 * np.ones((1, 1, 3, 3)))
    with pytest.raises(convlab.Unsupported, match="^backend 'stride1' does not support stride 2x2"):
        stride_one_only.inference(x, w, stride=2)  # the pass that keeps nothing refuses alike
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        stride_one_only.inference(np.full((1, 1, 5, 5), np.nan), w)  # and checks its inputs alike
    with pytest.raises(ValueError, match="relu must be True or False"):
        stride_one_only.inference(x, w, relu="no")


class Inferring(Doubling):
    """Doubling, with an inference pass of its own that says it ran."""

    def __init__(self):
        self.inferences = 0

    def inference(self, x, w, b, stride, padding):
        self.inferences += 1
        return self.forward(x, w, b, stride, padding)[0]


def test_inference_runs_the_backends_own_pass_else_the_forward(doubling):
    convlab.register_backend("inferring")(Inferring)
    try:
        inferring = convlab.get_backend("inferring")
        x, w = np.arange(16.0).reshape(1, 1, 4, 4), np.ones((1, 1, 2, 2))
        for relu in (False, True):
            expected = doubling.forward(x, -w, None, 1, 0, relu=relu)[0]
            np.testing.assert_array_equal(inferring.inference(x, -w, relu=relu), expected)
            np.testing.assert_array_equal(doubling.inference(x, -w, relu=relu), expected)  # no inference(): forward
        assert inferring.impl.inferences == 2
        layer = convlab.Conv2D(1, 1, 2, backend="inferring", relu=True)
        with forward_only():
            layer.forward(x.astype(np.float32))
        assert inferring.impl.inferences == 3
        with pytest.raises(ValueError, match="needs the forward first"):
            layer.backward(np.ones((1, 1, 3, 3)))
    finally:
        del registry._registry["inferring"]


def test_auto_times_only_backends_that_support_the_problem(stride_one_only):
    from backends.auto import candidates

    assert "stride1" in candidates((1, 1, 5, 5), (1, 1, 3, 3), (1, 1), (0, 0))
    assert "stride1" not in candidates((1, 1, 5, 5), (1, 1, 3, 3), (2, 2), (0, 0))
    assert convlab.get_backend("auto").supports((1, 1, 5, 5), (1, 1, 3, 3), 2, 0) is None


def test_check_settings_is_optional_and_asks_the_backend():
    class Picky:
        def forward(self, x, w, b, stride, padding):
            raise AssertionError("not run")

        def backward(self, dy, cache, need_dx=True):
            raise AssertionError("not run")

        def check_settings(self):
            raise ValueError("PICKY_THREADS must be a positive integer")

    convlab.register_backend("picky-settings")(Picky)
    try:
        with pytest.raises(ValueError, match="PICKY_THREADS"):
            convlab.get_backend("picky-settings").check_settings()
        convlab.get_backend("naive").check_settings()  # no check_settings: nothing to check
        Picky.check_settings = lambda self: {}["PICKY_THREADS"]  # a bug (an unset variable): not a ValueError
        with pytest.raises(registry.BackendError, match=r"^backend 'picky-settings' \(\S*Picky\) is broken: its "
                                                        r"check_settings\(\) raised KeyError: 'PICKY_THREADS', where "
                                                        r"it must return None or raise ValueError"):
            convlab.get_backend("picky-settings").check_settings()
    finally:
        del registry._registry["picky-settings"]


def test_use_backend_takes_a_name_or_a_backend_but_not_none():
    x, w = np.ones((1, 1, 6, 6)), np.ones((2, 1, 3, 3))
    with convlab.use_backend(convlab.get_backend("fft")) as backend:
        assert backend.name == "fft" and convlab.get_backend().name == "fft"
        np.testing.assert_allclose(convlab.conv2d(x, w), convlab.conv2d(x, w, backend="naive"))
    with pytest.raises(ValueError, match="use_backend needs a backend; valid backends are: "):
        with convlab.use_backend(None):
            pass


def test_a_backward_refuses_another_backends_cache_and_a_non_bool_need_dx():
    x, w = np.ones((1, 1, 6, 6)), np.ones((2, 1, 3, 3))
    y, cache = convlab.get_backend("im2col").forward(x, w)
    with pytest.raises(ValueError, match="cache comes from im2col.forward; pass it to im2col's backward"):
        convlab.get_backend("fft").backward(np.ones_like(y), cache)
    with pytest.raises(ValueError, match="need_dx must be True or False, got 'no'"):
        convlab.get_backend("im2col").backward(np.ones_like(y), cache, need_dx="no")


def test_a_bad_fft_tile_setting_does_not_replace_other_backends_refusals(monkeypatch):
    monkeypatch.setenv("CONVLAB_FFT_TILE", "7")
    with pytest.raises(convlab.Unsupported, match="does not support kernel 7x7"):
        convlab.conv2d(np.ones((1, 1, 8, 8)), np.ones((1, 1, 7, 7)), backend="winograd")
    with pytest.raises(ValueError, match="CONVLAB_FFT_TILE must be one of"):
        convlab.get_backend("fft-tiled").check_settings()


def test_a_cache_is_taken_by_its_backend_registered_again_but_not_by_another_class_of_its_name():
    class First:
        def forward(self, x, w, b, stride, padding):
            return convlab.get_backend("im2col").forward(x, w, b, stride, padding)

        def backward(self, dy, cache, need_dx=True):
            return convlab.get_backend("im2col").backward(dy, cache, need_dx)

    x, w = np.ones((1, 1, 6, 6)), np.ones((2, 1, 3, 3))
    convlab.register_backend("reloaded")(First)
    try:
        y, cache = convlab.get_backend("reloaded").forward(x, w)
        convlab.register_backend("reloaded")(First)  # as a module reload does: an equal backend
        convlab.get_backend("reloaded").backward(np.ones_like(y), cache)
        with pytest.warns(RuntimeWarning, match="is replaced by"):
            convlab.register_backend("reloaded")(type("Second", (First,), {}))
        with pytest.raises(ValueError, match=r"cache comes from .*First.forward, registered as 'reloaded' before "
                                             r".*Second replaced it; run the forward again"):
            convlab.get_backend("reloaded").backward(np.ones_like(y), cache)
    finally:
        del registry._registry["reloaded"]


# --- a backend that breaks the contract: a BackendError naming it, never a wrong answer ---

class Returning(Doubling):
    """Naive, doubled, with what it returns bent by ``bend_forward`` / ``bend_backward``."""

    def bend_forward(self, y, cache):
        return y, cache

    def bend_backward(self, dx, dw, db):
        return dx, dw, db

    def forward(self, x, w, b, stride, padding):
        return self.bend_forward(*super().forward(x, w, b, stride, padding))

    def inference(self, x, w, b, stride, padding):
        return self.bend_forward(*super().forward(x, w, b, stride, padding))[0]

    def backward(self, dy, cache, need_dx=True):
        return self.bend_backward(*super().backward(dy, cache, need_dx))


@pytest.fixture
def returning():
    convlab.register_backend("returning")(Returning)
    yield convlab.get_backend("returning")
    del registry._registry["returning"]


@pytest.mark.parametrize("bend, message", [
    (lambda y, cache: (y.transpose(0, 2, 3, 1), cache),
     r"its forward returned y \(2, 3, 3, 4\) float32 for x \(2, 1, 5, 4\) and w \(4, 1, 3, 2\), stride \(1, 1\), "
     r"padding \(0, 0\), where y must be \(2, 4, 3, 3\) \(N, F, OH, OW\) float32"),
    (lambda y, cache: (y.astype(np.float64), cache),
     r"its forward returned y \(2, 4, 3, 3\) float64 .* float32, writeable"),
    (lambda y, cache: (y.tolist(), cache), r"its forward returned y of type list"),
    (lambda y, cache: y, r"its forward returned \(2, 4, 3, 3\) float32, not a pair \(y, cache\)"),
    (lambda y, cache: (np.broadcast_to(y[:1], y.shape), cache),
     r"its forward returned y \(2, 4, 3, 3\) float32 read-only .* float32, writeable \(the caller's to overwrite\)"),
], ids=["channels last", "dtype", "list", "y alone", "read-only"])
def test_a_forward_returning_a_wrong_y_is_a_backend_error_naming_it(returning, bend, message):
    returning.impl.bend_forward = bend
    x, w = np.ones((2, 1, 5, 4), np.float32), np.ones((4, 1, 3, 2), np.float32)
    prefix = r"^backend 'returning' \(\S*test_registry\.Returning\) is broken: "
    for call in (lambda: returning.forward(x, w), lambda: returning.forward(x, w, relu=True),
                 lambda: convlab.Conv2D(1, 4, (3, 2), backend="returning").forward(x)):
        with pytest.raises(registry.BackendError, match=prefix + message):
            call()
    if "pair" not in message:  # the inference pass returns y alone
        with pytest.raises(registry.BackendError, match=prefix + message.replace("forward", "inference")):
            convlab.conv2d(x, w, backend="returning")
    assert issubclass(registry.BackendError, ValueError)  # the CLI says it in one line


def test_a_backend_error_survives_pickle_and_copy_with_the_backend_it_names():
    """As any exception must, to cross a process pool or a copy: both make it again from its args."""
    error = convlab.get_backend("naive").broken("its forward returned y of type list")
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(again) is registry.BackendError and str(again) == str(error) and again.backend == "naive"


@pytest.mark.parametrize("bend, need_dx, message", [
    (lambda dx, dw, db: (dx, dw, db.sum()), False, r"db of type float64, where db must be \(4,\) float64;"),
    (lambda dx, dw, db: (dx, dw[..., :-1], db), False, r"dw \(4, 2, 3, 1\) float64, where dw must be \(4, 2, 3, 2\)"),
    (lambda dx, dw, db: (dx.astype(np.float32), dw, db), True, r"dx \(2, 2, 5, 4\) float32, where dx must be .*"
                                                                r"float64 \(need_dx was True\)"),
    (lambda dx, dw, db: (None, dw, db), True, r"dx None, where dx must be \(2, 2, 5, 4\) float64 \(need_dx was True\)"),
    (lambda dx, dw, db: (dw, db), True, r"of type tuple, not a triple \(dx, dw, db\)"),
], ids=["db summed", "dw cut", "dx dtype", "dx missing", "pair"])
def test_a_backward_returning_wrong_gradients_is_a_backend_error(returning, bend, need_dx, message):
    returning.impl.bend_backward = bend
    x, w = np.ones((2, 2, 5, 4)), np.ones((4, 2, 3, 2))
    y, cache = returning.forward(x, w)
    with pytest.raises(registry.BackendError, match=r"^backend 'returning' .* is broken: its backward returned "
                                                    + message):
        returning.backward(np.ones_like(y), cache, need_dx=need_dx)


def test_a_backward_may_leave_out_dx_only_when_not_asked_for_it(returning):
    x, w = np.ones((2, 2, 5, 4)), np.ones((4, 2, 3, 2))
    y, cache = returning.forward(x, w)
    dx, dw, db = returning.backward(np.ones_like(y), cache, need_dx=False)
    assert dx is None and dw.shape == w.shape and db.shape == (4,)


def test_auto_does_not_pick_a_backend_returning_a_wrong_y(tmp_path, returning):
    from backends.auto import Auto

    returning.impl.bend_forward = lambda y, cache: (y[:, :, 1:], cache)
    x, w = np.ones((2, 1, 8, 8), np.float32), np.ones((3, 1, 3, 3), np.float32)
    with pytest.warns(UserWarning, match="auto skips backend 'returning'.*BackendError: backend 'returning'"):
        assert Auto(cache_path=tmp_path / "a.json").pick(x, w, (1, 1), (0, 0)) != "returning"


@pytest.mark.parametrize("supports, did", [
    (lambda *problem: {3: None}[problem[1][2]], "raised KeyError: 5"),
    (lambda x_shape, w_shape, stride, padding: stride == (1, 1), "returned True"),
    (lambda *problem: "", "returned ''"),
], ids=["raises", "bool", "empty"])
def test_a_supports_that_raises_or_returns_no_reason_refuses_only_its_own_backend(returning, supports, did):
    returning.impl.supports = supports
    x, w = np.ones((1, 1, 6, 6)), np.ones((1, 1, 5, 5))
    broken = "backend 'returning' .* is broken: its supports.. (raised|returned)"
    with pytest.warns(registry.PluginWarning, match=broken):
        with pytest.raises(convlab.Unsupported, match=r"^backend 'returning' does not support x \(1, 1, 6, 6\) "
                                                      rf"with w \(1, 1, 5, 5\), stride \(1, 1\), padding \(0, 0\): "
                                                      rf"its supports.. {did} \(a bug in the backend"):
            convlab.conv2d(x, w, backend="returning")
        # auto, and another backend's refusal listing who can, ask it too: they go on without it.
        np.testing.assert_allclose(convlab.conv2d(x, w, backend="auto"), convlab.conv2d(x, w, backend="naive"))
        with pytest.raises(convlab.Unsupported, match=
                           r"'winograd' does not support stride 2x2 .*; try (?!.*returning)"):
            convlab.conv2d(x, w, stride=2, backend="winograd")


def test_a_skipped_backend_given_to_bench_says_why_it_was_skipped(fresh_registry, capsys):
    """`bench --backends` lets an installed backend that was skipped through, as --backend
    does, so that the one error line says why it was skipped, not that it is unknown."""
    from convlab.cli import main

    fresh_registry(DeclaredEntryPoint("im2col", "backends.im2col", "convlab", lambda: Doubling),
                   DeclaredEntryPoint("mine", "broken_module", "convlab-mine", lambda: 1 / 0))
    with pytest.warns(registry.PluginWarning, match="^skipping backend 'mine'"), pytest.raises(SystemExit) as ended:
        main(["bench", "--backends", "im2col,mine", "--kernel-sizes", "3", "--repeat", "1"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("convlab: error: backend 'mine' is installed but was skipped: it failed to load: "
                          "ZeroDivisionError") and len(err.splitlines()) == 1, err
