"""Is the synthetic data hard for an untrained model yet learnable? (Figures for the README; not a test.)

Trains a small CNN with a cosine-margin head on the `train` identities of `synthetic` (disjoint-set default
split) and reports leave-one-out 1-NN top-1 on the unseen `test` identities for: raw pixels, the same CNN
untrained, and the trained CNN. Synthetic figures describe the generator, never a model's accuracy.

    PYTHONPATH=. python bench/synthetic_learnability.py [--n_identities 30] [--images_per_identity 8] [--epochs 40]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hub_datasets.synthetic import build_synthetic


def as_tensors(dataset) -> tuple[torch.Tensor, np.ndarray]:
    pixels = np.stack([np.asarray(image, dtype=np.float32) / 255 for image in dataset["image"]])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), np.asarray(dataset["identity"])


def small_cnn(dim: int = 128) -> nn.Module:
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, dim))


def top1_leave_one_out(embeddings: np.ndarray, identities: np.ndarray) -> float:
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    return float((identities[similarity.argmax(1)] == identities).mean())


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model(images[i : i + 256]) for i in range(0, len(images), 256)]).numpy()


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Small shifts and brightness changes on top of the generator's own pose/light variation.
    shift = torch.randint(-6, 7, (2,), generator=generator).tolist()
    batch = torch.roll(batch, shifts=shift, dims=(2, 3))
    return batch * (0.8 + 0.4 * torch.rand(len(batch), 1, 1, 1, generator=generator))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_identities", type=int, default=30)
    parser.add_argument("--images_per_identity", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    start = time.perf_counter()
    dataset = build_synthetic(3, args.n_identities, args.images_per_identity, args.image_size, args.seed)
    print(f"generated {len(dataset)} images of {len(set(dataset['identity']))} individuals in {time.perf_counter() - start:.1f} s")
    splits = np.asarray(dataset["split"])
    train_images, train_ids = as_tensors(dataset.select(np.flatnonzero(splits == "train")))
    test_images, test_ids = as_tensors(dataset.select(np.flatnonzero(splits == "test")))
    print(f"train {len(train_images)} images / {len(set(train_ids))} ids; test (unseen ids) {len(test_images)} / {len(set(test_ids))}")

    pixels = F.interpolate(test_images, size=32, mode="area").flatten(1).numpy()
    print(f"raw pixels        top-1 {top1_leave_one_out(pixels - pixels.mean(1, keepdims=True), test_ids):.3f}")
    model = small_cnn()
    print(f"untrained CNN     top-1 {top1_leave_one_out(embed(model, test_images), test_ids):.3f}")

    classes = {name: i for i, name in enumerate(sorted(set(train_ids)))}
    labels = torch.tensor([classes[name] for name in train_ids])
    head = nn.Parameter(torch.randn(len(classes), 128) * 0.01)
    optimizer = torch.optim.AdamW([*model.parameters(), head], lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=args.epochs * ((len(labels) + 63) // 64))
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(labels), generator=generator).split(64):
            cosine = F.normalize(model(augment(train_images[batch], generator))) @ F.normalize(head).T
            margin = F.one_hot(labels[batch], len(classes)) * 0.2
            loss = F.cross_entropy(16 * (cosine - margin), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    print(f"trained CNN       top-1 {top1_leave_one_out(embed(model, test_images), test_ids):.3f} "
          f"({args.epochs} epochs, {time.perf_counter() - start:.0f} s, last loss {loss.item():.2f})")
    print(f"chance            top-1 {1 / len(set(test_ids)):.3f} (1 / test identities)")


if __name__ == "__main__":
    main()
