"""The tables of `identification_accuracy.py`'s results file (main, speed, method choice), apart from the
measuring so that `--tables-only` and the model card rebuild them without touching data or models."""
from __future__ import annotations


def global_input_label(record: dict) -> str:
    model = "ImageNet" if record["fusion_global_model"].startswith("imagenet:") else "trained"
    if not record.get("fusion_global_flip_test"):
        return model
    return f"{model} + flip ({_pair(record['fusion_global_input'])})"


BASELINES = ("ImageNet lite0", "SIFT pairwise")
COLUMNS = ("ImageNet lite0", "trained model", "SIFT pairwise", "one-vs-many local", "union fusion", "auto")


def _pair(entry: dict | None) -> str | None:
    return None if entry is None else f"{100 * entry['top1']:.1f} / {100 * entry['map']:.1f}"


def tables(sets: dict) -> dict:
    """The model card's tables from every set in the results file."""
    main_rows, speed_rows, choice_rows, across_rows = [], [], [], []
    for name, record in sets.items():
        methods = record["methods"]
        across = {label: methods[label].get("across_sightings") for label in COLUMNS if label in methods}
        if any(across.values()):
            answerable = next(entry["n_queries"] for entry in across.values() if entry)
            across_rows.append([name, answerable, *(_pair(across.get(label)) for label in COLUMNS)])
        best = max((methods[label]["top1"] for label in BASELINES if label in methods), default=None)
        auto = methods["auto"]
        main_rows.append([name, record["n_queries"], *(_pair(methods.get(label)) for label in COLUMNS),
                          auto["chosen"], global_input_label(record),
                          None if best is None else round(100 * (auto["top1"] - best), 1),
                          record.get("published_megadescriptor_l384_top1")])
        pairwise, local = methods.get("SIFT pairwise"), methods["one-vs-many local"]
        speed_rows.append([name, record["n_queries"], record["n_gallery"], local["seconds"],
                           None if pairwise is None else pairwise["seconds"],
                           None if pairwise is None else round(pairwise["seconds"] / max(local["seconds"], 1e-9), 1),
                           None if pairwise is None else pairwise["queries_scored"],
                           methods["union fusion"]["seconds"], methods["union fusion"]["fit_seconds"]])
        fit = methods["union fusion"]["fit"]
        flip = record.get("flip_test_validation")
        fitted_on = record["validation"] + (", across sightings" if record.get("fusion_fit_across_sightings") else "")
        choice_rows.append([name, fitted_on,
                            None if flip is None else f"{100 * flip['plain']['map']:.1f} -> {100 * flip['flipped']['map']:.1f}",
                            *(round(100 * fit["validation"][m]["map"], 1) for m in ("global", "local", "fusion")),
                            fit["combiner"], auto["chosen"]])
    return {
        "main": {"columns": ["Set", "Queries", *(f"{label} top-1 / mAP" for label in COLUMNS), "Auto chose",
                             "Fusion's global input", "Auto - best baseline (pp top-1)", "MegaDescriptor-L-384 top-1 (published)"],
                 "rows": main_rows,
                 "caption": "Top-1 % / mAP %. Leave-one-out within the set, or closed-set (test queried against train). "
                            "Baselines: ImageNet lite0 features and pairwise SIFT (on large sets pairwise runs on a "
                            "seeded sample of queries, counted in the speed table; the JSON holds one-vs-many on the "
                            "same sample). Fusion and auto are fitted on the training split of the species only, with the "
                            "global input named in their column. On the closed-set rows the trained model is "
                            "configs/cpu_closed_set.yaml's, trained on the gallery (the closed-set train part), never "
                            "on the test queries; fusion keeps ImageNet there, since the only images to fit it on "
                            "are that model's training images."},
        "speed": {"columns": ["Set", "Queries", "Gallery", "One-vs-many local (s)", "Pairwise SIFT (s)",
                              "Speed-up", "Pairwise queries timed", "Union fusion (s)", "Fusion fit (s)"],
                  "rows": speed_rows,
                  "caption": "Scoring time after feature extraction (shared by all local methods), 1 process, 1 thread; "
                             "pairwise time extrapolated from the timed queries to all."},
        "choice": {"columns": ["Set", "Fitted on", "Global mAP plain -> flipped", "Validation mAP global", "local",
                               "fusion", "Combiner", "Auto chose"],
                   "rows": choice_rows,
                   "caption": "What fusion and auto learned, per species, from the training split alone; the global "
                              "input is embedded with test-time flip where that raised its validation mAP. \"Across "
                              "sightings\": fitted and chosen without pairs of photos from one encounter "
                              "(--fit-across-sightings)."},
        "across_sightings": {
            "columns": ["Set", "Queries (re-sighted)", *(f"{label} top-1 / mAP" for label in COLUMNS)],
            "rows": across_rows,
            "caption": "The sets that record encounters (nyala's sightings: both flanks of one animal at one moment), "
                       "scored without the photos of a query's own encounter: matching a new sighting to known "
                       "individuals. Queries whose individual has no photo from another encounter are not counted. A dash: not "
                       "measured that way (pairwise SIFT scores a sample of queries; a row carried from an earlier run)."},
    }


def print_table(sets: dict) -> None:
    table = tables(sets)["main"]
    print("\n| " + " | ".join(table["columns"]) + " |")
    for row in table["rows"]:
        print("| " + " | ".join("–" if cell is None else str(cell) for cell in row) + " |")
