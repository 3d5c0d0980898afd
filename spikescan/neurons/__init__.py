"""Neuron models: one module per model, each with its closed forms in a vectorised (NumPy) and a scalar (Numba)
form, and one CUDA header per model under ``cuda/kernels/neurons/``. ``lif``: the current-based LIF neuron."""
