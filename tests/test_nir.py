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

import spikescan as ss  # noqa: E402
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
              sk.LIFLayer(6, tau_mem=20.0, tau_syn=10.0, threshold=20.0, max_spikes=2, calibrate=None, name="lif_b",
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
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # our own graph: nothing to round
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
    # threshold 20: the kernel holds the weights over the voltage unit 16, kept in kernel_scale, on both sides
    for layer in (model.layers[1], back.layers[1]):
        assert layer.voltage_unit == 16.0 and float(keras.ops.convert_to_numpy(layer.kernel_scale)) == 16.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(back.layers[1].kernel),
                                  keras.ops.convert_to_numpy(model.layers[1].kernel))
    if delays:
        np.testing.assert_array_equal(lif.delay_values(),
                                      model.layers[0].delay_values())
    # Our graphs record their synapse convention: the other one would read every weight off by tau_syn.
    with pytest.raises(ValueError, match="synapse='jump', but the graph's metadata says .* synapse='dirac'"):
        sk.import_nir(nir.read(path), synapse="jump")


def test_import_says_which_graph_values_float32_rounds():
    graph, w1, _ = other_tool_graph(affine=False)
    w64 = w1.astype(np.float64) + 1e-3 / 3  # not float32 values
    graph.nodes["fc1"] = nir.Linear(weight=w64)
    graph.nodes["lif1"].v_threshold = np.linspace(1.0, 1.1, 6)  # per neuron: trainable thresholds, stored as float32
    with pytest.warns(UserWarning, match=r"float32 .* rounded to it: node 'lif1' input weights \(largest relative "
                                         r"change [0-9.e-]+\); node 'lif1' v_threshold"):
        imported = sk.import_nir(graph, synapse="jump", max_spikes=4, t_max=60.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(imported.layers[0].kernel), w64.T.astype(np.float32))
    # float32 weights read with synapse="jump" are taken as they are: no warning.
    graph, *_ = other_tool_graph(affine=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sk.import_nir(graph, synapse="jump", max_spikes=4, t_max=60.0)


def test_import_keeps_float64_values_under_a_float64_policy():
    if keras.backend.backend() == "jax":
        import jax
        if not jax.config.jax_enable_x64:
            pytest.skip("float64 layers need jax's 64-bit mode")
    graph, w1, _ = other_tool_graph(affine=False)
    w64 = w1.astype(np.float64) + 1e-3 / 3
    graph.nodes["fc1"] = nir.Linear(weight=w64)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # nothing is rounded
            imported = sk.import_nir(graph, synapse="jump", max_spikes=4, t_max=60.0)
    finally:
        keras.config.set_dtype_policy(previous)
    kernel = keras.ops.convert_to_numpy(imported.layers[0].kernel)
    assert kernel.dtype == np.float64
    np.testing.assert_array_equal(kernel, w64.T)


@pytest.mark.parametrize("readout, scale", [("max", 2.5), ("final", "auto")])
def test_readout_scale_round_trip(tmp_path, readout, scale):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input(shape=(5, 3)),
                              sk.LIFLayer(7, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, calibrate=None),
                              sk.LIReadout(3, tau_mem=20.0, tau_syn=5.0, readout=readout, t_max=60.0, scale=scale)])
    nir.write(tmp_path / "m.nir", sk.export_nir(model))
    back = sk.import_nir(nir.read(tmp_path / "m.nir"))
    assert back.layers[-1].get_config()["scale"] == scale
    assert back.layers[-1].output_scale == model.layers[-1].output_scale
    assert_same(model, back, spikes(np.random.default_rng(2)))
    if scale == "auto":  # a graph written before the unit-free rule: the factor "auto" stood for then
        graph = sk.export_nir(model)
        node = next(n for n in graph.nodes.values() if "auto_scale_rule" in n.metadata.get("spikescan", {}))
        del node.metadata["spikescan"]["auto_scale_rule"]
        old = sk.import_nir(graph).layers[-1]
        assert old.output_scale == old._legacy_auto_scale() != model.layers[-1].output_scale


