"""The repository's evaluate.py script must not shadow the Hugging Face `evaluate` library."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from wildreid.evaluation.hf_evaluate import REID_METRIC_PATH, import_hf_evaluate

REPO_ROOT = REID_METRIC_PATH.parents[2]

SHADOWING_SCRIPT = """
if __name__ != "__main__":
    raise RuntimeError("the shadowing evaluate.py script was imported as a module")

import importlib.util
import json
import os
import sys

# The pitfall is real here: a plain `import evaluate` would find this very file.
assert os.path.samefile(importlib.util.find_spec("evaluate").origin, __file__)
sys.path.insert(1, {repo!r})  # the script's own folder stays first, as for `python evaluate.py` in the repo
from wildreid.evaluation.hf_evaluate import import_hf_evaluate

library = import_hf_evaluate()
metric = library.load({metric!r})
result = metric.compute(
    predictions=[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], references=["a", "a", "b"],
    gallery_embeddings=[[1.0, 0.0], [0.0, 1.0]], gallery_labels=["a", "b"], topk=[1],
)
import evaluate  # after the fix, a plain import finds the library too
print(json.dumps({{"top1": result["top1"], "library": library.__file__, "plain_import_ok": evaluate is library}}))
"""


def test_evaluate_script_in_the_working_directory_does_not_shadow_the_library(tmp_path):
    script_dir = tmp_path / "repo_like"
    script_dir.mkdir()
    (script_dir / "evaluate.py").write_text(
        SHADOWING_SCRIPT.format(repo=str(REPO_ROOT), metric=str(REID_METRIC_PATH))
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    completed = subprocess.run(
        [sys.executable, "evaluate.py"], cwd=script_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["top1"] == 1.0
    assert report["plain_import_ok"] is True
    assert report["library"].endswith(os.path.join("evaluate", "__init__.py"))


def test_a_wrongly_cached_evaluate_module_is_replaced(monkeypatch):
    library = import_hf_evaluate()
    shadow = types.ModuleType("evaluate")
    shadow.__file__ = "/somewhere/evaluate.py"
    monkeypatch.setitem(sys.modules, "evaluate", shadow)
    fresh = import_hf_evaluate()
    assert sys.modules["evaluate"] is fresh and fresh is not shadow
    assert callable(fresh.load) and fresh.__file__ == library.__file__


def test_missing_library_raises_import_error(monkeypatch, tmp_path):
    (tmp_path / "evaluate.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.delitem(sys.modules, "evaluate", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    with pytest.raises(ImportError, match="library is not installed"):
        import_hf_evaluate()
