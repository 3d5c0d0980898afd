"""Export and import of spiking models as NIR graphs (Neuromorphic Intermediate Representation, ``pip install nir``).

``export_nir(model)`` turns a ``keras.Sequential`` of ``LIFLayer`` / ``LIReadout`` layers into a ``nir.NIRGraph``;
``import_nir(graph)`` builds the ``keras.Sequential`` back, from our own graphs or from graphs written by other
tools (a chain ``Input -> Linear -> CubaLIF -> ... -> Linear -> CubaLI -> Output``). ``nir`` is imported only
inside these functions.

The neuron (DESIGN.md section 1) and NIR's ``CubaLIF`` (``nir.CubaLIF`` docstring), for one neuron::

    spikescan:  tau_mem dV/dt = -V + I        tau_syn dI/dt = -I        I <- I + w  per input spike
                spike when V reaches threshold (upwards), then V <- 0 (I is kept); V = I = 0 at t = 0
    NIR:        tau_mem dv/dt = (v_leak - v) + r I      tau_syn dI/dt = -I + w_in S
                spike when v > v_threshold, then v <- v_reset;   S = W s(t)  (a Linear node W on the spikes)

NIR spikes are events in continuous time, so a spike train ``s(t)`` is a sum of Dirac deltas: one input spike
through weight ``W`` adds ``w_in W`` to ``tau_syn dI/dt`` for an instant, so ``I`` jumps by ``w_in W / tau_syn``
(and the drive of ``v`` by ``r`` times that). The two models agree when ``r = 1``, ``v_leak = v_reset = 0``,
``v_threshold = threshold`` and ``w_in W / tau_syn = w``. We write ``W = w`` unchanged and put the time constant
into ``w_in``:

=============================  ===========================================================================
NIR field                      spikescan value (export) / use (import)
=============================  ===========================================================================
``Input.shape``                ``[n_in]``, the first layer's input neurons (its ``max_spikes`` axis, the
                               spike-tensor padding, is in the graph metadata)
``Linear.weight [out, in]``    ``(kernel * kernel_scale).T``, float32 (the voltage unit and calibration folded
                               in); import: the weights ``(weight * r * w_in / tau_syn).T``, exact when
                               ``w_in == tau_syn`` and ``r == 1``. An ``Affine`` with zero bias reads as Linear
``CubaLIF.tau_mem, tau_syn``   ``tau_mem``, ``tau_syn`` per neuron (arrays of one value), in the graph's unit
``CubaLIF.w_in``               ``tau_syn`` (same array, graph unit): a spike then moves ``I`` by exactly ``W``
``CubaLIF.r``                  1
``CubaLIF.v_leak, v_reset``    0 (import: anything else is a ValueError)
``CubaLIF.v_threshold``        ``threshold``
``CubaLI``                     the ``LIReadout``: same fields and values, no threshold. NIR's output is
                               ``v(t)``; our logit is a functional of it (``readout`` below, in metadata)
``Delay`` (delays)             see "Delays" below
recurrent connections          see "Recurrent layers" below
``metadata["spikescan"]``      everything NIR has no field for (below)
=============================  ===========================================================================

Because ``W`` equals our weight, a tool that ignores ``w_in`` and reads ``W`` as the jump of ``I`` simulates our
exported graphs with our dynamics: jaxsnn's importer does not read ``w_in`` (it reads time constants in ms:
export with ``graph_time_unit="ms"`` for it). A time-stepped tool that multiplies by ``w_in`` and integrates
``tau_syn dI/dt = -I + w_in S`` with one Euler step per time step, a spike entering as 1 rather than as a delta
of area 1, moves ``I`` by ``dt w_in W / tau_syn = dt W`` per spike: our currents come out ``dt`` times too weak
there (norse's importer, as of its source at commit 22a17ec, does this, with ``dt = 1e-3`` s by default: 1000
times in a graph written in seconds); scale the weights by ``1 / dt`` for such a tool. Reading third-party graphs,
``import_nir(..., synapse="dirac")`` (default) applies NIR's equations as written (jump ``r w_in W / tau_syn``);
``synapse="jump"`` reads ``I`` jumps by ``r w_in W`` instead, the convention of graphs written by norse
(``w_in = 1``, ``r = 1``: jump ``W``). ``r`` is folded into the weights (``I' = r I`` obeys the same equations),
so ``r != 1`` imports exactly; non-zero ``v_leak`` or ``v_reset`` (no equivalent here) raise ValueError. NIR's
``v > v_threshold`` and our upward crossing of ``threshold`` are the same event in continuous time.

Time unit. NIR graphs carry no unit field, and the ecosystem disagrees: the primitives table of NIR's
documentation lists time constants in ms, while norse and snnTorch write seconds (jaxsnn reads ms).
``export_nir`` writes seconds by default (``graph_time_unit="s"``: SI, as norse and snnTorch) and records the
unit in ``graph.metadata["spikescan"]["time_unit"]``; the model's own unit is ``time_unit`` (``"ms"``
default, as in our examples; also ``"s"``, ``"us"``). Every time-valued field (``tau_mem``, ``tau_syn``,
``w_in``, ``Delay.delay``) is converted by one exact multiplication or correctly rounded division by a power of
1000; ``import_nir`` converts back (the graph unit from our metadata when present, else ``graph_time_unit``,
default ``"s"``) and, where our metadata holds the model's original value and it agrees with the converted one
to 1e-12, takes the original, so a round trip reproduces the model bit for bit.

Delays (``LIFLayer(delays=True)``: one delay per synapse ``D[j, i]``, input spike ``(t, j)`` reaches neuron
``i`` at ``t + D[j, i]``). NIR's ``Delay`` delays a whole signal, so a per-synapse delay needs one signal per
synapse. Export, for a layer ``L`` with ``n_in`` inputs and ``n_out`` neurons, ``K = n_in * n_out``::

    ... -> L_fanout: Linear [K, n_in], 1 at (j * n_out + i, j), else 0     (input j copied to K slots)
        -> L_delay:  Delay, delay[j * n_out + i] = D[j, i]
        -> L_weight: Linear [n_out, K], kernel_eff[j, i] at (i, j * n_out + i), else 0
        -> L: CubaLIF

This is exact under NIR's semantics (Linear and Delay are linear and time-invariant) and uses only standard
nodes, but the two dense matrices hold ``n_in * n_out * (n_in + n_out)`` floats (5 x 120: 76 800; 700 x 512:
434 M, 1.7 GB in memory; ``nir.write`` gzips the zeros away on disk). Importers that implement ``nir.Delay``
(and a Linear on its output) can run it; not all do (jaxsnn's, for one, reads only Input, Linear and CubaLIF):
check a tool's list of supported primitives. ``import_nir`` reads this pattern (in any slot order: a fan-out
with one non-zero per row, at most one path per synapse) and also ``Delay -> Linear`` (one delay per input) and
``Linear -> Delay`` (one delay per neuron).

Recurrent layers (``LIFLayer(recurrent=True)``: a spike of neuron ``k`` at ``t`` adds ``R[k, i]`` to
neuron ``i``'s current at ``t``, or at ``t + recurrent_delays[k, i]`` with ``recurrent_delays=True``). NIR has no
recurrent node; a graph may have cycles (NIR's documentation: "a recurrent network, a graph with cycles"), and a
node's input is the sum of its incoming edges. The connection is the cycle::

    ... -> L_weight -> L: CubaLIF -> L_recurrent: Linear [n_out, n_out] = R.T -> L
                         L -> (next layer)

so NIR weight ``[i, k]`` (``[out, in]``) is ``R[k, i]``, with ``R = recurrent_kernel * recurrent_kernel_scale`` the
weights the layer computes with (``LIFLayer.recurrent_weights()``; on import, ``recurrent_kernel = R /
recurrent_kernel_scale``, exact for the default power-of-two factor). Through ``w_in = tau_syn`` a recurrent spike moves
``I`` by exactly the weight, as an input spike does; ``kernel_scale`` applies to the input kernel only. With
``recurrent_delays`` the cycle holds the per-synapse pattern of "Delays" (exact for the same reason: Linear and Delay
are linear and time-invariant, and a zero delay is the undelayed connection), ``L -> L_recurrent_fanout ->
L_recurrent_delay -> L_recurrent -> L`` with ``n_out`` inputs
(``2 n_out^3 + n_out^2`` floats: 512 neurons, 268 M). A zero-delay self-connection acts after the sender's reset
(our convention; in continuous time the reset and the current jump coincide and the jump moves no voltage at
once, so NIR's equations give the same); discrete-time simulators deliver recurrent spikes a step later. snnTorch
writes its recurrent layers as the same cycle inside a subgraph node, which ``import_nir`` does not read (subgraphs
are rejected). ``import_nir`` reads, for each CubaLIF, at most one cycle ``CubaLIF -> [synapses] -> the same
CubaLIF`` whose synapse nodes (Linear, Affine with zero bias, Delay; the runs accepted before a layer) have one
input and one output each, into ``LIFLayer(recurrent=True, recurrent_delays=<a Delay in the cycle>)``, the weight
converted as an input weight (``synapse``, ``r``, ``w_in``); every other cycle (two layers, a CubaLI, a self-edge
without a Linear, two recurrent cycles on one node) raises ValueError naming its nodes. A recurrent CubaLIF may have
time constants and thresholds per neuron, as a feed-forward one (``trainable_time_constants``,
``trainable_threshold``).

Metadata (``graph.metadata["spikescan"]``: ``format``, ``time_unit`` (the graph's), ``model_time_unit``,
``synapse``, ``input_max_spikes``; each neuron node's ``metadata["spikescan"]``: the layer's ``layer`` class,
``name``, ``units``, ``tau_mem``, ``tau_syn``, ``threshold`` and the fields NIR lacks, in the model's unit:
``max_spikes``, ``method``, ``solver``, ``chunk_size``, ``calibrate`` (``"none"`` when off), ``silence_penalty``,
``max_delay``, ``input_spikes``, ``input_window``, ``spike_count_strength`` / ``spike_count_tau``,
``max_total_spikes``, ``trainable_time_constants`` / ``min_time_constant``, ``trainable_threshold`` /
``min_threshold``, ``kernel_scale`` (already folded into the weights; informative), and for recurrent layers
``recurrent``, ``recurrent_delays`` (informative: import reads the graph's cycle), ``recurrent_scale``
(``"auto"`` or the factor) and ``recurrent_kernel_scale`` (folded into the weights; informative) for ``LIFLayer``;
``readout``, ``t_max``, ``tau_readout``, ``scale`` (``"auto"`` or the factor; with ``auto_scale_rule``, 2 since
``LIReadout``'s unit-free ``"auto"``: graphs without it load with the factor ``"auto"`` stood for before),
``trainable_time_constants``,
``min_time_constant``, ``revival_penalty`` for ``LIReadout``. A third-party graph with per-neuron time constants
or thresholds imports with the default floors (5% of the smallest value) over all its neurons.
Optional entries are absent when None, as HDF5 has no None). Initializers, ``kernel_regularizer`` and
``recurrent_regularizer`` are not carried. Imported ``LIFLayer`` s hold the weights over their ``voltage_unit``
(``kernel = weights / voltage_unit``, ``kernel_scale = voltage_unit``: exact, a power of two) and are marked as
calibrated, so training an imported model starts from the imported weights. Their variables take the dtype of
Keras' global dtype policy (float32 by default, float64 under ``keras.config.set_dtype_policy("float64")``); graph
values that dtype cannot hold (float64 weights of other tools, a weight factor ``r w_in / tau_syn``) are rounded to
it with a ``UserWarning`` naming each node and field and the largest relative change.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import keras
import numpy as np

from spikescan import _memory

from ._host import CappedSpikesWarning
from .layers import _AUTO_SCALE_RULE, FirstSpikeReadout, LIFLayer, LIReadout, SpikeCountRegularizer, SpikeDropout

_TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6}
_SYNAPSES = ("dirac", "jump")
_FORMAT = 1


def _nir():
    try:
        import nir
    except ImportError as err:
        raise ImportError(f"export_nir / import_nir need the nir package: pip install 'spikescan[nir]'  "
                          f"({err})") from err
    return nir


def _check_unit(name, unit):
    if unit not in _TIME_UNITS:
        raise ValueError(f"{name} must be one of {tuple(_TIME_UNITS)}, got {unit!r}")
    return unit


def _convert(x, src, dst):
    """Time values from unit ``src`` to ``dst``: one exact multiplication or one correctly rounded division."""
    a, b = _TIME_UNITS[src], _TIME_UNITS[dst]
    x = np.asarray(x, dtype=np.float64)
    return x * (b / a) if b >= a else x / (a / b)


def _numpy(v):
    return np.asarray(keras.ops.convert_to_numpy(v))


# ------------------------------------------------------------------------------------------------------------ export

def export_nir(model, *, time_unit="ms", graph_time_unit="s"):
    """A ``nir.NIRGraph`` of a ``keras.Sequential`` model of ``LIFLayer`` s and an optional final ``LIReadout``.

    Args:
        model: a built ``keras.Sequential`` (its input shape ``[batch, n_in, max_in]`` gives the ``Input`` node).
        time_unit: the unit of the model's time constants, delays and spike times: ``"ms"`` (default), ``"s"``
            or ``"us"``.
        graph_time_unit: the unit written into the graph: ``"s"`` (default) or ``"ms"`` / ``"us"``.

    Returns:
        ``nir.NIRGraph`` with nodes ``input``, per layer ``<name>_weight`` (Linear) and ``<name>`` (CubaLIF or
        CubaLI), with delays also ``<name>_fanout`` and ``<name>_delay``, for a recurrent layer the cycle
        ``<name> -> <name>_recurrent -> <name>`` (Linear ``R.T``, ``LIFLayer.recurrent_weights()``; with recurrent
        delays also ``<name>_recurrent_fanout`` and ``<name>_recurrent_delay`` in it), and ``output``; see the
        module docstring for the field-by-field mapping. Save it with ``nir.write(path, graph)``.
    """
    nir = _nir()
    _check_unit("time_unit", time_unit)
    _check_unit("graph_time_unit", graph_time_unit)
    if not isinstance(model, keras.Sequential):
        raise TypeError(f"export_nir supports keras.Sequential models, got {type(model).__name__}")
    # SpikeDropout is the identity outside training: the exported graph (an inference model) has no node for it.
    layers = [layer for layer in model.layers if not isinstance(layer, (keras.layers.InputLayer, SpikeDropout))]
    if not layers:
        raise ValueError("export_nir: the model has no layers")
    for k, layer in enumerate(layers):
        if isinstance(layer, FirstSpikeReadout):  # a CubaLIF would drop how its logits are read
            raise ValueError(f"export_nir: layer {layer.name!r} is a FirstSpikeReadout, whose logits (first spike "
                             "times, with the voltage of silent neurons) NIR cannot express; export the model without "
                             "it")
        if not isinstance(layer, (LIFLayer, LIReadout)):
            raise ValueError(f"export_nir: layer {layer.name!r} is a {type(layer).__name__}; only LIFLayer and a "
                             "final LIReadout have NIR equivalents")
        if isinstance(layer, LIReadout) and k != len(layers) - 1:
            raise ValueError(f"export_nir: LIReadout {layer.name!r} must be the last layer")
        if not layer.built:
            raise ValueError(f"export_nir: layer {layer.name!r} is not built; call the model on data or build it")
    capped = [(layer, int(_numpy(layer.capped_spikes))) for layer in layers if isinstance(layer, LIFLayer)]
    capped = [f"{layer.name!r} (max_spikes={layer.max_spikes}: {n} capped)" for layer, n in capped if n > 0]
    if capped:
        warnings.warn(f"export_nir: layers {', '.join(capped)} have passed on only the first max_spikes spikes of a "
                      "neuron on a sample (their capped_spikes count the rest). NIR has no such cap: another "
                      "simulator passes every spike on, so on inputs where a neuron fires more often the graph "
                      "computes other outputs than the model. For a graph that matches, raise max_spikes until "
                      "capped_spikes stays 0 on your data.", CappedSpikesWarning, stacklevel=2)
    delayed = sum(layer.kernel.shape[0] * layer.units * (layer.kernel.shape[0] + layer.units) for layer in layers
                  if isinstance(layer, LIFLayer) and layer.use_delays)
    delayed += sum(layer.units ** 3 * 2 for layer in layers
                   if isinstance(layer, LIFLayer) and layer.recurrent and layer.use_recurrent_delays)
    if delayed:  # the dense fan-out and weight matrices of the per-synapse delays (module docstring, "Delays")
        _memory.check("export_nir (per-synapse delays)", {"delay fan-out and weight matrices (float32)": 4 * delayed},
                      np, "per-synapse delays need n_in * n_out * (n_in + n_out) float32 numbers per layer in NIR's "
                      "standard nodes; export a model without delays, or with fewer inputs or neurons")
    wide = [layer.name for layer in layers if keras.backend.standardize_dtype(layer.variable_dtype) == "float64"]
    if wide:
        warnings.warn(f"export_nir: layers {wide} hold float64 weights; the graph carries float32 weights and delays "
                      "(import_nir builds float32 layers that reproduce them exactly), so the float64 values are "
                      "rounded to float32 (relative 6e-8)", stacklevel=2)
    try:
        input_shape = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, ValueError) as err:
        raise ValueError("export_nir: the model has no input shape; start it with keras.Input(shape=(n_in, "
                         "max_in))") from err

    def g(x):  # model time -> graph time
        return _convert(x, time_unit, graph_time_unit)

    nodes = {"input": nir.Input(input_type=np.array([input_shape[1]]))}
    edges = []
    prev = "input"
    owners = {"input": "the graph's Input", "output": "the graph's Output"}  # node name -> what it stands for

    def add(name, node, layer):  # a layer's node; a name taken twice would overwrite a node (a layer lost)
        if name in owners:
            raise ValueError(f"export_nir: layer {layer.name!r} needs the node name {name!r}, which is taken by "
                             f"{owners[name]}; rename the layer")
        owners[name] = f"layer {layer.name!r}"
        nodes[name] = node

    def chain(name, node, layer):
        nonlocal prev
        add(name, node, layer)
        edges.append((prev, name))
        prev = name

    for layer in layers:
        kernel = _numpy(layer.kernel).astype(np.float32)
        n_in, n_out = kernel.shape
        if isinstance(layer, LIFLayer):
            kernel = kernel * np.float32(_numpy(layer.kernel_scale))  # what the layer computes with, in float32
        if layer.trainable_time_constants:  # the trained per-neuron values
            tau_mem, tau_syn = (g(x.astype(np.float64)) for x in layer.time_constants())
        else:
            tau_mem, tau_syn = np.full(n_out, g(layer.tau_mem)), np.full(n_out, g(layer.tau_syn))
        if isinstance(layer, LIFLayer) and layer.use_delays:
            fanout, weight, delay = _per_synapse(kernel, layer.delay_values())
            chain(f"{layer.name}_fanout", nir.Linear(weight=fanout), layer)
            chain(f"{layer.name}_delay", nir.Delay(delay=g(delay)), layer)
            chain(f"{layer.name}_weight", nir.Linear(weight=weight), layer)
        else:
            chain(f"{layer.name}_weight", nir.Linear(weight=np.ascontiguousarray(kernel.T)), layer)
        meta = {"spikescan": _layer_metadata(layer, kernel_scale=isinstance(layer, LIFLayer))}
        common = dict(tau_mem=tau_mem, tau_syn=tau_syn, r=np.ones(n_out), v_leak=np.zeros(n_out), w_in=tau_syn.copy(),
                      metadata=meta)
        if isinstance(layer, LIFLayer):
            threshold = layer.thresholds().astype(np.float64)
            node = nir.CubaLIF(v_threshold=threshold, v_reset=np.zeros(n_out), **common)
        else:
            node = nir.CubaLI(**common)
        chain(layer.name, node, layer)
        if isinstance(layer, LIFLayer) and layer.recurrent:
            # The recurrent connection as a cycle (NIR has no recurrent node; a graph may have cycles):
            # L -> L_recurrent (Linear [out, in] = R.T) -> L, the input of L summing both edges.
            # The weights the layer computes with (recurrent_kernel * recurrent_kernel_scale); kernel_scale
            # applies to the input kernel only.
            rec = layer.recurrent_weights().astype(np.float32)
            loop = []
            if layer.use_recurrent_delays:
                fanout, weight, delay = _per_synapse(rec, layer.recurrent_delay_values())
                loop += [(f"{layer.name}_recurrent_fanout", nir.Linear(weight=fanout)),
                         (f"{layer.name}_recurrent_delay", nir.Delay(delay=g(delay)))]
            else:
                weight = np.ascontiguousarray(rec.T)
            loop.append((f"{layer.name}_recurrent", nir.Linear(weight=weight)))
            src = layer.name
            for name, rec_node in loop:
                add(name, rec_node, layer)
                edges.append((src, name))
                src = name
            edges.append((src, layer.name))
    nodes["output"] = nir.Output(output_type=np.array([layers[-1].units]))
    edges.append((prev, "output"))
    meta = {"format": _FORMAT, "time_unit": graph_time_unit, "model_time_unit": time_unit, "synapse": "dirac"}
    if input_shape[2] is not None:
        meta["input_max_spikes"] = int(input_shape[2])
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"spikescan": meta})


def _per_synapse(kernel, delays):
    """``(fanout [K, n_in], weight [n_out, K], delay [K] float64)``, ``K = n_in * n_out``: one signal per synapse,
    slot ``j * n_out + i`` carrying input ``j`` to neuron ``i`` (module docstring, "Delays")."""
    n_in, n_out = kernel.shape
    k = n_in * n_out
    fanout = np.repeat(np.eye(n_in, dtype=np.float32), n_out, axis=0)  # row j * n_out + i <- input j
    weight = np.zeros((n_out, k), dtype=np.float32)
    weight[np.tile(np.arange(n_out), n_in), np.arange(k)] = kernel.ravel()
    return fanout, weight, delays.astype(np.float32).astype(np.float64).ravel()


def _layer_metadata(layer, kernel_scale):
    meta = {"layer": type(layer).__name__, "name": layer.name, "units": layer.units, "tau_mem": layer.tau_mem,
            "tau_syn": layer.tau_syn}
    if isinstance(layer, LIReadout):
        meta.update(readout=layer.readout, t_max=layer.t_max, scale=layer.scale, auto_scale_rule=_AUTO_SCALE_RULE,
                    trainable_time_constants=layer.trainable_time_constants, min_time_constant=layer.min_time_constant,
                    revival_penalty=layer.revival_penalty)
        if layer.tau_readout is not None:
            meta["tau_readout"] = layer.tau_readout
        return meta
    meta.update(threshold=layer.threshold, max_spikes=layer.max_spikes, method=layer.method, solver=layer.solver,
                chunk_size=layer.chunk_size, silence_penalty=layer.silence_penalty,
                calibrate="none" if layer.calibrate is None else np.array(layer.calibrate, dtype=np.float64),
                input_window=layer.input_window, delays=layer.use_delays,
                trainable_time_constants=layer.trainable_time_constants, min_time_constant=layer.min_time_constant,
                trainable_threshold=layer.trainable_threshold, min_threshold=layer.min_threshold,
                max_total_spikes=layer.max_total_spikes)
    for key in ("max_delay", "input_spikes"):
        if getattr(layer, key) is not None:
            meta[key] = getattr(layer, key)
    if layer.recurrent:
        meta.update(recurrent=True, recurrent_delays=layer.use_recurrent_delays, recurrent_scale=layer.recurrent_scale,
                    recurrent_kernel_scale=layer.recurrent_kernel_scale)
    if layer.spike_count_regularizer is not None:
        meta.update(spike_count_strength=layer.spike_count_regularizer.strength,
                    spike_count_tau=layer.spike_count_regularizer.tau)
    if kernel_scale:
        meta["kernel_scale"] = float(_numpy(layer.kernel_scale))
    return meta


# ------------------------------------------------------------------------------------------------------------ import

def import_nir(graph, *, time_unit="ms", graph_time_unit=None, synapse="dirac", max_spikes=None, readout=None,
               t_max=None, tau_readout=None, input_max_spikes=None):
    """A ``keras.Sequential`` of ``LIFLayer`` s (and a final ``LIReadout``) equivalent to a NIR graph.

    Supported graphs are chains ``Input -> [synapses] -> CubaLIF -> ... -> [synapses] -> CubaLI|CubaLIF ->
    Output`` where ``[synapses]`` is ``Linear`` (or ``Affine`` with zero bias), ``Delay -> Linear``,
    ``Linear -> Delay`` or ``Linear -> Delay -> Linear`` (a fan-out, one delay per synapse), with time constants
    and thresholds equal across each node's neurons or, when a CubaLIF's differ (or our metadata says they were
    trained, CubaLI included), as per-neuron trainable weights (``trainable_time_constants``,
    ``trainable_threshold``), ``v_leak = v_reset = 0``. A CubaLIF may have one recurrent cycle ``CubaLIF ->
    [synapses] -> the same CubaLIF`` (module docstring, "Recurrent layers"): it becomes ``LIFLayer(recurrent=True)``.
    Anything else (other cycles, branches, subgraphs, other node types, non-zero ``v_leak``, ``v_reset`` or
    ``bias``) raises ValueError naming the node and field. The mapping is in the module docstring.

    Args:
        graph: a ``nir.NIRGraph`` (e.g. from ``nir.read(path)``).
        time_unit: unit of the returned model's times: ``"ms"`` (default), ``"s"`` or ``"us"``.
        graph_time_unit: the graph's unit; None takes the one our metadata records, else ``"s"``.
        synapse: ``"dirac"`` (NIR's equations: a spike through weight ``W`` moves ``I`` by ``r w_in W /
            tau_syn``) or ``"jump"`` (by ``r w_in W``: graphs written by norse and tools with its convention). A
            graph whose metadata records its convention (``export_nir``'s: ``"dirac"``) refuses the other one.
        max_spikes, readout, t_max, tau_readout: for neuron nodes without our metadata (third-party graphs):
            ``max_spikes`` of every ``LIFLayer`` (required then), ``readout`` (default ``"integral"``),
            ``t_max`` (required for a ``CubaLI``; in ``time_unit``) and ``tau_readout`` of the ``LIReadout``.
        input_max_spikes: the last axis of the model's input (spikes per input neuron); None takes the one our
            metadata records, else leaves it open.

    Returns:
        A built ``keras.Sequential``; compile it to train or evaluate.
    """
    nir = _nir()
    _check_unit("time_unit", time_unit)
    if synapse not in _SYNAPSES:
        raise ValueError(f"synapse must be one of {_SYNAPSES}, got {synapse!r}")
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"import_nir expects a nir.NIRGraph, got {type(graph).__name__}")
    gmeta = _meta_dict(graph.metadata)
    if "synapse" in gmeta and str(gmeta["synapse"]) != synapse:  # our export records its convention
        raise ValueError(f"import_nir: synapse={synapse!r}, but the graph's metadata says it was written with "
                         f"synapse={str(gmeta['synapse'])!r} (spikescan's export_nir): its weights would be read "
                         f"off by a factor tau_syn; pass synapse={str(gmeta['synapse'])!r}")
    if graph_time_unit is None:
        graph_time_unit = str(gmeta.get("time_unit", "s"))
    _check_unit("graph_time_unit", graph_time_unit)
    meta_unit = str(gmeta.get("model_time_unit", graph_time_unit))
    _check_unit("metadata model_time_unit", meta_unit)
    if input_max_spikes is not None:
        integer = isinstance(input_max_spikes, (int, np.integer)) and not isinstance(input_max_spikes, (bool, np.bool_))
        if not integer or input_max_spikes < 0:
            raise ValueError(f"input_max_spikes must be a non-negative integer or None, got "
                             f"{input_max_spikes!r}")
    if input_max_spikes is None and "input_max_spikes" in gmeta:
        input_max_spikes = int(gmeta["input_max_spikes"])

    chain, loops = _chain(graph, nir)
    n_in = _input_size(chain[0], graph.nodes[chain[0]])
    layers, weights, rounded = [], [], []
    synapses, n_prev = [], n_in
    for name in chain[1:-1]:
        node = graph.nodes[name]
        if isinstance(node, (nir.Linear, nir.Affine, nir.Delay)):
            synapses.append(name)
            continue
        if not isinstance(node, (nir.CubaLIF, nir.CubaLI)):
            hint = (" (spikescan neurons need a synaptic current: CubaLIF / CubaLI)"
                    if isinstance(node, (nir.LIF, nir.LI, nir.IF, nir.I)) else "")
            raise ValueError(f"import_nir: node {name!r}: NIR node type {type(node).__name__} is not supported"
                             f"{hint}; supported: Input, Linear, Affine (zero bias), Delay, CubaLIF, CubaLI, Output")
        if layers and isinstance(layers[-1], LIReadout):
            raise ValueError(f"import_nir: node {name!r} follows the CubaLI node {chain[chain.index(name) - 1]!r}; "
                             "a CubaLI (LIReadout) must be the last neuron node")
        if not synapses:
            raise ValueError(f"import_nir: node {name!r} has no Linear node before it")
        w, d = _synapses(graph, synapses, n_prev, nir)
        recurrent = None
        if name in loops:
            path = loops[name]
            rw, rd = _synapses(graph, path, w.shape[0], nir)
            if rw.shape[0] != w.shape[0]:
                raise ValueError(f"import_nir: node {path[-1]!r}: field 'weight' has {rw.shape[0]} outputs, the "
                                 f"recurrent connection of {name!r} needs {w.shape[0]}")
            recurrent = (rw, rd)
        layer, kernel, delays, taus, rec = _neuron(name, node, w, d, nir, time_unit, graph_time_unit, meta_unit,
                                                   synapse, dict(max_spikes=max_spikes, readout=readout, t_max=t_max,
                                                                 tau_readout=tau_readout), rounded, recurrent)
        layers.append(layer)
        weights.append((kernel, delays, taus, rec))
        synapses, n_prev = [], kernel.shape[1]
    if synapses:
        raise ValueError(f"import_nir: node {synapses[0]!r}: synapse nodes after the last neuron node are not "
                         "supported (the graph must end with CubaLIF or CubaLI -> Output)")
    if not layers:
        raise ValueError("import_nir: the graph has no CubaLIF or CubaLI node")
    if rounded:
        shown = "; ".join(f"node {name!r} {what} (largest relative change {rel:.3g})" for name, what, rel in rounded)
        warnings.warn(f"import_nir: the layers hold {_layer_dtype()} (keras.config.dtype_policy()), so these graph "
                      f"values are rounded to it: {shown}", stacklevel=2)
    model = keras.Sequential([keras.Input(shape=(n_in, input_max_spikes)), *layers])
    for layer, (kernel, delays, (taus, thresholds), (rec_kernel, rec_delays)) in zip(layers, weights):
        # An LIFLayer's kernel holds the weights over its voltage unit (a power of two: exact), kept in kernel_scale.
        unit = kernel.dtype.type(getattr(layer, "voltage_unit", 1.0))
        layer.kernel.assign(kernel / unit)
        if rec_kernel is not None:
            # Exact: an "auto" recurrent_kernel_scale is a power of two.
            layer.recurrent_kernel.assign(rec_kernel / rec_kernel.dtype.type(layer.recurrent_kernel_scale))
        if rec_delays is not None:
            layer.set_recurrent_delay_values(rec_delays)
        if taus is not None:
            layer.set_time_constants(*taus)
        if isinstance(layer, LIFLayer):
            if delays is not None:
                layer.set_delay_values(delays)
            if thresholds is not None:
                layer.set_thresholds(thresholds)
            layer.kernel_scale.assign(unit)
            layer.calibrated.assign(1)
    return model


def _meta_dict(metadata):
    meta = metadata.get("spikescan", {}) if isinstance(metadata, dict) else {}
    return dict(meta) if isinstance(meta, dict) else {}


def _chain(graph, nir):
    """Node names from the Input to the Output; ValueError for anything but a simple chain."""
    nodes = graph.nodes
    for name, node in nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise ValueError(f"import_nir: node {name!r}: nested NIR graphs (subgraphs, e.g. recurrent layers) are "
                             "not supported")
    inputs = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
    outputs = [n for n, v in nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"import_nir: the graph must have one Input and one Output node, got inputs {inputs} and "
                         f"outputs {outputs}")
    succ, pred = defaultdict(list), defaultdict(list)
    for a, b in graph.edges:
        a, b = str(a), str(b)
        for n in (a, b):
            if n not in nodes:
                raise ValueError(f"import_nir: edge ({a!r}, {b!r}) names the unknown node {n!r}")
        succ[a].append(b)
        pred[b].append(a)
    loops = _recurrent_loops(nodes, succ, pred, nir)
    for name, path in loops.items():  # take each layer's recurrent loop out of the graph
        for a, b in zip([name, *path], [*path, name]):
            succ[a].remove(b)
            pred[b].remove(a)
    remaining = [n for n in nodes if not any(n in path for path in loops.values())]
    # Any other cycle: an edge back to a node on the current depth-first path.
    state = dict.fromkeys(remaining, 0)  # 0 unseen, 1 on the path, 2 done
    for root in remaining:
        if state[root]:
            continue
        stack = [(root, iter(succ[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state[nxt] == 1:
                path = [n for n, _ in stack]
                cycle = " -> ".join(repr(n) for n in [*path[path.index(nxt):], nxt])
                raise ValueError(f"import_nir: node {node!r}: recurrent edge ({node!r} -> {nxt!r}) closes the cycle "
                                 f"{cycle}; the only cycle supported is a layer's recurrent connection CubaLIF -> "
                                 "Linear or Affine (zero bias), optionally with Delay as for input synapses, -> the "
                                 "same CubaLIF, each node in it with one input and one output")
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))
    chain = [inputs[0]]
    while chain[-1] != outputs[0]:
        cur = chain[-1]
        nxt = succ[cur]
        if len(nxt) != 1:
            raise ValueError(f"import_nir: node {cur!r}: {'no outgoing edge' if not nxt else f'edges to {nxt}'}; "
                             "only a chain Input -> ... -> Output is supported")
        if len(pred[nxt[0]]) != 1:
            raise ValueError(f"import_nir: node {nxt[0]!r}: several incoming edges {pred[nxt[0]]}; only a chain "
                             "Input -> ... -> Output is supported")
        chain.append(nxt[0])
    extra = sorted(set(remaining) - set(chain))
    if extra:
        raise ValueError(f"import_nir: node {extra[0]!r} is not on the path from {inputs[0]!r} to {outputs[0]!r}")
    return chain, loops


def _recurrent_loops(nodes, succ, pred, nir):
    """``{neuron node: [synapse nodes]}``: the cycles ``N -> S1 -> ... -> Sk -> N`` through synapse nodes
    (Linear, Affine, Delay) with one input and one output each, i.e. a layer's recurrent connection."""
    synapse_types = (nir.Linear, nir.Affine, nir.Delay)
    loops = {}
    for name, node in nodes.items():
        if not isinstance(node, (nir.CubaLIF, nir.CubaLI)):
            continue
        for start in succ[name]:
            path, cur = [], start
            while (cur != name and cur not in path and isinstance(nodes[cur], synapse_types)
                   and len(pred[cur]) == 1 and len(succ[cur]) == 1):
                path.append(cur)
                cur = succ[cur][0]
            if cur != name or not path:
                continue
            cycle = " -> ".join(repr(n) for n in [name, *path, name])
            if isinstance(node, nir.CubaLI):
                raise ValueError(f"import_nir: node {name!r}: recurrent connection {cycle}; a CubaLI (LIReadout) has "
                                 "no recurrent connections")
            if name in loops:
                other = " -> ".join(repr(n) for n in [name, *loops[name], name])
                raise ValueError(f"import_nir: node {name!r}: two recurrent connections, {other} and {cycle}; a "
                                 "spikescan layer has one recurrent weight matrix")
            loops[name] = path
    return loops


def _input_size(name, node):
    shape = np.asarray(node.input_type["input"]).ravel()
    if shape.size != 1:
        raise ValueError(f"import_nir: node {name!r}: field 'input_type' must be one-dimensional [n_in], got "
                         f"{shape.tolist()}")
    return int(shape[0])


def _matrix(name, node, nir):
    if isinstance(node, nir.Affine):
        bias = np.asarray(node.bias, dtype=np.float64)
        if np.any(bias != 0):
            raise ValueError(f"import_nir: node {name!r}: field 'bias' must be 0 (a constant input current has no "
                             f"spikescan equivalent), got values up to {np.abs(bias).max()!r}")
    w = np.asarray(node.weight)
    if w.ndim != 2:
        raise ValueError(f"import_nir: node {name!r}: field 'weight' must be a matrix [out, in], got shape {w.shape}")
    if w.dtype.kind not in "fiub" or not np.isfinite(w).all():
        raise ValueError(f"import_nir: node {name!r}: field 'weight' must be finite numbers")
    return w


def _delay(name, node, size):
    d = np.asarray(node.delay, dtype=np.float64).ravel()
    if d.size != size:
        raise ValueError(f"import_nir: node {name!r}: field 'delay' has {d.size} entries, expected {size}")
    if not (np.isfinite(d).all() and (d >= 0).all()):
        raise ValueError(f"import_nir: node {name!r}: field 'delay' must be finite and >= 0")
    return d


def _synapses(graph, names, n_in, nir):
    """``(weight [n_out, n_in], delay [n_out, n_in] or None)`` of a run of Linear / Affine / Delay nodes."""
    kinds = ["D" if isinstance(graph.nodes[n], nir.Delay) else "L" for n in names]
    mats = {n: _matrix(n, graph.nodes[n], nir) for n, k in zip(names, kinds) if k == "L"}
    first = names[0]
    if kinds[0] == "L" and mats[first].shape[1] != n_in:
        raise ValueError(f"import_nir: node {first!r}: field 'weight' has {mats[first].shape[1]} inputs, the "
                         f"previous node has {n_in} outputs")
    if kinds == ["L"]:
        return mats[first], None
    if kinds == ["D", "L"]:
        w = mats[names[1]]
        if w.shape[1] != n_in:
            raise ValueError(f"import_nir: node {names[1]!r}: field 'weight' has {w.shape[1]} inputs, expected {n_in}")
        return w, np.broadcast_to(_delay(first, graph.nodes[first], n_in), w.shape)
    if kinds == ["L", "D"]:
        w = mats[first]
        d = _delay(names[1], graph.nodes[names[1]], w.shape[0])
        return w, np.broadcast_to(d[:, None], w.shape)
    if kinds == ["L", "D", "L"]:
        return _fanout(names, mats[first], _delay(names[1], graph.nodes[names[1]], mats[first].shape[0]),
                       mats[names[2]], n_in)
    raise ValueError(f"import_nir: node {first!r}: unsupported run of synapse nodes "
                     f"{' -> '.join(type(graph.nodes[n]).__name__ for n in names)}; supported: Linear, Delay -> "
                     "Linear, Linear -> Delay, Linear -> Delay -> Linear")


def _fanout(names, fan, d, w2, n_in):
    """One delay per synapse: ``fan [K, n_in]`` copies inputs to K slots, ``d [K]`` delays them, ``w2 [n_out, K]``
    weighs them."""
    k = fan.shape[0]
    if w2.shape[1] != k:
        raise ValueError(f"import_nir: node {names[2]!r}: field 'weight' has {w2.shape[1]} inputs, expected {k}")
    n_out = w2.shape[0]
    nonzero = fan != 0
    if not np.all(np.count_nonzero(nonzero, axis=1) == 1):
        raise ValueError(f"import_nir: node {names[0]!r}: field 'weight': a fan-out before a Delay needs exactly one "
                         "non-zero entry per row")
    src = nonzero.argmax(axis=1)
    del nonzero
    gain = fan[np.arange(k), src]
    if k == n_in * n_out and np.array_equal(src, np.arange(k) // n_out) and np.all(gain == 1):  # export_nir's layout
        rows, cols = np.tile(np.arange(n_out), n_in), np.arange(k)
        on_pattern = w2[rows, cols]
        if np.count_nonzero(w2) != np.count_nonzero(on_pattern):
            raise ValueError(f"import_nir: node {names[2]!r}: field 'weight': slot j * n_out + i of the fan-out "
                             "may only feed neuron i (one delay per synapse)")
        return on_pattern.reshape(n_in, n_out).T, d.reshape(n_in, n_out).T
    gain = gain.astype(np.float64)
    ii, kk = np.nonzero(w2)
    jj = src[kk]
    pairs = ii * n_in + jj
    if len(np.unique(pairs)) != len(pairs):
        dup = int(np.argmax(np.bincount(pairs) > 1))  # the smallest pair value that occurs twice
        raise ValueError(f"import_nir: node {names[2]!r}: field 'weight': input {dup % n_in} reaches neuron "
                         f"{dup // n_in} through several delayed paths; spikescan has one delay per synapse")
    w = np.zeros((n_out, n_in), dtype=np.result_type(w2.dtype, np.float32))
    delay = np.zeros((n_out, n_in))
    w[ii, jj] = w2[ii, kk] * gain[kk] if np.any(gain != 1) else w2[ii, kk]
    delay[ii, jj] = d[kk]
    return w, delay


def _param(name, node, field, n):
    value = getattr(node, field)
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))
    except ValueError as err:
        raise ValueError(f"import_nir: node {name!r}: field {field!r} has shape {np.shape(value)}, the Linear node "
                         f"before it has {n} outputs") from err
    if not np.isfinite(arr).all():
        raise ValueError(f"import_nir: node {name!r}: field {field!r} must be finite")
    return arr


