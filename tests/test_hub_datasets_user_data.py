import json

import pytest
from hub_datasets_testing import write_csv, write_image, write_png_bomb

from hub_datasets.schema import FEATURES
from hub_datasets.user_data import build_coco, build_csv, build_folder


@pytest.fixture
def zebras(tmp_path):
    """tmp/zebras/{A,B}/*.png, a broken image file, and an image outside the root."""
    root = tmp_path / "zebras"
    for name, count in (("A", 2), ("B", 3)):
        for j in range(count):
            write_image(root / name / f"{j}.png", seed=j)
    (root / "broken.png").write_bytes(b"this is not an image")
    write_image(tmp_path / "outside.png")
    return root


# ---- folder ---------------------------------------------------------------------------------


def test_folder_builder(zebras):
    (zebras / "broken.png").unlink()
    write_image(zebras / "B" / "day2" / "x.jpg", seed=9)
    (zebras / "A" / "notes.txt").write_text("ignored")
    (zebras / ".hidden").mkdir()
    write_image(zebras / ".hidden" / "x.png")
    dataset = build_folder(zebras)
    assert dataset.features == FEATURES and len(dataset) == 6
    assert dataset["image_id"][:2] == ["A/0.png", "A/1.png"]
    assert set(dataset["identity"]) == {"zebras/A", "zebras/B"} and set(dataset["species"]) == {"zebras"}
    assert "B/day2/x.jpg" in dataset["image_id"]
    assert build_folder(zebras, species="plains_zebra")["identity"][0] == "plains_zebra/A"


def test_folder_rejects_image_in_root_and_unreadable_image(zebras):
    with pytest.raises(ValueError, match=r"broken\.png: image directly in the dataset root"):
        build_folder(zebras)
    (zebras / "broken.png").rename(zebras / "A" / "broken.png")
    with pytest.raises(ValueError, match=r"zebras: A/broken\.png: 'broken\.png' is not a readable image"):
        build_folder(zebras)
    assert len(build_folder(zebras, check_images=False)) == 6  # header check can be skipped


def test_folder_rejects_symlink_escaping_root(zebras, tmp_path):
    (zebras / "broken.png").unlink()
    (zebras / "A" / "link.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(ValueError, match=r"A/link\.png: .*outside the dataset root"):
        build_folder(zebras)


def test_folder_empty(tmp_path):
    (tmp_path / "empty" / "A").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        build_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a directory"):
        build_folder(tmp_path / "nope")


# ---- csv ------------------------------------------------------------------------------------

HEADER = ["image", "identity", "bbox", "theta", "viewpoint", "date", "encounter", "split", "notes"]


def csv_rows(*extra):
    return [
        ["A/0.png", "A", "1 2 10 12", "0.5", "left", "2024-03-01", "e1", "train", "x"],
        ["A/1.png", "A", "", "", "", "", "", "test", ""],
        ["B/0.png", "B", "[0, 0, 5, 5]", "", "right", "2024-03-02T10:00:00", "", "", ""],
        *extra,
    ]


def test_csv_builder_reads_optional_columns(zebras):
    dataset = build_csv(write_csv(zebras / "labels.csv", HEADER, csv_rows()))
    assert dataset.features == FEATURES and len(dataset) == 3
    first, second, third = dataset[0], dataset[1], dataset[2]
    assert first["identity"] == "zebras/A" and first["image_id"] == "A/0.png" and first["source"] == "labels"
    assert first["bbox"] == [1.0, 2.0, 10.0, 12.0] and first["theta"] == pytest.approx(0.5)
    assert (first["viewpoint"], first["date"], first["encounter"], first["split"]) == ("left", "2024-03-01", "e1", "train")
    assert second["bbox"] is None and second["theta"] == 0.0 and second["viewpoint"] is None
    assert third["bbox"] == [0.0, 0.0, 5.0, 5.0] and third["split"] is None


def test_csv_species_column_and_image_root(zebras, tmp_path):
    meta = tmp_path / "meta"
    path = write_csv(meta / "labels.csv", ["image", "identity", "species"], [["A/0.png", "A", "grevy"], ["B/0.png", "B", ""]])
    dataset = build_csv(path, species="plains", image_root="../zebras")
    assert dataset["identity"] == ["grevy/A", "plains/B"]


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (["A/9.png", "A"], "line 5: image file 'A/9.png' not found"),
        (["broken.png", "A"], "line 5: 'broken.png' is not a readable image"),
        (["../outside.png", "A"], "line 5: image path '../outside.png' contains '..'"),
        (["/etc/hostname", "A"], "line 5: image path '/etc/hostname' is absolute"),
        (["C:\\data\\x.png", "A"], "line 5: image path 'C:\\\\data\\\\x.png' is absolute"),
        (["A/0.png", "A"], "line 5: duplicate image_id 'A/0.png' (first at"),
        (["B/1.png", ""], "line 5: no individual name"),
        (["B/1.png", "B", "1 2 3"], "line 5: bbox '1 2 3' must be 4 numbers"),
        (["B/1.png", "B", "", "north"], "line 5: theta 'north' is not a number"),
        (["B/1.png", "B", "", "", "", "last week"], "line 5: date 'last week' is not ISO-8601"),
    ],
)
def test_csv_rejects_bad_rows_naming_the_line(zebras, bad_row, message):
    path = write_csv(zebras / "labels.csv", HEADER, csv_rows(bad_row + [""] * (len(HEADER) - len(bad_row))))
    with pytest.raises(ValueError) as err:
        build_csv(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_csv_rejects_symlink_escaping_root(zebras, tmp_path):
    (zebras / "A" / "link.png").symlink_to(tmp_path / "outside.png")
    path = write_csv(zebras / "labels.csv", ["image", "identity"], [["A/0.png", "A"], ["A/link.png", "A"]])
    with pytest.raises(ValueError, match=r"line 3: image path 'A/link\.png' resolves to .*outside the dataset root"):
        build_csv(path)


def test_csv_structure_errors(zebras):
    with pytest.raises(ValueError, match="empty"):
        build_csv(write_csv(zebras / "empty.csv", ["image", "identity"], []))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['identity'\]"):
        build_csv(write_csv(zebras / "bad.csv", ["image", "name"], [["A/0.png", "A"]]))
    with pytest.raises(ValueError, match="file not found"):
        build_csv(zebras / "nope.csv")


# ---- coco -----------------------------------------------------------------------------------


def coco(annotations, images=None):
    return {
        "images": images or [
            {"id": 1, "file_name": "A/0.png", "date_captured": "2024-03-01 08:00:00"},
            {"id": 2, "file_name": "B/0.png"},
        ],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "zebra_plains"}],
    }


