"""What storing ALIKED descriptors as float16 costs, and ALIKED vs SIFT one-vs-many on a slice of real crops.

ALIKED's descriptors are stored float16 (256 bytes per 128-d keypoint, SIFT's uint8 take 128). This bench extracts
ALIKED once keeping float32, then scores one-vs-many retrieval leave-one-out (LNBNN votes, top 20 verified by
MAGSAC) with the float32 descriptors and with the same descriptors rounded to float16, and reports top-1 / mAP of
both, how many queries keep the same best image, and the largest vote difference. SIFT one-vs-many on the same
crops is the reference row.

    python bench/aliked_descriptor_precision.py [--spec lion:train] [--images 60] [--variant n16] [--side 512]

Writes bench/results/aliked_descriptor_precision.json (with the commit). One thread; on a shared machine the
seconds are upper bounds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's wildreid, not another install

from bench_common import limit_threads, write_report  # noqa: E402

limit_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hub_datasets.specs import load_specs  # noqa: E402
from wildreid.embedding import undecoded  # noqa: E402
from wildreid.embedding.images import iter_crops  # noqa: E402
from wildreid.matching import LocalFeatureExtractor, LocalFeatures, keypoints  # noqa: E402
from wildreid.matching import descriptor_index, local_matcher  # noqa: E402
from wildreid.matching.one_vs_many import OneVsManyMatcher  # noqa: E402
from wildreid.matching.selection import leave_one_out_figures  # noqa: E402

DEFAULT_SPEC = "lion:train"  # a training split: what is chosen here is never measured on a reported set


def allow_float32_descriptors() -> None:
    """For the float32 arm only: let the shared code take float32 ALIKED descriptors (it compares float32
    unit vectors either way; only the storage check refuses them)."""
    original = keypoints.check_descriptors

    def check(descriptors, method, what, variant=None):
        if method == "aliked" and descriptors.dtype == np.float32:
            descriptors = descriptors.astype(np.float16)
        original(descriptors, method, what, variant)

    for module in (descriptor_index, local_matcher):  # the modules that check what they index or match
        module.check_descriptors = check


def _extract_float32(extractor: LocalFeatureExtractor, crop) -> LocalFeatures:
    """`extractor.extract` with its descriptors left float32 instead of being stored as float16."""
    extractor.descriptor_dtype = np.float32
    try:
        return extractor.extract(crop)
    finally:
        extractor.descriptor_dtype = np.float16


def scored(features, config, labels):
    matcher = OneVsManyMatcher()
    index = matcher.build_index(features, config)
    votes = matcher.votes(features, index, leave_one_out=True, progress=False)
    scores = matcher.verify(votes, features, features, leave_one_out=True, num_workers=1, progress=False,
                            method=config["method"])
    return scores, votes, {k: round(100 * v, 1) for k, v in leave_one_out_figures(scores, labels).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=DEFAULT_SPEC, help="a training split: the storage choice is made here")
    parser.add_argument("--images", type=int, default=60, help="the first N images of the spec (0: all)")
    parser.add_argument("--variant", default="n16")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--max_keypoints", type=int, default=512)
    parser.add_argument("--scales", type=float, nargs="+", help="ALIKED pyramid levels (default: the extractor's)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "aliked_descriptor_precision.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_specs([args.spec])
    if args.images:
        dataset = dataset.select(range(min(args.images, len(dataset))))
    raw = undecoded(dataset)
    crops = [crop for _, crop in iter_crops(list(raw["image"]), list(raw["bbox"]), [t or 0.0 for t in raw["theta"]])]
    labels = np.asarray(dataset["identity"], dtype=object)[: len(crops)]
    aliked = LocalFeatureExtractor("aliked", max_keypoints=args.max_keypoints, max_side=args.side,
                                   variant=args.variant, scales=args.scales).load()
    tick = time.perf_counter()
    full = []
    for crop in crops:  # float32 kept: the extractor's own steps without the float16 rounding
        full.append(_extract_float32(aliked, crop))
    aliked_seconds = (time.perf_counter() - tick) / len(crops)
    half = [LocalFeatures(f.keypoints, f.descriptors.astype(np.float16)) for f in full]
    allow_float32_descriptors()
    scores32, votes32, fig32 = scored(full, aliked.config, labels)
    scores16, votes16, fig16 = scored(half, aliked.config, labels)
    sift = LocalFeatureExtractor(max_keypoints=args.max_keypoints, max_side=args.side)
    tick = time.perf_counter()
    sift_features = [sift.extract(crop) for crop in crops]
    sift_seconds = (time.perf_counter() - tick) / len(crops)
    _, _, fig_sift = scored(sift_features, sift.config, labels)
    same_best = float(np.mean(scores32.argmax(axis=1) == scores16.argmax(axis=1)))
    rows = {"aliked float32": fig32, "aliked float16 (stored)": fig16, "sift": fig_sift}
    for name, figures in rows.items():
        print(f"{name:26s} top-1 {figures['top1']:5.1f}  mAP {figures['map']:5.1f}")
    print(f"same best image float16 vs float32: {100 * same_best:.1f} %; max vote difference "
          f"{np.abs(votes32 - votes16).max():.2e}; extraction {aliked_seconds:.2f} s/image ALIKED, "
          f"{sift_seconds:.3f} SIFT")
    write_report(args.output, "aliked_descriptor_precision", {
        "spec": args.spec, "images": len(crops), "variant": args.variant, "side": args.side,
        "extractor": aliked.config,
        "max_keypoints": args.max_keypoints, "leave_one_out_percent": rows,
        "same_best_image_float16_vs_float32": round(same_best, 4),
        "max_abs_vote_difference": float(np.abs(votes32 - votes16).max()),
        "descriptor_bytes_per_keypoint": {"aliked float16": 2 * full[0].descriptors.shape[1], "sift uint8": 128},
        "seconds_per_image": {"aliked": round(aliked_seconds, 3), "sift": round(sift_seconds, 4)},
        "note": "one thread on a machine shared with other jobs: seconds are upper bounds",
    })


if __name__ == "__main__":
    main()
