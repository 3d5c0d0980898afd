"""Data-parallel training with ``model.fit``: one process per device on the torch backend, one process per machine
on the jax backend.

**torch** (``torchrun``): Keras 3 has no data parallelism of its own on torch, so this module gives ``fit`` the
semantics of torch's ``DistributedDataParallel``::

    world = spikescan_keras.distributed.initialize()   # joins torchrun's process group; 1 without torchrun
    model = build_and_compile()
    batches = spikescan_keras.distributed.shard(SpikeBatches(data, batch_size=GLOBAL_BATCH, shuffle=True, seed=0))
    model.fit(batches, callbacks=[spikescan_keras.distributed.DistributedDataParallel()],
              verbose=2 if spikescan_keras.distributed.rank() == 0 else 0)

and run it with ``torchrun --nproc_per_node=N script.py`` (``--nnodes``, ``--node_rank``, ``--master_addr`` for
several machines). ``initialize`` uses gloo on CPU and NCCL on GPU (rank ``LOCAL_RANK`` on GPU ``LOCAL_RANK``).
``shard`` gives each rank its slice ``[rank::world]`` of every global batch, so the ranks together see exactly the
batches one process would. ``DistributedDataParallel`` makes the ranks train as one process on those global batches:

- at the first training step of ``fit`` every weight and optimizer variable is broadcast from rank 0 (after
  ``BackupAndRestore`` or any other callback has restored state), and the ranks check that they start from the same
  epoch with the same number of steps per epoch (a mismatch would otherwise hang in a collective);
- each step the gradients are all-reduced, weighted by each rank's number of samples (``sum_r n_r g_r / N``), so
  they are the gradients of the loss on the global batch, uneven last batches included, before the optimizer (and
  its gradient clipping) sees them: every rank applies the same update and the weights stay identical;
- the ``LIFLayer`` quantities that depend on the whole batch are those of the global batch: the first-batch
  calibration runs on the all-gathered batch (and its factor is broadcast from rank 0, so ``kernel_scale`` is
  identical bit for bit), the set of dead neurons of the revival objective (``silence_penalty``) and the firing
  statistics are summed over the ranks, and ``capped_spikes`` counts the training spikes of all ranks (inference
  calls, validation included, add each rank's own);
- at the end of each epoch the entries of the logs are averaged over the ranks before ``History``, the progress
  bar and the callbacks listed after this one see them: the training entries (loss, metrics) weighted by each
  rank's training samples, the ``val_`` entries by its validation samples. So the epoch's figures are those of the
  global data, whether every rank evaluates the same validation data, its own shard of it, or (rank 0 alone) all of
  it, and callbacks that act on them (``EarlyStopping``, ``ReduceLROnPlateau``,
  ``ModelCheckpoint(save_best_only=True)``) decide alike on every rank. **List ``DistributedDataParallel()``
  first** in ``callbacks``: a callback before it sees this rank's own figures, and ranks that decide differently
  (one stops, one goes on) diverge or fail in a collective. Per-batch progress (``verbose=1``) shows each rank's
  own running values.
- the layers' warnings of a training call (silent layer or readout, dead readout units, inputs after ``t_max``,
  spikes beyond ``max_spikes``, the calibration's) judge the global batch and come from rank 0 alone: one rank's
  share alone may be silent while the others fire;
- a ``fit`` that raises in a training step removes the hooks (a later ``fit`` without the callback runs no
  collective); hooks left by a ``fit`` that raised elsewhere are removed by the next ``fit`` with the callback.

Rank 0 should be the only one writing files; ``rank()`` says which one a process is. The collectives run only during
``fit`` with the callback, only in training calls, and all-reduce few numbers per layer and step besides the
gradients. Reproducibility: up to the order of floating-point sums, the result equals one process training on the
same global batches (tests/test_distributed.py).

**jax**: nothing here is needed. ``keras.distribution.set_distribution(keras.distribution.DataParallel())`` shards
each batch over the devices and the jax bridge runs each layer's host op on each device's slice of the batch
(``jax.shard_map``); all other computations, the calibration, dead neurons and statistics included, have the global
batch's meaning by construction. Several machines: ``jax.distributed.initialize()`` first, in one process per
machine. ``initialize``, ``rank`` and ``world_size`` here speak of the torch process group only and report a single
process on jax.
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np

__all__ = ["initialize", "rank", "world_size", "shard", "ShardedBatches", "DistributedDataParallel"]


def _process_group():
    """``torch.distributed`` when the torch backend is active and its process group is initialised, else None."""
    if keras.backend.backend() != "torch":
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def initialize():
    """Join the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and return the number of processes.

    NCCL with one GPU per process (``torch.cuda.set_device(LOCAL_RANK)``) when CUDA is available, gloo otherwise.
    Call it before building the model, so that its variables are created on the process's own GPU. Without
    ``WORLD_SIZE > 1`` (a plain ``python script.py``) nothing happens and 1 is returned; a group that is already
    initialised is kept. On the jax backend it returns 1, and raises if started by ``torchrun`` with several processes
    (use ``keras.distribution`` there, see the module docstring).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if keras.backend.backend() != "torch":
        if size > 1:
            other = ("on jax use keras.distribution.DataParallel (and jax.distributed.initialize on several "
                     "machines)" if keras.backend.backend() == "jax" else
                     "spikescan_keras has no data-parallel route on tensorflow: use torch, or jax with "
                     "keras.distribution.DataParallel")
            raise RuntimeError(f"WORLD_SIZE={size}: torchrun-style data parallelism needs the torch backend "
                               f"(KERAS_BACKEND=torch), not {keras.backend.backend()!r}; {other}")
        return 1
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if size < 2:
        return 1
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_world_size()


