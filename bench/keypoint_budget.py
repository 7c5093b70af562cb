"""How many SIFT keypoints per image should one-vs-many local retrieval index? Measured on training splits only.

    python bench/keypoint_budget.py [--budgets 512 1024 2048] [--output bench/results/keypoint_budget.json]

Per species, the one-vs-many local method (LNBNN votes, the best-voted images verified) scores each training-split
image leave-one-out against the rest of its split, once per keypoint budget (`LocalFeatureExtractor.max_keypoints`):
top-1 / mAP, keypoints per image and scoring seconds. The evaluated sets of `identification_accuracy.py` are never
read, so a budget chosen here is chosen without their queries. Local features are cached with that script's cache.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid, not another install

from bench_common import limit_threads, write_report  # noqa: E402

limit_threads()

import numpy as np  # noqa: E402

from feature_cache import local_features  # noqa: E402
from identification_accuracy import measure  # noqa: E402
from wildreid.matching import LocalFeatureExtractor  # noqa: E402
from wildreid.evaluation.method_protocols import image_set  # noqa: E402
from wildreid.matching.methods import OneVsManyLocalMethod  # noqa: E402
from wildreid.matching.one_vs_many import OneVsManyMatcher  # noqa: E402

# The training splits identification_accuracy.py fits fusion on (dog and nyala cut to 100 individuals there too).
SPLITS = {
    "lion": "lion:train",
    "nyala": "nyala[max_identities=100]:train",
    "dog": "dog[max_identities=100]:train",
    "pig": "pig:train",
}


def measure_budget(spec: str, budget: int, cache: Path, workers: int, shortlist: int) -> dict:
    extractor = LocalFeatureExtractor(max_keypoints=budget)
    dataset, extracted = local_features(spec, cache, extractor, workers)
    images = image_set(dataset, None, extracted, extractor.config)
    tick = time.perf_counter()
    scores = OneVsManyLocalMethod(OneVsManyMatcher(shortlist=shortlist), num_workers=workers).scores(images)
    seconds = time.perf_counter() - tick
    figures = measure(scores, images, None)
    return {**figures, "keypoints_per_image": round(float(np.mean([len(f) for f in images.local])), 1),
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--species", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument("--shortlist", type=int, default=20, help="best-voted images verified per query")
    parser.add_argument("--workers", type=int, default=1, help="processes for feature extraction and verification")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/wildreid/bench"))
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "keypoint_budget.json"))
    args = parser.parse_args()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    rows = []
    for species in args.species:
        for budget in args.budgets:
            entry = measure_budget(SPLITS[species], budget, cache, args.workers, args.shortlist)
            results.setdefault(species, {"split": SPLITS[species], "budgets": {}})["budgets"][str(budget)] = entry
            rows.append([species, budget, entry["keypoints_per_image"], round(100 * entry["top1"], 1),
                         round(100 * entry["map"], 1), entry["seconds"], entry["n_queries"]])
            print(f"{species:6s} {budget:5d} keypoints (mean {entry['keypoints_per_image']:6.1f}): top-1 "
                  f"{100 * entry['top1']:5.1f}  mAP {100 * entry['map']:5.1f}  {entry['seconds']:6.1f} s", flush=True)
    table = {"columns": ["Species", "Keypoint budget", "Keypoints per image", "Top-1 %", "mAP %", "Scoring (s)",
                         "Queries"], "rows": rows,
             "caption": "One-vs-many local retrieval, leave-one-out within each species' training split "
                        "(never the evaluated sets), by SIFT keypoint budget; 1 process, 1 thread."}
    write_report(args.output, "keypoint_budget", {"table": table, "species": results,
                                                  "hardware_label": f"{os.cpu_count()} CPU cores, 1 thread"})


if __name__ == "__main__":
    main()
