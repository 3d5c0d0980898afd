"""spikescan.datasets.ToSpikeTensor / collate_spikes on real tonic dataset classes, reading small files that the
tests write in the official on-disk format (no network)."""

import warnings
import zipfile

import numpy as np
import pytest

from spikescan.datasets import DroppedSpikesWarning, ToSpikeTensor, collate_spikes

from _datafiles import SAMPLES, write_heidelberg

tonic = pytest.importorskip("tonic")
pytest.importorskip("h5py")


@pytest.fixture()
def shd_dir(tmp_path):
    """``tmp/SHD/shd_test.h5`` plus the archive tonic downloads (``shd_test.h5.zip``), as tonic leaves them after
    its download: ``SHD._check_exists`` wants the archive file and at least one ``.h5`` (it checks no checksum
    once the archive is there), so tonic loads them without touching the network."""
    folder = tmp_path / "SHD"
    folder.mkdir()
    write_heidelberg(folder / "shd_test.h5")
    with zipfile.ZipFile(folder / "shd_test.h5.zip", "w") as z:
        z.write(folder / "shd_test.h5", "shd_test.h5")
    return tmp_path


def expected_tensor(times_s, units, n_channels, max_spikes, scale=1e-3, t_max=None):
    """The spike tensor from the raw file contents, built by hand: tonic stores ``t`` as integer microseconds
    (float16 seconds from the file, times 1e6, truncated by the cast to its int field)."""
    t_us = (np.asarray(times_s, dtype=np.float16).astype(np.float64) * 1e6).astype(np.int64)
    out = np.full((n_channels, max_spikes), np.inf, dtype=np.float32)
    dropped = {"t_max": 0, "max_spikes": 0}
    for c in range(n_channels):
        t = np.sort(t_us[np.asarray(units) == c].astype(np.float64) * scale)
        if t_max is not None:
            dropped["t_max"] += int((t > t_max).sum())
            t = t[t <= t_max]
        dropped["max_spikes"] += max(len(t) - max_spikes, 0)
        out[c, :min(len(t), max_spikes)] = t[:max_spikes]
    return out, dropped


def test_shd_through_tonic_exact_times(shd_dir):
    transform = ToSpikeTensor(700, 8)
    ds = tonic.datasets.SHD(save_to=str(shd_dir), train=False, transform=transform)
    assert len(ds) == len(SAMPLES)
    for i, (t, u, label) in enumerate(SAMPLES):
        times, target = ds[i]
        assert times.shape == (700, 8) and times.dtype == np.float32
        expected, _ = expected_tensor(t, u, 700, 8)
        np.testing.assert_array_equal(times, expected)
        assert int(target) == label
        assert np.isfinite(times).sum() == len(t)
    assert transform.dropped_spikes == 0 and transform.dropped == {"t_max": 0, "max_spikes": 0}
    # sample 0, unit 3: float16 seconds (0.9 is stored as 0.89990234375) -> integer microseconds -> ms
    np.testing.assert_array_equal(ds[0][0][3, :5], np.float32([0.5, 1.0, 2.0, 899.902, np.inf]))


def test_shd_dropped_spikes_counted_and_warned(shd_dir):
    transform = ToSpikeTensor(700, 2, t_max=600.0)
    ds = tonic.datasets.SHD(save_to=str(shd_dir), train=False, transform=transform)
    with pytest.warns(DroppedSpikesWarning, match=r"dropped 2 of 6 spikes .*t_max: 1 \(beyond t_max=600.0\), "
                                                  r"max_spikes: 1 \(beyond max_spikes=2\)"):
        times, _ = ds[0]
    expected, dropped = expected_tensor(*SAMPLES[0][:2], 700, 2, t_max=600.0)
    assert dropped == {"t_max": 1, "max_spikes": 1}
    np.testing.assert_array_equal(times, expected)
    assert transform.last_dropped == dropped and transform.dropped_spikes == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]  # empty sample: nothing dropped, no warning
    assert transform.last_dropped == {"t_max": 0, "max_spikes": 0}
    with pytest.warns(DroppedSpikesWarning, match=r"dropped 1 of 3 spikes .*t_max: 1 \(beyond t_max=600.0\)\)"):
        times, _ = ds[2]  # unit 351 at 750 ms is after t_max
    np.testing.assert_array_equal(times, expected_tensor(*SAMPLES[2][:2], 700, 2, t_max=600.0)[0])
    assert transform.dropped == {"t_max": 2, "max_spikes": 1} and transform.dropped_spikes == 3
    transform.reset_dropped()
    assert transform.dropped_spikes == 0