def _uniform(name, field, arr, positive=True):
    if np.any(arr != arr[0]):
        raise ValueError(f"import_nir: node {name!r}: field {field!r} must be the same for every neuron (spikescan "
                         f"layers have one value per layer), got values from {arr.min()!r} to {arr.max()!r}")
    if positive and not arr[0] > 0:
        raise ValueError(f"import_nir: node {name!r}: field {field!r} must be > 0, got {arr[0]!r}")
    return float(arr[0])


def _pick(converted, original):
    """The model's original value from our metadata when it matches the converted graph value (exact round trip)."""
    if original is not None and np.isclose(float(original), converted, rtol=1e-12, atol=0.0):
        return float(original)
    return float(converted)


# Relative changes up to a few float64 ulps are the unit conversion's (or the weight factor's) own rounding: a model
# exported by export_nir reads back within them, bit for bit after rounding to float32.
_ROUNDING_FLOOR = 2.0 ** -50


def _layer_dtype():
    """The variable dtype of the layers import_nir builds (no ``dtype`` argument: the global dtype policy's, float32
    under a float16 or bfloat16 one, ``layers._exact_dtype``)."""
    policy = keras.config.dtype_policy()
    return np.dtype(policy.variable_dtype if policy.compute_dtype in ("float32", "float64") else "float32")


