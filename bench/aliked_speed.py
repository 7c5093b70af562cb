"""ALIKED extraction time per image on one CPU thread, per variant, image side and keypoint budget.

Times `LocalFeatureExtractor("aliked", ...).extract` (resize, kornia ALIKED forward, top-k keypoints, float16
descriptors) on generated patterned images (no data needed), after one warm-up call per setting, and SIFT at the
same sides for reference. At the first budget, for the ratio, kornia's module as it comes (its SELU gates,
pure-PyTorch deformable convolutions, where `wildreid.matching.aliked` computes SELU from `exp` and runs
torchvision's deformable-convolution kernel) alternates with it image by image. Writes
bench/results/aliked_speed.json (with the git commit, the kornia version and the load average: on a shared machine
the times are upper bounds, and the ratios are what carries).

    python bench/aliked_speed.py [--variants n16 t16] [--sides 384 512] [--budgets 512 1024 2048] [--images 3] \
        [--repeats 3]
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

import cv2  # noqa: E402
import kornia  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from wildreid.matching import LocalFeatureExtractor  # noqa: E402


def patterned_image(seed: int, size: int = 640) -> np.ndarray:
    """A generated RGB 'coat': smooth noise, blobs and strokes, distinct per seed (as tests/test_local_features.py)."""
    rng = np.random.default_rng(seed)
    canvas = cv2.GaussianBlur(rng.integers(60, 200, (size, size, 3), dtype=np.uint8), (0, 0), 6)
    for _ in range(120):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(4, 30, 2))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    for _ in range(50):
        p, q = rng.integers(0, size, (2, 2))
        cv2.line(canvas, tuple(int(v) for v in p), tuple(int(v) for v in q),
                 tuple(int(v) for v in rng.integers(0, 255, 3)), int(rng.integers(1, 4)))
    return canvas


def seconds_per_image(extractor: LocalFeatureExtractor, images: list[np.ndarray]) -> tuple[float, float]:
    """(median seconds per image, mean keypoints) after one warm-up call."""
    extractor.extract(images[0])
    times, counts = [], []
    for image in images:
        tick = time.perf_counter()
        features = extractor.extract(image)
        times.append(time.perf_counter() - tick)
        counts.append(len(features))
    return float(np.median(times)), float(np.mean(counts))


def versus_kornia_module(extractor: LocalFeatureExtractor, images: list[np.ndarray], repeats: int
                         ) -> tuple[float, float, float]:
    """(median seconds per image of `extractor`, the same with kornia's own ALIKED module (its SELU gates and
    deformable convolutions, same weights), mean keypoints): the two alternate image by image for `repeats` rounds
    after one warm-up call each, so that both see the same load on a shared machine."""
    from kornia.feature import ALIKED

    ours = extractor._get_detector()
    theirs = ALIKED(model_name=f"aliked-{extractor.config['variant']}", max_num_keypoints=extractor.max_keypoints,
                    detection_threshold=extractor.config["detection_threshold"])
    theirs.load_state_dict(ours.state_dict(), strict=False)
    theirs = theirs.eval().to(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"ours": [], "kornia": []}
    counts = []
    try:
        for name, module in (("ours", ours), ("kornia", theirs)):
            extractor._detector = module
            extractor.extract(images[0])
        for _ in range(repeats):
            for image in images:
                for name, module in (("ours", ours), ("kornia", theirs)):
                    extractor._detector = module
                    tick = time.perf_counter()
                    features = extractor.extract(image)
                    times[name].append(time.perf_counter() - tick)
                    if name == "ours":
                        counts.append(len(features))
    finally:
        extractor._detector = ours
    return float(np.median(times["ours"])), float(np.median(times["kornia"])), float(np.mean(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["n16", "t16"])
    parser.add_argument("--sides", nargs="+", type=int, default=[384, 512])
    parser.add_argument("--budgets", nargs="+", type=int, default=[512, 1024, 2048])
    parser.add_argument("--images", type=int, default=3, help="generated images timed per setting (median)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds over the images at the first budget, ALIKED alternating with kornia's module")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "aliked_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    images = [patterned_image(seed) for seed in range(args.images)]
    rows = []
    for side in args.sides:
        for budget in args.budgets:
            extractor = LocalFeatureExtractor("sift", max_keypoints=budget, max_side=side)
            median, keypoints = seconds_per_image(extractor, images)
            rows.append({"extractor": "sift", "side": side, "budget": budget, "seconds_per_image": round(median, 3),
                         "keypoints": keypoints, "descriptor_bytes_per_image": int(keypoints * 128)})
            print(f"sift        side {side} budget {budget:5d}: {median:6.3f} s/image, {keypoints:6.0f} keypoints",
                  flush=True)
            for variant in args.variants:
                extractor = LocalFeatureExtractor("aliked", max_keypoints=budget, max_side=side, variant=variant).load()
                if budget == args.budgets[0]:
                    median, reference, keypoints = versus_kornia_module(extractor, images, args.repeats)
                else:
                    median, keypoints = seconds_per_image(extractor, images)
                width = extractor.empty().descriptors.shape[1]
                rows.append({"extractor": f"aliked-{variant}", "side": side, "budget": budget,
                             "seconds_per_image": round(median, 3), "keypoints": keypoints,
                             "descriptor_bytes_per_image": int(keypoints * width * 2)})
                print(f"aliked-{variant:6s} side {side} budget {budget:5d}: {median:6.3f} s/image, "
                      f"{keypoints:6.0f} keypoints", flush=True)
                if budget == args.budgets[0]:
                    rows[-1]["kornia_module_seconds_per_image"] = round(reference, 3)
                    rows[-1]["speedup_over_kornia_module"] = round(reference / median, 2)
                    print(f"  kornia's module: {reference:6.3f} s/image ({reference / median:.2f}x slower)",
                          flush=True)
    write_report(args.output, "aliked_speed", {
        "threads": torch.get_num_threads(), "images_per_setting": args.images, "image": "generated 640x640 RGB",
        "repeats_at_first_budget": args.repeats,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()], "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "kornia": kornia.__version__, "rows": rows,
        "note": "median over the images after one warm-up call (at the first budget over --repeats rounds, ALIKED "
                "and kornia's module alternating image by image); the machine was shared with other jobs, so these "
                "are upper bounds (see load_average_at_end) and the ratios are the figures that carry",
    })


if __name__ == "__main__":
    main()
