"""Restoration measures and classical baselines, on batches (B, C, H, W) float32 in [0, 1].

PSNR and SSIM are torchmetrics' (data range 1, SSIM with its default 11x11 Gaussian window,
computed per image and averaged). The baselines here are the cheap ones a run's own report
uses; the benchmark adds the slow ones (NL-means, BM3D...).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def per_image_scores(pred: np.ndarray, target: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (dB, capped at 100 for identical images) and SSIM of each image. (N, C, H, W) x 2 -> (N,), (N,)"""
    psnrs: list[torch.Tensor] = []  # (B,) per batch
    ssims: list[torch.Tensor] = []
    for i in range(0, len(pred), batch_size):
        p = torch.from_numpy(np.ascontiguousarray(pred[i : i + batch_size], np.float32))
        t = torch.from_numpy(np.ascontiguousarray(target[i : i + batch_size], np.float32))
        psnrs.append(torch.as_tensor(peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))))
        ssims.append(torch.as_tensor(structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")))
    if not psnrs:
        return np.zeros(0), np.zeros(0)
    return torch.cat(psnrs).clamp(max=100).numpy(), torch.cat(ssims).numpy()


def image_scores(pred: np.ndarray, target: np.ndarray, batch_size: int = 512) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM of ``pred`` against ``target``. (N, C, H, W) x 2 -> scores"""
    psnr, ssim = per_image_scores(pred, target, batch_size)
    return {
        "psnr": float(psnr.mean()) if len(psnr) else float("nan"),
        "ssim": float(ssim.mean()) if len(ssim) else float("nan"),
    }


def median_filter(x: np.ndarray, size: int = 3) -> np.ndarray:
    """Per-channel median over size x size pixels (scipy). (N, C, H, W) -> (N, C, H, W)"""
    return ndimage.median_filter(x, size=(1, 1, size, size), mode="reflect")


def inpaint(x: np.ndarray, masks: np.ndarray, method: str = "telea", threshold: float = 0.05) -> np.ndarray:
    """Inpainting given the mask (pixels with mask > ``threshold``): OpenCV's Telea (``telea``,
    radius 3) or scikit-image's biharmonic (``biharmonic``). (N, C, H, W), (N, H, W) -> (N, C, H, W)"""
    out = np.empty_like(x)
    for i, (img, m) in enumerate(zip(x, masks)):
        hole = m > threshold
        if method == "telea":
            import cv2

            a = np.clip(np.rint(img.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
            r = cv2.inpaint(a, hole.astype(np.uint8), 3, cv2.INPAINT_TELEA)
            out[i] = (r.reshape(a.shape).astype(np.float32) / 255.0).transpose(2, 0, 1)
        else:
            from skimage.restoration import inpaint_biharmonic

            r = inpaint_biharmonic(img.transpose(1, 2, 0), hole, channel_axis=-1)
            out[i] = np.clip(r, 0, 1).transpose(2, 0, 1)
    return out


def available_inpainting() -> str | None:
    """The inpainting method installed (``aepipe[restore]``), if any: telea, else biharmonic."""
    try:
        import cv2  # noqa: F401

        return "telea"
    except ImportError:
        pass
    try:
        import skimage  # noqa: F401

        return "biharmonic"
    except ImportError:
        return None
