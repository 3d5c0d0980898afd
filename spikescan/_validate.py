"""Argument checks shared by the public functions: clear errors that name the argument and the value received.

Nothing here modifies its inputs.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def array_module(*arrays):
    """Return ``numpy`` or ``cupy`` for the given arrays; mixing the two is a ``TypeError``."""
    kinds = set()
    for x in arrays:
        if x is None:
            continue
        if _top_module(x) == "cupy":
            kinds.add("cupy")
        elif isinstance(x, np.ndarray):
            kinds.add("numpy")
        else:
            raise TypeError(f"expected a NumPy or CuPy array, got {_foreign(x)}")
    if kinds == {"cupy", "numpy"}:
        raise TypeError("arrays mix NumPy and CuPy; pass all arrays on the same device")
    if "cupy" in kinds:
        import cupy

        from .cuda import is_available

        if not is_available():
            raise RuntimeError("CuPy arrays were given but no CUDA device is available")
        return cupy
    return np


# Arrays of other frameworks, by top-level module: what to call them in an error.
_FRAMEWORKS = {"jax": "a JAX array", "jaxlib": "a JAX array", "torch": "a torch tensor",
               "tensorflow": "a TensorFlow tensor"}


def _top_module(x):
    """The top-level package of ``x``'s type (``"numpy"``, ``"cupy"``, ``"jaxlib"``, ...)."""
    return type(x).__module__.split(".")[0]


def _foreign(x, name=None):
    """``x``'s type, fully named, for an error refusing it; for another framework's array, what to do instead."""
    kind = type(x)
    described = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__name__
    framework = _FRAMEWORKS.get(_top_module(x))
    if framework is None:
        return described
    arg = name or "it"
    return (f"{described} ({framework}): convert it with np.asarray({arg}) outside a traced function, or train "
            "through the spikescan_keras layers on that framework's Keras backend, which hand the arrays over")


def _describe(x):
    return f"{type(x).__name__} with shape {getattr(x, 'shape', None)} and dtype {getattr(x, 'dtype', None)}"


def check_float_array(name, x, ndim, spikes=False):
    """``x`` must be a float32/float64 array of ``ndim`` dimensions. ``spikes``: ``x`` holds spike times, so a bool
    or integer array, most likely a binned raster, is refused with the way to spike times."""
    if not isinstance(x, np.ndarray) and _top_module(x) != "cupy":
        hint = (f": np.asarray({name}, dtype=np.float32) (or float64)" if isinstance(x, (list, tuple))
                else "")
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {_foreign(x, name)}{hint}")
    if isinstance(x, np.ma.MaskedArray):
        fill = "np.inf) (+inf is the padding)" if spikes else "value)"
        raise TypeError(f"{name} must be a plain NumPy array, got a masked array, whose mask would be ignored: fill "
                        f"the masked entries yourself, np.ma.filled({name}, {fill}")
    if x.dtype not in _FLOAT_DTYPES:
        if x.dtype.kind == "f" and x.dtype.newbyteorder("=") in _FLOAT_DTYPES:
            raise TypeError(f"{name} must have a native-endian dtype float32 or float64, got byte-swapped "
                            f"{x.dtype.str!r}: pass {name}.astype({x.dtype.name!r})")
        if spikes and x.dtype.kind in "biu":
            raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}; spike times are floats, and "
                            f"bool or integer entries are usually a binned raster (spike counts per time bin): "
                            f"{RASTER_WAY}")
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}"
                        + (f": {name}.astype(np.float64) (or float32)" if x.dtype.kind in "fiu" else ""))
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {_describe(x)}")


def _first_bad(xp, x, bad, offset=0):
    """A short description of the first entry where ``bad`` holds, for error messages; ``offset``: the index of
    ``x``'s first sample in the tensor it was cut from."""
    idx = tuple(int(i) for i in xp.argwhere(bad)[0])
    shown = (idx[0] + offset,) + idx[1:] if idx else idx
    return f"{x[idx].item()!r} at index {shown}"


