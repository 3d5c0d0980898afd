"""Keras frontend: gradients through the layers, training, save/load, configs. One process per backend:

    KERAS_BACKEND=torch python -m pytest tests/test_keras.py
    KERAS_BACKEND=jax python -m pytest tests/test_keras.py
    KERAS_BACKEND=tensorflow python -m pytest tests/test_keras.py

Without ``KERAS_BACKEND`` the jax backend is used. Unsupported or missing backends skip the module.
"""

import warnings

import numpy as np
import pytest

from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()

from keras import ops  # noqa: E402

import spikescan  # noqa: E402
import spikescan_keras as sk  # noqa: E402

TAU_MEM, TAU_SYN, T_MAX = 10.0, 4.0, 40.0


@pytest.fixture(params=["pure", "buffer"] if BACKEND == "jax" else [None])
def jax_route(request, monkeypatch):
    """On jax, runs the test once per route of the jax bridge (``SPIKESCAN_JAX_ROUTE``): ``pure_callback``, then
    ``buffer_callback`` on XLA's own buffers (NumPy views on CPU), and checks that the ops took that route and only
    that one. A no-op on the other backends."""
    if request.param is None:
        yield None
        return
    from spikescan_keras._bridge import jax as bridge

    monkeypatch.setenv("SPIKESCAN_JAX_ROUTE", request.param)
    calls = {"pure": 0, "buffer": 0}
    for table in (bridge._FORWARD, bridge._BACKWARD):
        for name, fn in list(table.items()):
            def counted(*args, _fn=fn, _name=name, **kwargs):
                calls[_name] += 1
                return _fn(*args, **kwargs)
            monkeypatch.setitem(table, name, counted)
    yield request.param
    assert calls[request.param] > 0 and sum(calls.values()) == calls[request.param], calls


def spike_input(rng, batch=3, n_in=4, max_in=2, t_end=20.0):
    times = np.sort(rng.uniform(0.0, t_end, (batch, n_in, max_in)), axis=-1)
    times[0, 0, -1] = np.inf  # some padding
    return times.astype(np.float32)


def backend_grad(fn, args, graph=True):
    """Gradients of the scalar ``fn(*args)`` with respect to every argument, by the backend's autodiff (on
    tensorflow inside ``tf.function``, the graph mode of ``model.fit``, unless ``graph=False``)."""
    if BACKEND == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(fn, argnums=tuple(range(len(args))))(*args)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def grads(*tensors):
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                value = fn(*tensors)
            return tape.gradient(value, tensors)

        return [g.numpy() for g in (tf.function(grads) if graph else grads)(*map(tf.convert_to_tensor, args))]
    import torch

    tensors = [ops.convert_to_tensor(a).detach().requires_grad_(True) for a in args]  # on keras' device
    return [g.cpu().numpy() for g in torch.autograd.grad(fn(*tensors), tensors)]


def finite_differences(fn, args, eps=1e-6):
    """Central differences of ``fn`` (NumPy, float64) with respect to every finite entry of every argument."""
    grads = []
    for k, arg in enumerate(args):
        grad = np.zeros_like(arg)
        for idx in zip(*np.nonzero(np.isfinite(arg))):
            shifted = [a.copy() for a in args]
            shifted[k][idx] += eps
            up = fn(*shifted)
            shifted[k][idx] -= 2 * eps
            grad[idx] = (up - fn(*shifted)) / (2 * eps)
        grads.append(grad)
    return grads


def assert_grads_match_finite_differences(names, loss_layer, loss_numpy, params):
    """The backend's gradients of ``loss_layer`` at ``params`` (float32, one per name) against central differences
    of the float64 ``loss_numpy``; every variable must move the loss."""
    expected = finite_differences(loss_numpy, [p.astype(np.float64) for p in params])
    got = backend_grad(loss_layer, params)
    for name, g, e in zip(names, got, expected):
        assert g.dtype == np.float32, name
        assert np.abs(e).max() > 0, name
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max(), err_msg=name)


def two_layers(delays):
    lif = sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, delays=delays, max_delay=5.0)
    readout = sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=T_MAX, tau_readout=30.0)
    return lif, readout


@pytest.mark.parametrize("delays", [False, True])
def test_gradients_match_finite_differences(delays, jax_route):
    """Backend autodiff through LIFLayer -> LIReadout equals float64 central differences of spikescan's forward."""
    rng = np.random.default_rng(3)
    x = spike_input(rng)
    lif, readout = two_layers(delays)
    readout(lif(x))
    # Weights from NumPy, not the backend's generator: the draw would depend on the backend and on the tests run
    # before this one, and some draws of the "auto" initializer leave this small case nearly silent.
    draw = np.random.default_rng(30)
    lif.kernel.assign(draw.normal(1.5, 0.75, lif.kernel.shape).astype(np.float32))
    if delays:
        lif.set_delay_values(draw.uniform(0.0, 5.0, lif.delay_kernel.shape).astype(np.float32))
    readout.kernel.assign(draw.normal(0.0, 0.3, readout.kernel.shape).astype(np.float32))
    assert np.isfinite(ops.convert_to_numpy(lif(x))).sum() > 10, "the case should have spikes"
    grad_times = rng.normal(size=(3, 6, 3))
    grad_values = rng.normal(size=(3, 2))
    params = [x] + [v.numpy() for v in lif.trainable_variables + readout.trainable_variables]

    def loss_layers(x, *weights):
        times, _ = lif.stateless_call(list(weights[:-1]), [v.value for v in lif.non_trainable_variables], x)
        values, _ = readout.stateless_call([weights[-1]], [v.value for v in readout.non_trainable_variables], times)
        finite = ops.where(ops.isfinite(times), times, 0.0)  # padding carries no gradient
        cotangents = [ops.convert_to_tensor(g.astype(np.float32)) for g in (grad_times, grad_values)]
        return ops.sum(finite * cotangents[0]) + ops.sum(values * cotangents[1])

    def loss_numpy(x, w, *rest):
        # The variable holds the delays over delay_unit.
        delay, w_out = (rest[0] * lif.delay_unit, rest[1]) if delays else (None, rest[0])
        res = spikescan.lif_forward(x, w, delays=delay, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3)
        values = spikescan.li_forward(res.times, w_out, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral",
                                      t_max=T_MAX, tau_readout=30.0).values * readout.output_scale
        return np.sum(np.where(np.isfinite(res.times), res.times, 0.0) * grad_times) + np.sum(values * grad_values)

    expected = finite_differences(loss_numpy, [p.astype(np.float64) for p in params])
    got = backend_grad(loss_layers, params)
    names = ["input_times", "kernel"] + (["delays"] if delays else []) + ["readout_kernel"]
    for name, g, e in zip(names, got, expected):
        assert g.dtype == np.float32, name
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max(), err_msg=name)


def test_torch_skips_input_time_gradients_that_nobody_needs(monkeypatch):
    """A first layer's input (data, no requires_grad) gets no input-time gradient work; the kernel's is unchanged."""
    if BACKEND != "torch":
        pytest.skip("torch autograd tells which inputs need a gradient")
    import torch

    rng = np.random.default_rng(8)
    x = spike_input(rng)
    lif = sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, delays=True, max_delay=5.0)
    lif(x)
    seen = []
    real_backward = spikescan.lif_backward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("input_times_grad", True))
        return real_backward(*args, **kwargs)

    monkeypatch.setattr(spikescan, "lif_backward", spy)
    kernel_grads = []
    for needs in (True, False):
        xt = ops.convert_to_tensor(x).detach().requires_grad_(needs)
        times = lif(xt)
        loss = torch.where(torch.isfinite(times), times, torch.zeros_like(times)).sum()
        loss.backward()
        assert (xt.grad is not None) == needs
        kernel_grads.append(lif.kernel.value.grad.cpu().numpy().copy())
        lif.kernel.value.grad = None
    assert seen == [True, False]
    assert np.abs(kernel_grads[0]).max() > 0
    np.testing.assert_array_equal(kernel_grads[1], kernel_grads[0])


def test_float32_in_float32_out_and_shapes():
    rng = np.random.default_rng(0)
    x = spike_input(rng, batch=5, n_in=4, max_in=3)
    lif, readout = two_layers(False)
    times = lif(x)
    logits = readout(times)
    assert tuple(times.shape) == (5, 6, 3) == lif.compute_output_shape((5, 4, 3))
    assert tuple(logits.shape) == (5, 2) == readout.compute_output_shape((5, 6, 3))
    assert ops.convert_to_numpy(times).dtype == np.float32 and ops.convert_to_numpy(logits).dtype == np.float32
    res = spikescan.lif_forward(x, lif.kernel.numpy(), tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3)
    np.testing.assert_array_equal(ops.convert_to_numpy(times), res.times)


@pytest.mark.skipif(BACKEND != "jax", reason="jit and the residual cache are specific to the jax bridge")
def test_jax_jit_and_cache_fallback(jax_route):
    """Under jit the same gradients; a backward whose cached forward was evicted recomputes it."""
    import jax

    from spikescan_keras._bridge import jax as bridge

    rng = np.random.default_rng(1)
    x = spike_input(rng)
    lif, _ = two_layers(True)
    lif(x)
    weights = [v.value for v in lif.trainable_variables]

    def loss(x, w, d):
        times, _ = lif.stateless_call([w, d], [v.value for v in lif.non_trainable_variables], x)
        return ops.sum(ops.where(ops.isfinite(times), times, 0.0))

    eager = jax.grad(loss, argnums=(0, 1, 2))(x, *weights)
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, *weights)
    _, vjp = jax.vjp(loss, x, *weights)
    bridge._cache.clear()
    recomputed = vjp(np.float32(1.0))
    assert not bridge._cache
    for a, b, c in zip(eager, jitted, recomputed):
        np.testing.assert_allclose(a, b, rtol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-6)


