"""LIFLayer(trainable_time_constants=True, trainable_threshold=True): per-neuron tau_mem / tau_syn / threshold
weights trained by their exact gradients.
One process per backend (KERAS_BACKEND=torch|jax|tensorflow python -m pytest tests/test_keras_time_constants.py)."""

import numpy as np
import pytest

from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()

from keras import ops  # noqa: E402

import spikescan  # noqa: E402
import spikescan_keras as sk  # noqa: E402
from test_keras import (  # noqa: E402
    assert_grads_match_finite_differences, backend_grad, finite_differences, spike_input, timing_task)

TAU_MEM, TAU_SYN = 10.0, 4.0


def _layer(**kw):
    return sk.LIFLayer(5, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, trainable_time_constants=True,
                       calibrate=None, silence_penalty=0.0, **kw)


def test_time_constant_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    x = spike_input(rng, n_in=4, max_in=3)
    lif = _layer(kernel_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=2))
    lif(x)
    lif.set_time_constants(rng.uniform(6.0, 14.0, 5).astype(np.float32), rng.uniform(2.0, 6.0, 5).astype(np.float32))
    assert np.isfinite(ops.convert_to_numpy(lif(x))).sum() > 6, "the case should have spikes"
    names = [v.path.split("/")[-1] for v in lif.trainable_variables]
    assert names == ["kernel", "tau_mem_kernel", "tau_syn_kernel"]
    grad_times = rng.normal(size=(3, 5, 3))
    params = [v.numpy() for v in lif.trainable_variables]

    def loss_layer(*weights):
        times, _ = lif.stateless_call(list(weights), [v.value for v in lif.non_trainable_variables], x)
        finite = ops.where(ops.isfinite(times), times, 0.0)
        return ops.sum(finite * ops.convert_to_tensor(grad_times.astype(np.float32)))

    def loss_numpy(w, tau_mem, tau_syn):
        res = spikescan.lif_forward(x.astype(np.float64), w, tau_mem=tau_mem * lif.tau_mem_unit,
                                    tau_syn=tau_syn * lif.tau_syn_unit, max_spikes=3)
        return np.sum(np.where(np.isfinite(res.times), res.times, 0.0) * grad_times)

    assert_grads_match_finite_differences(names, loss_layer, loss_numpy, params)


def test_fit_moves_the_time_constants_within_their_floor_and_save_load_keeps_them(tmp_path):
    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(0.0, 20.0, (32, 4, 2)), axis=-1).astype(np.float32)
    y = (x[:, 0, 0] < x[:, 1, 0]).astype(np.int32)
    model = keras.Sequential([
        keras.Input(shape=(4, 2)),
        sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, trainable_time_constants=True,
                    min_time_constant=3.0, name="hidden"),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=40.0),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    lif = model.get_layer("hidden")
    tau_mem, tau_syn = lif.time_constants()[0], lif.time_constants()[1]
    assert not np.allclose(tau_mem, TAU_MEM) and not np.allclose(tau_syn, TAU_SYN)  # they trained
    assert tau_mem.min() >= 3.0 and tau_syn.min() >= 3.0  # PositiveFloor (a large step would cross it)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    again = loaded.get_layer("hidden")
    assert again.trainable_time_constants and again.min_time_constant == 3.0
    np.testing.assert_array_equal(again.time_constants()[0], tau_mem)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x[:4])), ops.convert_to_numpy(model(x[:4])))


@pytest.mark.parametrize("bad", ["yes", 1])
def test_options_are_checked(bad):
    with pytest.raises(TypeError, match="trainable_time_constants"):
        sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, trainable_time_constants=bad)
    with pytest.raises(ValueError, match="min_time_constant"):
        sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, min_time_constant=-1.0)
    with pytest.raises(TypeError, match="trainable_threshold"):
        sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, trainable_threshold=bad)
    with pytest.raises(ValueError, match="min_threshold"):
        sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, min_threshold=0.0)
    # One value per neuron goes through the trainable parameters, which the error names.
    with pytest.raises(ValueError, match=r"threshold must be a positive finite number .* trainable_threshold=True and "
                                         r"set_thresholds\(\)"):
        sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, threshold=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"tau_mem must be .* trainable_time_constants=True and set_time_constants"):
        sk.LIReadout(3, tau_mem=[10.0, 12.0, 14.0], tau_syn=TAU_SYN, t_max=20.0)


