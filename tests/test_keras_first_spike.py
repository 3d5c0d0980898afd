"""FirstSpikeReadout: logits from first spike times, with the voltage of neurons that do not fire. One process per
Keras backend (``KERAS_BACKEND``), as ``test_keras.py``."""

import warnings

import numpy as np
import pytest

from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()

from keras import ops  # noqa: E402

import spikescan  # noqa: E402
import spikescan_keras as sk  # noqa: E402
from test_keras import backend_grad, finite_differences, jax_route, timing_task  # noqa: E402,F401

TAU_MEM, TAU_SYN, T_MAX, TAU_LOGIT = 10.0, 4.0, 30.0, 3.0


def reference_logits(x, W, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=1.0):
    """The layer's logits in float64 NumPy, from ``lif_forward`` (first spikes) and ``li_forward`` (peaks)."""
    first = spikescan.lif_forward(x, W, tau_mem=tau_mem, tau_syn=tau_syn, threshold=threshold,
                                  max_spikes=1).times[:, :, 0]
    peaks = spikescan.li_forward(x, W, tau_mem=tau_mem, tau_syn=tau_syn, readout="max", t_max=T_MAX).values
    fired = first <= T_MAX
    return -np.where(fired, np.where(fired, first, 0.0), T_MAX + tau_mem * (threshold - peaks) / threshold) / TAU_LOGIT


def case(seed=0, batch=6, n_in=5, units=4):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 20.0, (batch, n_in, 2)), axis=-1)
    x[0, 0, 1] = np.inf
    W = rng.normal(0.6, 0.5, (n_in, units))
    return x, W


def layer(units=4, **kwargs):
    kwargs.setdefault("calibrate", None)
    return sk.FirstSpikeReadout(units, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX, tau_logit=TAU_LOGIT,
                                **kwargs)


def test_logits_are_first_spike_times_or_the_voltage_gap():
    x, W = case()
    out = layer(dtype="float64")
    out.build(x.shape)
    out.kernel.assign(W / out.voltage_unit)  # the kernel holds the weights over the voltage unit (exact: 2^k)
    expected = reference_logits(x, W)
    fired = -expected * TAU_LOGIT <= T_MAX
    assert fired.any() and (~fired).any(), "the case has neurons on both sides"
    logits = ops.convert_to_numpy(out(x))
    tol = 1e-12 if logits.dtype == np.float64 else 2e-6  # (jax without x64 computes a float64 layer in float32)
    np.testing.assert_allclose(logits, expected, rtol=tol, atol=tol)
    # Every neuron that fires by t_max beats every one that does not, on each sample.
    for b in range(len(x)):
        if fired[b].any() and (~fired[b]).any():
            assert logits[b][fired[b]].min() > logits[b][~fired[b]].max()