@pytest.mark.parametrize("unit, scale", [("s", 1e-6), ("us", 1.0), ("ms", 1e-3)])
def test_time_units(shd_dir, unit, scale):
    ds = tonic.datasets.SHD(save_to=str(shd_dir), train=False, transform=ToSpikeTensor(700, 4, time_unit=unit))
    times, _ = ds[2]
    expected, _ = expected_tensor(*SAMPLES[2][:2], 700, 4, scale=scale)
    np.testing.assert_allclose(times, expected, rtol=1e-7)


def test_collate_plain_and_dataloader(shd_dir):
    ds = tonic.datasets.SHD(save_to=str(shd_dir), train=False, transform=ToSpikeTensor(700, 8))
    times, labels = collate_spikes([ds[i] for i in range(len(ds))])
    assert times.shape == (3, 700, 8) and times.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [s[2] for s in SAMPLES]
    np.testing.assert_array_equal(times[2], ds[2][0])
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_spikes)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(2, 700, 8), (1, 700, 8)]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), times)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    with pytest.raises(ValueError, match="item 1 has shape"):
        collate_spikes([(np.zeros((2, 3)), 0), (np.zeros((2, 4)), 1)])
    # float32 and float64 items: float64, exactly both.
    a, b = np.full((2, 3), 0.1, np.float32), np.full((2, 3), 0.1)
    times, _ = collate_spikes([(a, 0), (b, 1)])
    assert times.dtype == np.float64 and np.array_equal(times[0], a.astype(np.float64)) and np.array_equal(times[1], b)


def test_collate_checks_times_and_labels():
    """collate_spikes stacked NaN, negative or descending times and float, str or negative labels as they were: the
    batch is now checked as a SpikeDataset is, naming the item."""
    good = np.sort(np.random.default_rng(0).uniform(0, 5, (2, 3)), axis=-1).astype(np.float32)
    nan, negative, descending = good.copy(), good.copy(), good[:, ::-1].copy()
    nan[1, 0] = np.nan
    negative[0, 0] = -1.0
    for t, err, match in ((nan, ValueError, r"collate_spikes: the items' times \[item, channel, spike\] contains NaN "
                                            r"\(nan at index \(1, 1, 0\)\)"),
                          (negative, ValueError, r"times \[item, channel, spike\] must be >= 0, got -1.0 at index "
                                                 r"\(1, 0, 0\)"),
                          (descending, ValueError, r"must be ascending along the last axis"),
                          (good.astype(np.int32), TypeError, r"item 1's times must have dtype float32 or float64, "
                                                             r"got int32"),
                          (good[0], ValueError, r"item 1's times must be a spike tensor \[channels, max_spikes\], "
                                                r"got shape \(3,\)")):
        with pytest.raises(err, match=match):
            collate_spikes([(good, 0), (t, 1)])
    for label, err, match in ((0.5, TypeError, r"collate_spikes \(index: item\): labels must be integer class "
                                               r"indices, got dtype float64"),
                              ("a", TypeError, r"labels must be integer class indices, got dtype <U"),
                              (-1, ValueError, r"labels must be class indices >= 0, got -1 at index 1"),
                              ([1, 2], ValueError, r"item 1's label must be one class index, got shape \(2,\)")):
        with pytest.raises(err, match=match):
            collate_spikes([(good, 0), (good, label)])
    times, labels = collate_spikes([(good, np.uint8(3)), (good.astype(np.float32), 1)])
    assert labels.dtype == np.int64 and labels.tolist() == [3, 1] and times.dtype == np.float32


