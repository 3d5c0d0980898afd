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
    assert_grads_match_finite_differences, backend_grad, finite_differences, spike_input)

TAU_MEM, TAU_SYN = 10.0, 4.0


def _layer(**kw):
    return sk.LIFLayer(5, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, trainable_time_constants=True,
                       calibrate=None, silence_penalty=0.0, **kw)


def test_time_constant_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    x = spike_input(rng, n_in=4, max_in=3)
    lif = _layer(kernel_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=2))
    lif(x)
    lif.tau_mem_per_neuron.assign(rng.uniform(6.0, 14.0, 5).astype(np.float32))
    lif.tau_syn_per_neuron.assign(rng.uniform(2.0, 6.0, 5).astype(np.float32))
    assert np.isfinite(ops.convert_to_numpy(lif(x))).sum() > 6, "the case should have spikes"
    names = [v.path.split("/")[-1] for v in lif.trainable_variables]
    assert names == ["kernel", "tau_mem", "tau_syn"]
    grad_times = rng.normal(size=(3, 5, 3))
    params = [v.numpy() for v in lif.trainable_variables]

    def loss_layer(*weights):
        times, _ = lif.stateless_call(list(weights), [v.value for v in lif.non_trainable_variables], x)
        finite = ops.where(ops.isfinite(times), times, 0.0)
        return ops.sum(finite * ops.convert_to_tensor(grad_times.astype(np.float32)))

    def loss_numpy(w, tau_mem, tau_syn):
        res = spikescan.lif_forward(x.astype(np.float64), w, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=3)
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
    tau_mem, tau_syn = lif.tau_mem_per_neuron.numpy(), lif.tau_syn_per_neuron.numpy()
    assert not np.allclose(tau_mem, TAU_MEM) and not np.allclose(tau_syn, TAU_SYN)  # they trained
    assert tau_mem.min() >= 3.0 and tau_syn.min() >= 3.0  # PositiveFloor (a large step would cross it)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    again = loaded.get_layer("hidden")
    assert again.trainable_time_constants and again.min_time_constant == 3.0
    np.testing.assert_array_equal(again.tau_mem_per_neuron.numpy(), tau_mem)
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


