"""A gallery of known individuals and identification against it: "which individual is this, or a new one?".

Every gallery is tagged with the model that embedded it (`ModelTag`); adding or querying with
embeddings from another model raises `ModelMismatchError` naming both, because cosine scores between
two embedding spaces are meaningless. Identification ranks individuals, not images: an individual's
score is the maximum cosine over its images. The folder layout is in `wildreid.identification.store`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..embedding.images import LoadFailure, batched_crops, describe_source
from ..matching.calibration import Calibrator
from ..matching.descriptor_cache import LocalFeatureCache
from ..matching.one_vs_many import DescriptorIndex
from . import store
from .local_retrieval import descriptor_index_writer
from .model_tag import ModelTag
from .results import CandidateIndividual, IdentificationResult
from .search import DEFAULT_APPROXIMATE_THRESHOLD, EmbeddingIndex, build_index, check_embeddings
from .threshold import CALIBRATION_TOP_K, choose_threshold, open_set_samples


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
        self.metadata = store.empty_metadata()
        self.calibration: dict[str, Any] | None = None
        self.created = store.now()
        self.updated = self.created
        self.local_features_config: dict[str, Any] | None = None
        # Kind of the descriptor index over those keypoints (`DescriptorIndex.build`'s index_type): "auto" compresses
        # past its exact limit, "ivfpq" further; every save and in-memory rebuild uses it.
        self.descriptor_index_type: str = "auto"
        # `center_box` of the specs the photos came from: query photos without a box are cropped the same way.
        self.center_box: float | None = None
        # The revision under `revisions/` whose model this one's replaced (`wildreid adapt`, or `calibrate` choosing
        # the embedding): `revisions.undo` returns to it. Carried by every later save of the same model.
        self.replaced_revision: str | None = None
        self._index: EmbeddingIndex | None = None
        self._codes: np.ndarray | None = None  # identity code of each gallery row
        self._identity_names: np.ndarray | None = None  # identity name of each code
        self._score_calibrator: Calibrator | None = None
        self._loaded_revision: tuple[Path, str | None] | None = None  # (folder, revision) this copy was read from

    def keep_local_features_of(self, other: "Gallery") -> None:
        """Carry `other`'s keypoint settings (extractor config, descriptor index kind) to this gallery of the same
        images: keypoints do not depend on the model, and a rebuild keeps them."""
        self.local_features_config = other.local_features_config
        self.descriptor_index_type = other.descriptor_index_type

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
        rows = store.normalise_metadata(metadata)
        if len(rows) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(rows)} metadata rows")
        duplicated = rows["image_id"][rows["image_id"].duplicated()].tolist()
        clashing = sorted(set(rows["image_id"]) & set(self.metadata["image_id"]))
        if duplicated or clashing:
            raise ValueError(f"image_id must be unique; repeated: {(duplicated + clashing)[:5]}")
        self.embeddings = np.concatenate([self.embeddings, embeddings])
        self.metadata = pd.concat([self.metadata, rows], ignore_index=True) if len(self.metadata) else rows
        self.updated = store.now()
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
                    image_id=str(self.metadata.at[row, "image_id"]), path=store.optional_text(self.metadata.at[row, "path"]),
                    species=store.optional_text(self.metadata.at[row, "species"]))
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
        with tqdm(total=len(sources), desc="identifying", unit="image", disable=not progress) as bar:
            for batch in batched_crops(sources, batch_size, bboxes, thetas, failures=failures, center_box=self.center_box):
                embeddings = np.asarray(embed([crop for _, crop in batch]))
                ids = [describe_source(sources[i]) for i, _ in batch]
                results.extend(self.identify(embeddings, model_tag, top_k, query_ids=ids, threshold=threshold))
                bar.update(len(batch))
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
        The threshold comes from `wildreid.evaluation.open_set.choose_new_individual_threshold`.
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
        samples = open_set_samples(labels, exclude, ranked, codes, code_of, images_per_code, simulate_unknown)
        threshold = choose_threshold(samples, criterion)
        is_known = np.array(samples.is_known, dtype=bool)
        calibrator = Calibrator("logistic").fit(samples.pair_scores, samples.pair_match)
        self.calibration = {
            "new_individual_threshold": threshold, "criterion": criterion, "simulate_unknown": simulate_unknown,
            "num_queries": len(queries), "known_samples": int(np.sum(is_known)),
            "unknown_samples": int(len(is_known) - np.sum(is_known)), "score_calibrator": calibrator.to_dict(),
            "calibrated_at": store.now(), "gallery_images_at_calibration": len(self),
        }
        self._score_calibrator = calibrator
        return threshold

    # ------------------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike, *, local_features: LocalFeatureCache | None = None,
             descriptor_index: DescriptorIndex | None = None, overwrite: bool = False) -> Path:
        """Write the gallery folder as a new revision, switched in atomically under the writer lock (see
        `wildreid.identification.store`). With `local_features` (SIFT), its descriptor index for one-vs-many
        retrieval is written too: `descriptor_index` when given (it must cover the gallery's images in order),
        else built from them; without, a keypoint cache and index already in the folder are kept."""
        if self.model_tag is None:
            raise ValueError("cannot save a gallery without a model tag (add images first)")
        if descriptor_index is not None and local_features is None:
            raise ValueError("a descriptor index is saved with the keypoint cache it indexes: pass local_features")
        directory = Path(directory)
        store.check_new_folder(directory, overwrite)  # before the lock file is created in a folder not ours
        with store.writer_lock(directory):
            store.check_new_folder(directory, overwrite)
            self._refuse_stale_overwrite(directory)
            kept = kept_index = write_index = None
            if local_features is not None:
                missing = [image_id for image_id in self.metadata["image_id"] if image_id not in local_features]
                if missing:
                    raise ValueError(f"local-feature cache lacks {len(missing)} gallery images, e.g. {missing[:3]}")
                self.local_features_config = dict(local_features.config)
                write_index = descriptor_index_writer(local_features, list(self.metadata["image_id"]),
                                                      descriptor_index, self.descriptor_index_type)
            elif self.local_features_config is not None and (directory / store.CONFIG_FILE).exists():
                kept = store.current_entry(directory, "local_features")
                kept_index = store.current_entry(directory, "descriptor_index") if kept else None
            if local_features is None and kept is None:
                self.local_features_config = None
            config = store.RECORD.tag(
                model=self.model_tag.to_dict(),
                counts={"images": len(self), "individuals": int(self.metadata["identity"].nunique()),
                        "species": sorted(self.metadata["species"].dropna().unique().tolist())},
                created=self.created, updated=self.updated, calibration=self.calibration,
                search={"approximate_threshold": self.approximate_threshold},
                local_features=None if self.local_features_config is None else {
                    "config": self.local_features_config, "index_type": self.descriptor_index_type},
                center_box=self.center_box, replaced_revision=self.replaced_revision,
            )
            revision = store.write_revision(directory, config, self.embeddings, self.metadata, local_features, kept,
                                            write_index, kept_index)
            self._loaded_revision = (directory.resolve(), revision)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Gallery":
        directory = Path(directory)
        config = store.read_config(directory)
        try:
            tag = ModelTag.from_dict(config["model"])
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{directory / store.CONFIG_FILE}: bad model tag ({error})") from error
        gallery = cls(tag, approximate_threshold=config.get("search", {}).get("approximate_threshold",
                                                                               DEFAULT_APPROXIMATE_THRESHOLD))
        gallery.embeddings = store.read_embeddings(store.checked_file(directory, config, "embeddings"),
                                                   tag.embedding_dim)
        gallery.metadata = store.read_metadata(store.checked_file(directory, config, "metadata"), len(gallery.embeddings))
        gallery.created = config.get("created", gallery.created)
        gallery.updated = config.get("updated", gallery.updated)
        gallery.calibration = config.get("calibration")
        gallery.local_features_config = (config.get("local_features") or {}).get("config")
        gallery.descriptor_index_type = (config.get("local_features") or {}).get("index_type", "auto")
        gallery.center_box = config.get("center_box")
        gallery.replaced_revision = config.get("replaced_revision")
        gallery._loaded_revision = (directory.resolve(), config.get("revision"))
        return gallery

    def _refuse_stale_overwrite(self, directory: Path) -> None:
        """Saving over the folder this copy came from, after another process saved a newer revision there,
        would silently drop that process's changes."""
        if self._loaded_revision is None or self._loaded_revision[0] != directory.resolve():
            return
        current = store.read_config(directory).get("revision") if (directory / store.CONFIG_FILE).exists() else None
        if current != self._loaded_revision[1]:
            raise store.GalleryBusyError(
                f"gallery {directory} was saved by another process since it was loaded (revision {current}, loaded "
                f"{self._loaded_revision[1]}); load it again, or use Gallery.add_and_save to add entries")

    @classmethod
    def add_and_save(cls, directory: str | os.PathLike, embeddings: np.ndarray,
                     metadata: pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence],
                     model_tag: ModelTag) -> "Gallery":
        """Add entries to the gallery saved in `directory` and save it, as one step under its writer lock:
        concurrent callers are refused (`GalleryBusyError`) instead of losing each other's entries, and a
        crash leaves the gallery as it was or with every entry added. Returns the saved gallery.

        `embeddings`, `metadata` and `model_tag` are as for :meth:`add` (the tag must match the gallery's).
        A keypoint cache in the folder is kept as it is: it does not cover the added entries.
        """
        with store.writer_lock(directory, create=False):
            gallery = cls.load(directory)
            gallery.add(embeddings, metadata, model_tag)
            gallery.save(directory, overwrite=True)
        return gallery

    @staticmethod
    def load_local_features(directory: str | os.PathLike, expected_config: Mapping[str, Any] | None = None
                            ) -> LocalFeatureCache:
        """The keypoint cache stored beside a gallery (refused if made with other extractor settings)."""
        return store.read_local_features(directory, expected_config)


# ---------------------------------------------------------------------------------------- writers
