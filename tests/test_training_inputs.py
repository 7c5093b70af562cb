"""Hostile and mistyped training / evaluation inputs (issue 16): no code run from a checkpoint folder,
numeric flags and output paths checked before any work, model load errors that name the path."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_wildreid import WildReIDConfig, WildReIDModel
from wildreid.embedding import load_wildreid_model
from wildreid.training import Trainer, TrainingConfig, train
from wildreid.training.checkpoints import TrainingProgress

REPO = Path(__file__).resolve().parents[1]
SYNTH = "synthetic[n_species=1,n_identities=6,images_per_identity=4,image_size=64,seed=3]"
TINY = dict(datasets=[f"{SYNTH}:train"], backbone="tf_efficientnet_lite0", backbone_pretrained=False, image_size=64,
            identities_per_batch=2, images_per_identity=2, num_workers=0, warmup_steps=1, log_with="none",
            neck_calibration_images=8)


class WritesMarker:
    """Unpickling this writes a file: the payload a checkpoint folder must never get to run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_planted_pickle_in_a_checkpoint_is_never_unpickled(tmp_path):
    out = tmp_path / "run"
    train(TrainingConfig.from_dict({**TINY, "output_dir": str(out), "max_steps": 2, "save_steps": 2}))
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert not list(checkpoint.glob("custom_checkpoint_*.pkl"))  # progress is JSON, not a pickled object
    marker = tmp_path / "marker"
    torch.save(WritesMarker(marker), checkpoint / "custom_checkpoint_0.pkl")
    resumed = TrainingConfig.from_dict({**TINY, "output_dir": str(out), "max_steps": 3, "save_steps": 3,
                                        "resume_from_checkpoint": "latest"})
    with pytest.raises(ValueError, match=r"custom_checkpoint_0\.pkl: accelerate would unpickle it"):
        Trainer(resumed).run()
    assert not marker.exists()
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    summary = Trainer(resumed).run()  # without the planted file the run resumes from step 2
    assert summary["total_steps"] == 3 and not marker.exists()
    assert json.loads((out / "checkpoints" / "checkpoint-3" / "wildreid_progress.json").read_text())["step"] == 3


@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable training progress file"),
    (json.dumps({"step": "2", "best_map": 0.1, "best_step": 1}), "expected {step, best_map, best_step} numbers"),
    (json.dumps({"step": 2, "best_map": 0.1, "best_step": 1, "__class__": 1}), "expected"),
    (json.dumps({"step": -1, "best_map": 0.1, "best_step": 1}), "step must be >= 0"),
])
def test_progress_file_is_checked(tmp_path, content, message):
    (tmp_path / "wildreid_progress.json").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        TrainingProgress.load(tmp_path)
    assert str(tmp_path / "wildreid_progress.json") in str(info.value)


@pytest.mark.parametrize("override, message", [
    ({"max_steps": 0}, "--max_steps must be an integer >= 1, got 0"),
    ({"max_steps": -3}, "--max_steps must be an integer >= 1, got -3"),
    ({"identities_per_batch": 0}, "--identities_per_batch must be an integer >= 1"),
    ({"num_workers": -1}, "--num_workers must be an integer >= 0"),
    ({"image_size": 8}, "--image_size must be an integer >= 32"),
    ({"image_size": 100000}, "--image_size must be <= 4096"),
    ({"learning_rate": -1.0}, "--learning_rate must be > 0"),
    ({"learning_rate": float("nan")}, "--learning_rate must be a finite number"),
    ({"epochs": 0.0, "max_steps": None}, "--epochs must be > 0"),
    ({"min_lr_ratio": 2.0}, "--min_lr_ratio must be between 0 and 1"),
    ({"margin_min": 0.6, "margin_max": 0.5}, "need 0 <= margin_min <= margin_max"),
    ({"save_steps": 0}, "--save_steps must be an integer >= 1"),
])
def test_numeric_options_are_validated_up_front(tmp_path, override, message):
    config = TrainingConfig.from_dict({**TINY, "output_dir": str(tmp_path / "run"), "max_steps": 2, **override})
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config.validate()


def test_output_dir_that_is_a_file_is_refused_before_loading_anything(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    for output_dir, message in ((target, "is a file, not a folder"), (target / "run", "is a file, so nothing can be created")):
        config = TrainingConfig.from_dict({**TINY, "datasets": ["synthetic[images_per_identity=1000]"],
                                           "output_dir": str(output_dir), "max_steps": 2})
        with pytest.raises(ValueError, match=message):
            Trainer(config)  # the 12,000-image dataset above is never generated


def test_train_py_reports_bad_flags_without_a_traceback(tmp_path):
    for flags, message in ((["--max_steps", "0"], "error: --max_steps must be an integer >= 1, got 0"),
                           (["--max_steps", "2", "--init_from", "/no/such/folder"], "error: model /no/such/folder: no such folder")):
        done = subprocess.run([sys.executable, str(REPO / "train.py"), "--datasets", SYNTH, "--output_dir",
                               str(tmp_path / "run"), *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_model_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model /no/such/folder: no such folder"):
        load_wildreid_model("/no/such/folder")
    folder = tmp_path / "model"
    WildReIDModel(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=64)).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=f"cannot load model weights {weights}"):
        load_wildreid_model(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"model {folder}: no config.json"):
        load_wildreid_model(str(folder))


def test_evaluate_output_under_a_file_is_refused_before_evaluating(tmp_path, capsys):
    import importlib.util

    # Loaded under another name: a plain `import evaluate` would be the Hugging Face library (or shadow it).
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main
    blocker = tmp_path / "results"
    blocker.write_text("x")
    code = main(["--model", "/no/such/folder", "--datasets", "synthetic[images_per_identity=1000]",
                 "--output", str(blocker / "loo.json")])
    assert code == 2 and "is a file, so nothing can be created under it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "x", "--datasets", "synthetic", "--batch_size", "0"])