@pytest.mark.parametrize("per_neuron", [False, True])
def test_gradients_match_finite_differences(jax_route, per_neuron):
    """The kernel's gradient (and with trainable neuron parameters, the time constants' and thresholds') of a
    weighted sum of the logits, against central differences of the float64 reference."""
    x, W = case(seed=1)
    out = layer(trainable_time_constants=per_neuron, trainable_threshold=per_neuron)
    out.build(x.shape)
    g = np.random.default_rng(2).normal(size=(len(x), 4))
    tm = np.linspace(0.8, 1.2, 4) * TAU_MEM
    ts = np.linspace(1.1, 0.9, 4) * TAU_SYN
    th = np.linspace(0.9, 1.1, 4)
    names = ["kernel"] + (["tau_mem", "tau_syn", "threshold"] if per_neuron else [])
    params = [W.astype(np.float32)] + ([tm.astype(np.float32), ts.astype(np.float32), th.astype(np.float32)]
                                       if per_neuron else [])
    variables = [out.kernel] + ([out.tau_mem_kernel, out.tau_syn_kernel, out.threshold_kernel]
                                if per_neuron else [])
    # The variables hold the values over the layer's units (the reference takes the values).
    units = [out.voltage_unit] + ([out.tau_mem_unit, out.tau_syn_unit, out.voltage_unit] if per_neuron else [])
    params = [p / np.float32(u) for p, u in zip(params, units)]
    rest = [v.value for v in out.non_trainable_variables]
    x32, g32 = x.astype(np.float32), ops.convert_to_tensor(g.astype(np.float32))

    position = {id(v): k for k, v in enumerate(variables)}

    def loss_layer(*values):
        trainable = [values[position[id(v)]] if id(v) in position else v.value for v in out.trainable_variables]
        return ops.sum(out.stateless_call(trainable, rest, x32)[0] * g32)

    def loss_numpy(W, *p):
        W, p = W * units[0], [x * u for x, u in zip(p, units[1:])]
        if per_neuron:
            return float(np.sum(reference_logits(x, W, tau_mem=p[0], tau_syn=p[1], threshold=p[2]) * g))
        return float(np.sum(reference_logits(x, W) * g))

    expected = finite_differences(loss_numpy, [p.astype(np.float64) for p in params])
    got = backend_grad(loss_layer, params)
    for name, a, e in zip(names, got, expected):
        assert np.abs(e).max() > 0, name
        np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-4 * np.abs(e).max(), err_msg=name)


def test_a_silent_neuron_of_the_right_class_still_learns(jax_route):
    """With no neuron firing, the logits still depend on the weights (through the peaks): the gradient is not
    zero, where first spike times alone would give none."""
    x, W = case(seed=3)
    out = layer()
    out.build(x.shape)
    weak = (0.05 * W).astype(np.float32)
    assert (spikescan.lif_forward(x, weak.astype(np.float64), tau_mem=TAU_MEM, tau_syn=TAU_SYN,
                                  max_spikes=1).counts == 0).all()
    rest = [v.value for v in out.non_trainable_variables]
    stored = weak / np.float32(out.voltage_unit)  # the kernel holds the weights over the voltage unit
    (grad,) = backend_grad(lambda k: ops.sum(out.stateless_call([k], rest, x.astype(np.float32))[0][:, 0]), [stored])
    assert np.abs(grad).max() > 0


def test_trains_and_round_trips(jax_route, tmp_path):
    keras.utils.set_random_seed(0)
    x, y = timing_task()
    model = keras.Sequential([keras.Input(shape=(3, 1)),
                              sk.LIFLayer(16, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2),
                              sk.FirstSpikeReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX)])
    model.compile(optimizer=keras.optimizers.Adam(0.02),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before, _ = model.evaluate(x, y, verbose=0)
        model.fit(x, y, batch_size=32, epochs=15, verbose=0)
        after, accuracy = model.evaluate(x, y, verbose=0)
    assert after < 0.6 * before and accuracy >= 0.9, (before, after, accuracy)
    # A readout neuron's later spikes are not its logit's business: no capped-spike warning for them.
    assert not [w for w in caught if w.category is sk.CappedSpikesWarning and "first_spike" in str(w.message)]
    out = model.layers[-1]
    assert out.tau_logit == TAU_SYN and out.max_spikes == 1 and int(out.calibrated.numpy()) == 1
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[-1].get_config() == out.get_config()
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded.predict(x, verbose=0)),
                                  ops.convert_to_numpy(model.predict(x, verbose=0)))


