"""LIFLayer(recurrent=True, recurrent_delays=...): recurrent weights (and delays) trained by their exact gradients.
One process per backend (KERAS_BACKEND=torch|jax|tensorflow python -m pytest tests/test_keras_recurrent.py)."""

import numpy as np
import pytest

from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()

from keras import ops  # noqa: E402

import spikescan  # noqa: E402
import spikescan_keras as sk  # noqa: E402
from test_keras import assert_grads_match_finite_differences, spike_input  # noqa: E402

TAU_MEM, TAU_SYN = 10.0, 4.0


@pytest.mark.parametrize("recurrent_delays", [False, True])
def test_recurrent_gradients_match_finite_differences(recurrent_delays):
    rng = np.random.default_rng(11)
    x = spike_input(rng, n_in=3, max_in=3)
    # With recurrent delays, trainable time constants too; the variable is the weights over a factor (0.25, or
    # "auto", which is 1 for 3 inputs into 4 neurons).
    scale = "auto" if recurrent_delays else 0.25
    lif = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, recurrent=True,
                      recurrent_delays=recurrent_delays, max_delay=3.0, calibrate=None, silence_penalty=0.0,
                      trainable_time_constants=recurrent_delays, recurrent_scale=scale,
                      kernel_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=2),
                      recurrent_initializer=keras.initializers.RandomNormal(0.0, 0.4, seed=3))
    lif(x)
    factor = lif.recurrent_kernel_scale
    assert factor == (1.0 if recurrent_delays else 0.25)
    names = [v.path.split("/")[-1] for v in lif.trainable_variables]
    assert names == ["kernel", "recurrent_kernel"] + (
        ["recurrent_delay_kernel", "tau_mem_kernel", "tau_syn_kernel"] if recurrent_delays else [])
    if recurrent_delays:
        lif.set_recurrent_delay_values(rng.uniform(0.5, 3.0, (4, 4)).astype(np.float32))
        lif.set_time_constants(rng.uniform(6.0, 14.0, 4).astype(np.float32),
                               rng.uniform(2.0, 6.0, 4).astype(np.float32))
    assert np.isfinite(ops.convert_to_numpy(lif(x))).sum() > 6, "the case should have spikes"
    grad_times = rng.normal(size=(3, 4, 3))
    params = [v.numpy() for v in lif.trainable_variables]

    def loss_layer(*weights):
        times, _ = lif.stateless_call(list(weights), [v.value for v in lif.non_trainable_variables], x)
        finite = ops.where(ops.isfinite(times), times, 0.0)
        return ops.sum(finite * ops.convert_to_tensor(grad_times.astype(np.float32)))

    def loss_numpy(w, r, dr=None, tau_mem=None, tau_syn=None):
        # The variables hold the delays and time constants over the layer's units.
        tau_mem = TAU_MEM if tau_mem is None else tau_mem * lif.tau_mem_unit
        tau_syn = TAU_SYN if tau_syn is None else tau_syn * lif.tau_syn_unit
        res = spikescan.lif_forward(x.astype(np.float64), w, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=3,
                                    recurrent_weights=r * factor,
                                    recurrent_delays=None if dr is None else dr * lif.delay_unit)
        return np.sum(np.where(np.isfinite(res.times), res.times, 0.0) * grad_times)

    assert_grads_match_finite_differences(names, loss_layer, loss_numpy, params)


def test_recurrent_layer_trains_with_fit_and_survives_save_load(tmp_path):
    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(0.0, 20.0, (32, 4, 2)), axis=-1).astype(np.float32)
    y = (x[:, 0, 0] < x[:, 1, 0]).astype(np.int32)
    model = keras.Sequential([
        keras.Input(shape=(4, 2)),
        sk.LIFLayer(8, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=4, recurrent=True, recurrent_delays=True,
                    max_delay=2.0, name="hidden"),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=40.0),
    ])
    lif = model.get_layer("hidden")
    before = lif.recurrent_kernel.numpy().copy()
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert not np.allclose(lif.recurrent_kernel.numpy(), before)  # the recurrent weights trained
    delays = lif.recurrent_delay_values()
    assert delays.min() >= 0.0 and delays.max() <= 2.0  # DelayRange
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    again = loaded.get_layer("hidden")
    assert again.recurrent and again.use_recurrent_delays
    assert again.recurrent_scale == "auto" and again.recurrent_kernel_scale == lif.recurrent_kernel_scale == 0.5
    np.testing.assert_array_equal(again.recurrent_kernel.numpy(), lif.recurrent_kernel.numpy())
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x[:4])), ops.convert_to_numpy(model(x[:4])))


def test_recurrent_options_are_checked():
    with pytest.raises(ValueError, match="recurrent_delays=True needs recurrent=True"):
        sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, recurrent_delays=True)
    with pytest.raises(TypeError, match="recurrent must be True or False"):
        sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, recurrent="yes")