def test_2d_sensor_flattening_matches_tonic_frame_layout():
    """A camera dataset's events (N-MNIST's dtype and sensor size): channel ``(p * H + y) * W + x``, the flattening
    of tonic's ``ToFrame`` layout ``[P, H, W]``, so per-channel spike counts equal the flattened frame."""
    cls = tonic.datasets.NMNIST
    w, h, p = cls.sensor_size
    rng = np.random.default_rng(0)
    n = 300
    events = np.zeros(n, dtype=cls.dtype)
    events["x"], events["y"], events["p"] = rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, p, n)
    events["t"] = np.sort(rng.integers(0, 50_000, n))
    to_spikes = ToSpikeTensor(w * h * p, 8, sensor_size=cls.sensor_size)
    times = to_spikes(events)
    assert times.shape == (w * h * p, 8)
    frame = tonic.transforms.ToFrame(sensor_size=cls.sensor_size, event_count=n)(events.copy())  # [1, P, H, W]
    np.testing.assert_array_equal(np.isfinite(times).sum(axis=1), frame.reshape(-1))
    e = events[0]
    c = (e["p"] * h + e["y"]) * w + e["x"]
    assert np.float32(e["t"] / 1000.0) in times[c]
    with pytest.raises(ValueError, match="W \\* H \\* P"):
        ToSpikeTensor(100, 8, sensor_size=cls.sensor_size)
    bad = events.copy()
    bad["x"][0] = w
    with pytest.raises(ValueError, match="'x' must lie in"):
        to_spikes(bad)


def test_validation():
    events = np.zeros(3, dtype=tonic.datasets.SHD.dtype)
    events["x"] = [0, 1, 5]
    with pytest.raises(ValueError, match="channel 5 outside"):
        ToSpikeTensor(5, 2)(events)
    with pytest.raises(TypeError, match="structured event array"):
        ToSpikeTensor(5, 2)(np.zeros(3))
    with pytest.raises(ValueError, match="no field 'q'"):
        ToSpikeTensor(8, 2, channel_field="q")(events)
    with pytest.raises(ValueError, match="max_spikes"):
        ToSpikeTensor(8, 0)
    with pytest.raises(ValueError, match="time_unit"):
        ToSpikeTensor(8, 2, time_unit="h")
    out = ToSpikeTensor(8, 2)(events[:0])
    assert out.shape == (8, 2) and np.isposinf(out).all()
    events["p"] = 1  # SHD's artificial polarity, constant: x alone is the channel
    assert np.isfinite(ToSpikeTensor(8, 2)(events)).sum() == 3


def test_camera_events_without_sensor_size_are_refused():
    """x alone as the channel would merge pixels of different rows (or polarities) into one channel."""
    dt = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "<i1")])
    events = np.array([(1000, 3, 0, 0), (2000, 3, 20, 1), (3000, 3, 33, 1)], dt)
    with pytest.raises(ValueError, match="the events have a field 'y' .*without sensor_size the channel is 'x' alone"):
        ToSpikeTensor(34 * 34 * 2, 4)(events)
    # One row only (one event, or a sparse sample after Denoise) passed a check on the values, onto channel x.
    with pytest.raises(ValueError, match="the events have a field 'y'"):
        ToSpikeTensor(34 * 34 * 2, 4)(events[:1])
    out = ToSpikeTensor(34 * 34 * 2, 4, sensor_size=(34, 34, 2))(events)
    assert np.isfinite(out).sum() == 3 and (np.isfinite(out).sum(axis=1) <= 1).all()
    assert np.isfinite(ToSpikeTensor(34 * 34 * 2, 4, channel_field="x")(events)).sum() == 3  # asked for
    floats = np.array([(1000, 1.5, 0.0, 0.0)], [("t", "<i8"), ("x", "<f4"), ("y", "<f4"), ("p", "<f4")])
    with pytest.raises(ValueError, match="field 'x' holds non-integer values, e.g. 1.5"):
        ToSpikeTensor(34 * 34 * 2, 4, sensor_size=(34, 34, 2))(floats)
    assert "ToSpikeTensor(n_channels=8" in repr(ToSpikeTensor(8, 2))


def test_samples_emptied_inside_compose_collate_as_empty():
    """tonic's Compose stops at a sample a transform emptied, so ToSpikeTensor inside it never runs on that sample:
    collate_spikes takes the empty event array as a sample without spikes (all +inf), and says what to do when
    there is no tensor to take the shape from."""
    dt = np.dtype([("t", np.int64), ("x", np.int64), ("p", np.int64)])
    transform = tonic.transforms.Compose([tonic.transforms.CropTime(max=60_000), ToSpikeTensor(2, 4, t_max=60.0)])
    full, emptied = transform(np.array([(1000, 0, 1), (2000, 1, 1)], dt)), transform(np.zeros(0, dt))
    assert emptied.dtype.names is not None and emptied.size == 0  # what tonic hands over
    times, labels = collate_spikes([(emptied, 0), (full, 1)])
    assert times.shape == (2, 2, 4) and times.dtype == np.float32
    np.testing.assert_array_equal(times[0], ToSpikeTensor(2, 4, t_max=60.0)(np.zeros(0, dt)))
    np.testing.assert_array_equal(times[1], full)
    with pytest.raises(ValueError, match="every item is an empty event array.*ToSpikeTensor after Compose"):
        collate_spikes([(emptied, 0), (emptied, 1)])
    with pytest.raises(ValueError, match="item 1 is a structured event array of 2 events"):
        collate_spikes([(full, 0), (np.array([(1000, 0, 1), (2000, 1, 1)], dt), 1)])