GOOD_ANNOTATIONS = [
    {"id": 10, "image_id": 1, "name": "A", "bbox": [1, 2, 8, 9], "theta": 0.25, "viewpoint": "left", "species": "zebra_grevys"},
    {"id": 11, "image_id": 1, "name": "B", "bbox": [3, 3, 5, 5], "category_id": 7, "encounter": 42},
    {"uuid": "abc", "image_id": 2, "name": "B"},
]


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_coco_builder_one_row_per_annotation(zebras):
    dataset = build_coco(write_json(zebras / "ann.json", coco(GOOD_ANNOTATIONS)))
    assert dataset.features == FEATURES
    assert dataset["image_id"] == ["A/0.png#10", "A/0.png#11", "B/0.png#abc"]
    assert dataset["identity"] == ["zebra_grevys/A", "zebra_plains/B", "zebras/B"]
    first = dataset[0]
    assert first["bbox"] == [1.0, 2.0, 8.0, 9.0] and first["theta"] == pytest.approx(0.25)
    assert first["viewpoint"] == "left" and first["date"] == "2024-03-01T08:00:00"
    assert dataset[1]["encounter"] == "42" and dataset[2]["bbox"] is None


@pytest.mark.parametrize(
    "annotation, image, message",
    [
        ({"id": 12, "image_id": 3, "name": "A"}, {"id": 3, "file_name": "A/9.png"}, "annotations[3] (id 12, file 'A/9.png'): image file 'A/9.png' not found"),
        ({"id": 12, "image_id": 3, "name": "A"}, {"id": 3, "file_name": "broken.png"}, "annotations[3] (id 12, file 'broken.png'): 'broken.png' is not a readable image"),
        ({"id": 12, "image_id": 3, "name": "A"}, {"id": 3, "file_name": "../outside.png"}, "annotations[3] (id 12, file '../outside.png'): image path '../outside.png' contains '..'"),
        ({"id": 12, "image_id": 3, "name": "A"}, {"id": 3, "file_name": "/etc/hostname"}, "annotations[3] (id 12, file '/etc/hostname'): image path '/etc/hostname' is absolute"),
        ({"id": 12, "image_id": 99, "name": "A"}, None, "annotations[3]: image_id 99 is not in 'images'"),
        ({"id": 12, "image_id": 2}, None, "annotations[3] (id 12, file 'B/0.png'): no individual name"),
        ({"id": 12, "image_id": 2, "name": "A", "bbox": [1, 2]}, None, "annotations[3] (id 12, file 'B/0.png'): bbox must be 4 finite numbers"),
    ],
)
def test_coco_rejects_bad_annotations_naming_them(zebras, annotation, image, message):
    images = [{"id": 1, "file_name": "A/0.png"}, {"id": 2, "file_name": "B/0.png"}] + ([image] if image else [])
    path = write_json(zebras / "ann.json", coco(GOOD_ANNOTATIONS + [annotation], images))
    with pytest.raises(ValueError) as err:
        build_coco(path)
    assert message in str(err.value)


