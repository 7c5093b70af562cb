"""The one preprocessing: decoding of every mode, EXIF, boxes and rotation, and clear errors."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_wildreid import ImageLoadError, WildReIDImageProcessor, crop_to_annotation, load_image


def gradient_rgb(width=64, height=48) -> Image.Image:
    """Red grows left to right, green top to bottom: position can be read back from a pixel."""
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 90)], -1).round().astype(np.uint8))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradient_rgb().convert("L"),
        lambda: gradient_rgb().convert("RGBA"),
        lambda: gradient_rgb().convert("CMYK"),
        lambda: gradient_rgb().convert("P"),
        lambda: gradient_rgb().convert("LA"),
        lambda: Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)),
        lambda: Image.fromarray(np.linspace(-3, 7, 48 * 64).reshape(48, 64).astype(np.float32), mode="F"),
    ],
    ids=["L", "RGBA", "CMYK", "P", "LA", "I;16", "F"],
)
def test_every_mode_becomes_rgb(make):
    image = make()
    loaded = load_image(image)
    assert loaded.mode == "RGB" and loaded.size == (64, 48)
    pixels = WildReIDImageProcessor(image_size=32)(image)["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32) and torch.isfinite(pixels).all()


def test_sixteen_bit_is_rescaled_not_clipped():
    array = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    assert abs(int(np.asarray(load_image(Image.fromarray(array)))[0, 0, 0]) - 127) <= 1


def test_transparent_pixels_become_black():
    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    assert np.asarray(load_image(rgba)).max() == 0


def test_inputs_from_paths_bytes_arrays_tensors_and_dataset_dicts(tmp_path):
    image = gradient_rgb()
    path = tmp_path / "a.png"
    image.save(path)
    reference = np.asarray(image)
    array_hwc = reference
    tensor_chw = torch.from_numpy(reference.copy()).permute(2, 0, 1)
    for source in (str(path), path, path.read_bytes(), array_hwc, tensor_chw, {"bytes": None, "path": str(path)},
                   {"bytes": path.read_bytes(), "path": None}, array_hwc.astype(np.float32) / 255.0):
        assert np.array_equal(np.asarray(load_image(source)), reference), type(source)


def test_exif_orientation_is_applied():
    image = gradient_rgb(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = load_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.size == (48, 64)
    # After a 90 degree clockwise turn the original top-left (dark red, dark green) sits top-right.
    top_right = np.asarray(loaded)[2, -3].astype(int)
    assert top_right[0] < 40 and top_right[1] < 40


def test_axis_aligned_crop_and_clipping():
    image = gradient_rgb(64, 48)
    crop = crop_to_annotation(image, [10, 5, 20, 30])
    assert crop.size == (20, 30)
    assert np.array_equal(np.asarray(crop), np.asarray(image)[5:35, 10:30])
    assert crop_to_annotation(image, [50, 40, 100, 100]).size == (14, 8)


def test_rotated_crop_reads_the_rotated_box():
    # A bright bar drawn along a 30-degree line: the box rotated by 30 degrees about the bar centre must
    # come out with the bar horizontal through its middle row.
    canvas = np.zeros((200, 200, 3), dtype=np.uint8)
    theta = math.radians(30)
    for t in np.linspace(-50, 50, 2000):
        x, y = 100 + t * math.cos(theta), 100 + t * math.sin(theta)
        canvas[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2] = 255
    crop = np.asarray(crop_to_annotation(Image.fromarray(canvas), [60, 80, 80, 40], theta))
    assert crop.shape[:2] == (40, 80)
    rows = crop[..., 0].mean(axis=1)
    assert abs(int(rows.argmax()) - 20) <= 1
    assert rows.max() > 150 and rows[:12].max() < 10 and rows[-12:].max() < 10


@pytest.mark.parametrize("bbox", [[0, 0, 0, 10], [0, 0, 10, -3], [500, 500, 10, 10], [1, 2, 3], [0, 0, float("nan"), 4]])
def test_bad_boxes_are_reported(bbox):
    with pytest.raises(ImageLoadError, match="bbox"):
        crop_to_annotation(gradient_rgb(), bbox, name="zebra_17.jpg")


def test_corrupt_truncated_and_missing_files_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image at all" * 10)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(encode(gradient_rgb(256, 256), "JPEG")[:600])
    for path, reason in [(corrupt, "not a readable image"), (truncated, "cannot decode"), (tmp_path / "absent.png", "not found")]:
        with pytest.raises(ImageLoadError, match=reason) as info:
            WildReIDImageProcessor(image_size=32)([str(path)])
        assert str(path) in str(info.value)


def test_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    import modeling_wildreid.image_processing_wildreid as processing

    monkeypatch.setattr(processing, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "big.png"
    gradient_rgb(64, 48).save(path)
    with pytest.raises(ImageLoadError, match="pixel limit"):
        load_image(path)


def test_large_jpeg_decodes_at_reduced_scale_without_box(tmp_path):
    path = tmp_path / "large.jpg"
    gradient_rgb(2000, 1600).save(path, quality=90)
    processor = WildReIDImageProcessor(image_size=224)
    assert processor.crop(str(path)).size[0] < 2000  # JPEG draft decoding kicked in
    assert processor.crop(str(path), bbox=[1000, 800, 500, 400]).size == (500, 400)  # full-resolution box


def test_processor_normalises_with_its_mean_and_std():
    processor = WildReIDImageProcessor(image_size=8, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 1.0])
    pixels = processor(Image.new("RGB", (20, 10), (255, 0, 128)))["pixel_values"][0]
    assert torch.allclose(pixels[:, 0, 0], torch.tensor([2.0, -1.0, 128 / 255 - 0.5]), atol=1e-5)


def test_batches_with_boxes_and_thetas():
    processor = WildReIDImageProcessor(image_size=16)
    images = [gradient_rgb(), gradient_rgb(80, 60)]
    out = processor(images, bboxes=[[0, 0, 10, 10], None], thetas=[0.3, 0.0])["pixel_values"]
    assert out.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="must match"):
        processor(images, bboxes=[[0, 0, 10, 10]])


def test_processor_save_load_round_trip(tmp_path):
    processor = WildReIDImageProcessor(image_size=300, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    processor.save_pretrained(tmp_path)
    reloaded = WildReIDImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()


def test_processor_size_dict_and_flags_like_transformers(tmp_path):
    import json

    processor = WildReIDImageProcessor(size={"height": 24, "width": 40}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    assert processor(gradient_rgb())["pixel_values"].shape == (1, 3, 24, 40)
    raw = WildReIDImageProcessor(size=16, do_normalize=False)(gradient_rgb())["pixel_values"]
    uint8 = WildReIDImageProcessor(size=16).to_uint8(gradient_rgb())
    assert torch.equal(raw[0], uint8.float() / 255)
    unscaled = WildReIDImageProcessor(size=16, do_rescale=False, do_normalize=False)(gradient_rgb())["pixel_values"]
    assert torch.equal(unscaled[0], uint8.float())
    as_is = WildReIDImageProcessor(do_resize=False)
    assert as_is([gradient_rgb(30, 20), gradient_rgb(30, 20)])["pixel_values"].shape == (2, 3, 20, 30)
    with pytest.raises(ValueError, match="one size"):
        as_is([gradient_rgb(30, 20), gradient_rgb(20, 30)])
    # A preprocessor_config.json written before `size` and the do_* flags still loads, to the same pixels.
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "WildReIDImageProcessor", "image_size": 32, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25], "resample": 2, "fast_downscale": True}))
    old = WildReIDImageProcessor.from_pretrained(tmp_path)
    assert old.size == {"height": 32, "width": 32} and old.image_size == 32 and old.do_normalize
    new = WildReIDImageProcessor(size=32, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    assert torch.equal(old(gradient_rgb())["pixel_values"], new(gradient_rgb())["pixel_values"])
    assert "image_size" not in new.to_dict() and new.to_dict()["size"] == {"height": 32, "width": 32}


def test_exact_downscale_matches_one_full_resolution_resize(tmp_path):
    path = tmp_path / "camera.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(path, quality=90)
    reference = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    exact = WildReIDImageProcessor(image_size=224, fast_downscale=False).to_uint8(str(path)).permute(1, 2, 0).numpy()
    assert np.array_equal(exact, reference)
    fast = WildReIDImageProcessor(image_size=224).to_uint8(str(path)).permute(1, 2, 0).numpy()
    assert not np.array_equal(fast, reference)  # the fast path really is a different (cheaper) computation


def test_huge_rotated_and_axis_aligned_boxes_allocate_bounded_memory():
    """Issue 16: a [0, 0, 100000, 100000] box at theta 0.5 made a 30 GB crop. Run under an address-space
    limit 1.5 GB above the interpreter's, so the old behaviour fails with MemoryError instead of
    taking the machine down."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import resource
        from PIL import Image
        from modeling_wildreid.image_processing_wildreid import crop_to_annotation

        with open("/proc/self/statm") as handle:
            used = int(handle.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 1_500_000_000, resource.RLIM_INFINITY))
        image = Image.new("RGB", (640, 480), (200, 100, 50))
        for theta in (0.5, 0.0):
            crop = crop_to_annotation(image, [0, 0, 100000, 100000], theta)
            print(*crop.size)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    (w, h), aligned = [tuple(map(int, line.split())) for line in done.stdout.strip().splitlines()]
    assert w * h <= 4 * 640 * 480 and abs(w - h) <= 1  # square box: sampled at reduced resolution
    assert aligned == (640, 480)  # clipped to the image


