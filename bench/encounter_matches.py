"""How much of nyala's identification is re-sighting, and how much is the other photo of the same sighting?

Most nyala sightings hold two photos taken moments apart, one per flank, against the same background
(`124_leftphoto.jpg`, `124_rightphoto.jpg`; hub_datasets gives them one `encounter`). The standard protocols
count finding that other photo as a correct identification. This bench scores nyala the way
`bench/identification_accuracy.py` does (ImageNet lite0 global, one-vs-many local, union fusion with
ImageNet lite0 as its global input, fitted on a training split), then measures each score matrix twice:
as published (same-encounter photos count) and with them excluded (`evaluate.py --exclude_same_encounter`:
only re-sightings count, and queries whose individual has no other sighting are skipped). It also counts
how many correct top-1 answers were the query's own sighting.

The shared background is also a lever: `center_box` (a dataset-spec parameter) crops every photo to its
central part. Which fraction is chosen on the training split alone (`nyala[max_identities=100]:train`,
leave-one-out, by the mean of global and local mAP without same-encounter matches, the figure an ecologist
matching a new sighting gets), then the evaluated sets are scored again with it.

    python bench/encounter_matches.py --center-boxes 1 0.8 0.6 0.4

Writes bench/results/encounter_matches.json (with the git commit). No trained model is needed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import identification_accuracy as accuracy  # noqa: E402  (sets the threads, puts this checkout first)
from bench_common import measured_by  # noqa: E402
from feature_cache import boxed, embeddings, local_features  # noqa: E402

from wildreid.evaluation.method_protocols import image_set  # noqa: E402
from wildreid.matching import LocalFeatureExtractor  # noqa: E402
from wildreid.matching.methods import FusionMethod, GlobalMethod, OneVsManyLocalMethod  # noqa: E402
from wildreid.matching.one_vs_many import OneVsManyMatcher  # noqa: E402
from wildreid.matching.union_fusion import UnionFusion  # noqa: E402

SETS = {name: accuracy.SETS[name] for name in ("nyala-test", "nyala-closed")}
TRAINING_SPLIT = accuracy.SETS["nyala-test"][2]  # where the center_box fraction is chosen
RESULTS = Path(__file__).parent / "results" / "encounter_matches.json"


def figures(scores: np.ndarray, queries, gallery) -> dict:
    """Top-1 / mAP as published and without same-encounter photos, and the correct top-1 answers that
    were the query's own sighting."""
    reference = queries if gallery is None else gallery
    entry = accuracy.measure(scores, queries, gallery)
    strict = entry.pop("across_sightings")
    ranked = np.array(scores, dtype=np.float64)
    if gallery is None:
        np.fill_diagonal(ranked, -np.inf)
    best = ranked.argmax(axis=1)
    right = reference.identities[best] == queries.identities
    same_sighting = right & (reference.encounters[best] == queries.encounters)
    return {**entry, "cross_encounter_top1": strict["top1"], "cross_encounter_map": strict["map"],
            "cross_encounter_queries": strict["n_queries"], "cross_encounter_skipped": strict["n_skipped"],
            "correct_top1": int(right.sum()), "correct_top1_same_encounter": int(same_sighting.sum())}


def load(spec: str, cache: Path, extractor: LocalFeatureExtractor):
    dataset, local = local_features(spec, cache, extractor, 1)
    return image_set(dataset, embeddings(accuracy.IMAGENET, spec, dataset, cache), local, extractor.config)


def sweep(fractions: list[float], cache: Path, extractor: LocalFeatureExtractor, shortlist: int) -> dict:
    """Global and one-vs-many local, leave-one-out on the training split, per center_box fraction."""
    results = {}
    for fraction in fractions:
        images = load(boxed(TRAINING_SPLIT, fraction), cache, extractor)
        methods = {"ImageNet lite0": GlobalMethod(),
                   "one-vs-many local": OneVsManyLocalMethod(OneVsManyMatcher(shortlist=shortlist))}
        results[str(fraction)] = {label: figures(method.scores(images, None), images, None)
                                  for label, method in methods.items()}
        print(f"  center_box {fraction}: " + ", ".join(
            f"{label} {100 * entry['cross_encounter_map']:.1f} mAP without same-encounter"
            for label, entry in results[str(fraction)].items()), flush=True)
    return results


def choose(sweep_results: dict) -> float:
    """The fraction with the best mean of global and local mAP without same-encounter matches."""
    return float(max(sweep_results, key=lambda fraction: np.mean(
        [entry["cross_encounter_map"] for entry in sweep_results[fraction].values()])))


