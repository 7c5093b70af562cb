"""`python -m hub_datasets.download`: a generated lion source, packed like a GitHub archive and served from a local
path and from 127.0.0.1, laid out so the builder loads it; wrong checksums, wrong commits, escaping members,
interrupted and offline downloads refused without leaving a folder that looks like a species."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from hub_datasets.download import _shrink, main
from hub_datasets.source_manifests import ANNOTATION_RULES, SourceManifest, annotation_rows
from hub_datasets.specs import load_specs

SHORT_COMMIT = "d58c9b5"
COMMIT = SHORT_COMMIT + "1" * 33  # the full id an archive of that commit states
MAX_SIDE = 64
SIZES = {  # lion's own layout: <split>/<Name>/<Name>_<View>[n].png
    "train/Ayo/Ayo_Body.png": (40, 30), "train/Ayo/Ayo_Left_Face.png": (36, 30),
    "train/Ayo/Ayo_Portrait.png": (120, 90),  # above MAX_SIDE, checksum unknown: shrunk like the dev copy
    "train/Bibi/Bibi_Nose.png": (30, 40), "train/Bibi/Bibi_Left_Face2.png": (32, 32),
    "val/Chui/Chui_Body.png": (40, 30), "val/Chui/Chui_Whiskers.png": (30, 30),
}


def _png(size: tuple[int, int], seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/tvanzyl/wildlife_reidentification/tar.gz/{SHORT_COMMIT}"


def make_archive(path: Path, files: dict[str, bytes], commit: str | None = COMMIT,
                 extra: list[tarfile.TarInfo] = ()) -> Path:
    """A tar.gz laid out like GitHub's: one top folder, the commit in git archive's pax header."""
    top = f"wildlife_reidentification-{commit or 'main'}"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": commit} if commit else {}) as tar:
        folder = tarfile.TarInfo(top)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in {"README.md": b"# Wildlife Re-identification\n",
                           **{f"Lion_Data_Zero/{k}": v for k, v in files.items()},
                           "Nyala_Data_Zero/train/1/1_leftphoto.jpg": b"not ours"}.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return path


@pytest.fixture
def source(tmp_path):
    """(files, manifests folder, archive path) of a generated lion source."""
    files = {name: _png(size, seed) for seed, (name, size) in enumerate(SIZES.items())}
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    sha["train/Ayo/Ayo_Portrait.png"] = None
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "lion.json").write_text(json.dumps({
        "species": "lion", "repo": "tvanzyl/wildlife_reidentification", "commit": SHORT_COMMIT,
        "archive_url": _closed_port_url(), "archive_bytes": None, "archive_folder": "Lion_Data_Zero",
        "licence": "none stated", "max_side": MAX_SIDE, "about": "generated for the tests", "files": sha}))
    return files, manifests, make_archive(tmp_path / "source.tar.gz", files)


def _run(*args: str) -> None:
    main([str(arg) for arg in args])


def _refused(capsys, *args) -> str:
    with pytest.raises(SystemExit) as stop:
        _run(*args)
    assert stop.value.code == 1
    return capsys.readouterr().err


def _nothing_laid_out(data: Path) -> None:
    """No species folder and no leftovers (hidden downloads or staging folders)."""
    assert not data.exists() or sorted(p.name for p in data.iterdir()) == []


class _Server(BaseHTTPRequestHandler):
    payload, cut = b"", None  # cut: send only this many bytes of the announced length, then hang up

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: self.cut])

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(payload: bytes, cut: int | None = None) -> str:
        handler = type("Handler", (_Server,), {"payload": payload, "cut": cut})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/lion.tar.gz"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _check_layout(data: Path, files: dict[str, bytes]) -> None:
    lion = data / "lion"
    with open(lion / "annotations.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == list(SIZES)
    assert rows[3] == {"image": "train/Bibi/Bibi_Nose.png", "identity": "Bibi", "split": "train", "view": "Nose"}
    assert rows[4]["view"] == "Left_Face"  # the source's numbered second crop of a view
    for name, data_bytes in files.items():
        if name != "train/Ayo/Ayo_Portrait.png":
            assert (lion / name).read_bytes() == data_bytes
    with Image.open(lion / "train/Ayo/Ayo_Portrait.png") as image:
        assert image.size == (MAX_SIDE, 48)
    marker = json.loads((lion / "DOWNLOAD.json").read_text())
    assert (marker["commit"], marker["archive_commit"], marker["checked_sha256"], marker["unchecked"],
            marker["shrunk"]) == (SHORT_COMMIT, COMMIT, 6, 1, 1)
    train = load_specs(["lion:train"], data_dir=data)
    assert sorted(set(train["identity"])) == ["lion/Ayo", "lion/Bibi"] and len(train) == 5
    assert [p.name for p in data.iterdir() if p.name.startswith(".")] == []


def test_a_local_path_and_127_0_0_1_serve_a_layout_the_builder_loads(source, serve, tmp_path, capsys):
    files, manifests, archive = source
    _run("lion", "--url", archive, "--manifests", manifests, "--data_dir", tmp_path / "from_path")
    _check_layout(tmp_path / "from_path", files)
    url = serve(archive.read_bytes())
    _run("lion", "--url", url, "--manifests", manifests, "--data_dir", tmp_path / "from_http")
    _check_layout(tmp_path / "from_http", files)
    out = capsys.readouterr().out
    assert f"commit {COMMIT}" in out and "6 matched their SHA-256, 1 with no known checksum" in out


def test_an_archive_already_downloaded_is_read_in_place(source, tmp_path):
    files, manifests, archive = source
    _run("lion", "--archive", archive, "--manifests", manifests, "--data_dir", tmp_path / "data")
    _check_layout(tmp_path / "data", files)
    assert archive.is_file()  # the user's file is left alone


def test_a_wrong_checksum_is_refused_naming_the_file(source, tmp_path, capsys):
    files, manifests, _ = source
    files = {**files, "val/Chui/Chui_Body.png": _png((40, 30), seed=99)}
    archive = make_archive(tmp_path / "tampered.tar.gz", files)
    err = _refused(capsys, "lion", "--archive", archive, "--manifests", manifests, "--data_dir", tmp_path / "data")
    assert "val/Chui/Chui_Body.png has SHA-256" in err and "refused" in err
    _nothing_laid_out(tmp_path / "data")


def test_an_archive_of_another_commit_is_refused(source, tmp_path, capsys):
    files, manifests, _ = source
    archive = make_archive(tmp_path / "other.tar.gz", files, commit="0" * 40)
    err = _refused(capsys, "lion", "--archive", archive, "--manifests", manifests, "--data_dir", tmp_path / "data")
    assert f"the archive is commit {'0' * 40}, the builder expects {SHORT_COMMIT}" in err
    _nothing_laid_out(tmp_path / "data")


def test_offline_says_what_to_fetch_and_from_where(source, tmp_path, capsys):
    _, manifests, _ = source
    url = json.loads((manifests / "lion.json").read_text())["archive_url"]
    err = _refused(capsys, "lion", "--manifests", manifests, "--data_dir", tmp_path / "data")
    assert f"could not fetch {url}" in err and "Offline?" in err
    assert f"tvanzyl/wildlife_reidentification at commit {SHORT_COMMIT}" in err
    assert "python -m hub_datasets.download lion --archive PATH" in err
    _nothing_laid_out(tmp_path / "data")


def test_an_interrupted_download_leaves_nothing_that_looks_complete(source, serve, tmp_path, capsys):
    _, manifests, archive = source
    payload = archive.read_bytes()
    err = _refused(capsys, "lion", "--url", serve(payload, cut=len(payload) // 2), "--manifests", manifests,
                   "--data_dir", tmp_path / "data")
    assert "bytes short of its announced length" in err
    _nothing_laid_out(tmp_path / "data")


def test_a_truncated_archive_is_refused(source, tmp_path, capsys):
    _, manifests, archive = source
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    err = _refused(capsys, "lion", "--archive", truncated, "--manifests", manifests, "--data_dir", tmp_path / "data")
    assert "damaged or incomplete" in err
    _nothing_laid_out(tmp_path / "data")


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("member, says", [
    (_member(f"wildlife_reidentification-{COMMIT}/../../escaped.png"), "points outside the archive's folder"),
    (_member("/tmp/escaped.png"), "points outside the archive's folder"),
    (_member("elsewhere/escaped.png"), "not laid out like a GitHub archive"),
])
def test_members_escaping_the_archive_refuse_it(source, tmp_path, capsys, member, says):
    files, manifests, _ = source
    archive = make_archive(tmp_path / "evil.tar.gz", files, extra=[member])
    err = _refused(capsys, "lion", "--archive", archive, "--manifests", manifests, "--data_dir", tmp_path / "data")
    assert says in err and repr(member.name) in err
    _nothing_laid_out(tmp_path / "data")
    assert not (tmp_path / "escaped.png").exists()


def test_a_link_in_place_of_a_listed_file_is_refused(source, tmp_path, capsys):
    files, manifests, _ = source
    files = {name: data for name, data in files.items() if name != "val/Chui/Chui_Body.png"}
    link = _member(f"wildlife_reidentification-{COMMIT}/Lion_Data_Zero/val/Chui/Chui_Body.png", tarfile.SYMTYPE,
                   "/etc/passwd")
    archive = make_archive(tmp_path / "link.tar.gz", files, extra=[link])
    err = _refused(capsys, "lion", "--archive", archive, "--manifests", manifests, "--data_dir", tmp_path / "data")
    assert "is not a regular file" in err and "Chui_Body.png" in err
    _nothing_laid_out(tmp_path / "data")


def test_an_existing_species_folder_is_replaced_only_with_overwrite(source, tmp_path, capsys):
    files, manifests, archive = source
    (tmp_path / "data" / "lion").mkdir(parents=True)
    (tmp_path / "data" / "lion" / "annotations.csv").write_text("image,identity\n")
    args = ("lion", "--archive", archive, "--manifests", manifests, "--data_dir", tmp_path / "data")
    err = _refused(capsys, *args)
    assert "not written by this command" in err and "--overwrite" in err
    assert (tmp_path / "data" / "lion" / "annotations.csv").read_text() == "image,identity\n"
    _run(*args, "--overwrite")
    _check_layout(tmp_path / "data", files)
    assert f"downloaded at {SHORT_COMMIT}" in _refused(capsys, *args)


def test_record_checksums_completes_the_manifest(source, tmp_path, capsys):
    files, manifests, archive = source
    _run("lion", "--archive", archive, "--manifests", manifests, "--data_dir", tmp_path / "data", "--record_checksums")
    recorded = json.loads((manifests / "lion.json").read_text())
    assert recorded["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    assert (recorded["commit"], recorded["archive_bytes"]) == (COMMIT, archive.stat().st_size)
    assert "1 new checksums, 0 changed" in capsys.readouterr().out
    size = f"{archive.stat().st_size / 1e6:.1f} MB"
    assert f"at commit {COMMIT}; {size}" in SourceManifest.load("lion", manifests).describe()


def test_photos_are_shrunk_as_the_development_copy_shrank_nyala(tmp_path):
    """Longest side to max_side, re-encoded with JPEG quality 85 (the development copy's quantization tables)."""
    path = tmp_path / "1_leftphoto.jpg"
    Image.new("RGB", (600, 400), (90, 120, 60)).save(path, quality=75)  # the source's quality
    assert _shrink(path, 448) and not _shrink(path, 448)
    with Image.open(path) as image:
        assert image.size == (448, 299) and image.quantization[0][:2] == [5, 3]


def test_the_package_manifests_name_each_source_at_its_commit():
    for species in ANNOTATION_RULES:
        manifest = SourceManifest.load(species)
        assert manifest.archive_url == f"https://codeload.github.com/{manifest.repo}/tar.gz/{manifest.commit}"
        assert manifest.licence and manifest.files


@pytest.mark.real_data
@pytest.mark.parametrize("species", list(ANNOTATION_RULES))
def test_the_package_manifests_rebuild_the_development_copy(shared_data, species):
    """The folder-structure rules give back the development copy's annotations.csv, row for row, and the
    checksums the manifest knows are those of the development copy's files (every 25th checked, for speed)."""
    manifest = SourceManifest.load(species)
    with open(shared_data / species / "annotations.csv", newline="", encoding="utf-8") as handle:
        assert annotation_rows(species, list(manifest.files)) == list(csv.DictReader(handle))
    known = [(path, sha) for path, sha in manifest.files.items() if sha]
    for path, sha in known[::25]:
        assert hashlib.sha256((shared_data / species / path).read_bytes()).hexdigest() == sha, path
