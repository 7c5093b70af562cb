"""The images `wildreid adapt` trains and measures on: a gallery's own labelled photos, read again from the paths
its metadata records, with about a fifth of each species' individuals held out.

They are written as one CSV in the adaptation's work folder, its `split` column `train` or `holdout`, and read back
through the ordinary dataset spec `csv[image_root=...]:<work>/images.csv:<split>`: training, measuring and
calibrating load them as any user's CSV is loaded (paths checked, boxes and rotations kept), and the model's
`training_config.yaml` names the images it trained on.

Held-out individuals are drawn per species in a seeded order (`hub_datasets.splits.stable_key`: the same on every
machine) among those that can be queries: two photos or more, and where the species records encounters (sightings,
videos) and at least two individuals were seen in two of them, photos from two sightings; they are then measured
across sightings, a query not seeing the other photos of its own encounter, the matches of one moment.
"""
from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hub_datasets.splits import stable_key

from ..evaluation.grouping import macro_average
from ..evaluation.metrics import retrieval_metrics
from .gallery import Gallery

TRAIN, HOLDOUT = "train", "holdout"
IMAGES_FILE = "images.csv"
MIN_PHOTOS = 2  # an individual trains (P x K batches take 2 photos of each) or is a query with two photos or more
MIN_HELD_OUT = 2  # individuals held out per species: with a single one, every retrieval among them is right
MIN_TRAINING = 2  # individuals left to train on per species: a metric loss needs more than one
SPEC_UNSAFE = ",]"  # characters a spec parameter cannot carry (they end a parameter or the list)


@dataclass
class GalleryImages:
    """A CSV of gallery photos in the work folder, and the specs that read it back (a split, or all rows)."""

    csv_path: Path
    image_root: Path
    center_box: float | None  # the gallery's: rows without a box are cropped as the gallery's photos were

    def spec(self, split: str | None = None) -> str:
        params = [f"image_root={self.image_root}"] + ([f"center_box={self.center_box}"] if self.center_box else [])
        return f"csv[{','.join(params)}]:{self.csv_path}" + (f":{split}" if split else "")


def gallery_images(gallery: Gallery, gallery_dir: Path) -> list[dict[str, Any]]:
    """One row per gallery image (image_id, identity, species, resolved path, bbox, theta, viewpoint, encounter);
    a gallery whose rows lack a path or a `species/name` identity is refused, naming an example."""
    rows, no_path, bad_identity = [], [], []
    for record in gallery.metadata.to_dict("records"):
        extra = json.loads(record["extra"]) if record["extra"] else {}
        species, identity = record["species"], str(record["identity"])
        if not record["path"]:
            no_path.append(record["image_id"])
            continue
        if not species or "/" in species or not identity.startswith(f"{species}/") \
                or identity[len(species) + 1:].strip() != identity[len(species) + 1:] or identity == f"{species}/":
            bad_identity.append(identity)
            continue
        rows.append({"image_id": record["image_id"], "identity": identity, "species": species,
                     "path": Path(record["path"]).expanduser().resolve(), "bbox": extra.get("bbox"),
                     "theta": extra.get("theta"), "viewpoint": extra.get("viewpoint"),
                     "encounter": None if extra.get("encounter") in (None, "") else str(extra["encounter"])})
    if no_path:
        raise ValueError(f"{gallery_dir}: {len(no_path)} of {len(gallery)} images have no file path recorded (e.g. "
                         f"{no_path[0]}); adapt trains on the gallery's photos, read from the paths `wildreid index` "
                         "records, so a gallery built from in-memory images (such as the generated synthetic data) "
                         "cannot be adapted")
    if bad_identity:
        raise ValueError(f"{gallery_dir}: {len(bad_identity)} images have an identity that is not "
                         f"'<species>/<name>' with their species (e.g. {bad_identity[0]!r}); adapt needs galleries "
                         "built by `wildreid index`")
    return rows


