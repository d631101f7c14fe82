"""How the unit tests compare float32 results that two equivalent computations give (batched or one at a time,
chunked or whole, a hooked forward or one done by hand)."""

from __future__ import annotations

import numpy as np
import torch

RTOL = 1e-5
"""Rounding of a float32 network grows with the size of the values it carries (eps = 1.2e-7 per operation,
accumulated over blocks and sums of hundreds of terms), and different kernels (batch shapes, CPUs, thread counts)
round differently: between CPUs we measured about 5e-6 of the values' scale, so 1e-5 of it is equality here."""


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def assert_float32_close(actual, expected, rtol: float = RTOL, scale: float | None = None) -> None:
    """``|actual - expected| <= rtol · scale`` elementwise, ``scale`` the largest ``|expected|`` by default.

    Pass ``scale`` when ``expected`` is a difference of larger float32 values (e.g. ``ΔCE = CE(α) - CE(0)``):
    its rounding is that of the values it was computed from.
    """
    actual, expected = _numpy(actual), _numpy(expected)
    scale = float(np.abs(expected).max()) if scale is None else float(scale)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * max(scale, np.finfo(np.float32).tiny))
