"""Small on-disk fixtures for the hub_datasets tests: tiny generated images, never real data."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int = 0, size: int = 24, fmt: str | None = None) -> Path:
    """A small random RGB image at `path` (format from the suffix unless `fmt`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def fake_lion_data(data_dir: Path, identities: int = 3, images: int = 3) -> Path:
    """`<data_dir>/lion/` in the real source's layout: annotations.csv (image, identity, split, view)."""
    root = data_dir / "lion"
    rows = []
    for i in range(identities):
        split = "val" if i == 0 else "train"
        for j in range(images):
            relative = f"{split}/Lion{i}/Lion{i}_{j}.png"
            write_image(root / relative, seed=i * 100 + j)
            rows.append([relative, f"Lion{i}", split, "Left_Face" if j % 2 else "left_face"])
    write_csv(root / "annotations.csv", ["image", "identity", "split", "view"], rows)
    return data_dir


def fake_dog_data(data_dir: Path, identities: int = 5, images: int = 2) -> Path:
    """`<data_dir>/dog/` in the real source's layout: annotations.csv (image, identity) only."""
    root = data_dir / "dog"
    rows = []
    for i in range(identities):
        for j in range(images):
            relative = f"after_4_bis/{i}/{i}.{j}.jpg"
            write_image(root / relative, seed=1000 + i * 10 + j)
            rows.append([relative, str(i)])
    write_csv(root / "annotations.csv", ["image", "identity"], rows)
    return data_dir


def write_png_bomb(path: Path, side: int = 30000) -> Path:
    """A valid 1-bit PNG of `side` x `side` zero pixels: ~100 KB on disk, `side`**2 pixels once decoded
    (the decompression bomb of issue 16; 30000 px is 900 M pixels, above PIL's own limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def write_indexed_and_calibration_photos(photos: Path) -> None:
    """Twelve generated individuals of five photos in `photos`: `indexed.csv` lists two of each (a gallery's),
    `calibration.csv` the other three (labelled photos to calibrate on)."""
    from hub_datasets.synthetic import generate_rows

    photos.mkdir(parents=True, exist_ok=True)
    indexed, calibration = ["image,identity"], ["image,identity"]
    for row in generate_rows(n_species=1, n_identities=12, images_per_identity=5, image_size=96, seed=3):
        name = row["image_id"].replace("/", "_")
        (photos / name).write_bytes(row["image"]["bytes"])
        shot = int(Path(name).stem.rsplit("_", 1)[1])
        (indexed if shot < 2 else calibration).append(f"{name},{row['identity'].split('/')[-1]}")
    (photos / "indexed.csv").write_text("\n".join(indexed) + "\n")
    (photos / "calibration.csv").write_text("\n".join(calibration) + "\n")