def choose_holdout(rows: list[dict[str, Any]], fraction: float, seed: int, gallery_dir: Path) -> dict[str, dict]:
    """{species: {"individuals": held-out identities, "across_sightings": bool}}; about `fraction` of each species'
    individuals, at least MIN_HELD_OUT, leaving at least MIN_TRAINING with two photos or more to train on."""
    if not 0 < fraction < 1:
        raise ValueError(f"--holdout_fraction must be strictly between 0 and 1, got {fraction}")
    sightings: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        sightings[row["species"]][row["identity"]].append(row["encounter"])
    chosen = {}
    for species, individuals in sorted(sightings.items()):
        photographed_twice = [name for name, encounters in individuals.items() if len(encounters) >= MIN_PHOTOS]
        resighted = [name for name in photographed_twice if _seen_twice(individuals[name])]
        across = len(resighted) >= MIN_HELD_OUT and any(e is not None for es in individuals.values() for e in es)
        eligible = sorted(resighted if across else photographed_twice, key=lambda name: stable_key(seed, name))
        held_out = eligible[:max(MIN_HELD_OUT, round(fraction * len(individuals)))]
        training = [name for name in photographed_twice if name not in set(held_out)]
        if len(held_out) < MIN_HELD_OUT or len(training) < MIN_TRAINING:
            raise ValueError(
                f"{gallery_dir}: too few individuals of {species} to adapt to: {len(individuals)} individuals, "
                f"{len(photographed_twice)} of them with {MIN_PHOTOS} photos or more. adapt holds out at least "
                f"{MIN_HELD_OUT} such individuals to measure on and trains on the others, which needs at least "
                f"{MIN_HELD_OUT + MIN_TRAINING} individuals with {MIN_PHOTOS} photos or more per species")
        chosen[species] = {"individuals": sorted(held_out), "across_sightings": across}
    return chosen


def _seen_twice(encounters: list) -> bool:
    """Two photos outside one recorded encounter (a photo without one is a sighting of its own)."""
    return len({e for e in encounters if e is not None}) + sum(e is None for e in encounters) >= 2


def write_images(rows: list[dict[str, Any]], holdout: dict[str, dict], work: Path, center_box: float | None,
                 name: str = IMAGES_FILE) -> GalleryImages:
    """Write a CSV of `rows` into the work folder, split by `holdout`, its paths relative to the deepest common
    folder a spec can name; returns it with its specs."""
    image_root = Path(os.path.commonpath([str(row["path"].parent) for row in rows]))
    while any(ch in str(image_root) for ch in SPEC_UNSAFE) and image_root != image_root.parent:
        image_root = image_root.parent
    held_out = {name for chosen in holdout.values() for name in chosen["individuals"]}
    path = work / name
    partial = path.with_suffix(".partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "image_id", "identity", "species", "bbox", "theta", "viewpoint", "encounter",
                         "split"])
        for row in rows:
            writer.writerow([row["path"].relative_to(image_root).as_posix(), row["image_id"],
                             row["identity"][len(row["species"]) + 1:], row["species"],
                             "" if row["bbox"] is None else " ".join(str(float(v)) for v in row["bbox"]),
                             "" if row["theta"] is None else float(row["theta"]), row["viewpoint"] or "",
                             row["encounter"] or "", HOLDOUT if row["identity"] in held_out else TRAIN])
    partial.replace(path)
    return GalleryImages(path, image_root, center_box)


def holdout_figures(vectors: np.ndarray, identities: np.ndarray, species: np.ndarray, encounters: np.ndarray,
                    holdout: dict[str, dict]) -> dict[str, Any]:
    """Leave-one-out top-1 / mAP among the held-out images of each species (across sightings where the species
    was held out so) and their unweighted mean over species."""
    per_species = {}
    for name, chosen in sorted(holdout.items()):
        mask = species == name
        groups = encounters[mask] if chosen["across_sightings"] else None
        metrics = retrieval_metrics(vectors[mask], identities[mask], query_groups=groups, gallery_groups=groups)
        per_species[name] = {"top1": metrics["top1"], "map": metrics["map"], "queries": metrics["n_queries"],
                             "across_sightings": chosen["across_sightings"]}
    mean = macro_average({name: {"top1": m["top1"], "map": m["map"]} for name, m in per_species.items()})
    return {"species": per_species, "mean": {"top1": mean["top1"], "map": mean["map"]}}


def describe(figures: dict[str, Any]) -> str:
    """'top-1 41.2 mAP 30.5' for one species, or the mean and each species for several."""
    def one(m: dict) -> str:
        return f"top-1 {100 * m['top1']:.1f} mAP {100 * m['map']:.1f}"

    if len(figures["species"]) == 1:
        return one(next(iter(figures["species"].values())))
    return f"mean {one(figures['mean'])} (" + ", ".join(
        f"{name} {one(m)}" for name, m in figures["species"].items()) + ")"
