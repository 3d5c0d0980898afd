"""Spiking Heidelberg Digits (SHD) and Spiking Speech Commands (SSC), read from the official HDF5 files.

On disk (Cramer et al. 2020): ``spikes/times`` (one variable-length float array per sample, seconds),
``spikes/units`` (matching variable-length uint16 channel ids in ``[0, 700)``), ``labels`` ``[n]``, and ``extra``
with ``keys`` (class names), ``speaker`` and ``meta_info`` (SHD). Files: ``shd_{train,test}.h5`` and
``ssc_{train,valid,test}.h5``, distributed gzipped (``.h5.gz``) at https://zenkelab.org/datasets/.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._core import (TIME_UNITS, SpikeDataset, _pack_events, check_choice, check_count, check_positive, class_indices,
                    float_dtype, is_whole, optional_import, report_dropped, sample_indices)

BASE_URL = "https://zenkelab.org/datasets/"
N_UNITS = 700
# SHD and SSC recordings last about a second: a latest spike time beyond this many seconds is read as a file in
# another unit (ms or us), warned.
LONGEST_RECORDING_S = 100.0
SPLITS = {"shd": ("train", "test"), "ssc": ("train", "valid", "test")}


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (through ``dest.part``, removed on failure); an ``OSError`` naming the URL, the
    folder and the way around when the network fails."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:  # urllib.error.URLError and socket errors included
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not download {url} into {dest.parent}: {e}. Without network access here, download "
                      f"the files of {BASE_URL} elsewhere (or with tonic.datasets.SHD / SSC) and put them, "
                      "gzipped or not, in that folder") from e
    tmp.replace(dest)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(name: str, data_dir, splits, force: bool) -> list[Path]:
    for s in splits:
        check_choice("splits", s, SPLITS[name])
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    missing = [s for s in splits if force or not (data_dir / f"{name}_{s}.h5").is_file()]
    md5 = {}
    if missing:  # files already there need no network (an offline rerun)
        sums = data_dir / "md5sums.txt"
        _fetch(BASE_URL + "md5sums.txt", sums)
        md5 = {line.split()[1]: line.split()[0] for line in sums.read_text().splitlines() if len(line.split()) == 2}
    paths = []
    for s in splits:
        h5 = data_dir / f"{name}_{s}.h5"
        gz = h5.with_name(h5.name + ".gz")
        if s in missing:
            _fetch(BASE_URL + gz.name, gz)
            if gz.name in md5 and _md5(gz) != md5[gz.name]:
                raise OSError(f"MD5 mismatch for {gz} (expected {md5[gz.name]}); delete it and retry")
            _decompress(gz, h5)
            gz.unlink()
        paths.append(h5)
    return paths


def download_shd(data_dir, splits=("train", "test"), *, force: bool = False) -> list[Path]:
    """Download ``shd_{split}.h5.gz`` from https://zenkelab.org/datasets/, check its MD5 against the published
    ``md5sums.txt`` and decompress it to ``data_dir/shd_{split}.h5``. Returns the ``.h5`` paths.

    Alternative: ``tonic.datasets.SHD(save_to=DIR, train=...)`` downloads the same files (as ``.h5.zip``) into
    ``DIR/SHD``; pass that folder as ``data_dir``.
    """
    return _download("shd", data_dir, splits, force)


def download_ssc(data_dir, splits=("train", "valid", "test"), *, force: bool = False) -> list[Path]:
    """Download ``ssc_{split}.h5.gz`` like :func:`download_shd` (alternative: ``tonic.datasets.SSC``)."""
    return _download("ssc", data_dir, splits, force)


def _decompress(src: Path, dest: Path) -> None:
    """Decompress ``src`` (``.gz``, or ``.zip`` holding ``dest.name``) to ``dest`` through ``dest.part``, renamed only
    once complete: a failure or an interruption leaves neither a partial ``dest`` (which later loads would take)
    nor the ``.part``; a corrupt or truncated archive is an ``OSError`` naming it."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with open(tmp, "wb") as fo:
            if src.suffix == ".zip":
                with zipfile.ZipFile(src) as z, z.open(dest.name) as fi:
                    shutil.copyfileobj(fi, fo, 1 << 20)
            else:
                with gzip.open(src, "rb") as fi:
                    shutil.copyfileobj(fi, fo, 1 << 20)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, EOFError, zlib.error, zipfile.BadZipFile, KeyError)):
            raise OSError(f"could not decompress {src} to {dest.name}: {err!s}; the archive is corrupt or "
                          f"incomplete: delete it and download it again") from err
        raise
    tmp.replace(dest)