def test_nir_round_trip_keeps_the_trained_time_constants(tmp_path):
    nir = pytest.importorskip("nir")
    rng = np.random.default_rng(6)
    model = keras.Sequential([keras.Input(shape=(4, 2)), _layer(name="hidden"),
                              sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=40.0)])
    lif = model.get_layer("hidden")
    lif.set_time_constants(rng.uniform(6.0, 14.0, 5).astype(np.float32), rng.uniform(2.0, 6.0, 5).astype(np.float32))
    graph = sk.export_nir(model)
    np.testing.assert_allclose(graph.nodes["hidden"].tau_mem * 1e3, lif.time_constants()[0], rtol=1e-6)
    path = tmp_path / "model.nir"
    nir.write(path, graph)
    back = sk.import_nir(nir.read(path))
    again = back.get_layer("hidden")
    assert again.trainable_time_constants
    np.testing.assert_allclose(again.time_constants()[0], lif.time_constants()[0], rtol=1e-6)
    np.testing.assert_allclose(again.time_constants()[1], lif.time_constants()[1], rtol=1e-6)
    x = spike_input(rng, n_in=4, max_in=2)
    np.testing.assert_allclose(ops.convert_to_numpy(back(x)), ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_trainable_threshold_gradients_fit_and_nir(tmp_path):
    """LIFLayer(trainable_threshold=True): per-neuron thresholds with exact gradients (finite differences), trained
    by fit above their floor, and carried through save/load and NIR."""
    rng = np.random.default_rng(7)
    x = spike_input(rng, n_in=4, max_in=3)
    lif = _layer(trainable_threshold=True, kernel_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=3))
    lif(x)
    lif.set_thresholds(1.25)  # one number for every unit
    np.testing.assert_allclose(lif.thresholds(), np.full(5, 1.25), rtol=1e-7)
    lif.set_thresholds(rng.uniform(0.7, 1.3, 5))
    names = [v.path.split("/")[-1] for v in lif.trainable_variables]
    assert names == ["kernel", "tau_mem_kernel", "tau_syn_kernel", "threshold"]
    grad_times = rng.normal(size=(3, 5, 3))
    params = [v.numpy() for v in lif.trainable_variables]

    def loss_layer(*weights):
        times, _ = lif.stateless_call(list(weights), [v.value for v in lif.non_trainable_variables], x)
        return ops.sum(ops.where(ops.isfinite(times), times, 0.0) * ops.convert_to_tensor(grad_times.astype("f4")))

    def loss_numpy(w, tau_mem, tau_syn, threshold):
        res = spikescan.lif_forward(x.astype(np.float64), w, tau_mem=tau_mem * lif.tau_mem_unit,
                                    tau_syn=tau_syn * lif.tau_syn_unit, threshold=threshold,
                                    max_spikes=3)
        return np.sum(np.where(np.isfinite(res.times), res.times, 0.0) * grad_times)

    expected = finite_differences(loss_numpy, [p.astype(np.float64) for p in params])
    got = backend_grad(loss_layer, params)
    assert np.abs(expected[3]).max() > 0
    np.testing.assert_allclose(got[3], expected[3], rtol=1e-4, atol=1e-4 * np.abs(expected[3]).max())

    y = (x[:, 0, 0] < x[:, 1, 0]).astype(np.int32)
    model = keras.Sequential([
        keras.Input(shape=(4, 3)),
        sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, trainable_threshold=True,
                    min_threshold=0.6, name="hidden"),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=40.0),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.repeat(x, 8, axis=0), np.repeat(y, 8), batch_size=8, epochs=3, verbose=0)
    hidden = model.get_layer("hidden")
    th = hidden.thresholds()
    assert not np.allclose(th, 1.0) and th.min() >= 0.6
    path = tmp_path / "model.keras"
    model.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path).get_layer("hidden").thresholds(), th)
    nir = pytest.importorskip("nir")
    nir.write(tmp_path / "model.nir", sk.export_nir(model))
    back = sk.import_nir(nir.read(tmp_path / "model.nir"))
    assert back.get_layer("hidden").trainable_threshold
    np.testing.assert_allclose(back.get_layer("hidden").thresholds(), th, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(back(x)), ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# LIReadout(trainable_time_constants=True): per-unit tau_mem / tau_syn of the readout (spikescan.li_backward's
# time_constant_grads).
# ---------------------------------------------------------------------------------------------------------------

def _readout(**kw):
    kw.setdefault("readout", "integral")
    return sk.LIReadout(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=25.0, trainable_time_constants=True, **kw)


@pytest.mark.parametrize("readout,tau_readout", [("integral", None), ("integral", 15.0), ("final", None),
                                                 ("max", None)])
def test_readout_time_constant_gradients_match_finite_differences(readout, tau_readout):
    rng = np.random.default_rng(8)
    x = spike_input(rng, n_in=4, max_in=3)
    layer = _readout(readout=readout, tau_readout=tau_readout,
                     kernel_initializer=keras.initializers.RandomNormal(0.5, 1.0, seed=4))
    layer(x)
    # Per unit: unequal, tau_mem < tau_syn, and exactly equal time constants.
    layer.set_time_constants(np.array([10.0, 3.0, 6.0], np.float32), np.array([4.0, 5.0, 6.0], np.float32))
    names = [v.path.split("/")[-1] for v in layer.trainable_variables]
    assert names == ["kernel", "tau_mem_kernel", "tau_syn_kernel"]
    grad_values = rng.normal(size=(3, 3))
    params = [v.numpy() for v in layer.trainable_variables]

    def loss_layer(*weights):
        values, _ = layer.stateless_call(list(weights), [v.value for v in layer.non_trainable_variables], x)
        return ops.sum(values * ops.convert_to_tensor(grad_values.astype(np.float32)))

    def loss_numpy(w, tau_mem, tau_syn):
        res = spikescan.li_forward(x.astype(np.float64), w, tau_mem=tau_mem * layer.tau_mem_unit,
                                   tau_syn=tau_syn * layer.tau_syn_unit, readout=readout,
                                   t_max=25.0, tau_readout=tau_readout)
        return layer.output_scale * np.sum(res.values * grad_values)  # a constant set at construction

    assert_grads_match_finite_differences(names, loss_layer, loss_numpy, params)


def test_readout_fit_moves_the_time_constants_within_their_floor_and_save_load_keeps_them(tmp_path):
    rng = np.random.default_rng(9)
    x = np.sort(rng.uniform(0.0, 20.0, (32, 4, 2)), axis=-1).astype(np.float32)
    y = (x[:, 0, 0] < x[:, 1, 0]).astype(np.int32)
    model = keras.Sequential([keras.Input(shape=(4, 2)),
                              _readout(readout="max", min_time_constant=3.0, name="readout")])
    model.compile(optimizer=keras.optimizers.Adam(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    layer = model.get_layer("readout")
    assert layer.get_config()["trainable_time_constants"] and layer.get_config()["min_time_constant"] == 3.0
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    tau_mem, tau_syn = layer.time_constants()[0], layer.time_constants()[1]
    assert not np.allclose(tau_mem, TAU_MEM) and not np.allclose(tau_syn, TAU_SYN)  # they trained
    assert tau_mem.min() >= 3.0 and tau_syn.min() >= 3.0  # PositiveFloor
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    again = loaded.get_layer("readout")
    assert again.trainable_time_constants and again.min_time_constant == 3.0
    np.testing.assert_array_equal(again.time_constants()[0], tau_mem)
    np.testing.assert_array_equal(again.time_constants()[1], tau_syn)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x[:4])), ops.convert_to_numpy(model(x[:4])))


