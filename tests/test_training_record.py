"""A fit (fusion, auto's choice, the gallery threshold) on images the model trained on is named in a warning
and in the results, because the model's global scores are inflated there."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from modeling_wildreid import WildReIDConfig, WildReIDModel
from wildreid.embedding.onnx_runtime import EXPORT_INFO_FILE
from wildreid.embedding.shipped_model import shipped_model
from hub_datasets.specs import parse_spec
from wildreid.embedding.training_record import fitted_on_training_images, held_out_spec, training_specs
from wildreid.evaluation.runner import EvaluationRequest, run_evaluation

SYNTH = "synthetic[n_species=1,n_identities=5,images_per_identity=3,image_size=96,seed=4]"


def trained_folder(tmp_path: Path, datasets: list[str]) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "training_config.yaml").write_text(yaml.safe_dump({"datasets": datasets, "max_steps": 10}))
    return folder


def test_a_fit_spec_overlaps_when_source_and_split_match_whatever_its_subsampling(tmp_path, caplog):
    data = tmp_path / "zebras.csv"
    model = trained_folder(tmp_path, ["lion:train", f"csv[species=zebra]:{data}:train"])
    with caplog.at_level(logging.WARNING, logger="wildreid.embedding.training_record"):
        found = fitted_on_training_images(model, ["lion[max_identities=5]:train", "lion:val", "nyala:train",
                                                  "lion[split_strategy=closed_set]:test",
                                                  f"csv[species=zebra]:{tmp_path}/./zebras.csv:train", "lion"],
                                          "--method fusion")
    assert found == ["lion[max_identities=5]:train (trained on: lion:train)",
                     # a resplit cuts the same images differently: its test part can hold training images
                     "lion[split_strategy=closed_set]:test (trained on: lion:train)",
                     f"csv[species=zebra]:{tmp_path}/./zebras.csv:train (trained on: csv[species=zebra]:{data}:train)",
                     "lion (trained on: lion:train)"]  # a spec without a split reads every split
    assert "--method fusion is fitted on images" in caplog.text and "lion[max_identities=5]:train" in caplog.text
    assert "lion:val" not in caplog.text and "nyala" not in caplog.text


def test_individuals_held_out_of_training_by_resplit_from_do_not_overlap(tmp_path):
    held_out = "lion[resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]"
    model = trained_folder(tmp_path, [held_out + ":train"])
    assert fitted_on_training_images(model, [held_out + ":test", "lion:test"], "fit") == []
    other_cut = held_out.replace("0.2", "0.3") + ":test"
    assert fitted_on_training_images(model, ["lion:train", other_cut], "fit") == [
        f"lion:train (trained on: {held_out}:train; individuals held out of training: {held_out}:test)",
        f"{other_cut} (trained on: {held_out}:train)"]


def test_held_out_spec_names_the_individuals_a_model_kept_out_of_training(tmp_path):
    model = trained_folder(tmp_path, ["lion[resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:train",
                                      "pig:train"])
    found = held_out_spec(model, "lion[max_identities=5]:train")
    assert found == "lion[max_identities=5,resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:test"
    assert str(parse_spec(found)) == found
    assert [held_out_spec(model, spec) for spec in ("lion:val", "lion", "pig:train", "nyala:train")] == [None] * 4
    assert held_out_spec(tmp_path / "no_record", "lion:train") is None


def test_a_model_folder_without_its_run_answers_from_its_config(tmp_path):
    """The shipped model and Hub downloads carry no training_config.yaml: config.json's training_datasets answers,
    so a fit on the shipped model's training images is named and its held-out individuals are found."""
    folder = tmp_path / "saved"
    resplit = "pig[resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]"
    WildReIDConfig(training_datasets=[f"{resplit}:train"]).save_pretrained(folder)
    assert held_out_spec(folder, "pig:train") == f"{resplit}:test"
    assert fitted_on_training_images(folder, ["pig:train", "pig:test"], "fit") == [
        f"pig:train (trained on: {resplit}:train; individuals held out of training: {resplit}:test)"]
    shipped = held_out_spec(shipped_model(), "nyala[max_identities=100]:train")
    assert shipped == "nyala[max_identities=100,resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:test"
    (folder / "config.json").write_text("{not json")
    assert training_specs(folder) == []


def test_no_training_record_means_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert fitted_on_training_images(tmp_path, ["lion:train"], "fit") == []
        assert fitted_on_training_images("imagenet:tf_efficientnet_lite0", ["lion:train"], "fit") == []
        assert fitted_on_training_images(None, ["lion:train"], "fit") == []
    assert caplog.text == ""


def test_an_onnx_export_answers_for_the_folder_it_was_exported_from(tmp_path):
    model = trained_folder(tmp_path, ["pig:train"])
    export = tmp_path / "export"
    export.mkdir()
    (export / EXPORT_INFO_FILE).write_text(json.dumps({"format": "wildreid-onnx", "source": str(model)}))
    assert training_specs(export) == ["pig:train"]
    (export / EXPORT_INFO_FILE).write_text("{not json")
    assert training_specs(export) == []


def test_evaluate_records_a_fusion_fitted_on_the_models_training_images(tmp_path, caplog):
    folder = tmp_path / "model"
    WildReIDModel.with_imagenet_backbone(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64)
                                         ).save_pretrained(folder)
    (folder / "training_config.yaml").write_text(yaml.safe_dump({"datasets": [f"{SYNTH}:train"]}))
    request = dict(datasets=[f"{SYNTH}:test"], model=str(folder), method="fusion", num_workers=0, shortlist=5)
    with caplog.at_level(logging.WARNING, logger="wildreid.embedding.training_record"):
        reused = run_evaluation(EvaluationRequest(**request, val_datasets=[f"{SYNTH}:train"]))
    assert reused["fitted_on_training_images"] == [f"{SYNTH}:train (trained on: {SYNTH}:train)"]
    assert "trusts the global model too much" in caplog.text
    other_images = SYNTH.replace("seed=4", "seed=5")
    unseen = run_evaluation(EvaluationRequest(**request, val_datasets=[f"{other_images}:train"]))
    assert "fitted_on_training_images" not in unseen


def test_center_box_crops_the_same_images_so_overlap_ignores_it_and_the_held_out_spec_keeps_the_asked_crop(tmp_path):
    model = trained_folder(tmp_path, ["nyala[center_box=0.6,resplit_from=train,split_strategy=disjoint_set,"
                                      "test_fraction=0.2]:train", "lion:train"])
    assert fitted_on_training_images(model, ["lion[center_box=0.8]:train"], "fit") == [
        "lion[center_box=0.8]:train (trained on: lion:train)"]
    found = held_out_spec(model, "nyala[center_box=0.5]:train")
    assert found == "nyala[center_box=0.5,resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:test"
    assert held_out_spec(model, "nyala:train") == \
        "nyala[resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:test"
