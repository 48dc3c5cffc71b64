"""Report files: PNGs are real images, tables carry the numbers, nothing half-written is left."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from anet.evaluation import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(n: int, h: int = 32, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and Image.open(path).size[0] > 50


def test_cmc_plot_one_line_per_test_set(tmp_path):
    path = report.plot_cmc({"small": np.linspace(0.5, 1, 50), "large": np.linspace(0.3, 0.9, 50)}, tmp_path)
    assert path == tmp_path / "cmc.png" and _is_png(path)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_retrieval_grid_borders_green_right_red_wrong(tmp_path):
    q, g = _images(2), _images(6, seed=1)
    ranked = np.array([[0, 1, 2], [3, 4, 5]])
    q_ids, g_ids = np.array([7, 8]), np.array([7, 1, 7, 2, 8, 3])
    path = report.retrieval_grid(q, g, ranked, q_ids, g_ids, tmp_path)
    assert _is_png(path)
    assert (report._bordered(g[0], report.GREEN)[0, 0] == report.GREEN).all()
    assert (report._bordered(g[0], report.RED)[-1, 5] == report.RED).all()


def test_activation_heat_normalised_per_image():
    act = torch.rand(3, 16, 4, 3)
    act[1] *= 100  # scale must not matter per image
    for reduce in ("sq_mean", "l2"):
        heat = report.activation_heat(act, (32, 24), reduce)
        assert heat.shape == (3, 32, 24)
        assert np.allclose(heat.min(axis=(1, 2)), 0) and np.allclose(heat.max(axis=(1, 2)), 1)
    hot = torch.zeros(1, 4, 4, 4)
    hot[0, :, 0, 0] = 5.0  # energy in the top-left cell -> heat peaks top-left
    heat = report.activation_heat(hot, (16, 16))[0]
    assert heat[:4, :4].mean() > heat[12:, 12:].mean()


def test_activation_maps_figure(tmp_path):
    imgs = _images(2)
    maps = {"g_map": torch.rand(2, 8, 4, 3), "g_reid_map": torch.rand(2, 8, 4, 3), "f_map": torch.rand(2, 8, 4, 3)}
    path = report.activation_maps(imgs, maps, tmp_path)
    assert _is_png(path)
    blended = report.overlay(imgs[0], np.zeros(imgs.shape[1:3]))
    assert blended.dtype == np.uint8 and blended.shape == imgs[0].shape


def test_results_table_markdown_and_csv(tmp_path):
    results = {"800": {"mAP": 0.5, "R1": 0.75, "R1_std": 0.01}, "1600": {"mAP": float("nan"), "R1": 0.5}}
    md, csv_path = report.results_table(results, tmp_path)
    text = md.read_text()
    assert "| test set | mAP | R1 | R1_std |" in text and "| 800 | 0.5000 | 0.7500 | 0.0100 |" in text
    assert "| 1600 | nan | 0.5000 |  |" in text
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["test_set"] == "800" and float(rows[0]["R1"]) == pytest.approx(0.75)
    assert math.isnan(float(rows[1]["mAP"])) and rows[1]["R1_std"] == ""
