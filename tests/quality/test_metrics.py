"""Quality measures are computed in float64 whatever the dtype of the arrays they are given."""

from __future__ import annotations

import numpy as np

from aepipe.quality.metrics import reconstruction_scores, sse_per_item


def test_sse_per_item_is_float64_and_exact_for_float32_inputs():
    rng = np.random.default_rng(0)
    x = rng.random((50, 3072), dtype=np.float32)  # CIFAR-sized items: float32 sums lose digits here
    recon = (x + rng.normal(0, 1e-3, x.shape)).astype(np.float32)
    sse = sse_per_item(x, recon)
    exact = ((x.astype(np.float64) - recon.astype(np.float64)) ** 2).sum(axis=1)
    assert sse.dtype == np.float64
    np.testing.assert_allclose(sse, exact, rtol=1e-12)
    scores = reconstruction_scores(sse, 3072)
    assert abs(scores["psnr"] - 10 * np.log10(1 / (exact.mean() / 3072))) < 1e-9