@pytest.mark.skipif(BACKEND != "jax", reason="the routes of the jax bridge")
def test_jax_routes_train_identically(monkeypatch):
    """pure_callback and buffer_callback run the same host code: the same jitted gradients, the same fit (losses,
    weights, counted capped spikes) from the same weights; the buffer route's LIF op leaves its host checks to the
    bridge (``host_checks=False``) and its warnings still come, from outside the op, also under jit."""
    import jax

    from spikescan_keras import _host

    specs = []
    forward = _host.LIFOp.forward

    def spy(spec, inputs):
        specs.append(spec.host_checks)
        return forward(spec, inputs)

    monkeypatch.setattr(_host.LIFOp, "forward", staticmethod(spy))
    x, y = timing_task(32, seed=4)
    runs, initial = {}, None
    for route in ("pure", "buffer"):
        monkeypatch.setenv("SPIKESCAN_JAX_ROUTE", route)
        specs.clear()
        model = keras.Sequential([
            keras.Input(shape=(3, 1)),
            sk.LIFLayer(16, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1, delays=True, max_delay=5.0),
            sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="max", t_max=T_MAX),
        ])
        model.compile(optimizer=keras.optimizers.Adam(0.02),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        initial = initial or model.get_weights()
        model.set_weights(initial)
        weights = [v.value for v in model.trainable_variables]
        lif = model.layers[0]

        def loss(kernel, delays):
            times, _ = lif.stateless_call([kernel, delays], [v.value for v in lif.non_trainable_variables], x)
            return ops.sum(ops.where(ops.isfinite(times), times, 0.0))

        with pytest.warns(sk.CappedSpikesWarning, match=lif.name):
            grads = jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1)))(*weights[:2]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sk.CappedSpikesWarning)
            history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
        assert specs and all(specs) == (route == "pure"), specs
        runs[route] = (grads, history["loss"], [ops.convert_to_numpy(v.value) for v in model.weights])
    for a, b in zip(jax.tree_util.tree_leaves(runs["pure"]), jax.tree_util.tree_leaves(runs["buffer"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.skipif(BACKEND != "jax", reason="the routes of the jax bridge")
def test_jax_buffer_route_errors_reach_the_caller(monkeypatch):
    """An exception raised by spikescan inside buffer_callback (here RunawayFiringError) fails the call, eagerly and
    under jit, as a JaxRuntimeError (a RuntimeError) carrying the original type and message."""
    import jax

    monkeypatch.setenv("SPIKESCAN_JAX_ROUTE", "buffer")
    x = np.zeros((1, 1, 1), np.float32)  # one strong input at t = 0: the neuron fires without end
    lif = sk.LIFLayer(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1, max_total_spikes=50,
                      kernel_initializer=keras.initializers.Constant(1e4))
    lif.build(x.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sk.CappedSpikesWarning)
        with pytest.raises(RuntimeError, match="(?s)RunawayFiringError.*max_total_spikes=50"):
            lif(x)
        jitted = jax.jit(lambda w: lif.stateless_call([w], [v.value for v in lif.non_trainable_variables], x)[0])
        with pytest.raises(RuntimeError, match="(?s)RunawayFiringError.*max_total_spikes=50"):
            jax.block_until_ready(jitted(lif.kernel.value))
        with pytest.raises(RuntimeError, match="input_times must be >= 0"):
            jax.block_until_ready(jax.grad(lambda t: ops.sum(lif(t)))(np.full((1, 1, 1), -1.0, np.float32)))


@pytest.mark.skipif(BACKEND != "jax", reason="the routes of the jax bridge")
def test_jax_route_selection_and_fallback_warnings(monkeypatch):
    """SPIKESCAN_JAX_ROUTE: auto is pure_callback on CPU and buffer_callback on a GPU with CuPy; where the buffer
    route cannot run (TPU, no CuPy, jax without buffer_callback) the op falls back to pure_callback, and off CPU a
    warning, given once, says why and that every call copies through the host."""
    import jax

    from spikescan_keras._bridge import jax as bridge

    monkeypatch.setattr(bridge, "_warned", set())
    for value, expected in (("auto", "pure"), ("", "pure"), ("pure", "pure"), ("buffer", "buffer"),
                            (" Buffer ", "buffer")):
        monkeypatch.setenv("SPIKESCAN_JAX_ROUTE", value)
        assert bridge.route() == expected, value
    monkeypatch.delenv("SPIKESCAN_JAX_ROUTE")
    assert bridge.route() == "pure"
    monkeypatch.setenv("SPIKESCAN_JAX_ROUTE", "fast")
    with pytest.raises(ValueError, match="SPIKESCAN_JAX_ROUTE must be one of auto, buffer, pure"):
        bridge.route()

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(bridge, "_cupy_missing", lambda: None)
    monkeypatch.setenv("SPIKESCAN_JAX_ROUTE", "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bridge.route() == "buffer"
    monkeypatch.setattr(bridge, "_cupy_missing", lambda: "CuPy is not installed (pip install cupy-cuda12x)")
    with pytest.warns(UserWarning, match="(?s)pure_callback.*CuPy is not installed.*copies its inputs to the host"):
        assert bridge.route() == "pure"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bridge.route() == "pure", "the warning is given once"
    monkeypatch.setenv("SPIKESCAN_JAX_ROUTE", "pure")
    with pytest.warns(UserWarning, match="SPIKESCAN_JAX_ROUTE=pure"):
        assert bridge.route() == "pure"
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    monkeypatch.setenv("SPIKESCAN_JAX_ROUTE", "buffer")
    with pytest.warns(UserWarning, match="buffer_callback does not run on 'tpu'"):
        assert bridge.route() == "pure"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(bridge, "_buffer_callback", lambda: None)
    with pytest.warns(UserWarning, match=r"SPIKESCAN_JAX_ROUTE=buffer: jax .* no jax.experimental.buffer_callback"):
        assert bridge.route() == "pure"


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function and the residual cache of the tensorflow bridge")
def test_tensorflow_graph_and_cache_fallback():
    """Inside tf.function the same gradients as eagerly; a backward whose cached forward was evicted recomputes it;
    a spikescan error inside a graph reaches the caller as an OpError carrying its message."""
    import tensorflow as tf

    from spikescan_keras._bridge import tensorflow as bridge

    rng = np.random.default_rng(1)
    x = spike_input(rng)
    lif, _ = two_layers(True)
    lif(x)
    weights = [v.numpy() for v in lif.trainable_variables]

    def loss(x, w, d):
        times, _ = lif.stateless_call([w, d], [v.value for v in lif.non_trainable_variables], x)
        return ops.sum(ops.where(ops.isfinite(times), times, 0.0))

    eager = backend_grad(loss, [x, *weights], graph=False)
    graph = backend_grad(loss, [x, *weights])
    tensors = [tf.convert_to_tensor(a) for a in (x, *weights)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        value = loss(*tensors)
    bridge._cache.clear()
    recomputed = tape.gradient(value, tensors)
    assert not bridge._cache
    for a, b, c in zip(eager, graph, recomputed):
        assert np.abs(a).max() > 0
        np.testing.assert_allclose(a, b, rtol=1e-6)
        np.testing.assert_allclose(a, c.numpy(), rtol=1e-6)
    with pytest.raises(tf.errors.OpError, match="input_times must be >= 0"):
        tf.function(loss)(np.full_like(x, -1.0), *weights)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the host-copy warning of the tensorflow bridge")
def test_tensorflow_warns_once_that_a_gpu_copies_through_the_host(monkeypatch):
    """With a GPU visible the op still runs on the host (tf.numpy_function): the first call says so, once."""
    import tensorflow as tf

    from spikescan_keras._bridge import tensorflow as bridge

    def fake_gpu(device_type=None):
        return ["/device:GPU:0"] if device_type == "GPU" else []

    monkeypatch.setattr(bridge, "_device_checked", False)
    monkeypatch.setattr(tf.config, "list_logical_devices", fake_gpu)
    x = spike_input(np.random.default_rng(0))
    lif, readout = two_layers(False)
    with pytest.warns(UserWarning, match="copies its inputs to the host") as record:
        readout(lif(x))
    assert sum("copies its inputs" in str(w.message) for w in record) == 1


@pytest.mark.skipif(BACKEND == "jax", reason="jax jit-compiles the step around the op's callback")
def test_tensorflow_and_torch_models_are_never_compiled():
    """tf.numpy_function cannot be compiled by XLA, and torch.compile could only break its graph around the op
    (recompiling each piece: ~100x slower on a small model): the layers say so, and Keras turns jit_compile off,
    also when asked for it (torch.compile with jit_compile=True failed inside the host code before)."""
    from keras.src.trainers.trainer import model_supports_jit

    lif, readout = two_layers(False)
    model = keras.Sequential([keras.Input(shape=(4, 2)), lif, readout])
    assert not lif.supports_jit and not readout.supports_jit and not model_supports_jit(model)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert model.jit_compile is False
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=True)
    assert model.jit_compile is False
    x = spike_input(np.random.default_rng(0), batch=4)
    model.fit(x, np.array([0, 1, 0, 1]), batch_size=2, epochs=1, verbose=0)


def timing_task(n=96, seed=0):
    """Two classes: channel 0 spikes before channel 1 (class 0) or after it (class 1); channel 2 at t = 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    early, late = rng.uniform(0.0, 5.0, n), rng.uniform(8.0, 14.0, n)
    t0, t1 = np.where(labels == 0, early, late), np.where(labels == 0, late, early)
    times = np.stack([t0, t1, np.zeros(n)], axis=1)[:, :, None].astype(np.float32)
    return times, labels


def small_model(**lif_kwargs):
    model = keras.Sequential([
        keras.Input(shape=(3, 1)),
        sk.LIFLayer(16, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, **lif_kwargs),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="max", t_max=T_MAX),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.02),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_first_layer_fed_with_data_skips_its_input_gradient(jax_route, monkeypatch):
    """In ``model.fit`` nothing differentiates the data: the first LIF layer's backward is asked for no input-time
    gradient (torch: ``needs_input_grad``; jax: the input is not ``perturbed``; TensorFlow: no tape records it, and
    the traced step prunes the op that would compute it), the second one's is; the weight gradients are those of a
    backward that computes it (the same kernels, the input gradient only left out)."""
    from spikescan_keras import _host

    calls, original = [], _host.LIFOp.backward

    def spy(spec, result, grad, input_grad=True):
        calls.append((spec.layer_name, input_grad))
        return original(spec, result, grad, input_grad=input_grad)

    keras.utils.set_random_seed(0)
    x, y = timing_task(8)
    model = keras.Sequential([
        keras.Input(shape=(3, 1)),
        sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, name="first"),
        sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, name="second"),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # builds the optimizer and traces the step without the spy
    monkeypatch.setattr(_host.LIFOp, "backward", staticmethod(spy))
    before = [keras.ops.convert_to_numpy(v.value) for v in model.trainable_variables]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert sorted(set(calls)) == [("first", False), ("second", True)], calls
    # The weight gradients match a backward that also computes the first layer's input gradient.
    calls.clear()
    monkeypatch.setattr(_host.LIFOp, "backward",
                        staticmethod(lambda spec, result, grad, input_grad=True: spy(spec, result, grad)))
    for v, b in zip(model.trainable_variables, before):
        v.assign(b)
    grads_all = _weight_grads(model, x, y)
    monkeypatch.setattr(_host.LIFOp, "backward", staticmethod(spy))
    grads_skip = _weight_grads(model, x, y)
    for a, b in zip(grads_all, grads_skip):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(g).sum() > 0 for g in grads_all)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's tapes and tf.function")
def test_tensorflow_input_gradient_wherever_a_tape_asks_for_it(monkeypatch):
    """The TensorFlow bridge leaves the first layer's input gradient out when no tape records the input; a tape that
    does, eagerly, around a tf.function traced before or under it, or inside one, gets the gradient of the backward
    that always computes it, bit for bit; one that records only the weights gets the same weight gradients."""
    import tensorflow as tf

    from spikescan_keras._bridge import tensorflow as bridge

    keras.utils.set_random_seed(0)
    x, _ = timing_task(8)
    x = tf.constant(x)
    model = keras.Sequential([
        keras.Input(shape=(3, 1)),
        sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, calibrate=None),
        sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, calibrate=None),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX),
    ])

    def loss(xx):
        return tf.reduce_sum(model(xx) ** 2)

    def eager(watch):
        with tf.GradientTape() as tape:
            if watch:
                tape.watch(x)
            value = loss(x)
        return tape.gradient(value, x if watch else model.trainable_variables)

    monkeypatch.setattr(bridge, "SKIP_INPUT_GRAD", False)
    reference, reference_weights = eager(True).numpy(), [g.numpy() for g in eager(False)]
    assert np.abs(reference).sum() > 0
    monkeypatch.setattr(bridge, "SKIP_INPUT_GRAD", True)
    for got, want in zip(eager(False), reference_weights):
        np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(eager(True).numpy(), reference)

    traced_before = tf.function(loss)
    traced_before(x)  # traced with no tape

    def outer(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return tape.gradient(value, x).numpy()

    @tf.function
    def inner(xx):
        with tf.GradientTape() as tape:
            tape.watch(xx)
            value = loss(xx)
        return tape.gradient(value, xx)

    for got in (outer(traced_before), outer(tf.function(loss)), inner(x).numpy()):
        np.testing.assert_array_equal(got, reference)


def _weight_grads(model, x, y):
    """Gradients of the mean cross-entropy with respect to the model's trainable variables (the data is constant)."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(True)
    variables = model.trainable_variables
    if BACKEND == "torch":
        for v in variables:
            v.value.grad = None
        loss_fn(y, model(x, training=True)).backward()
        return [v.value.grad.detach().cpu().numpy().copy() for v in variables]
    if BACKEND == "jax":
        import jax

        def loss(values):
            logits, _ = model.stateless_call(values, [w.value for w in model.non_trainable_variables], x,
                                             training=True)
            return loss_fn(y, logits)

        return [np.asarray(g) for g in jax.grad(loss)([v.value for v in variables])]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    return [g.numpy() for g in tape.gradient(loss, [v.value for v in variables])]


def test_fit_reduces_loss(jax_route):
    keras.utils.set_random_seed(0)
    x, y = timing_task()
    model = small_model(delays=True, max_delay=10.0,
                        spike_count_regularizer=sk.SpikeCountRegularizer(1e-3, tau=T_MAX))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sk.CappedSpikesWarning)
        before, _ = model.evaluate(x, y, verbose=0)  # inference: no training-time penalties (the revival terms)
        model.fit(x, y, batch_size=32, epochs=12, verbose=0)
        after, accuracy = model.evaluate(x, y, verbose=0, batch_size=len(x))
        # The spike-count term is added on every call, as Keras' activity regularizers are: evaluate's loss is the
        # cross-entropy plus the term on the same batch (the README says val_loss includes it).
        logits = model.predict(x, verbose=0, batch_size=len(x))
        crossentropy = float(ops.convert_to_numpy(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            y, logits)))
        hidden = ops.convert_to_numpy(model.layers[0](x))
        term = 1e-3 * float(np.exp(-hidden / T_MAX).sum(axis=(1, 2)).mean())
    assert term > 1e-4 and abs(after - (crossentropy + term)) < 1e-5, (after, crossentropy, term)
    assert after < 0.6 * before and accuracy >= 0.9, (before, after, accuracy)
    delays = model.layers[0].delay_values()
    assert delays.min() >= 0.0 and delays.max() <= 10.0, "the DelayRange constraint keeps delays in [0, max_delay]"


def test_a_layer_shared_by_two_branches_trains():
    """One LIFLayer called twice in a step (a two-view encoder): the calibrating layer assigns its kernel_scale on
    each training call, which on torch changed in place a value the first call's backward needed."""
    keras.utils.set_random_seed(1)
    x = np.sort(np.random.default_rng(0).uniform(0, 20, (32, 8, 1)), -1).astype("float32")
    a, b = keras.Input((8, 1)), keras.Input((8, 1))
    encoder = sk.LIFLayer(16, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=4)
    joined = keras.layers.Concatenate(axis=1)([encoder(a), encoder(b)])
    model = keras.Model([a, b], sk.LIReadout(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)(joined))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = encoder.kernel.numpy().copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sk.CappedSpikesWarning)
        history = model.fit([x, x[::-1]], np.arange(32) % 3, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(encoder.calibrated.numpy()) == 1 and np.abs(encoder.kernel.numpy() - before).max() > 0


def test_save_load_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    x, _ = timing_task(8)
    model = small_model(delays=True, max_delay=4.0, kernel_regularizer="l2",
                        spike_count_regularizer=sk.SpikeCountRegularizer(0.5, tau=20.0))
    before = ops.convert_to_numpy(model(x))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x)), before)
    lif = loaded.layers[0]
    assert isinstance(lif, sk.LIFLayer) and isinstance(loaded.layers[1], sk.LIReadout)
    assert lif.get_config() == model.layers[0].get_config()
    assert lif.spike_count_regularizer.get_config() == {"strength": 0.5, "tau": 20.0}