def _note_rounding(rounded, name, what, exact, stored):
    """Append ``(name, what, largest relative change)`` to ``rounded`` where ``stored`` (the layer's dtype) differs
    from the float64 values ``exact`` by more than ``_ROUNDING_FLOOR``."""
    exact = np.asarray(exact, np.float64)
    changed = stored.astype(np.float64) != exact
    if np.any(changed):
        rel = float((np.abs(stored.astype(np.float64)[changed] - exact[changed]) / np.abs(exact[changed])).max())
        if rel > _ROUNDING_FLOOR:
            rounded.append((name, what, rel))


def _neuron(name, node, w, d, nir, time_unit, graph_unit, meta_unit, synapse, overrides, rounded, recurrent=None):
    """``(layer, kernel [n_in, n_out], delays [n_in, n_out] or None, (taus, thresholds),
    (recurrent_kernel [n_out, n_out] or None, recurrent_delays or None))`` for a CubaLIF / CubaLI, arrays in Keras'
    float type (``_layer_dtype``); ``recurrent``: the ``(weight [n_out, n_out], delay or None)`` of its recurrent
    connection, in NIR's [out, in] order. Values that type cannot hold exactly are appended to ``rounded``."""
    dtype = _layer_dtype()
    is_lif = isinstance(node, nir.CubaLIF)
    n_out = w.shape[0]
    p = {f: _param(name, node, f, n_out) for f in ("tau_mem", "tau_syn", "r", "v_leak", "w_in")}
    if is_lif:
        p.update({f: _param(name, node, f, n_out) for f in ("v_threshold", "v_reset")})
    for field in ("v_leak", "v_reset") if is_lif else ("v_leak",):
        if np.any(p[field] != 0):
            raise ValueError(f"import_nir: node {name!r}: field {field!r} must be 0 (spikescan neurons rest and reset "
                             f"at 0), got {float(p[field][np.argmax(p[field] != 0)])!r} (neuron "
                             f"{int(np.argmax(p[field] != 0))})")
    meta = _meta_dict(node.metadata)
    # A CubaLIF with one value per neuron, or a CubaLIF / CubaLI exported from trainable time constants, becomes a
    # layer with trainable per-neuron time constants; elsewhere one value per layer (a third-party CubaLI with
    # differing values is an error, as before).
    per_neuron = (bool(meta.get("trainable_time_constants", False))
                  or (is_lif and (np.any(p["tau_mem"] != p["tau_mem"][0]) or np.any(p["tau_syn"] != p["tau_syn"][0]))))
    if per_neuron:
        for field in ("tau_mem", "tau_syn"):
            if not np.all(p[field] > 0):
                raise ValueError(f"import_nir: node {name!r}: field {field!r} must be > 0, got {p[field].min()!r}")
        tau_mem_g, tau_syn_g = float(p["tau_mem"][0]), float(p["tau_syn"][0])
    else:
        tau_mem_g = _uniform(name, "tau_mem", p["tau_mem"])
        tau_syn_g = _uniform(name, "tau_syn", p["tau_syn"])
    same_unit = meta_unit == time_unit

    def model_time(graph_value, key):
        return _pick(float(_convert(graph_value, graph_unit, time_unit)), meta.get(key) if same_unit else None)

    def meta_time(key, default=None):
        if key not in meta:
            return default
        return float(_convert(float(meta[key]), meta_unit, time_unit))

    with np.errstate(over="ignore"):  # an infinite factor makes infinite weights, refused in weights() below
        factor = p["r"] * p["w_in"] / (p["tau_syn"] if synapse == "dirac" else 1.0)

    def weights(w, d, kind):  # NIR [out, in] -> our [in, out]; the factor is the receiving neuron's
        w = np.asarray(w)
        with np.errstate(over="ignore"):  # refused below: an infinite weight or delay is no layer's
            exact = np.ascontiguousarray((w.astype(np.float64) * factor[:, None]).T)
            exact_delay = None if d is None else np.ascontiguousarray(_convert(d, graph_unit, time_unit).T)
            kernel = exact.astype(dtype)
            delay = None if d is None else exact_delay.astype(dtype)
        if not np.isfinite(kernel).all():
            raise ValueError(f"import_nir: node {name!r}: its {kind} weights (the Linear weight times r * w_in"
                             f"{' / tau_syn' if synapse == 'dirac' else ''}) exceed the {dtype} range, up to "
                             f"{float(np.abs(exact).max())!r}")
        if delay is not None and not np.isfinite(delay).all():
            raise ValueError(f"import_nir: node {name!r}: its {kind} delays exceed the {dtype} range in "
                             f"{time_unit!r}")
        _note_rounding(rounded, name, f"{kind} weights", exact, kernel)
        if delay is not None:
            _note_rounding(rounded, name, f"{kind} delays", exact_delay, delay)
        return kernel, delay

    kernel, delays = weights(w, d, "input")
    rec = (None, None) if recurrent is None else weights(*recurrent, "recurrent")
    kwargs = dict(tau_mem=model_time(tau_mem_g, "tau_mem"), tau_syn=model_time(tau_syn_g, "tau_syn"),
                  name=str(meta.get("name", name)).replace("/", "_"))
    taus = None
    if per_neuron:
        if "tau_mem" in meta and "tau_syn" in meta:  # the layer's arguments (initial values), in the model's unit
            kwargs.update(tau_mem=meta_time("tau_mem"), tau_syn=meta_time("tau_syn"))
        kwargs.update(trainable_time_constants=True)
        exact_taus = tuple(_convert(p[f], graph_unit, time_unit) for f in ("tau_mem", "tau_syn"))
        taus = tuple(x.astype(dtype) for x in exact_taus)
        for field, x, y in zip(("tau_mem", "tau_syn"), exact_taus, taus):
            _note_rounding(rounded, name, field, x, y)
        # The floor training keeps them above: the exported layer's, else the default rule (5% of the smaller time
        # constant) over every neuron's values, not the layer arguments' (neuron 0's), which would move the smaller
        # ones up at the first training step.
        kwargs["min_time_constant"] = (meta_time("min_time_constant") if "min_time_constant" in meta
                                       else 0.05 * float(min(taus[0].min(), taus[1].min())))
    if not is_lif:
        if delays is not None:
            raise ValueError(f"import_nir: node {name!r}: delays before a CubaLI (LIReadout) are not supported")
        t_max = meta_time("t_max", overrides["t_max"])
        if t_max is None:
            raise ValueError(f"import_nir: node {name!r}: a CubaLI needs the readout window; pass "
                             f"import_nir(..., t_max=...) in {time_unit!r}")
        readout = str(meta.get("readout", overrides["readout"] or "integral"))
        tau_readout = meta_time("tau_readout", None if "readout" in meta else overrides["tau_readout"])
        scale = meta.get("scale", "auto")  # "auto" (read back as a str, like "readout") or the factor
        scale = str(scale) if isinstance(scale, str) else float(scale)
        if "revival_penalty" in meta:
            kwargs["revival_penalty"] = float(meta["revival_penalty"])
        layer = LIReadout(n_out, readout=readout, t_max=t_max, tau_readout=tau_readout, scale=scale, **kwargs)
        # Our graphs written before LIReadout's unit-free "auto" scale carry "scale" without "auto_scale_rule";
        # third-party graphs (no "scale") get the current rule.
        layer._follow_scale_rule(meta.get("auto_scale_rule", 1 if "scale" in meta else _AUTO_SCALE_RULE))
        return layer, kernel, None, (taus, None), rec
    thresholds = None
    if meta.get("trainable_threshold", False) or np.any(p["v_threshold"] != p["v_threshold"][0]):
        if not np.all(p["v_threshold"] > 0):
            raise ValueError(f"import_nir: node {name!r}: field 'v_threshold' must be > 0, got "
                             f"{p['v_threshold'].min()!r}")
        thresholds = p["v_threshold"].astype(dtype)
        _note_rounding(rounded, name, "v_threshold", p["v_threshold"], thresholds)
        threshold = float(meta.get("threshold", p["v_threshold"][0]))
    else:
        threshold = _uniform(name, "v_threshold", p["v_threshold"])
    # Our metadata's value (an HDF5 integer), else the argument, which LIFLayer checks (int() would truncate 2.7)
    max_spikes = int(meta["max_spikes"]) if "max_spikes" in meta else overrides["max_spikes"]
    if max_spikes is None:
        raise ValueError(f"import_nir: node {name!r}: a CubaLIF needs max_spikes (spikes recorded per neuron); pass "
                         "import_nir(..., max_spikes=N)")
    extra = {}
    if "method" in meta:
        calibrate = meta.get("calibrate", "none")
        extra = dict(method=str(meta["method"]), solver=str(meta["solver"]), chunk_size=int(meta["chunk_size"]),
                     silence_penalty=float(meta["silence_penalty"]),
                     calibrate=None if isinstance(calibrate, str) else tuple(float(c) for c in np.ravel(calibrate)),
                     input_window=meta_time("input_window", 0.0))
        if "input_spikes" in meta:
            extra["input_spikes"] = float(meta["input_spikes"])
        if "max_total_spikes" in meta:
            extra["max_total_spikes"] = int(meta["max_total_spikes"])
        if "spike_count_strength" in meta:
            extra["spike_count_regularizer"] = SpikeCountRegularizer(float(meta["spike_count_strength"]),
                                                                     meta_time("spike_count_tau"))
    if thresholds is not None:  # the floor as for the time constants: 5% of the smallest, if not exported
        extra.update(trainable_threshold=True,
                     min_threshold=float(meta["min_threshold"]) if "min_threshold" in meta
                     else 0.05 * float(thresholds.min()))
    if recurrent is not None:
        extra.update(recurrent=True, recurrent_delays=rec[1] is not None)
        if "recurrent_scale" in meta:  # "auto" (read back as a str) or the factor
            scale = meta["recurrent_scale"]
            extra["recurrent_scale"] = str(scale) if isinstance(scale, str) else float(scale)
    layer = LIFLayer(n_out, threshold=threshold, max_spikes=max_spikes, delays=delays is not None,
                     max_delay=meta_time("max_delay"), **kwargs, **extra)
    return layer, kernel, delays, (taus, thresholds), rec
