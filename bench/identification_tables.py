"""The tables of `identification_accuracy.py`'s results file (main, speed, method choice, across sightings, and
SIFT against ALIKED and the plain recipe), apart from the measuring so that `--tables-only` and the model card
rebuild them without touching data or models."""
from __future__ import annotations


def global_input_label(record: dict) -> str:
    model = "ImageNet" if record["fusion_global_model"].startswith("imagenet:") else "trained"
    if not record.get("fusion_global_flip_test"):
        return model
    return f"{model} + flip ({_pair(record['fusion_global_input'])})"


BASELINES = ("ImageNet lite0", "SIFT pairwise")
COLUMNS = ("ImageNet lite0", "trained model", "SIFT pairwise", "one-vs-many local", "union fusion", "auto")
# The local-feature tables put each SIFT method beside its ALIKED counterpart; the plain recipe is the reference.
LOCAL = "auto (SIFT or ALIKED)"
LOCAL_COLUMNS = {"one-vs-many local": "one-vs-many SIFT", "one-vs-many ALIKED": "one-vs-many ALIKED",
                 "union fusion": "fusion SIFT", "union fusion ALIKED": "fusion ALIKED", "auto": "auto SIFT",
                 LOCAL: LOCAL, "plain recipe": "plain recipe"}


def _pair(entry: dict | None) -> str | None:
    return None if entry is None else f"{100 * entry['top1']:.1f} / {100 * entry['map']:.1f}"


def _seconds(entry: dict | None, key: str = "seconds") -> float | None:
    return None if entry is None else entry.get(key)


def _across(methods: dict, labels) -> tuple[int | None, list]:
    """Re-sighted queries and each method's across-sightings pair (None: the set records no encounters)."""
    across = {label: (methods.get(label) or {}).get("across_sightings") for label in labels}
    if not any(across.values()):
        return None, []
    answerable = next(entry["n_queries"] for entry in across.values() if entry)
    return answerable, [_pair(across[label]) for label in labels]


def local_feature_tables(sets: dict) -> dict:
    """SIFT against ALIKED and the plain recipe: accuracy, across sightings, auto's choice and time."""
    rows, across_rows, choice_rows, speed_rows = [], [], [], []
    for name, record in sets.items():
        methods = record["methods"]
        auto = methods.get(LOCAL, {})
        rows.append([name, record["n_queries"], *(_pair(methods.get(label)) for label in LOCAL_COLUMNS),
                     auto.get("chosen")])
        answerable, pairs = _across(methods, LOCAL_COLUMNS)
        if answerable is not None:
            across_rows.append([name, answerable, *pairs])
        fusions = methods["union fusion"], methods.get("union fusion ALIKED")
        sift, aliked = (None if fusion is None else fusion["fit"]["validation"] for fusion in fusions)
        choice_rows.append([name, *(None if fit is None else round(100 * fit[method]["map"], 1) for fit, method in
                                    ((sift, "global"), (sift, "local"), (sift, "fusion"), (aliked, "local"),
                                     (aliked, "fusion"))), auto.get("chosen")])
        plain = methods.get("plain recipe")
        speed_rows.append([name, record["n_queries"], record["n_gallery"], methods["one-vs-many local"]["seconds"],
                           _seconds(methods.get("one-vs-many ALIKED")), *(_seconds(f) for f in fusions),
                           *(_seconds(f, "fit_seconds") for f in fusions), _seconds(plain),
                           None if plain is None else plain["queries_scored"]])
    pairs = [f"{label} top-1 / mAP" for label in LOCAL_COLUMNS.values()]
    plain_note = ("The plain recipe: OpenCV SIFT (512 features, longest side 512 px), mutual nearest neighbours "
                  "passing Lowe's 0.8 ratio both ways, their count, the top 20 re-ranked by RANSAC homography "
                  "inliers (5 px, 2,000 iterations); it matches every pair, so it runs on pairwise SIFT's seeded "
                  "sample of queries where a set is large, its time extrapolated to all.")
    return {
        "local_features": {
            "columns": ["Set", "Queries", *pairs, f"{LOCAL} chose"], "rows": rows,
            "caption": "Top-1 % / mAP %, as in the main table, with ALIKED (n16, 512 keypoints at 512 px unless the "
                       "JSON's aliked_local_features says otherwise) in place of SIFT. Auto (SIFT or ALIKED) chooses "
                       "among global, local and fusion with either extractor by validation mAP on the training split, "
                       "as auto does among SIFT's. " + plain_note},
        "local_features_across_sightings": {
            "columns": ["Set", "Queries (re-sighted)", *pairs], "rows": across_rows,
            "caption": "The local-feature columns without the photos of a query's own encounter, as in the "
                       "across-sightings table; the plain recipe on its sample of queries."},
        "local_features_choice": {
            "columns": ["Set", "Validation mAP global", "local SIFT", "fusion SIFT", "local ALIKED", "fusion ALIKED",
                        f"{LOCAL} chose"], "rows": choice_rows,
            "caption": "What auto (SIFT or ALIKED) chose by: validation mAP on the training split alone, fitted as in "
                       "the choice table. Columns cheapest first (ALIKED extracts ~5x slower than SIFT, more than "
                       "fusion adds); a tie keeps the cheaper."},
        "local_features_speed": {
            "columns": ["Set", "Queries", "Gallery", "One-vs-many SIFT (s)", "One-vs-many ALIKED (s)",
                        "Fusion SIFT (s)", "Fusion ALIKED (s)", "Fusion fit SIFT (s)", "Fusion fit ALIKED (s)",
                        "Plain recipe (s)", "Plain recipe queries timed"], "rows": speed_rows,
            "caption": "Scoring time after feature extraction, 1 thread per process, as in the speed table; "
                       "extracting ALIKED-n16 features costs about 0.49 s per image on one thread, SIFT's 0.07 s "
                       "(bench/results/aliked_speed.json)."},
    }


def tables(sets: dict) -> dict:
    """The model card's tables from every set in the results file."""
    main_rows, speed_rows, choice_rows, across_rows = [], [], [], []
    for name, record in sets.items():
        methods = record["methods"]
        answerable, pairs = _across(methods, COLUMNS)
        if answerable is not None:
            across_rows.append([name, answerable, *pairs])
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
                       "individuals. Queries whose individual has no photo from another encounter are not counted. Pairwise "
                       "SIFT: on its sample of queries where a set is large. A dash: not measured that way (a row "
                       "carried from a run before this table counted it)."},
        **local_feature_tables(sets),
    }


def print_table(sets: dict) -> None:
    built = tables(sets)
    for table in (built["main"], built["local_features"]):
        print("\n| " + " | ".join(table["columns"]) + " |")
        for row in table["rows"]:
            print("| " + " | ".join("–" if cell is None else str(cell) for cell in row) + " |")