@pytest.mark.parametrize("cls", ["LIFLayer", "FirstSpikeReadout"])
def test_unbuilt_layers_copy_pickle_save_and_load(cls, tmp_path):
    """A layer before its first call (a template to copy, a model saved before it ran) holds no variable: deepcopy,
    pickle and save/load restore it (they read an empty variable store, which must not sync the voltage unit of a
    variable that does not exist yet), and the copy then builds and runs like the original."""
    import copy
    import pickle

    keras.utils.set_random_seed(3)
    extra = {"max_spikes": 2} if cls == "LIFLayer" else {"t_max": T_MAX}

    def make(units, **kwargs):
        return getattr(sk, cls)(units, tau_mem=TAU_MEM, tau_syn=TAU_SYN, **extra, **kwargs)

    layer = make(4, name="templ")
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert type(clone) is type(layer) and not clone.built and clone.get_config() == layer.get_config()
    model = keras.Sequential([make(3)])
    model.save(tmp_path / "unbuilt.keras")
    loaded = keras.saving.load_model(tmp_path / "unbuilt.keras")
    x, _ = timing_task(4)
    assert ops.convert_to_numpy(loaded(x)).shape == ops.convert_to_numpy(model(x)).shape


@pytest.mark.parametrize("options", [dict(trainable_threshold=True), dict(delays=True, max_delay=4.0),
                                     dict(recurrent=True), dict(units=5)])
def test_weights_of_a_layer_with_other_options_are_refused_before_anything_is_loaded(options, tmp_path):
    """A weights file of an LIFLayer with other options: a clear error naming the mismatch, and the layer unchanged
    (a file one variable short was taken for one saved before the voltage unit and half loaded, then failed on a
    shape deep in Keras)."""
    keras.utils.set_random_seed(4)
    x, _ = timing_task(4)
    source = keras.Sequential([keras.Input((3, 1)), sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2,
                                                                name="hidden")])
    source(x)
    source.save_weights(tmp_path / "plain.weights.h5")
    kwargs = dict(units=4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, name="hidden") | options
    target = keras.Sequential([keras.Input((3, 1)), sk.LIFLayer(**kwargs)])
    target(x)
    before = [ops.convert_to_numpy(v).copy() for v in target.weights]
    with pytest.raises(ValueError, match=r"LIFLayer 'hidden': the stored variable \d+ has shape .* where this layer's "
                                         r".* has .*other options .*Nothing was loaded"):
        target.load_weights(tmp_path / "plain.weights.h5")
    for v, b in zip(target.weights, before):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), b)


@pytest.mark.parametrize("readout", ["integral", "max", "final"])
def test_readout_scale(readout, tmp_path):
    """Logits are ``output_scale`` times ``li_forward``'s values. ``"auto"``: ``AUTO_UNIT_LOGIT`` over the
    readout's value for one unit-weight spike at ``t_max / 2``; the auto initializer counts the scale. Saved and
    loaded with the model; gradients are the op's times the constant."""
    rng = np.random.default_rng(5)
    x = spike_input(rng, n_in=5, max_in=2)
    unit = {r: float(spikescan.li_forward(np.full((1, 1, 1), T_MAX / 2), np.ones((1, 1)), tau_mem=TAU_MEM,
                                          tau_syn=TAU_SYN, readout=r, t_max=T_MAX).values[0, 0])
            for r in ("integral", readout)}
    layer = sk.LIReadout(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout=readout, t_max=T_MAX)
    assert layer.scale == "auto"
    np.testing.assert_allclose(layer.output_scale, sk.layers.AUTO_UNIT_LOGIT / unit[readout], rtol=1e-12)
    init = layer._auto_kernel_initializer(5)
    np.testing.assert_allclose(init.stddev, 0.5 / (np.sqrt(5) * sk.layers.AUTO_UNIT_LOGIT), rtol=1e-12)
    logits = ops.convert_to_numpy(layer(x))
    w = layer.kernel.numpy().astype(np.float64)
    values = spikescan.li_forward(x.astype(np.float64), w, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout=readout,
                                  t_max=T_MAX).values
    np.testing.assert_allclose(logits, layer.output_scale * values, rtol=1e-5, atol=1e-6)
    fixed = sk.LIReadout(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout=readout, t_max=T_MAX, scale=2.5)
    fixed(x)
    fixed.kernel.assign(layer.kernel.numpy())
    assert fixed.output_scale == 2.5
    np.testing.assert_allclose(ops.convert_to_numpy(fixed(x)), 2.5 * values, rtol=1e-5, atol=1e-6)

    g = rng.normal(size=(x.shape[0], 3))
    g_tensor = ops.convert_to_tensor(g.astype(np.float32))
    state = [v.value for v in layer.non_trainable_variables]
    (grad,) = backend_grad(lambda k: ops.sum(layer.stateless_call([k], state, x)[0] * g_tensor),
                           [layer.kernel.numpy()])
    expected = layer.output_scale * spikescan.li_backward(
        spikescan.li_forward(x.astype(np.float64), w, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout=readout,
                             t_max=T_MAX), g).weights
    np.testing.assert_allclose(ops.convert_to_numpy(grad), expected, rtol=1e-4, atol=1e-6)

    model = keras.Sequential([keras.Input(x.shape[1:]), fixed])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[0].get_config()["scale"] == 2.5
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)))
    assert sk.LIReadout.from_config(layer.get_config()).output_scale == layer.output_scale
    # A configuration saved before the rule (no "auto_scale_rule") loads with the factor it was trained with.
    old = {k: v for k, v in layer.get_config().items() if k != "auto_scale_rule"}
    legacy = sk.LIReadout.from_config(old)
    expected = 1.0 if readout == "integral" else unit["integral"] / unit[readout]
    np.testing.assert_allclose(legacy.output_scale, expected, rtol=1e-12)
    assert legacy.get_config()["scale"] == legacy.output_scale and "auto_scale_rule" in legacy.get_config()


@pytest.mark.parametrize("readout", ["integral", "max", "final"])
def test_auto_readout_scale_does_not_depend_on_the_time_unit(readout):
    """The same model in milliseconds and in seconds (every time and time constant / 1000): the same auto
    initializers and logits, so that Adam trains both alike (with the integral's raw value a model in seconds
    needed readout weights 1000 times larger and stayed at chance)."""
    x = spike_input(np.random.default_rng(8), n_in=5, max_in=2).astype(np.float64)
    layers = [sk.LIReadout(3, tau_mem=TAU_MEM * u, tau_syn=TAU_SYN * u, readout=readout, t_max=T_MAX * u,
                           dtype="float64") for u in (1.0, 1e-3)]
    np.testing.assert_allclose(layers[1].output_scale * 1e-3 ** (readout == "integral"), layers[0].output_scale,
                               rtol=1e-9)
    assert layers[0]._auto_kernel_initializer(5).stddev == pytest.approx(layers[1]._auto_kernel_initializer(5).stddev)
    layers[0](x)
    layers[1](x * 1e-3)
    layers[1].kernel.assign(layers[0].kernel.numpy())
    logits = ops.convert_to_numpy(layers[0](x))
    tol = 1e-9 if logits.dtype == np.float64 else 1e-5  # (jax without x64 computes a float64 layer in float32)
    np.testing.assert_allclose(ops.convert_to_numpy(layers[1](x * 1e-3)), logits, rtol=tol, atol=tol)


def test_capped_spikes_are_counted_and_warned(jax_route):
    x = np.zeros((2, 1, 1), np.float32)  # one strong input at t = 0: the neuron fires repeatedly
    lif = sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1,
                      kernel_initializer=keras.initializers.Constant(50.0))
    with pytest.warns(sk.CappedSpikesWarning, match="max_spikes=1") as record:
        times = lif(x)
    counts = spikescan.lif_forward(x, np.full((1, 3), 50.0, np.float32), tau_mem=TAU_MEM, tau_syn=TAU_SYN,
                                   max_spikes=1).counts
    assert counts.min() > 2  # so more than half of the spikes were not passed on
    assert "50% or more of a batch's spikes" in str(record[0].message)
    assert int(lif.capped_spikes.numpy()) == int((counts - 1).sum())
    assert np.isfinite(ops.convert_to_numpy(times)).all()


@pytest.mark.parametrize("capped,spikes,band", [
    (1, 101, "under 1%"), (1, 100, "1-2%"), (3, 100, "2-5%"), (9, 100, "5-10%"), (19, 100, "10-20%"),
    (20, 100, "20-50%"), (50, 100, "50% or more"), (7, 7, "50% or more")])
def test_share_bands(capped, spikes, band):
    from spikescan_keras._host import share_band

    assert share_band(capped, spikes) == band


