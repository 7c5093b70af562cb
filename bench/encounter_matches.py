"""How much of nyala's identification is re-sighting, and how much is the other photo of the same sighting?

Most nyala sightings hold two photos taken moments apart, one per flank, against the same background
(`124_leftphoto.jpg`, `124_rightphoto.jpg`; hub_datasets gives them one `encounter`). The standard protocols
count finding that other photo as a correct identification. This bench scores nyala the way
`bench/identification_accuracy.py` does (ImageNet lite0 global, one-vs-many local, union fusion with
ImageNet lite0 as its global input, fitted on a training split), then measures each score matrix twice:
as published (same-encounter photos count) and with them excluded (`evaluate.py --exclude_same_encounter`:
only re-sightings count, and queries whose individual has no other sighting are skipped). It also counts
how many correct top-1 answers were the query's own sighting.

    python bench/encounter_matches.py

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

from wildreid.evaluation.method_protocols import image_set  # noqa: E402
from wildreid.evaluation.metrics import retrieval_metrics_from_similarity  # noqa: E402
from wildreid.matching import LocalFeatureExtractor  # noqa: E402
from wildreid.matching.methods import FusionMethod, GlobalMethod, OneVsManyLocalMethod  # noqa: E402
from wildreid.matching.one_vs_many import OneVsManyMatcher  # noqa: E402
from wildreid.matching.union_fusion import UnionFusion  # noqa: E402
from wildreid.provenance import code_version  # noqa: E402

SETS = {name: accuracy.SETS[name] for name in ("nyala-test", "nyala-closed")}
RESULTS = Path(__file__).parent / "results" / "encounter_matches.json"


def figures(scores: np.ndarray, queries, gallery) -> dict:
    """Top-1 / mAP as published and without same-encounter photos, and the correct top-1 answers that
    were the query's own sighting."""
    reference = queries if gallery is None else gallery
    loo = gallery is None
    labels = {"query_labels": queries.identities, "gallery_labels": None if loo else gallery.identities,
              "leave_one_out": loo}
    plain = retrieval_metrics_from_similarity(scores, **labels)
    strict = retrieval_metrics_from_similarity(scores, **labels, query_groups=queries.encounters,
                                               gallery_groups=reference.encounters)
    ranked = np.array(scores, dtype=np.float64)
    if loo:
        np.fill_diagonal(ranked, -np.inf)
    best = ranked.argmax(axis=1)
    right = reference.identities[best] == queries.identities
    same_sighting = right & (reference.encounters[best] == queries.encounters)
    return {"top1": plain["top1"], "map": plain["map"], "n_queries": plain["n_queries"],
            "cross_encounter_top1": strict["top1"], "cross_encounter_map": strict["map"],
            "cross_encounter_queries": strict["n_queries"], "cross_encounter_skipped": strict["n_skipped"],
            "correct_top1": int(right.sum()), "correct_top1_same_encounter": int(same_sighting.sum())}


def run_set(name: str, cache: Path, extractor: LocalFeatureExtractor, shortlist: int) -> dict:
    query_spec, gallery_spec, validation_spec = SETS[name]
    parts = {}
    for spec in dict.fromkeys(s for s in (query_spec, gallery_spec, validation_spec) if s):
        dataset, local = accuracy.local_features(spec, cache, extractor, 1)
        parts[spec] = image_set(dataset, accuracy.embeddings(accuracy.IMAGENET, spec, dataset, cache), local,
                                extractor.config)
    queries, gallery = parts[query_spec], parts[gallery_spec] if gallery_spec else None
    if gallery is not None:
        queries = queries.part(np.isin(queries.identities, list(set(gallery.identities))))
    record = {"queries": query_spec, "gallery": gallery_spec, "validation": validation_spec,
              "global_model": accuracy.IMAGENET, "local_features": extractor.config, "methods": {}}
    fusion = FusionMethod(UnionFusion(shortlist=shortlist))
    methods = {"ImageNet lite0": GlobalMethod(), "one-vs-many local": OneVsManyLocalMethod(OneVsManyMatcher(shortlist=shortlist)),
               "union fusion": fusion}
    for label, method in methods.items():
        tick = time.perf_counter()
        if method is fusion:
            method.fit(parts[validation_spec])
        entry = figures(method.scores(queries, gallery), queries, gallery)
        entry["seconds"] = round(time.perf_counter() - tick, 1)
        record["methods"][label] = entry
        print(f"  {name:13s} {label:18s} top-1 {100 * entry['top1']:5.1f}  without same-encounter "
              f"{100 * entry['cross_encounter_top1']:5.1f}  ({entry['correct_top1_same_encounter']} of "
              f"{entry['correct_top1']} correct answers were the same sighting)", flush=True)
    return record


def table(sets: dict) -> dict:
    rows = []
    for name, record in sets.items():
        for label, entry in record["methods"].items():
            rows.append([name, label, round(100 * entry["top1"], 1), round(100 * entry["map"], 1),
                         f"{entry['correct_top1_same_encounter']} of {entry['correct_top1']}",
                         round(100 * entry["cross_encounter_top1"], 1), round(100 * entry["cross_encounter_map"], 1),
                         entry["cross_encounter_queries"]])
    return {"columns": ["Set", "Method", "Top-1 %", "mAP %", "Correct top-1 that were the same sighting",
                        "Top-1 % without same-encounter", "mAP % without same-encounter", "Queries (re-sighted)"],
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--shortlist", type=int, default=20)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/wildreid/bench"))
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    version, started = code_version(), time.perf_counter()
    extractor = LocalFeatureExtractor()
    sets = {}
    for name in args.sets:
        print(f"[{name}]", flush=True)
        sets[name] = run_set(name, cache, extractor, args.shortlist)
    result = {"benchmark": "encounter_matches", **version, "command": "python bench/encounter_matches.py",
              "seconds": round(time.perf_counter() - started), "table": table(sets), "sets": sets}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
