"""The small-crop gap: why a plain SIFT recipe can beat wildreid's one-vs-many local retrieval on small crops.

The plain recipe (`plain_recipe.py`, issue 30's reference row, not a wildreid option): OpenCV SIFT with
nfeatures=512 on the grey crop resized so its longest side is 512 px (cv2.resize, bilinear), mutual nearest
neighbours (plain L2) that pass Lowe's 0.8 ratio in both directions, score = their count, the top 20 re-ranked by
RANSAC homography inliers (5 px, 2,000 iterations). It is compared, leave-one-out on the same crops, with
wildreid's one-vs-many retrieval and with ablations that each change one thing, so the gap is attributed to a
step instead of guessed:

- `one-vs-many`: wildreid as shipped (SIFT 512 kp at 512 px, upscaled; RootSIFT LNBNN votes; top 20 verified by
  MAGSAC 8 px; score = vote share + 0.02 log(1 + inliers));
- `one-vs-many, no upscale`: the same on crops that are only shrunk (`upscale=False`);
- `plain on wildreid features`: the plain recipe's matching on wildreid's own keypoints (isolates extraction);
- `count only` / `plain, no upscale`: the plain recipe without its RANSAC re-rank / on crops not upscaled;
- `one-vs-many shortlist, plain re-rank`: LNBNN's top 20 re-ranked by the plain recipe's count + RANSAC inliers.

    python bench/small_crop_gap.py [--spec lion:train] [--images 0] [--extractor sift|aliked]

Writes bench/results/small_crop_gap_<species>.json (with the commit). Features are cached outside the repository
(~/.cache/wildreid/bench): they derive from the data.
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
from plain_recipe import SETTINGS, plain_counts, plain_sift, reranked  # noqa: E402
from wildreid.matching import LocalFeatureExtractor  # noqa: E402
from wildreid.matching.one_vs_many import OneVsManyMatcher  # noqa: E402
from wildreid.matching.selection import leave_one_out_figures  # noqa: E402

DEFAULT_SPEC = "lion:train"  # a training split: fixes chosen here are never measured on a reported set


def crops_gray(dataset, rows: np.ndarray) -> list[np.ndarray]:
    from wildreid.embedding import undecoded
    from wildreid.embedding.images import iter_crops

    raw = undecoded(dataset).select(rows.tolist())
    return [np.asarray(crop.convert("L")) for _, crop in
            iter_crops(list(raw["image"]), list(raw["bbox"]), [t or 0.0 for t in raw["theta"]])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=DEFAULT_SPEC, help="a training split: fixes are chosen on it")
    parser.add_argument("--images", type=int, default=0, help="first N readable images only (0: all)")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/wildreid/bench"))
    parser.add_argument("--output")
    args = parser.parse_args()
    cache = Path(args.cache_dir)
    figures, seconds = {}, {}

    def record(name: str, scores: np.ndarray, labels: np.ndarray, tick: float) -> None:
        figures[name] = {k: round(100 * v, 1) for k, v in leave_one_out_figures(scores, labels).items()}
        seconds[name] = round(time.perf_counter() - tick, 1)
        print(f"{name:44s} top-1 {figures[name]['top1']:5.1f}  mAP {figures[name]['map']:5.1f}  ({seconds[name]} s)",
              flush=True)

    sets = {}
    for upscale in (True, False):
        dataset, extracted = local_features(args.spec, cache, LocalFeatureExtractor(upscale=upscale), 1)
        keep = slice(None) if args.images <= 0 else slice(0, args.images)
        sets[upscale] = (extracted.features[keep], extracted.identities[keep], extracted.rows[keep])
    features, labels, rows = sets[True]
    sizes = np.array([crop.shape for crop in crops_gray(dataset, rows)])
    print(f"{args.spec}: {len(features)} crops, median {np.median(sizes[:, 1]):.0f} x {np.median(sizes[:, 0]):.0f} px, "
          f"{np.mean([len(f) for f in features]):.0f} keypoints per image (wildreid, upscaled), "
          f"{np.mean([len(f) for f in sets[False][0]]):.0f} without upscaling", flush=True)

    matcher = OneVsManyMatcher()
    config = LocalFeatureExtractor().config
    for upscale, name in ((True, "one-vs-many"), (False, "one-vs-many, no upscale")):
        tick = time.perf_counter()
        feats = sets[upscale][0]
        index = matcher.build_index(feats, {**config, "upscale": upscale})
        scores = matcher.score(feats, feats, index, leave_one_out=True, num_workers=1, progress=False)
        record(name, scores, labels, tick)
        if upscale:
            votes = matcher.votes(feats, index, leave_one_out=True, progress=False)
            share = votes / np.maximum(votes.max(axis=1, keepdims=True), 1e-12)
            np.fill_diagonal(share, -np.inf)
            record("LNBNN votes only", share, labels, time.perf_counter())
            tick = time.perf_counter()
            record("one-vs-many shortlist, plain re-rank", reranked(feats, share), labels, tick)

    tick = time.perf_counter()
    own = [plain_sift(crop) for crop in crops_gray(dataset, rows)]
    counts = plain_counts(own)
    record("plain count only", counts, labels, tick)
    tick = time.perf_counter()
    record("plain recipe", reranked(own, counts), labels, tick)
    tick = time.perf_counter()
    wild_counts = plain_counts(features)
    record("plain recipe on wildreid features", reranked(features, wild_counts), labels, tick)
    tick = time.perf_counter()
    small = [plain_sift(crop, upscale=False) for crop in crops_gray(dataset, rows)]
    record("plain recipe, no upscale", reranked(small, plain_counts(small)), labels, tick)

    species = "-".join(sorted(set(map(str, dataset["species"]))))
    write_report(args.output or Path(__file__).parent / "results" / f"small_crop_gap_{species}.json", "small_crop_gap", {
        "spec": args.spec, "images": len(features), "median_crop_wh": [float(np.median(sizes[:, 1])),
                                                                       float(np.median(sizes[:, 0]))],
        "leave_one_out_percent": figures, "seconds": seconds,
        "plain_recipe": SETTINGS,
    })


if __name__ == "__main__":
    main()