def test_float32_merging_distinct_times_is_warned():
    """An hour into a recording in ms, float32's spacing is 0.25 ms: events 1 and 99 us apart become simultaneous.
    The tensor is what was asked for (float32), with a warning that counts the merged pairs; float64 keeps them."""
    from spikescan.datasets import MergedSpikesWarning

    dt = np.dtype([("t", np.int64), ("x", np.int64), ("p", np.int64)])
    hour = 3_600_000_000
    events = np.array([(hour + 1, 0, 1), (hour + 2, 0, 1), (hour + 100, 0, 1), (hour + 100, 1, 1)], dt)
    with pytest.warns(MergedSpikesWarning, match=r"2 pair\(s\) of distinct spike times of one channel became equal "
                                                 r"in float32 \(times up to 3600000\.1, where its spacing is 0\.25\)"):
        out = ToSpikeTensor(2, 3)(events)
    assert (out[0] == np.float32(3_600_000.0)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out64 = ToSpikeTensor(2, 3, dtype=np.float64)(events)
        ToSpikeTensor(2, 3)(np.array([(1, 0, 1), (2, 0, 1), (100, 0, 1)], dt))  # near zero: distinct in float32
    np.testing.assert_array_equal(out64[0], [3_600_000.001, 3_600_000.002, 3_600_000.1])


def test_bad_event_values_are_named_with_their_real_value():
    """A negative time was refused as 'samples[0]: times must be finite and >= 0, got -0.005' (no such argument, in
    ms); inf, 1e30 or a huge uint64 address was cast to int64 first and reported as -9223372036854775808 or -1."""
    events = np.zeros(3, [("t", "<i8"), ("x", "<i8")])
    events["t"], events["x"] = [10, -5, 20], [0, 1, 1]
    with pytest.raises(ValueError, match=r"event times 't' must be finite and >= 0 \(microseconds\), got -5 at "
                                         r"event 1"):
        ToSpikeTensor(2, 4)(events)
    for dtype, value, match in (("<f8", np.inf, "channel field holds non-integer values, e.g. inf"),
                                ("<f8", 1e30, "channel 1e\\+30 outside"),
                                ("<u8", 2 ** 64 - 1, "channel 18446744073709551615 outside")):
        bad = np.zeros(2, [("t", "<i8"), ("x", dtype)])
        bad["x"] = [value, 0]
        with pytest.raises(ValueError, match=match):
            ToSpikeTensor(2, 4)(bad)
    camera = np.zeros(2, [("t", "<i8"), ("x", "<f4"), ("y", "<f4"), ("p", "<f4")])
    for value, match in ((np.inf, "event field 'y' holds non-integer values, e.g. inf"),
                         (1e30, "event field 'y' must lie in \\[0, 3\\) for sensor_size \\(2, 3, 2\\), got 1.0000")):
        camera["y"] = [value, 0]
        with pytest.raises(ValueError, match=match):
            ToSpikeTensor(12, 4, sensor_size=(2, 3, 2))(camera)


def test_to_spike_tensor_checks_the_memory_of_its_padded_output():
    """Each sample's output is [n_channels, max_spikes] whatever its spikes: checked against the memory limit (it
    was NumPy's bare "Unable to allocate 26.1 GiB" for ToSpikeTensor(700, 10**7))."""
    import spikescan as ss

    dt = np.dtype([("t", np.int64), ("x", np.int64), ("p", np.int64)])
    events = np.array([(1000, 0, 1), (2000, 1, 1)], dt)
    previous = ss.set_memory_limit(2 * 1000 * 4 - 1)  # one float32 short of [2, 1000]
    try:
        with pytest.raises(MemoryError, match=r"ToSpikeTensor\(n_channels=2, max_spikes=1000\) needs .*lower "
                                              r"max_spikes"):
            ToSpikeTensor(2, 1000)(events)
        assert ToSpikeTensor(2, 999)(events).shape == (2, 999)
    finally:
        ss.set_memory_limit(previous)
