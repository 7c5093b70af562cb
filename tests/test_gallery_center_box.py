"""A gallery built from `center_box` specs crops its queries the same way: plain files (`identify --images`),
specs without a box and review-app uploads; specs that would crop a gallery two ways are refused."""
from __future__ import annotations

import logging

import pytest

from hub_datasets.synthetic import generate_rows
from modeling_wildreid import WildReIDConfig, WildReIDModel
from wildreid.identification.gallery import Gallery
from wildreid.identification.review.uploads import read_photos
from wildreid.identification.workflows import build_gallery, identify


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Eight photos of four individuals (a CSV of them), and an untrained lite0 model at 64 px."""
    folder = tmp_path_factory.mktemp("photos")
    lines = ["image,identity"]
    for row in generate_rows(n_species=1, n_identities=4, images_per_identity=2, image_size=96, seed=3):
        name = row["image_id"].replace("/", "_")
        (folder / name).write_bytes(row["image"]["bytes"])
        lines.append(f"{name},{row['identity'].split('/')[-1]}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    model = folder / "model"
    WildReIDModel.with_imagenet_backbone(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64)).save_pretrained(model)
    return folder, str(model)


def test_queries_get_the_gallery_s_center_box_whatever_form_they_come_in(photos, tmp_path):
    folder, model = photos
    gallery_dir = tmp_path / "gallery"
    build_gallery(model, [f"csv[species=zebra,center_box=0.5]:{folder / 'labels.csv'}"], gallery_dir, num_workers=0)
    assert Gallery.load(gallery_dir).center_box == 0.5
    files = sorted(str(path) for path in folder.glob("*.jpg"))
    by_file, _ = identify(gallery_dir, images=files, num_workers=0)
    by_spec, _ = identify(gallery_dir, datasets=[f"csv[species=zebra]:{folder / 'labels.csv'}"], num_workers=0)
    # Each query is a gallery photo cropped the gallery's way, so it finds itself at cosine 1.
    assert [round(result.top_score, 4) for result in by_file + by_spec] == [1.0] * 16
    whole_dir = tmp_path / "whole"
    build_gallery(model, [f"csv[species=zebra]:{folder / 'labels.csv'}"], whole_dir, num_workers=0)
    assert Gallery.load(whole_dir).center_box is None
    boxed, _ = identify(whole_dir, datasets=[f"csv[species=zebra,center_box=0.5]:{folder / 'labels.csv'}"],
                        num_workers=0)
    assert max(result.top_score for result in boxed) < 0.999  # the control: another crop is another picture


def test_specs_cropping_two_ways_are_refused_and_a_differing_query_spec_is_named(photos, tmp_path, caplog):
    folder, model = photos
    labels = folder / "labels.csv"
    with pytest.raises(ValueError, match=r"center_box=0.5\).*whole photo\).*same center_box"):
        build_gallery(model, [f"csv[species=zebra,center_box=0.5,max_identities=2]:{labels}",
                              f"csv[species=okapi]:{labels}"], tmp_path / "mixed", num_workers=0)
    build_gallery(model, [f"csv[species=zebra,center_box=0.5]:{labels}"], tmp_path / "gallery", num_workers=0)
    with caplog.at_level(logging.WARNING, logger="wildreid.identification.workflows"):
        identify(tmp_path / "gallery", datasets=[f"csv[species=zebra,center_box=0.8]:{labels}"], num_workers=0)
    assert "asks for center_box=0.8" in caplog.text and "center_box=0.5" in caplog.text


def test_an_upload_without_a_drawn_box_gets_the_gallery_s_center_box(photos):
    folder, _ = photos
    file = sorted(folder.glob("*.jpg"))[0]
    plain, boxed, drawn = (read_photos([file], center_box=0.5)[0], read_photos([file])[0],
                           read_photos([file], [[0, 0, 40, 30]], center_box=0.5)[0])
    assert plain.bbox == [24.0, 24.0, 48.0, 48.0] and plain.crop.size == (48, 48)
    assert boxed.bbox is None and boxed.crop.size == (96, 96)
    assert drawn.bbox == [0.0, 0.0, 40.0, 30.0] and drawn.crop.size == (40, 30)