def world_size():
    """Number of processes of the torch process group (1 without one, and on jax)."""
    dist = _process_group()
    return 1 if dist is None else dist.get_world_size()


def rank():
    """This process's rank in the torch process group (0 without one, and on jax)."""
    dist = _process_group()
    return 0 if dist is None else dist.get_rank()


class ShardedBatches(keras.utils.PyDataset):
    """One rank's share of a sequence of global batches: its slice ``[a[rank::world_size] for a in batch]`` of each.

    ``batches`` is anything with ``len`` and indexing that yields tuples of arrays (``(x, y)`` or ``(x, y, w)``), such
    as ``spikescan.datasets.SpikeBatches``; its ``on_epoch_begin`` / ``on_epoch_end`` are forwarded (a shuffled
    ``SpikeBatches`` reshuffles by its seed and epoch, the same on every rank). The ranks get disjoint slices whose
    sizes differ by at most one sample. A last global batch with fewer samples than ranks is dropped, so that every
    rank has a sample at every step (the ranks must take the same number of steps), with a warning on rank 0
    (``dropped_samples`` counts its samples); an earlier one raises ValueError when it is served. A batch that is an
    array alone is ``x``. In a process group, ``rank`` and ``world_size`` must be the group's.

    Order: the k-th batch ``fit`` asks for in an epoch is the slice of global batch k, whatever index it asks with.
    ``fit(shuffle=True)``, the default, reorders a PyDataset's batches with each process's own random state, which
    would hand the ranks slices of different global batches at the same step; shuffle the global batches instead
    (``SpikeBatches(shuffle=True, seed=...)``). For the same reason the batches are loaded in ``fit``'s thread, in
    order (``workers=1``; the wrapped sequence's own ``workers`` are not used).
    """

    def __init__(self, batches, *, rank, world_size):
        super().__init__()
        for name, value in (("rank", rank), ("world_size", world_size)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        group = _process_group()
        if group is not None and (rank, world_size) != (group.get_rank(), group.get_world_size()):
            raise ValueError(f"rank={rank}, world_size={world_size} do not match this process's group (rank "
                             f"{group.get_rank()} of {group.get_world_size()}): the ranks would get overlapping or "
                             "missing slices; use shard(batches), which reads them from the group")
        self.batches, self.rank, self.world_size = batches, int(rank), int(world_size)
        self.dropped_samples = 0  # per epoch: the samples of a last global batch too short to share
        n = len(batches)
        if n and (last := len(_leaves(batches[n - 1])[0])) < self.world_size:
            n -= 1
            self.dropped_samples = last
            if n and self.rank == 0:
                warnings.warn(f"the last global batch has {last} sample(s), fewer than world_size="
                              f"{self.world_size}: it is left out of every epoch (one process would train on it); "
                              "choose the dataset size or batch size so that the last batch has at least "
                              "world_size samples, or drop those samples yourself to silence this", stacklevel=2)
        if n == 0:
            raise ValueError(f"no batch has at least world_size={world_size} samples")
        self._len, self._served = n, 0

    def __len__(self):
        return self._len

    def __getitem__(self, index):
        if not -self._len <= index < self._len:
            raise IndexError(f"batch index {index} out of range for {self._len} batches")
        step, self._served = self._served % self._len, self._served + 1
        batch = self.batches[step]
        batch = tuple(batch) if isinstance(batch, list) else batch  # a bare array is x, not a tuple of its rows
        if (size := len(_leaves(batch)[0])) < self.world_size:  # the last one is left out in __init__
            raise ValueError(f"global batch {step} has {size} sample(s), fewer than world_size={self.world_size}: "
                             "a rank would train on an empty batch (every rank needs a sample at every step); "
                             "only the last batch may be short")
        return keras.tree.map_structure(lambda a: None if a is None else _rows(a, self.rank, self.world_size), batch)

    def on_epoch_begin(self):
        self._served = 0
        if hasattr(self.batches, "on_epoch_begin"):
            self.batches.on_epoch_begin()

    def on_epoch_end(self):
        self._served = 0
        if hasattr(self.batches, "on_epoch_end"):
            self.batches.on_epoch_end()


def _leaves(batch):
    return [a for a in keras.tree.flatten(batch) if a is not None]


def _rows(array, start, step):
    part = array[start::step]
    return np.ascontiguousarray(part) if isinstance(part, np.ndarray) else part


def shard(batches):
    """``ShardedBatches(batches)`` for this process's rank when several processes train together, else ``batches``
    unchanged. ``batches`` holds the global batches (``batch_size`` = the global batch size)."""
    size = world_size()
    _check_joined("shard")
    return batches if size < 2 else ShardedBatches(batches, rank=rank(), world_size=size)


def _check_joined(what):
    """A ``RuntimeError`` when ``torchrun`` started several processes (``WORLD_SIZE > 1``) on the torch backend but
    this one has not joined their group: each would otherwise train a model of its own on all the data, each
    believing itself rank 0, without a word."""
    size = int(os.environ.get("WORLD_SIZE", "1") or "1")
    if size > 1 and keras.backend.backend() == "torch" and _process_group() is None:
        raise RuntimeError(f"{what}: WORLD_SIZE={size} (started by torchrun) but this process has not joined the "
                           "process group: call spikescan_keras.distributed.initialize() first, before building the "
                           "model; without it each process would train a model of its own on all the data")


class _Collectives:
    """What a ``LIFLayer`` or ``LIReadout`` asks of the other ranks in a data-parallel training call (torch tensors)."""

    def __init__(self, dist):
        self.dist = dist

    def gather_batch(self, x):
        """The global batch: every rank's ``x [b_r, ..., m_r]`` concatenated in rank order along axis 0, spike
        tensors padded with ``+inf`` to the largest last axis."""
        import torch

        dist, size = self.dist, self.dist.get_world_size()
        with torch.no_grad():
            shape = torch.tensor([x.shape[0], x.shape[-1]], dtype=torch.int64, device=x.device)
            shapes = [torch.empty_like(shape) for _ in range(size)]
            dist.all_gather(shapes, shape)
            shapes = [tuple(int(v) for v in s.tolist()) for s in shapes]
            rows, cols = max(s[0] for s in shapes), max(s[1] for s in shapes)
            padded = torch.full((rows, *x.shape[1:-1], cols), float("inf"), dtype=x.dtype, device=x.device)
            padded[:x.shape[0], ..., :x.shape[-1]] = x
            parts = [torch.empty_like(padded) for _ in range(size)]
            dist.all_gather(parts, padded)
            return torch.cat([part[:b] for part, (b, _) in zip(parts, shapes)])

    def broadcast(self, x):
        """``x`` as rank 0 has it."""
        import torch

        with torch.no_grad():
            x = x.detach().clone().contiguous()
            self.dist.broadcast(x, src=0)
        return x

    def sum(self, x):
        """``x`` (a small float tensor) summed over the ranks."""
        import torch

        with torch.no_grad():
            x = x.detach().clone().contiguous()
            self.dist.all_reduce(x)
        return x

    def is_main(self):
        """Whether this process is rank 0 (the one that warns for the global batch)."""
        return self.dist.get_rank() == 0

    def check(self, op, spec, *values):
        """``op.check(spec, *values)`` on rank 0 with the host values of global sums: the warnings of the global batch,
        once (each rank's share alone would warn of a silent batch that the others fired on)."""
        if self.is_main():
            op.check(spec, *(v.item() if hasattr(v, "item") else v for v in values))

    def firing_sums(self, counts, capped):
        """``counts [b, units]`` (spikes per sample and neuron) and ``capped`` (spikes not recorded) of this rank ->
        ``(fired [units], silent, samples, capped)`` summed over the ranks: spikes per neuron over the global batch,
        (sample, neuron) pairs without a spike, samples, unrecorded spikes (int64 tensors)."""
        import torch

        with torch.no_grad():
            counts = counts.detach()
            local = torch.cat([counts.sum(dim=0, dtype=torch.int64),
                               torch.stack([(counts == 0).sum().to(torch.int64),
                                            torch.tensor(counts.shape[0], dtype=torch.int64, device=counts.device),
                                            capped.detach().to(torch.int64).reshape(())])])
            self.dist.all_reduce(local)
        return local[:-3], local[-3], local[-2], local[-1]


class DistributedDataParallel(keras.callbacks.Callback):
    """``fit`` callback for data-parallel training on the torch backend (module docstring): broadcasts the state
    from rank 0 at the first step, all-reduces the gradients every step and makes the LIF layers' batch-wide
    quantities those of the global batch. Pass each rank its ``shard`` of the global batches. Does nothing in a
    single process. Only the torch backend is supported (on jax use ``keras.distribution.DataParallel``).
    """

    def __init__(self):
        super().__init__()
        if keras.backend.backend() != "torch":
            raise NotImplementedError("DistributedDataParallel is for the torch backend; on jax use "
                                      "keras.distribution.DataParallel (see spikescan_keras.distributed)")
        self._installed = None

    # -------------------------------------------------------------- hooks on the model and its optimizer

    def on_train_begin(self, logs=None):
        _check_joined("DistributedDataParallel")
        self._dist = _process_group()
        if self._dist is None or self._dist.get_world_size() < 2:
            self._dist = None
            return
        self._install()
        self._first_step, self._epoch, self._epoch_samples, self._val_samples = True, None, 0, 0

    def on_train_end(self, logs=None):
        self._uninstall()

    def _install(self):
        from .layers import LIFLayer, LIReadout

        model, optimizer = self.model, self.model.optimizer
        _remove_hooks(model)  # left by a fit that raised outside a training step (on_train_end never ran)
        saved = {"train_step": model.__dict__.get("train_step"), "apply": optimizer.__dict__.get("apply"),
                 "test_step": model.__dict__.get("test_step")}
        train_step, apply, test_step = model.train_step, optimizer.apply, model.test_step

        def ddp_train_step(data):
            try:
                self._local_samples = int(_leaves(keras.utils.unpack_x_y_sample_weight(data)[0])[0].shape[0])
                self._epoch_samples += self._local_samples
                if self._first_step:
                    self._first_step = False
                    self._start()
                return train_step(data)
            except BaseException:
                # fit ends here without on_train_end: a later fit must not run these hooks (and their collectives)
                self._uninstall()
                raise

        def ddp_apply(grads, trainable_variables=None):
            variables = optimizer._trainable_variables if trainable_variables is None else trainable_variables
            return apply(self._all_reduce_gradients(list(grads), list(variables)), trainable_variables)

        def ddp_test_step(data):  # counts this rank's validation samples, to weight the val_ figures
            self._val_samples += int(_leaves(keras.utils.unpack_x_y_sample_weight(data)[0])[0].shape[0])
            return test_step(data)

        for owner, name, hook in ((model, "train_step", ddp_train_step), (optimizer, "apply", ddp_apply),
                                  (model, "test_step", ddp_test_step)):
            hook._spikescan_ddp_saved = saved[name]
            setattr(owner, name, hook)
        collectives = _Collectives(self._dist)
        layers = [layer for layer in model._flatten_layers() if isinstance(layer, (LIFLayer, LIReadout))]
        for layer in layers:
            layer._data_parallel = collectives
        self._installed = True

    def _uninstall(self):
        if self._installed:
            _remove_hooks(self.model)
            self._installed = None

    # -------------------------------------------------------------- collectives

    def _start(self):
        """First step of ``fit``: same epoch and steps on every rank, then rank 0's weights and optimizer state."""
        import torch

        dist, size = self._dist, self._dist.get_world_size()
        steps = self.params.get("steps") if self.params else None
        mine = torch.tensor([-1 if self._epoch is None else self._epoch, -1 if steps is None else steps],
                            dtype=torch.int64, device=_device(self.model))
        everyone = [torch.empty_like(mine) for _ in range(size)]
        dist.all_gather(everyone, mine)
        everyone = [tuple(int(v) for v in t.tolist()) for t in everyone]
        if len(set(everyone)) > 1:
            raise RuntimeError(
                "the ranks start training from different (epoch, steps per epoch): "
                f"{dict(enumerate(everyone))}. Give every rank its shard of the same global batches "
                "(spikescan_keras.distributed.shard) and, to resume from a backup, a backup folder that every rank "
                "reads.")
        variables, seen = [], set()
        for v in list(self.model.weights) + list(self.model.optimizer.variables):
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
        with torch.no_grad():
            for v in variables:
                dist.broadcast(v.value.data, src=0)

    def _all_reduce_gradients(self, grads, variables):
        """``sum_r n_r g_r / sum_r n_r`` for every gradient (None where no rank has one), in one all-reduce."""
        import torch

        if not grads:
            return grads
        n = float(self._local_samples)
        device = _device(self.model)
        with torch.no_grad():
            parts = [torch.zeros(int(np.prod(v.shape)), dtype=torch.float64, device=device) if g is None
                     else g.detach().reshape(-1).to(torch.float64) * n for g, v in zip(grads, variables)]
            flags = torch.tensor([float(g is not None) for g in grads] + [n], dtype=torch.float64, device=device)
            flat = torch.cat(parts + [flags])
            self._dist.all_reduce(flat)
            total, present = flat[-1], flat[-1 - len(grads):-1]
            out, offset = [], 0
            for g, v, part, has in zip(grads, variables, parts, present.tolist()):
                chunk = flat[offset:offset + part.numel()]
                offset += part.numel()
                like = v.value
                out.append(None if has == 0 else (chunk / total).to(like.dtype).reshape(like.shape))
        return out

    # -------------------------------------------------------------- logs

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._epoch_samples, self._val_samples = epoch, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        if self._dist is None or logs is None:
            return
        import torch

        # Training entries weighted by each rank's training samples, val_ entries by its validation samples: the
        # figures of the global data, the same on every rank (so callbacks after this one decide alike). Over the
        # union of the ranks' entries: a rank without an entry (no validation data) weighs 0 in it and receives the
        # others' figure.
        mine = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.floating, np.integer))}
        names = [None] * self._dist.get_world_size()
        self._dist.all_gather_object(names, sorted(mine))
        keys = sorted(set().union(*names))
        weight = {False: float(self._epoch_samples), True: float(self._val_samples)}
        n = [weight[k.startswith("val_")] if k in mine else 0.0 for k in keys]
        values = torch.tensor([mine.get(k, 0.0) * w for k, w in zip(keys, n)] + n, dtype=torch.float64,
                              device=_device(self.model))
        self._dist.all_reduce(values)
        sums, totals = values[:len(keys)].tolist(), values[len(keys):].tolist()
        logs.update({k: s / t for k, s, t in zip(keys, sums, totals) if t > 0})


def _remove_hooks(model):
    """Restore what ``DistributedDataParallel._install`` replaced on ``model`` and its optimizer, and detach the
    layers from the collectives (nothing to do when no hook is installed)."""
    from .layers import LIFLayer, LIReadout

    for owner, name in ((model, "train_step"), (model, "test_step"), (model.optimizer, "apply")):
        hook = None if owner is None else owner.__dict__.get(name)
        if hook is not None and hasattr(hook, "_spikescan_ddp_saved"):
            if hook._spikescan_ddp_saved is None:
                owner.__dict__.pop(name)
            else:
                owner.__dict__[name] = hook._spikescan_ddp_saved
    for layer in model._flatten_layers():
        if isinstance(layer, (LIFLayer, LIReadout)):
            layer._data_parallel = None


def _device(model):
    """The device of the model's weights (where NCCL needs the collectives' tensors)."""
    import torch

    weights = model.weights
    return weights[0].value.device if weights else torch.device("cpu")