def test_capped_spikes_warning_shows_again_when_the_share_moves_band():
    """Under Python's default filter the warning shows once per layer and band of the share: a rising share (a
    runaway) shows again, the same share every batch does not."""
    from spikescan_keras._host import LIFOp, LIFSpec

    spec = LIFSpec(tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=1.0, max_spikes=2, method="auto", chunk_size=128,
                   solver="newton", layer_name="hidden")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for capped in (3, 4, 3, 30, 31, 0):  # 3-4%, then 30%, then nothing capped
            LIFOp.check(spec, capped, 10, 100)
    messages = [str(w.message) for w in caught if w.category is sk.CappedSpikesWarning]
    assert len(messages) == 2 and "'hidden': 2-5% of" in messages[0] and "'hidden': 20-50% of" in messages[1]


@pytest.mark.parametrize("capped,large", [(12, False), (19, False), (20, True), (60, True)])
def test_capped_spikes_warning_advises_raising_max_spikes_when_the_share_is_large(capped, large):
    """From 20% of a batch's spikes capped on (dense input, e.g. a rate raster), the advice is to raise max_spikes;
    below it (the quickstart's Yin-Yang model caps about 12%), that a few neurons bursting is tolerated."""
    from spikescan_keras._host import LIFOp, LIFSpec

    spec = LIFSpec(tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=1.0, max_spikes=8, method="auto", chunk_size=128,
                   solver="newton", layer_name="hidden")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LIFOp.check(spec, capped, 10, 100)
        LIFOp.check(spec, capped, 10, 100, 0, 16, 8)  # 8 spike slots per input channel: dense enough
        # One slot per channel (a latency code): a large share is runaway weights (Adam(1.0) on sklearn's digits
        # left 95% of the neurons dead and the rest bursting), not input that needs a larger max_spikes.
        LIFOp.check(spec, capped, 10, 100, 0, 16, 1)
    default, dense, sparse = [str(w.message) for w in caught if w.category is sk.CappedSpikesWarning]
    for message in (default, dense):
        assert ("routinely fire more than max_spikes" in message) is large
        assert ("Usually a few neurons" in message) is not large
    assert ("at most 1 spike(s) per channel, so this is no dense input" in sparse) is large
    assert ("the learning rate is most likely too high for this layer: lower it" in sparse) is large
    assert ("Usually a few neurons" in sparse) is not large and "routinely" not in sparse


def test_dead_neurons_warning_gives_the_share_and_shows_again_when_it_moves_band():
    """The dead-neuron warning (silence_penalty=0) gives the share of the layer's neurons that fired on no sample, as
    a band: under the default filter it shows once per layer and band, so more neurons dying shows again."""
    from spikescan_keras._host import LIFOp, LIFSpec

    spec = LIFSpec(tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=1.0, max_spikes=2, method="auto", chunk_size=128,
                   solver="newton", layer_name="hidden", training=True, warn_dead=True)
    counts = np.ones((4, 50), np.int32)
    counts[:, :3] = 0  # 3 of 50 neurons dead
    values = LIFOp.check_values(spec, (None, counts), (np.zeros((4, 7, 3)),))
    assert [int(v) for v in values] == [0, 188, 188, 3, 50, 3]  # ..., the input's 3 spike slots per channel
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for dead in (values, 4, 0, 30):  # 6% and 8%, then none, then 60%
            LIFOp.check(spec, *((0, 10, 100, dead, 50) if isinstance(dead, int) else dead))
    messages = [str(w.message) for w in caught if w.category is sk.DeadNeuronsWarning]
    assert len(messages) == 2, messages
    assert "'hidden': 5-10% of its 50 neurons fired on no sample" in messages[0]
    assert "'hidden': 50% or more of its 50 neurons" in messages[1]


@pytest.mark.parametrize("readout,revival", [("integral", 1.0), ("max", 1.0), ("max", 0.0)])
def test_a_readout_that_sees_no_spike_in_its_window_warns(jax_route, readout, revival):
    """Spike times in another unit than the readout's window (microseconds against t_max in ms): every logit is 0,
    no gradient reaches the layers before it, and a training call says so (the silent-readout warning, not the
    dead-unit one, which would point at the wrong cause). A readout that sees its inputs does not warn."""
    rng = np.random.default_rng(0)
    late = spike_input(rng, batch=8, t_end=20.0) * 1000.0 + T_MAX  # all after t_max
    labels = np.arange(8) % 2
    for x, expected in ((late, True), (spike_input(rng, batch=8, t_end=20.0), False)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4, 2)), sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN,
                                                                    readout=readout, t_max=T_MAX,
                                                                    revival_penalty=revival)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, labels, epochs=1, batch_size=8, verbose=0)
            model.predict(x, verbose=0)  # inference calls never warn
        kinds = [w.category for w in caught if issubclass(w.category, (sk.SilentReadoutWarning,
                                                                      sk.DeadReadoutWarning))]
        if expected:
            assert kinds == [sk.SilentReadoutWarning], kinds
            assert "t_max=40.0" in str(next(w.message for w in caught if w.category is sk.SilentReadoutWarning))
        else:
            assert kinds == [], kinds


def test_most_inputs_after_t_max_are_warned(jax_route):
    """Spike times in microseconds against a window in milliseconds, with a few spikes early enough (Yin-Yang's
    bias spike at t = 0) that the logits are not all zero: the readout says most inputs arrive after t_max, once
    per layer; inputs inside the window, and inference calls, say nothing (on jax's buffer route too, where the
    check runs outside the op on device values)."""
    rng = np.random.default_rng(0)
    x = spike_input(rng, batch=8, t_end=20.0) * 1000.0
    x[:, 0, 0] = 0.0  # an early spike on every sample
    x = np.sort(x, axis=-1)
    labels = np.arange(8) % 2
    for inputs, expected in ((x, True), (x / 1000.0, False)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4, 2)), sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(inputs, labels, epochs=1, batch_size=8, verbose=0)
            model.predict(inputs, verbose=0)
        late = [str(w.message) for w in caught if w.category is sk.SilentReadoutWarning]
        if expected:
            assert len(late) == 1 and "most input spikes of a training batch arrive after t_max=40.0" in late[0]
        else:
            assert late == []


def test_spike_count_regularizer_value_and_gradient(jax_route):
    rng = np.random.default_rng(2)
    x = spike_input(rng)
    reg = sk.SpikeCountRegularizer(0.1, tau=15.0)
    lif = sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, spike_count_regularizer=reg)
    times = ops.convert_to_numpy(lif(x))
    assert len(lif.losses) == 1
    expected = 0.1 * np.exp(-times / 15.0).sum(axis=(1, 2)).mean()
    np.testing.assert_allclose(float(ops.convert_to_numpy(lif.losses[0])), expected, rtol=1e-5)

    def penalty(w):
        _, _, losses = lif.stateless_call([w], [v.value for v in lif.non_trainable_variables], x, return_losses=True)
        return losses[0]

    (grad,) = backend_grad(penalty, [lif.kernel.numpy()])
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0, "the penalty has a gradient through spike times"


def test_added_losses_keep_float64():
    """With Keras' float dtype float64, a layer's added losses are float64-accurate on every backend: Keras' own mean
    rounded them to float32 on torch and jax (a spike-count penalty off by ~1e-8 relative)."""
    if BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("float64 on jax needs JAX_ENABLE_X64")
    x = spike_input(np.random.default_rng(2)).astype(np.float64)
    reg = sk.SpikeCountRegularizer(0.125, tau=16.0)
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")  # added losses take Keras' float dtype, that of the compiled loss
    try:
        lif = sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, spike_count_regularizer=reg,
                          dtype="float64")  # explicit: another test of the process may have set a global policy
        times = ops.convert_to_numpy(lif(x))
        loss = ops.convert_to_numpy(lif.losses[0])
    finally:
        keras.config.set_floatx(floatx)
    assert times.dtype == np.float64 and np.isfinite(times).any() and loss.dtype == np.float64
    expected = 0.125 * np.exp(-times / 16.0).sum(axis=(1, 2)).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-14)
    gap = np.linspace(0.1, 0.9, 21).reshape(7, 3) / 3.0
    from spikescan_keras.layers import _mean

    t = ops.convert_to_tensor(gap, dtype="float64")
    np.testing.assert_allclose(ops.convert_to_numpy(_mean(t, axis=0)), gap.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(float(ops.convert_to_numpy(_mean(t))), gap.mean(), rtol=1e-15)


@pytest.mark.parametrize("kwargs, match", [
    (dict(units=0), "units"),
    (dict(tau_mem=-1.0), "tau_mem"),
    (dict(tau_syn=0.0), "tau_syn"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(max_spikes=0), "max_spikes"),
    (dict(max_spikes=2.5), "max_spikes"),
    # lif_forward's bound, when the layer is made (it failed only at the first call)
    (dict(max_spikes=2**62), r"max_spikes must be at most \d+ .*got 4611686018427387904"),
    (dict(max_spikes=10**30), r"max_spikes must be at most \d+ .*got 1000000000000000000000000000000"),
    (dict(solver="secant"), "solver"),
    (dict(method="fast"), "method"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(max_delay=-1.0), "max_delay"),
    (dict(kernel_initializer="no_such_init"), "kernel_initializer"),
    # None: at threshold 1 it silently meant Keras' default, at other thresholds a TypeError in build.
    (dict(kernel_initializer=None), "kernel_initializer must be 'auto' or a Keras initializer, got None"),
    (dict(delays=True, delay_initializer=None), "delay_initializer must be .* got None"),
    (dict(recurrent=True, recurrent_initializer=None), "recurrent_initializer must be .* got None"),
    (dict(recurrent=True, recurrent_delays=True, recurrent_delay_initializer=None),
     "recurrent_delay_initializer must be .* got None"),
    # Combinations that could never train: refused when the layer is made, not at the first step that breaks them.
    (dict(solver="analytic", tau_mem=10.0, tau_syn=4.0), "tau_mem == 2 \\* tau_syn; got tau_mem=10.0"),
    (dict(solver="analytic", tau_mem=10.0, tau_syn=5.0, trainable_time_constants=True), "does not keep"),
    (dict(trainable_threshold=True, min_threshold=3.0), "min_threshold=3.0 is above threshold=1.0"),
    (dict(trainable_time_constants=True, tau_mem=10.0, tau_syn=4.0, min_time_constant=5.0),
     "min_time_constant=5.0 is above min\\(tau_mem, tau_syn\\)=4.0"),
])
def test_lif_bad_config(kwargs, match):
    args = dict(units=4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2) | kwargs
    with pytest.raises(ValueError, match=match):
        sk.LIFLayer(**args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(delays=True, max_delay=2.0, delay_initializer=keras.initializers.Constant(3.0)),
     r"delay_initializer must give delays within \[0, max_delay=2.0\] .* got 3.0 at index \(0, 0\)"),
    (dict(delays=True, delay_initializer=keras.initializers.Constant(-1.0)),
     r"delay_initializer must give delays >= 0 .* got -1.0 at index \(0, 0\)"),
    (dict(recurrent=True, recurrent_delays=True, max_delay=2.0,
          recurrent_delay_initializer=keras.initializers.RandomUniform(2.5, 4.0)),
     r"recurrent_delay_initializer must give delays within \[0, max_delay=2.0\]"),
])
def test_initial_delays_outside_the_constraint_are_refused(kwargs, match):
    """An initializer's delays above max_delay were used as they were until the first optimizer step clipped them
    (DelayRange), silently; negative ones failed at the first call without naming the initializer."""
    lif = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, calibrate=None, **kwargs)
    with pytest.raises(ValueError, match=match):
        lif.build((None, 3, 2))
    # Delays within the range, max_delay itself included, are kept as given.
    ok = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, delays=True, max_delay=2.0,
                     delay_initializer=keras.initializers.Constant(2.0))
    ok.build((None, 3, 2))
    np.testing.assert_array_equal(ok.delay_values(), np.full((3, 4), 2.0))