def test_readout_nir_round_trip_keeps_the_trained_time_constants(tmp_path):
    nir = pytest.importorskip("nir")
    rng = np.random.default_rng(10)
    model = keras.Sequential([keras.Input(shape=(4, 2)), _layer(name="hidden"),
                              _readout(tau_readout=15.0, min_time_constant=1.5, name="readout")])
    layer = model.get_layer("readout")
    layer.set_time_constants(rng.uniform(6.0, 14.0, 3).astype(np.float32), rng.uniform(2.0, 6.0, 3).astype(np.float32))
    graph = sk.export_nir(model)
    np.testing.assert_allclose(graph.nodes["readout"].tau_mem * 1e3, layer.time_constants()[0], rtol=1e-6)
    nir.write(tmp_path / "model.nir", graph)
    back = sk.import_nir(nir.read(tmp_path / "model.nir"))
    again = back.get_layer("readout")
    assert again.trainable_time_constants and again.min_time_constant == 1.5
    assert (again.tau_mem, again.tau_syn) == (TAU_MEM, TAU_SYN)  # the arguments, from the metadata
    np.testing.assert_allclose(again.time_constants()[0], layer.time_constants()[0], rtol=1e-6)
    np.testing.assert_allclose(again.time_constants()[1], layer.time_constants()[1], rtol=1e-6)
    x = spike_input(rng, n_in=4, max_in=2)
    np.testing.assert_allclose(ops.convert_to_numpy(back(x)), ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, name", [
    (lambda: sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, trainable_threshold=True,
                         min_threshold=1e-50), "min_threshold"),
    (lambda: sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, trainable_time_constants=True,
                         min_time_constant=1e-50), "min_time_constant"),
    (lambda: sk.LIReadout(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=20.0, trainable_time_constants=True,
                          min_time_constant=1e-50), "min_time_constant"),
])
def test_a_floor_that_rounds_to_zero_in_float32_is_refused(make, name):
    """A positive floor that is 0 in the float32 variable let the constraint (PositiveFloor) and the setters keep
    thresholds or time constants at 0: set_thresholds(zeros) was accepted and the next call failed in spikescan."""
    with pytest.raises(ValueError, match=rf"{name}=1e-50 is 0 in the layer's float32 variables"):
        make().build((None, 4, 2))


