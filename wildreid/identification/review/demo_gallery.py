"""A generated gallery to try the review app on (and to test and benchmark it): synthetic coat patterns
written as JPEG files (one folder per individual), an untrained EfficientNet-Lite0 model, embeddings, a
SIFT keypoint cache and descriptor index, a calibrated new-individual threshold and a per-species method
choice (with its fitted fusion), built in this process.

    python -m wildreid.identification.review.demo_gallery OUT [--individuals 6 --images 3 --method auto]
    wildreid app --gallery OUT/gallery [--method auto|global|local|fusion]

Demo data only: an untrained model's candidates show the app working, not accuracy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hub_datasets.synthetic import generate_rows
from modeling_wildreid import WildReIDConfig, WildReIDModel
from wildreid.embedding.images import load_crop
from wildreid.matching import LocalFeatureCache, LocalFeatureExtractor

from ..gallery import Gallery
from ..gallery_methods import REQUESTABLE, fit_method_choice
from . import load_model_embedder


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


def build_demo_gallery(root: Path, n_identities: int = 6, images_per_identity: int = 3, seed: int = 5,
                       species: str = "zebra", image_size: int = 128, model_image_size: int = 64,
                       held_out_per_identity: int = 0, batch_size: int = 64, method: str = "auto",
                       method_fit_images: int = 200) -> dict:
    """Images, a model and a calibrated gallery with a keypoint cache under `root`; returns their paths.

    held_out_per_identity: the last photos of each individual stay out of the gallery ("queries"):
        unseen photos of known individuals.
    method: the method choice recorded as `wildreid calibrate --method` records it, fitted on the gallery's
        own labelled images, each leaving itself out (a demo has no other labelled images), on at most
        `method_fit_images` of them (whole individuals; `fit_method_choice`'s `max_images`).
    """
    import numpy as np
    import torch

    written = write_images(root / species, n_identities, images_per_identity + held_out_per_identity, image_size, seed)
    images = [item for i, item in enumerate(written)
              if i % (images_per_identity + held_out_per_identity) < images_per_identity]
    kept = {path for path, _ in images}
    queries = [path for path, _ in written if path not in kept]
    torch.manual_seed(0)
    model = root / "model"
    WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=model_image_size)).save_pretrained(model)
    embed, tag = load_model_embedder(str(model))
    crops = [load_crop(path) for path, _ in images]
    embeddings = np.concatenate([embed(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)])
    ids = [f"{name}/{path.name}" for path, name in images]
    identities = [f"{species}/{name}" for _, name in images]
    gallery = Gallery()
    gallery.add(embeddings, {"image_id": ids, "identity": identities, "species": [species] * len(ids),
                             "path": [str(path) for path, _ in images]}, tag)
    extractor = LocalFeatureExtractor()
    features = [extractor.extract(crop) for crop in crops]
    cache = LocalFeatureCache.from_features(ids, features, extractor.config)
    gallery.calibrate_new_individual_threshold(embeddings, identities, tag, query_image_ids=ids)
    gallery.calibration["method_choice"] = fit_method_choice(method, embeddings, identities, [species] * len(ids),
                                                             features, extractor.config, max_images=method_fit_images)
    gallery.save(root / "gallery", local_features=cache)
    return {"images": [path for path, _ in images], "queries": queries, "model": model, "gallery": root / "gallery"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--individuals", type=int, default=6)
    parser.add_argument("--images", type=int, default=3, help="photos per individual")
    parser.add_argument("--method", choices=REQUESTABLE, default="auto", help="method choice to fit and record")
    args = parser.parse_args()
    built = build_demo_gallery(args.output, args.individuals, args.images, method=args.method)
    print(f"gallery {built['gallery']}: try `wildreid app --gallery {built['gallery']}`")