def test_a_float64_model_is_exported_in_float32_with_a_warning():
    """NIR carries float32 weights and delays: a float64 model's export says so (its values are rounded), and the
    import is the float32 model that those values define."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(5, 3)),
                              sk.LIFLayer(7, tau_mem=TAU_MEM, tau_syn=TAU_SYN, max_spikes=3, delays=True,
                                          max_delay=4.0, calibrate=None, dtype="float64", name="wide"),
                              sk.LIReadout(3, tau_mem=20.0, tau_syn=5.0, t_max=60.0, name="readout")])
    with pytest.warns(UserWarning, match=r"layers \['wide'\] hold float64 weights.*rounded to float32"):
        graph = sk.export_nir(model)
    back = sk.import_nir(graph)
    assert keras.backend.standardize_dtype(back.layers[0].kernel.dtype) == "float32"
    x = spikes(np.random.default_rng(3))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-4,
                               atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", sk.CappedSpikesWarning)  # (its spikes were capped above: warned, not here)
        sk.export_nir(back)  # a float32 model exports without a warning about its precision


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


def test_export_warns_when_a_layer_capped_spikes_nir_would_pass_on():
    """NIR has no max_spikes: another simulator passes every spike on, so a model whose layers capped spikes (the
    running capped_spikes) is warned about at export; one that never capped is not."""
    model = make_model(delays=False, readout=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sk.export_nir(model)
    assert not [w for w in caught if w.category is sk.CappedSpikesWarning]
    hidden = model.layers[0]
    x = np.zeros((2, 5, 3), np.float32)  # every input at t = 0: the first layer's neurons burst
    hidden.kernel.assign(np.full(hidden.kernel.shape, 5.0, np.float32))
    model(x, training=False)
    capped = int(keras.ops.convert_to_numpy(hidden.capped_spikes))
    assert capped > 0
    with pytest.warns(sk.CappedSpikesWarning, match=rf"export_nir: layers 'lif_a' \(max_spikes=3: {capped} capped\)"
                                                    r".*NIR has no such cap"):
        sk.export_nir(model)


def test_export_checks_the_memory_of_per_synapse_delays():
    """Per-synapse delays need n_in * n_out * (n_in + n_out) float32 numbers in NIR's nodes: checked first."""
    model = make_model(delays=True, readout=False)
    previous = ss.set_memory_limit(4 * 5 * 7 * (5 + 7) - 1)  # one float32 short
    try:
        with pytest.raises(MemoryError, match=r"export_nir \(per-synapse delays\) needs .*export a model without "
                                              r"delays"):
            sk.export_nir(model)
    finally:
        ss.set_memory_limit(previous)
    sk.export_nir(model)


def test_delay_encoding():
    model = make_model(delays=True)
    g = sk.export_nir(model)
    assert [type(g.nodes[n]).__name__ for n in ("lif_a_fanout", "lif_a_delay", "lif_a_weight")] == [
        "Linear", "Delay", "Linear"]
    layer = model.layers[0]
    kernel_eff = keras.ops.convert_to_numpy(layer.kernel) * np.float32(0.6)
    delays = layer.delay_values()
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



def test_fanout_with_two_paths_for_one_synapse_names_it():
    # Not export_nir's layout (a gain of 2), so the general reading runs: input 2 reaches neuron 1 through slots 0
    # and 1. The error names that synapse (the pair value 5 once indexed the 4 paths: IndexError).
    fan = np.zeros((4, 3))
    fan[0, 2] = fan[1, 2] = 2.0
    fan[2, 0] = fan[3, 1] = 1.0
    w2 = np.zeros((2, 4))
    w2[1, 0] = w2[1, 1] = w2[0, 2] = w2[0, 3] = 1.0
    ones = np.ones(2)
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type=np.array([3])), "fan": nir.Linear(weight=fan),
        "d": nir.Delay(delay=np.array([0.001, 0.002, 0.0, 0.0])), "w": nir.Linear(weight=w2),
        "lif": nir.CubaLIF(tau_mem=0.02 * ones, tau_syn=0.005 * ones, r=ones, v_leak=0 * ones, v_threshold=ones,
                           v_reset=0 * ones, w_in=ones),
        "out": nir.Output(output_type=np.array([2]))},
        edges=[("in", "fan"), ("fan", "d"), ("d", "w"), ("w", "lif"), ("lif", "out")])
    with pytest.raises(ValueError, match=r"node 'w'.*input 2 reaches neuron 1 through several delayed paths"):
        sk.import_nir(graph, max_spikes=2)

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
        (graph_with(lif1=nir.CubaLIF(**{**lif, "v_reset": np.r_[0.0, -0.5, 0, 0, 0, 0]})),
         r"node 'lif1'.*'v_reset' must be 0 .* got -0\.5 \(neuron 1\)"),
        (graph_with(**{"in": nir.Input(input_type=np.array([1, 4]))}), r"node 'in'.*'input_type' must be "
                                                                       r"one-dimensional \[n_in\], got \[1, 4\]"),
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