def test_a_loop_of_your_own_applies_the_constraints_with_apply_constraints():
    """A torch.optim (or optax) step knows nothing of Keras constraints: delays stepped below 0 are refused by the
    next forward, whose error names the layer and apply_constraints; apply_constraints clips every constrained
    variable as a Keras optimizer would (delays into [0, max_delay], thresholds to their floor)."""
    lif = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, calibrate=None, delays=True, max_delay=2.0,
                      trainable_threshold=True, name="hidden")
    model = keras.Sequential([keras.Input((3, 2)), lif])
    x = np.array([[[0.0, 1.0]] * 3], np.float32)
    good = ops.convert_to_numpy(model(x))
    stepped = lif.delay_kernel.numpy().copy()
    stepped[0, 0], stepped[1, 1] = -0.25, 1e3  # one below 0, one far above max_delay
    lif.delay_kernel.assign(stepped)
    lif.threshold_kernel.assign(np.full(4, -0.5, np.float32))
    with pytest.raises(Exception, match=r"delays must be >= 0, got .*\[in layer 'hidden': .*"
                                        r"spikescan_keras\.apply_constraints\(model\) after a torch\.optim step, "
                                        r"or trainable = spikescan_keras\.apply_constraints\(model, trainable\) "
                                        r"in a functional \(jax\) loop\]"):
        model(x)
    assert sk.apply_constraints(model) == 2
    delays = lif.delay_values()
    assert delays.min() == 0.0 and delays.max() == 2.0 and delays[0, 0] == 0.0 and delays[1, 1] == 2.0
    assert (ops.convert_to_numpy(lif.threshold_kernel) > 0).all()
    assert np.isfinite(ops.convert_to_numpy(model(x))[np.isfinite(good)]).all()
    with pytest.raises(TypeError, match="apply_constraints takes a Keras model or layer"):
        sk.apply_constraints(3)


def test_apply_constraints_on_the_arrays_of_a_functional_loop():
    """A functional loop (model.stateless_call under jax.jit) holds its own arrays: apply_constraints(model, values)
    returns them constrained, the model's variables untouched; on jax also inside jit. apply_constraints(model)
    there would fill the variables with jit's placeholders: refused, nothing assigned."""
    lif = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, calibrate=None, delays=True, max_delay=2.0,
                      trainable_threshold=True)
    model = keras.Sequential([keras.Input((3, 2)), lif])
    before = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    stepped = [b - 10.0 for b in before]  # every delay below 0, every threshold below its floor
    out = [ops.convert_to_numpy(v) for v in sk.apply_constraints(model, stepped)]
    kinds = [type(v.constraint).__name__ for v in model.trainable_variables]
    assert sorted(kinds) == ["DelayRange", "NoneType", "PositiveFloor"]
    for v, b, o in zip(model.trainable_variables, stepped, out):
        if isinstance(v.constraint, sk.DelayRange):
            assert (o == 0.0).all()
        elif isinstance(v.constraint, sk.PositiveFloor):  # the thresholds' floor
            np.testing.assert_allclose(o, v.constraint.min_value, rtol=1e-6)
        else:  # the kernel has no constraint
            np.testing.assert_array_equal(o, b)
    for v, b in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), b)
    with pytest.raises(ValueError, match=r"one array per trainable variable \(3\), got 2"):
        sk.apply_constraints(model, stepped[:2])
    if keras.backend.backend() == "jax":
        import jax

        jitted = jax.jit(lambda values: sk.apply_constraints(model, values))
        for a, b in zip(jitted(stepped), out):
            np.testing.assert_array_equal(np.asarray(a), b)
        with pytest.raises(TypeError, match=r"cannot happen inside jax.jit .* trainable = "
                                            r"spikescan_keras\.apply_constraints\(model, trainable\)"):
            jax.jit(lambda values: (sk.apply_constraints(model), values)[1])(stepped)
        for v, b in zip(model.trainable_variables, before):
            np.testing.assert_array_equal(ops.convert_to_numpy(v), b)


def test_torch_double_warns_that_the_layers_compute_in_their_keras_dtype():
    """torch's model.double() converts the variables' tensors, not the layers' Keras dtype, in which they compute:
    a warning (once per layer) names the fix instead of a silent cast back to float32."""
    if keras.backend.backend() != "torch":
        pytest.skip("torch modules only")
    model = keras.Sequential([keras.Input((3, 2)), sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2),
                              sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=40.0)])
    x = np.array([[[0.0, 1.0]] * 3], np.float32)

    def converted():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(x)
        return [str(w.message) for w in caught if "its parameters were converted" in str(w.message)]

    assert converted() == []
    model.double()
    messages = converted()
    assert len(messages) == 2 and "converted to float64" in messages[0] and "dtype='float64'" in messages[0]
    assert converted() == []  # once per layer


def test_non_finite_weights_name_the_layer_and_a_diverged_step():
    lif = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, calibrate=None, name="hidden")
    model = keras.Sequential([keras.Input((3, 2)), lif])
    kernel = ops.convert_to_numpy(lif.kernel).copy()
    kernel[1, 2] = np.nan
    lif.kernel.assign(kernel)
    with pytest.raises(Exception, match=r"weights must be finite, got nan at index \(1, 2\) \[in layer 'hidden': a "
                                        r"training step made its weights non-finite"):
        model(np.array([[[0.0, 1.0]] * 3], np.float32))


def test_initializers_given_as_arrays():
    """An array of the variable's shape gives its values (also through get_config); any other array is refused
    naming the argument: the layer compared it with "auto" (an ambiguous truth value), and a wrong shape failed in
    build without naming it."""
    kernel = np.arange(12.0).reshape(3, 4) / 10.0
    lif = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, calibrate=None, kernel_initializer=kernel,
                      delays=True, max_delay=5.0, delay_initializer=np.full((3, 4), 2.0), recurrent=True,
                      recurrent_initializer=ops.convert_to_tensor(np.full((4, 4), 0.01)))
    lif.build((None, 3, 2))
    np.testing.assert_allclose(ops.convert_to_numpy(lif.kernel) * lif.voltage_unit, kernel, rtol=1e-6)
    np.testing.assert_array_equal(lif.delay_values(), np.full((3, 4), 2.0))
    np.testing.assert_allclose(lif.recurrent_weights(), np.full((4, 4), 0.01), rtol=1e-6)
    again = sk.LIFLayer.from_config(lif.get_config())
    again.build((None, 3, 2))
    np.testing.assert_array_equal(ops.convert_to_numpy(again.kernel), ops.convert_to_numpy(lif.kernel))
    readout = sk.LIReadout(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, kernel_initializer=kernel)
    readout.build((None, 3, 2))
    np.testing.assert_allclose(ops.convert_to_numpy(readout.kernel), kernel, rtol=1e-6)
    wrong = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, kernel_initializer=np.ones((5, 7)))
    with pytest.raises(ValueError, match=r"kernel_initializer given as an array must have the shape .*\(3, 4\), got "
                                         r"shape \(5, 7\)"):
        wrong.build((None, 3, 2))
    for bad, error, match in ((np.ones(4), ValueError, r"have 2 dimensions .* got shape \(4,\)"),
                              (np.float64(0.5), ValueError, r"have 2 dimensions .* got shape \(\)"),
                              (np.ones((3, 4), bool), TypeError, "hold real numbers, got dtype bool"),
                              (np.full((3, 4), np.nan), ValueError, r"be finite, got nan at index \(0, 0\)")):
        with pytest.raises(error, match="kernel_initializer given as an array must " + match):
            sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, kernel_initializer=bad)


def test_huge_units_are_refused_with_their_sizes():
    """units=10**12 failed inside add_weight (the backend's allocator, e.g. a RuntimeError on torch): beyond the
    address space at construction, beyond the memory at build, each naming units."""
    with pytest.raises(ValueError, match=r"units must be at most \d+ .*got 1000000000000000000000000000000"):
        sk.LIReadout(10**30, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)
    with pytest.raises(ValueError, match=r"units \* max_spikes must be at most \d+ .*units=1152921504606846975"):
        sk.LIFLayer(2**60 - 1, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2)
    for layer in (sk.LIFLayer(10**12, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2),
                  sk.LIReadout(10**12, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)):
        with pytest.raises(MemoryError, match=r"\(n_in=3, units=1000000000000\) needs about .*kernel .*lower units"):
            layer.build((None, 3, 2))


@pytest.mark.parametrize("name", ["kernel_regularizer", "kernel_constraint", "spike_count_regularizer",
                                  "recurrent_regularizer"])
def test_unknown_regularizer_or_constraint_names_the_argument(name):
    """Keras' "Could not interpret regularizer identifier: bogus" named no argument."""
    extra = dict(recurrent=True) if name.startswith("recurrent") else {}
    with pytest.raises(ValueError, match=f"{name} must be None or a Keras .* got 'bogus'"):
        sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, **extra, **{name: "bogus"})
    if name.startswith("kernel"):
        with pytest.raises(ValueError, match=f"{name} must be None or a Keras .* got 'bogus'"):
            sk.LIReadout(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, **{name: "bogus"})


def test_options_checked_against_each_other_only_where_they_apply():
    # The floors bound trained values only; a fixed layer keeps any floor it was saved with, and the analytic solver
    # takes time constants in the ratio 2.
    sk.LIFLayer(4, tau_mem=10.0, tau_syn=4.0, max_spikes=2, min_threshold=3.0, min_time_constant=5.0)
    sk.LIFLayer(4, tau_mem=10.0, tau_syn=5.0, max_spikes=2, solver="analytic", trainable_threshold=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(readout="mean"), "readout"),
    (dict(t_max=0.0), "t_max"),
    (dict(tau_readout=-2.0), "tau_readout"),
    (dict(tau_mem=float("inf")), "tau_mem"),
    (dict(scale=0.0), "scale"),
    (dict(scale=-1.0), "scale"),
    (dict(scale=float("nan")), "scale"),
    (dict(scale="max"), "scale"),
    (dict(scale=True), "scale"),
    (dict(readout="final", t_max=3000.0, tau_mem=1.0, tau_syn=0.5), "unit-weight spike at t_max / 2 is 0.0"),
    (dict(trainable_time_constants=True, tau_mem=10.0, tau_syn=4.0, min_time_constant=4.5), "min_time_constant=4.5"),
    (dict(kernel_initializer=None), "kernel_initializer must be 'auto' or a Keras initializer, got None"),
])
def test_readout_bad_config(kwargs, match):
    args = dict(units=3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX) | kwargs
    with pytest.raises(ValueError, match=match):
        sk.LIReadout(**args)


