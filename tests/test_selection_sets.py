"""Every choice is made on training-side data: no config under configs/ and no benchmark selection step reads a
set the README or model card reports (lion:val, nyala:test, dog:test, pig:test, the closed-set test parts).

The bench scripts are read, not imported (importing one limits this process to one thread): each selection
step's specs are module-level literals, found here with `ast`."""
from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import yaml

from hub_datasets.reported_sets import check_training_side, reported_rows_in, selection_set
from hub_datasets.specs import load_specs

REPO = Path(__file__).resolve().parents[1]

# script -> (module-level name, the specs a choice is made on)
SELECTION_STEPS = {
    "bench/identification_accuracy.py": ("SETS", lambda sets: [validation for _, _, validation in sets.values()]),
    "bench/keypoint_budget.py": ("SPLITS", lambda splits: list(splits.values())),
    "bench/local_global_fusion.py": ("SETS", lambda sets: [fit for _, fit in sets.values()]),
    "bench/onnx_int8_accuracy.py": ("CALIBRATION", list),
    "bench/aliked_scales.py": ("DEFAULT_SPECS", list),
    "bench/aliked_descriptor_precision.py": ("DEFAULT_SPEC", lambda spec: [spec]),
    "bench/small_crop_gap.py": ("DEFAULT_SPEC", lambda spec: [spec]),
}


def module_literal(path: Path, name: str):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} no longer defines {name} as a literal: update SELECTION_STEPS")


@pytest.mark.parametrize("spec, reported", [
    ("lion:val", "lion:val"), ("nyala:test", "nyala:test"), ("dog[max_identities=100]:test", "dog:test"),
    ("pig", "pig:test"), ("lion[split_strategy=closed_set]:test", "lion[split_strategy=closed_set]:test"),
    ("nyala[split_strategy=disjoint_set]:train", "nyala[split_strategy=disjoint_set]:train"),
    ("lion[resplit_from=val,split_strategy=disjoint_set]:test", "lion:val"),
    ("lion:train", None), ("nyala[max_identities=100]:train", None), ("lion[split_strategy=closed_set]:train", None),
    (selection_set("dog"), None), (selection_set("pig", "train"), None), ("synthetic:test", None),
    ("csv:/data/zebras.csv:test", None),
])
def test_reported_rows_are_recognised_in_every_spelling(spec, reported):
    assert reported_rows_in(spec) == reported


def test_the_selection_fifth_is_the_held_out_fifth_of_the_training_split():
    assert selection_set("lion") == "lion[resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:test"
    synthetic = "synthetic[n_identities=20,images_per_identity=4,seed=1]"
    validate = load_specs([f"{synthetic}[resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:test"
                           .replace("][", ",")])
    train = load_specs([f"{synthetic}:train"])
    assert set(validate["identity"]) < set(train["identity"])


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_no_config_chooses_or_trains_on_a_reported_set(config):
    values = yaml.safe_load(config.read_text())
    check_training_side(values.get("val_datasets") or [], f"val_datasets of configs/{config.name}")
    check_training_side(values.get("datasets") or [], f"datasets of configs/{config.name}")


@pytest.mark.parametrize("script", sorted(SELECTION_STEPS))
def test_no_benchmark_selection_step_reads_a_reported_set(script):
    name, specs_of = SELECTION_STEPS[script]
    check_training_side(specs_of(module_literal(REPO / script, name)), f"{script} {name}")


def test_the_recipe_experiment_chooses_on_the_held_out_fifth():
    used = {node.attr for node in ast.walk(ast.parse((REPO / "experiments" / "recipe.py").read_text()))
            if isinstance(node, ast.Attribute)}
    assert "selection_sets" in used and not used & {"EVAL_SETS", "eval_set"}


def test_the_shipped_point_is_chosen_on_the_held_out_species_training_splits():
    """transfer_mix.py chooses the shipped model's step and share, and zero_shot.py reads that choice: the
    held-out species are measured on their training splits (`fit_set`), never their reported sets."""
    used = {node.attr for node in ast.walk(ast.parse((REPO / "experiments" / "transfer_mix.py").read_text()))
            if isinstance(node, ast.Attribute)}
    assert "fit_set" in used and not used & {"EVAL_SETS", "eval_set"}
    check_training_side(list(module_literal(REPO / "experiments" / "common.py", "TRAIN_SETS").values()),
                        "experiments/common.py TRAIN_SETS (fit_set's splits)")


def test_a_choice_on_a_reported_set_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"val_datasets of x\.yaml: 'dog\[max_identities=100\]:test' holds images "
                                         r"of dog:test.*dog\[resplit_from=train"):
        check_training_side(["lion:train", "dog[max_identities=100]:test"], "val_datasets of x.yaml")


def test_training_that_validates_on_a_reported_set_warns(caplog, tmp_path):
    from wildreid.training import TrainingConfig

    with caplog.at_level(logging.WARNING):
        TrainingConfig(datasets=["synthetic:train"], val_datasets=["lion:val"], max_steps=1,
                       output_dir=str(tmp_path / "run")).validate()
    assert "lion:val holds images of lion:val" in caplog.text