@pytest.mark.parametrize("bad", ["yes", 1])
def test_readout_options_are_checked(bad):
    with pytest.raises(TypeError, match="trainable_time_constants"):
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=10.0, trainable_time_constants=bad)
    with pytest.raises(ValueError, match="min_time_constant"):
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=10.0, min_time_constant=-1.0)
    assert sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=10.0).min_time_constant == 0.05 * TAU_SYN


def test_time_parameters_train_alike_in_any_time_unit():
    """The same model in milliseconds and in seconds (every time / 1000): one Adam step moves the delays and the
    time constants by about the same fraction of their size in both. They are stored over powers of two near
    tau_mem and tau_syn (exact to multiply and divide: NIR stays lossless), so the fractions agree within a factor
    sqrt(2); stored in time units, the model in seconds moved them 1000 times faster (its trainable time constants
    diverged or ran away)."""
    x, y = timing_task(n=32)
    moved = {}
    for u in (1.0, 1e-3):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((3, 1)),
            sk.LIFLayer(8, tau_mem=TAU_MEM * u, tau_syn=TAU_SYN * u, max_spikes=2, delays=True, max_delay=10.0 * u,
                        trainable_time_constants=True, name="hidden"),
            sk.LIReadout(2, tau_mem=TAU_MEM * u, tau_syn=TAU_SYN * u, readout="max", t_max=40.0 * u,
                         trainable_time_constants=True, name="readout")])
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        hidden, readout = model.get_layer("hidden"), model.get_layer("readout")
        model(x * u)
        scales = [10.0 * u, TAU_MEM * u, TAU_SYN * u, TAU_MEM * u, TAU_SYN * u]

        def values():
            return [hidden.delay_values(), *hidden.time_constants(), *readout.time_constants()]

        before = values()
        model.train_on_batch(x * u, y)
        moved[u] = np.array([np.abs(a - b).max() / s for a, b, s in zip(values(), before, scales)])
    assert np.all(moved[1.0] > 0), moved[1.0]
    ratio = moved[1e-3] / moved[1.0]
    assert np.all((ratio > 0.7) & (ratio < 1.42)), ratio