def test_bad_types_and_inputs(jax_route):
    with pytest.raises(TypeError, match="delays"):
        sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, delays="yes")
    with pytest.raises(TypeError, match="spike_count_regularizer"):
        sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, spike_count_regularizer="l2")
    # Keras divides an activity regularizer by the batch size, on top of the regularizer's own batch mean.
    for layer, match in ((sk.LIFLayer, "pass it as spike_count_regularizer="),
                         (sk.LIReadout, "it applies to spike times: pass it to the LIFLayer before")):
        kw = dict(max_spikes=2) if layer is sk.LIFLayer else dict(t_max=T_MAX)
        with pytest.raises(TypeError, match=rf"activity_regularizer=SpikeCountRegularizer\(...\) would be divided by "
                                            rf"the batch size a second time by Keras; {match}"):
            layer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, activity_regularizer=sk.SpikeCountRegularizer(0.1, 5.0), **kw)
    with pytest.raises(ValueError, match="tau"):
        sk.SpikeCountRegularizer(0.1, tau=0.0)
    with pytest.raises(ValueError, match="strength"):
        sk.SpikeCountRegularizer(-1.0, tau=1.0)
    lif = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2)
    # Before the build a wrong rank gets the layers' message (the axes, and how a table or an image becomes spike
    # times), not Keras' generic "expected ndim=3"; after it, Keras' input spec checks the rank and n_in.
    with pytest.raises(ValueError, match=r"expects spike times \[batch, channels, max_spikes\].*got input shape "
                                         r"\(2, 3\): a table of features .*spikescan\.encode\.latency"):
        lif(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"LIReadout .*got input shape \(2, 3, 4, 5\): flatten the channel axes"):
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)(np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"LIFLayer .*got input shape \(None, 3\): a table"):
        keras.Sequential([keras.Input((3,)), sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2)])
    lif(np.zeros((2, 3, 1), np.float32))
    with pytest.raises(ValueError, match="axis 1|incompatible"):
        lif(np.zeros((2, 5, 1), np.float32))
    # spikescan validates the values; on jax its ValueError reaches the caller inside a JaxRuntimeError (eager
    # tensorflow raises it as it is).
    with pytest.raises(RuntimeError if BACKEND == "jax" else ValueError, match="input_times must be >= 0"):
        lif(np.full((2, 3, 1), -1.0, np.float32))
    with pytest.raises(ValueError, match="tau_readout"):
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="max", t_max=T_MAX, tau_readout=5.0)


def test_input_errors_say_the_index_is_within_the_batch():
    """A bad spike time met during ``fit`` is named by its index within the batch the layer was called on (Keras
    slices and shuffles the dataset), and the error says so, with the batch size and how to find the sample; the
    readout's and the calibration's errors too."""
    times, labels = timing_task()
    times = times[:40].copy()
    times[33, 2, 0] = np.nan  # the 2nd sample of the last batch of 8 (batches of 16, not shuffled)
    error = {"jax": RuntimeError, "tensorflow": Exception}.get(BACKEND, ValueError)
    for calibrate in (True, False):  # the calibration's op meets the first batch; the layer's op the others
        model = small_model() if calibrate else small_model(calibrate=None)
        bad = times if not calibrate else np.concatenate([times[32:], times[:32]])  # first batch: sample 1 of 16
        batch = 8 if not calibrate else 16
        with pytest.raises(error, match=rf"(?s)input_times contains NaN \(nan at index \(1, 2, 0\)\).*in layer "
                                        rf"'\w+': the index's first entry counts samples within this call's batch "
                                        rf"of {batch}, not the dataset; spikescan.datasets.SpikeDataset") as info:
            model.fit(bad, labels[:40], batch_size=16, epochs=1, shuffle=False, verbose=0)
        # On torch the calibration's error came wrapped as "Exception encountered when calling Cond.call()", with
        # the layer's private lambdas among its arguments: it now comes from the layer's own call.
        assert "Cond" not in str(info.value) and "<locals>" not in str(info.value)
    readout = sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="max", t_max=T_MAX, name="out")
    x = np.full((3, 4, 1), 5.0, np.float32)
    x[2, 1, 0] = -1.0
    with pytest.raises(RuntimeError if BACKEND == "jax" else ValueError,
                       match=r"(?s)input_times must be >= 0, got -1.0 at index \(2, 1, 0\).*in layer 'out'.*"
                             r"batch of 3"):
        readout(x)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_policy_computes_spike_layers_in_float32(policy, tmp_path):
    """Under a float16 / bfloat16 global policy (for the other layers of a model) the spike layers compute and keep
    their weights in float32: the model trains, a float16 Dense head included, and a saved model reloads so."""
    before = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        x, y = timing_task(32)
        model = keras.Sequential([
            keras.Input(shape=x.shape[1:]),
            sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, delays=True, max_delay=2.0),
            sk.LIReadout(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX),
            keras.layers.Dense(2),
        ])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        lif, readout, dense = model.layers
        assert dense.compute_dtype == policy.split("_")[1]  # the policy still applies to the other layers
        for layer in (lif, readout):
            assert layer.compute_dtype == "float32" and layer.variable_dtype == "float32"
            assert all(w.dtype == "float32" for w in layer.trainable_weights)
        path = str(tmp_path / "mixed.keras")
        model.save(path)
        again = keras.models.load_model(path)
        assert [layer.compute_dtype for layer in again.layers[:2]] == ["float32", "float32"]
        with pytest.raises(ValueError, match="dtype='float16'"):
            sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, dtype="float16")
        with pytest.raises(ValueError, match="dtype='mixed_bfloat16'"):
            sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, dtype="mixed_bfloat16")
    finally:
        keras.mixed_precision.set_global_policy(before)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_spike_times_rounded_before_a_spike_layer_are_warned(policy):
    """Under a mixed policy a Concatenate of two spike inputs computes in float16 / bfloat16 and rounds the times
    before the spike layer casts them back to float32: the layer warns once, naming the fix; a float32 Concatenate
    passes the times exact and says nothing."""
    before = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        a, b = keras.Input(shape=(3, 2)), keras.Input(shape=(2, 2))
        lif = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2)
        with pytest.warns(UserWarning, match=rf"LIFLayer .* input spike times arrive in {policy.split('_')[1]}.*"
                                             r"dtype='float32'"):
            lif(keras.layers.Concatenate(axis=1)([a, b]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lif(keras.layers.Concatenate(axis=1)([a, b]))  # once per layer
            exact = keras.layers.Concatenate(axis=1, dtype="float32")([a, b])
            sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2)(exact)
            sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)(exact)
        with pytest.warns(UserWarning, match="LIReadout .* arrive in"):
            sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)(keras.layers.Concatenate(axis=1)([a, b]))
    finally:
        keras.mixed_precision.set_global_policy(before)


def test_float64_on_jax_without_x64_is_warned():
    """jax without 64-bit mode computes float64 arrays in float32: a float64 spike layer says so and how to fix it
    (other backends, or jax with x64, compute in float64 and say nothing)."""
    x64 = BACKEND == "jax" and __import__("jax").config.jax_enable_x64
    if BACKEND == "jax" and not x64:
        with pytest.warns(UserWarning, match="LIFLayer: float64 on the jax backend needs .*JAX_ENABLE_X64=1"):
            sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, dtype="float64")
        with pytest.warns(UserWarning, match="LIReadout: float64 on the jax backend"):
            sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, dtype="float64")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, dtype="float64")


def test_frozen_layer_does_not_calibrate():
    """``trainable = False`` keeps the layer's function through ``fit`` (as a frozen BatchNormalization does): no
    first-batch calibration of its kernel_scale. Before, a frozen layer of hand-set weights that fired nowhere was
    rescaled ~25x at the first batch and fired ~200 spikes."""
    keras.utils.set_random_seed(0)
    x, y = timing_task(32)
    lif = sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2,
                      kernel_initializer=keras.initializers.RandomNormal(0.02, 0.01, seed=3))
    model = keras.Sequential([keras.Input(shape=x.shape[1:]), lif,
                              sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)])
    lif.trainable = False
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = keras.ops.convert_to_numpy(lif(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the silent layer is reported: that is the point of the setup
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert float(keras.ops.convert_to_numpy(lif.kernel_scale)) == 1.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(lif(x)), before)
    lif.trainable = True  # unfrozen, the same layer calibrates at its next training batch
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert float(keras.ops.convert_to_numpy(lif.kernel_scale)) != 1.0


def test_frozen_layers_add_no_revival_objective():
    """A frozen LIFLayer with dead neurons (and a frozen "max" readout with dead units) adds no revival term to the
    loss: the same loss and the same step of the trainable layer before it as with the objective switched off. It
    keeps its function; its objective would only have pushed the layers before it."""
    x, y = timing_task(8)

    def step(penalty, readout_penalty):
        keras.utils.set_random_seed(0)
        first = sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, calibrate=None, name="first")
        frozen = sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, calibrate=None,
                             silence_penalty=penalty, name="frozen")
        readout = sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, readout="max",
                               revival_penalty=readout_penalty)
        model = keras.Sequential([keras.Input(x.shape[1:]), first, frozen, readout])
        first.kernel.assign(np.random.default_rng(1).normal(1.2, 0.6, first.kernel.shape).astype("float32"))
        kernel = np.random.default_rng(2).normal(0.05, 0.3, frozen.kernel.shape).astype("float32")
        kernel[:, :3] = -np.abs(kernel[:, :3])  # three neurons that cannot fire
        frozen.kernel.assign(kernel)
        readout.kernel.assign(np.concatenate([np.full((6, 1), -1.0), np.full((6, 1), 1.0)], 1).astype("float32"))
        frozen.trainable = readout.trainable = False
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = model.train_on_batch(x, y)
        return float(loss), ops.convert_to_numpy(first.kernel).copy(), float(frozen.dead_fraction.numpy()), float(
            readout.dead_fraction.numpy())

    on, off = step(1.0, 1.0), step(0.0, 0.0)
    assert on[2] > 0 and on[3] > 0  # dead neurons and dead readout units were there to revive
    assert on[0] == off[0]
    np.testing.assert_array_equal(on[1], off[1])


def test_float64_layers_train_with_their_added_losses():
    """``dtype="float64"`` spike layers with their added losses (the spike-count regularizer, and the silent-neuron
    and revival objectives when a neuron or unit is dead) beside Keras' float32 compiled loss: the added terms are
    cast to ``floatx`` (TensorFlow refused to sum a float64 term with the float32 loss), the weights stay float64.
    (A Keras ``kernel_regularizer`` on float64 weights fails the same way on TensorFlow, in Keras' own ``Dense``
    too: not covered here.)"""
    keras.utils.set_random_seed(0)
    x, y = timing_task(32)
    model = keras.Sequential([
        keras.Input(shape=x.shape[1:], dtype="float64"),
        sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, delays=True, max_delay=2.0, dtype="float64",
                    spike_count_regularizer=sk.SpikeCountRegularizer(0.01, tau=TAU_MEM)),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="max", t_max=T_MAX, dtype="float64"),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x.astype("float64"), y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for layer in model.layers:
        assert layer.compute_dtype == "float64" and layer.variable_dtype == "float64"


def _spy_host_ops(monkeypatch):
    """Record the array types each host op's forward receives, and which ops ran: ``(array_types, called)``."""
    from spikescan_keras import _host

    array_types, called = [], []
    for op in (_host.LIFOp, _host.LIOp, _host.PeakOp):
        def spy(spec, inputs, _forward=op.forward, _op=op):
            called.append(_op)
            array_types.extend(type(a) for a in inputs)
            return _forward(spec, inputs)
        monkeypatch.setattr(op, "forward", staticmethod(spy))
    return array_types, called


def _kill_first_neuron(layer):
    """Make the first neuron of ``layer`` fire on no sample (every input weight negative), so that the next training
    step computes its silent-neuron objective (``spikescan.peak_voltage`` of that neuron)."""
    kernel = layer.kernel
    column = -keras.ops.abs(kernel[:, :1]) - 1.0
    kernel.assign(keras.ops.concatenate([column, kernel[:, 1:]], axis=1))