@pytest.mark.parametrize("kwargs, match", [
    (dict(max_spikes=2.7), r"max_spikes must be a positive integer, got 2\.7"),
    (dict(max_spikes=True), r"max_spikes must be a positive integer, got True"),
    (dict(max_spikes="3"), r"max_spikes must be a positive integer, got '3'"),
    (dict(max_spikes=4, input_max_spikes=-3), r"input_max_spikes must be a non-negative integer or None, got -3"),
    (dict(max_spikes=4, input_max_spikes=2.5), r"input_max_spikes must be a non-negative integer or None, got 2\.5"),
    (dict(max_spikes=4, input_max_spikes=True), r"input_max_spikes .* got True")])
def test_import_refuses_bad_max_spikes_arguments(kwargs, match):
    # int(max_spikes) made 2.7 a layer with 2 spikes per neuron and True one with 1, where LIFLayer refuses both.
    graph, *_ = other_tool_graph()
    with pytest.raises(ValueError, match=match):
        sk.import_nir(graph, t_max=60.0, **kwargs)
    model = sk.import_nir(graph, t_max=60.0, max_spikes=np.int64(3), input_max_spikes=np.int64(2))
    assert model.layers[0].max_spikes == 3 and tuple(model.inputs[0].shape) == (None, 4, 2)


def test_import_refuses_weights_and_delays_beyond_float32():
    # r * w_in / tau_syn scales NIR's weights; past float32's range the layer got inf weights (a numpy warning only).
    graph, *_ = other_tool_graph(r=1e39)
    with pytest.raises(ValueError, match=r"node 'lif1': its input weights .* exceed the float32 range"):
        sk.import_nir(graph, synapse="jump", max_spikes=4, t_max=60.0)
    graph, *_ = other_tool_graph(r=1e307)  # beyond float64 too once multiplied by w_in / tau_syn: no numpy warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match=r"node 'lif1': its input weights .* exceed the float32 range, up to inf"):
            sk.import_nir(graph, max_spikes=4, t_max=60.0)
    graph, *_ = other_tool_graph(affine=False)
    graph.nodes["d"] = nir.Delay(delay=np.full(6, 1e36))  # 1e36 s is finite, 1e39 ms is not (in float32)
    graph.edges[:] = [("in", "fc1"), ("fc1", "d"), ("d", "lif1"), ("lif1", "fc2"), ("fc2", "li"), ("li", "out")]
    with pytest.raises(ValueError, match=r"node 'lif1': its input delays exceed the float32 range in 'ms'"):
        sk.import_nir(graph, max_spikes=4, t_max=60.0)

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



@pytest.mark.parametrize("names, taken", [(("a", "a_weight"), "a_weight"), (("a_weight", "a"), "a_weight"),
                                          (("a", "output"), "output"), (("input", "b"), "input")])
def test_export_refuses_layer_names_whose_nodes_collide(names, taken):
    # Layers "a" and "a_weight" both need the node "a_weight": the second overwrote the first (a layer's neurons or
    # weights lost from the graph) without an error.
    model = keras.Sequential([keras.Input(shape=(5, 3))] + [
        sk.LIFLayer(5, tau_mem=20.0, tau_syn=10.0, max_spikes=2, calibrate=None, name=name) for name in names])
    with pytest.raises(ValueError, match=rf"needs the node name '{taken}', which is taken by"):
        sk.export_nir(model)

def test_spikescan_keras_imports_without_nir():
    code = ("import sys; sys.modules['nir'] = None\n"
            "import spikescan_keras as sk\n"
            "try:\n    sk.export_nir(None)\nexcept ImportError as e:\n    print('ImportError', e)\n")
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "ImportError" in out.stdout and "spikescan[nir]" in out.stdout


