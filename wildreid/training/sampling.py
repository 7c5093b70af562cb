"""Which training images go together: identities with enough images, and the species-balanced P x K
batch sampler used for metric learning."""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

logger = logging.getLogger(__name__)


@dataclass
class IdentityTable:
    """Training identities with their integer labels (sorted names; identities are species-namespaced)."""

    names: list[str]
    species: list[str]
    counts: list[int]

    @property
    def label_of(self) -> dict[str, int]:
        return {name: label for label, name in enumerate(self.names)}


def filter_min_images(dataset: Dataset, min_images: int) -> tuple[Dataset, IdentityTable]:
    """Keep identities with at least `min_images` images; fail naming any species left with none."""
    identities, species = dataset["identity"], dataset["species"]
    counts = Counter(identities)
    species_of = dict(zip(identities, species))
    kept = sorted(name for name, count in counts.items() if count >= min_images)
    emptied = sorted(set(species) - {species_of[name] for name in kept})
    if emptied:
        detail = ", ".join(
            f"{s} (largest identity has {max(c for n, c in counts.items() if species_of[n] == s)} images)" for s in emptied
        )
        raise ValueError(
            f"no identity has at least {min_images} training images in species: {detail}. "
            "Lower min_images_per_identity or add images."
        )
    keep = set(kept)
    rows = [i for i, name in enumerate(identities) if name in keep]
    if len(rows) != len(identities):
        logger.info("min_images_per_identity=%d keeps %d of %d identities (%d of %d images)",
                    min_images, len(kept), len(counts), len(rows), len(identities))
    filtered = dataset.select(rows) if len(rows) != len(identities) else dataset
    table = IdentityTable(kept, [species_of[name] for name in kept], [counts[name] for name in kept])
    return filtered, table


class SpeciesBalancedBatchSampler(torch.utils.data.Sampler):
    """P identities x K images per batch, species drawn uniformly so small species are not drowned out.

    For every group of K a species is drawn uniformly, then the next identity of that species' shuffled
    cycle (every identity is visited before any repeats), then K of its images without replacement
    (with replacement only when it has fewer than K). Each yielded key is `(row index, augmentation seed)`.
    An epoch has ceil(rows / batch_size) batches; the order depends only on `seed` and the epoch number,
    which the training loop sets with :meth:`use_epoch` (deliberately not `set_epoch`: Accelerate's data
    loaders call that with their own iteration count, which restarts at 0 after resuming).
    """

    def __init__(self, identities: Sequence[str], species: Sequence[str], identities_per_batch: int,
                 images_per_identity: int, seed: int = 0):
        if identities_per_batch < 1 or images_per_identity < 1:
            raise ValueError("identities_per_batch and images_per_identity must be >= 1")
        self.p, self.k, self.seed, self.epoch = identities_per_batch, images_per_identity, seed, 0
        rows_of: dict[str, list[int]] = defaultdict(list)
        for row, name in enumerate(identities):
            rows_of[name].append(row)
        self.rows_of = {name: np.array(rows) for name, rows in sorted(rows_of.items())}
        by_species: dict[str, list[str]] = defaultdict(list)
        for name, sp in sorted(set(zip(identities, species))):
            by_species[sp].append(name)
        self.identities_of_species = dict(sorted(by_species.items()))
        self.num_batches = max(1, math.ceil(len(identities) / (self.p * self.k)))

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        species_names = list(self.identities_of_species)
        cycles = {sp: [] for sp in species_names}
        for _ in range(self.num_batches):
            batch = []
            for _ in range(self.p):
                sp = species_names[rng.integers(len(species_names))]
                if not cycles[sp]:
                    cycles[sp] = list(rng.permutation(self.identities_of_species[sp]))
                rows = self.rows_of[cycles[sp].pop()]
                chosen = rng.choice(rows, size=self.k, replace=len(rows) < self.k)
                batch.extend((int(row), int(rng.integers(2**31))) for row in chosen)
            yield batch
