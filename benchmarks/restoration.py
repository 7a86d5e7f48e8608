"""Restoration and compression on CIFAR-10: the task-trained autoencoders against classical methods.

    python -m benchmarks.restoration --data ../shared/datasets/cifar10.npz

Protocol. Autoencoders train on the training images (all but the last ``--tune`` of them; the
library's own 5 % validation split inside those for early stopping), each for at most
``--minutes`` of wall time, through the library (``train_model`` on a .npy of the images, the
ordinary ``training.task`` options). The last ``--tune`` training images are never trained on:
every classical method's parameter is chosen on them (best mean PSNR over a small grid). Reported
on a seeded subset of ``--test`` test images (touched once, after everything is chosen), slow
methods on the first ``--test-slow`` (NL-means, bilateral, biharmonic) and ``--test-bm3d``
(BM3D) of that subset — each row names its n, and the autoencoder is shown on the same items.
PSNR and SSIM: torchmetrics (data range 1, per image, averaged). Corruptions come from
``aepipe.features.degrade`` with fixed seeds (the same generator training uses).

Models: a conv U-Net (``model.skip_connections``) with a residual output (``model.residual``: the
input plus a learned correction) per task: gaussian denoising (one model for σ 15/25/50, levels
drawn per item), salt-and-pepper 10 %, colorization, watermark removal; and dense autoencoders
that start as PCA (``model.linear_path: pca``; no skips: a code must decode alone) at two code
sizes for compression. The recipe (``--residual``, ``--lr-schedule``, ``--channels``) was chosen
with ``--train-only MODEL``, which trains one model and prints its figures on the library's
validation split of the training images, reading no test image.

Grayscale data (``--data`` with ``x_train`` of shape (N, H, W), e.g. MNIST) runs ``--only
denoise`` (BM3D in its one-channel form).

``--tiny`` runs the same code on synthetic images in a minute (CI; no dataset needed).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aepipe.config import WatermarkConfig, build_config
from aepipe.features.degrade import add_noise, grayscale, watermarked
from aepipe.features.pictures import grid_png
from aepipe.files import atomic_write_bytes
from aepipe.layout import RunLayout
from aepipe.logs import setup_logging
from aepipe.model.train import train_model
from aepipe.quality.metrics import fit_pca
from aepipe.quality.restoration import inpaint, per_image_scores
from aepipe.restore.compress import dequantise, quantise
from aepipe.restore.decode import decode_codes, model_for, reconstruct
from benchmarks import write_results

UNET = [
    "model.architecture=conv",
    "model.n_layers=3",
    "model.batch_norm=true",
    "model.code_size=256",
    "model.loss=mse",
    "training.batch_size=64",
    "training.lr=0.002",
    "training.val_fraction=0.05",
    "training.test_fraction=0.0",
    "training.early_stopping_patience=4",
    "training.max_epochs=100",
]
COMPRESS = [
    "model.architecture=dense",
    "model.linear_path=pca",
    "model.nodes_per_layer=[1024, 512, 256]",
    "training.knn_target=null",  # the images preset's neighbour-smoothed target is for search, not compression
]
TASKS: dict[str, list[str]] = {
    "denoise_gaussian": [
        "training.task=denoise",
        "training.noise=[{kind: gaussian, levels: [15, 25, 50]}]",
        "model.skip_connections=true",
    ],
    "denoise_salt_pepper": [
        "training.task=denoise",
        "training.noise=[{kind: salt_pepper, levels: [0.1]}]",
        "model.skip_connections=true",
    ],
    "colorize": ["training.task=colorize", "model.skip_connections=true"],
    "remove_watermark": ["training.task=remove_watermark", "model.skip_connections=true"],
    # compression: a dense autoencoder that starts as PCA (model.linear_path: pca, the images preset's
    # start), so the code it learns is never a worse code than PCA's on the training images
    "compress_64": [*COMPRESS, "model.code_size=64"],
    "compress_256": [*COMPRESS, "model.code_size=256"],
}
DENOISE = [
    ("gaussian σ=15", "gaussian", 15.0),
    ("gaussian σ=25", "gaussian", 25.0),
    ("gaussian σ=50", "gaussian", 50.0),
    ("salt-and-pepper 10%", "salt_pepper", 0.1),
]


def to_hwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1)


def to_chw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)


def per_image(fn, x: np.ndarray) -> np.ndarray:
    """A classical method applied image by image (HWC in, HWC out). (N, C, H, W) -> (N, C, H, W)"""
    # (a method given one channel may return (H, W): reshaped back to (H, W, 1))
    return to_chw(np.clip(np.stack([np.reshape(fn(img), img.shape) for img in to_hwc(x)]), 0, 1))


def classical_denoisers(kind: str, level: float) -> dict[str, tuple[list, object]]:
    """name -> (parameter grid, fn(param) -> per-image function). Grids are small: tuned on the tune set."""
    from scipy import ndimage
    from skimage.restoration import denoise_bilateral, denoise_nl_means, denoise_tv_chambolle

    sigma = level / 255.0 if kind == "gaussian" else 0.2
    return {
        "Gaussian filter (σ px)": ([0.5, 0.75, 1.0, 1.5], lambda p: lambda im: ndimage.gaussian_filter(im, (p, p, 0))),
        "median (size)": ([3, 5], lambda p: lambda im: ndimage.median_filter(im, size=(p, p, 1), mode="reflect")),
        "bilateral (σ colour)": (
            [0.05, 0.1, 0.2, 0.4],
            lambda p: lambda im: denoise_bilateral(im, sigma_color=p, sigma_spatial=1.5, channel_axis=-1),
        ),
        "total variation (weight)": (
            [0.03, 0.06, 0.1, 0.2],
            lambda p: lambda im: denoise_tv_chambolle(im, weight=p, channel_axis=-1),
        ),
        "non-local means (h/σ)": (
            [0.6, 0.8, 1.0, 1.2],
            lambda p: (
                lambda im: denoise_nl_means(
                    im, h=p * sigma, sigma=sigma, patch_size=3, patch_distance=5, fast_mode=True, channel_axis=-1
                )
            ),
        ),
    }


def bm3d_image(im: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D at the true noise level: ``bm3d_rgb`` for colour (HWC), ``bm3d`` for one channel."""
    import bm3d

    if im.shape[-1] == 3:
        return bm3d.bm3d_rgb(im, sigma_psd=sigma)
    return np.asarray(bm3d.bm3d(im[..., 0], sigma_psd=sigma))[..., None]


