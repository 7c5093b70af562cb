"""evaluate.py: protocols on synthetic data, the results file and figures, the `evaluate` name clash,
clear failures, and an independent numpy check on real lion data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modeling_wildreid import WildReIDConfig, WildReIDModel
from wildreid.embedding import embed_dataset, load_embedder
from wildreid.evaluation.runner import EvaluationRequest, run_evaluation
from wildreid.provenance import code_version
from hub_datasets.specs import load_spec

REPO = Path(__file__).resolve().parents[1]
SYNTH = "synthetic[n_species=2,n_identities=10,images_per_identity=4,image_size=64,seed=7]"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained but deterministic wildreid model that says it was trained on synthetic-stripes only."""
    path = tmp_path_factory.mktemp("model")
    config = WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64, training_species=["synthetic-stripes"])
    WildReIDModel.with_imagenet_backbone(config).save_pretrained(path)
    return path


def request(model_dir: Path, tmp_path: Path, **overrides) -> EvaluationRequest:
    return EvaluationRequest(**{"datasets": [f"{SYNTH}:test"], "model": str(model_dir), "num_workers": 0,
                                "output": str(tmp_path / "results.json"), **overrides})


def test_leave_one_out_results_file_table_and_figures(model_dir, tmp_path, capsys):
    results = run_evaluation(request(model_dir, tmp_path, plots=True))
    assert set(results["species"]) == {"synthetic-spots", "synthetic-stripes"}
    assert results["species"]["synthetic-stripes"]["seen_in_training"] is True
    assert results["species"]["synthetic-spots"]["seen_in_training"] is False  # zero-shot
    saved = json.loads((tmp_path / "results.json").read_text())
    for name, metrics in saved["species"].items():
        assert {"top1", "top5", "map", "n_queries", "n_identities", "seen_in_training"} <= set(metrics)
        assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and metrics["n_queries"] == 8  # 2 identities x 4
    assert saved["mean"]["top1"] == pytest.approx(np.mean([m["top1"] for m in saved["species"].values()]))
    assert saved["model"] == str(model_dir) and saved["protocol"] == "leave-one-out"
    assert saved["git_commit"] == code_version()["git_commit"] and isinstance(saved["git_dirty"], bool)
    table = capsys.readouterr().out
    assert "| synthetic-spots | no (zero-shot) |" in table and "**Mean**" in table
    for figure in ("results_cmc.png", "results_matches.png"):
        assert (tmp_path / figure).stat().st_size > 1000


