"""A small generated gallery on disk for the review app's tests and benchmark: synthetic coat patterns
written as JPEG files (one folder per individual), a tiny untrained model, embeddings, a SIFT keypoint
cache and a calibrated new-individual threshold, built in this process (no worker start-up)."""
from __future__ import annotations

from pathlib import Path

from hub_datasets.synthetic import generate_rows
from modeling_wildreid import WildReIDConfig, WildReIDModel
from wildreid.gallery import Gallery
from wildreid.images import load_crop
from wildreid.local_features import LocalFeatureCache, LocalFeatureExtractor
from wildreid.review import load_model_embedder


def write_images(root: Path, n_identities: int, images_per_identity: int, image_size: int = 128,
                 seed: int = 5) -> list[tuple[Path, str]]:
    """`root/<individual>/<n>.jpg` for one species; returns (path, individual) pairs."""
    written = []
    for row in generate_rows(n_species=1, n_identities=n_identities, images_per_identity=images_per_identity,
                             image_size=image_size, seed=seed):
        name = row["identity"].split("/", 1)[1]
        path = root / name / Path(row["image_id"]).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(row["image"]["bytes"])
        written.append((path, name))
    return written


def build_review_gallery(root: Path, n_identities: int = 6, images_per_identity: int = 3, seed: int = 5,
                         species: str = "zebra", image_size: int = 128, batch_size: int = 64) -> dict:
    """Images, a tiny model and a calibrated gallery with a keypoint cache under `root`."""
    import numpy as np
    import torch

    images = write_images(root / species, n_identities, images_per_identity, image_size, seed)
    torch.manual_seed(0)
    model = root / "model"
    WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64)).save_pretrained(model)
    embed, tag = load_model_embedder(str(model))
    crops = [load_crop(path) for path, _ in images]
    embeddings = np.concatenate([embed(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)])
    ids = [f"{name}/{path.name}" for path, name in images]
    identities = [f"{species}/{name}" for _, name in images]
    gallery = Gallery()
    gallery.add(embeddings, {"image_id": ids, "identity": identities, "species": [species] * len(ids),
                             "path": [str(path) for path, _ in images]}, tag)
    extractor = LocalFeatureExtractor()
    cache = LocalFeatureCache.from_features(ids, [extractor.extract(crop) for crop in crops], extractor.config)
    gallery.calibrate_new_individual_threshold(embeddings, identities, tag, query_image_ids=ids)
    gallery.save(root / "gallery", local_features=cache)
    return {"images": [path for path, _ in images], "model": model, "gallery": root / "gallery"}