SLOW = {"bilateral (σ colour)", "non-local means (h/σ)"}


def tune(method, grid: list, noisy: np.ndarray, clean: np.ndarray) -> tuple[object, float]:
    """The grid value with the best mean PSNR on the tune set."""
    best = max(grid, key=lambda p: per_image_scores(per_image(method(p), noisy), clean)[0].mean())
    return best, float(per_image_scores(per_image(method(best), noisy), clean)[0].mean())


def row(
    task: str,
    setting: str,
    method: str,
    n: int,
    psnr: np.ndarray,
    ssim: np.ndarray,
    ae_psnr: np.ndarray | None,
    **extra,
) -> dict:
    return {
        "task": task,
        "setting": setting,
        "method": method,
        "n": n,
        "psnr": round(float(psnr[:n].mean()), 3),
        "ssim": round(float(ssim[:n].mean()), 4),
        "ae_psnr_same_items": None if ae_psnr is None else round(float(ae_psnr[:n].mean()), 3),
        **extra,
    }


def train(name: str, npy: Path, out: Path, args: argparse.Namespace) -> tuple[object, dict]:
    conv = "model.architecture=dense" not in TASKS[name]
    extra = (
        [f"model.nodes_per_layer=[{args.channels}]", f"model.residual={args.residual}"]
        if conv
        else [f"model.refine_channels={args.refine}"]
    )
    cfg = build_config(
        overrides=[
            *UNET,
            f"training.lr_schedule={args.lr_schedule}",
            *TASKS[name],
            *extra,
            *(["training.max_epochs=2"] if args.tiny else []),
            f"corpus.source={npy}",
            f"training.max_time_minutes={args.minutes}",
            f"run_dir={out / 'runs' / name}",
        ]
    )
    t0 = time.perf_counter()
    result = train_model(cfg)
    seconds = time.perf_counter() - t0
    held = result.metrics.get("restoration") or {}  # the task measured on the validation items (training data)
    return model_for(RunLayout.at(cfg.run_dir)), {
        "model": name,
        "train_s": round(seconds, 1),
        "epochs": result.metrics["epochs"],
        "steps": result.metrics["steps"],
        "n_train": result.metrics["n_train"],
        "val_loss": round(result.metrics["best_val_loss"], 6),
        "val_psnr_input": round(held["input"]["psnr"], 3) if held else None,
        "val_psnr": round(held["autoencoder"]["psnr"], 3) if held else None,
        "model_id": result.model_id,
    }