# ------------------------------------------------------------------------------------------------- recurrent layers

def make_recurrent_model(recurrent_delays=False, seed=0, per_neuron=False):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(shape=(5, 3)),
        sk.LIFLayer(7, tau_mem=TAU_MEM, tau_syn=TAU_SYN, threshold=0.8, max_spikes=4, calibrate=(0.2, 0.95),
                    recurrent=True, recurrent_delays=recurrent_delays, max_delay=4.0, recurrent_scale=0.25,
                    trainable_time_constants=per_neuron, trainable_threshold=per_neuron, name="lif_r"),
        sk.LIReadout(3, tau_mem=20.0, tau_syn=5.0, readout="integral", t_max=60.0, name="readout")])
    layer = model.layers[0]
    layer.kernel_scale.assign(0.6)  # scales the input kernel only, not the recurrent weights
    rec = np.random.default_rng(seed + 10).normal(0.0, 0.3, (7, 7)).astype(np.float32)
    rec[0, 1], rec[1, 0] = 0.9, -0.7  # asymmetric: [k, i] from neuron k to neuron i
    layer.recurrent_kernel.assign(rec / np.float32(0.25))  # the weights R = rec (a power of two: exact)
    np.testing.assert_array_equal(layer.recurrent_weights(), rec)
    if per_neuron:  # trained values, one per neuron
        layer.set_time_constants(np.linspace(0.8, 1.3, 7).astype(np.float32) * TAU_MEM,
                                 np.linspace(1.2, 0.9, 7).astype(np.float32) * TAU_SYN)
        layer.set_thresholds(np.linspace(0.7, 0.9, 7).astype(np.float32))
    return model


def hidden_spikes(model, x):
    return keras.ops.convert_to_numpy(model.layers[0](x, training=False))


@pytest.mark.parametrize("recurrent_delays,per_neuron", [(False, False), (True, False), (True, True)])
def test_recurrent_round_trip_through_file_is_exact(tmp_path, recurrent_delays, per_neuron):
    model = make_recurrent_model(recurrent_delays, per_neuron=per_neuron)
    path = tmp_path / "recurrent.nir"
    nir.write(path, sk.export_nir(model))
    back = sk.import_nir(nir.read(path))
    x = spikes(np.random.default_rng(11))
    assert_same(model, back, x)
    np.testing.assert_array_equal(hidden_spikes(model, x), hidden_spikes(back, x))
    a, b = model.layers[0], back.layers[0]
    assert b.recurrent and b.use_recurrent_delays == recurrent_delays
    for a_layer, b_layer in zip(model.layers, back.layers):
        assert a_layer.get_config() == b_layer.get_config()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(b.recurrent_kernel),
                                  keras.ops.convert_to_numpy(a.recurrent_kernel))
    if recurrent_delays:
        np.testing.assert_array_equal(b.recurrent_delay_values(),
                                      a.recurrent_delay_values())
    if per_neuron:  # the per-neuron values are in the graph, exactly
        for name, got, want in zip(("tau_mem", "tau_syn"), b.time_constants(), a.time_constants()):
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(b.thresholds(), a.thresholds(), rtol=1e-6)
    # The recurrent connection matters in this network, so the comparison above tests it.
    b.recurrent_kernel.assign(np.zeros((7, 7), np.float32))
    assert not np.array_equal(hidden_spikes(model, x), hidden_spikes(back, x))