def test_time_parameters_of_files_saved_before_the_units_load_in_time_units(tmp_path):
    """A layer config without ``parameter_rule`` (saved before the units) holds its delays and time constants in
    time units: every unit is 1, and the values read back are the stored ones."""
    layer = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, delays=True, max_delay=5.0,
                        trainable_time_constants=True)
    config = layer.get_config()
    assert config["parameter_rule"] == 3 and layer.delay_unit == 8.0 and layer.tau_syn_unit == 4.0
    del config["parameter_rule"]
    old = sk.LIFLayer.from_config(config)
    old.build((None, 3, 2))
    assert old.delay_unit == old.tau_mem_unit == old.tau_syn_unit == 1.0
    old.delay_kernel.assign(np.full((3, 4), 2.5, np.float32))
    old.tau_mem_kernel.assign(np.full(4, 12.0, np.float32))
    np.testing.assert_array_equal(old.delay_values(), 2.5)
    np.testing.assert_array_equal(old.time_constants()[0], 12.0)
    assert old.get_config()["parameter_rule"] == 1
    readout_config = sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=20.0,
                                  trainable_time_constants=True).get_config()
    del readout_config["parameter_rule"]
    assert sk.LIReadout.from_config(readout_config).tau_mem_unit == 1.0


def test_time_parameter_accessors_check_their_arguments():
    layer = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, delays=True, trainable_time_constants=True)
    with pytest.raises(ValueError, match="not built yet"):
        layer.delay_values()
    layer.build((None, 3, 2))
    with pytest.raises(ValueError, match=r"delays must have shape \(3, 4\), got \(4, 3\)"):
        layer.set_delay_values(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"has no recurrent delays \(recurrent_delays=False\)"):
        layer.recurrent_delay_values()
    # The former attributes fail instead of returning values over a unit, and say what replaced them (on torch too,
    # whose module lookup would answer a failed attribute with its own message).
    with pytest.raises(AttributeError, match=r"LIFLayer.delays was replaced by delay_values\(\)"):
        layer.delays
    with pytest.raises(AttributeError, match=r"LIReadout.tau_syn_per_neuron was replaced by time_constants\(\)\[1\]"):
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=20.0).tau_syn_per_neuron
    layer.set_delay_values(np.full((3, 4), 3.0))
    layer.set_time_constants(11.0, np.full(4, 3.5))  # a number sets every unit (a scalar was refused by shape)
    assert np.all(layer.delay_values() == 3.0) and np.all(layer.time_constants()[1] == 3.5)
    np.testing.assert_array_equal(layer.time_constants()[0], np.full(4, 11.0))
    # Both checked before either is assigned: a refused tau_syn leaves tau_mem as it was.
    for bad_syn, match in ((np.array([4.0, np.nan, 4.0, 4.0]), "tau_syn must be >= .* got nan"),
                           (np.ones(3), r"tau_syn must have shape \(4,\)"),
                           (["a"] * 4, "tau_syn must be an array of real numbers")):
        with pytest.raises((ValueError, TypeError), match=match):
            layer.set_time_constants(np.full(4, 8.0), bad_syn)
        np.testing.assert_array_equal(layer.time_constants()[0], 11.0)
    with pytest.raises(TypeError, match="tau_mem must be an array of real numbers"):
        layer.set_time_constants("a", np.full(4, 3.5))
    fixed = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2)
    np.testing.assert_array_equal(fixed.time_constants()[0], np.full(4, TAU_MEM))