def colourfulness(x: np.ndarray) -> np.ndarray:
    """Hasler & Süsstrunk's colourfulness of each image (0 for gray; higher is more colourful). (N, 3, H, W) -> (N,)"""
    r, g, b = (x[:, i] * 255 for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    std = np.sqrt(rg.reshape(len(x), -1).std(1) ** 2 + yb.reshape(len(x), -1).std(1) ** 2)
    mean = np.sqrt(rg.reshape(len(x), -1).mean(1) ** 2 + yb.reshape(len(x), -1).mean(1) ** 2)
    return std + 0.3 * mean


def colour_transfer(gray: np.ndarray, train: np.ndarray, k: int = 8) -> np.ndarray:
    """Classical colorization: keep each image's luma, take the mean chroma (YCbCr) of its k nearest
    training images in luma (exact L2, faiss). (N, 3, H, W) gray -> (N, 3, H, W)"""
    import faiss

    def ycc(x: np.ndarray) -> np.ndarray:
        m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
        return np.einsum("ij,njhw->nihw", m, x)

    ty = ycc(train)
    q = np.ascontiguousarray(gray[:, 0].reshape(len(gray), -1), np.float32)
    db = np.ascontiguousarray(ty[:, 0].reshape(len(train), -1), np.float32)
    _, idx = faiss.knn(q, db, k)
    chroma = ty[idx, 1:].mean(1)  # (N, 2, H, W)
    y = gray[:, :1]
    inv = np.linalg.inv(
        np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
    )
    return np.clip(np.einsum("ij,njhw->nihw", inv, np.concatenate([y, chroma], 1)), 0, 1).astype(np.float32)


def image_bytes(img: np.ndarray, fmt: str, quality: int) -> bytes:
    a = np.clip(np.rint(img.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def payload_size(data: bytes, fmt: str) -> int:
    """Bytes of the coded image without container and headers: JPEG from after the start-of-scan
    segment to before the end marker (quantisation and Huffman tables are header); WebP the VP8
    chunk's data less its 10-byte frame header (RIFF/chunk headers are header)."""
    if fmt == "JPEG":
        sos = data.find(b"\xff\xda")
        seg = int.from_bytes(data[sos + 2 : sos + 4], "big")
        return len(data) - (sos + 2 + seg) - 2
    vp8 = data.find(b"VP8 ")
    return int.from_bytes(data[vp8 + 4 : vp8 + 8], "little") - 10


def codec_at(x: np.ndarray, fmt: str, budget: int, headers: bool) -> tuple[np.ndarray, float, int]:
    """Each image at the highest quality whose size (with or without headers) fits ``budget`` bytes;
    images that do not fit even at quality 1 are counted as misses. -> decoded, mean bytes, misses"""
    out, sizes, misses = np.empty_like(x), [], 0
    for i, img in enumerate(x):
        lo, hi, best = 1, 95, None
        while lo <= hi:  # binary search on quality: size grows with quality
            q = (lo + hi) // 2
            data = image_bytes(img, fmt, q)
            size = len(data) if headers else payload_size(data, fmt)
            if size <= budget:
                best, lo = (data, size), q + 1
            else:
                hi = q - 1
        if best is None:
            misses += 1
            data = image_bytes(img, fmt, 1)
            best = (data, len(data) if headers else payload_size(data, fmt))
        dec = np.asarray(Image.open(io.BytesIO(best[0])).convert("RGB"), np.float32) / 255
        out[i] = dec.transpose(2, 0, 1)
        sizes.append(best[1])
    return out, float(np.mean(sizes)), misses


def synthetic(n: int, seed: int) -> np.ndarray:
    """Smooth colour images with a few shapes (the --tiny data). -> (N, 32, 32, 3) uint8"""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = np.empty((n, 32, 32, 3), np.float32)
    for i in range(n):
        a = rng.random((3, 3))
        img = a[:, 0, None, None] * xx + a[:, 1, None, None] * yy + a[:, 2, None, None] * 0.5
        cy, cx, r = rng.integers(8, 24, 2).tolist() + [int(rng.integers(3, 8))]
        img[:, (yy * 31 - cy) ** 2 + (xx * 31 - cx) ** 2 < r * r] = rng.random((3, 1))
        out[i] = np.clip(img, 0, 1).transpose(1, 2, 0)
    return (out * 255).astype(np.uint8)


def images(args: argparse.Namespace, split: str) -> np.ndarray:
    """``x_train`` or ``x_test`` of ``--data`` (or the --tiny synthetic set) as (N, H, W, C) uint8;
    grayscale (MNIST, (N, H, W)) gets its channel axis."""
    if args.tiny:
        return synthetic(400, 0) if split == "x_train" else synthetic(200, 1)
    x = np.load(args.data)[split]
    return x[..., None] if x.ndim == 3 else x


def run(args: argparse.Namespace, x_train_u8: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Every section of ``--only``; ``x_train_u8``: ``images(args, "x_train")``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_test_u8 = images(args, "x_test")
    rng = np.random.default_rng(args.seed)
    test_idx = np.sort(rng.choice(len(x_test_u8), min(args.test, len(x_test_u8)), replace=False))
    x_fit_u8, x_tune_u8 = x_train_u8[: -args.tune], x_train_u8[-args.tune :]
    npy = out / "train.npy"
    np.save(npy, x_fit_u8)  # the autoencoders' corpus: training images minus the tune set
    tune_x = to_chw(x_tune_u8 / 255.0)
    test = to_chw(x_test_u8[test_idx] / 255.0)
    fit_x = to_chw(x_fit_u8 / 255.0)
    n_slow, n_bm3d = min(args.test_slow, len(test)), min(args.test_bm3d, len(test))
    rows: list[dict] = []
    models: list[dict] = []
    pictures = out / "pictures"
    cols = np.arange(min(8, len(test)))  # the grids' fixed items: the first test images of the seeded subset
    t_start = time.perf_counter()

    def checkpoint(done: list[dict]) -> None:
        """The table so far, after each task: a run stopped later keeps what it measured."""
        write_results(out, done, markdown(done, models, args, command_line(args), time.perf_counter() - t_start))

    # ---- denoising
    if "denoise" in args.only:
        for name, kinds in (("denoise_gaussian", DENOISE[:3]), ("denoise_salt_pepper", DENOISE[3:])):
            model, info = train(name, npy, out, args)
            models.append(info)
            for setting, kind, level in kinds:
                noisy_tune = add_noise(tune_x, kind, level, np.random.default_rng([args.seed, 1]))
                noisy = add_noise(test, kind, level, np.random.default_rng([args.seed, 2]))
                ae = reconstruct(model, noisy)
                ae_p, ae_s = per_image_scores(ae, test)
                p, s = per_image_scores(noisy, test)
                rows.append(row("denoise", setting, "noisy input", len(test), p, s, ae_p))
                pics = [noisy[cols], ae[cols]]
                for method, (grid, fn) in classical_denoisers(kind, level).items():
                    n = n_slow if method in SLOW else len(test)
                    t0 = time.perf_counter()
                    best, tune_psnr = tune(
                        fn,
                        grid,
                        noisy_tune[: args.tune_slow if method in SLOW else None],
                        tune_x[: args.tune_slow if method in SLOW else None],
                    )
                    den = per_image(fn(best), noisy[:n])
                    p, s = per_image_scores(den, test[:n])
                    rows.append(
                        row(
                            "denoise",
                            setting,
                            method,
                            n,
                            p,
                            s,
                            ae_p,
                            param=best,
                            tune_psnr=round(tune_psnr, 3),
                            seconds=round(time.perf_counter() - t0, 1),
                        )
                    )
                    if method.startswith("non-local"):
                        pics.append(den[cols])
                if kind == "gaussian" and level in args.bm3d_sigmas:
                    t0 = time.perf_counter()
                    den = per_image(lambda im: bm3d_image(im, level / 255.0), noisy[:n_bm3d])  # noqa: B023 (called here)
                    p, s = per_image_scores(den, test[:n_bm3d])
                    rows.append(
                        row(
                            "denoise",
                            setting,
                            "BM3D (true σ)",
                            n_bm3d,
                            p,
                            s,
                            ae_p,
                            seconds=round(time.perf_counter() - t0, 1),
                        )
                    )
                rows.append(row("denoise", setting, "autoencoder (U-Net)", len(test), ae_p, ae_s, ae_p, model=name))
                atomic_write_bytes(pictures / f"denoise_{kind}_{level:g}.png", grid_png([*pics, test[cols]], scale=2))

        checkpoint(rows)
    # ---- colorization
    if "colorize" in args.only:
        model, info = train("colorize", npy, out, args)
        models.append(info)
        gray = grayscale(test)
        ae = reconstruct(model, gray)
        ae_p, ae_s = per_image_scores(ae, test)
        transfer = colour_transfer(gray, fit_x)
        for method, pred in (
            ("grayscale as RGB", gray),
            ("colour transfer from 8 nearest training images in luma", transfer),
            ("autoencoder (U-Net)", ae),
        ):
            p, s = per_image_scores(pred, test)
            rows.append(
                row(
                    "colorize",
                    "gray -> RGB",
                    method,
                    len(test),
                    p,
                    s,
                    ae_p,
                    colourfulness=round(float(colourfulness(pred).mean()), 2),
                )
            )
        rows.append(
            row(
                "colorize",
                "gray -> RGB",
                "(truth)",
                len(test),
                np.full(1, np.nan),
                np.full(1, np.nan),
                None,
                colourfulness=round(float(colourfulness(test).mean()), 2),
            )
        )
        atomic_write_bytes(
            pictures / "colorize.png", grid_png([gray[cols], ae[cols], transfer[cols], test[cols]], scale=2)
        )

        checkpoint(rows)
    # ---- watermark removal
    if "watermark" in args.only:
        model, info = train("remove_watermark", npy, out, args)
        models.append(info)
        marked, masks = watermarked(test, WatermarkConfig(), np.random.default_rng([args.seed, 3]))
        ae = reconstruct(model, marked)
        ae_p, ae_s = per_image_scores(ae, test)
        p, s = per_image_scores(marked, test)
        rows.append(row("remove_watermark", "synthetic text/logo", "watermarked input", len(test), p, s, ae_p))
        telea = inpaint(marked, masks, "telea")
        p, s = per_image_scores(telea, test)
        rows.append(
            row(
                "remove_watermark",
                "synthetic text/logo",
                "OpenCV Telea inpainting given the mask",
                len(test),
                p,
                s,
                ae_p,
            )
        )
        bih = inpaint(marked[:n_slow], masks[:n_slow], "biharmonic")
        p, s = per_image_scores(bih, test[:n_slow])
        rows.append(
            row(
                "remove_watermark",
                "synthetic text/logo",
                "biharmonic inpainting given the mask (scikit-image)",
                n_slow,
                p,
                s,
                ae_p,
            )
        )
        rows.append(
            row("remove_watermark", "synthetic text/logo", "autoencoder (U-Net), blind", len(test), ae_p, ae_s, ae_p)
        )
        atomic_write_bytes(
            pictures / "remove_watermark.png", grid_png([marked[cols], ae[cols], telea[cols], test[cols]], scale=2)
        )

        checkpoint(rows)
    # ---- compression: rate-distortion
    comp_rows: list[dict] = []
    if "compress" in args.only:
        comp_rows = []
        flat_fit = fit_x.reshape(len(fit_x), -1)
        for name, code_size in (("compress_64", 64), ("compress_256", 256)):
            model, info = train(name, npy, out, args)
            models.append(info)
            from aepipe.codes.encode import codes_of

            codes = codes_of(model, test)
            pca = fit_pca(fit_x, code_size, args.seed)
            pca_codes = pca.transform(test.reshape(len(test), -1)).astype(np.float32)
            for dtype in ("float16", "int8"):
                # int8 scales from the training codes (a decoder ships them once), applied to the test codes
                q_ref = quantise(codes_of(model, fit_x[:2000]), dtype)
                ae_q = _requantise(codes, q_ref)
                rec = decode_codes(model, ae_q)
                p, s = per_image_scores(rec, test)
                nbytes = code_size * (2 if dtype == "float16" else 1)
                comp_rows.append(
                    {
                        "method": f"AE (dense, PCA start) code {code_size}, {dtype}",
                        "bytes_no_headers": nbytes,
                        "bytes_with_headers": nbytes,
                        "psnr": round(float(p.mean()), 3),
                        "ssim": round(float(s.mean()), 4),
                        "misses": 0,
                        "n": len(test),
                    }
                )
                pq_ref = quantise(pca.transform(flat_fit[:2000]).astype(np.float32), dtype)
                rec = (
                    np.clip(pca.inverse_transform(_requantise(pca_codes, pq_ref)), 0, 1)
                    .reshape(test.shape)
                    .astype(np.float32)
                )
                p, s = per_image_scores(rec, test)
                comp_rows.append(
                    {
                        "method": f"PCA {code_size}, {dtype}",
                        "bytes_no_headers": nbytes,
                        "bytes_with_headers": nbytes,
                        "psnr": round(float(p.mean()), 3),
                        "ssim": round(float(s.mean()), 4),
                        "misses": 0,
                        "n": len(test),
                    }
                )
                for fmt in ("JPEG", "WEBP"):
                    for headers in (False, True):
                        dec, mean_bytes, misses = codec_at(test, fmt, nbytes, headers)
                        p, s = per_image_scores(dec, test)
                        key = "bytes_with_headers" if headers else "bytes_no_headers"
                        comp_rows.append(
                            {
                                "method": f"{fmt} ≤ {nbytes} B {'with' if headers else 'without'} headers",
                                key: round(mean_bytes, 1),
                                "psnr": round(float(p.mean()), 3),
                                "ssim": round(float(s.mean()), 4),
                                "misses": misses,
                                "n": len(test),
                            }
                        )
        checkpoint(rows + [{"task": "compress", **r} for r in comp_rows])
    return rows + [{"task": "compress", **r} for r in comp_rows], models


def _requantise(codes: np.ndarray, ref) -> np.ndarray:
    """Quantise ``codes`` with the scales of ``ref`` (int8: clipped to its range), then back."""
    if ref.dtype != "int8":
        return dequantise(quantise(codes, ref.dtype))
    q = np.clip(np.rint((codes - ref.offset) / ref.scale), 0, 255) - 128
    return dequantise(type(ref)(q.astype(np.int8), "int8", ref.offset, ref.scale))


def markdown(rows: list[dict], models: list[dict], args: argparse.Namespace, command: str, seconds: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, {platform.system()} {platform.release()}, torch {torch.__version__}; commit {commit}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; whole run {seconds / 60:.1f} min  ",
        f"Test items: seeded subset of {args.test} (seed {args.seed}); slow methods on its first {args.test_slow}, BM3D on its first {args.test_bm3d}; classical parameters tuned on the last {args.tune} training images (slow ones on {args.tune_slow} of them), never trained on.",
        "",
        "### Models",
        "",
        f"Restoration models: conv U-Nets, 3 encoder layers of {args.channels} channels (mirrored decoder), "
        f"model.residual={args.residual} (auto: the input added to the output, the network learning the "
        "correction). Compression models: dense, 1024-512-256, starting as PCA (model.linear_path: pca; the "
        "start is kept when training does not beat it on the validation items), the input itself as target "
        f"(training.knn_target off), model.refine_channels={args.refine} (a conv correction of the decoded image). All: batch norm, MSE, AdamW "
        f"lr 2e-3 {args.lr_schedule}, batch 64, at most {args.minutes} min wall time (the library's time budget "
        "plans the steps to fit; the best validation checkpoint is kept). Val loss and val PSNR: the library's "
        "5 % validation split of the training images (the task's corruption with a fixed seed, up to 512 items; "
        "gaussian levels drawn from 15/25/50), the measure the recipe was chosen on.",
        "",
        "| model | epochs | steps | train s | n_train | val loss | val PSNR input → AE | model id |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {m['model']} | {m['epochs']} | {m['steps']} | {m['train_s']} | {m['n_train']} | {m['val_loss']} | "
            + (f"{m['val_psnr_input']} → {m['val_psnr']}" if m["val_psnr"] is not None else "")
            + f" | {m['model_id']} |"
            for m in models
        ),
    ]
    restored = [r for r in rows if r["task"] != "compress"]
    compressed = [r for r in rows if r["task"] == "compress"]
    if restored:  # a section only where the run measured something
        lines += [
            "",
            "### Restoration (PSNR dB / SSIM; AE column: the autoencoder on the same n items)",
            "",
            "| task | setting | method | param | n | PSNR | SSIM | AE PSNR, same items | colourfulness |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for r in restored:
        lines.append(
            f"| {r['task']} | {r['setting']} | {r['method']} | {r.get('param', '')} | {r['n']} | {r['psnr']} | {r['ssim']} | {r['ae_psnr_same_items'] if r['ae_psnr_same_items'] is not None else ''} | {r.get('colourfulness', '')} |"
        )
    if compressed:
        lines += [
            "",
            "### Compression: bytes per image vs PSNR (32×32×3 = 3,072 raw bytes)",
            "",
            "| method | bytes, no headers | bytes, with headers | PSNR | SSIM | images over budget at quality 1 |",
            "|---|---|---|---|---|---|",
        ]
    for r in compressed:
        lines.append(
            f"| {r['method']} | {r.get('bytes_no_headers', '')} | {r.get('bytes_with_headers', '')} | {r['psnr']} | {r['ssim']} | {r['misses']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/datasets/cifar10.npz")
    p.add_argument("--out", default="bench-out/restoration")
    p.add_argument("--minutes", type=float, default=2.5, help="training budget per model (wall time)")
    p.add_argument("--test", type=int, default=2000, help="seeded subset of the test images")
    p.add_argument("--test-slow", type=int, default=500, help="of which NL-means, bilateral, biharmonic use the first")
    p.add_argument("--test-bm3d", type=int, default=100, help="of which BM3D uses the first")
    p.add_argument("--bm3d-sigmas", type=float, nargs="*", default=[25.0, 50.0])
    p.add_argument("--tune", type=int, default=200, help="last training images, for the classical parameters only")
    p.add_argument("--tune-slow", type=int, default=50, help="of which the slow methods tune on the first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--channels",
        default="64, 128, 256",
        help="conv channels of the U-Nets' 3 encoder layers (chosen with --train-only on validation images)",
    )
    p.add_argument("--only", default="denoise,colorize,watermark,compress", help="comma-separated sections")
    p.add_argument("--residual", default="auto", choices=["auto", "false"], help="model.residual of the U-Nets")
    p.add_argument("--lr-schedule", default="onecycle", choices=["constant", "onecycle", "cosine"])
    p.add_argument(
        "--refine", type=int, default=32, help="model.refine_channels of the compression models (0: none; 32 chosen)"
    )
    p.add_argument(
        "--train-only",
        metavar="MODEL",
        choices=sorted(TASKS),
        help="train one model and print its validation figures (choosing a recipe; no test image is read)",
    )
    p.add_argument("--tiny", action="store_true", help="synthetic images, tiny models (CI)")
    args = p.parse_args(argv)
    if args.tiny:
        args.minutes, args.test, args.test_slow, args.test_bm3d, args.tune, args.tune_slow = 0.2, 40, 10, 2, 40, 10
        args.channels = "8, 16, 32"
    torch.set_num_threads(args.threads)
    setup_logging(0)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.only = set(args.only.split(","))
    x_train = images(args, "x_train")
    if args.train_only:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "train.npy", x_train[: -args.tune])  # the same training images as a full run
        print(json.dumps(train(args.train_only, out / "train.npy", out, args)[1]))
        return 0
    if x_train.shape[-1] == 1 and args.only - {"denoise"}:
        p.error(
            "grayscale data (MNIST): only --only denoise applies (colorize needs colour; the rest is measured on CIFAR-10)"
        )
    rows, models = run(args, x_train)
    (Path(args.out) / "models.json").write_text(json.dumps(models, indent=2))
    return 0


def command_line(args: argparse.Namespace) -> str:
    return "python -m benchmarks.restoration " + " ".join(args.argv)


if __name__ == "__main__":
    raise SystemExit(main())