def hdf5_path(name: str, split: str, data_dir) -> Path:
    """Path of ``{name}_{split}.h5`` in ``data_dir``, decompressing ``.h5.gz`` or ``.h5.zip`` next to it if only
    the archive is there (through a temporary ``.part`` file, renamed once complete). Raises FileNotFoundError naming
    the expected path and how to get it, OSError naming an archive that does not decompress."""
    h5 = Path(data_dir) / f"{name}_{split}.h5"
    if h5.is_file():
        return h5
    gz, zp = h5.with_name(h5.name + ".gz"), h5.with_name(h5.name + ".zip")
    if gz.is_file():
        _decompress(gz, h5)
    elif zp.is_file():
        _decompress(zp, h5)
    else:
        raise FileNotFoundError(
            f"{h5} not found (nor {gz.name} or {zp.name}). Download it with "
            f"spikescan.datasets.download_{name}({str(h5.parent)!r}, splits=({split!r},)) from {BASE_URL}{gz.name}, "
            f"or with tonic.datasets.{name.upper()} and pass its folder as data_dir.")
    return h5


def _decode(keys) -> tuple:
    return tuple(k.decode() if isinstance(k, bytes) else str(k) for k in np.asarray(keys).ravel())


def load_heidelberg(name: str, split: str, *, data_dir, time_unit: str = "ms", t_max=None, channels=None,
                    n_channels=None, max_spikes_per_channel=None, indices=None,
                    dtype=np.float32) -> SpikeDataset:
    """Load SHD (``name="shd"``) or SSC (``name="ssc"``) as a spike tensor. See :func:`shd`."""
    check_choice("name", name, SPLITS)
    check_choice("split", split, SPLITS[name])
    check_choice("time_unit", time_unit, TIME_UNITS)
    check_positive("t_max", t_max, allow_none=True)
    check_count("max_spikes_per_channel", max_spikes_per_channel, allow_none=True)
    dtype = float_dtype(dtype)
    try:
        lo, hi = (0, N_UNITS) if channels is None else channels
    except (TypeError, ValueError):
        lo = hi = None
    if not (isinstance(lo, (int, np.integer)) and isinstance(hi, (int, np.integer)) and 0 <= lo < hi <= N_UNITS):
        raise ValueError(f"channels must be a (start, stop) pair with 0 <= start < stop <= {N_UNITS}, got {channels!r}")
    check_count("n_channels", n_channels, allow_none=True)
    width = hi - lo
    if n_channels is not None and n_channels > width:
        raise ValueError(f"n_channels must be <= the {width} selected channels, got {n_channels!r}")
    n_out = width if n_channels is None else n_channels

    h5py = optional_import("h5py")
    path = hdf5_path(name, split, data_dir)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:  # h5py's message does not name the file
        raise OSError(f"{path}: not a readable HDF5 file ({err}); download it again (spikescan.datasets."
                      f"download_{name})") from err
    with handle as f:
        missing = [key for key in ("spikes/times", "spikes/units", "labels") if key not in f]
        if missing:
            raise ValueError(f"{path}: no dataset {missing[0]!r}; an SHD / SSC file holds spikes/times, spikes/units "
                             "and labels")
        keys = ("spikes/times", "spikes/units", "labels") + (("extra/speaker",) if "extra/speaker" in f else ())
        lengths = {key: len(f[key]) for key in keys}  # a short speaker list would pair speakers with other samples
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{path}: its datasets disagree on the number of samples ({lengths}); the file is "
                             f"corrupt: download it again (spikescan.datasets.download_{name})")
        n_total = len(f["labels"])
        if indices is None:
            sel = slice(None)
            order = None
        else:
            sel, order = np.unique(sample_indices(indices, n_total, path.name), return_inverse=True)
        raw_t, raw_u = f["spikes/times"][sel], f["spikes/units"][sel]
        labels = class_indices("labels", f["labels"][sel], source=f"{path.name} (index: sample of the selection)",
                               integral_floats=True)
        extra = f.get("extra")
        class_names = _decode(extra["keys"][()]) if extra is not None and "keys" in extra else ()
        if class_names and labels.size and labels.max() >= len(class_names):
            k = int(np.argmax(labels >= len(class_names)))
            raise ValueError(f"{path.name}: sample {k} of the selection has the label {int(labels[k])}, but "
                             f"extra/keys names {len(class_names)} classes")
        meta = {"path": str(path)}
        if extra is not None and "speaker" in extra:
            meta["speaker"] = np.asarray(extra["speaker"][()])[sel]
    if order is not None:
        raw_t, raw_u, labels = raw_t[order], raw_u[order], labels[order]
        if "speaker" in meta:
            meta["speaker"] = meta["speaker"][order]

    scale = TIME_UNITS[time_unit]
    dropped = {"channels": 0, "t_max": 0}
    samples = []
    total_in = 0
    latest = 0.0  # the latest spike time (in time_unit)
    for k, (t, u) in enumerate(zip(raw_t, raw_u)):
        t = np.asarray(t, dtype=np.float64) * scale
        u = np.asarray(u)
        if u.dtype.kind not in "iu":  # a float unit is not truncated (nor NaN cast to a garbage index)
            whole = is_whole(u) & (np.abs(u) < 2.0 ** 62)
            if not whole.all():
                raise ValueError(f"{path.name}: sample {k} of the selection holds the unit index "
                                 f"{u[~whole][0].item()!r}; units must be whole numbers in [0, {N_UNITS})")
        u = u.astype(np.int64)
        if t.shape != u.shape:
            raise ValueError(f"{path.name}: sample {k} of the selection has {len(t)} spike times but {len(u)} units; "
                             f"they must pair up one to one (a corrupt file: download it again)")
        bad = ~np.isfinite(t) | (t < 0)
        if bad.any():  # before any filter: a corrupt time is an error, not a spike dropped for its channel or t_max
            raise ValueError(f"{path.name}: sample {k} of the selection holds the spike time "
                             f"{float(t[bad][0] / scale)!r} s; times must be finite and >= 0")
        latest = max(latest, float(t.max())) if t.size else latest  # (finite: checked above)
        units = (u < 0) | (u >= N_UNITS)
        if units.any():  # a corrupt file, not spikes dropped by a channels= crop
            raise ValueError(f"{path.name}: sample {k} of the selection holds the unit index {int(u[units][0])}; "
                             f"units must lie in [0, {N_UNITS})")
        total_in += len(t)
        keep = (u >= lo) & (u < hi)
        dropped["channels"] += int(len(u) - keep.sum())
        if t_max is not None:
            in_time = t <= t_max
            dropped["t_max"] += int((keep & ~in_time).sum())
            keep &= in_time
        ch = u[keep] - lo
        if n_channels is not None:
            ch = ch * n_channels // width
        samples.append((ch, t[keep]))
    latest /= scale  # as stored: seconds
    if latest > LONGEST_RECORDING_S:
        warnings.warn(f"{name}({split!r}): the latest spike time in {path.name} is {latest:g}, read as seconds (as "
                      f"{name.upper()} stores them): {latest / 60:.3g} minutes, where recordings last about a second. "
                      "A file written in milliseconds (or microseconds) reads 1000 (10^6) times too long: convert "
                      "its spikes/times to seconds", UserWarning, stacklevel=3)
    times, dropped["max_spikes_per_channel"] = _pack_events(samples, n_out, max_spikes_per_channel, dtype,
                                                            stacklevel=4)  # the caller of shd() / ssc()
    report_dropped(f"{name}({split!r})", dropped, total_in, stacklevel=4)
    return SpikeDataset(times, labels, class_names, time_unit, dropped, meta)


