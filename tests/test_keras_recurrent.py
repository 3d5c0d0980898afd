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
    # With recurrent delays, trainable time constants too.
    lif = sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, recurrent=True,
                      recurrent_delays=recurrent_delays, max_delay=3.0, calibrate=None, silence_penalty=0.0,
                      trainable_time_constants=recurrent_delays,
                      kernel_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=2),
                      recurrent_initializer=keras.initializers.RandomNormal(0.0, 0.4, seed=3))
    lif(x)
    names = [v.path.split("/")[-1] for v in lif.trainable_variables]
    assert names == ["kernel", "recurrent_kernel"] + (
        ["recurrent_delays", "tau_mem", "tau_syn"] if recurrent_delays else [])
    if recurrent_delays:
        lif.recurrent_delays.assign(rng.uniform(0.5, 3.0, (4, 4)).astype(np.float32))
        lif.tau_mem_per_neuron.assign(rng.uniform(6.0, 14.0, 4).astype(np.float32))
        lif.tau_syn_per_neuron.assign(rng.uniform(2.0, 6.0, 4).astype(np.float32))
    assert np.isfinite(ops.convert_to_numpy(lif(x))).sum() > 6, "the case should have spikes"
    grad_times = rng.normal(size=(3, 4, 3))
    params = [v.numpy() for v in lif.trainable_variables]

    def loss_layer(*weights):
        times, _ = lif.stateless_call(list(weights), [v.value for v in lif.non_trainable_variables], x)
        finite = ops.where(ops.isfinite(times), times, 0.0)
        return ops.sum(finite * ops.convert_to_tensor(grad_times.astype(np.float32)))

    def loss_numpy(w, r, dr=None, tau_mem=TAU_MEM, tau_syn=TAU_SYN):
        res = spikescan.lif_forward(x.astype(np.float64), w, tau_mem=tau_mem, tau_syn=tau_syn, max_spikes=3,
                                    recurrent_weights=r, recurrent_delays=dr)
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
    delays = lif.recurrent_delays.numpy()
    assert delays.min() >= 0.0 and delays.max() <= 2.0  # DelayRange
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    again = loaded.get_layer("hidden")
    assert again.recurrent and again.use_recurrent_delays
    np.testing.assert_array_equal(again.recurrent_kernel.numpy(), lif.recurrent_kernel.numpy())
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x[:4])), ops.convert_to_numpy(model(x[:4])))


def test_recurrent_options_are_checked():
    with pytest.raises(ValueError, match="recurrent_delays=True needs recurrent=True"):
        sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, recurrent_delays=True)
    with pytest.raises(TypeError, match="recurrent must be True or False"):
        sk.LIFLayer(4, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=2, recurrent="yes")