# check_spike_times works in blocks of samples of at most this many times, so that its temporaries (a bool per
# entry) stay small beside the tensor: it runs before the memory check, which needs checked shapes.
CHECK_ELEMENTS = 1 << 24


def _sample_blocks(times):
    """``(first sample, block)`` views of ``times`` along its first axis, each of at most ``CHECK_ELEMENTS``
    entries (at least one sample)."""
    per = max(1, CHECK_ELEMENTS // max(1, math.prod(times.shape[1:])))
    for start in range(0, times.shape[0], per):
        yield start, times[start:start + per]


def _negative_hint(value):
    """What to do about a negative spike time ``value``."""
    if value == -1 or value == -math.inf:
        return f"; spike times pad unused slots with +inf, not {value!r}"
    return ("; spike times count from each sample's start at 0: shift a recording that starts earlier (subtract its "
            "start time). Feature values (standardised ones are negative) are not spike times: encode them, e.g. "
            "spikescan.encode.latency(spikescan.encode.scale(x)[0], t_max=...)")


def check_spike_times(name, times):
    """Spike tensor ``[batch, channels, max_spikes]``: no NaN, no negative time, ascending along the last axis. In
    blocks of samples (``CHECK_ELEMENTS``), so the check needs little memory beside the tensor."""
    check_float_array(name, times, 3, spikes=True)  # first: a list gets an error that names the argument
    xp = array_module(times)
    # On NumPy one reduction clears NaN and negative times at once (np.min propagates NaN); CuPy's min may not with
    # its cuTENSOR accelerator, so there each is tested.
    if xp is not np or not times.size or not float(times.min()) >= 0:
        for start, block in _sample_blocks(times):
            nan = xp.isnan(block)
            if bool(nan.any()):
                raise ValueError(f"{name} contains NaN ({_first_bad(xp, block, nan, start)}); pad unused slots "
                                 "with +inf")
        for start, block in _sample_blocks(times):
            neg = block < 0
            if bool(neg.any()):
                raise ValueError(f"{name} must be >= 0, got {_first_bad(xp, block, neg, start)}"
                                 f"{_negative_hint(float(block[neg][0]))}")
    if times.shape[-1] > 1:
        for start, block in _sample_blocks(times):
            down = block[..., 1:] < block[..., :-1]
            if bool(down.any()):
                idx = tuple(int(i) for i in xp.argwhere(down)[0])
                nxt = idx[:-1] + (idx[-1] + 1,)
                raise ValueError(
                    f"{name} must be ascending along the last axis (+inf padding last); got {block[idx].item()!r} "
                    f"at index {(idx[0] + start,) + idx[1:]} followed by {block[nxt].item()!r}"
                    f"{_raster_hint(xp, times)}")


# How a binned raster becomes spike times, for the errors that meet one where spike times are expected.
RASTER_WAY = ("spikescan.datasets.from_raster(raster, dt, time_axis=...) turns one into spike times (time_axis: the "
              "axis of the bins, 0 for snnTorch's and Norse's [T, batch, channels], 2 for [batch, channels, T])")


def _raster_hint(xp, times):
    """For the error of unsorted spike times: when every entry is 0 or 1, or every entry is a whole number and some
    are 0, the array is most likely a binned raster (spike counts per time bin, the format of time-stepped
    simulators) and the way to spike times is named."""
    if bool(((times == 0) | (times == 1)).all()):
        what = "all 0 or 1"
    elif bool((times == xp.floor(times)).all()) and bool((times == 0).any()):
        what = "whole numbers with zeros among them"
    else:
        _, channels, slots = times.shape
        if channels < slots:
            return (f"; with {channels} channel(s) of {slots} spike slots each: if the last axis holds channels or "
                    "features, the axes are swapped (the format is [batch, channels, spike slots]; a table [batch, "
                    "features] of spike times is x[:, :, None])")
        return ""
    return (f"; its entries are {what}, like a binned raster (spike counts per time bin), not spike times: "
            f"{RASTER_WAY}")


def check_finite(name, x):
    xp = array_module(x)
    bad = ~xp.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite, got {_first_bad(xp, x, bad)}")


# The most a synaptic current may reach: |I| never exceeds the sum of |w| over the arrivals (decay only shrinks it),
# and the membrane potential stays within the current's range; the solvers form a few products of these with
# factors of order one. Far above any meaningful current (the dynamics are invariant to scaling the weights and
# the threshold together), far below float64's 1.8e308.
CURRENT_LIMIT = 1e300


def finite_magnitude(name, x):
    """``x`` finite; returns ``max |x|`` (0 when empty): one reduction (a host sync on CuPy) that also finds NaN and
    inf, which it propagates (``check_finite`` runs only to name the first bad entry)."""
    most = float(array_module(x).abs(x).max()) if x.size else 0.0
    if not math.isfinite(most):
        check_finite(name, x)
    return most


def check_weights(name, weights, n_in):
    """``weights [n_in, n_out]``, float, finite. Returns ``max |weights|`` (``finite_magnitude``)."""
    check_float_array(name, weights, 2)
    if weights.shape[0] != n_in:
        raise ValueError(f"{name} must have shape [n_in={n_in}, n_out], got {_describe(weights)}")
    return finite_magnitude(name, weights)


def check_current_bound(name, weights, most, input_times):
    """The synaptic currents the inputs can drive stay below ``CURRENT_LIMIT``: ``sum_j |w[j, i]| n_j`` over the
    ``n_j`` spikes of input ``j`` of a sample. ``most``: ``max |weights|`` from ``check_weights``. Free when the
    static bound ``most * n_in * max_in`` holds, as it does for any weights a model trains to; the exact bound per
    sample and neuron (a reduction) only when it does not."""
    if most * input_times.shape[1] * input_times.shape[2] < CURRENT_LIMIT:
        return
    xp = array_module(weights)
    spikes = xp.isfinite(input_times).sum(axis=2).astype(xp.float64)  # [batch, n_in]
    with np.errstate(over="ignore"):  # an infinite bound is an answer here
        bound = spikes @ xp.abs(weights.astype(xp.float64))  # [batch, n_out]
    if bound.size == 0:
        return
    worst = float(bound.max())
    if worst < CURRENT_LIMIT:
        return
    b, i = (int(k) for k in xp.unravel_index(xp.argmax(bound), bound.shape))
    raise ValueError(
        f"{name} up to {most:.3g} in magnitude could drive the synaptic current of neuron {i} of sample {b} to "
        f"{worst:.3g} (the sum of |weight| over its input spikes), beyond what float64 arithmetic can carry through "
        f"the dynamics (limit {CURRENT_LIMIT:.0e}); the dynamics are invariant to scaling the weights and the "
        "threshold together: scale both down")


def check_delays(delays, weights):
    if delays is None:
        return
    check_float_array("delays", delays, 2)
    if delays.shape != weights.shape:
        raise ValueError(f"delays must have the shape of weights {tuple(weights.shape)}, got {_describe(delays)}")
    check_finite("delays", delays)
    xp = array_module(delays)
    neg = delays < 0
    if bool(neg.any()):
        raise ValueError(f"delays must be >= 0, got {_first_bad(xp, delays, neg)}")


def check_arrivals(input_times, delays):
    """With ``delays``: every arrival time (input spike time plus delay) stays a finite number of the dtype of
    ``input_times``, so that no arrival and no output spike overflows to ``+inf`` (a spike lost without a trace).
    Checked on the latest input spike plus the longest delay: one reduction over each (one host sync on CuPy)."""
    if delays is None or input_times.size == 0 or delays.size == 0:
        return
    xp = array_module(input_times)
    both = xp.stack([xp.where(input_times < xp.inf, input_times, 0).max().astype(xp.float64),
                     delays.max().astype(xp.float64)])
    latest, longest = (float(x) for x in (both.tolist() if xp is not np else both))  # one transfer on CuPy
    limit = float(np.finfo(input_times.dtype).max)
    if latest + longest <= limit:  # inf (a float64 overflow) fails too
        return
    raise ValueError(f"input_times + delays must stay within the range of {input_times.dtype} (at most {limit:.4g}): "
                     f"the latest input spike ({latest!r}) plus the longest delay ({longest!r}) reaches "
                     f"{latest + longest!r}; express the times in a larger unit"
                     + ("" if input_times.dtype == np.float64 else ", or use float64"))


def _check_square(name, x, n_out, xp):
    """``x`` a finite float ``[n_out, n_out]`` array on the array module ``xp``; returns ``max |x|``."""
    check_float_array(name, x, 2)
    if tuple(x.shape) != (n_out, n_out):
        raise ValueError(f"{name} must have shape [n_out, n_out] = [{n_out}, {n_out}], got {_describe(x)}")
    if array_module(x) is not xp:
        raise TypeError(f"{name} must be on the array module of input_times ({xp.__name__}), got "
                        f"{type(x).__module__}.{type(x).__name__}")
    return finite_magnitude(name, x)


def check_recurrent(recurrent_weights, recurrent_delays, weights, xp, max_total_spikes):
    """``recurrent_weights [n_out, n_out]`` (finite, and small enough that ``n_out * max_total_spikes`` arrivals of
    the largest cannot take a current past ``CURRENT_LIMIT``) and optional ``recurrent_delays`` of its shape
    (finite, ``>= 0``), on the array module of the layer."""
    if recurrent_weights is None:
        if recurrent_delays is not None:
            raise ValueError("recurrent_delays needs recurrent_weights (the layer has no recurrent connections)")
        return
    n_out = weights.shape[1]
    most = _check_square("recurrent_weights", recurrent_weights, n_out, xp)
    reach = most * n_out * max_total_spikes
    if reach >= CURRENT_LIMIT:
        raise ValueError(
            f"recurrent_weights up to {most:.3g} in magnitude, arriving up to n_out * max_total_spikes = "
            f"{n_out} * {max_total_spikes} times, could drive a synaptic current to {reach:.3g}, "
            f"beyond what float64 arithmetic can carry through the dynamics (limit {CURRENT_LIMIT:.0e}); scale the "
            "weights and the threshold down together (the dynamics are invariant to that), or lower max_total_spikes")
    if recurrent_delays is None:
        return
    _check_square("recurrent_delays", recurrent_delays, n_out, xp)
    neg = recurrent_delays < 0
    if bool(neg.any()):
        raise ValueError(f"recurrent_delays must be >= 0, got {_first_bad(xp, recurrent_delays, neg)}")


def layer(input_times, weights, tau_mem, tau_syn, delays=None):
    """The checks every layer op starts with: ``input_times [batch, n_in, max_in]`` (float, sorted, no NaN or
    negative times), ``weights [n_in, n_out]``, optional ``delays`` of the weights' shape (finite, ``>= 0``), all
    on one array module; time constants as ``[n_out]`` float64 arrays on it. Returns ``(xp, tau_mem, tau_syn)``."""
    check_float_array("input_times", input_times, 3, spikes=True)
    check_float_array("weights", weights, 2)
    if delays is not None:
        check_float_array("delays", delays, 2)
    xp = array_module(input_times, weights, delays)
    check_spike_times("input_times", input_times)
    most = check_weights("weights", weights, input_times.shape[1])
    check_current_bound("weights", weights, most, input_times)
    check_delays(delays, weights)
    check_arrivals(input_times, delays)
    n_out = weights.shape[1]
    return xp, time_constant("tau_mem", tau_mem, n_out, xp), time_constant("tau_syn", tau_syn, n_out, xp)


# Time constants enter the time-constant gradients squared (tau_mem * tau_mem, tau_mem * tau_syn): outside this range
# the square leaves float64's normal numbers (0 or inf below 1.5e-154 and above 1.3e154), and the gradients with it.
TIME_CONSTANT_RANGE = (1e-150, 1e150)


def time_constant(name, value, n_out, xp, *, bounded=True):
    """Positive finite scalar or ``[n_out]`` array -> float64 ``[n_out]`` array on ``xp``; within
    ``TIME_CONSTANT_RANGE`` when ``bounded``."""
    if isinstance(value, (bool, np.bool_)) or value is None or (
            isinstance(value, (numbers.Number, np.generic)) and not isinstance(value, numbers.Real)):  # complex
        raise TypeError(f"{name} must be a positive number or an array of shape [{n_out}], got {value!r}")
    if isinstance(value, numbers.Real):
        try:
            scalar = float(value)
        except OverflowError:  # an int beyond float64's range (its repr may be too long to print)
            raise ValueError(f"{name} must be positive and finite, got {_shown(value)}, beyond float64's "
                             "range") from None
        arr = xp.full((n_out,), scalar, dtype=xp.float64)
    else:
        if isinstance(value, (list, tuple)):  # one value per neuron, written out
            try:
                listed = np.asarray(value)
            except (TypeError, ValueError):
                listed = None
            # ragged, strings, booleans, objects; a bool among numbers too (np.asarray made [True, 20.0] floats)
            if listed is None or listed.dtype.kind not in "iuf" or _holds_bool(value):
                raise TypeError(f"{name} must be a positive number or an array of shape [{n_out}] (a list of numbers "
                                f"is taken as one), got {value!r}")
            value = xp.asarray(listed.astype(np.float64))
        if not hasattr(value, "shape"):
            raise TypeError(f"{name} must be a positive number or an array of shape [{n_out}], got {value!r}")
        if array_module(value) is not xp:
            raise TypeError(f"{name} must live on the same device (NumPy/CuPy) as the spike times")
        if isinstance(value, np.ma.MaskedArray):
            raise TypeError(f"{name} must be a plain array, got a masked array (its mask would be ignored)")
        if getattr(value, "dtype", None) is None or value.dtype.kind not in "iuf":  # bool, complex, str, object
            raise TypeError(f"{name} must be a positive number or an array of real numbers of shape [{n_out}], got "
                            f"dtype {getattr(value, 'dtype', None)}")
        if value.shape not in ((), (n_out,)):
            raise ValueError(f"{name} must be a scalar or have shape [{n_out}], got shape {tuple(value.shape)}")
        arr = xp.broadcast_to(xp.asarray(value, dtype=xp.float64), (n_out,)).copy()
    bad = ~(xp.isfinite(arr) & (arr > 0))
    low, high = TIME_CONSTANT_RANGE
    out_of_range = ((arr < low) | (arr > high)) if bounded else bad
    if bool((bad | out_of_range).any()):  # one check (one device sync) when every value is good
        if bool(bad.any()):
            raise ValueError(f"{name} must be positive and finite, got {_first_bad(xp, arr, bad)}")
        raise ValueError(f"{name} must be within [{low:g}, {high:g}] (its square, in the gradients, would leave "
                         f"float64's range): got {_first_bad(xp, arr, out_of_range)}; express the times in another "
                         "unit")
    return arr


def _holds_bool(value):
    """Whether a (nested) list or tuple holds a bool: a Python or NumPy bool, or an array of them."""
    for item in value:
        if isinstance(item, (bool, np.bool_)) or getattr(getattr(item, "dtype", None), "kind", None) == "b":
            return True
        if isinstance(item, (list, tuple)) and _holds_bool(item):
            return True
    return False


def unwrap_0d(value):
    """The Python number inside a 0-d NumPy or CuPy array of a real or integer dtype (``x.max()`` on CuPy is one;
    NumPy's scalars already are numbers); anything else as it is, for the caller's check to accept or refuse."""
    if getattr(value, "ndim", None) == 0 and getattr(getattr(value, "dtype", None), "kind", None) in ("i", "u", "f") \
            and hasattr(value, "item") and not isinstance(value, numbers.Number):
        return value.item()
    return value


def _finite_real(value):
    """``value`` as a float when it is a real number (not a bool; a 0-d array of one counts) that float64 holds as a
    finite number, else ``None``: a Python int beyond float64's range made ``np.isfinite`` raise a TypeError that
    named no argument."""
    value = unwrap_0d(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _shown(value, typed=True):
    """``repr(value)``, or for an int too long to print usefully (or at all: Python limits int-to-str conversions),
    its size; with ``typed``, for what is not a real number (a torch or jax scalar, a string) its type too, so that
    a message about a scalar blames the type and not a value that looks right (``dt=torch.tensor(1.0)``)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)).bit_length() > 64:
        return f"an integer of {abs(int(value)).bit_length()} bits"
    if typed and value is not None and not isinstance(value, (bool, np.bool_)) \
            and not isinstance(unwrap_0d(value), numbers.Real):
        kind = type(value)
        kind = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        return f"{value!r} (of type {kind}; give a Python or NumPy number)"
    return repr(value)


def positive_scalar(name, value):
    number = _finite_real(value)
    if number is None or number <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {_shown(value)}")
    return number


def nonnegative_scalar(name, value):
    number = _finite_real(value)
    if number is None or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {_shown(value)}")
    return number


def cotangent(name, grad, values):
    """``grad`` must be a finite float array shaped like the forward output ``values`` (same array module)."""
    check_float_array(name, grad, values.ndim)
    xp = array_module(values, grad)
    if tuple(grad.shape) != tuple(values.shape):
        raise ValueError(f"{name} must have the shape of result.values {tuple(values.shape)}, got shape "
                         f"{tuple(grad.shape)}")
    check_finite(name, grad)
    return xp


def finite_gradients(op, grads, cotangent_name, cotangent):
    """Raise ``FloatingPointError`` when a gradient of ``grads`` (a ``LIFGrads`` / ``LIGrads``; ``None`` fields
    skipped) is not finite: from finite arguments only a float64 overflow gets there (cotangents near float64's
    range times the dynamics' derivatives), and NaN or inf must not reach an optimizer unannounced. One reduction
    over every field (a host sync on CuPy)."""
    arrays = [(name, g) for name, g in zip(grads._fields, grads) if g is not None and getattr(g, "size", 1)]
    if not arrays:
        return
    xp = array_module(*(g for _, g in arrays if hasattr(g, "shape")))
    flags = xp.stack([xp.isfinite(xp.asarray(g)).all() for _, g in arrays])
    ok = flags.get() if hasattr(flags, "get") else flags
    if bool(np.all(ok)):
        return
    name, g = arrays[int(np.argmin(ok))]
    g = xp.asarray(g)
    where = _first_bad(xp, g, ~xp.isfinite(g)) if g.ndim else repr(g.item())
    scale = float(xp.where(xp.isfinite(cotangent), xp.abs(cotangent), 0).max()) if cotangent.size else 0.0
    raise FloatingPointError(
        f"{op}: the gradient of {name} is not finite ({where}) though every argument is: it overflowed "
        f"{g.dtype} (the largest |{cotangent_name}| is {scale:.3g}); scale the loss (and so {cotangent_name}) down")


def to_host(x):
    """``x`` as a host value: ``None``, Python/NumPy scalars and NumPy arrays as they are, CuPy arrays copied."""
    if x is None or isinstance(x, numbers.Real):
        return x
    xp = array_module(x)
    return x if xp is np else xp.asnumpy(x)


def positive_int(name, value):
    number = unwrap_0d(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {_shown(value)}")
    return int(number)


# The most spikes a row of the float64 spike records can hold: beyond, NumPy cannot even form the array's shape.
MAX_RECORDED = np.iinfo(np.intp).max // 8


def max_spikes(value, name="max_spikes"):
    """A positive int of at most ``MAX_RECORDED`` (``lif_forward``'s bound on its spike records)."""
    value = positive_int(name, value)
    if value > MAX_RECORDED:  # the records' shape must exist, even for an empty batch or zero neurons
        raise ValueError(f"{name} must be at most {MAX_RECORDED} (a row of float64 spike times larger than the "
                         f"address space), got {value if value.bit_length() <= 256 else _shown(value)}")
    return value


def choice(name, value, options):
    if not isinstance(value, type(options[0])) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value