def test_recurrent_export_is_a_cycle_with_nir_orientation():
    model = make_recurrent_model()
    rec = model.layers[0].recurrent_weights()  # recurrent_kernel * 0.25
    g = sk.export_nir(model)
    assert list(g.nodes) == ["input", "lif_r_weight", "lif_r", "lif_r_recurrent", "readout_weight", "readout",
                             "output"]
    assert g.edges == [("input", "lif_r_weight"), ("lif_r_weight", "lif_r"), ("lif_r", "lif_r_recurrent"),
                       ("lif_r_recurrent", "lif_r"), ("lif_r", "readout_weight"), ("readout_weight", "readout"),
                       ("readout", "output")]
    w = g.nodes["lif_r_recurrent"].weight
    assert isinstance(g.nodes["lif_r_recurrent"], nir.Linear) and w.dtype == np.float32
    assert (w[1, 0], w[0, 1]) == (np.float32(0.9), np.float32(-0.7))  # [out = i, in = k] = recurrent_kernel[k, i]
    np.testing.assert_array_equal(w, rec.T)  # not scaled by kernel_scale (0.6), unlike lif_r_weight
    np.testing.assert_array_equal(w, keras.ops.convert_to_numpy(model.layers[0].recurrent_kernel).T * 0.25)
    np.testing.assert_array_equal(g.nodes["lif_r_weight"].weight,
                                  (keras.ops.convert_to_numpy(model.layers[0].kernel) * np.float32(0.6)).T)
    meta = g.nodes["lif_r"].metadata["spikescan"]
    assert meta["recurrent"] and not meta["recurrent_delays"] and meta["max_total_spikes"] == 10_000
    assert meta["recurrent_scale"] == meta["recurrent_kernel_scale"] == 0.25
    # Recurrent delays: the per-synapse pattern of input delays, inside the cycle.
    model = make_recurrent_model(recurrent_delays=True)
    layer = model.layers[0]
    rec, rdel = layer.recurrent_weights(), layer.recurrent_delay_values()
    g = sk.export_nir(model)
    assert [e for e in g.edges if "recurrent" in e[0] or "recurrent" in e[1]] == [
        ("lif_r", "lif_r_recurrent_fanout"), ("lif_r_recurrent_fanout", "lif_r_recurrent_delay"),
        ("lif_r_recurrent_delay", "lif_r_recurrent"), ("lif_r_recurrent", "lif_r")]
    fan, delay = g.nodes["lif_r_recurrent_fanout"].weight, g.nodes["lif_r_recurrent_delay"].delay
    w = g.nodes["lif_r_recurrent"].weight
    assert fan.shape == (49, 7) and delay.shape == (49,) and w.shape == (7, 49)
    for k in range(7):
        for i in range(7):
            s = k * 7 + i  # slot: the spike of k delayed by recurrent_delays[k, i] into neuron i
            assert fan[s, k] == 1 and fan[s].sum() == 1
            assert delay[s] == rdel[k, i].astype(np.float64) / 1000  # seconds
            assert w[i, s] == rec[k, i] and np.count_nonzero(w[:, s]) <= 1


def test_feed_forward_export_has_no_recurrent_parts():
    g = sk.export_nir(make_model(delays=True))
    assert not any("recurrent" in n for n in g.nodes)
    names = list(g.nodes)
    assert g.edges == list(zip(names[:-1], names[1:]))  # still a plain chain
    for name in ("lif_a", "lif_b"):
        assert not {"recurrent", "recurrent_delays"} & set(g.nodes[name].metadata["spikescan"])


def two_neuron_graph(rec_weight, affine=False):
    """Input (1) -> Linear -> CubaLIF (2 neurons) -> Output, neuron 0 driven by the input, neuron 1 only through the
    recurrent Linear ``rec_weight`` [out, in] (third-party form, seconds, norse's jump convention)."""
    ones = np.ones(2)
    rec = (nir.Affine(weight=rec_weight, bias=np.zeros(2, np.float32)) if affine
           else nir.Linear(weight=rec_weight))
    nodes = {"in": nir.Input(input_type=np.array([1])),
             "fc": nir.Linear(weight=np.array([[10.0], [0.0]], np.float32)),
             "lif": nir.CubaLIF(tau_mem=0.02 * ones, tau_syn=0.005 * ones, r=ones, v_leak=0 * ones,
                                v_threshold=ones, v_reset=0 * ones, w_in=ones),
             "rec": rec,
             "out": nir.Output(output_type=np.array([2]))}
    edges = [("in", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "out")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def test_recurrent_import_follows_nir_orientation():
    x = np.array([[[1.0, np.inf]]], np.float32)  # one input spike at 1 ms
    zero_to_one = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)  # NIR [out, in]: neuron 0 -> neuron 1
    for affine in (False, True):
        model = sk.import_nir(two_neuron_graph(zero_to_one, affine), synapse="jump", max_spikes=2)
        layer = model.layers[0]
        assert layer.recurrent and not layer.use_recurrent_delays and layer.recurrent_scale == "auto"
        assert layer.recurrent_kernel_scale == 0.5  # "auto" for 1 input into 2 neurons: exact on import
        np.testing.assert_array_equal(layer.recurrent_weights(), zero_to_one.T)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.recurrent_kernel), zero_to_one.T * 2)
        out = hidden_spikes(model, x)[0]
        assert np.isfinite(out[0, 0]) and np.isfinite(out[1, 0]) and out[1, 0] > out[0, 0]
    # The transposed matrix connects neuron 1 to neuron 0: neuron 1 stays silent.
    out = hidden_spikes(sk.import_nir(two_neuron_graph(zero_to_one.T.copy()), synapse="jump", max_spikes=2), x)[0]
    assert np.isfinite(out[0, 0]) and not np.isfinite(out[1]).any()


