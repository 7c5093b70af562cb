"""LNBNN voting with each query's descriptors searched alone vs searched in batches of queries, in one run.

One-vs-many local retrieval finds the k+1 nearest gallery descriptors of every query descriptor (faiss). A query
has a few hundred descriptors; faiss's exact search works through the gallery in BLAS blocks, and with so few rows
per call most of its time goes to per-block overhead, so `OneVsManyMatcher.votes` searches the descriptors of
consecutive queries together (`search_rows` per call). This bench times both on a real training split,
leave-one-out (as `wildreid calibrate` and the fusion fit vote), checks that the votes agree, and writes
bench/results/lnbnn_voting_speed.json (with the git commit).

    python bench/lnbnn_voting_speed.py [--spec lion:train] [--images 300]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's wildreid, not another install

from bench_common import limit_threads, write_report  # noqa: E402

limit_threads()

import numpy as np  # noqa: E402

from feature_cache import local_features  # noqa: E402
from wildreid.matching import LocalFeatureExtractor  # noqa: E402
from wildreid.matching.one_vs_many import OneVsManyMatcher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="lion:train", help="a training split (never an evaluated set)")
    parser.add_argument("--images", type=int, default=300, help="its first N readable images, voted leave-one-out")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/wildreid/bench"))
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "lnbnn_voting_speed.json"))
    args = parser.parse_args()
    extractor = LocalFeatureExtractor()
    _, extracted = local_features(args.spec, Path(args.cache_dir), extractor, 1)
    features = extracted.features[: args.images]
    index = OneVsManyMatcher().build_index(features, extractor.config)
    batched_rows = OneVsManyMatcher().search_rows
    votes, seconds = {}, {}
    # 1 row per call: each query's descriptors in their own faiss call (any query closes its batch).
    for label, rows in (("each query alone", 1), (f"batches of {batched_rows} rows", batched_rows)):
        matcher = OneVsManyMatcher(search_rows=rows)
        tick = time.perf_counter()
        votes[label] = matcher.votes(features, index, leave_one_out=True, progress=False)
        seconds[label] = round(time.perf_counter() - tick, 2)
        print(f"{label:24s} {seconds[label]:8.2f} s", flush=True)
    alone, batched = votes.values()
    ratio = seconds["each query alone"] / seconds[f"batches of {batched_rows} rows"]
    print(f"batched search is {ratio:.1f}x faster")
    write_report(args.output, "lnbnn_voting_speed", {
        "spec": args.spec, "images": len(features), "indexed_descriptors": len(index), "index": index.config["index"],
        "seconds": seconds, "speedup": round(ratio, 2),
        "max_abs_vote_difference": float(np.abs(alone - batched).max()),
        "same_best_voted_image": float(np.mean(alone.argmax(axis=1) == batched.argmax(axis=1))),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "hardware_label": f"{os.cpu_count()} CPU cores, 1 thread",
    })


if __name__ == "__main__":
    main()
