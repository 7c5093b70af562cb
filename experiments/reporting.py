"""How the experiments show their results: markdown tables on stdout and the per-species PNG panels (the
results JSON themselves are written by `common.ExperimentLog`)."""

from __future__ import annotations

from pathlib import Path


def species_panels(n: int):
    """One figure with `n` side-by-side top-1 panels (one per species) for the experiments' PNG plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
    for ax in axes[0]:
        ax.set_xlabel("training images per identity")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 (%)")
    return fig, axes[0]


def save_panels(fig, path: Path, legend_size: int = 8) -> None:
    import matplotlib.pyplot as plt

    fig.axes[0].legend(fontsize=legend_size)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 1)


def print_table(table: dict, title: str = "") -> None:
    """The table as markdown on stdout (the same cells the model card shows)."""
    if title:
        print(f"\n## {title}")
    print("| " + " | ".join(table["columns"]) + " |")
    print("|" + "|".join("---" for _ in table["columns"]) + "|")
    for row in table["rows"]:
        print("| " + " | ".join("–" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v)) for v in row) + " |")
    if table.get("caption"):
        print(f"\n{table['caption']}")