def test_bounded_rotated_crop_samples_the_same_content():
    """A rotated crop too large for its budget is the full-resolution crop at reduced resolution."""
    import modeling_wildreid.image_processing_wildreid as processing

    image = gradient_rgb(200, 160)
    full = crop_to_annotation(image, [20, 30, 120, 80], 0.4)
    old_limit = processing.MAX_CROP_PIXELS
    try:
        processing.MAX_CROP_PIXELS = 120 * 80 // 4
        half = crop_to_annotation(image, [20, 30, 120, 80], 0.4)
    finally:
        processing.MAX_CROP_PIXELS = old_limit
    assert half.size == (60, 40)
    reference = np.asarray(full.resize((60, 40), Image.Resampling.BILINEAR), dtype=np.float64)
    assert np.abs(np.asarray(half, dtype=np.float64) - reference).mean() < 4


def test_decompression_bomb_is_named_and_limit_configurable(tmp_path, monkeypatch):
    from hub_datasets_testing import write_png_bomb

    bomb = write_png_bomb(tmp_path / "bomb.png")
    with pytest.raises(ImageLoadError, match=r"bomb\.png: too many pixels"):
        WildReIDImageProcessor(image_size=32)([str(bomb)])
    small = tmp_path / "small.png"
    gradient_rgb(64, 48).save(small)
    monkeypatch.setenv("WILDREID_MAX_IMAGE_PIXELS", "3000")
    with pytest.raises(ImageLoadError, match=r"small\.png: 64x48 pixels exceeds the 3,000 pixel limit"):
        load_image(small)
