"""Render evaluation results JSON into the tables and `model-index` metadata of a model card.

A card marks each generated table with a pair of HTML comments naming the results file, relative to
the card's folder::

    <!-- results:start results/zero_shot.json -->
    (generated: replaced on every render)
    <!-- results:end -->

Everything outside the markers is hand-written prose and is kept. The YAML `model-index` is rebuilt
from all marked files on every render, so no number in the card is typed by hand. Run
``python -m wildreid.cards model_card.md`` to regenerate, ``--check`` to fail when it is stale.

Results files are those written by ``evaluate.py``::

    {"species": {"lion": {"top1": .., "top5": .., "map": .., "n_queries": .., "n_identities": ..,
                          "seen_in_training": true, "baks": .., "baus": .., ...}},
     "mean": {...}, "model": "..", "protocol": "..", "command": "evaluate.py ... (optional)"}

Metric values are fractions in [0, 1]; tables show percentages with one decimal.

Results files of another shape name their renderer in a ``"kind"`` field (:data:`RENDERERS`); without one,
``"tables"`` (or ``"table"``, named ``main``, and ``"NAME_table"``) make a file an experiment. The built-in
``"experiment"`` kind (written by ``experiments/``) carries its own tables, already in display units, and
the provenance of the run; a marker picks one table with a ``#name`` fragment::

    {"kind": "experiment", "command": "python experiments/few_shot.py", "wall_time_s": 1234.5,
     "compute_time_s": 2345.6, "hardware_label": "Intel Xeon, 2 cores, 2 torch threads",
     "tables": {"top1": {"columns": ["Species", "1 img/id", ...], "rows": [["lion", 25.3, null], ...],
                         "caption": "optional text under the table"}}}

    <!-- results:start results/few_shot.json#top1 -->

Experiment tables add nothing to `model-index`, which describes one model's evaluate.py results.
A marker may keep some of an experiment table's columns, by their names, and drop its caption::

    <!-- results:start results/few_shot.json#top1 columns="Species|1 img/id" caption="no" -->

Markdown files without YAML metadata (README.md, the documentation pages in docs/) are pages: their
blocks render the same way, with no `model-index`; results paths are relative to the page, and may reach
up to ``--root`` (``python -m wildreid.cards --root . README.md docs/results/identification.md``).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard

RENDER_COMMAND = "python -m wildreid.cards"
TASK_TYPE = "image-feature-extraction"
TASK_NAME = "Animal re-identification"

_START = re.compile(r"<!-- results:start (?P<path>\S+)(?P<options>(?: \w+=\"[^\"]*\")*) -->")
_OPTION = re.compile(r' (\w+)="([^"]*)"')
_END = "<!-- results:end -->"
_BLOCK = re.compile(r"(?P<start><!-- results:start (?P<path>\S+)(?P<options>(?: \w+=\"[^\"]*\")*) -->)\n.*?"
                    r"(?P<end><!-- results:end -->)", re.DOTALL)

# (JSON key, table header, model-index metric type); fractions rendered as percentages.
_CLOSED_SET_COLUMNS = [("top1", "Top-1", "top1_accuracy"), ("top5", "Top-5", "top5_accuracy"), ("map", "mAP", "map")]
_OPEN_SET_COLUMNS = [
    ("baks", "BAKS", "baks"),
    ("baus", "BAUS", "baus"),
    ("baks_baus_gmean", "√(BAKS·BAUS)", "baks_baus_gmean"),
    ("auroc_new", "AUROC new", "auroc_new_individual"),
]
_REQUIRED_SPECIES_KEYS = ("top1", "top5", "map", "n_queries", "n_identities", "seen_in_training")


class ModelCardError(ValueError):
    """A card or results file that cannot be rendered; the message names the file and the problem."""


# ----------------------------------------------------------------------------- results files


def _resolve_results_path(card_path: Path, relative: str, root: Path | None = None) -> Path:
    """`relative` to the card's folder; never outside `root` (default: that folder)."""
    root = (root or card_path.parent).resolve()
    path = (card_path.resolve().parent / relative.partition("#")[0]).resolve()
    if not path.is_relative_to(root):
        where = "the card's folder " if root == card_path.parent.resolve() else ""
        raise ModelCardError(f"{card_path}: results file {relative!r} lies outside {where}{root}")
    return path