def test_unsupported_cycles_name_the_nodes():
    def check(graph, match):
        with pytest.raises(ValueError, match=match):
            sk.import_nir(graph, max_spikes=4, t_max=60.0)

    rec = np.eye(6, dtype=np.float32)
    graph, *_ = other_tool_graph()
    graph.edges.append(("lif1", "lif1"))  # a self-edge without a Linear
    check(graph, r"recurrent edge \('lif1' -> 'lif1'\) closes the cycle 'lif1' -> 'lif1'")
    graph, *_ = other_tool_graph()
    graph.nodes["fc2b"] = nir.Linear(weight=np.ones((6, 2), np.float32))
    graph.edges += [("li", "fc2b"), ("fc2b", "lif1")]  # a cycle through two layers
    check(graph, r"node 'fc2b': recurrent edge \('fc2b' -> 'lif1'\) closes the cycle "
                 r"'lif1' -> 'fc2' -> 'li' -> 'fc2b' -> 'lif1'")
    graph, *_ = other_tool_graph()
    graph.nodes["li_rec"] = nir.Linear(weight=np.eye(2, dtype=np.float32))
    graph.edges += [("li", "li_rec"), ("li_rec", "li")]
    check(graph, r"node 'li': recurrent connection 'li' -> 'li_rec' -> 'li'.*CubaLI")
    graph, *_ = other_tool_graph()
    graph.nodes.update(r1=nir.Linear(weight=rec), r2=nir.Linear(weight=rec))
    graph.edges += [("lif1", "r1"), ("r1", "lif1"), ("lif1", "r2"), ("r2", "lif1")]
    check(graph, r"node 'lif1': two recurrent connections, 'lif1' -> 'r1' -> 'lif1' and 'lif1' -> 'r2' -> 'lif1'")
    graph, *_ = other_tool_graph()
    graph.nodes["r1"] = nir.Affine(weight=rec, bias=np.ones(6, np.float32))
    graph.edges += [("lif1", "r1"), ("r1", "lif1")]
    check(graph, r"node 'r1'.*'bias'")
    graph, *_ = other_tool_graph()
    graph.nodes["r1"] = nir.Linear(weight=np.ones((6, 5), np.float32))
    graph.edges += [("lif1", "r1"), ("r1", "lif1")]
    check(graph, r"node 'r1'.*5 inputs")
    graph, *_ = other_tool_graph()
    graph.nodes["r1"] = nir.Delay(delay=np.zeros(6))
    graph.edges += [("lif1", "r1"), ("r1", "lif1")]
    check(graph, r"node 'r1'.*unsupported run of synapse nodes Delay")
    graph, *_ = other_tool_graph()
    ones6 = np.ones(6)
    graph.nodes["lif1"] = nir.CubaLIF(tau_mem=np.linspace(0.01, 0.02, 6), tau_syn=0.005 * ones6, r=ones6,
                                      v_leak=0 * ones6, v_threshold=ones6, v_reset=0 * ones6, w_in=ones6)
    graph.nodes["r1"] = nir.Linear(weight=rec)
    graph.edges += [("lif1", "r1"), ("r1", "lif1")]
    # Per-neuron time constants in a recurrent cycle are no longer refused: a recurrent layer with trainable ones.
    layer = sk.import_nir(graph, max_spikes=4, t_max=60.0).layers[0]
    assert layer.recurrent and layer.trainable_time_constants
    np.testing.assert_allclose(layer.time_constants()[0], np.linspace(10, 20, 6),
                               rtol=1e-6)