def run_set(name: str, cache: Path, extractor: LocalFeatureExtractor, shortlist: int, fraction: float = 1,
            fit_across_sightings: bool = False) -> dict:
    query_spec, gallery_spec, validation_spec = (boxed(spec, fraction) for spec in SETS[name])
    parts = {spec: load(spec, cache, extractor)
             for spec in dict.fromkeys(s for s in (query_spec, gallery_spec, validation_spec) if s)}
    queries, gallery = parts[query_spec], parts[gallery_spec] if gallery_spec else None
    if gallery is not None:
        queries = queries.part(np.isin(queries.identities, list(set(gallery.identities))))
    record = {"queries": query_spec, "gallery": gallery_spec, "validation": validation_spec, "center_box": fraction,
              "global_model": accuracy.IMAGENET, "local_features": extractor.config, "methods": {}}
    fusion = FusionMethod(UnionFusion(shortlist=shortlist))
    methods = {"ImageNet lite0": GlobalMethod(), "one-vs-many local": OneVsManyLocalMethod(OneVsManyMatcher(shortlist=shortlist)),
               "union fusion": fusion}
    for label, method in methods.items():
        tick = time.perf_counter()
        if method is fusion:
            record["fusion_fit"] = {"exclude_same_encounter": fit_across_sightings}
            method.fit(parts[validation_spec], exclude_same_encounter=fit_across_sightings)
        entry = figures(method.scores(queries, gallery), queries, gallery)
        entry["seconds"] = round(time.perf_counter() - tick, 1)
        record["methods"][label] = entry
        print(f"  {name:13s} {fraction:<4} {label:18s} top-1 {100 * entry['top1']:5.1f}  without same-encounter "
              f"{100 * entry['cross_encounter_top1']:5.1f}  ({entry['correct_top1_same_encounter']} of "
              f"{entry['correct_top1']} correct answers were the same sighting)", flush=True)
    return record


def table(runs: list[dict]) -> dict:
    rows = []
    for record in runs:
        for label, entry in record["methods"].items():
            rows.append([record["set"], record["center_box"], label, round(100 * entry["top1"], 1),
                         round(100 * entry["map"], 1), f"{entry['correct_top1_same_encounter']} of {entry['correct_top1']}",
                         round(100 * entry["cross_encounter_top1"], 1), round(100 * entry["cross_encounter_map"], 1),
                         entry["cross_encounter_queries"]])
    return {"columns": ["Set", "center_box", "Method", "Top-1 %", "mAP %", "Correct top-1 that were the same sighting",
                        "Top-1 % without same-encounter", "mAP % without same-encounter", "Queries (re-sighted)"],
            "rows": rows}


def sweep_table(sweep_results: dict) -> dict:
    rows = [[float(fraction), label, round(100 * entry["top1"], 1), round(100 * entry["map"], 1),
             round(100 * entry["cross_encounter_top1"], 1), round(100 * entry["cross_encounter_map"], 1)]
            for fraction, methods in sweep_results.items() for label, entry in methods.items()]
    return {"columns": ["center_box", "Method", "Top-1 %", "mAP %", "Top-1 % without same-encounter",
                        "mAP % without same-encounter"], "rows": rows,
            "caption": f"{TRAINING_SPLIT}, leave-one-out: where the fraction is chosen."}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--shortlist", type=int, default=20)
    parser.add_argument("--center-boxes", nargs="+", type=float, default=[1.0],
                        help="center_box fractions to try on the training split (1: the whole photo); the sets are "
                             "scored with the whole photo and with the fraction chosen there")
    parser.add_argument("--fit-across-sightings", action="store_true",
                        help="fit fusion without same-encounter pairs (evaluate.py --exclude_same_encounter does)")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/wildreid/bench"))
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if any(not 0 < fraction <= 1 for fraction in args.center_boxes):
        parser.error("--center-boxes are fractions in (0, 1]")
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    extractor = LocalFeatureExtractor()
    result = {"benchmark": "encounter_matches",
              "command": " ".join(["python bench/encounter_matches.py", *sys.argv[1:]])}
    fractions = [1.0]
    if args.center_boxes != [1.0]:
        print(f"[{TRAINING_SPLIT}]", flush=True)
        result["center_box_sweep"] = sweep(sorted(set(args.center_boxes), reverse=True), cache, extractor, args.shortlist)
        result["center_box_chosen"] = choose(result["center_box_sweep"])
        result["sweep_table"] = sweep_table(result["center_box_sweep"])
        fractions = sorted({1.0, result["center_box_chosen"]}, reverse=True)
    runs = []
    for name in args.sets:
        for fraction in fractions:
            print(f"[{name}, center_box {fraction}]", flush=True)
            runs.append({"set": name, **run_set(name, cache, extractor, args.shortlist, fraction,
                                                args.fit_across_sightings)})
    result.update({**measured_by(), "seconds": round(time.perf_counter() - started), "table": table(runs),
                   "runs": runs})
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