@pytest.mark.parametrize("variant", ["kernel", "threshold", "recurrent"])
def test_models_train_alike_at_any_threshold(variant):
    """A LIF neuron with reset to 0 computes the same spikes when its threshold and its weights are multiplied by
    one factor. The layers store the kernel (and the trainable thresholds, and the recurrent weights) over
    ``voltage_unit``, the threshold rounded to a power of two, so the same model at threshold 16 and at threshold 1
    trains alike, step for step: the "auto" initialisers, the calibration and the revival objective scale with the
    threshold, and Adam steps the same variables. Stored in voltage units, the model at threshold 16 moved its
    weights 16 times slower relative to their size (threshold 15 on Yin-Yang: 67% against 79% after 4 epochs)."""
    x, y = timing_task(n=32)
    options = dict(threshold=dict(trainable_threshold=True), recurrent=dict(recurrent=True), kernel={})[variant]
    runs = {}
    for threshold in (1.0, 16.0):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([
            keras.Input((3, 1)),
            sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=threshold, max_spikes=3, name="hidden",
                        **options),
            sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=40.0)])
        model.compile(optimizer=keras.optimizers.Adam(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        hidden = model.get_layer("hidden")
        assert hidden.voltage_unit == threshold
        for _ in range(4):
            model.train_on_batch(x, y)
        scale = float(ops.convert_to_numpy(hidden.kernel_scale))
        values = [ops.convert_to_numpy(hidden.kernel) * scale / threshold]
        if variant == "threshold":
            values.append(hidden.thresholds() / threshold)
        if variant == "recurrent":
            values.append(hidden.recurrent_weights() / threshold)
        runs[threshold] = values, scale / threshold, ops.convert_to_numpy(model(x))
    (values_1, calibration_1, logits_1), (values_16, calibration_16, logits_16) = runs[1.0], runs[16.0]
    assert calibration_16 == pytest.approx(calibration_1, rel=1e-5)
    for a, b in zip(values_1, values_16):
        assert np.abs(a - runs[1.0][0][0][0, 0]).max() > 0
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
    np.testing.assert_allclose(logits_16, logits_1, rtol=1e-4, atol=1e-4 * np.abs(logits_1).max())


def test_the_voltage_unit_and_the_threshold_accessors():
    """``voltage_unit`` is the threshold rounded to a power of two; the kernel starts over it (``kernel_scale`` holds
    it), ``thresholds()`` / ``set_thresholds()`` read and write the trained thresholds in voltage units (refusing
    what the floor would move), and the former attribute ``threshold_per_neuron`` names them."""
    x = spike_input(np.random.default_rng(5), n_in=4, max_in=3)
    layer = sk.LIFLayer(5, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=20.0, max_spikes=3, trainable_threshold=True,
                        min_threshold=2.5)
    layer(x)
    assert layer.voltage_unit == 16.0 and float(ops.convert_to_numpy(layer.kernel_scale)) == 16.0
    np.testing.assert_array_equal(layer.thresholds(), 20.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.threshold_kernel), 1.25)
    layer.set_thresholds(np.linspace(2.5, 30.0, 5))
    np.testing.assert_allclose(layer.thresholds(), np.linspace(2.5, 30.0, 5), rtol=1e-7)
    layer.threshold_kernel.assign(layer.threshold_kernel.constraint(layer.threshold_kernel - 100.0))
    layer.set_thresholds(layer.thresholds())  # the floor, read back, is accepted unchanged
    for bad, match in ((np.full(5, 2.4), "thresholds must be >= 2.5"), (np.full(5, np.nan), "got nan"),
                       (np.ones(4), r"thresholds must have shape \(5,\), got \(4,\)"),
                       (np.full(5, 1e300), "must fit the layer's float32 variable")):
        before = ops.convert_to_numpy(layer.threshold_kernel).copy()
        with pytest.raises(ValueError, match=match):
            layer.set_thresholds(bad)
        np.testing.assert_array_equal(ops.convert_to_numpy(layer.threshold_kernel), before)
    with pytest.raises(AttributeError, match=r"thresholds\(\) / set_thresholds\(\)"):
        layer.threshold_per_neuron
    fixed = sk.LIFLayer(3, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=0.3, max_spikes=2)
    fixed(x)
    assert fixed.voltage_unit == 0.25
    np.testing.assert_array_equal(fixed.thresholds(), 0.3)
    with pytest.raises(ValueError, match="no trainable thresholds"):
        fixed.set_thresholds(np.ones(3))
    # Saved before the voltage unit (parameter_rule 2): the kernel holds the weights themselves.
    config = fixed.get_config()
    assert config["parameter_rule"] == 3
    config["parameter_rule"] = 2
    old = sk.LIFLayer.from_config(config)
    old(x)
    assert old.voltage_unit == 1.0 and float(ops.convert_to_numpy(old.kernel_scale)) == 1.0
    assert old.get_config()["parameter_rule"] == 2


def test_weights_files_saved_over_another_voltage_unit_load_converted(tmp_path):
    """Weights files carry no config: a layer stores its voltage unit as its last variable, so weights saved before
    the unit (one variable fewer, values in voltage units) or over another unit are converted on loading
    (``load_weights``, ``set_weights``) and compute what they computed where they were saved; read over the wrong
    unit, threshold 20's trained thresholds came back 16 times too large and the recurrent weights ran away."""
    x = spike_input(np.random.default_rng(9), n_in=4, max_in=3)

    def model(layer):
        return keras.Sequential([keras.Input((4, 3)), layer,
                                 sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=40.0)])

    options = dict(tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, trainable_threshold=True, recurrent=True,
                   calibrate=None)
    keras.utils.set_random_seed(4)
    config = sk.LIFLayer(5, threshold=20.0, **options).get_config()
    config["parameter_rule"] = 2
    old = model(sk.LIFLayer.from_config(config))
    hidden = old.layers[0]
    assert hidden.voltage_unit == 1.0 and len(hidden.variables) == 9
    hidden.kernel_scale.assign(0.75)  # as if calibrated
    hidden.set_thresholds(np.linspace(15.0, 25.0, 5))
    path = tmp_path / "old.weights.h5"
    old.save_weights(path)
    want = ops.convert_to_numpy(old(x))
    assert np.isfinite(ops.convert_to_numpy(hidden(x))).sum() > 5

    def effective(layer):
        return (ops.convert_to_numpy(layer.kernel) * float(ops.convert_to_numpy(layer.kernel_scale)),
                layer.thresholds(), layer.recurrent_weights())

    new = model(sk.LIFLayer(5, threshold=20.0, **options))
    new.load_weights(path)
    layer = new.layers[0]
    assert layer.voltage_unit == 16.0 and len(layer.variables) == 10
    assert float(ops.convert_to_numpy(layer.kernel_scale)) == 12.0  # the unit times the factor
    for got, expected in zip(effective(layer), effective(hidden)):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(new(x)), want, rtol=1e-5, atol=1e-6)
    # Over another unit (threshold 5: unit 4): the layer's set_weights converts; the model's assigns every variable
    # (the unit's too), which the layer computes with, and the next setter converts.
    for through_layer in (True, False):
        other = model(sk.LIFLayer(5, threshold=5.0, **options))
        if through_layer:
            other.layers[0].set_weights(new.layers[0].get_weights())
            other.layers[1].set_weights(new.layers[1].get_weights())
            assert float(ops.convert_to_numpy(other.layers[0].stored_voltage_unit)) == 4.0
        else:
            other.set_weights(new.get_weights())
        for got, expected in zip(effective(other.layers[0]), effective(hidden)):
            np.testing.assert_allclose(got, expected, rtol=1e-6)
        np.testing.assert_allclose(ops.convert_to_numpy(other(x)), want, rtol=1e-5, atol=1e-6)
    other.layers[0].set_thresholds(np.full(5, 18.0))
    assert float(ops.convert_to_numpy(other.layers[0].stored_voltage_unit)) == 4.0
    np.testing.assert_allclose(other.layers[0].thresholds(), 18.0)
    np.testing.assert_allclose(other.layers[0].recurrent_weights(), hidden.recurrent_weights(), rtol=1e-6)
    with pytest.raises(ValueError, match="not built yet"):
        sk.LIFLayer(5, threshold=5.0, **options).thresholds()
