"""Pictures for the run report and contact sheets, as PNG bytes: plots with matplotlib (the
object API, no pyplot: no global state, no display backend, safe in a server thread) and
item thumbnails with Pillow."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image


def data_uri(png: bytes) -> str:
    """A PNG as a data: URI, so the HTML page needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_png(img: np.ndarray, size: int = 56) -> bytes:
    """One model input or output image (C, H, W) in [0, 1] as a PNG ``size`` pixels on its longer side
    (nearest-neighbour: small inputs like 8x8 digits stay sharp instead of blurring)."""
    arr = (np.clip(np.asarray(img, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)  # (C, H, W)
    pic = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr[:3].transpose(1, 2, 0), "RGB")
    scale = size / max(pic.size)
    pic = pic.resize((max(1, round(pic.width * scale)), max(1, round(pic.height * scale))), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return buf.getvalue()


def _figure(width: float = 5.0, height: float = 3.2) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def training_curves_png(curves: dict[str, tuple[list[int], list[float]]], ylabel: str = "loss") -> bytes:
    """Loss per epoch, one line per series (e.g. ``{"train_loss": (epochs, values), "val_loss": ...}``)."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, (epochs, values) in curves.items():
        ax.plot(epochs, values, marker="." if len(epochs) < 40 else None, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def code_map_png(xy: np.ndarray, groups: list[str], title: str) -> bytes:
    """A 2-D map of the codes (``xy``: (N, 2)), one colour per group (label or cluster)."""
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    names = sorted(set(groups), key=lambda g: (len(g), g))
    cmap = _colormap(len(names))
    where = np.array(groups, dtype=object)
    for i, name in enumerate(names):
        pts = xy[where == name]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, color=cmap(i), label=name, alpha=0.7, linewidths=0)
    if len(names) <= 20:
        ax.legend(markerscale=2.5, fontsize=7, loc="best", ncols=2 if len(names) > 10 else 1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def _colormap(n: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"].resampled(max(n, 1))


def tuning_curve_png(tuning: list[dict[str, Any]], chosen: dict[str, Any], target: float | None) -> bytes:
    """Recall@10 against latency of each search setting tried, the chosen one marked."""
    fig = _figure()
    ax = fig.add_subplot()
    lat = [t["latency_ms_per_query"] for t in tuning]
    rec = [t["recall_at_10"] for t in tuning]
    ax.plot(lat, rec, marker="o", color="tab:blue")
    for t, x, y in zip(tuning, lat, rec):
        ax.annotate(_params_label(t["params"]), (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points")
    picked = [t for t in tuning if t["params"] == chosen]
    if picked:
        ax.scatter(
            [picked[0]["latency_ms_per_query"]],
            [picked[0]["recall_at_10"]],
            s=140,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2,
            label="operating point",
            zorder=3,
        )
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"recall target {target:g}")
    ax.set_xlabel("latency (ms per query)")
    ax.set_ylabel("recall@10 vs exact search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _params_label(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "exact"
