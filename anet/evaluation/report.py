"""Files people look at: CMC curves, retrieval grids, G / G_reid activation maps, results tables.

Everything is drawn with matplotlib's Agg canvas (no pyplot, no display, no global backend switch)
and written atomically into an output directory; each function returns the Path(s) it wrote::

    from anet.evaluation import report
    report.plot_cmc({"test": result.cmc}, out_dir)
    report.results_table(results, out_dir)            # results.md + results.csv
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from anet.io import atomic_write_bytes, atomic_write_text

GREEN, RED = np.array([0, 170, 0], np.uint8), np.array([220, 0, 0], np.uint8)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_cmc(curves: Mapping[str, np.ndarray], out_dir: str | Path, name: str = "cmc.png") -> Path:
    """One CMC line per test set (rank 1..len(curve), y in [0, 1])."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for test_set, cmc in curves.items():
        cmc = np.asarray(cmc, dtype=np.float64)
        ax.plot(np.arange(1, len(cmc) + 1), cmc, label=str(test_set))
    ax.set(xlabel="rank", ylabel="matching rate (CMC)", ylim=(0, 1.01), title="CMC")
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower right")
    return _save(fig, Path(out_dir) / name)


def _bordered(image: np.ndarray, color: np.ndarray | None, width: int = 4) -> np.ndarray:
    out = np.array(image, dtype=np.uint8, copy=True)  # H x W x 3
    if color is not None:
        out[:width], out[-width:], out[:, :width], out[:, -width:] = color, color, color, color
    return out


def retrieval_grid(
    q_images: np.ndarray,
    g_images: np.ndarray,
    ranked: np.ndarray,
    q_ids: np.ndarray,
    g_ids: np.ndarray,
    out_dir: str | Path,
    name: str = "retrieval.png",
) -> Path:
    """A row per query: the query, then its top-k gallery images, green border = same id, red = not.

    ``q_images`` uint8 Q x H x W x 3, ``g_images`` uint8 G x H x W x 3, ``ranked`` int Q x k gallery
    indices (best first).
    """
    ranked = np.asarray(ranked)
    n_q, k = ranked.shape
    fig = Figure(figsize=(1.3 * (k + 1), 1.5 * max(n_q, 1)))
    axes = fig.subplots(max(n_q, 1), k + 1, squeeze=False)
    for i in range(n_q):
        axes[i, 0].imshow(_bordered(q_images[i], None))
        axes[i, 0].set_title("query", fontsize=8)
        for j, g in enumerate(ranked[i]):
            right = g_ids[g] == q_ids[i]
            axes[i, j + 1].imshow(_bordered(g_images[g], GREEN if right else RED))
            axes[i, j + 1].set_title(f"#{j + 1}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return _save(fig, Path(out_dir) / name)


def activation_heat(act: torch.Tensor, size: tuple[int, int], reduce: str = "sq_mean") -> np.ndarray:
    """B x C x h x w activations -> B x H x W in [0, 1]: channel-wise mean of squares (or L2 norm),
    bilinearly upsampled, min-max normalised per image."""
    act = act.detach().float().cpu()
    heat = act.pow(2).mean(1) if reduce == "sq_mean" else act.norm(dim=1)  # B x h x w
    heat = torch.nn.functional.interpolate(heat[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = heat.amin(dim=(1, 2), keepdim=True)
    hi = heat.amax(dim=(1, 2), keepdim=True)
    return ((heat - lo) / (hi - lo).clamp_min(1e-12)).numpy()


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Jet-coloured ``heat`` (H x W in [0, 1]) blended over a uint8 H x W x 3 image."""
    colored = colormaps["jet"](heat)[..., :3] * 255.0  # H x W x 3
    return ((1 - alpha) * image.astype(np.float64) + alpha * colored).clip(0, 255).astype(np.uint8)


def activation_maps(
    images: np.ndarray,
    maps: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    name: str = "activation_maps.png",
    keys: tuple[str, ...] = ("g_map", "g_reid_map"),
    reduce: str = "sq_mean",
) -> Path:
    """Paper Fig. 3 style: per image, the image and the G / G_reid activation overlays.

    ``images`` uint8 B x H x W x 3; ``maps`` as returned by ``model(x, return_maps=True).maps``.
    """
    keys = tuple(k for k in keys if k in maps)
    n, (h, w) = len(images), images.shape[1:3]
    heats = {k: activation_heat(maps[k], (h, w), reduce) for k in keys}
    fig = Figure(figsize=(1.6 * (len(keys) + 1), 1.8 * max(n, 1)))
    axes = fig.subplots(max(n, 1), len(keys) + 1, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title("image", fontsize=8)
        for j, k in enumerate(keys):
            axes[i, j + 1].imshow(overlay(images[i], heats[k][i]))
            axes[i, j + 1].set_title(k, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return _save(fig, Path(out_dir) / name)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def results_table(
    results: Mapping[str, Mapping[str, float]], out_dir: str | Path, stem: str = "results"
) -> list[Path]:
    """``{test_set: {metric: value}}`` -> ``<stem>.md`` and ``<stem>.csv`` (one row per test set)."""
    metrics: list[str] = []
    for values in results.values():
        metrics += [m for m in values if m not in metrics]
    md = ["| test set | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    md += [f"| {ts} | " + " | ".join(_cell(v.get(m, "")) for m in metrics) + " |" for ts, v in results.items()]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["test_set", *metrics])
    writer.writerows([ts, *(v.get(m, "") for m in metrics)] for ts, v in results.items())
    out = Path(out_dir)
    return [atomic_write_text(out / f"{stem}.md", "\n".join(md) + "\n"), atomic_write_text(out / f"{stem}.csv", buf.getvalue())]
