"""NIR export / import of Keras models (spikescan_keras.export_nir / import_nir). One process per backend:

    KERAS_BACKEND=torch python -m pytest tests/test_nir.py
    KERAS_BACKEND=jax python -m pytest tests/test_nir.py
    KERAS_BACKEND=tensorflow python -m pytest tests/test_nir.py

Skips without keras or nir.
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()
nir = pytest.importorskip("nir")
pytest.importorskip("h5py")

import spikescan_keras as sk  # noqa: E402

# 15.966 / 1000 * 1000 != 15.966 in float64: the round trip must not rely on the conversion being invertible.
TAU_MEM, TAU_SYN = 15.966, 7.862


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sk.CappedSpikesWarning)
        yield


def spikes(rng, batch=6, n=5, m=3, t_end=20.0):
    times = np.sort(rng.uniform(0.0, t_end, (batch, n, m)), axis=-1)
    times[rng.random((batch, n, m)) < 0.2] = np.inf
    return np.sort(times, axis=-1).astype(np.float32)


def make_model(delays, readout=True, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input(shape=(5, 3)),
              sk.LIFLayer(7, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=0.8, max_spikes=3, delays=delays,
                          max_delay=4.0, calibrate=(0.2, 0.95), silence_penalty=0.5, method="sequential", name="lif_a"),
              sk.LIFLayer(6, tau_mem=20.0, tau_syn=10.0, max_spikes=2, calibrate=None, name="lif_b",
                          spike_count_regularizer=sk.SpikeCountRegularizer(0.01, 30.0))]
    if readout:
        layers.append(sk.LIReadout(3, tau_mem=20.0, tau_syn=5.0, readout="integral", t_max=60.0, tau_readout=25.0,
                                   name="readout"))
    model = keras.Sequential(layers)
    first = model.layers[0]
    first.kernel.assign(first.kernel * 3.0)
    first.kernel_scale.assign(0.6)  # as if calibrated: the layer computes with kernel * 0.6
    return model


def assert_same(a, b, x):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a(x, training=False)),
                                  keras.ops.convert_to_numpy(b(x, training=False)))


@pytest.mark.parametrize("delays", [False, True])
@pytest.mark.parametrize("readout", [True, False])
def test_round_trip_through_file_is_exact(tmp_path, delays, readout):
    assert TAU_MEM / 1000 * 1000 != TAU_MEM  # so the exact round trip takes the value from our metadata
    model = make_model(delays, readout)
    path = tmp_path / "model.nir"
    nir.write(path, sk.export_nir(model))
    back = sk.import_nir(nir.read(path))
    x = spikes(np.random.default_rng(1))
    out = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.isfinite(out).any() and np.ptp(out[np.isfinite(out)]) > 0  # not a trivial network
    assert_same(model, back, x)
    for a, b in zip(model.layers, back.layers):
        assert type(a) is type(b)
        assert a.get_config() == b.get_config()
    lif = back.layers[0]
    assert float(keras.ops.convert_to_numpy(lif.kernel_scale)) == 1.0
    assert int(keras.ops.convert_to_numpy(lif.calibrated)) == 1  # imported weights are not recalibrated by fit
    if delays:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(lif.delays),
                                      keras.ops.convert_to_numpy(model.layers[0].delays))


def test_exported_fields():
    model = make_model(delays=False)
    g = sk.export_nir(model)
    assert list(g.nodes) == ["input", "lif_a_weight", "lif_a", "lif_b_weight", "lif_b", "readout_weight", "readout",
                             "output"]
    assert g.edges == list(zip(list(g.nodes)[:-1], list(g.nodes)[1:]))
    np.testing.assert_array_equal(g.nodes["input"].input_type["input"], [5])
    np.testing.assert_array_equal(g.nodes["output"].output_type["output"], [3])
    first = model.layers[0]
    kernel_eff = keras.ops.convert_to_numpy(first.kernel) * np.float32(0.6)
    w = g.nodes["lif_a_weight"].weight
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, kernel_eff.T)  # [out, in], the calibration factor folded in
    lif = g.nodes["lif_a"]
    assert isinstance(lif, nir.CubaLIF)
    np.testing.assert_array_equal(lif.tau_mem, np.full(7, TAU_MEM / 1000))  # seconds
    np.testing.assert_array_equal(lif.tau_syn, np.full(7, TAU_SYN / 1000))
    np.testing.assert_array_equal(lif.w_in, lif.tau_syn)  # jump of I per spike: w_in W / tau_syn = W
    np.testing.assert_array_equal(lif.r, np.ones(7))
    np.testing.assert_array_equal(lif.v_leak, np.zeros(7))
    np.testing.assert_array_equal(lif.v_reset, np.zeros(7))
    np.testing.assert_array_equal(lif.v_threshold, np.full(7, 0.8))
    meta = lif.metadata["spikescan"]
    assert meta["max_spikes"] == 3 and meta["method"] == "sequential" and meta["kernel_scale"] == pytest.approx(0.6)
    assert list(meta["calibrate"]) == [0.2, 0.95] and meta["silence_penalty"] == 0.5
    assert g.nodes["lif_b"].metadata["spikescan"]["calibrate"] == "none"
    li = g.nodes["readout"]
    assert isinstance(li, nir.CubaLI)
    np.testing.assert_array_equal(li.tau_syn, np.full(3, 0.005))
    np.testing.assert_array_equal(li.w_in, li.tau_syn)
    np.testing.assert_array_equal(g.nodes["readout_weight"].weight,
                                  keras.ops.convert_to_numpy(model.layers[2].kernel).T)
    rm = li.metadata["spikescan"]
    assert (rm["readout"], rm["t_max"], rm["tau_readout"]) == ("integral", 60.0, 25.0)
    assert g.metadata["spikescan"] == {"format": 1, "time_unit": "s", "model_time_unit": "ms", "synapse": "dirac",
                                       "input_max_spikes": 3}
    g_ms = sk.export_nir(model, graph_time_unit="ms")
    np.testing.assert_array_equal(g_ms.nodes["lif_a"].tau_mem, np.full(7, TAU_MEM))
    assert g_ms.metadata["spikescan"]["time_unit"] == "ms"
    assert_same(model, sk.import_nir(g_ms), spikes(np.random.default_rng(2)))


def test_delay_encoding():
    model = make_model(delays=True)
    g = sk.export_nir(model)
    assert [type(g.nodes[n]).__name__ for n in ("lif_a_fanout", "lif_a_delay", "lif_a_weight")] == [
        "Linear", "Delay", "Linear"]
    layer = model.layers[0]
    kernel_eff = keras.ops.convert_to_numpy(layer.kernel) * np.float32(0.6)
    delays = keras.ops.convert_to_numpy(layer.delays)
    fan, delay = g.nodes["lif_a_fanout"].weight, g.nodes["lif_a_delay"].delay
    w = g.nodes["lif_a_weight"].weight
    assert fan.shape == (35, 5) and w.shape == (7, 35) and delay.shape == (35,)
    for j in range(5):
        for i in range(7):
            k = j * 7 + i
            assert fan[k, j] == 1 and fan[k].sum() == 1
            assert delay[k] == delays[j, i].astype(np.float64) / 1000  # seconds
            assert w[i, k] == kernel_eff[j, i] and np.count_nonzero(w[:, k]) <= 1
    # Another row order of the fan-out (input-major slots permuted) imports to the same model.
    perm = np.random.default_rng(3).permutation(35)
    g.nodes["lif_a_fanout"] = nir.Linear(weight=fan[perm])
    g.nodes["lif_a_delay"] = nir.Delay(delay=delay[perm])
    g.nodes["lif_a_weight"] = nir.Linear(weight=w[:, perm])
    assert_same(model, sk.import_nir(g), spikes(np.random.default_rng(4)))


def other_tool_graph(w_in=1.0, r=1.0, affine=True, unit_scale=1.0):
    """Input -> Affine (zero bias) -> CubaLIF -> Linear -> CubaLI -> Output, seconds, v_leak = 0, r = 1,
    w_in = 1: the shape of graphs that norse writes (it exports torch.nn.Linear as Affine)."""
    rng = np.random.default_rng(5)
    w1 = rng.normal(0.4, 0.3, (6, 4)).astype(np.float32)
    w2 = rng.normal(0.0, 1.0, (2, 6)).astype(np.float32)
    ones6, ones2 = np.ones(6), np.ones(2)
    s = unit_scale
    nodes = {
        "in": nir.Input(input_type=np.array([4])),
        "fc1": nir.Affine(weight=w1, bias=np.zeros(6, dtype=np.float32)) if affine else nir.Linear(weight=w1),
        "lif1": nir.CubaLIF(tau_mem=0.02 * s * ones6, tau_syn=0.005 * s * ones6, r=r * ones6, v_leak=0 * ones6,
                            v_threshold=ones6, v_reset=0 * ones6, w_in=w_in * ones6),
        "fc2": nir.Linear(weight=w2),
        "li": nir.CubaLI(tau_mem=0.02 * s * ones2, tau_syn=0.005 * s * ones2, r=ones2, v_leak=0 * ones2),
        "out": nir.Output(output_type=np.array([2])),
    }
    edges = [("in", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "li"), ("li", "out")]
    return nir.NIRGraph(nodes=nodes, edges=edges), w1, w2


def direct_model(k1, k2, max_spikes=4):
    return keras.Sequential([
        keras.Input(shape=(4, 3)),
        sk.LIFLayer(6, tau_mem=0.02 * 1000, tau_syn=0.005 * 1000, max_spikes=max_spikes, name="lif1"),
        sk.LIReadout(2, tau_mem=0.02 * 1000, tau_syn=0.005 * 1000, readout="integral", t_max=60.0, name="li"),
    ]), k1, k2


def set_kernels(model, k1, k2):
    model.layers[0].kernel.assign(k1)
    model.layers[1].kernel.assign(k2)
    return model


def test_other_tool_graph_imports_as_the_direct_model(tmp_path):
    graph, w1, w2 = other_tool_graph()
    nir.write(tmp_path / "g.nir", graph)
    x = spikes(np.random.default_rng(6), n=4, t_end=30.0)
    # synapse="jump": a spike moves I by w_in W = W (norse's convention): kernels are the weights.
    imported = sk.import_nir(nir.read(tmp_path / "g.nir"), synapse="jump", max_spikes=4, t_max=60.0)
    direct = set_kernels(*direct_model(w1.T, w2.T))
    assert_same(imported, direct, x)
    assert imported.layers[0].tau_mem == 20.0 and imported.layers[0].tau_syn == 5.0
    assert imported.layers[1].readout == "integral" and imported.layers[1].t_max == 60.0
    # synapse="dirac" (default): NIR's equations, a spike moves I by r w_in W / tau_syn = W / 0.005 s.
    imported = sk.import_nir(graph, max_spikes=4, t_max=60.0)
    k1 = (w1.astype(np.float64) * (1.0 / 0.005)).T.astype(np.float32)
    k2 = (w2.astype(np.float64) * (1.0 / 0.005)).T.astype(np.float32)
    assert_same(imported, set_kernels(*direct_model(k1, k2)), x)
    # r folds into the weights: r = 2, w_in = 0.5 is the same network as r = w_in = 1.
    graph, *_ = other_tool_graph(w_in=0.5, r=2.0, affine=False)
    assert_same(sk.import_nir(graph, synapse="jump", max_spikes=4, t_max=60.0), direct, x)
    # The same graph written in ms reads with graph_time_unit="ms".
    graph, *_ = other_tool_graph(unit_scale=1000.0)
    assert_same(sk.import_nir(graph, synapse="jump", graph_time_unit="ms", max_spikes=4, t_max=60.0), direct, x)


def test_model_in_seconds():
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input(shape=(5, 3)),
                              sk.LIFLayer(4, tau_mem=0.02, tau_syn=0.01, max_spikes=2, calibrate=None)])
    g = sk.export_nir(model, time_unit="s")
    np.testing.assert_array_equal(g.nodes[model.layers[0].name].tau_mem, np.full(4, 0.02))
    back = sk.import_nir(g, time_unit="s")
    assert back.layers[0].tau_mem == 0.02
    assert_same(model, back, spikes(np.random.default_rng(8)) / np.float32(1000))
    in_ms = sk.import_nir(g)  # the same graph as a model in ms
    assert in_ms.layers[0].tau_mem == 20.0 and in_ms.layers[0].tau_syn == 10.0


def test_unsupported_graphs_name_node_and_field():
    def graph_with(**changes):
        graph, *_ = other_tool_graph()
        for name, node in changes.items():
            graph.nodes[name] = node
        return graph

    ones6 = np.ones(6)
    lif = dict(tau_mem=0.02 * ones6, tau_syn=0.005 * ones6, r=ones6, v_leak=0 * ones6, v_threshold=ones6,
               v_reset=0 * ones6)
    cases = [
        (graph_with(lif1=nir.CubaLIF(**{**lif, "v_leak": 0.1 * ones6})), r"node 'lif1'.*'v_leak'"),
        (graph_with(lif1=nir.CubaLIF(**{**lif, "v_reset": -ones6})), r"node 'lif1'.*'v_reset'"),
        # Per-neuron time constants import into a LIFLayer with trainable ones (test_keras_time_constants.py), not
        # into a readout, which has one value per layer.
        (graph_with(lif1=nir.CubaLIF(**{**lif, "tau_mem": -0.02 * ones6})), r"node 'lif1'.*'tau_mem' must be > 0"),
        (graph_with(li=nir.CubaLI(tau_mem=np.linspace(0.01, 0.02, 2), tau_syn=0.005 * np.ones(2), r=np.ones(2),
                                  v_leak=np.zeros(2))), r"node 'li'.*'tau_mem'.*same for every neuron"),
        (graph_with(lif1=nir.CubaLIF(**{**lif, "v_threshold": 0 * ones6})), r"node 'lif1'.*'v_threshold'"),
        (graph_with(fc1=nir.Affine(weight=np.ones((6, 4)), bias=np.ones(6))), r"node 'fc1'.*'bias'"),
        (graph_with(lif1=nir.LIF(tau=0.02 * ones6, r=ones6, v_leak=0 * ones6, v_threshold=ones6)),
         r"node 'lif1'.*LIF is not supported"),
        (graph_with(lif1=nir.Threshold(threshold=ones6)), r"node 'lif1'.*Threshold is not supported"),
    ]
    for graph, match in cases:
        with pytest.raises(ValueError, match=match):
            sk.import_nir(graph, max_spikes=4, t_max=60.0)
    graph, *_ = other_tool_graph()
    graph.edges.append(("lif1", "fc1"))  # recurrent
    with pytest.raises(ValueError, match=r"recurrent edge \('lif1' -> 'fc1'\)"):
        sk.import_nir(graph, max_spikes=4, t_max=60.0)
    graph, *_ = other_tool_graph()
    with pytest.raises(ValueError, match=r"node 'lif1'.*max_spikes"):
        sk.import_nir(graph, t_max=60.0)
    with pytest.raises(ValueError, match=r"node 'li'.*t_max"):
        sk.import_nir(graph, max_spikes=4)
    with pytest.raises(ValueError, match="synapse"):
        sk.import_nir(graph, synapse="euler")


def test_export_rejects_other_layers():
    model = keras.Sequential([keras.Input(shape=(5, 3)), sk.LIFLayer(4, tau_mem=20.0, tau_syn=10.0, max_spikes=2),
                              keras.layers.Dense(3, name="dense_head")])
    with pytest.raises(ValueError, match="'dense_head' is a Dense"):
        sk.export_nir(model)
    inp = keras.Input(shape=(5, 3))
    functional = keras.Model(inp, sk.LIFLayer(4, tau_mem=20.0, tau_syn=10.0, max_spikes=2)(inp))
    with pytest.raises(TypeError, match="Sequential"):
        sk.export_nir(functional)
    with pytest.raises(ValueError, match="time_unit"):
        sk.export_nir(make_model(False), time_unit="min")


def test_spikescan_keras_imports_without_nir():
    code = ("import sys; sys.modules['nir'] = None\n"
            "import spikescan_keras as sk\n"
            "try:\n    sk.export_nir(None)\nexcept ImportError as e:\n    print('ImportError', e)\n")
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "ImportError" in out.stdout and "spikescan[nir]" in out.stdout
