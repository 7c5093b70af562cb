"""A gallery of known individuals and identification against it: "which individual is this, or a new one?".

On disk a gallery is a folder:
    embeddings.safetensors   (N, D) float32, L2-normalised, tensor "embeddings"
    metadata.parquet         image_id, identity, species, path, extra (JSON text), one row per embedding
    gallery.json             model tag, counts, times, new-individual calibration, search settings
    local_features.npz       optional keypoint cache (see wildreid.local_features), same image ids

Every gallery is tagged with the model that embedded it (`ModelTag`); adding or querying with
embeddings from another model raises `ModelMismatchError` naming both, because cosine scores between
two embedding spaces are meaningless. Identification ranks individuals, not images: an individual's
score is the maximum cosine over its images.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .calibration import Calibrator
from .images import LoadFailure, describe_source, iter_crops
from .local_features import LocalFeatureCache
from .search import DEFAULT_APPROXIMATE_THRESHOLD, EmbeddingIndex, build_index, check_embeddings

FORMAT = "wildreid-gallery"
FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.safetensors"
METADATA_FILE = "metadata.parquet"
CONFIG_FILE = "gallery.json"
LOCAL_FEATURES_FILE = "local_features.npz"
METADATA_COLUMNS = ("image_id", "identity", "species", "path", "extra")
# Individuals per query used to fit the score calibrator: the candidates a user is shown.
CALIBRATION_TOP_K = 10


class ModelMismatchError(ValueError):
    """Embeddings from one model were mixed with a gallery built by another."""


@dataclass(frozen=True)
class ModelTag:
    """Identifies the embedding space: model, exact weights, and everything that shapes the input.

    revision: a Hub commit, or `weights_content_hash(...)` ("sha256:...") for local weights.
    preprocessing: a signature of the image processor settings (`preprocessing_signature`).
    """

    model_name_or_path: str
    revision: str
    embedding_dim: int
    image_size: int | tuple[int, ...] | None = None
    preprocessing: str = ""

    def __post_init__(self):
        if isinstance(self.image_size, list):
            object.__setattr__(self, "image_size", tuple(self.image_size))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"] = list(self.image_size) if isinstance(self.image_size, tuple) else self.image_size
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelTag":
        missing = [name for name in ("model_name_or_path", "revision", "embedding_dim") if name not in data]
        if missing:
            raise ValueError(f"model tag lacks {missing}")
        return cls(str(data["model_name_or_path"]), str(data["revision"]), int(data["embedding_dim"]),
                   data.get("image_size"), str(data.get("preprocessing", "")))

    def __str__(self) -> str:
        return (f"{self.model_name_or_path}@{self.revision} (dim {self.embedding_dim}, image_size {self.image_size}, "
                f"preprocessing {self.preprocessing or '-'})")

    def same_embedding_space(self, other: "ModelTag") -> bool:
        """Equal weights, width, input size and preprocessing. The name may differ only when the
        revision is a content hash (the same weights loaded from another path)."""
        same_name = self.model_name_or_path == other.model_name_or_path or self.revision.startswith("sha256:")
        return same_name and (self.revision, self.embedding_dim, self.image_size, self.preprocessing) == (
            other.revision, other.embedding_dim, other.image_size, other.preprocessing)

    def require_same(self, other: "ModelTag", what: str) -> None:
        if not isinstance(other, ModelTag):
            raise TypeError(f"model_tag must be a ModelTag, got {type(other).__name__}")
        if not self.same_embedding_space(other):
            raise ModelMismatchError(f"{what} were embedded by {other}, but this gallery was built with {self}; "
                                     "embed them with the gallery's model or rebuild the gallery")


def weights_content_hash(state_dict: Mapping[str, Any]) -> str:
    """"sha256:<hex>" over parameter names, dtypes, shapes and bytes (numpy arrays or torch tensors)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        if hasattr(value, "detach"):  # torch tensor; viewing as bytes also covers bfloat16
            import torch

            tensor = value.detach().cpu().contiguous()
            header = f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}"
            payload = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        else:
            array = np.ascontiguousarray(value)
            header, payload = f"{name}|{array.dtype}|{tuple(array.shape)}", array.tobytes()
        digest.update(header.encode())
        digest.update(payload)
    return "sha256:" + digest.hexdigest()


