"""Builders for the real species of the raw data folder (`$WILDREID_DATA`): lion, nyala, dog, pig.

Each reads its source's own layout: `<data_dir>/<species>/annotations.csv` (`image` = path relative
to the species folder, `identity`, plus the source's extra columns) and the image files next to it.
Files are checked to exist but not opened, so building is fast (dog: 6316 rows in well under a second).

| species | source split | other metadata |
|---|---|---|
| lion  | official `train` / `val` (identities disjoint) | `view` -> `viewpoint` (lower-cased body part, e.g. `left_face`) |
| nyala | official `train` / `test` (identities disjoint) | `orientation` -> `viewpoint` (`left` / `right`); the sighting number of the file name (`124_leftphoto.jpg`, `124_rightphoto.jpg`: both flanks, one moment) -> `encounter` |
| dog   | default: disjoint-set, 20 % of identities in `test`, seed 0 | - |
| pig   | default: group-aware by video (`encounter`), ~20 % of images in `test`, seed 0 | `video` -> `encounter`, its start time -> `date`; masks dropped |
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset

from .info import SourceInfo
from .paths import resolve_data_dir, resolve_inside
from .schema import to_dataset
from .splits import disjoint_set_labels, group_aware_labels

DEFAULT_TEST_FRACTION = 0.2
_NYALA_SIGHTING = re.compile(r"(\d+)_(?:left|right)photo", re.IGNORECASE)  # "(1)" copies: the same sighting
DEFAULT_SPLIT_SEED = 0

_TVANZYL_CITATION = """@inproceedings{dlamini2020automated,
  title     = {Automated Identification of Individuals in Wildlife Population Using Siamese Neural Networks},
  author    = {Dlamini, Nkosikhona and van Zyl, Terence L.},
  booktitle = {2020 7th International Conference on Soft Computing \\& Machine Intelligence (ISCMI)},
  year      = {2020},
  url       = {https://ieeexplore.ieee.org/abstract/document/9311574}
}"""

_DOGFACENET_CITATION = """@inproceedings{mougeot2019deep,
  title     = {A Deep Learning Approach for Dog Face Verification and Recognition},
  author    = {Mougeot, Guillaume and Li, Dewei and Jia, Shuai},
  booktitle = {PRICAI 2019: Trends in Artificial Intelligence},
  publisher = {Springer International Publishing},
  pages     = {418--430},
  year      = {2019},
  doi       = {10.1007/978-3-030-29894-4_34}
}"""

_FAROPIG_CITATION = """@misc{faropig,
  title        = {Housed Pig Identification and Tracking for Precision Livestock Farming
                  (FaroPigSeg \\& FaroPigReID-33 datasets)},
  howpublished = {\\url{https://github.com/yudong888/FaroPig-Datasets}},
  note         = {Cite the article named in the repository README}
}"""


class SpeciesBuilder:
    """Builds one real species from `<data_dir>/<name>/annotations.csv` into the schema.

    Subclasses set `info` and `extra_columns` and implement `row_metadata`.
    """

    info: SourceInfo
    extra_columns: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.info.name

    def species_dir(self, data_dir: str | os.PathLike | None = None) -> Path:
        root = resolve_data_dir(data_dir) / self.name
        if not (root / "annotations.csv").is_file():
            raise FileNotFoundError(
                f"{self.name}: {root / 'annotations.csv'} not found; point data_dir or $WILDREID_DATA at the "
                f"folder holding {self.name}/annotations.csv"
            )
        return root

    def row_metadata(self, record: dict[str, str], where: str) -> dict[str, Any]:
        """Schema fields beyond image/identity taken from one annotations.csv record."""
        raise NotImplementedError

    def generate_rows(self, data_dir: str | os.PathLike | None = None) -> Iterator[dict[str, Any]]:
        """Yield schema rows (image = absolute file path) in annotations.csv order."""
        root = self.species_dir(data_dir)
        csv_path = root / "annotations.csv"
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"image", "identity", *self.extra_columns} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}")
            for line, record in enumerate(reader, start=2):
                where = f"{csv_path} line {line}"
                path = resolve_inside(root, record["image"], where)
                identity = record["identity"].strip()
                if not identity:
                    raise ValueError(f"{where}: empty identity")
                yield {
                    "image": str(path),
                    "image_id": f"{self.name}/{record['image'].strip()}",
                    "identity": f"{self.name}/{identity}",
                    "species": self.name,
                    "source": self.info.pretty_name,
                    **self.row_metadata(record, where),
                }

    def assign_default_split(self, rows: list[dict[str, Any]]) -> None:
        """Fill `split` in place for sources without an official one (no-op where the source has one)."""

    def build(self, data_dir: str | os.PathLike | None = None) -> Dataset:
        """The whole species as an in-memory `Dataset` in the schema, `split` filled."""
        rows = list(self.generate_rows(data_dir))
        self.assign_default_split(rows)
        return to_dataset(rows, info=self.info.dataset_info(), name=self.name)


class LionBuilder(SpeciesBuilder):
    info = SourceInfo(
        name="lion",
        pretty_name="LionData",
        description=(
            "African lion (Panthera leo): crops of body parts (face, whiskers, ears, nose, body, ...) of ~130 px, "
            "from tvanzyl/wildlife_reidentification. Many images of one lion are crops of the same photograph, and "
            "'Nose' crops carry a drawn red line and text, so within-individual matches are partly same-photo matches."
        ),
        homepage="https://github.com/tvanzyl/wildlife_reidentification",
        license="unknown",
        license_details="No licence stated by the source repository; not for redistribution.",
        citation=_TVANZYL_CITATION,
        default_split="official `train` / `val` split of the source (identities disjoint)",
    )
    extra_columns = ("split", "view")

    def row_metadata(self, record: dict[str, str], where: str) -> dict[str, Any]:
        # The source mixes 'Left_ear', 'left_ear' and 'Left_Ear' for the same body part.
        view = record["view"].strip().lower() or None
        return {"viewpoint": view, "split": record["split"].strip() or None}


class NyalaBuilder(SpeciesBuilder):
    info = SourceInfo(
        name="nyala",
        pretty_name="NyalaData",
        description=(
            "Nyala (Tragelaphus angasii): loosely cropped flank photos, left and right sides, from "
            "tvanzyl/wildlife_reidentification. Contains 8 exact duplicate images and one individual with a single image. "
            "Most sightings have two photos, one per flank (`124_leftphoto.jpg`, `124_rightphoto.jpg`), taken moments "
            "apart against the same background: the sighting number is the `encounter`."
        ),
        homepage="https://github.com/tvanzyl/wildlife_reidentification",
        license="unknown",
        license_details="No licence stated by the source repository; not for redistribution.",
        citation=_TVANZYL_CITATION,
        default_split="official `train` / `test` split of the source (identities disjoint)",
    )
    extra_columns = ("split", "orientation")

    def row_metadata(self, record: dict[str, str], where: str) -> dict[str, Any]:
        sighting = _NYALA_SIGHTING.match(Path(record["image"]).name)
        return {"viewpoint": record["orientation"].strip().lower() or None, "split": record["split"].strip() or None,
                "encounter": sighting.group(1) if sighting else None}


class DogBuilder(SpeciesBuilder):
    info = SourceInfo(
        name="dog",
        pretty_name="DogFaceNet",
        description=(
            "Domestic dog: aligned face crops, 224x224, from DogFaceNet (mirror fcernafukuzaki/DogFaceNet-Dataset). "
            "Images of one dog usually share a session or background, which flatters global features."
        ),
        homepage="https://github.com/GuillaumeMougeot/DogFaceNet",
        license="cc-by-4.0",
        license_details="Original dataset CC BY 4.0 (DogFaceNet, Zenodo record 12578449).",
        citation=_DOGFACENET_CITATION,
        default_split=(
            f"no official split; default disjoint-set: {DEFAULT_TEST_FRACTION:.0%} of identities (whole) in `test`, "
            f"the rest `train` (`hub_datasets.splits.disjoint_set_labels`, seed {DEFAULT_SPLIT_SEED})"
        ),
    )

    def row_metadata(self, record: dict[str, str], where: str) -> dict[str, Any]:
        return {}

    def assign_default_split(self, rows: list[dict[str, Any]]) -> None:
        labels = disjoint_set_labels([row["identity"] for row in rows], DEFAULT_TEST_FRACTION, DEFAULT_SPLIT_SEED)
        for row, label in zip(rows, labels):
            row["split"] = label


_VIDEO_START = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2})_(\d{2})_(\d{2})Z")


class PigBuilder(SpeciesBuilder):
    info = SourceInfo(
        name="pig",
        pretty_name="FaroPigReID-33",
        description=(
            "Domestic pig: body crops from 3 videos of a commercial finishing farm (FaroPigReID-33 sample). Frames of "
            "one pig are near-duplicates from the same video, so splits must keep a video on one side. Each pig appears "
            "in a single video. The source's segmentation masks are not carried (one image per row in the schema)."
        ),
        homepage="https://github.com/yudong888/FaroPig-Datasets",
        license="cc-by-nc-4.0",
        license_details="CC BY-NC 4.0: research / non-commercial use only.",
        citation=_FAROPIG_CITATION,
        default_split=(
            f"no official split; default group-aware by video (`encounter`): whole videos in `test` with the test "
            f"share closest to {DEFAULT_TEST_FRACTION:.0%} of images (`hub_datasets.splits.group_aware_labels`, "
            f"seed {DEFAULT_SPLIT_SEED}); as each pig is in one video, identities are disjoint too"
        ),
    )
    extra_columns = ("video",)

    def row_metadata(self, record: dict[str, str], where: str) -> dict[str, Any]:
        video = record["video"].strip()
        if not video:
            raise ValueError(f"{where}: empty video")
        # Video folders are named '<UTC start time>-<camera>_<first frame>_<last frame>'.
        start = _VIDEO_START.match(video)
        date = f"{start[1]}T{start[2]}:{start[3]}:{start[4]}+00:00" if start else None
        return {"encounter": video, "date": date}

    def assign_default_split(self, rows: list[dict[str, Any]]) -> None:
        labels = group_aware_labels(
            [row["identity"] for row in rows],
            [row["encounter"] for row in rows],
            [row["image_id"] for row in rows],
            DEFAULT_TEST_FRACTION,
            DEFAULT_SPLIT_SEED,
        )
        for row, label in zip(rows, labels):
            row["split"] = label


SPECIES_BUILDERS: dict[str, SpeciesBuilder] = {
    builder.name: builder for builder in (LionBuilder(), NyalaBuilder(), DogBuilder(), PigBuilder())
}


def build_species(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Build the real species `name` (lion, nyala, dog, pig) from `data_dir` (default: `$WILDREID_DATA`)."""
    if name not in SPECIES_BUILDERS:
        raise ValueError(f"unknown species {name!r}; choose one of {sorted(SPECIES_BUILDERS)}")
    return SPECIES_BUILDERS[name].build(data_dir)