def test_calibration_does_not_bound_bursts():
    """The first-batch calibration brings the fraction of firing (sample, neuron) pairs into its target, but unlike
    ``LIFLayer`` it does not also scale the kernel down for bursts: only each neuron's first spike is read, and the
    burst bound of ``max_spikes=1`` (a mean of at most 1/2 spike) silenced most output neurons (on sklearn digits,
    3 seeds, 6 epochs at learning rate 1e-2: 46% test accuracy with it, 80% without). Here two of four neurons
    fire two spikes on every sample (fraction 0.5, inside the target): the readout keeps its scale, where a
    ``LIFLayer`` with ``max_spikes=1`` and the same weights scales down."""
    x = np.tile(np.array([[[1.0], [2.0], [3.0]]]), (8, 1, 1))
    W = np.array([[3.0, 3.0, -1.0, -1.0]] * 3)
    first = spikescan.lif_forward(x, W, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1)
    assert (first.counts[:, :2] >= 2).all() and (first.counts[:, 2:] == 0).all()
    scales = {}
    for name, lay in (("readout", layer(calibrate=(0.3, 0.9), kernel_initializer=keras.initializers.Constant(W))),
                      ("lif", sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=1,
                                          kernel_initializer=keras.initializers.Constant(W)))):
        lay(ops.convert_to_tensor(x), training=True)
        assert int(ops.convert_to_numpy(lay.calibrated)) == 1
        scales[name] = float(ops.convert_to_numpy(lay.kernel_scale)) / lay.voltage_unit
    assert scales["readout"] == 1.0 and scales["lif"] < 1.0, scales


def test_voltage_step_and_files_saved_before_it(tmp_path):
    """The kernel is stored over 8 times the threshold's power of two (``VOLTAGE_STEP``: an optimizer step moves
    the weights 8 times as far as in an ``LIFLayer``, for a first-spike readout whose logits moved about 20 times
    less per step than ``LIReadout``'s); the weights it computes with are unchanged. A layer saved before
    (``parameter_rule`` 3) rebuilds with the factor 1, and its weights file loads into a new layer converted:
    the same logits."""
    x, W = case(seed=4)
    new = layer(threshold=0.3)
    new.build(x.shape)
    assert sk.FirstSpikeReadout.VOLTAGE_STEP == 8.0 and new.voltage_unit == 0.25 * 8.0
    assert float(ops.convert_to_numpy(new.kernel_scale)) == new.voltage_unit
    assert new.get_config()["parameter_rule"] == 4
    config = new.get_config()
    config["parameter_rule"] = 3
    old = sk.FirstSpikeReadout.from_config(config)
    old.build(x.shape)
    assert old.voltage_unit == 0.25 and old.get_config()["parameter_rule"] == 3
    old.kernel.assign((W / old.voltage_unit).astype(np.float32))
    logits = ops.convert_to_numpy(old(x.astype(np.float32)))
    np.testing.assert_allclose(logits, reference_logits(x, W.astype(np.float32), threshold=0.3), rtol=2e-6, atol=2e-6)
    inputs = keras.Input(x.shape[1:])
    saved = keras.Model(inputs, old(inputs))
    saved.save_weights(tmp_path / "old.weights.h5")
    fresh = layer(threshold=0.3)
    inputs = keras.Input(x.shape[1:])
    loaded = keras.Model(inputs, fresh(inputs))
    loaded.load_weights(tmp_path / "old.weights.h5")
    np.testing.assert_allclose(ops.convert_to_numpy(fresh.kernel), ops.convert_to_numpy(old.kernel) / 8.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x.astype(np.float32))), logits)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_spikes=3), "does not take max_spikes=3"),
    (dict(max_spikes=0), "does not take max_spikes=0"),  # falsy values were ignored
    (dict(max_spikes=None), "does not take max_spikes=None"),
    (dict(delays=True), "does not take delays=True"),
    (dict(recurrent=True), "does not take recurrent=True"),
    (dict(t_max=-1.0), "t_max must be a positive finite number"),
    (dict(tau_logit=0.0), "tau_logit must be a positive finite number"),
])
def test_bad_config(kwargs, match):
    args = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=T_MAX) | kwargs
    with pytest.raises(ValueError, match=match):
        sk.FirstSpikeReadout(2, **args)


def test_nir_export_names_the_layer():
    pytest.importorskip("nir")
    model = keras.Sequential([keras.Input(shape=(3, 1)), layer(2, name="fs")])
    with pytest.raises(ValueError, match="layer 'fs' is a FirstSpikeReadout"):
        sk.export_nir(model)