def test_third_party_per_neuron_values_keep_their_values_through_training():
    # Per-neuron thresholds and time constants from another tool: the floors come from every neuron's values, not
    # neuron 0's (whose 5% was 0.5 and 0.25 here: one step at learning rate 0 moved neuron 1's 0.1 up to them and
    # changed its spikes).
    n_in, n = 3, 2
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type=np.array([n_in])),
        "fc": nir.Linear(weight=np.array([[1, 1, 1], [30, 30, 30]], np.float32)),
        "lif": nir.CubaLIF(tau_syn=np.array([5e-3, 0.1e-3]), tau_mem=np.array([20e-3, 20e-3]), r=np.ones(n),
                           v_leak=np.zeros(n), v_threshold=np.array([10.0, 0.1]), v_reset=np.zeros(n),
                           w_in=np.array([5e-3, 0.1e-3])),
        "out": nir.Output(output_type=np.array([n]))}, edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")])
    model = sk.import_nir(graph, max_spikes=4)
    layer = model.layers[0]
    assert layer.min_threshold == pytest.approx(0.005) and layer.min_time_constant == pytest.approx(0.005)
    x = np.full((2, n_in, 1), np.inf, np.float32)
    x[:, :, 0] = [1.0, 2.0, 3.0]
    before = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.isfinite(before[0, 1]).sum() >= 2
    model.compile(keras.optimizers.SGD(learning_rate=0.0), "mse")
    model.fit(x, np.zeros((2, n, 4), np.float32), epochs=1, verbose=0)
    np.testing.assert_array_equal(layer.thresholds(), np.float32([10.0, 0.1]))
    np.testing.assert_allclose(layer.time_constants()[1], [5.0, 0.1], rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, training=False)), before)


def test_round_trip_keeps_the_runaway_limit_and_the_revival_penalty(tmp_path):
    model = keras.Sequential([keras.Input(shape=(5, 3)),
                              sk.LIFLayer(6, tau_mem=20.0, tau_syn=10.0, max_spikes=3, max_total_spikes=500),
                              sk.LIReadout(3, tau_mem=20.0, tau_syn=10.0, t_max=60.0, readout="max",
                                           revival_penalty=0.0)])
    nir.write(tmp_path / "g.nir", sk.export_nir(model))
    back = sk.import_nir(nir.read(tmp_path / "g.nir"))
    assert back.layers[0].max_total_spikes == 500
    assert back.layers[1].revival_penalty == 0.0


def test_setters_refuse_values_training_would_move():
    model = keras.Sequential([keras.Input(shape=(3, 2)),
                              sk.LIFLayer(2, tau_mem=20.0, tau_syn=10.0, max_spikes=2, delays=True, max_delay=5.0,
                                          trainable_time_constants=True, recurrent=True, recurrent_delays=True)])
    layer = model.layers[0]
    with pytest.raises(ValueError, match=r"tau_syn must be >= 0\.5 .* got 0\.1 at index \(1,\)"):
        layer.set_time_constants(np.array([20.0, 20.0]), np.array([10.0, 0.1]))
    with pytest.raises(ValueError, match=r"delays must be within \[0\.0, 5\.0\] .* got 6\.0 at index \(2, 1\)"):
        layer.set_delay_values(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 6.0]]))
    with pytest.raises(ValueError, match=r"recurrent delays must be within \[0\.0, 5\.0\] .* got nan"):
        layer.set_recurrent_delay_values(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"delays must be within .* got -1\.0"):
        layer.set_delay_values(-np.ones((3, 2)))
    layer.set_delay_values(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]))  # the bounds themselves are in range
    np.testing.assert_allclose(layer.delay_values(), [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])


def test_export_skips_spike_dropout():
    """SpikeDropout is the identity outside training: a model with it exports the same graph as one without."""
    plain = make_model(delays=False)
    layers = [layer for layer in plain.layers]
    dropped = keras.Sequential([keras.Input(shape=(5, 3)), sk.SpikeDropout(0.2), layers[0], sk.SpikeDropout(0.1),
                                *layers[1:]])
    a, b = sk.export_nir(plain), sk.export_nir(dropped)
    assert list(a.nodes) == list(b.nodes) and a.edges == b.edges
    np.testing.assert_array_equal(a.nodes["lif_a_weight"].weight, b.nodes["lif_a_weight"].weight)
