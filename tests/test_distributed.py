"""Data-parallel training (``spikescan_keras.distributed``, the jax bridge's ``shard_map``) equals training in one
process on the same global batches, up to the order of floating-point sums.

torch: ``torchrun --nproc_per_node=2`` with gloo on CPU (tests/_distributed_torch.py): both ranks end with the same
weights bit for bit, equal to one process's; the first-batch calibration, the firing statistics and the epoch logs
are the global batch's; and ``examples/yinyang.py`` under the same process group records ``world_size`` and writes
its summary from rank 0 only. jax: ``keras.distribution.DataParallel`` over two CPU devices in a subprocess
(tests/_distributed_jax.py, ``XLA_FLAGS`` must be set before jax is imported): same weights and losses as one
device, and every host call of the LIF op saw one device's half of the batch. One process per backend, like the
other Keras tests:

    KERAS_BACKEND=torch python -m pytest tests/test_distributed.py
    KERAS_BACKEND=jax python -m pytest tests/test_distributed.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _keras_backend import keras_or_skip

BACKEND, keras = keras_or_skip()

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# Floating-point sums over the batch run in another order (per rank, then across ranks).
RTOL, ATOL = 1e-5, 1e-6

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="torchrun data parallelism is the torch backend's; "
                                "the jax backend's (keras.distribution) is tested under KERAS_BACKEND=jax")
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel with shard_map is the jax "
                              "backend's; the torch backend's (torchrun) is tested under KERAS_BACKEND=torch")


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               **extra)
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    """Run tests/_distributed_torch.py on two gloo processes; ``(out_dir, stdout)``."""
    pytest.importorskip("torch.distributed")
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "_distributed_torch.py"), str(out)]
    proc = subprocess.run(cmd, cwd=out, env=_env(KERAS_BACKEND="torch", OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, proc.stdout


@torch_only
def test_torch_ddp_ranks_agree_with_one_process(torchrun):
    out, _ = torchrun
    ranks = [np.load(out / f"rank{r}.npz") for r in (0, 1)]
    assert [int(r["world_size"]) for r in ranks] == [2, 2]

    import _distributed_torch

    weights, history = _distributed_torch.train()  # this process: no process group, the whole global batches
    for name, expected in weights.items():
        got = [r[f"w:{name}"] for r in ranks]
        np.testing.assert_array_equal(got[0], got[1], err_msg=f"{name} differs between the ranks")
        np.testing.assert_allclose(got[0], expected, rtol=RTOL, atol=ATOL, err_msg=name)
    scale = float(ranks[0]["w:hidden/kernel_scale"])
    assert scale > 2.0, "the weak initial kernel should have been calibrated up (on the first global batch)"
    for key, values in history.items():  # the epochs' loss, accuracy and firing statistics of the global data
        np.testing.assert_allclose(ranks[0][f"h:{key}"], values, rtol=RTOL, atol=ATOL, err_msg=key)
        np.testing.assert_array_equal(ranks[0][f"h:{key}"], ranks[1][f"h:{key}"], err_msg=key)
    assert 0.0 < history["hidden/dead_fraction"][0], "the test should exercise the revival objective's dead set"
    assert 0.0 < max(history["readout/dead_fraction"]), "... and the readout's"


@torch_only
def test_torch_ddp_validation_shards_and_failed_fits(torchrun):
    """Each rank validates on its own shard, or rank 0 alone on all of it: the val_ figures are averaged by
    validation samples (those of the whole validation set, as one process computes them) and are the same on every
    rank, so callbacks after the callback (EarlyStopping here) read the same figures and the weights stay identical.
    A fit that raises in a training step leaves no hook behind (a stale hook all-reduced the gradients twice in the
    next fit)."""
    out, _ = torchrun
    ranks = [np.load(out / f"validated{r}.npz") for r in (0, 1)]
    import _distributed_torch

    weights, history = _distributed_torch.train_validated()
    assert len(history["val_loss"]) == 2  # stopped by EarlyStopping
    for key, values in history.items():
        np.testing.assert_array_equal(ranks[0][f"h:{key}"], ranks[1][f"h:{key}"], err_msg=key)
        np.testing.assert_allclose(ranks[0][f"h:{key}"], values, rtol=RTOL, atol=ATOL, err_msg=key)
    for name, expected in weights.items():
        np.testing.assert_array_equal(ranks[0][f"w:{name}"], ranks[1][f"w:{name}"], err_msg=name)
        np.testing.assert_allclose(ranks[0][f"w:{name}"], expected, rtol=RTOL, atol=ATOL, err_msg=name)
    assert [json.loads(str(r["hooks_left"])) for r in ranks] == [[], []]
    # Validation data on rank 0 alone: every rank receives its val_ figures (this raised, entries differing).
    alone = [np.load(out / f"validated_rank0_{r}.npz") for r in (0, 1)]
    for key, values in history.items():
        np.testing.assert_array_equal(alone[0][f"h:{key}"], alone[1][f"h:{key}"], err_msg=key)
        np.testing.assert_allclose(alone[0][f"h:{key}"], values, rtol=RTOL, atol=ATOL, err_msg=key)
    # Warnings judge the global batch, on rank 0, as one process does: no silent layer when only rank 1's share is
    # silent (rank 1 warned of one), both warnings when everything is; rank 1 says nothing.
    expected = _distributed_torch.warnings_of_the_global_batch()
    assert "SilentLayerWarning" not in expected[0] and expected[1] == ["SilentLayerWarning", "SilentReadoutWarning"]
    assert "DeadNeuronsWarning" in expected[2]  # some hidden neurons fire on no sample of the global batch
    assert json.loads(str(ranks[0]["silent_warnings"])) == expected
    assert json.loads(str(ranks[1]["silent_warnings"])) == [[], [], []]


@torch_only
def test_torchrun_yinyang_example(torchrun):
    out, stdout = torchrun
    written = json.loads((out / "yinyang.json").read_text())
    returned = [json.loads((out / f"summary{r}.json").read_text()) for r in (0, 1)]
    assert written["world_size"] == 2 and written["dataset"] == "yinyang"
    assert written["dropped_last_batch_samples"] == 1  # 33 samples in global batches of 16
    for r in (0, 1):  # ShardedBatches with the other rank's number: refused, naming the group's
        assert (out / f"refused{r}.txt").read_text().startswith(
            f"rank={1 - r}, world_size=2 do not match this process's group (rank {r} of 2)")
    assert 0.0 <= written["test_accuracy"] <= 1.0
    same = {k: v for k, v in written.items() if k not in ("stamp", "seconds")}  # each rank times itself
    for summary in returned:
        assert {k: v for k, v in summary.items() if k != "seconds"} == same
    printed = [line for line in stdout.splitlines() if line.startswith('{"dataset"')]
    assert len(printed) == 1, "only rank 0 prints the summary"


@jax_only
@pytest.mark.parametrize("route", ["pure", "buffer"])
def test_jax_data_parallel_runs_each_device_on_its_batch(route):
    """Both routes of the jax bridge (SPIKESCAN_JAX_ROUTE: pure_callback, buffer_callback) run inside shard_map."""
    proc = subprocess.run([sys.executable, str(TESTS / "_distributed_jax.py")], env=_env(SPIKESCAN_JAX_ROUTE=route),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Two devices sum the float32 gradients in another order; Adam (lr 1e-2) turns those last-bit differences of
    # near-zero gradients into update differences: measured 2.4e-7 and 1.5e-6 on two trajectories (readout scales 1
    # and 0.993). 1e-5 is a thousandth of one step.
    for name, diff in result["diff"].items():
        assert diff <= 1e-5, (name, diff)
    assert result["kernel_scale"] > 2.0, "the weak initial kernel should have been calibrated up"
    np.testing.assert_allclose(result["parallel_history"]["loss"], result["single_history"]["loss"], rtol=RTOL)
    # An eager model(x) under DataParallel ran jax's eager shard_map, which has no rule for the op's custom_vjp
    # (NotImplementedError): it now runs compiled, with predict's logits.
    assert result["parallel_history"]["eager_vs_predict"] == 0.0
    # Each eager call traced and compiled its shard_map anew (57 ms against 5 ms for two layers): cached now.
    assert result["parallel_history"]["eager_traces"] == 0
    # 48 samples in batches of 16 for 2 epochs: 6 steps. One device: 6 host calls of 16 samples. Two devices: 12
    # calls of 8 (each device its half, not the global batch gathered onto one device).
    assert result["single_seen"]["LIFOp"] == [16] * 6
    assert result["parallel_seen"]["LIFOp"] == [8] * 12
    # The calibration needs the whole first batch: each device all-gathers it, as one device would see it.
    assert result["single_seen"]["CalibrateOp"] == [16]
    assert result["parallel_seen"]["CalibrateOp"] == [16, 16]


def test_sharded_batches_warn_when_a_short_last_batch_is_left_out():
    from spikescan_keras import distributed

    batches = [(np.zeros((4, 2, 1)), np.zeros(4)), (np.zeros((1, 2, 1)), np.zeros(1))]  # 5 samples, batch 4
    with pytest.warns(UserWarning, match=r"the last global batch has 1 sample\(s\), fewer than world_size=2: it is "
                                         r"left out of every epoch"):
        sharded = distributed.ShardedBatches(batches, rank=0, world_size=2)
    assert len(sharded) == 1 and sharded[0][0].shape == (2, 2, 1)
    assert sharded.dropped_samples == 1  # the examples' summaries report it (dropped_last_batch_samples)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rank 1 says nothing (rank 0 speaks for all), and a full last batch is kept
        assert len(distributed.ShardedBatches(batches, rank=1, world_size=2)) == 1
        assert len(distributed.ShardedBatches(batches[:1] * 2, rank=0, world_size=2)) == 2


def test_sharded_batches_slice_every_array_of_nested_batches():
    """Nested inputs (a tuple or dict of arrays as x) are sliced array by array (the tuple itself was sliced: x2
    dropped, x1 whole; a dict raised); rank and world_size must be ints."""
    from spikescan_keras import distributed

    x1, x2, y = np.arange(12.0).reshape(6, 2), np.arange(6.0) + 100, np.arange(6)
    for x in ((x1, x2), {"a": x1, "b": x2}):
        (xs, ys), = [distributed.ShardedBatches([(x, y)], rank=1, world_size=2)[0]]
        parts = list(xs.values()) if isinstance(xs, dict) else list(xs)
        np.testing.assert_array_equal(parts[0], x1[1::2])
        np.testing.assert_array_equal(parts[1], x2[1::2])
        np.testing.assert_array_equal(ys, y[1::2])
    for kw in (dict(rank=0.5, world_size=2), dict(rank=True, world_size=2), dict(rank=0, world_size=2.0)):
        with pytest.raises(TypeError, match="must be an int"):
            distributed.ShardedBatches([(x1, y)], **kw)


def test_sharded_batches_refuse_a_short_batch_before_the_last_and_slice_a_bare_x():
    """A global batch before the last with fewer samples than ranks gave a rank an empty batch (its loss a mean over
    nothing); a batch that is x alone was split into its rows by tuple()."""
    from spikescan_keras import distributed

    batches = [(np.zeros((4, 2)), np.zeros(4)), (np.zeros((1, 2)), np.zeros(1)), (np.zeros((4, 2)), np.zeros(4))]
    sharded = distributed.ShardedBatches(batches, rank=1, world_size=2)
    assert sharded[0][0].shape == (2, 2)
    with pytest.raises(ValueError, match=r"global batch 1 has 1 sample\(s\), fewer than world_size=2"):
        sharded[1]
    x = np.arange(12.0).reshape(6, 2)
    np.testing.assert_array_equal(distributed.ShardedBatches([x], rank=1, world_size=2)[0], x[1::2])


def test_a_process_of_torchrun_that_did_not_join_is_stopped(monkeypatch):
    """Under torchrun without ``initialize()``, ``shard`` returned the data unchanged and ``DistributedDataParallel``
    did nothing: each process trained a model of its own on all the data, each as rank 0. Both now raise, naming
    ``initialize()``; a backend without torchrun data parallelism says what to use instead."""
    from spikescan_keras import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    if BACKEND == "torch":
        pytest.importorskip("torch.distributed")
        match = r"WORLD_SIZE=2 \(started by torchrun\) but this process has not joined the process group: call " \
                r"spikescan_keras.distributed.initialize\(\) first"
        with pytest.raises(RuntimeError, match="shard: " + match):
            distributed.shard([1, 2, 3])
        callback = distributed.DistributedDataParallel()
        with pytest.raises(RuntimeError, match="DistributedDataParallel: " + match):
            callback.on_train_begin()
    else:
        other = ("on jax use keras.distribution.DataParallel" if BACKEND == "jax" else
                 "spikescan_keras has no data-parallel route on tensorflow")
        with pytest.raises(RuntimeError, match=rf"WORLD_SIZE=2: torchrun-style data parallelism needs the torch "
                                               rf"backend .*; {other}"):
            distributed.initialize()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