def preprocessing_signature(settings: Mapping[str, Any]) -> str:
    """Short stable hash of image-processor settings (e.g. `processor.to_dict()`)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CandidateIndividual:
    identity: str
    score: float  # max cosine over the individual's gallery images
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Gallery:
    """Embeddings + metadata of known individuals, tagged with the model that produced them.

    approximate_threshold: above this many images, searches use an approximate faiss index.
    """

    def __init__(self, model_tag: ModelTag | None = None, *,
                 approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD):
        self.model_tag = model_tag
        self.approximate_threshold = int(approximate_threshold)
        dim = model_tag.embedding_dim if model_tag else 0
        self.embeddings = np.zeros((0, dim), dtype=np.float32)
        self.metadata = pd.DataFrame({name: pd.Series(dtype=object) for name in METADATA_COLUMNS})
        self.calibration: dict[str, Any] | None = None
        self.created = _now()
        self.updated = self.created
        self.local_features_config: dict[str, Any] | None = None
        self._index: EmbeddingIndex | None = None
        self._codes: np.ndarray | None = None  # identity code of each gallery row
        self._identity_names: np.ndarray | None = None  # identity name of each code
        self._score_calibrator: Calibrator | None = None

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def identities(self) -> list[str]:
        return sorted(self.metadata["identity"].unique().tolist())

    # ------------------------------------------------------------------------------- building

    def add(self, embeddings: np.ndarray, metadata: pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence],
            model_tag: ModelTag) -> None:
        """Append images: one metadata row per embedding with at least image_id and identity.

        Columns other than image_id, identity, species, path, extra are folded into `extra`.
        """
        if self.model_tag is None:
            if not isinstance(model_tag, ModelTag):
                raise TypeError(f"model_tag must be a ModelTag, got {type(model_tag).__name__}")
            self.model_tag = model_tag
            self.embeddings = np.zeros((0, model_tag.embedding_dim), dtype=np.float32)
        else:
            self.model_tag.require_same(model_tag, "the images being added")
        embeddings = check_embeddings(embeddings, self.model_tag.embedding_dim)
        rows = _normalise_metadata(metadata)
        if len(rows) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(rows)} metadata rows")
        duplicated = rows["image_id"][rows["image_id"].duplicated()].tolist()
        clashing = sorted(set(rows["image_id"]) & set(self.metadata["image_id"]))
        if duplicated or clashing:
            raise ValueError(f"image_id must be unique; repeated: {(duplicated + clashing)[:5]}")
        self.embeddings = np.concatenate([self.embeddings, embeddings])
        self.metadata = pd.concat([self.metadata, rows], ignore_index=True) if len(self.metadata) else rows
        self.updated = _now()
        self._index = self._codes = None

    # ------------------------------------------------------------------------------ searching

    def _search_state(self) -> tuple[EmbeddingIndex, np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise ValueError("the gallery is empty; add images before identifying")
        if self._index is None:
            self._index = build_index(self.embeddings, kind="auto", approximate_threshold=self.approximate_threshold)
            identities = self.metadata["identity"].to_numpy(dtype=str)
            self._identity_names, self._codes = np.unique(identities, return_inverse=True)
        return self._index, self._codes, self._identity_names

    def _rank_individuals(self, queries: np.ndarray, top_k: int, exclude_rows: Sequence[int | None] | None = None
                          ) -> list[list[tuple[int, float, int]]]:
        """Per query, up to top_k (identity code, max score, best gallery row), best first.

        Retrieving top_k x (most images of one individual) images guarantees the exact top_k
        individuals under exact search: each better individual owns at most that many images.
        """
        index, codes, _ = self._search_state()
        most_images = int(np.bincount(codes).max())
        depth = min(len(self), top_k * most_images + (1 if exclude_rows is not None else 0))
        ranked = []
        for start in range(0, len(queries), 256):  # bounds the (batch, depth) result arrays
            scores, ids = index.search(queries[start : start + 256], depth)
            for offset, (row_scores, row_ids) in enumerate(zip(scores, ids)):
                keep = row_ids >= 0
                if exclude_rows is not None and exclude_rows[start + offset] is not None:
                    keep &= row_ids != exclude_rows[start + offset]
                row_scores, row_ids = row_scores[keep], row_ids[keep]
                # Results are sorted by score, so an individual's first hit is its maximum.
                _, first = np.unique(codes[row_ids], return_index=True)
                first = np.sort(first)[:top_k]
                ranked.append([(int(codes[row_ids[i]]), float(row_scores[i]), int(row_ids[i])) for i in first])
        return ranked

    def identify(self, query_embeddings: np.ndarray, model_tag: ModelTag, top_k: int = 5, *,
                 query_ids: Sequence[str] | None = None, threshold: float | None = None) -> list[IdentificationResult]:
        """Top-k individuals per query with calibrated probabilities and a "new individual" decision.

        threshold: overrides the calibrated new-individual threshold; a query whose best individual
            scores below it is new. Without either, `is_new` is None.
        """
        if self.model_tag is None:
            raise ValueError("the gallery is empty; add images before identifying")
        self.model_tag.require_same(model_tag, "the queries")
        queries = check_embeddings(query_embeddings, self.model_tag.embedding_dim, "query embeddings")
        if query_ids is not None and len(query_ids) != len(queries):
            raise ValueError(f"{len(query_ids)} query ids for {len(queries)} query embeddings")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        threshold = threshold if threshold is not None else (self.calibration or {}).get("new_individual_threshold")
        calibrator = self._calibrator()
        _, _, names = self._search_state()
        results = []
        for q, ranked in enumerate(self._rank_individuals(queries, top_k)):
            probabilities = calibrator.predict([s for _, s, _ in ranked]) if calibrator else [None] * len(ranked)
            candidates = [
                CandidateIndividual(
                    identity=str(names[code]), score=score, probability=None if p is None else float(p),
                    image_id=str(self.metadata.at[row, "image_id"]), path=_optional(self.metadata.at[row, "path"]),
                    species=_optional(self.metadata.at[row, "species"]))
                for (code, score, row), p in zip(ranked, probabilities)
            ]
            top_score = candidates[0].score if candidates else float("-inf")
            results.append(IdentificationResult(
                query=str(query_ids[q]) if query_ids is not None else str(q), candidates=candidates,
                top_score=top_score, is_new=None if threshold is None else bool(top_score < threshold),
                threshold=threshold))
        return results

    def identify_images(self, sources: Sequence[Any], embed: Callable[[list], np.ndarray], model_tag: ModelTag,
                        top_k: int = 5, *, bboxes: Sequence[Sequence[float] | None] | None = None,
                        thetas: Sequence[float] | None = None, batch_size: int = 32, threshold: float | None = None,
                        progress: bool = True) -> tuple[list[IdentificationResult], list[LoadFailure]]:
        """Load, crop, embed and identify query images; unreadable ones are reported, not fatal.

        embed: maps a list of PIL crops to (B, D) L2-normalised embeddings from the model `model_tag`
            names (e.g. processor + WildReIDModel).
        """
        if self.model_tag is None:
            raise ValueError("the gallery is empty; add images before identifying")
        self.model_tag.require_same(model_tag, "the queries")  # before any image is loaded
        failures: list[LoadFailure] = []
        results: list[IdentificationResult] = []
        batch: list[tuple[int, Any]] = []

        def flush():
            embeddings = np.asarray(embed([crop for _, crop in batch]))
            ids = [describe_source(sources[i]) for i, _ in batch]
            results.extend(self.identify(embeddings, model_tag, top_k, query_ids=ids, threshold=threshold))
            batch.clear()

        for item in tqdm(iter_crops(sources, bboxes, thetas, failures=failures), total=len(sources),
                         desc="identifying", unit="image", disable=not progress):
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return results, failures

    # ---------------------------------------------------------------------------- calibration

    def _calibrator(self) -> Calibrator | None:
        if self._score_calibrator is None and self.calibration and self.calibration.get("score_calibrator"):
            self._score_calibrator = Calibrator.from_dict(self.calibration["score_calibrator"])
        return self._score_calibrator

    def calibrate_new_individual_threshold(
        self, query_embeddings: np.ndarray, query_identities: Sequence[Any], model_tag: ModelTag, *,
        query_image_ids: Sequence[str | None] | None = None, criterion: str = "balanced", simulate_unknown: bool = True,
    ) -> float:
        """Fit the "new individual" threshold and the score calibrator on labelled validation queries.

        Each query whose individual is in the gallery gives a known sample (its best individual's
        score); a query of an absent individual gives an unknown sample. With `simulate_unknown`, each
        known query also gives an unknown sample: its best score with its own individual left out,
        so a gallery-only validation set still has both kinds. `query_image_ids` names gallery images
        to leave out for each query (use it when the queries are gallery images themselves).
        The threshold comes from `wildreid.evaluation.metrics.choose_new_individual_threshold`.
        """
        if self.model_tag is None:
            raise ValueError("the gallery is empty; add images before calibrating")
        self.model_tag.require_same(model_tag, "the validation queries")
        queries = check_embeddings(query_embeddings, self.model_tag.embedding_dim, "validation query embeddings")
        labels = np.asarray([str(identity) for identity in query_identities])
        if len(labels) != len(queries):
            raise ValueError(f"{len(labels)} validation identities for {len(queries)} embeddings")
        row_of_image = {image_id: row for row, image_id in enumerate(self.metadata["image_id"])}
        exclude = [None] * len(queries)
        if query_image_ids is not None:
            if len(query_image_ids) != len(queries):
                raise ValueError(f"{len(query_image_ids)} query image ids for {len(queries)} embeddings")
            exclude = [None if image_id is None else row_of_image.get(str(image_id)) for image_id in query_image_ids]
        _, codes, names = self._search_state()
        code_of = {name: code for code, name in enumerate(names)}
        images_per_code = np.bincount(codes, minlength=len(names))
        ranked = self._rank_individuals(queries, CALIBRATION_TOP_K, exclude_rows=exclude)

        top_scores, top1_correct, is_known, sample_labels = [], [], [], []
        pair_scores, pair_match = [], []
        for label, excluded, candidates in zip(labels, exclude, ranked):
            own = code_of.get(label)
            own_images = 0 if own is None else images_per_code[own] - (excluded is not None and codes[excluded] == own)
            if not candidates:
                continue
            known = own_images > 0
            top_scores.append(candidates[0][1]); top1_correct.append(known and candidates[0][0] == own)
            is_known.append(known); sample_labels.append(label)
            if known and simulate_unknown:
                others = [score for code, score, _ in candidates if code != own]
                if others:
                    top_scores.append(others[0]); top1_correct.append(False)
                    is_known.append(False); sample_labels.append(label)
            for code, score, _ in candidates:
                pair_scores.append(score); pair_match.append(code == own)
        threshold = _choose_threshold(np.array(top_scores), np.array(top1_correct, dtype=bool),
                                      np.array(is_known, dtype=bool), np.array(sample_labels), criterion)
        calibrator = Calibrator("logistic").fit(pair_scores, pair_match)
        self.calibration = {
            "new_individual_threshold": threshold, "criterion": criterion, "simulate_unknown": simulate_unknown,
            "num_queries": len(queries), "known_samples": int(np.sum(is_known)),
            "unknown_samples": int(len(is_known) - np.sum(is_known)), "score_calibrator": calibrator.to_dict(),
            "calibrated_at": _now(), "gallery_images_at_calibration": len(self),
        }
        self._score_calibrator = calibrator
        return threshold

    # ------------------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike, *, local_features: LocalFeatureCache | None = None,
             overwrite: bool = False) -> Path:
        """Write the gallery folder (and the local-feature cache when given)."""
        from safetensors.numpy import save_file

        if self.model_tag is None:
            raise ValueError("cannot save a gallery without a model tag (add images first)")
        directory = Path(directory)
        if (directory / CONFIG_FILE).exists() and not overwrite:
            raise FileExistsError(f"{directory / CONFIG_FILE} exists; pass overwrite=True to replace the gallery")
        directory.mkdir(parents=True, exist_ok=True)
        if local_features is not None:
            missing = [image_id for image_id in self.metadata["image_id"] if image_id not in local_features]
            if missing:
                raise ValueError(f"local-feature cache lacks {len(missing)} gallery images, e.g. {missing[:3]}")
            _replace_atomically(directory / LOCAL_FEATURES_FILE, lambda path: local_features.save(path))
            self.local_features_config = dict(local_features.config)
        _replace_atomically(directory / EMBEDDINGS_FILE, lambda path: save_file(
            {"embeddings": self.embeddings}, str(path), metadata={"format": FORMAT}))
        _replace_atomically(directory / METADATA_FILE, lambda path: self.metadata.to_parquet(path, index=False))
        config = {
            "format": FORMAT, "version": FORMAT_VERSION, "model": self.model_tag.to_dict(),
            "counts": {"images": len(self), "individuals": int(self.metadata["identity"].nunique()),
                       "species": sorted(self.metadata["species"].dropna().unique().tolist())},
            "created": self.created, "updated": self.updated, "calibration": self.calibration,
            "search": {"approximate_threshold": self.approximate_threshold},
            "local_features": None if self.local_features_config is None else
            {"file": LOCAL_FEATURES_FILE, "config": self.local_features_config},
        }
        _replace_atomically(directory / CONFIG_FILE, lambda path: path.write_text(json.dumps(config, indent=1) + "\n"))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Gallery":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{config_path}: not a readable gallery config ({error})") from error
        if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: not a {FORMAT} v{FORMAT_VERSION} folder "
                             f"(format={config.get('format')!r}, version={config.get('version')!r})")
        try:
            tag = ModelTag.from_dict(config["model"])
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{config_path}: bad model tag ({error})") from error
        gallery = cls(tag, approximate_threshold=config.get("search", {}).get("approximate_threshold",
                                                                               DEFAULT_APPROXIMATE_THRESHOLD))
        try:
            tensors = load_file(str(directory / EMBEDDINGS_FILE))
        except (OSError, SafetensorError) as error:
            raise ValueError(f"{directory / EMBEDDINGS_FILE}: cannot read embeddings ({error})") from error
        if "embeddings" not in tensors:
            raise ValueError(f"{directory / EMBEDDINGS_FILE}: no tensor named 'embeddings'")
        try:
            gallery.embeddings = check_embeddings(tensors["embeddings"], tag.embedding_dim)
        except ValueError as error:
            raise ValueError(f"{directory / EMBEDDINGS_FILE}: {error}") from error
        try:
            metadata = pd.read_parquet(directory / METADATA_FILE)
        except (OSError, ValueError) as error:
            raise ValueError(f"{directory / METADATA_FILE}: cannot read metadata ({error})") from error
        if missing := [c for c in METADATA_COLUMNS if c not in metadata.columns]:
            raise ValueError(f"{directory / METADATA_FILE}: missing columns {missing}")
        if len(metadata) != len(gallery.embeddings):
            raise ValueError(f"{directory}: {len(gallery.embeddings)} embeddings but {len(metadata)} metadata rows")
        gallery.metadata = metadata[list(METADATA_COLUMNS)].astype(object).where(metadata.notna(), None)
        gallery.created = config.get("created", gallery.created)
        gallery.updated = config.get("updated", gallery.updated)
        gallery.calibration = config.get("calibration")
        gallery.local_features_config = (config.get("local_features") or {}).get("config")
        return gallery

    @staticmethod
    def load_local_features(directory: str | os.PathLike, expected_config: Mapping[str, Any] | None = None
                            ) -> LocalFeatureCache:
        """The keypoint cache stored beside a gallery (refused if made with other extractor settings)."""
        return LocalFeatureCache.load(Path(directory) / LOCAL_FEATURES_FILE, expected_config=expected_config)


# ---------------------------------------------------------------------------------------- writers


def write_results_json(results: Iterable[IdentificationResult], path: str | os.PathLike,
                       failures: Iterable[LoadFailure] = ()) -> Path:
    path = Path(path)
    payload = {"results": [r.to_dict() for r in results], "failures": [f.to_dict() for f in failures]}
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


CSV_COLUMNS = ("query", "rank", "identity", "score", "probability", "image_id", "path", "species",
               "top_score", "is_new", "threshold", "error")


def write_results_csv(results: Iterable[IdentificationResult], path: str | os.PathLike,
                      failures: Iterable[LoadFailure] = ()) -> Path:
    """One row per (query, candidate); failed queries get one row with `error` filled."""
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in results:
            for rank, candidate in enumerate(result.candidates, start=1):
                writer.writerow({"query": result.query, "rank": rank, **asdict(candidate),
                                 "top_score": result.top_score, "is_new": result.is_new,
                                 "threshold": result.threshold, "error": ""})
        for failure in failures:
            writer.writerow({"query": failure.file, "error": failure.reason})
    return path


# ---------------------------------------------------------------------------------------- helpers


def _choose_threshold(top_scores: np.ndarray, top1_correct: np.ndarray, is_known: np.ndarray,
                      labels: np.ndarray, criterion: str) -> float:
    from .evaluation.metrics import Top1Matches, choose_new_individual_threshold

    return float(choose_new_individual_threshold(Top1Matches(top_scores, top1_correct, is_known, labels), criterion))


def _normalise_metadata(metadata: pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence]) -> pd.DataFrame:
    frame = metadata.copy() if isinstance(metadata, pd.DataFrame) else pd.DataFrame(metadata)
    for required in ("image_id", "identity"):
        if required not in frame.columns:
            raise ValueError(f"metadata needs an {required!r} column; got {list(frame.columns)}")
        if frame[required].isna().any():
            raise ValueError(f"metadata row {int(np.flatnonzero(frame[required].isna())[0])} has no {required}")
    extra_columns = [c for c in frame.columns if c not in METADATA_COLUMNS]
    records = frame.to_dict("records")
    out = pd.DataFrame({
        "image_id": [str(r["image_id"]) for r in records],
        "identity": [str(r["identity"]) for r in records],
        "species": [_optional(r.get("species")) for r in records],
        "path": [_optional(r.get("path")) for r in records],
        "extra": [_extra_json(r, extra_columns) for r in records],
    }, dtype=object)
    return out


def _extra_json(record: Mapping[str, Any], extra_columns: list[str]) -> str | None:
    extra = record.get("extra")
    extra = json.loads(extra) if isinstance(extra, str) else dict(extra or {})
    extra.update({c: record[c] for c in extra_columns if _optional(record[c]) is not None})
    return json.dumps(extra, sort_keys=True, default=_json_default) if extra else None


def _optional(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    return str(value)


def _replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Write to a temporary sibling, then rename, so an interrupted save never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