def test_recurrent_scale_auto_is_the_ratio_of_mean_weights_as_a_power_of_two():
    """``"auto"``: mean_weight(units) / mean_weight(n_in, input_spikes, input_window), rounded to a power of two."""
    mw = spikescan.init.mean_weight
    cases = [(5, 64, {}, 1 / 16),  # Yin-Yang: 5 / 64 = 0.078 -> 2^-4
             (128, 64, {}, 2.0),  # digits' symmetric latency code into 64 neurons
             (140, 512, dict(input_spikes=5000.0, input_window=1000.0), None)]
    for n_in, units, kw, expected in cases:
        lif = sk.LIFLayer(units, tau_mem=20.0, tau_syn=10.0, max_spikes=4, recurrent=True, **kw)
        lif.build((None, n_in, 1))
        ratio = mw(units, tau_mem=20.0, tau_syn=10.0) / mw(n_in, tau_mem=20.0, tau_syn=10.0,
                                                           input_spikes=kw.get("input_spikes"),
                                                           window=kw.get("input_window", 0.0))
        got = lif.recurrent_kernel_scale
        assert got == 2.0 ** np.round(np.log2(ratio)), (n_in, units, got, ratio)
        assert np.log2(got) == np.round(np.log2(got))  # a power of two
        assert abs(np.log2(got / ratio)) <= 0.5
        if expected is not None:
            assert got == expected
        # The "auto" initializer draws the weights R, not the variable: std mu / 2 with mu = mean_weight(units).
        r = lif.recurrent_weights()
        np.testing.assert_allclose(r.std(), 0.5 * mw(units, tau_mem=20.0, tau_syn=10.0), rtol=0.1)
        np.testing.assert_array_equal(r, ops.convert_to_numpy(lif.recurrent_kernel) * np.float32(got))


def test_recurrent_initializer_and_regularizer_see_the_weights():
    lif = sk.LIFLayer(6, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, recurrent=True, recurrent_scale=0.125,
                      recurrent_initializer=keras.initializers.Constant(0.3),
                      recurrent_regularizer=keras.regularizers.L2(0.01), calibrate=None, silence_penalty=0.0)
    x = spike_input(np.random.default_rng(1), n_in=3)
    lif(x)
    np.testing.assert_allclose(lif.recurrent_weights(), np.full((6, 6), 0.3, np.float32), rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(lif.recurrent_kernel), np.full((6, 6), 2.4), rtol=1e-6)
    penalty = sum(float(ops.convert_to_numpy(loss)) for loss in lif.losses)
    np.testing.assert_allclose(penalty, 0.01 * 36 * 0.3 ** 2, rtol=1e-5)  # of R, not of the variable (2.4)


@pytest.mark.parametrize("scale", [1.0, 0.0625])
def test_recurrent_scale_sets_how_far_an_optimizer_step_moves_the_weights(scale):
    """Adam's first step moves every variable entry with a non-zero gradient by its learning rate; the weights R
    then move by the learning rate times the factor (the point of the factor: slower recurrent learning)."""
    rng = np.random.default_rng(2)
    x = np.sort(rng.uniform(0.0, 10.0, (16, 5, 1)), axis=-1).astype(np.float32)
    y = rng.integers(0, 2, 16).astype(np.int32)
    keras.utils.set_random_seed(4)
    model = keras.Sequential([
        keras.Input(shape=(5, 1)),
        sk.LIFLayer(12, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=4, recurrent=True, recurrent_scale=scale,
                    name="hidden"),
        sk.LIReadout(2, tau_mem=TAU_MEM, tau_syn=TAU_SYN, readout="integral", t_max=40.0)])
    lif = model.get_layer("hidden")
    before = lif.recurrent_weights()
    lr = 1e-3
    model.compile(optimizer=keras.optimizers.Adam(lr, epsilon=1e-12),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    moved = np.abs(lif.recurrent_weights() - before)
    assert (moved > 0).sum() > 10, "the case should train some recurrent weights"
    np.testing.assert_allclose(moved[moved > 0], lr * scale, rtol=0.02)


def test_recurrent_scale_is_checked_saved_and_old_files_load_with_one(tmp_path):
    for bad in (0.0, -1.0, float("nan"), "fast", True):
        with pytest.raises(ValueError, match="recurrent_scale"):
            sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, recurrent=True, recurrent_scale=bad)
    with pytest.raises(ValueError, match="recurrent_scale=0.5 needs recurrent=True"):
        sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, recurrent_scale=0.5)
    with pytest.raises(ValueError, match="has no recurrent connections"):
        sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2).recurrent_weights()
    layer = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, recurrent=True, recurrent_scale=0.5)
    with pytest.raises(ValueError, match="is not built yet"):
        layer.recurrent_weights()
    config = layer.get_config()
    assert config["recurrent_scale"] == 0.5
    assert sk.LIFLayer.from_config(config).recurrent_scale == 0.5
    assert sk.LIFLayer.from_config({**config, "recurrent_scale": "auto"}).recurrent_scale == "auto"
    # A config written before the option: recurrent_kernel holds the weights themselves.
    old = {k: v for k, v in config.items() if k != "recurrent_scale"}
    again = sk.LIFLayer.from_config(old)
    again.build((None, 3, 1))
    assert again.recurrent_scale == 1.0 and again.recurrent_kernel_scale == 1.0
    ff = {k: v for k, v in sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2).get_config().items()
          if k != "recurrent_scale"}
    assert sk.LIFLayer.from_config(ff).recurrent_scale == "auto"
