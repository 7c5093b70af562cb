"""ALIKED at one scale or as a pyramid (`LocalFeatureExtractor(scales=...)`), against SIFT, on training splits.

ALIKED detects at one scale; SIFT searches scale space. Where photos of one individual are crops at other zooms
(lion: a Nose crop of the Portrait) a single-scale detector misses the matches a pyramid finds. This bench scores
one-vs-many local retrieval (the `local` method) leave-one-out on the first N images of each training split, with
SIFT, single-scale ALIKED and the pyramid (same keypoint budget, shared across levels), so the per-species choice
is made on training data, never on the reported sets.

    python bench/aliked_scales.py [--specs lion:train nyala:train] [--images 60 80] [--scales 1,0.5,0.25]

Writes bench/results/aliked_scales.json (with the commit). One thread; the seconds are upper bounds on a shared
machine.
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
from wildreid.matching import LocalFeatureExtractor  # noqa: E402
from wildreid.matching.methods import ImageSet, build_method  # noqa: E402
from wildreid.matching.selection import leave_one_out_figures  # noqa: E402

DEFAULT_SPECS = ["lion:train", "nyala:train"]  # training splits: the per-species choice is made here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", nargs="+", default=DEFAULT_SPECS, help="training splits")
    parser.add_argument("--images", nargs="+", type=int, default=[60, 80], help="first N images of each spec")
    parser.add_argument("--scales", default="1,0.5,0.25", help="the pyramid's levels")
    parser.add_argument("--variant", default="n16")
    parser.add_argument("--max_keypoints", type=int, default=512)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "aliked_scales.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyramid = tuple(float(value) for value in args.scales.split(","))
    extractors = {
        "sift": LocalFeatureExtractor("sift", args.max_keypoints, args.side),
        f"aliked-{args.variant} single scale": LocalFeatureExtractor("aliked", args.max_keypoints, args.side,
                                                                     variant=args.variant, scales=(1.0,)),
        f"aliked-{args.variant} scales {args.scales}": LocalFeatureExtractor("aliked", args.max_keypoints, args.side,
                                                                             variant=args.variant, scales=pyramid),
    }
    results = {}
    for spec, count in zip(args.specs, args.images):
        dataset = load_specs([spec])
        dataset = dataset.select(range(min(count, len(dataset))))
        raw = undecoded(dataset)
        crops = [crop for _, crop in iter_crops(list(raw["image"]), list(raw["bbox"]),
                                                [t or 0.0 for t in raw["theta"]])]
        labels = np.asarray(dataset["identity"], dtype=object)[: len(crops)]
        results[spec] = {"images": len(crops)}
        for name, extractor in extractors.items():
            tick = time.perf_counter()
            features = [extractor.extract(crop) for crop in crops]
            seconds = (time.perf_counter() - tick) / len(crops)
            images = ImageSet(labels, labels, local=features, extractor_config=extractor.config)
            figures = leave_one_out_figures(build_method("local", num_workers=1).scores(images), labels)
            results[spec][name] = {"top1": round(100 * figures["top1"], 1), "map": round(100 * figures["map"], 1),
                                   "seconds_per_image": round(seconds, 3),
                                   "keypoints": round(float(np.mean([len(f) for f in features])), 1)}
            row = results[spec][name]
            print(f"{spec:12s} {name:34s} top-1 {row['top1']:5.1f}  mAP {row['map']:5.1f}  {seconds:.2f} s/image",
                  flush=True)
    write_report(args.output, "aliked_scales", {
        "method": "local (one-vs-many), leave-one-out", "max_keypoints": args.max_keypoints, "side": args.side,
        "extractors": {name: extractor.config for name, extractor in extractors.items()}, "results": results,
        "note": "one thread on a machine shared with other jobs: seconds are upper bounds",
    })


if __name__ == "__main__":
    main()
