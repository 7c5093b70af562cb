"""From a schema `datasets.Dataset` to batches: image decoding through the model's processor, identity
labels, and failures that travel beside the batch instead of stopping it."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence

import torch
from datasets import Dataset, Image

from modeling_wildreid import ImageLoadError, WildReIDImageProcessor

from .images import LoadFailure


def undecoded(dataset: Dataset) -> Dataset:
    """The dataset with its `image` column left as {"bytes", "path"}: decoding belongs to our processor
    (EXIF, modes, JPEG draft), not to `datasets`."""
    return dataset.cast_column("image", Image(decode=False))


class ReIDImageDataset(torch.utils.data.Dataset):
    """Rows of a schema dataset as uint8 image tensors at the model's input size.

    Items are keyed by row index, or by `(row index, seed)` when an `augment` callable is given: the seed
    makes each augmentation draw reproducible regardless of worker count or resumption. A row whose image
    cannot be decoded or cropped yields a :class:`LoadFailure` instead of raising.
    """

    def __init__(
        self,
        dataset: Dataset,
        processor: WildReIDImageProcessor,
        labels: Sequence[int] | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.dataset = undecoded(dataset)
        self.processor = processor
        self.labels = None if labels is None else list(labels)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | LoadFailure:
        index, seed = key if isinstance(key, tuple) else (key, None)
        row = self.dataset[int(index)]
        try:
            pixels = self.processor.to_uint8(row["image"], row.get("bbox"), row.get("theta") or 0.0)
        except ImageLoadError as error:
            return LoadFailure(row["image_id"], str(error), int(index))
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed if seed is not None else int(index))
                pixels = self.augment(pixels)
        item = {"pixel_values": pixels, "index": int(index)}
        if self.labels is not None:
            item["labels"] = self.labels[int(index)]
        return item


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker init: leave SIGTERM/SIGINT (sent to the whole process group on preemption or
    Ctrl-C) to the main process, which checkpoints and then shuts the workers down itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def collate(items: list[dict | LoadFailure]) -> dict:
    """Stack the good items; failures travel alongside (as a list) so the caller can report them."""
    good = [item for item in items if not isinstance(item, LoadFailure)]
    batch: dict = {"failures": [item for item in items if isinstance(item, LoadFailure)]}
    if good:
        batch["pixel_values"] = torch.stack([item["pixel_values"] for item in good])
        batch["index"] = torch.tensor([item["index"] for item in good])
        if "labels" in good[0]:
            batch["labels"] = torch.tensor([item["labels"] for item in good])
    return batch
