"""Import the Hugging Face `evaluate` library even where the repo's `evaluate.py` script shadows it.

Run from the repository root (``python evaluate.py ...``, ``python -m pytest``), the root is first on
``sys.path`` and a plain ``import evaluate`` finds the script, not the library. Everything in wildreid
that needs the library goes through :func:`import_hf_evaluate` instead.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

REID_METRIC_PATH = Path(__file__).resolve().parents[1] / "metrics" / "reid"


def _is_library_location(locations: Any) -> bool:
    """Whether a package's search locations are the `evaluate` library (it has loading.py)."""
    return any(os.path.isfile(os.path.join(location, "loading.py")) for location in locations or ())


def import_hf_evaluate() -> ModuleType:
    """Return the Hugging Face `evaluate` library, skipping any other module named `evaluate`.

    Searches ``sys.path`` in order for an `evaluate` *package* that looks like the library, so a
    plain ``evaluate.py`` (or a folder of that name) earlier on the path is passed over. A wrong
    module already cached in ``sys.modules["evaluate"]`` is replaced, because the library's own
    ``import evaluate.xxx`` statements and the metric modules it loads resolve through that entry.
    """
    cached = sys.modules.get("evaluate")
    if cached is not None and _is_library_location(getattr(cached, "__path__", None)):
        return cached
    for entry in sys.path:
        spec = importlib.machinery.PathFinder.find_spec("evaluate", [entry])
        if spec is not None and spec.loader is not None and _is_library_location(spec.submodule_search_locations):
            break
    else:
        raise ImportError(
            "the Hugging Face `evaluate` library is not installed (pip install 'evaluate>=0.4.6'); "
            "only modules that shadow it were found on sys.path"
        )
    if cached is not None:
        logger.warning(
            "sys.modules['evaluate'] was %s, not the Hugging Face library; replacing it",
            getattr(cached, "__file__", cached),
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules["evaluate"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["evaluate"]
        if cached is not None:
            sys.modules["evaluate"] = cached
        raise
    return module


def load_reid_metric(config_name: str | None = None, **kwargs: Any) -> Any:
    """Load wildreid's re-id metric module (``wildreid/metrics/reid``) with ``evaluate.load``, offline.

    ``config_name``: None / ``"default"`` for embeddings, ``"similarity"`` for score-matrix rows.
    """
    return import_hf_evaluate().load(str(REID_METRIC_PATH), config_name, **kwargs)
