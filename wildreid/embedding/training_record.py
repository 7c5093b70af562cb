"""Which of the datasets a fit is about to use did the model itself train on?

Fusion, auto's method choice and the "new individual" threshold are fitted on labelled images. On images the
model learned, its global scores are higher than on new photos (lite0 trained 3,600 steps on the four species:
97.1 % top-1 on pig:train, 28.9 % on pig:test; bench/results/identification_accuracy_frozen4_3600.json, pig's
fusion fit), so a fit there trusts the global model too much. Measured on closed-set lion: fusion fitted on the training images of the model that
gave its global scores ranked 45.2 % top-1, against 48.4 % for local matching alone
(bench/results/identification_accuracy_closed_set_trained_fusion.json).

The model folder's `training_config.yaml` (written by train.py), else its config.json's `training_datasets` (a
model folder saved without its run: the shipped model, a Hub download), else for an ONNX export those of the folder
it came from, names the training specs. A spec overlaps one of them when both read the same source and split:
sampling parameters such as max_identities only subsample the same images, so they are ignored, while a
synthetic seed or n_identities makes other images. Individuals held out of training with `resplit_from`
(`lion[resplit_from=train,split_strategy=disjoint_set]:test` beside the same spec's `:train`) do not overlap.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from hub_datasets.specs import ANNOTATION_PARAMETERS, RESPLIT_PARAMETERS, SAMPLING_PARAMETERS, DatasetSpec, parse_spec

from .onnx_runtime import EXPORT_INFO_FILE

logger = logging.getLogger(__name__)

TRAINING_CONFIG_FILE = "training_config.yaml"


def training_specs(model_name_or_path: str | os.PathLike | None) -> list[str]:
    """The dataset specs a local model folder was trained on; empty for Hub ids, baselines and exports
    without a training record."""
    if model_name_or_path is None:
        return []
    folder = Path(model_name_or_path)
    path = folder / TRAINING_CONFIG_FILE
    if not path.is_file():
        # A model folder without its run (the shipped model, a Hub download): its config records the specs.
        recorded = _config_training_datasets(folder)
        if recorded:
            return recorded
        source = _export_source(folder)  # an ONNX export: the folder it was exported from, if still here
        return training_specs(source) if source is not None else []
    try:
        record = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        logger.warning("%s: unreadable (%s); cannot tell which images the model trained on", path, error)
        return []
    datasets = record.get("datasets") if isinstance(record, dict) else None
    return [str(spec) for spec in datasets] if isinstance(datasets, list) else []


def _config_training_datasets(folder: Path) -> list[str]:
    """`training_datasets` of the folder's config.json (WildReIDConfig; train.py sets it), or []."""
    try:
        recorded = json.loads((folder / "config.json").read_text()).get("training_datasets")
    except (OSError, ValueError, AttributeError):
        return []
    return [str(spec) for spec in recorded] if isinstance(recorded, list) else []


def _export_source(folder: Path) -> Path | None:
    try:
        source = json.loads((folder / EXPORT_INFO_FILE).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(source, str) or not (Path(source) / TRAINING_CONFIG_FILE).is_file():
        return None
    return Path(source)


def _source(spec: DatasetSpec) -> tuple:
    """What decides the images: kind, name, path and the source's own parameters (a synthetic seed); not how
    they are cropped (`center_box`)."""
    own = tuple((k, v) for k, v in spec.params
                if k not in SAMPLING_PARAMETERS and k not in RESPLIT_PARAMETERS and k not in ANNOTATION_PARAMETERS)
    return spec.kind, spec.name, os.path.normpath(spec.location) if spec.location else None, own


def _resplit(spec: DatasetSpec) -> tuple:
    return tuple((k, v) for k, v in spec.params if k in RESPLIT_PARAMETERS)


def _source_split(spec: DatasetSpec) -> str | None:
    """The source split whose rows a spec can read; None when it can read any."""
    resplit = dict(_resplit(spec))
    if resplit:
        return resplit.get("resplit_from")
    return spec.split


def _overlaps(a: DatasetSpec, b: DatasetSpec) -> bool:
    """Same source, and rows that can be shared: the same resplit (or none) with either taking every split or
    the same split; otherwise the source splits they draw from meet (a resplit without `resplit_from` draws
    from all of them and cuts the same images differently)."""
    if _source(a) != _source(b):
        return False
    if _resplit(a) == _resplit(b):
        return a.split is None or b.split is None or a.split == b.split
    split_a, split_b = _source_split(a), _source_split(b)
    return split_a is None or split_b is None or split_a == split_b


def held_out_spec(model_name_or_path: str | os.PathLike | None, spec: str) -> str | None:
    """The individuals the model held out of training from the rows `spec` reads, as a spec: its training spec
    `X[resplit_from=S,...]:train` turned into `:test`, with `spec`'s sampling and annotation parameters (e.g.
    max_identities, center_box).
    None when the model held none out of that source split."""
    wanted = parse_spec(spec)
    if _resplit(wanted) or wanted.split is None:
        return None
    for text in training_specs(model_name_or_path):
        try:
            trained = parse_spec(text)
        except ValueError:
            continue
        resplit = dict(_resplit(trained))
        if trained.split == "train" and resplit.get("resplit_from") == wanted.split and _source(trained) == _source(wanted):
            sampling = tuple((k, v) for k, v in wanted.params if k in SAMPLING_PARAMETERS or k in ANNOTATION_PARAMETERS)
            own = tuple((k, v) for k, v in trained.params if k not in SAMPLING_PARAMETERS and k not in ANNOTATION_PARAMETERS)
            return str(DatasetSpec(trained.kind, trained.name, trained.location, "test", tuple(sorted(own + sampling))))
    return None


def fitted_on_training_images(model_name_or_path: str | os.PathLike | None, fit_specs: Sequence[str],
                              what: str) -> list[str]:
    """Warn (naming both specs) for each of `fit_specs` that overlaps the model's training data; returns them
    as "fit spec (trained on: training spec)" lines, for a results record."""
    trained = []
    for text in training_specs(model_name_or_path):
        try:
            trained.append((text, parse_spec(text)))
        except ValueError:
            continue  # written by another wildreid version: it cannot be compared, so no overlap is claimed
    found = []
    for text in fit_specs:
        spec = parse_spec(text)
        matches = [name for name, other in trained if _overlaps(spec, other)]
        if matches:
            held_out = held_out_spec(model_name_or_path, text)
            found.append(f"{text} (trained on: {', '.join(matches)}"
                         + (f"; individuals held out of training: {held_out})" if held_out else ")"))
    if found:
        logger.warning(
            "%s is fitted on images %s was trained on: %s. Its global scores are higher there than on new "
            "photos, so the fit trusts the global model too much; fit on labelled images it has not seen.",
            what, model_name_or_path, "; ".join(found))
    return found
