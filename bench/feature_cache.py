"""Per-image local features and embeddings of the identification benches, cached outside the repo (they derive
from the data) in one .npz per species and setting, keyed by what changes them: the extractor config, the model
weights, test-time flip and the crop (`center_box`). No pickle: plain arrays keyed by `image_id`."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from hub_datasets.specs import DatasetSpec, load_specs, parse_spec
from wildreid.embedding import Embeddings, embed_dataset, load_embedder
from wildreid.evaluation.matching import LocalSet, extract_local_set
from wildreid.matching import LocalFeatureExtractor, LocalFeatures


def cache_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def crop_stamp(spec: str) -> str:
    """What changes the crops of a spec's images beyond their id (`center_box`): part of every cache key."""
    center_box = dict(parse_spec(spec).params).get("center_box")
    return "" if center_box is None else f"+center_box={center_box}"


def boxed(spec: str | None, fraction: float) -> str | None:
    """`spec` with `center_box=fraction` (unchanged for the whole photo, 1)."""
    if spec is None or fraction == 1:
        return spec
    parsed = parse_spec(spec)
    params = tuple(sorted({**dict(parsed.params), "center_box": fraction}.items()))
    return str(DatasetSpec(parsed.kind, parsed.name, parsed.location, parsed.split, params))


def model_stamp(model: str) -> str:
    weights = Path(model) / "model.safetensors"
    return f"{model}@{weights.stat().st_mtime_ns}" if weights.is_file() else model


def _cached(path: Path, dataset, compute) -> dict:
    """Per-image results keyed by `image_id` in one .npz per species and setting (no pickle): a set that
    shares images with an earlier one (lion:train and the closed-set split's parts) only computes the rest."""
    stored = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            bounds = data["offsets"]
            arrays = {key: data[key] for key in data.files if key not in ("image_ids", "offsets")}
            stored = {image_id: {key: value[a:b] for key, value in arrays.items()}
                      for image_id, a, b in zip(data["image_ids"].tolist(), bounds[:-1], bounds[1:])}
    image_ids = list(dataset["image_id"])
    missing = [row for row, image_id in enumerate(image_ids) if image_id not in stored]
    if missing:
        tick = time.perf_counter()
        stored.update(compute(dataset.select(missing), [image_ids[row] for row in missing]))
        print(f"  {path.name}: {len(missing)} new images, {time.perf_counter() - tick:.0f} s", flush=True)
        keys = sorted(stored)
        first = next(iter(stored.values()))
        np.savez(path, image_ids=np.array(keys), offsets=np.concatenate([[0], np.cumsum([len(stored[k][next(iter(first))])
                                                                                        for k in keys])]),
                 **{name: np.concatenate([stored[k][name] for k in keys]) for name in first})
    return stored


def local_features(spec: str, cache: Path, extractor: LocalFeatureExtractor, workers: int):
    dataset = load_specs([spec])
    species = "-".join(sorted(set(dataset["species"])))
    path = cache / f"local-{species}-{cache_key(json.dumps(extractor.config, sort_keys=True) + crop_stamp(spec))}.npz"

    def compute(part, image_ids):
        extracted = extract_local_set(part, extractor, num_workers=workers, progress=False)
        return {image_ids[row]: {"keypoints": f.keypoints, "descriptors": f.descriptors}
                for row, f in zip(extracted.rows, extracted.features)}

    stored = _cached(path, dataset, compute)
    image_ids = list(dataset["image_id"])
    rows = np.array([row for row, image_id in enumerate(image_ids) if image_id in stored], dtype=np.int64)
    features = [LocalFeatures(**stored[image_ids[row]]) for row in rows]
    return dataset, LocalSet(features, rows, np.asarray(dataset["identity"], dtype=object)[rows],
                             np.asarray(dataset["species"], dtype=object)[rows], [])


def embeddings(model: str, spec: str, dataset, cache: Path, flip_test: bool = False):
    species = "-".join(sorted(set(dataset["species"])))
    setting = model_stamp(model) + ("+flip" if flip_test else "") + crop_stamp(spec)
    path = cache / f"embed-{species}-{cache_key(setting)}.npz"

    def compute(part, image_ids):
        embedder = load_embedder(model, flip_test=flip_test or None)
        embedded = embed_dataset(embedder.model, part, embedder.processor, batch_size=32, num_workers=0, progress=False)
        return {image_ids[row]: {"vector": vector[None]} for row, vector in zip(embedded.indices, embedded.vectors)}

    stored = _cached(path, dataset, compute)
    rows = np.array([row for row, image_id in enumerate(dataset["image_id"]) if image_id in stored], dtype=np.int64)
    vectors = np.concatenate([stored[image_id]["vector"] for image_id in np.asarray(dataset["image_id"])[rows]])
    return Embeddings(vectors, rows)