def test_nir_round_trip_keeps_the_trained_time_constants(tmp_path):
    nir = pytest.importorskip("nir")
    rng = np.random.default_rng(6)
    model = keras.Sequential([keras.Input(shape=(4, 2)), _layer(name="hidden"),
                              sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=40.0)])
    lif = model.get_layer("hidden")
    lif.tau_mem_per_neuron.assign(rng.uniform(6.0, 14.0, 5).astype(np.float32))
    lif.tau_syn_per_neuron.assign(rng.uniform(2.0, 6.0, 5).astype(np.float32))
    graph = sk.export_nir(model)
    np.testing.assert_allclose(graph.nodes["hidden"].tau_mem * 1e3, lif.tau_mem_per_neuron.numpy(), rtol=1e-6)
    path = tmp_path / "model.nir"
    nir.write(path, graph)
    back = sk.import_nir(nir.read(path))
    again = back.get_layer("hidden")
    assert again.trainable_time_constants
    np.testing.assert_allclose(again.tau_mem_per_neuron.numpy(), lif.tau_mem_per_neuron.numpy(), rtol=1e-6)
    np.testing.assert_allclose(again.tau_syn_per_neuron.numpy(), lif.tau_syn_per_neuron.numpy(), rtol=1e-6)
    x = spike_input(rng, n_in=4, max_in=2)
    np.testing.assert_allclose(ops.convert_to_numpy(back(x)), ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_trainable_threshold_gradients_fit_and_nir(tmp_path):
    """LIFLayer(trainable_threshold=True): per-neuron thresholds with exact gradients (finite differences), trained
    by fit above their floor, and carried through save/load and NIR."""
    rng = np.random.default_rng(7)
    x = spike_input(rng, n_in=4, max_in=3)
    lif = _layer(trainable_threshold=True, kernel_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=3))
    lif(x)
    lif.threshold_per_neuron.assign(rng.uniform(0.7, 1.3, 5).astype(np.float32))
    names = [v.path.split("/")[-1] for v in lif.trainable_variables]
    assert names == ["kernel", "tau_mem", "tau_syn", "threshold"]
    grad_times = rng.normal(size=(3, 5, 3))
    params = [v.numpy() for v in lif.trainable_variables]

    def loss_layer(*weights):
        times, _ = lif.stateless_call(list(weights), [v.value for v in lif.non_trainable_variables], x)
        return ops.sum(ops.where(ops.isfinite(times), times, 0.0) * ops.convert_to_tensor(grad_times.astype("f4")))

    def loss_numpy(w, tau_mem, tau_syn, threshold):
        res = spikescan.lif_forward(x.astype(np.float64), w, tau_mem=tau_mem, tau_syn=tau_syn, threshold=threshold,
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
    th = hidden.threshold_per_neuron.numpy()
    assert not np.allclose(th, 1.0) and th.min() >= 0.6
    path = tmp_path / "model.keras"
    model.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path).get_layer("hidden").threshold_per_neuron.numpy(), th)
    nir = pytest.importorskip("nir")
    nir.write(tmp_path / "model.nir", sk.export_nir(model))
    back = sk.import_nir(nir.read(tmp_path / "model.nir"))
    assert back.get_layer("hidden").trainable_threshold
    np.testing.assert_allclose(back.get_layer("hidden").threshold_per_neuron.numpy(), th, rtol=1e-6)
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
    layer.tau_mem_per_neuron.assign(np.array([10.0, 3.0, 6.0], np.float32))
    layer.tau_syn_per_neuron.assign(np.array([4.0, 5.0, 6.0], np.float32))
    names = [v.path.split("/")[-1] for v in layer.trainable_variables]
    assert names == ["kernel", "tau_mem", "tau_syn"]
    grad_values = rng.normal(size=(3, 3))
    params = [v.numpy() for v in layer.trainable_variables]

    def loss_layer(*weights):
        values, _ = layer.stateless_call(list(weights), [v.value for v in layer.non_trainable_variables], x)
        return ops.sum(values * ops.convert_to_tensor(grad_values.astype(np.float32)))

    def loss_numpy(w, tau_mem, tau_syn):
        res = spikescan.li_forward(x.astype(np.float64), w, tau_mem=tau_mem, tau_syn=tau_syn, readout=readout,
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
    tau_mem, tau_syn = layer.tau_mem_per_neuron.numpy(), layer.tau_syn_per_neuron.numpy()
    assert not np.allclose(tau_mem, TAU_MEM) and not np.allclose(tau_syn, TAU_SYN)  # they trained
    assert tau_mem.min() >= 3.0 and tau_syn.min() >= 3.0  # PositiveFloor
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    again = loaded.get_layer("readout")
    assert again.trainable_time_constants and again.min_time_constant == 3.0
    np.testing.assert_array_equal(again.tau_mem_per_neuron.numpy(), tau_mem)
    np.testing.assert_array_equal(again.tau_syn_per_neuron.numpy(), tau_syn)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x[:4])), ops.convert_to_numpy(model(x[:4])))


def test_readout_nir_round_trip_keeps_the_trained_time_constants(tmp_path):
    nir = pytest.importorskip("nir")
    rng = np.random.default_rng(10)
    model = keras.Sequential([keras.Input(shape=(4, 2)), _layer(name="hidden"),
                              _readout(tau_readout=15.0, min_time_constant=1.5, name="readout")])
    layer = model.get_layer("readout")
    layer.tau_mem_per_neuron.assign(rng.uniform(6.0, 14.0, 3).astype(np.float32))
    layer.tau_syn_per_neuron.assign(rng.uniform(2.0, 6.0, 3).astype(np.float32))
    graph = sk.export_nir(model)
    np.testing.assert_allclose(graph.nodes["readout"].tau_mem * 1e3, layer.tau_mem_per_neuron.numpy(), rtol=1e-6)
    nir.write(tmp_path / "model.nir", graph)
    back = sk.import_nir(nir.read(tmp_path / "model.nir"))
    again = back.get_layer("readout")
    assert again.trainable_time_constants and again.min_time_constant == 1.5
    assert (again.tau_mem, again.tau_syn) == (TAU_MEM, TAU_SYN)  # the arguments, from the metadata
    np.testing.assert_allclose(again.tau_mem_per_neuron.numpy(), layer.tau_mem_per_neuron.numpy(), rtol=1e-6)
    np.testing.assert_allclose(again.tau_syn_per_neuron.numpy(), layer.tau_syn_per_neuron.numpy(), rtol=1e-6)
    x = spike_input(rng, n_in=4, max_in=2)
    np.testing.assert_allclose(ops.convert_to_numpy(back(x)), ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["yes", 1])
def test_readout_options_are_checked(bad):
    with pytest.raises(TypeError, match="trainable_time_constants"):
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=10.0, trainable_time_constants=bad)
    with pytest.raises(ValueError, match="min_time_constant"):
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=10.0, min_time_constant=-1.0)
    assert sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, t_max=10.0).min_time_constant == 0.05 * TAU_SYN
