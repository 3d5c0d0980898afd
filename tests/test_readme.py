"""The README's Python examples run as written: each code block is executed in a fresh interpreter (with the
earlier blocks it continues, and a stated prelude where it uses a user's data), so a renamed argument or function
breaks this test instead of the first user's copy-paste. Every block is accounted for: run here, or listed in
``NOT_RUN`` with the test that covers it instead."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# First line of a block -> why it is not run here.
NOT_RUN = {
    "from spikescan.datasets import SpikeBatches": "torchrun data-parallel training: tests/test_distributed.py",
    "import jax": "multi-process jax: tests/test_distributed.py (two host devices)",
}


def _blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _block(start):
    """The README block that begins with ``start`` (exactly one)."""
    found = [b for b in _blocks() if b.startswith(start)]
    assert len(found) == 1, (start, len(found))
    return found[0]


def _run(code, tmp_path, timeout=600):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("KERAS_BACKEND", "torch")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"README snippet failed:\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}"
    return proc.stdout


ARRAY = "import numpy as np\nimport spikescan as ss"
ENCODE = "from spikescan import encode"
PLOT = "import matplotlib.pyplot as plt"
KERAS = "import os\nos.environ.setdefault(\"KERAS_BACKEND\""
NIR = "import nir, tonic"
TORCH_LOOP = "import torch\nimport keras\nimport spikescan_keras as sk"
JAX_LOOP = "import jax.numpy as jnp\nimport jax"


def test_every_block_is_run_or_accounted_for():
    for block in _blocks():
        run = [start for start in (ARRAY, ENCODE, PLOT, KERAS, NIR, TORCH_LOOP, JAX_LOOP) if block.startswith(start)]
        assert len(run) + (block.splitlines()[0] in NOT_RUN) == 1, f"README block not tested: {block[:200]!r}"


def test_array_library_block_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    code = _block(ARRAY) + _block(PLOT) + textwrap.dedent("""
        assert out.times.shape == (8, 32, 16) and out.counts.shape == (8, 32)
        assert grads.weights.shape == weights.shape and grads.input_times.shape == input_times.shape
        assert res.voltage.shape == (8, 32, 2000)
        assert top.collections and bottom.lines and not top.lines  # the raster above, the traces below
        print("ok")
    """)
    assert "ok" in _run(code, tmp_path)


def test_encode_block(tmp_path):
    prelude = "import numpy as np\nfeatures_train = np.random.default_rng(0).uniform(-1.0, 3.0, (20, 4))\n"
    code = prelude + _block(ENCODE) + textwrap.dedent("""
        assert times.shape == (20, 4, 1) and rates.shape == (20, 4, 8) and pairs.shape == (20, 8, 1)
        assert (np.isfinite(pairs[:, :4]) | np.isfinite(pairs[:, 4:])).all()  # every value fires on x or 1 - x
        assert np.isinf(times[x <= 0]).all() and np.isfinite(times[x > 0]).all()
        print("ok")
    """)
    assert "ok" in _run(code, tmp_path)


def test_keras_block_trains_and_nir_round_trip(tmp_path):
    """The Keras block builds and compiles; a short fit on random spikes runs; the NIR lines of the interchange block
    (up to the tonic download, which needs the internet) export and re-import a model with identical outputs."""
    pytest.importorskip("nir")
    pytest.importorskip("keras")
    nir_lines = _block(NIR).split("shd = ")[0].replace("import nir, tonic", "import nir")
    code = _block(KERAS) + textwrap.dedent("""
        import numpy as np
        rng = np.random.default_rng(0)
        x = np.sort(rng.uniform(0.0, 20.0, (64, 5, 1)), axis=-1).astype("float32")
        y = rng.integers(0, 3, 64)
        history = model.fit(x, y, epochs=1, batch_size=32, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    """) + nir_lines + textwrap.dedent("""
        np.testing.assert_allclose(np.asarray(same.predict(x, verbose=0)), np.asarray(model.predict(x, verbose=0)),
                                   rtol=1e-6, atol=1e-6)
        print("ok")
    """)
    assert "ok" in _run(code, tmp_path)


def _loop_data(backend):
    """The training loops' prelude: the backend, and 96 samples of 5 input spike times in 3 classes."""
    return textwrap.dedent(f"""
        import os
        os.environ["KERAS_BACKEND"] = "{backend}"
        import numpy as np
        rng = np.random.default_rng(0)
        n_in, max_in, n_classes = 5, 1, 3
        x = np.sort(rng.uniform(0.0, 20.0, (96, n_in, max_in)), axis=-1).astype("float32")
        y = rng.integers(0, n_classes, 96)
    """)


# After a loop: its delays stayed in [0, max_delay=5] though the steps pushed some to the bound, and a loss came out.
_LOOP_CHECK = textwrap.dedent("""
    delays = model.layers[0].delay_values()
    assert 0.0 <= delays.min() and delays.max() <= 5.0 and (delays == 5.0).any(), (delays.min(), delays.max())
    assert np.isfinite(float(loss))
    print("ok")
""")


def test_torch_loop_block_trains_and_keeps_the_constraints(tmp_path):
    """The hand-written torch loop runs as written on a DataLoader of Yin-Yang-like spike times, with a learning
    rate large enough that its steps take delays out of [0, max_delay]: apply_constraints keeps them in."""
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    prelude = _loop_data("torch") + textwrap.dedent("""
        import torch
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)),
                                             batch_size=32)
    """)
    block = _block(TORCH_LOOP).replace("lr=1e-3", "lr=1.0")
    assert "ok" in _run(prelude + block + _LOOP_CHECK, tmp_path)


def test_jax_loop_block_trains_like_fit_and_keeps_the_constraints(tmp_path):
    """The functional jax loop runs as written (jit, stateless_call, apply_constraints on the arrays): the delays
    stay in [0, max_delay] though its steps push them out (a large learning rate), the layer calibrated and the
    model holds the trained values at the end."""
    pytest.importorskip("jax")
    pytest.importorskip("keras")
    prelude = _loop_data("jax") + "batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)] * 4\n"
    block = _block(JAX_LOOP).replace("1e-2 * g", "3.0 * g")
    check = textwrap.dedent("""
        lif = model.layers[0]
        assert int(lif.calibrated.numpy()) == 1
        np.testing.assert_array_equal(np.asarray(lif.kernel.value), np.asarray(trainable[0]))
    """)
    assert "ok" in _run(prelude + block + check + _LOOP_CHECK, tmp_path)
