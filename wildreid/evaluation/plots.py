"""Figures a user looks at after an evaluation: CMC curves per species and a query/top-k match grid."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont, ImageOps

GRID_PADDING = 4  # coloured frame around each thumbnail: green = right identity, red = wrong
CAPTION_HEIGHT = 28
_QUERY_COLOUR = (90, 90, 90)
_CORRECT_COLOUR = (30, 160, 60)
_WRONG_COLOUR = (210, 40, 40)

Match = tuple[Any, str, float, bool]  # (image, identity label, score, is the right identity)


def figure_paths(results_path: str | Path) -> tuple[Path, Path]:
    """Where the figures of a results JSON go: ``<stem>_cmc.png`` and ``<stem>_matches.png`` beside it."""
    results_path = Path(results_path)
    return (
        results_path.with_name(f"{results_path.stem}_cmc.png"),
        results_path.with_name(f"{results_path.stem}_matches.png"),
    )


def plot_cmc_curves(curves: Mapping[str, Any], output_path: str | Path, *, title: str = "CMC") -> Path:
    """One CMC curve per group (e.g. species), percent against rank, saved as PNG.

    ``curves`` maps a name to its CMC list (fractions) or to a metrics dict holding ``"cmc"``.
    """
    if not curves:
        raise ValueError("no CMC curves to plot")
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name in sorted(curves):
        value = curves[name]
        cmc = np.asarray(value["cmc"] if isinstance(value, Mapping) else value, dtype=float)
        if cmc.ndim != 1 or len(cmc) == 0:
            raise ValueError(f"CMC curve of {name!r} must be a non-empty list of fractions")
        axes.plot(np.arange(1, len(cmc) + 1), 100 * cmc, marker="o", markersize=3, label=name)
    axes.set_xlabel("rank")
    axes.set_ylabel("queries matched within rank (%)")
    axes.set_ylim(0, 102)  # a curve at 100 % stays visible above the frame
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_path, format="png")
    return output_path


def _as_pil(image: Any, where: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        if image.dtype == np.uint8:
            return Image.fromarray(image).convert("RGB")
        if image.dtype.kind == "f" and image.size and 0.0 <= image.min() and image.max() <= 1.0:
            return Image.fromarray((image * 255).round().astype(np.uint8)).convert("RGB")
    raise TypeError(
        f"{where}: expected a PIL image, a uint8 (H, W[, C]) array or a float array in [0, 1], got "
        f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
    )


def _draw_cell(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    image: Image.Image,
    x: int,
    y: int,
    thumb_size: int,
    colour: tuple,
    caption: str,
    font: Any,
) -> None:
    draw.rectangle([x, y, x + thumb_size + 2 * GRID_PADDING - 1, y + thumb_size + 2 * GRID_PADDING - 1], fill=colour)
    thumbnail = ImageOps.pad(image, (thumb_size, thumb_size), color=(255, 255, 255))
    canvas.paste(thumbnail, (x + GRID_PADDING, y + GRID_PADDING))
    text_width = thumb_size + 2 * GRID_PADDING
    # Shorten the caption until it fits under the thumbnail.
    while len(caption) > 3 and draw.textlength(caption, font=font) > text_width:
        caption = caption[:-4] + "..."
    draw.text((x, y + thumb_size + 2 * GRID_PADDING + 2), caption, fill=(0, 0, 0), font=font)


def plot_match_grid(
    rows: Sequence[tuple[Any, Sequence[Match]]],
    output_path: str | Path,
    *,
    query_captions: Sequence[str] | None = None,
    thumb_size: int = 128,
) -> Path:
    """A PNG grid: one row per query, the query then its ranked matches.

    ``rows`` holds ``(query image, [(match image, label, score, correct), ...])``; images are PIL
    images or arrays (load them with the model's image loader first). Each match is framed green
    when it has the query's identity, red when not, and captioned with its label and score.
    """
    if not rows:
        raise ValueError("no queries to draw")
    if query_captions is not None and len(query_captions) != len(rows):
        raise ValueError(f"{len(query_captions)} query captions for {len(rows)} queries")
    n_columns = 1 + max(len(matches) for _, matches in rows)
    cell_width = thumb_size + 2 * GRID_PADDING
    cell_height = cell_width + CAPTION_HEIGHT
    canvas = Image.new("RGB", (n_columns * cell_width, len(rows) * cell_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for row, (query, matches) in enumerate(rows):
        y = row * cell_height
        caption = "query" if query_captions is None else f"query: {query_captions[row]}"
        _draw_cell(canvas, draw, _as_pil(query, f"row {row} query"), 0, y, thumb_size, _QUERY_COLOUR, caption, font)
        for column, (image, label, score, correct) in enumerate(matches, start=1):
            colour = _CORRECT_COLOUR if correct else _WRONG_COLOUR
            pil = _as_pil(image, f"row {row} match {column}")
            _draw_cell(canvas, draw, pil, column * cell_width, y, thumb_size, colour, f"{label} {score:.3f}", font)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(output_path, format="PNG")
    return output_path
