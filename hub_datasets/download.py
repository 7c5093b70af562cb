"""Download the built-in species (lion, nyala, dog, pig) from their sources, at the commits the builders expect.

    python -m hub_datasets.download lion nyala dog pig [--data_dir DIR] [--archive PATH | --url URL] [--overwrite]
    python -m hub_datasets.download nyala --record_checksums       # maintainer, with internet: complete a manifest

`sources/<species>.json` states each source: repository, commit, archive URL, folder inside the archive, licence,
the longest side the development copy shrank photos to, and each file the builder needs with its SHA-256 (null
where unknown: files the development copy re-encoded). Lion and nyala share one archive.

Checked: each file's SHA-256 (a mismatch refuses the species, naming the file), the commit the archive states
(git archive's pax header), every member name (absolute or `..` refuses the archive). Only regular files are
read, written to paths from the manifest, never from the archive. The archive's own SHA-256 is recorded, not
compared: GitHub makes archives on request and does not promise the same bytes over time.

All or nothing: the archive goes to a hidden temporary file, each species to a hidden staging folder (files,
photos above `max_side` shrunk, `annotations.csv` from the source's folder structure, `DOWNLOAD.json` last)
renamed into place when complete. An existing species folder is replaced only with `--overwrite`.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any

from PIL import Image
from tqdm import tqdm

from .paths import RowImageError, check_image_file, resolve_data_dir
from .source_manifests import ANNOTATION_RULES, DRIVE_LETTER, MANIFESTS, DownloadError, SourceManifest, annotation_rows

MARKER = "DOWNLOAD.json"  # provenance, written last into every species folder this command lays out
TIMEOUT_S = 60
CHUNK = 1 << 20
SHRUNK_JPEG_QUALITY = 85  # the development copy's re-encode (its quantization tables); the sources use 75


def fetch(url: str, folder: Path, label: str) -> Path:
    """Download `url` (http(s), file: or a plain path) into a hidden temporary file in `folder`; removed on any
    failure. A connection that ends before the announced length is an error, not a shorter archive."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file", "ftp"):
        url = Path(url).expanduser().resolve().as_uri()
    descriptor, name = tempfile.mkstemp(prefix=f".download-{label}-", suffix=".part", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length, received = response.headers.get("Content-Length"), 0
            with tqdm(total=int(length) if length else None, unit="B", unit_scale=True, desc=label,
                      disable=None) as progress:
                while chunk := response.read(CHUNK):
                    received += out.write(chunk)
                    progress.update(len(chunk))
        short = int(length) - received if length else 0
    except http.client.IncompleteRead as error:  # http.client's own check, on the Python versions that make it
        short = error.expected
    except BaseException:
        os.unlink(name)
        raise
    if short:
        os.unlink(name)
        raise DownloadError(f"{label}: the download of {url} stopped {short:,} bytes short of its announced "
                            "length; nothing was laid out, run it again")
    return Path(name)


@dataclass
class _Staging:
    """One species being laid out in its hidden staging folder."""

    manifest: SourceManifest
    folder: Path
    found: dict[str, str] = field(default_factory=dict)  # path -> SHA-256 of what the archive holds

    def take(self, relative: str, handle: IO[bytes]) -> None:
        if relative in self.found:
            raise DownloadError(f"{self.manifest.species}: the archive holds {relative!r} twice")
        target = self.folder.joinpath(*relative.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            self.found[relative] = _sha256(handle, out)


def _extract(archive: Path, stagings: list[_Staging]) -> str | None:
    """Check the commit a tar archive states (git archive's pax header; returned), then stream it once, writing
    each staging's files."""
    with tarfile.open(archive, "r:*") as tar:
        commit = tar.pax_headers.get("comment")
        for staging in stagings:
            manifest = staging.manifest
            if commit is not None and not commit.startswith(manifest.commit):
                raise DownloadError(f"{manifest.species}: the archive is commit {commit}, the builder expects "
                                    f"{manifest.commit} ({manifest.repo})")
        top = None
        for member in tar:
            name = member.name
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if not parts or name.startswith(("/", "\\")) or DRIVE_LETTER.match(name) or ".." in parts:
                raise DownloadError(f"archive member {name!r} points outside the archive's folder; the whole "
                                    f"archive {archive} is refused")
            if top is None:
                top = parts[0]
            if parts[0] != top or (len(parts) == 1 and not member.isdir()):
                raise DownloadError(f"{archive} is not laid out like a GitHub archive (one top folder, "
                                    f"<repo>-<commit>/): {name!r} lies outside {top!r}")
            relative = "/".join(parts[1:])
            for staging in stagings:
                prefix = f"{staging.manifest.archive_folder}/" if staging.manifest.archive_folder else ""
                wanted = relative.startswith(prefix) and relative[len(prefix):] in staging.manifest.files
                if wanted and not member.isreg():
                    raise DownloadError(f"archive member {name!r} is not a regular file (a link, folder or device); "
                                        "refused")
                if wanted:
                    staging.take(relative[len(prefix):], tar.extractfile(member))
    return commit


def _check_files(staging: _Staging, record: bool) -> None:
    manifest = staging.manifest
    missing = [path for path in manifest.files if path not in staging.found]
    if missing:
        raise DownloadError(
            f"{manifest.species}: the archive lacks {len(missing)} of the manifest's {len(manifest.files)} files, "
            f"e.g. {missing[0]!r} under <top folder>/{manifest.archive_folder} (is archive_folder in "
            f"{manifest.path} right?)")
    wrong = [path for path, expected in manifest.files.items() if expected and expected != staging.found[path]]
    if wrong and not record:
        path = wrong[0]
        raise DownloadError(
            f"{manifest.species}: {path} has SHA-256 {staging.found[path]}, the manifest expects "
            f"{manifest.files[path]}" + (f" ({len(wrong) - 1} more files differ)" if len(wrong) > 1 else "")
            + f"; refused: the archive is not {manifest.repo} at {manifest.commit}, or was damaged")


def _shrink(path: Path, max_side: int) -> bool:
    """Shrink an image whose longest side exceeds `max_side`, as the development copy did; True if it did."""
    with Image.open(path) as image:
        scale = max_side / max(image.size)
        if scale >= 1:
            return False
        image_format = "JPEG" if image.format == "MPO" else image.format  # a camera's JPEG with a preview inside
        resample = Image.Resampling.NEAREST if image.mode in ("1", "P") else Image.Resampling.LANCZOS
        small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    small.save(path, format=image_format, **({"quality": SHRUNK_JPEG_QUALITY} if image_format == "JPEG" else {}))
    return True


def _finish(staging: _Staging, target: Path, provenance: dict[str, Any], overwrite: bool) -> str:
    """Check and shrink the images, write annotations.csv and the marker, rename the staging folder into place."""
    manifest, shrunk = staging.manifest, 0
    for relative in manifest.files:
        path = staging.folder.joinpath(*relative.split("/"))
        try:
            check_image_file(path, f"{manifest.species}: {relative}")
        except RowImageError as error:
            raise DownloadError(str(error)) from None
        shrunk += _shrink(path, manifest.max_side)
    rows = annotation_rows(manifest.species, list(manifest.files))
    with open(staging.folder / "annotations.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    checked = sum(1 for sha in manifest.files.values() if sha)
    marker = {"species": manifest.species, "repo": manifest.repo, "commit": manifest.commit,
              "licence": manifest.licence, **provenance, "files": len(manifest.files), "checked_sha256": checked,
              "unchecked": len(manifest.files) - checked, "max_side": manifest.max_side, "shrunk": shrunk,
              "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (staging.folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    _check_target(manifest, target, overwrite)  # again: another run may have laid it out meanwhile
    replaced = None
    if target.exists():
        replaced = Path(tempfile.mkdtemp(prefix=f".replaced-{manifest.species}-", dir=target.parent))
        target.rename(replaced / manifest.species)
    staging.folder.rename(target)
    if replaced is not None:
        shutil.rmtree(replaced)
    unchecked = (f", {len(manifest.files) - checked} with no known checksum, accepted unchecked (see `about` in "
                 f"{manifest.path.name})" if checked < len(manifest.files) else "")
    return (f"{manifest.species}: {len(manifest.files)} files, {checked} matched their SHA-256{unchecked}, "
            f"{shrunk} shrunk to {manifest.max_side} px -> {target}")


def _check_target(manifest: SourceManifest, target: Path, overwrite: bool) -> None:
    """An existing species folder (an empty one aside) is replaced only with --overwrite."""
    if not overwrite and target.exists() and not (target.is_dir() and not any(target.iterdir())):
        held = json.loads((target / MARKER).read_text()).get("commit") if (target / MARKER).is_file() else None
        raise DownloadError(f"{manifest.species}: {target} exists (" + (f"downloaded at {held}" if held else
                            "not written by this command") + "); nothing was changed. Pass --overwrite to replace it")


def download_source(manifests: list[SourceManifest], data_dir: Path, *, archive: str | None = None,
                    url: str | None = None, overwrite: bool = False, record: bool = False) -> None:
    """Fetch `url` (default: the manifests' archive URL) or read `archive`, check it and lay out the species
    that share it, printing a line per step. Every species is checked before any is moved into place."""
    label, first, stagings = "+".join(m.species for m in manifests), manifests[0], []
    url = url or first.archive_url
    if archive is None:
        print(f"{label}: fetching {url} ({first.describe()})", flush=True)
        try:
            path = fetch(url, data_dir, label)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            names = " ".join(m.species for m in manifests)
            raise DownloadError(
                f"{names}: could not fetch {url} ({error}).\nOffline? On a machine with internet, download\n"
                f"    {first.archive_url}\n({first.describe()}), bring it to this machine and run\n"
                f"    python -m hub_datasets.download {names} --archive PATH --data_dir {data_dir}\n"
                "or point --url at a mirror of that archive.") from None
    elif not Path(archive).expanduser().is_file():
        raise DownloadError(f"{label}: no archive at {archive}")
    else:
        path = Path(archive).expanduser()
    try:
        for manifest in manifests:
            folder = Path(tempfile.mkdtemp(prefix=f".staging-{manifest.species}-", dir=data_dir))
            stagings.append(_Staging(manifest, folder))
        try:
            stated = _extract(path, stagings)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise DownloadError(f"{label}: {path} is damaged or incomplete ({type(error).__name__}: {error})") from None
        with open(path, "rb") as handle:
            provenance = {"archive": url if archive is None else str(path), "archive_sha256": _sha256(handle),
                          "archive_bytes": path.stat().st_size, "archive_commit": stated}
        print(f"{label}: archive SHA-256 {provenance['archive_sha256']}, {provenance['archive_bytes']:,} bytes, "
              + (f"commit {stated}" if stated else "states no commit (not made by git archive): files checked only"))
        for staging in stagings:
            _check_files(staging, record)
        for staging in stagings:
            if record:
                print(_record(staging.manifest, staging.found, stated, provenance["archive_bytes"]))
            print(_finish(staging, data_dir / staging.manifest.species, provenance, overwrite))
    finally:
        for staging in stagings:
            shutil.rmtree(staging.folder, ignore_errors=True)  # whatever was not renamed into place
        if archive is None:
            path.unlink(missing_ok=True)


def _record(manifest: SourceManifest, found: dict[str, str], stated: str | None, archive_bytes: int) -> str:
    """Maintainer mode: write the checksums of a real download (and the full commit id) into the manifest."""
    new = sum(1 for sha in manifest.files.values() if sha is None)
    changed = sum(1 for path, sha in manifest.files.items() if sha and sha != found[path])
    manifest.files = {path: found[path] for path in manifest.files}
    manifest.archive_bytes = archive_bytes
    if stated and stated.startswith(manifest.commit):
        manifest.commit = stated
    manifest.save()
    return f"{manifest.species}: recorded into {manifest.path}: {new} new checksums, {changed} changed"


def _sha256(source: IO[bytes], copy_to: IO[bytes] | None = None) -> str:
    """SHA-256 of what `source` holds, copied into `copy_to` on the way when given."""
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return digest.hexdigest()


def download(species: list[str], data_dir: str | os.PathLike | None = None, *, archive: str | None = None,
             url: str | None = None, overwrite: bool = False, record: bool = False,
             manifests: Path = MANIFESTS) -> None:
    """Download and lay out `species` under `data_dir` (default `$WILDREID_DATA`), printing a line per step.
    Every source is tried; a DownloadError at the end names what failed."""
    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[SourceManifest]] = {}
    for manifest in [SourceManifest.load(name, manifests) for name in dict.fromkeys(species)]:
        _check_target(manifest, root / manifest.species, overwrite)
        groups.setdefault(manifest.archive_url, []).append(manifest)
    if (archive or url) and len(groups) > 1:
        raise DownloadError("--archive and --url stand for one source's archive; name only species of one source "
                            f"(these need {len(groups)}: {'; '.join(' '.join(m.species for m in g) for g in groups.values())})")
    failures = []
    for group in groups.values():
        try:
            download_source(group, root, archive=archive, url=url, overwrite=overwrite, record=record)
        except DownloadError as error:
            failures.append(str(error))
    if failures:
        raise DownloadError("\n".join(failures))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub_datasets.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("species", nargs="+", choices=list(ANNOTATION_RULES), help="species to download")
    parser.add_argument("--data_dir", default=None, help="where to lay them out (default: $WILDREID_DATA or ../shared/data)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", default=None, help="the source's archive, already downloaded")
    source.add_argument("--url", default=None, help="fetch the archive from here (a mirror, or a local path)")
    parser.add_argument("--overwrite", action="store_true", help="replace species folders that exist")
    parser.add_argument("--record_checksums", "--record-checksums", action="store_true",
                        help="maintainer: write every file's SHA-256 (and the full commit) of this download into the manifests")
    parser.add_argument("--manifests", type=Path, default=MANIFESTS, help="folder of source manifests (default: "
                        "the package's hub_datasets/sources)")
    args = parser.parse_args(argv)
    try:
        download(args.species, args.data_dir, archive=args.archive, url=args.url, overwrite=args.overwrite,
                 record=args.record_checksums, manifests=args.manifests)
    except DownloadError as error:
        parser.exit(1, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
