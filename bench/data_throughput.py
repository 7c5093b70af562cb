"""Training samples per second per CPU core through the data path: dataset row -> JPEG decode -> crop ->
resize -> augmentation (the exact code train.py's loader workers run), at 224 and 440 px.

    python bench/data_throughput.py [--photo-sizes 512 1024] [--samples 200]

One process with one torch thread stands for one loader worker; the last column is how many workers a
GPU consuming 400 img/s (REFERENCE: efficientnetv2_rw_m at 440 px on an H100) would need.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from hub_datasets.specs import load_spec
from hub_datasets.synthetic import generate_rows
from modeling_wildreid import WildReIDImageProcessor
from wildreid.embedding import ReIDImageDataset
from wildreid.training.augment import AugmentationConfig, build_augmentation

GPU_IMAGES_PER_SECOND = 400


def write_photos(root: Path, photo_size: int, count: int) -> None:
    for row in generate_rows(n_species=1, n_identities=max(2, count // 4), images_per_identity=4, image_size=photo_size, seed=1):
        folder = root / row["identity"].split("/")[-1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / row["image_id"].split("/")[-1]).write_bytes(row["image"]["bytes"])


def samples_per_second(dataset: ReIDImageDataset, samples: int) -> float:
    keys = [(i % len(dataset), i) for i in range(samples)]
    dataset[keys[0]]  # warm-up: first decode, lazy imports
    start = time.perf_counter()
    for key in keys:
        dataset[key]
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo-sizes", type=int, nargs="+", default=[512, 1024], help="sides of the source JPEGs")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[224, 440], help="model input sides")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    augment = build_augmentation(AugmentationConfig())
    print(f"{'photo':>6} {'input':>6} {'no augment':>12} {'with augment':>13} {'workers for 400 img/s':>22}")
    with tempfile.TemporaryDirectory() as tmp:
        for photo_size in args.photo_sizes:
            folder = Path(tmp) / f"photos{photo_size}"
            write_photos(folder, photo_size, count=64)
            rows = load_spec(f"folder[species=bench]:{folder}")
            for image_size in args.image_sizes:
                processor = WildReIDImageProcessor(image_size=image_size)
                plain = samples_per_second(ReIDImageDataset(rows, processor, labels=[0] * len(rows)), args.samples)
                augmented = samples_per_second(ReIDImageDataset(rows, processor, [0] * len(rows), augment), args.samples)
                print(f"{photo_size:>5}px {image_size:>5}px {plain:>9.1f}/s {augmented:>10.1f}/s "
                      f"{math.ceil(GPU_IMAGES_PER_SECOND / augmented):>22d}")
    print("(samples per second on one core; JPEG quality 90 synthetic coats)")


if __name__ == "__main__":
    main()