def write_csv_dataset(root: Path) -> Path:
    """Six synthetic individuals, photos alternately in split `gallery` and `query` (a closed set)."""
    from hub_datasets.synthetic import generate_rows

    lines = ["image,identity,split"]
    for index, row in enumerate(generate_rows(n_species=1, n_identities=6, images_per_identity=4, image_size=64, seed=8)):
        name = row["image_id"].replace("/", "_")
        (root / name).write_bytes(row["image"]["bytes"])
        lines.append(f"{name},{row['identity'].split('/')[-1]},{'gallery' if index % 2 else 'query'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_closed_set_queries_against_gallery(model_dir, tmp_path):
    csv = write_csv_dataset(tmp_path)
    results = run_evaluation(request(model_dir, tmp_path, protocol="closed-set", datasets=[f"csv[species=zebra]:{csv}:query"],
                                     gallery=[f"csv[species=zebra]:{csv}:gallery"]))
    zebra = results["species"]["zebra"]
    assert zebra["n_queries"] == 12 and zebra["n_gallery"] == 12 and zebra["n_identities"] == 6
    assert zebra["seen_in_training"] is False and results["protocol"] == "closed-set"


def test_open_set_fits_threshold_without_test_queries(model_dir, tmp_path):
    results = run_evaluation(request(model_dir, tmp_path, protocol="open-set", datasets=[SYNTH]))
    for metrics in results["species"].values():
        assert metrics["n_unknown_queries"] > 0 and metrics["n_known_queries"] > 0
        assert 0 <= metrics["baks"] <= 1 and 0 <= metrics["baus"] <= 1 and metrics["threshold"] is not None
        assert 0 <= metrics["auroc_new"] <= 1


def test_unknown_species_and_empty_split_fail_clearly(model_dir, tmp_path):
    with pytest.raises(ValueError, match="zebraa"):
        run_evaluation(request(model_dir, tmp_path, datasets=["zebraa:test"]))
    with pytest.raises(ValueError, match="split 'validation'"):
        run_evaluation(request(model_dir, tmp_path, datasets=[f"{SYNTH}:validation"]))
    with pytest.raises(ValueError, match="closed-set needs --gallery"):
        run_evaluation(request(model_dir, tmp_path, protocol="closed-set"))


def test_evaluate_py_runs_from_the_repo_root_despite_the_library_name(model_dir, tmp_path):
    """`python evaluate.py` puts the repo root first on sys.path, where evaluate.py shadows the library."""
    output = tmp_path / "cli.json"
    result = subprocess.run(
        [sys.executable, "evaluate.py", "--model", str(model_dir), "--datasets", f"{SYNTH}:test", "--output",
         str(output), "--num_workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(output.read_text())["protocol"] == "leave-one-out"
    bad = subprocess.run([sys.executable, "evaluate.py", "--model", str(model_dir), "--datasets", "pigg"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error: " in bad.stderr and "pigg" in bad.stderr


def test_metric_module_loads_through_the_bridge_from_the_repo_root():
    script = ("from wildreid.evaluation.hf_evaluate import load_reid_metric; m = load_reid_metric(); "
              "r = m.compute(predictions=[[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], references=['a', 'a', 'b', 'b']); "
              "assert r['top1'] == 1.0, r; print('ok')")
    # `python -c` from the root: '' leads sys.path, so a plain `import evaluate` would get evaluate.py.
    shadowed = subprocess.run(  # found, not imported: importing evaluate.py would load torch for nothing
        [sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('evaluate').origin)"], cwd=REPO,
        capture_output=True, text=True, timeout=300)
    assert shadowed.stdout.strip().endswith("evaluate.py")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def _numpy_leave_one_out(vectors: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Independent 20-line reference: cosine leave-one-out top-1 and mAP, ties broken pessimistically."""
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    hits, average_precisions = [], []
    for q in range(len(labels)):
        others = np.arange(len(labels)) != q
        relevant = labels[others] == labels[q]
        if not relevant.any():
            continue
        scores = similarity[q, others]
        # Sort by score descending; among equal scores put non-relevant first (pessimistic).
        order = np.lexsort((relevant, -scores))
        ranked = relevant[order]
        hits.append(bool(ranked[0]))
        positions = np.flatnonzero(ranked) + 1
        average_precisions.append(np.mean(np.arange(1, len(positions) + 1) / positions))
    return float(np.mean(hits)), float(np.mean(average_precisions))


def test_lion_val_matches_an_independent_numpy_computation(shared_data, tmp_path):
    results = run_evaluation(EvaluationRequest(datasets=["lion:val"], model="imagenet:tf_efficientnet_lite0",
                                               data_dir=str(shared_data), num_workers=0, batch_size=32))
    lion = load_spec("lion:val", data_dir=shared_data)
    embedder = load_embedder("imagenet:tf_efficientnet_lite0")
    embedded = embed_dataset(embedder.model, lion, embedder.processor, batch_size=32, progress=False)
    labels = np.asarray(lion["identity"])[embedded.indices]
    top1, mean_ap = _numpy_leave_one_out(embedded.vectors.astype(np.float64), labels)
    assert results["species"]["lion"]["n_queries"] == 146
    assert results["species"]["lion"]["top1"] == pytest.approx(top1, abs=1e-9)
    assert results["species"]["lion"]["map"] == pytest.approx(mean_ap, abs=1e-6)


def test_local_needs_no_model_and_fusion_is_calibrated_on_validation(model_dir, tmp_path):
    data = "synthetic[n_species=1,n_identities=5,images_per_identity=3,image_size=96,seed=4]"
    local = run_evaluation(EvaluationRequest(datasets=[f"{data}:train"], method="local", num_workers=0))
    assert local["method"] == "local" and local["model"] == "local features (SIFT)"
    stripes = local["species"]["synthetic-stripes"]
    assert stripes["n_queries"] == len(load_spec(f"{data}:train")) and 0 <= stripes["top1"] <= 1
    assert local["local_features"]["max_keypoints"] == 512  # the extractor settings are in the results
    budget = run_evaluation(EvaluationRequest(datasets=[f"{data}:train"], method="local", num_workers=0,
                                              max_keypoints=8))
    assert budget["local_features"]["max_keypoints"] == 8
    with pytest.raises(ValueError, match="fitted on --val_datasets, a training split"):
        run_evaluation(request(model_dir, tmp_path, method="fusion"))
    for method in ("fusion", "auto"):
        fused = run_evaluation(request(model_dir, tmp_path, method=method, datasets=[f"{data}:train"],
                                       val_datasets=[f"{SYNTH[:-1]},max_identities=4]:train"], shortlist=5))
        result = fused["species"]["synthetic-stripes"]
        assert fused["method"] == method and result["n_queries"] == stripes["n_queries"]
        # What was fitted, and on how many validation queries, is in the results.
        assert result["fit"]["validation_queries"] > 0 and result["fit"]["combiner"] in ("mean", "logistic")
    assert result["chosen"] in ("global", "local", "fusion") and result["fit"]["choice"] == result["chosen"]


def test_flip_test_needs_a_model():
    with pytest.raises(ValueError, match="--flip_test"):
        EvaluationRequest(datasets=["lion:val"], method="local", flip_test=True).validate()


def test_exclude_same_encounter_skips_individuals_seen_once(model_dir, tmp_path):
    # Six individuals, four photos each: individual 0's photos are one sighting, the others' two sightings of two.
    from hub_datasets.synthetic import generate_rows

    rows = list(generate_rows(n_species=1, n_identities=6, images_per_identity=4, image_size=96, seed=8))
    seen_once = rows[0]["identity"]
    lines = ["image,identity,encounter"]
    for index, row in enumerate(rows):
        name, identity = row["image_id"].replace("/", "_"), row["identity"].split("/")[-1]
        (tmp_path / name).write_bytes(row["image"]["bytes"])
        sighting = "once" if row["identity"] == seen_once else index // 2
        lines.append(f"{name},{identity},{identity}-{sighting}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    spec = f"csv[species=zebra]:{tmp_path / 'labels.csv'}"
    for method, model in (("global", str(model_dir)), ("local", None)):
        plain = run_evaluation(EvaluationRequest(datasets=[spec], model=model, method=method, num_workers=0))
        strict = run_evaluation(EvaluationRequest(datasets=[spec], model=model, method=method, num_workers=0,
                                                  exclude_same_encounter=True))
        assert plain["species"]["zebra"]["n_queries"] == 24 and plain["exclude_same_encounter"] is False
        assert strict["species"]["zebra"]["n_queries"] == 20 and strict["species"]["zebra"]["n_skipped"] == 4
        assert strict["exclude_same_encounter"] is True
    with pytest.raises(ValueError, match="--exclude_same_encounter"):
        EvaluationRequest(datasets=[spec], model=str(model_dir), protocol="open-set", exclude_same_encounter=True).validate()


def test_exclude_same_encounter_names_a_species_left_without_answers(model_dir, tmp_path, capsys):
    # okapi: every individual photographed in one sighting only, so excluding it leaves no query an answer;
    # zebra: two sightings each. Global and local paths both evaluate zebra and name okapi, never fail the run.
    from hub_datasets.synthetic import generate_rows

    rows = list(generate_rows(n_species=1, n_identities=6, images_per_identity=4, image_size=96, seed=9))
    specs = []
    for species, sightings_per_identity in (("okapi", 1), ("zebra", 2)):
        lines = ["image,identity,encounter"]
        for index, row in enumerate(rows):
            name, identity = f"{species}_{row['image_id'].replace('/', '_')}", row["identity"].split("/")[-1]
            (tmp_path / name).write_bytes(row["image"]["bytes"])
            lines.append(f"{name},{identity},{identity}-{index % 4 * sightings_per_identity // 4}")
        (tmp_path / f"{species}.csv").write_text("\n".join(lines) + "\n")
        specs.append(f"csv[species={species}]:{tmp_path / f'{species}.csv'}")
    for method, model in (("global", str(model_dir)), ("local", None)):
        results = run_evaluation(EvaluationRequest(datasets=specs, model=model, method=method, num_workers=0,
                                                   exclude_same_encounter=True))
        assert set(results["species"]) == {"zebra"} and results["species"]["zebra"]["n_queries"] == 24
        assert set(results["left_out"]) == {"okapi"} and "own encounter" in results["left_out"]["okapi"]
        assert "Not evaluated: okapi" in capsys.readouterr().out
        plain = run_evaluation(EvaluationRequest(datasets=specs, model=model, method=method, num_workers=0))
        assert set(plain["species"]) == {"okapi", "zebra"} and "left_out" not in plain
    with pytest.raises(ValueError, match="okapi: no query has another image"):
        run_evaluation(EvaluationRequest(datasets=specs[:1], model=str(model_dir), num_workers=0,
                                         exclude_same_encounter=True))
