"""A bounded host cache of forward results, for bridges whose forward and backward are separate host callbacks.

The forward callback stashes spikescan's result object and returns an integer token (a tensor of the graph); the
backward callback takes the result back by that token, so a training step runs the forward once. Results nobody
takes back (inference, an output without gradient) are evicted oldest first; a backward whose result was evicted,
or that runs twice, gets ``None`` and recomputes the forward from its saved inputs.
"""

from __future__ import annotations

import collections
import itertools
import threading


class ResidualCache:
    """At most ``size`` results, keyed by int32-sized tokens; thread-safe."""

    def __init__(self, size):
        self.size = size
        self._results = collections.OrderedDict()
        self._lock = threading.Lock()
        self._tokens = itertools.count()

    def stash(self, result):
        """Keep ``result``; returns its token (a non-negative int below ``2**31``)."""
        with self._lock:
            token = next(self._tokens) % (2 ** 31)
            self._results[token] = result
            while len(self._results) > self.size:
                self._results.popitem(last=False)
        return token

    def take(self, token):
        """The result stashed under ``token`` (removed from the cache), or ``None`` if it was evicted or taken."""
        with self._lock:
            return self._results.pop(int(token), None)

    def clear(self):
        with self._lock:
            self._results.clear()

    def __len__(self):
        return len(self._results)
