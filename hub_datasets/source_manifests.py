"""What each built-in species' source holds, as `hub_datasets/sources/<species>.json` states it, and how its
folder structure becomes the builder's `annotations.csv` rows (`hub_datasets.download` fetches and checks them)."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

MANIFESTS = Path(__file__).resolve().parent / "sources"
DRIVE_LETTER = re.compile(r"^[A-Za-z]:")  # a Windows drive: not a relative path


class DownloadError(RuntimeError):
    """A source could not be fetched, or what it holds is not what its manifest promises."""


@dataclass
class SourceManifest:
    """One species' source, as `hub_datasets/sources/<species>.json` states it (see the module docstring)."""

    species: str
    repo: str
    commit: str
    archive_url: str
    archive_bytes: int | None
    archive_folder: str
    licence: str
    max_side: int
    about: str
    files: dict[str, str | None]
    path: Path = field(repr=False, compare=False, default=Path())

    @classmethod
    def load(cls, species: str, folder: Path = MANIFESTS) -> SourceManifest:
        path = Path(folder) / f"{species}.json"
        if species not in ANNOTATION_RULES or not path.is_file():
            raise DownloadError(f"no source manifest for {species!r} in {folder}; the built-in species are "
                                f"{', '.join(ANNOTATION_RULES)}")
        try:
            manifest = cls(**json.loads(path.read_text(encoding="utf-8")), path=path)
        except (TypeError, ValueError) as error:
            raise DownloadError(f"{path} is not a source manifest ({error})") from None
        if manifest.species != species or not manifest.files:
            raise DownloadError(f"{path} does not list the files of {species!r}")
        for relative in [*manifest.files, *([manifest.archive_folder] if manifest.archive_folder else [])]:
            parts = PurePosixPath(relative).parts
            if (not relative or "\\" in relative or relative.startswith("/") or DRIVE_LETTER.match(relative)
                    or ".." in parts):
                raise DownloadError(f"{path}: {relative!r} must be a relative path with / separators and no '..'")
        return manifest

    def save(self) -> None:
        record = {key: value for key, value in asdict(self).items() if key != "path"}
        self.path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    def describe(self) -> str:
        size = f"{self.archive_bytes / 1e6:.1f} MB" if self.archive_bytes else "size not yet recorded"
        return f"{self.repo} at commit {self.commit}; {size}; licence: {self.licence}"


# How each source's folder structure names the individual and the builder's extra columns (hub_datasets.species).
def _lion_row(path: str) -> dict[str, str]:
    split, name, file_name = path.split("/")  # train/<Name>/<Name>_<View>[n].png
    stem = PurePosixPath(file_name).stem
    if not stem.startswith(f"{name}_"):
        raise ValueError("expected <split>/<Name>/<Name>_<View>.png")
    return {"image": path, "identity": name, "split": split, "view": stem[len(name) + 1:].rstrip("0123456789")}


def _nyala_row(path: str) -> dict[str, str]:
    split, number, file_name = path.split("/")  # test/<number>/<sighting>_leftphoto.jpg
    side = re.search(r"_(left|right)photo", file_name)
    if not side:
        raise ValueError("expected <split>/<number>/<sighting>_(left|right)photo.jpg")
    return {"image": path, "identity": number, "split": split, "orientation": side[1]}


def _dog_row(path: str) -> dict[str, str]:
    _, number, _ = path.split("/")  # after_4_bis/<number>/<number>.<n>.jpg
    return {"image": path, "identity": number}


def _pig_row(path: str) -> dict[str, str] | None:
    root, galleries, video, kind, name, file_name = path.split("/")  # .../<video>/(Images|Masks)/<name>/<file>
    if kind == "Masks":
        return None  # named by its image's row
    if kind != "Images" or not file_name.endswith("_img.png"):
        raise ValueError("expected FaroPigReID-33/Galleries/<video>/Images/<name>/<...>_img.png")
    mask = f"{root}/{galleries}/{video}/Masks/{name}/{file_name.removesuffix('_img.png')}_msk.png"
    return {"image": path, "identity": name, "video": video, "mask": mask}


ANNOTATION_RULES: dict[str, Callable[[str], dict[str, str] | None]] = {
    "lion": _lion_row, "nyala": _nyala_row, "dog": _dog_row, "pig": _pig_row}


def annotation_rows(species: str, paths: list[str]) -> list[dict[str, str]]:
    """`annotations.csv` rows of `species` from its file paths (in their order), as the builder reads them."""
    rule, rows = ANNOTATION_RULES[species], []
    for path in paths:
        try:
            row = rule(path)
        except ValueError as error:  # too few / many folders, or a file name the rule does not know
            raise DownloadError(f"{species}: {path!r} does not fit the source's layout ({error})") from None
        if row is not None:
            rows.append(row)
    missing = {row["mask"] for row in rows if "mask" in row} - set(paths)
    if missing:
        raise DownloadError(f"{species}: the manifest lists no file {min(missing)!r} (the mask of an image it lists)")
    return rows
