"""Evaluation figures are written as non-empty PNGs of the expected layout."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wildreid.evaluation.plots import (
    CAPTION_HEIGHT,
    GRID_PADDING,
    figure_paths,
    plot_cmc_curves,
    plot_match_grid,
)


def test_cmc_curves_png(tmp_path):
    cmc_path, _ = figure_paths(tmp_path / "results.json")
    assert cmc_path == tmp_path / "results_cmc.png"
    written = plot_cmc_curves({"lion": {"cmc": [0.2, 0.3, 0.5]}, "dog": [0.9, 1.0]}, cmc_path, title="closed set")
    assert written.stat().st_size > 1000
    with Image.open(written) as image:
        assert image.format == "PNG" and image.size == (600, 400)
    with pytest.raises(ValueError, match="'dog'"):
        plot_cmc_curves({"dog": []}, tmp_path / "bad.png")


def test_match_grid_layout_and_colours(tmp_path):
    rng = np.random.default_rng(0)
    query = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    match_image = rng.random((30, 30))  # grey float image in [0, 1]
    rows = [
        (query, [(match_image, "lion/Ayo", 0.91, True)] + [(query, f"lion/x{i}", 0.5, False) for i in range(4)]),
        (np.zeros((20, 20, 3), np.uint8), [(query, "a-very-long-identity-name-that-must-be-shortened", 0.3, False)]),
    ]
    _, grid_path = figure_paths(tmp_path / "results.json")
    written = plot_match_grid(rows, grid_path, query_captions=["lion/Ayo", "lion/Bo"], thumb_size=64)
    cell = 64 + 2 * GRID_PADDING
    with Image.open(written) as image:
        assert image.size == (6 * cell, 2 * (cell + CAPTION_HEIGHT))  # query + top-5 columns, two rows
        pixels = image.convert("RGB")
        assert pixels.getpixel((cell + 1, 1)) == (30, 160, 60)  # first match is right: green frame
        assert pixels.getpixel((2 * cell + 1, 1)) == (210, 40, 40)  # second is wrong: red frame
        assert pixels.getpixel((2 * cell + 1, cell + CAPTION_HEIGHT + 1)) == (255, 255, 255)  # row 2 has 1 match


def test_match_grid_rejects_what_it_cannot_draw(tmp_path):
    with pytest.raises(TypeError, match="row 0 match 1"):
        plot_match_grid([(np.zeros((4, 4), np.uint8), [("image.jpg", "a", 0.1, True)])], tmp_path / "g.png")
    with pytest.raises(ValueError, match="no queries"):
        plot_match_grid([], tmp_path / "g.png")
