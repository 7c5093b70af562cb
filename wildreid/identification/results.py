"""Identification results: the ranked candidate individuals of each query, written as JSON or CSV."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from ..embedding.images import LoadFailure
from ..records import json_default
from ..safe_text import write_csv


@dataclass
class CandidateIndividual:
    identity: str
    score: float  # best score over the individual's gallery images (cosine for the global method)
    probability: float | None  # calibrated P(same individual); None before calibration
    image_id: str  # the best-matching gallery image
    path: str | None
    species: str | None


@dataclass
class IdentificationResult:
    query: str
    candidates: list[CandidateIndividual]
    top_score: float
    is_new: bool | None  # None when no threshold is known
    threshold: float | None
    method: str = "global"  # the scoring method that ranked the candidates (`wildreid identify --method`)
    note: str | None = None  # why the method differs from the one asked for (e.g. a query without keypoints)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def write_results_json(results: Iterable[IdentificationResult], path: str | os.PathLike,
                       failures: Iterable[LoadFailure] = ()) -> Path:
    path = Path(path)
    payload = {"results": [r.to_dict() for r in results], "failures": [f.to_dict() for f in failures]}
    path.write_text(json.dumps(payload, indent=1, default=json_default) + "\n")
    return path


CSV_COLUMNS = ("query", "rank", "identity", "score", "probability", "image_id", "path", "species",
               "top_score", "is_new", "threshold", "error", "method", "note")


def write_results_csv(results: Iterable[IdentificationResult], path: str | os.PathLike,
                      failures: Iterable[LoadFailure] = ()) -> Path:
    """One row per (query, candidate); failed queries get one row with `error` filled. Names from the user's
    data are written so a spreadsheet shows them as text, never runs them (`safe_text.write_csv`)."""
    def rows():
        for result in results:
            for rank, candidate in enumerate(result.candidates, start=1):
                yield {"query": result.query, "rank": rank, **asdict(candidate), "top_score": result.top_score,
                       "is_new": result.is_new, "threshold": result.threshold, "error": "", "method": result.method,
                       "note": result.note or ""}
        for failure in failures:
            yield {"query": failure.file, "error": failure.reason}

    return write_csv(path, CSV_COLUMNS, rows())


# ---------------------------------------------------------------------------------------- helpers


def write_results(results: list, failures: list[LoadFailure], path: str | os.PathLike) -> Path:
    """JSON or CSV by the file extension; failed queries are listed too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        write_results_csv(results, path, failures)
    elif path.suffix.lower() == ".json":
        write_results_json(results, path, failures)
    else:
        raise ValueError(f"--output must end in .json or .csv, got {path.name}")
    return path