def shd(split: str, *, data_dir, time_unit: str = "ms", t_max=None, channels=None, n_channels=None,
        max_spikes_per_channel=None, indices=None, dtype=np.float32) -> SpikeDataset:
    """Spiking Heidelberg Digits (20 classes, 700 channels) from ``data_dir/shd_{split}.h5`` (or ``.h5.gz``).

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: folder with the official files (see :func:`download_shd`).
        time_unit: unit of the returned times: ``"ms"`` (default), ``"s"`` (as stored) or ``"us"``.
        t_max: drop spikes later than this (in ``time_unit``); None keeps all.
        channels: ``(start, stop)``: keep only units ``start <= u < stop``; None keeps all 700.
        n_channels: pool the kept units into this many channels of consecutive units (unit ``u`` goes to
            ``(u - start) * n_channels // (stop - start)``); a pooled channel carries the merged spike trains of its
            units, which equals summing their input currents.
        max_spikes_per_channel: keep only the first this many spikes of each (pooled) channel.
        indices: load only these samples (integers, in this order, or a boolean mask over the split); None
            loads all.
        dtype: float32 or float64, the dtype of the times.

    Every spike removed by ``channels``, ``t_max`` or ``max_spikes_per_channel`` is counted in
    ``result.dropped[argument]`` (total ``result.dropped_spikes``) and reported by a ``DroppedSpikesWarning``.
    A malformed file (a missing dataset, datasets or a sample's times and units of different lengths, fractional
    labels or labels beyond ``extra/keys``, times that are not finite and ``>= 0``, units not whole or outside
    ``[0, 700)``) is a
    ValueError naming the file and the sample.

    Returns:
        SpikeDataset with ``times [n, channels, max_spikes]`` (ascending, ``+inf``-padded, ``time_unit``),
        ``labels [n]`` int64, ``class_names`` from ``extra/keys`` and ``meta["speaker"]``.
    """
    return load_heidelberg("shd", split, data_dir=data_dir, time_unit=time_unit, t_max=t_max, channels=channels,
                           n_channels=n_channels, max_spikes_per_channel=max_spikes_per_channel, indices=indices,
                           dtype=dtype)


def ssc(split: str, *, data_dir, time_unit: str = "ms", t_max=None, channels=None, n_channels=None,
        max_spikes_per_channel=None, indices=None, dtype=np.float32) -> SpikeDataset:
    """Spiking Speech Commands (35 classes, 700 channels) from ``data_dir/ssc_{split}.h5`` (or ``.h5.gz``);
    ``split`` is ``"train"``, ``"valid"`` or ``"test"``. Arguments and result as in :func:`shd`."""
    return load_heidelberg("ssc", split, data_dir=data_dir, time_unit=time_unit, t_max=t_max, channels=channels,
                           n_channels=n_channels, max_spikes_per_channel=max_spikes_per_channel, indices=indices,
                           dtype=dtype)
