"""The one table of tolerances for comparing implementations (every test reads its tolerances here).

Spike counts must always be identical. Times and gradients are compared with ``numpy.testing.assert_allclose``
semantics (``|a - b| <= atol + rtol |b|``).

- float64: every implementation solves in float64, so fast paths agree with the reference to rounding noise.
- float32: inputs are rounded to float32 but solved in float64; outputs are rounded to float32 (about 6e-8
  relative), so two implementations can differ by a float32 ulp of the output.
- fd: central finite differences with step 1e-6 on float64 cases kept away from threshold.
"""

TOL = {
    "float64": {"times": dict(rtol=1e-12, atol=1e-12), "grads": dict(rtol=1e-9, atol=1e-9)},
    "float32": {"times": dict(rtol=2e-7, atol=1e-6), "grads": dict(rtol=1e-4, atol=1e-4)},
    "fd": dict(rtol=1e-5, atol=1e-6),
    "mpmath": dict(rtol=1e-10, atol=0.0),
}