def test_coco_duplicate_annotation_ids_name_both(zebras):
    annotations = GOOD_ANNOTATIONS + [{"id": 10, "image_id": 1, "name": "C"}]
    with pytest.raises(ValueError, match=r"annotations\[3\] .*duplicate image_id 'A/0.png#10' \(first at .*annotations\[0\]"):
        build_coco(write_json(zebras / "ann.json", coco(annotations)))


def test_coco_structure_errors(zebras):
    with pytest.raises(ValueError, match="empty"):
        build_coco(write_json(zebras / "ann.json", coco([])))
    with pytest.raises(ValueError, match="'images' and 'annotations'"):
        build_coco(write_json(zebras / "ann.json", {"images": []}))
    (zebras / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_coco(zebras / "bad.json")
    with pytest.raises(ValueError, match=r"images\[1\]: duplicate image id 1"):
        build_coco(write_json(zebras / "ann.json", coco(GOOD_ANNOTATIONS, [{"id": 1, "file_name": "A/0.png"}] * 2)))


# ---- hostile images and boxes (issue 16) ------------------------------------------------------


def test_decompression_bomb_is_refused_naming_the_row(zebras):
    (zebras / "broken.png").unlink()  # an image outside any identity folder is a layout error, raised first
    write_png_bomb(zebras / "B" / "bomb.png")
    with pytest.raises(ValueError, match=r"B/bomb\.png.*'bomb\.png' has too many pixels"):
        build_folder(zebras / "B" / "..", species="zebra")
    path = write_csv(zebras / "labels.csv", ["image", "identity"], [["A/0.png", "A"], ["B/bomb.png", "B"]])
    with pytest.raises(ValueError, match=r"line 3: 'bomb\.png' has too many pixels"):
        build_csv(path)


def test_pixel_limit_is_configurable(zebras, monkeypatch):
    path = write_csv(zebras / "labels.csv", ["image", "identity"], [["A/0.png", "A"]])
    monkeypatch.setenv("WILDREID_MAX_IMAGE_PIXELS", "500")  # the images are 24 x 24 = 576 pixels
    with pytest.raises(ValueError, match=r"line 2: '0\.png' is 24x24 pixels, above the 500 pixel limit"):
        build_csv(path)
    monkeypatch.setenv("WILDREID_MAX_IMAGE_PIXELS", "576")
    assert len(build_csv(path)) == 1
    monkeypatch.setenv("WILDREID_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="WILDREID_MAX_IMAGE_PIXELS must be a positive integer"):
        build_csv(path)


@pytest.mark.parametrize(
    "bbox, theta, message",
    [
        ("0 0 100000 100000", "0.5", "reaches more than the image's own size past the border"),
        ("0 0 100000 100000", "", "reaches more than the image's own size past the border"),
        ("30 30 5 5", "", "does not overlap the 24x24 image"),
    ],
)
def test_boxes_far_outside_the_image_are_refused_naming_the_row(zebras, bbox, theta, message):
    path = write_csv(zebras / "labels.csv", ["image", "identity", "bbox", "theta"],
                     [["A/0.png", "A", "1 1 20 20", "0.3"], ["A/1.png", "A", bbox, theta]])
    with pytest.raises(ValueError, match=f"line 3: bbox .*{message}"):
        build_csv(path)
    coco = {"images": [{"id": 1, "file_name": "A/0.png"}],
            "annotations": [{"id": 7, "image_id": 1, "name": "A", "bbox": [float(v) for v in bbox.split()],
                             "theta": float(theta or 0)}]}
    (zebras / "ann.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=f"annotations\\[0\\].*bbox .*{message}"):
        build_coco(zebras / "ann.json")


def test_boxes_overhanging_the_border_a_little_are_kept(zebras):
    path = write_csv(zebras / "labels.csv", ["image", "identity", "bbox", "theta"],
                     [["A/0.png", "A", "-10 -10 40 40", "0.7"], ["A/1.png", "A", "12 12 30 30", ""]])
    assert len(build_csv(path)) == 2
