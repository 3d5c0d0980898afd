"""MNIST study: does a denser hidden code close the gap to the paper? The revival objective of ``LIFLayer``
(``silence_penalty``: pull the peak voltage of neurons silent on a whole batch up to threshold) applied to every
silent (sample, neuron) pair as well, with strength ``DENSE_STRENGTH``::

    DENSE_STRENGTH / units * sum_i mean_b [silent_bi (threshold - V*_bi + h(Q_bi))] / threshold

(the class docstring's terms, per pair). It patches ``LIFLayer`` in this process only and then runs
``examples/mnist.py`` with the given flags:

    DENSE_STRENGTH=0.1 KERAS_BACKEND=jax python examples/results/mnist_study/revival_per_pair.py --data-dir DIR \\
        --output F

Peaks of every hidden neuron are computed on each training step, so a step takes several times the default's.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, ROOT)

from keras import ops  # noqa: E402

from spikescan_keras import _bridge  # noqa: E402
from spikescan_keras import layers as L  # noqa: E402
from spikescan_keras._host import PeakOp  # noqa: E402

STRENGTH = float(os.environ["DENSE_STRENGTH"])
_statistics = L.LIFLayer._firing_statistics


def firing_statistics(self, counts, capped):
    self._silent_pairs = ops.cast(counts == 0, self.kernel.dtype)  # [batch, units], read by silence_loss below
    return _statistics(self, counts, capped)


def silence_loss(self, inputs, kernel, extra, dead, threshold):
    (peaks,) = _bridge.apply(PeakOp, self._peak_spec, (inputs, kernel, *extra, ops.ones_like(dead)))
    spikes = ops.sum(ops.cast(ops.isfinite(inputs), kernel.dtype), axis=-1)
    q = ops.relu(-ops.matmul(spikes, kernel)) / threshold
    gap = threshold - ops.cast(peaks, kernel.dtype) + threshold * q / (1.0 + q)
    pairs = STRENGTH / self.units * ops.sum(L._mean(self._silent_pairs * gap, axis=0) / threshold)
    return pairs + self.silence_penalty / self.units * ops.sum(dead * L._mean(gap, axis=0) / threshold)


L.LIFLayer._firing_statistics = firing_statistics
L.LIFLayer._silence_loss = silence_loss

if __name__ == "__main__":
    import mnist

    mnist.main(sys.argv[1:])