@pytest.mark.gpu
@pytest.mark.skipif(BACKEND != "torch", reason="the zero-copy CUDA path is the torch bridge's")
def test_torch_cuda_training_step_moves_no_spike_or_weight_data_through_host(tmp_path, monkeypatch):
    """One ``train_on_batch`` on CUDA tensors: spikescan receives CuPy arrays (handed over by DLPack) and the CUDA
    profiler, which sees every copy in the process (torch's and CuPy's), records no host<->device copy as large as
    the smallest spike or weight tensor; only scalars (loss, metrics, sizes) may cross."""
    import json

    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cupy = pytest.importorskip("cupy")
    from spikescan_keras import _host

    keras.utils.set_random_seed(0)
    x_np, y_np = timing_task(64)
    x_np = np.concatenate([x_np, np.random.default_rng(1).uniform(0, 14, (64, 13, 1)).astype(np.float32)], axis=1)
    x, y = torch.as_tensor(x_np, device="cuda"), torch.as_tensor(y_np, device="cuda")
    model = keras.Sequential([
        keras.Input(shape=(16, 1)),
        sk.LIFLayer(32, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=4, delays=True, max_delay=5.0),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="max", t_max=T_MAX),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)  # warm-up: builds the model, compiles the kernels
    assert model.layers[0].kernel.value.device.type == "cuda"
    _kill_first_neuron(model.layers[0])  # the silent-neuron objective then runs peak_voltage with delays

    array_types, called = _spy_host_ops(monkeypatch)

    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        model.train_on_batch(x, y)
        torch.cuda.synchronize()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]

    assert array_types and all(t is cupy.ndarray for t in array_types), array_types
    assert _host.PeakOp in called  # the dead neuron's peak, on the device
    kernels = [e["name"] for e in events if e.get("cat") == "kernel"]
    assert any("spikescan_lif" in k for k in kernels), "the profiler must see CuPy's kernels for this test to mean"
    copies = [(e["name"], e.get("args", {}).get("bytes")) for e in events if e.get("cat") == "gpu_memcpy"]
    host_copies = [(name, size) for name, size in copies if "DtoD" not in name]
    smallest = min(x_np.nbytes, 16 * 32 * 4)  # spike input, kernel
    assert all(size is not None and size < smallest // 8 for _, size in host_copies), host_copies


@pytest.mark.gpu
@pytest.mark.skipif(BACKEND != "jax", reason="the buffer route is the jax bridge's")
def test_jax_gpu_training_step_moves_no_spike_or_weight_data_through_host(tmp_path, monkeypatch):
    """One jitted ``train_on_batch`` on a GPU with CuPy (``SPIKESCAN_JAX_ROUTE=auto``: the buffer route): spikescan
    receives CuPy arrays on XLA's buffers, its kernels run on XLA's stream (the profiler puts them on a stream that
    also runs XLA's kernels), and the profiler, which sees every copy in the process (XLA's and CuPy's), records no
    host<->device copy as large as the smallest spike or weight tensor; only scalars (residual tokens, the LIF
    checks, spikescan's own checks, loss) may cross. Run it as ``XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
    KERAS_BACKEND=jax python -m pytest -m gpu tests/test_keras.py``."""
    import re

    import jax

    if jax.default_backend() != "gpu":
        pytest.skip("no GPU for jax")
    cupy = pytest.importorskip("cupy")
    from spikescan_keras import _host
    from spikescan_keras._bridge import jax as bridge

    monkeypatch.delenv("SPIKESCAN_JAX_ROUTE", raising=False)
    assert bridge.route() == "buffer"
    keras.utils.set_random_seed(0)
    x_np, y_np = timing_task(64)
    x_np = np.concatenate([x_np, np.random.default_rng(1).uniform(0, 14, (64, 13, 1)).astype(np.float32)], axis=1)
    x, y = jax.device_put(x_np), jax.device_put(y_np)
    model = keras.Sequential([
        keras.Input(shape=(16, 1)),
        sk.LIFLayer(32, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=4, delays=True, max_delay=5.0),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="max", t_max=T_MAX),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)  # warm-up: builds and compiles the step, calibrates, compiles the CuPy kernels
    assert model.layers[0].kernel.value.devices().pop().platform == "gpu"
    _kill_first_neuron(model.layers[0])  # the silent-neuron objective then runs peak_voltage with delays

    array_types, called = _spy_host_ops(monkeypatch)

    with jax.profiler.trace(str(tmp_path)):
        model.train_on_batch(x, y)
        jax.block_until_ready([v.value for v in model.variables])
    (path,) = tmp_path.glob("plugins/profile/*/*.xplane.pb")
    planes = [p for p in jax.profiler.ProfileData.from_file(str(path)).planes if p.name.startswith("/device:GPU")]
    events = [(line.name, event.name, dict(event.stats)) for plane in planes for line in plane.lines
              for event in line.events]

    assert array_types and all(t is cupy.ndarray for t in array_types), array_types
    assert _host.PeakOp in called  # the dead neuron's peak, on the device
    ours = {line for line, name, _ in events if "spikescan_lif" in name}
    assert ours, "the profiler must see CuPy's kernels for this test to mean anything"
    xla = {line for line, name, _ in events if "Memcpy" not in name and "spikescan" not in name}
    assert ours <= xla, ("CuPy's kernels must run on XLA's stream", ours, xla)
    copies = [(name, stats.get("memcpy_details", "")) for _, name, stats in events if "Memcpy" in name]
    host_copies = [(name, details) for name, details in copies if "D2D" not in name and "P2P" not in name]
    sizes = [re.search(r"size:(\d+)", str(details)) for _, details in host_copies]
    smallest = min(x_np.nbytes, 16 * 32 * 4)  # spike input, kernel
    assert all(m is not None and int(m.group(1)) < smallest // 8 for m in sizes), host_copies


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile is torch's")
def test_torch_compile_runs_the_op_eagerly_between_compiled_pieces():
    """A user's own ``torch.compile`` around fresh layers in training mode: they build (the ``"auto"`` initializers
    give the backend Python floats) and calibrate under dynamo, which does not trace into the host code (the
    bridge's ``apply`` is ``torch.compiler.disable``d; dynamo failed inside it before); then the compiled outputs and
    gradients are the eager ones."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("~30 s of compiling on the CPU side: not what a GPU run's time is for")
    lif, readout = two_layers(False)
    x = torch.as_tensor(spike_input(np.random.default_rng(0), batch=4))
    step = torch.compile(lambda t: readout(lif(t, training=True), training=True))
    step(x)
    assert int(lif.calibrated.value) == 1
    kernel = lif.kernel.value
    got = step(x)
    (g_got,) = torch.autograd.grad(got.sum(), kernel)  # before the next call updates the layers' statistics
    eager = readout(lif(x, training=True), training=True)
    (g_eager,) = torch.autograd.grad(eager.sum(), kernel)
    np.testing.assert_array_equal(got.detach().numpy(), eager.detach().numpy())
    np.testing.assert_array_equal(g_got.numpy(), g_eager.numpy())


@pytest.mark.skipif(BACKEND != "torch", reason="meta tensors are torch's")
def test_torch_meta_tensors_trace_shapes_without_simulating(monkeypatch):
    """Keras traces shapes with meta tensors (e.g. when fit builds its metrics): no simulation, right shapes."""
    import torch

    from spikescan_keras import _host

    lif = sk.LIFLayer(5, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3)
    readout = sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)
    lif.build((None, 4, 2))
    readout.build((None, 5, 3))

    def fail(*args):
        raise AssertionError("the simulation ran on meta tensors")

    monkeypatch.setattr(_host.LIFOp, "forward", staticmethod(fail))
    monkeypatch.setattr(_host.LIOp, "forward", staticmethod(fail))
    from spikescan_keras import _bridge

    x, kernel = torch.empty((7, 4, 2), device="meta"), torch.empty((4, 5), device="meta")

    times, counts = _bridge.apply(_host.LIFOp, lif._spec, (x, kernel))
    assert times.shape == (7, 5, 3) and times.dtype == torch.float32 and times.device.type == "meta"
    assert counts.shape == (7, 5) and counts.dtype == torch.int32
    (values,) = _bridge.apply(_host.LIOp, readout._spec, (times, torch.empty((5, 2), device="meta")))
    assert values.shape == (7, 2)


def test_a_training_call_on_an_empty_batch_changes_no_state():
    """A training call on a batch of no sample returns empty outputs and leaves the training state as it was: no
    calibration (the next real batch calibrates, as on a fresh layer), no firing statistics, no revival loss (its
    mean over no sample would be NaN). It used to fail in the statistics after marking the layer calibrated."""
    x = spike_input(np.random.default_rng(2), batch=4, n_in=5, max_in=3)
    small = keras.initializers.Constant(1e-4)  # silent before calibration

    def make(cls, **kw):
        return cls(3, tau_mem=10.0, tau_syn=5.0, kernel_initializer=small, **kw)

    for cls, kw in ((sk.LIFLayer, dict(max_spikes=4)), (sk.FirstSpikeReadout, dict(t_max=30.0))):
        layer, fresh = make(cls, **kw), make(cls, **kw)
        out = layer(x[:0], training=True)
        assert tuple(out.shape)[0] == 0
        assert int(ops.convert_to_numpy(layer.calibrated)) == 0
        assert float(ops.convert_to_numpy(layer.kernel_scale)) == layer.voltage_unit  # where it starts
        assert not layer.losses
        assert float(ops.convert_to_numpy(layer.dead_fraction)) == 0.0
        layer(x, training=True)
        fresh(x, training=True)
        scale = float(ops.convert_to_numpy(layer.kernel_scale))
        assert scale == float(ops.convert_to_numpy(fresh.kernel_scale)) > layer.voltage_unit
    readout = sk.LIReadout(3, tau_mem=10.0, tau_syn=5.0, readout="max", t_max=30.0)
    out = readout(x[:0], training=True)
    assert tuple(out.shape) == (0, 3) and not readout.losses
    assert float(ops.convert_to_numpy(readout.dead_fraction)) == 0.0


def test_spike_dropout_removes_spikes_and_keeps_the_rest_exactly():
    """SpikeDropout removes spikes (sets them to +inf and re-sorts each channel) while training and passes the input
    unchanged at inference; kept spikes keep their times bit for bit, removed ones get no gradient. keras' Dropout
    would have moved dropped spikes to t = 0 and scaled the kept ones."""
    rng = np.random.default_rng(4)
    x = np.sort(rng.uniform(0.0, 20.0, (64, 10, 6)), axis=-1).astype(np.float32)
    x[:, :, 5] = np.inf  # padding stays padding
    layer = sk.SpikeDropout(0.3, seed=1)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x)), x)
    out = ops.convert_to_numpy(layer(x, training=True))
    kept = np.isfinite(out)
    assert 0.6 < kept.sum() / np.isfinite(x).sum() < 0.8
    assert (np.diff(np.where(kept, out, 1e30), axis=-1) >= 0).all()  # ascending, +inf padding last
    for b, i in ((0, 0), (5, 3), (63, 9)):  # each channel's kept spikes are a subset of its spikes, unchanged
        assert set(out[b, i][kept[b, i]].tolist()) <= set(x[b, i].tolist())
    channels = ops.convert_to_numpy(sk.SpikeDropout(0.5, unit="channel", seed=2)(x, training=True))
    whole = np.isinf(channels[..., :5]).all(axis=-1) | np.isfinite(channels[..., :5]).all(axis=-1)
    assert whole.all() and 0.3 < np.isinf(channels[..., 0]).mean() < 0.7
    np.testing.assert_array_equal(channels[np.isfinite(channels[..., 0])], x[np.isfinite(channels[..., 0])])
    # Gradients reach the kept spikes through the re-sort, none the removed ones.
    loss = lambda t: ops.sum(ops.where(ops.isfinite(t), t * t, ops.zeros_like(t)))  # noqa: E731
    keras.utils.set_random_seed(0)
    drop = sk.SpikeDropout(0.5, seed=3)
    (grad,) = backend_grad(lambda t: loss(drop(t, training=True)), [x[:2]])
    removed = np.isfinite(x[:2]) & (grad == 0)
    assert removed.any() and (~removed & np.isfinite(x[:2]) & (grad != 2 * x[:2])).sum() == 0
    assert sk.SpikeDropout.from_config(sk.SpikeDropout(0.25, unit="channel", seed=5).get_config()).rate == 0.25
    for bad in (1.0, -0.1, "a", True):
        with pytest.raises(ValueError, match="rate must be a number in"):
            sk.SpikeDropout(bad)
    with pytest.raises(ValueError, match="unit must be one of 'spike', 'channel'"):
        sk.SpikeDropout(0.1, unit="neuron")


def test_kernel_constraints_hold_after_training_and_serialize():
    """kernel_constraint (e.g. NonNeg for excitatory-only weights) holds after every optimizer step, for LIFLayer,
    FirstSpikeReadout and LIReadout, and survives get_config / from_config."""
    x, y = timing_task(32)
    nonneg = keras.constraints.NonNeg()
    mixed = keras.initializers.RandomNormal(0.1, 0.3, seed=4)  # negative entries to clip at the first step
    hidden = sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, kernel_constraint=nonneg,
                         kernel_initializer=mixed)
    readout = sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, kernel_constraint="non_neg",
                           kernel_initializer=mixed)
    model = keras.Sequential([keras.Input(shape=(3, 1)), hidden, readout])
    model.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert all(ops.convert_to_numpy(layer.kernel).min() < 0 for layer in (hidden, readout))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for layer in (hidden, readout):
        assert ops.convert_to_numpy(layer.kernel).min() >= 0, layer.name
        clone = type(layer).from_config(layer.get_config())
        assert isinstance(clone.kernel_constraint, keras.constraints.NonNeg)
    first = sk.FirstSpikeReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, kernel_constraint=nonneg)
    assert isinstance(sk.FirstSpikeReadout.from_config(first.get_config()).kernel_constraint, keras.constraints.NonNeg)


def test_threshold_range_of_a_keras_layer():
    """A threshold whose voltage unit would overflow the float32 variables is refused at construction (1e300 gave
    "weights must be finite, got nan" at the first call)."""
    for bad in (1e300, 1e31, 1e-31):
        with pytest.raises(ValueError, match=r"threshold must be within \[1e-30, 1e\+30\] for a Keras layer"):
            sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, threshold=bad)
    x = spike_input(np.random.default_rng(1))
    for ok in (1e30, 1e-30):
        assert ops.convert_to_numpy(sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2,
                                                threshold=ok)(x, training=True)).shape == (3, 3, 2)


def test_concatenate_spikes_joins_tensors_of_different_widths(tmp_path):
    """Two LIF branches with other time constants and max_spikes, and a skip connection from the input, joined
    along the channel axis for one readout: keras' Concatenate refuses the different slot counts; ConcatenateSpikes
    pads each with +inf, trains both branches, and saves and loads."""
    keras.utils.set_random_seed(4)
    x, y = timing_task(64)
    inputs = keras.Input((3, 1))
    fast = sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, name="fast")(inputs)
    slow = sk.LIFLayer(6, tau_mem=2 * TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, name="slow")(inputs)
    with pytest.raises(ValueError, match="Concatenate"):
        keras.layers.Concatenate(axis=1)([inputs, fast, slow])
    joined = sk.ConcatenateSpikes(name="join")([inputs, fast, slow])
    assert tuple(joined.shape) == (None, 3 + 8 + 6, 3)
    model = keras.Model(inputs, sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="max", t_max=T_MAX)(joined))
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    parts = [x] + [ops.convert_to_numpy(model.get_layer(name)(x)) for name in ("fast", "slow")]
    expected = np.concatenate([np.pad(p, ((0, 0), (0, 0), (0, 3 - p.shape[2])), constant_values=np.inf)
                               for p in parts], axis=1)
    np.testing.assert_array_equal(ops.convert_to_numpy(model.get_layer("join")([x, *parts[1:]])), expected)
    before = {name: np.array(model.get_layer(name).kernel.numpy()) for name in ("fast", "slow")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    for name, kernel in before.items():  # gradients reached both branches through the join
        assert np.abs(model.get_layer(name).kernel.numpy() - kernel).max() > 0, name
    path = tmp_path / "joined.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    join = sk.ConcatenateSpikes()
    with pytest.raises(ValueError, match="joins a list of at least two spike tensors"):
        join([x])
    with pytest.raises(ValueError, match=r"input 1 must be a spike tensor \[batch, channels, slots\], got shape "
                                         r"\(64, 3\)"):
        sk.ConcatenateSpikes()([x, x[:, :, 0]])
    if BACKEND != "jax" or keras.config.floatx() == "float64":  # jax makes float32 of float64 without X64
        with pytest.raises(TypeError, match=r"different dtypes \['float32', 'float64'\]"):
            sk.ConcatenateSpikes()([ops.convert_to_tensor(x, "float32"), ops.convert_to_tensor(x, "float64")])


def test_concatenate_spikes_gradients_match_finite_differences(jax_route):
    """Backend autodiff through two LIF branches of different slot counts, the input as a skip connection,
    ConcatenateSpikes and a readout equals float64 central differences of spikescan's forward with NumPy's padded
    concatenation: every branch's kernel, the readout's and the input times (through both branches and the skip)."""
    rng = np.random.default_rng(12)
    x = spike_input(rng)  # [3, 4, 2]
    fast = sk.LIFLayer(5, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, name="fast")
    slow = sk.LIFLayer(3, tau_mem=2 * TAU_MEM, tau_syn=TAU_SYN, max_spikes=1, name="slow")
    join = sk.ConcatenateSpikes()
    readout = sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=T_MAX, tau_readout=30.0)
    readout(join([x, fast(x), slow(x)]))
    draw = np.random.default_rng(31)
    fast.kernel.assign(draw.normal(1.5, 0.75, fast.kernel.shape).astype(np.float32))
    slow.kernel.assign(draw.normal(1.5, 0.75, slow.kernel.shape).astype(np.float32))
    readout.kernel.assign(draw.normal(0.0, 0.3, readout.kernel.shape).astype(np.float32))
    for layer in (fast, slow):
        assert np.isfinite(ops.convert_to_numpy(layer(x))).sum() > 3, f"{layer.name} should fire"
    grad_values = rng.normal(size=(3, 2))
    params = [x, fast.kernel.numpy(), slow.kernel.numpy(), readout.kernel.numpy()]

    def run(layer, weights, inputs):
        return layer.stateless_call([weights], [v.value for v in layer.non_trainable_variables], inputs)[0]

    def loss_layers(x, w_fast, w_slow, w_out):
        joined = join([x, run(fast, w_fast, x), run(slow, w_slow, x)])
        values = run(readout, w_out, joined)
        return ops.sum(values * ops.convert_to_tensor(grad_values.astype(np.float32)))

    def loss_numpy(x, w_fast, w_slow, w_out):
        parts = [x] + [spikescan.lif_forward(x, w, tau_mem=tm, tau_syn=TAU_SYN, max_spikes=m).times
                       for w, tm, m in ((w_fast, TAU_MEM, 3), (w_slow, 2 * TAU_MEM, 1))]
        width = max(p.shape[2] for p in parts)
        joined = np.concatenate([np.pad(p, ((0, 0), (0, 0), (0, width - p.shape[2])), constant_values=np.inf)
                                 for p in parts], axis=1)
        values = spikescan.li_forward(joined, w_out, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral",
                                      t_max=T_MAX, tau_readout=30.0).values * readout.output_scale
        return np.sum(values * grad_values)

    assert_grads_match_finite_differences(["input_times", "fast_kernel", "slow_kernel", "readout_kernel"],
                                          loss_layers, loss_numpy, params)


def test_spike_dropout_keeps_the_dtype_of_the_spike_times():
    """Keras casts a layer's inputs to its compute dtype: float64 spike times came out float32, and under a float16
    policy a time of 70000 became +inf (a lost spike), at inference too. SpikeDropout passes them through."""
    x = np.array([[[19.99, 20.01, 70000.0]]])
    if BACKEND != "jax" or keras.config.floatx() == "float64":
        assert keras.backend.standardize_dtype(sk.SpikeDropout(0.2)(x).dtype) == "float64"
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        out = ops.convert_to_numpy(sk.SpikeDropout(0.2)(x.astype(np.float32)))
    finally:
        keras.config.set_dtype_policy(previous)
    np.testing.assert_array_equal(out, x.astype(np.float32))


@pytest.mark.skipif(BACKEND == "jax", reason="the torch and tensorflow bridges' host backward")
def test_second_order_gradient_through_the_op_raises():
    """The backward runs on the host, so its gradients have no gradient of their own: differentiating them (a
    gradient penalty) raises instead of silently leaving out every term through the op; first-order gradients taken
    with create_graph / under a recording tape are unchanged."""
    rng = np.random.default_rng(5)
    x = spike_input(rng)
    lif = sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, name="penalised")
    lif(x)
    lif.kernel.assign(np.random.default_rng(30).normal(1.5, 0.75, lif.kernel.shape).astype(np.float32))

    def loss(w):
        times, _ = lif.stateless_call([w], [v.value for v in lif.non_trainable_variables], x)
        return ops.sum(ops.where(ops.isfinite(times), times, 0.0))

    first = backend_grad(loss, [lif.kernel.numpy()])[0]
    assert np.abs(first).max() > 0
    match = "LIFOp \\(layer 'penalised'\\) has no second-order gradient"
    if BACKEND == "torch":
        import torch

        w = ops.convert_to_tensor(lif.kernel.numpy()).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(w), w, create_graph=True)
        np.testing.assert_array_equal(g.detach().cpu().numpy(), first)
        with pytest.raises(RuntimeError, match=match):
            torch.autograd.grad((g ** 2).sum() + (w ** 2).sum(), w)
        return
    import tensorflow as tf

    def second(w):
        with tf.GradientTape() as outer:
            outer.watch(w)
            with tf.GradientTape() as inner:
                inner.watch(w)
                value = loss(w)
            g = inner.gradient(value, w)
            penalty = tf.reduce_sum(g ** 2) + tf.reduce_sum(w ** 2)
        return g, outer.gradient(penalty, w)

    w = tf.convert_to_tensor(lif.kernel.numpy())
    for run in (second, tf.function(second)):
        with pytest.raises(RuntimeError, match=match):
            run(w)


def test_max_readout_empty_training_batch_warns_of_no_dead_unit():
    """A training call on an empty batch has no unit that never rose: no DeadReadoutWarning (LIFLayer's dead check
    already counted none), the same as LIOp's values on a non-empty batch would say."""
    from spikescan_keras._host import LIOp, LISpec

    spec = LISpec(TAU_MEM, TAU_SYN, "max", T_MAX, None, layer_name="r", warn_dead=True, warn_empty=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (values,), _ = LIOp.forward(spec, (np.zeros((0, 4, 2)), np.ones((4, 3))))
    assert values.shape == (0, 3)
    weights = np.ones((4, 3))
    weights[:, 0] = -1.0  # unit 0 never rises above V(0) = 0
    with pytest.warns(sk.DeadReadoutWarning):  # a batch where a unit never rose still warns
        LIOp.forward(spec, (np.full((2, 4, 2), 1.0), weights))


def test_runaway_firing_error_names_the_layer():
    """A RunawayFiringError from a layer names it (and keeps its type and fields): which of a model's layers ran
    away is otherwise not in the message."""
    x = np.zeros((1, 1, 1), np.float32)  # one strong input at t = 0: the neuron fires without end
    lif = sk.LIFLayer(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1, max_total_spikes=50, name="runaway",
                      kernel_initializer=keras.initializers.Constant(1e4))
    lif.build(x.shape)
    if BACKEND == "jax":
        error = RuntimeError
    else:
        error = spikescan.RunawayFiringError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sk.CappedSpikesWarning)
        with pytest.raises(error, match="(?s)max_total_spikes=50.*in layer 'runaway'"):
            lif(x)
        # The op itself keeps the fields (Keras re-raises a layer's exception with the message alone).
        from spikescan_keras._host import LIFOp

        with pytest.raises(spikescan.RunawayFiringError, match="in layer 'runaway'") as info:
            LIFOp.forward(lif._spec, (x.astype(np.float64), np.full((1, 2), 1e4)))
    assert (info.value.sample, info.value.limit) == (0, 50)