def _check_fraction(value: Any, where: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ModelCardError(f"{where} must be a fraction in [0, 1], got {value!r}")


def load_results(path: Path) -> dict:
    """Read and check one results file; errors name the file and the offending key."""
    if not path.is_file():
        raise ModelCardError(f"results file {path} does not exist (write it with evaluate.py --output {path})")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelCardError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(results, dict) or not isinstance(results.get("species"), dict) or not results["species"]:
        raise ModelCardError(f"{path}: needs a non-empty 'species' object mapping species to metrics")
    for key in ("model", "protocol"):
        if not isinstance(results.get(key), str):
            raise ModelCardError(f"{path}: needs a string '{key}'")
    for species, metrics in results["species"].items():
        where = f"{path}: species[{species!r}]"
        missing = [key for key in _REQUIRED_SPECIES_KEYS if key not in metrics]
        if missing:
            raise ModelCardError(f"{where} lacks {', '.join(missing)}")
        for key, _, _ in _CLOSED_SET_COLUMNS:
            _check_fraction(metrics[key], f"{where}[{key!r}]", optional=False)
        for key, _, _ in _OPEN_SET_COLUMNS:
            _check_fraction(metrics.get(key), f"{where}[{key!r}]", optional=True)
    mean = results.get("mean", {})
    for key, _, _ in _CLOSED_SET_COLUMNS + _OPEN_SET_COLUMNS:
        _check_fraction(mean.get(key), f"{path}: mean[{key!r}]", optional=True)
    return results


# ----------------------------------------------------------------------------- rendering


def _percent(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _count(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _seen(value: Any) -> str:
    return {True: "yes", False: "no (zero-shot)"}.get(value, "–")


def render_results_table(results: Mapping[str, Any], source: str, command: str) -> str:
    """Markdown table of one results file: a row per species, a mean row, and where it came from."""
    species = results["species"]
    columns = list(_CLOSED_SET_COLUMNS)
    if any(metrics.get(key) is not None for metrics in species.values() for key, _, _ in _OPEN_SET_COLUMNS):
        columns += _OPEN_SET_COLUMNS
    header = ["Species", "Seen in training", "Queries", "Individuals"] + [f"{title} (%)" for _, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for name in sorted(species):
        metrics = species[name]
        seen = _seen(metrics["seen_in_training"])
        cells = [name, seen, _count(metrics["n_queries"]), _count(metrics["n_identities"])]
        lines.append("| " + " | ".join(cells + [_percent(metrics.get(key)) for key, _, _ in columns]) + " |")
    mean = results.get("mean")
    if mean:
        cells = ["**Mean**", "", _count(mean.get("n_queries")), _count(mean.get("n_identities"))]
        lines.append("| " + " | ".join(cells + [_percent(mean.get(key)) for key, _, _ in columns]) + " |")
    provenance = f"Protocol `{results['protocol']}`, model `{results['model']}`."
    for name, why in sorted(results.get("left_out", {}).items()):
        provenance += f" Not evaluated: {name} ({why})."
    if results.get("command"):
        provenance += f" Measured with `{results['command']}`."
    provenance += f" Rendered from `{source}` by `{command}`; do not edit by hand."
    return "\n".join(lines) + "\n\n" + provenance + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value).replace("|", "\\|")


def load_experiment_table(path: Path, fragment: str) -> tuple[dict, dict]:
    """The experiment results file at ``path`` and the table its marker names (``fragment``, or the only
    table); errors name the file and what is wrong."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelCardError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(results.get("command"), str):
        raise ModelCardError(f"{path}: an experiment needs the string 'command' that regenerates it")
    tables = results.get("tables") or {("main" if key == "table" else key.removesuffix("_table")): value
                                       for key, value in results.items() if key == "table" or key.endswith("_table")}
    if not isinstance(tables, dict) or not tables:
        raise ModelCardError(f"{path}: an experiment needs a non-empty 'tables' object")
    if not fragment:
        if len(tables) > 1:
            raise ModelCardError(f"{path} has tables {sorted(tables)}; name one in the marker as {path.name}#NAME")
        fragment = next(iter(tables))
    if fragment not in tables:
        raise ModelCardError(f"{path}: no table {fragment!r}; tables: {sorted(tables)}")
    table = tables[fragment] if isinstance(tables[fragment], dict) else {}
    columns, rows = table.get("columns"), table.get("rows")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise ModelCardError(f"{path}: table {fragment!r} needs 'columns', a non-empty list of strings")
    if not isinstance(rows, list):
        raise ModelCardError(f"{path}: table {fragment!r} needs 'rows', a list of lists")
    for number, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ModelCardError(f"{path}: table {fragment!r} row {number} must be a list of {len(columns)} cells, got {row!r}")
        bad = [cell for cell in row if cell is not None and (isinstance(cell, bool) or not isinstance(cell, (str, int, float)))]
        if bad:
            raise ModelCardError(f"{path}: table {fragment!r} row {number} has cells that are not text or numbers: {bad!r}")
    return results, table


def select_columns(table: Mapping[str, Any], names: Sequence[str], where: str) -> dict:
    """`table` with only the columns `names`, in that order; a name the table lacks is an error."""
    missing = [name for name in names if name not in table["columns"]]
    if missing:
        raise ModelCardError(f"{where}: no column {missing}; columns: {table['columns']}")
    keep = [table["columns"].index(name) for name in names]
    return {**table, "columns": list(names), "rows": [[row[i] for i in keep] for row in table["rows"]]}


def render_experiment_table(results: Mapping[str, Any], table: Mapping[str, Any], source: str, command: str) -> str:
    """Markdown of one experiment table: cells as given (floats with one decimal, null as a dash), its
    caption, and the command, wall time and hardware of the run that produced it."""
    columns, rows = table["columns"], table["rows"]
    numeric = [bool(rows) and all(r[i] is None or isinstance(r[i], (int, float)) for r in rows) for i in range(len(columns))]
    lines = ["| " + " | ".join(_cell(column) for column in columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    if table.get("caption"):
        text += "\n" + table["caption"] + "\n"
    provenance = f"Measured with `{results['command'].strip()}`"
    if results.get("wall_time_s") is not None:
        provenance += f" in {results['wall_time_s'] / 60:.1f} min"
        if results.get("compute_time_s") is not None:
            provenance += f" ({results['compute_time_s'] / 60:.1f} min of training and evaluation, reused steps included)"
    if results.get("hardware_label"):
        provenance += f" on {results['hardware_label']}"
    provenance += f". Rendered from `{source}` by `{command}`; do not edit by hand."
    return text + "\n" + provenance + "\n"


def _render_experiment_block(card_path: Path, source: str, command: str, options: Mapping[str, str],
                             root: Path | None = None) -> tuple[str, dict | None]:
    path_text, _, fragment = source.partition("#")
    path = _resolve_results_path(card_path, path_text, root)
    if not path.is_file():
        raise ModelCardError(f"results file {path} does not exist (run the experiment that writes it)")
    results, table = load_experiment_table(path, fragment)
    unknown = sorted(set(options) - {"columns", "caption"})
    if unknown or options.get("caption", "yes") not in ("yes", "no"):
        raise ModelCardError(f"{card_path}: {source!r}: options are columns=\"A|B\" and caption=\"no\", got {dict(options)}")
    if "columns" in options:
        table = select_columns(table, options["columns"].split("|"), f"{card_path}: {source!r}")
    if options.get("caption") == "no":
        table = {key: value for key, value in table.items() if key != "caption"}
    return render_experiment_table(results, table, source, command), None


def _render_evaluation_block(card_path: Path, source: str, command: str, options: Mapping[str, str],
                             root: Path | None = None) -> tuple[str, dict | None]:
    if "#" in source or options:
        raise ModelCardError(f"{card_path}: {source!r}: a #table fragment only applies to experiment results (so do options)")
    results = load_results(_resolve_results_path(card_path, source, root))
    return render_results_table(results, source, command), results


# Renderer of a results file by its "kind" field (absent: evaluate.py's results). A renderer returns the
# markdown and, for a model's own evaluation results, the results that feed `model-index` (else None).
RENDERERS = {"experiment": _render_experiment_block}


def _results_kind(card_path: Path, source: str, root: Path | None = None) -> str | None:
    path = _resolve_results_path(card_path, source, root)
    if not path.is_file():
        return "experiment" if "#" in source else None  # the renderer reports the missing file
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelCardError(f"{path}: not valid JSON ({error})") from None
    kind = results.get("kind") if isinstance(results, dict) else None
    if kind is None and isinstance(results, dict) and any(key == "tables" or key.endswith("table") for key in results):
        kind = "experiment"  # a bench's results with its own table(s) but no kind
    if kind is not None and kind not in RENDERERS:
        raise ModelCardError(f"{path}: unknown results kind {kind!r}; known: {sorted(RENDERERS)}")
    return kind


def _eval_results(results: Mapping[str, Any]) -> list[EvalResult]:
    entries = []
    protocol = results["protocol"]
    for name in sorted(results["species"]):
        metrics = results["species"][name]
        for key, title, metric_type in _CLOSED_SET_COLUMNS + _OPEN_SET_COLUMNS:
            if metrics.get(key) is None:
                continue
            entries.append(
                EvalResult(
                    task_type=TASK_TYPE,
                    task_name=TASK_NAME,
                    dataset_type=metrics.get("dataset", name),
                    dataset_name=name,
                    dataset_config=metrics.get("config"),
                    dataset_split=metrics.get("split"),
                    metric_type=metric_type,
                    metric_name=f"{title} (%), {protocol}",
                    metric_config=protocol,
                    metric_value=round(100 * metrics[key], 1),
                )
            )
    return entries


def _check_markers(card_path: Path, text: str) -> None:
    """Every start marker needs its own end marker before the next start."""
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if _START.search(line):
            if depth:
                raise ModelCardError(f"{card_path}:{number}: results:start inside an unclosed results block")
            depth = 1
        elif _END in line:
            if not depth:
                raise ModelCardError(f"{card_path}:{number}: results:end without a results:start")
            depth = 0
        elif "<!-- results:" in line:
            raise ModelCardError(f"{card_path}:{number}: malformed results marker {line.strip()!r}")
    if depth:
        raise ModelCardError(f"{card_path}: a results:start marker is never closed by {_END}")


def _render_blocks(card_path: Path, text: str, command: str, root: Path | None = None) -> tuple[str, list[dict]]:
    """`text` with every results block regenerated, and the evaluation results that feed `model-index`."""
    _check_markers(card_path, text)
    blocks = list(_BLOCK.finditer(text))
    if not blocks:
        raise ModelCardError(f"{card_path}: no '<!-- results:start FILE -->' ... '{_END}' block to render")
    evaluations, pieces, position = [], [], 0
    for block in blocks:
        source, options = block["path"], dict(_OPTION.findall(block["options"]))
        renderer = RENDERERS.get(_results_kind(card_path, source, root), _render_evaluation_block)
        table, results = renderer(card_path, source, command, options, root)
        if results is not None:
            evaluations.append(results)
        pieces += [text[position : block.start()], block["start"], "\n\n", table, block["end"]]
        position = block.end()
    return "".join(pieces) + text[position:], evaluations


def is_page(path: str | Path) -> bool:
    """A markdown file without YAML metadata (README, documentation pages), rendered without `model-index`."""
    return not Path(path).read_text(encoding="utf-8").startswith("---\n")


def render_page(page_path: str | Path, *, root: str | Path | None = None, command: str | None = None) -> str:
    """The page at ``page_path`` with every results block regenerated (results paths relative to the page,
    never outside ``root``, default the page's folder). Returns the new text; writes nothing."""
    page_path = Path(page_path)
    if not page_path.is_file():
        raise ModelCardError(f"page {page_path} does not exist")
    root = Path(root) if root is not None else None
    command = command or f"{RENDER_COMMAND} {page_path.name}"
    return _render_blocks(page_path, page_path.read_text(encoding="utf-8"), command, root)[0]


def render_model_card(card_path: str | Path, *, command: str | None = None) -> str:
    """The card at ``card_path`` with every results block and the `model-index` regenerated.

    ``command`` is the regeneration command quoted under each table (default:
    ``python -m wildreid.cards <card file name>``). Returns the new text; writes nothing.
    """
    card_path = Path(card_path)
    if not card_path.is_file():
        raise ModelCardError(f"model card {card_path} does not exist")
    card = ModelCard(card_path.read_text(encoding="utf-8"))
    command = command or f"{RENDER_COMMAND} {card_path.name}"
    card.text, evaluations = _render_blocks(card_path, card.text, command)
    eval_results: list[EvalResult] = [entry for results in evaluations for entry in _eval_results(results)]
    model_names = {results["model"] for results in evaluations}
    if len(model_names) > 1:
        raise ModelCardError(f"{card_path}: results files describe different models {sorted(model_names)}")
    card.data.model_name = card.data.model_name or (model_names.pop() if model_names else None)
    card.data.eval_results = eval_results
    card.data.metrics = sorted({result.metric_type for result in eval_results})
    return str(card)


def write_model_card(card_path: str | Path, *, command: str | None = None, check: bool = False,
                     root: str | Path | None = None) -> bool:
    """Regenerate the card (or page: `is_page`) in place; returns whether it changed. ``check`` only reports
    staleness."""
    card_path = Path(card_path)
    if card_path.is_file() and is_page(card_path):
        rendered = render_page(card_path, root=root, command=command)
    else:
        rendered = render_model_card(card_path, command=command)
    changed = rendered != card_path.read_text(encoding="utf-8")
    if changed and not check:
        card_path.write_text(rendered, encoding="utf-8")
    return changed
