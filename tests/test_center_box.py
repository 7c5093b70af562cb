"""`center_box`: a box around the central part of every photo that has none, from the upright (EXIF-applied)
size, honoured by the crops every consumer takes; bad values and unreadable photos fail or warn clearly."""
from __future__ import annotations

import logging

import pytest
from PIL import Image

from hub_datasets.specs import load_spec
from modeling_wildreid.image_processing_wildreid import WildReIDImageProcessor


def _photo(path, size, orientation=None):
    image = Image.new("RGB", size, (120, 80, 40))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


def test_rows_without_a_box_get_the_central_fraction_and_boxed_rows_keep_theirs():
    plain = load_spec("synthetic[n_species=1,n_identities=3,images_per_identity=2,image_size=64,center_box=0.5]:train")
    assert plain["bbox"] == [[16.0, 16.0, 32.0, 32.0]] * len(plain)
    spec = "synthetic[n_species=1,n_identities=3,images_per_identity=2,image_size=64,with_boxes=true{}]:train"
    assert load_spec(spec.format(",center_box=0.5"))["bbox"] == load_spec(spec.format(""))["bbox"]
    assert load_spec(spec.format(",center_box=1"))["bbox"] == load_spec(spec.format(""))["bbox"]


def test_the_box_follows_exif_orientation_and_the_crop_is_the_photo_s_middle(tmp_path):
    _photo(tmp_path / "a_1.jpg", (200, 100))
    _photo(tmp_path / "a_2.jpg", (200, 100), orientation=6)  # stored landscape, shown portrait (100 x 200)
    (tmp_path / "labels.csv").write_text("image,identity\na_1.jpg,a\na_2.jpg,a\n")
    dataset = load_spec(f"csv[species=zebra,center_box=0.6]:{tmp_path / 'labels.csv'}")
    by_name = dict(zip(dataset["image_id"], dataset["bbox"]))
    assert [round(v, 3) for v in by_name["a_1.jpg"]] == [40.0, 20.0, 120.0, 60.0]
    assert [round(v, 3) for v in by_name["a_2.jpg"]] == [20.0, 40.0, 60.0, 120.0]
    processor = WildReIDImageProcessor()
    rotated = dataset[list(dataset["image_id"]).index("a_2.jpg")]
    assert processor.crop(rotated["image"], rotated["bbox"]).size == (60, 120)


def test_bad_fractions_name_the_spec_and_unreadable_photos_are_left_for_the_loader(tmp_path, caplog):
    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(ValueError, match=rf"center_box={float(bad)} must be in \(0, 1\]") as error:
            load_spec(f"synthetic[n_species=1,n_identities=2,images_per_identity=2,image_size=32,center_box={bad}]")
        assert "dataset spec 'synthetic[" in str(error.value)
    with pytest.raises(ValueError, match="must be a number"):
        load_spec("lion[center_box=middle]:val")
    _photo(tmp_path / "b_1.jpg", (80, 40))
    (tmp_path / "b_2.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "labels.csv").write_text("image,identity\nb_1.jpg,b\nb_2.jpg,b\n")
    with caplog.at_level(logging.WARNING, logger="hub_datasets.boxes"):
        dataset = load_spec(f"csv[species=zebra,check_images=false,center_box=0.5]:{tmp_path / 'labels.csv'}")
    assert dict(zip(dataset["image_id"], dataset["bbox"])) == {"b_1.jpg": [20.0, 10.0, 40.0, 20.0],
                                                                "b_2.jpg": None}
    assert "1 unreadable image(s) without a box: b_2.jpg" in caplog.text
