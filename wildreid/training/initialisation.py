"""The starting state of neck and head: neck statistics calibrated on the training images' pooled features,
and (few-shot) a classification head whose sub-centres start at each identity's mean embedding."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from modeling_wildreid import WildReIDImageProcessor, WildReIDModel

from ..embedding.data import ReIDImageDataset, collate
from ..threads import worker_count


@torch.no_grad()
def pooled_features(embedder: WildReIDModel, dataset: Dataset, processor: WildReIDImageProcessor, rows: np.ndarray, *,
                    batch_size: int, num_workers: int, accelerator=None) -> tuple[torch.Tensor, np.ndarray]:
    """GeM-pooled backbone features (the neck's input; float32, CPU) of the dataset `rows` and the rows they
    belong to; unreadable images are skipped (the loader reports them). With several processes each pools
    its share and every process receives all of them (sharded as in `embed_dataset`, which says why not
    with `gather_for_metrics`)."""
    from tqdm.auto import tqdm

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ReIDImageDataset(dataset, processor), rows[rank::world].tolist()),
        batch_size=batch_size, num_workers=worker_count(num_workers), collate_fn=collate,
    )
    device = next(embedder.parameters()).device
    was_training = embedder.training
    embedder.eval()
    features, indices = [torch.zeros(0, embedder.backbone.num_features)], [torch.zeros(0, dtype=torch.long)]
    for batch in tqdm(loader, desc="pooling training images", disable=rank != 0, leave=False):
        if "pixel_values" not in batch:
            continue
        pixels = processor.normalize(batch["pixel_values"].to(device))
        features.append(embedder.pooling(embedder.forward_features(pixels)).float().cpu())
        indices.append(batch["index"])
    embedder.train(was_training)
    local = (torch.cat(features), torch.cat(indices).numpy())
    if world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([local])
    else:
        parts = [local]
    return torch.cat([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


@torch.no_grad()
def calibrate_neck_statistics(norm: torch.nn.BatchNorm1d, pooled: torch.Tensor) -> None:
    """Set the BN neck's running mean and variance to those of `pooled` training features.

    A fresh neck holds mean 0 / variance 1, so its evaluation-mode output (the raw GeM vector, dominated
    by one common component) has little to do with its training-mode output (batch-centred): prototypes
    and validation would live in another space than the loss. Calibrated, the two agree from step 0.
    """
    if len(pooled) < 2:
        raise ValueError("fewer than 2 readable training images: cannot set the neck statistics")
    pooled = pooled.double()
    norm.running_mean.copy_(pooled.mean(0).to(norm.running_mean))
    norm.running_var.copy_(pooled.var(0).to(norm.running_var))


def prototype_head_weights(embeddings: np.ndarray, labels: np.ndarray, num_identities: int, num_subcenters: int,
                           seed: int) -> torch.Tensor:
    """Few-shot head initialisation: each identity's sub-centres start at its mean embedding (its
    prototype), plus a small jitter so the k sub-centres can drift apart."""
    dim = embeddings.shape[1]
    prototypes = np.zeros((num_identities, dim), np.float32)
    np.add.at(prototypes, labels, embeddings)
    prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
    weights = torch.from_numpy(prototypes).repeat_interleave(num_subcenters, dim=0)
    jitter = torch.randn(weights.shape, generator=torch.Generator().manual_seed(seed)) * 0.01
    return torch.nn.functional.normalize(weights + jitter, dim=1)


@torch.no_grad()
def init_head_from_prototypes(model, pooled: torch.Tensor, labels: np.ndarray, seed: int) -> None:
    """Start each identity's sub-centres at its mean embedding under the starting backbone and the neck
    as calibrated on this data (the saved neck's statistics belong to the old species: under them the new
    species' embeddings all point one way and so would the prototypes). `labels`: each pooled row's identity."""
    neck = model.wildreid.neck
    was_training = neck.training
    neck.eval()
    device = next(neck.parameters()).device
    embeddings = torch.cat([torch.nn.functional.normalize(neck(chunk.to(device)), dim=-1).cpu()
                            for chunk in pooled.split(4096)])
    neck.train(was_training)
    head = model.head
    # The head compares against the un-normalised neck output, whose direction the embedding shares.
    head.weight.data.copy_(prototype_head_weights(embeddings.numpy(), labels, head.num_identities,
                                                  head.num_subcenters, seed))
