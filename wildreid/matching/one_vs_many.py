"""One-vs-many local retrieval (HotSpotter, Crall et al., WACV 2013): every gallery descriptor in one
faiss index, LNBNN voting, spatial verification of the best-voted images only.

A query costs one k-nearest-neighbour search of its descriptors instead of G pair matchings:
- each query descriptor finds its k+1 nearest gallery descriptors; each of the first k votes for its
  image with the LNBNN weight (McCann & Lowe 2012) `d(normaliser) - d(neighbour)`, the normaliser being
  the (k+1)-th neighbour: a descriptor that matches one image much better than the crowd votes strongly,
  common texture (bark, grass, fur) votes ~0. A descriptor votes at most once per image.
- the `shortlist` images with the most votes are re-scored by the pairwise matcher's MAGSAC inliers
  (`LocalMatcher`), the verification that matters most on repeated patterns.

Scores (Q, G) float32, higher is better: a verified image scores `vote share + 0.02 log(1 + inliers)`,
any other image `vote share - 1`, so verified candidates rank first (see `local_scores` for why the votes
lead).

Either extractor works (`keypoints.LocalFeatureExtractor`): SIFT descriptors are indexed as RootSIFT, ALIKED
descriptors as given (L2-normalised, 128-d; 64-d for t16); both are unit vectors, so the LNBNN weights and the
verifier's ratio test read the same distances. The index records the extractor's config, and a query whose
descriptors are of another family is refused, naming both.

The index is exact (`faiss.IndexFlatL2`) up to `exact_limit` descriptors and an inverted file
(`IndexIVFFlat`, nlist ~ 4 sqrt(N), nprobe 16) beyond; `DescriptorIndex.recall` measures the approximate
index against exact search on a sample of queries.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
from tqdm.auto import tqdm

from .keypoints import UNIT_VECTOR_METHODS, LocalFeatures, check_descriptors, config_descriptor_spec, unit_vectors
from .local_matcher import LocalMatcher

INDEX_FORMAT = "wildreid-descriptor-index"
INDEX_FORMAT_VERSION = 1
INDEX_FILE = "descriptors.faiss"
INDEX_META_FILE = "descriptors.json"
OWNERS_FILE = "descriptor_owners.npy"
INLIER_WEIGHT = 0.02


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): square root of the L1-normalised SIFT vector; unit L2 norm,
    so squared L2 distances of RootSIFT are the Hellinger kernel's."""
    return unit_vectors(descriptors, "sift")


DESCRIPTOR_SPACES = {"sift": "rootsift", "aliked": "aliked-l2"}


class DescriptorIndex:
    """All descriptors of a set of images in one faiss index, each remembering its image (`owners`)."""

    def __init__(self, index: faiss.Index, owners: np.ndarray, num_images: int, config: dict[str, Any]):
        self.index, self.owners, self.num_images, self.config = index, owners, int(num_images), dict(config)

    @classmethod
    def build(cls, features: Sequence[LocalFeatures], extractor_config: dict[str, Any], *,
              exact_limit: int = 200_000, nprobe: int = 16, seed: int = 0) -> "DescriptorIndex":
        method = extractor_config.get("method", "sift")
        if method not in UNIT_VECTOR_METHODS:
            raise ValueError(f"one-vs-many retrieval indexes SIFT (as RootSIFT) or ALIKED descriptors; got method "
                             f"{method!r}")
        vectors, owners = _indexed_vectors(features, 0, dict(extractor_config))
        dim = vectors.shape[1]
        if len(vectors) <= exact_limit:
            index, kind = faiss.IndexFlatL2(dim), "exact"
        else:
            nlist = int(4 * np.sqrt(len(vectors)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            rng = np.random.default_rng(seed)
            sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 64 * nlist), replace=False)]
            index.train(sample)
            index.nprobe = nprobe
            kind = f"ivf{nlist},nprobe{nprobe}"
        index.add(vectors)
        config = {"extractor": dict(extractor_config), "descriptor": DESCRIPTOR_SPACES[method], "index": kind}
        return cls(index, owners, len(features), config)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def method(self) -> str:
        """The descriptor family indexed ("sift" or "aliked")."""
        return self.config["extractor"].get("method", "sift")

    def query_vectors(self, descriptors: np.ndarray, what: str = "query descriptors") -> np.ndarray:
        """Query descriptors in the index's space; descriptors of another family are refused, naming both."""
        extractor = self.config["extractor"]
        try:
            check_descriptors(descriptors, self.method, what, extractor.get("variant"))
        except ValueError as error:
            raise ValueError(f"{error}: the descriptor index holds features of {extractor}; extract the queries the "
                             "same way") from None
        return unit_vectors(descriptors, self.method)

    def add(self, features: Sequence[LocalFeatures]) -> None:
        """Index more images after the indexed ones, in place (the review app adds a decision's photos this
        way instead of rebuilding). An inverted file keeps its trained centroids and an exact index stays
        exact past `exact_limit`; `build` (`wildreid index`) chooses again."""
        vectors, owners = _indexed_vectors(features, self.num_images, self.config["extractor"])
        self.index.add(vectors)
        self.owners = np.concatenate([self.owners, owners])
        self.num_images += len(features)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, owners) of each vector's k nearest descriptors; L2 distances (not squared), owner -1
        where fewer than k exist."""
        k = min(k, len(self))
        if k == 0 or len(vectors) == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int32)
        squared, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        owners = np.where(ids >= 0, self.owners[np.maximum(ids, 0)], -1)
        return np.sqrt(np.maximum(squared, 0.0)), owners

    def recall(self, vectors: np.ndarray, k: int, sample: int = 2000, seed: int = 0) -> float | None:
        """Fraction of the exact k nearest neighbours the index returns, on a sample of `vectors`; None
        for an exact index (recall 1 by construction)."""
        if not isinstance(self.index, faiss.IndexIVF) or len(vectors) == 0:
            return None
        rng = np.random.default_rng(seed)
        chosen = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)]
        self.index.make_direct_map()
        flat = faiss.IndexFlatL2(self.index.d)
        flat.add(self.index.reconstruct_n(0, self.index.ntotal))
        _, exact = flat.search(chosen, k)
        _, approx = self.index.search(chosen, k)
        return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        np.save(directory / OWNERS_FILE, self.owners, allow_pickle=False)
        meta = {"format": INDEX_FORMAT, "version": INDEX_FORMAT_VERSION, "num_images": self.num_images, **self.config}
        (directory / INDEX_META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, expected_extractor: dict[str, Any] | None = None) -> "DescriptorIndex":
        """Load an index saved by `save`; refused, with both configs named, when it was built with other
        extractor settings than `expected_extractor`."""
        directory = Path(directory)
        meta_path = directory / INDEX_META_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{meta_path}: cannot read the descriptor index description ({error})") from error
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"{meta_path}: not a {INDEX_FORMAT} v{INDEX_FORMAT_VERSION} index")
        _check_extractor(directory, meta.get("extractor"), expected_extractor)
        index = faiss.read_index(str(directory / INDEX_FILE))
        owners = np.load(directory / OWNERS_FILE, allow_pickle=False)
        if len(owners) != index.ntotal:
            raise ValueError(f"{directory}: {len(owners)} descriptor owners for {index.ntotal} indexed descriptors")
        config = {key: meta[key] for key in ("extractor", "descriptor", "index")}
        return cls(index, owners, meta["num_images"], config)

    def to_npz(self, path: str | os.PathLike, image_ids: Sequence[str]) -> Path:
        """One `.npz` of plain arrays (a gallery's `descriptor_index` file): the faiss index serialized
        (`faiss.serialize_index`), `owners`, the indexed images' ids and the JSON config."""
        if len(image_ids) != self.num_images:
            raise ValueError(f"{len(image_ids)} image ids for a descriptor index of {self.num_images} images")
        path = Path(path)
        meta = {"format": INDEX_FORMAT, "version": INDEX_FORMAT_VERSION, "num_images": self.num_images, **self.config}
        with open(path, "wb") as handle:  # a file handle stops numpy from appending ".npz"
            np.savez(handle, index=faiss.serialize_index(self.index), owners=self.owners,
                     image_ids=np.array([str(i) for i in image_ids], dtype=str) if len(image_ids) else
                     np.zeros(0, dtype="<U1"), config=np.array(json.dumps(meta, sort_keys=True)))
        return path

    @classmethod
    def from_npz(cls, path: str | os.PathLike, expected_extractor: dict[str, Any] | None = None
                 ) -> tuple["DescriptorIndex", list[str]]:
        """The index and its images' ids from `to_npz`'s file; refused, with both configs named, when it was
        built with other extractor settings than `expected_extractor`. Pickled objects are never loaded."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            meta = json.loads(str(arrays["config"]))
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: not a readable descriptor index ({error})") from error
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"{path}: not a {INDEX_FORMAT} v{INDEX_FORMAT_VERSION} index")
        _check_extractor(path, meta.get("extractor"), expected_extractor)
        if missing := {"index", "owners", "image_ids"} - set(arrays):
            raise ValueError(f"{path}: descriptor index lacks arrays {sorted(missing)}")
        index = faiss.deserialize_index(arrays["index"])
        owners, image_ids = arrays["owners"].astype(np.int32), [str(i) for i in arrays["image_ids"]]
        if len(owners) != index.ntotal or len(image_ids) != meta["num_images"]:
            raise ValueError(f"{path}: {len(owners)} owners for {index.ntotal} descriptors, {len(image_ids)} image ids "
                             f"for {meta['num_images']} images")
        config = {key: meta[key] for key in ("extractor", "descriptor", "index")}
        return cls(index, owners, meta["num_images"], config), image_ids


def _indexed_vectors(features: Sequence[LocalFeatures], first_owner: int, extractor_config: dict[str, Any]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, owner image of each) of `features`, their images numbered from `first_owner`."""
    method = extractor_config.get("method", "sift")
    for i, item in enumerate(features):
        check_descriptors(item.descriptors, method, f"features[{i}]", extractor_config.get("variant"))
    owners = np.repeat(np.arange(first_owner, first_owner + len(features), dtype=np.int32), [len(f) for f in features])
    width = config_descriptor_spec(extractor_config)[0] or (features[0].descriptors.shape[1] if features else 128)
    vectors = unit_vectors(np.concatenate([f.descriptors for f in features]), method) if len(owners) else \
        np.zeros((0, width), np.float32)
    return vectors, owners


def _check_extractor(source: Path, built_with: Any, expected: dict[str, Any] | None) -> None:
    if expected is not None and built_with != dict(expected):
        raise ValueError(f"{source}: descriptor index was built with local features {built_with}, "
                         f"but this matcher extracts {dict(expected)}; rebuild the index")


@dataclass
class OneVsManyMatcher:
    """LNBNN voting over a descriptor index, then pairwise verification of each query's top voted images.

    Args:
        k: neighbours that vote per query descriptor (HotSpotter's K); the (k+1)-th is the normaliser.
        shortlist: images per query re-scored by spatial verification (B).
        verifier: the pairwise matcher whose MAGSAC inlier count re-scores the shortlist; its settings serve either
            descriptor family (`verifier_for`: the indexed family's).
        exact_limit: index exactly up to this many gallery descriptors, approximately (IVF) beyond.
        search_rows: query descriptors per faiss search, from consecutive queries: one query's few hundred rows
            a call left faiss's blocked BLAS search ~6x slower for the same votes (bench/lnbnn_voting_speed.py);
            1 searches each query alone.
    """

    k: int = 4
    shortlist: int = 20
    verifier: LocalMatcher | None = None
    exact_limit: int = 200_000
    nprobe: int = 16
    search_rows: int = 4096

    def __post_init__(self):
        if self.k < 1 or self.shortlist < 0 or self.search_rows < 1:
            raise ValueError(f"need k >= 1, shortlist >= 0 and search_rows >= 1, got k={self.k}, "
                             f"shortlist={self.shortlist}, search_rows={self.search_rows}")
        self.verifier = self.verifier or LocalMatcher()

    def verifier_for(self, extractor: str | dict[str, Any] | None) -> LocalMatcher:
        """The verifier for features of `extractor` (a method name or an extractor config; None or {}: as set)."""
        method = extractor.get("method") if isinstance(extractor, dict) else extractor
        return self.verifier.for_method(method)

    def build_index(self, gallery: Sequence[LocalFeatures], extractor_config: dict[str, Any]) -> DescriptorIndex:
        return DescriptorIndex.build(gallery, extractor_config, exact_limit=self.exact_limit, nprobe=self.nprobe)

    def votes(self, queries: Sequence[LocalFeatures], index: DescriptorIndex, *, leave_one_out: bool = False,
              progress: bool = True) -> np.ndarray:
        """(Q, G) LNBNN vote totals. With `leave_one_out` (queries are the indexed images) a query's own
        descriptors are skipped, so its normaliser is the (k+1)-th neighbour among the other images."""
        scores = np.zeros((len(queries), index.num_images), dtype=np.float32)
        # Self matches take at most a few slots per descriptor (its own copy, rare repeats within the image).
        extra = 4 if leave_one_out else 0
        batches = _query_batches(queries, self.search_rows)
        bar = tqdm(total=sum(map(len, batches)), desc="LNBNN voting", unit="query", disable=not progress)
        for batch in batches:
            vectors = index.query_vectors(np.concatenate([queries[q].descriptors for q in batch]),
                                          f"queries {batch[0]}..{batch[-1]}")
            distances, owners = index.search(vectors, self.k + 1 + extra)
            start = 0
            for q in batch:
                rows = slice(start, start + len(queries[q]))
                start = rows.stop
                scores[q] = self._query_votes(distances[rows], owners[rows], q if leave_one_out else None,
                                              index.num_images)
            bar.update(len(batch))
        bar.close()
        return scores

    def _query_votes(self, distances: np.ndarray, owners: np.ndarray, own_image: int | None,
                     num_images: int) -> np.ndarray:
        """One query's (G,) votes from its descriptors' neighbours (`own_image`'s left out: leave-one-out)."""
        votes = np.zeros(num_images, dtype=np.float32)
        if own_image is not None:
            distances, owners = _drop_owner(distances, owners, own_image, self.k + 1)
        if owners.shape[1] < 2:
            return votes
        voters = min(self.k, owners.shape[1] - 1)
        weights = distances[:, voters:voters + 1] - distances[:, :voters]
        owners = owners[:, :voters]
        valid = owners >= 0
        # One vote per (descriptor, image): its best (largest-weight) neighbour in that image.
        rows = np.repeat(np.arange(len(owners)), voters)[valid.ravel()]
        pairs = np.stack([rows, owners[valid]], axis=1)
        order = np.lexsort((-weights[valid], pairs[:, 1], pairs[:, 0]))
        pairs, values = pairs[order], weights[valid][order]
        first = np.ones(len(pairs), dtype=bool)
        first[1:] = np.any(pairs[1:] != pairs[:-1], axis=1)
        np.add.at(votes, pairs[first, 1], np.maximum(values[first], 0.0))
        return votes

    def score(self, queries: Sequence[LocalFeatures], gallery: Sequence[LocalFeatures], index: DescriptorIndex, *,
              leave_one_out: bool = False, num_workers: int | None = None, progress: bool = True) -> np.ndarray:
        """(Q, G) float32 scores (see the module docstring); `index` holds `gallery`'s descriptors."""
        if index.num_images != len(gallery):
            raise ValueError(f"the descriptor index holds {index.num_images} images but the gallery has {len(gallery)}")
        votes = self.votes(queries, index, leave_one_out=leave_one_out, progress=progress)
        return self.verify(votes, queries, gallery, leave_one_out=leave_one_out, num_workers=num_workers,
                           progress=progress, method=index.method)

    def verify(self, votes: np.ndarray, queries: Sequence[LocalFeatures], gallery: Sequence[LocalFeatures], *,
               leave_one_out: bool = False, num_workers: int | None = None, progress: bool = True,
               method: str | None = None) -> np.ndarray:
        """Re-score each query's `shortlist` best-voted images by verified inliers (`method`: the features'
        family, default the verifier's)."""
        share = (votes / np.maximum(votes.max(axis=1, keepdims=True), 1e-12)).astype(np.float32)
        if leave_one_out:
            np.fill_diagonal(share, -np.inf)
        candidates = shortlist_by_score(voted(share, votes), self.shortlist)
        inliers = np.full(share.shape, -np.inf, dtype=np.float32)
        if candidates.size:
            inliers = self.verifier_for(method).score(queries, gallery, candidates, num_workers=num_workers,
                                                      progress=progress)
        return local_scores(share, inliers, np.isfinite(inliers))


def _query_batches(queries: Sequence[LocalFeatures], rows: int) -> list[list[int]]:
    """Consecutive queries with keypoints, grouped until a group holds about `rows` descriptors."""
    batches, batch, size = [], [], 0
    for q, features in enumerate(queries):
        if len(features) == 0:
            continue  # no keypoints, no votes
        batch.append(q)
        size += len(features)
        if size >= rows:
            batches.append(batch)
            batch, size = [], 0
    return batches + ([batch] if batch else [])


def voted(vote_share: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """The vote share where an image got votes, -inf elsewhere: images without a single vote never enter a
    local shortlist (a query without keypoints has no local shortlist at all)."""
    return np.where(votes > 0, vote_share, -np.inf)


def local_scores(vote_share: np.ndarray, inliers: np.ndarray, verified: np.ndarray) -> np.ndarray:
    """One local score per pair: the LNBNN vote share (in [0, 1]) plus `INLIER_WEIGHT * log(1 + inliers)`
    where `verified`; unverified pairs score `share - 1`, below every verified one.

    Votes lead and inliers only order near-ties: chosen on the training splits (leave-one-out top-1,
    lion:train / nyala:train): votes alone 50.0 / 24.3 %, inliers first (inliers + share / 2) 44.4 / 22.0 %,
    share + 0.02 log1p(inliers) 50.2 / 24.3 %; larger inlier weights lose up to 1.4 pp."""
    scores = (vote_share - 1.0).astype(np.float32)
    scores[verified] = vote_share[verified] + INLIER_WEIGHT * np.log1p(np.maximum(inliers[verified], 0.0))
    return scores


def shortlist_by_score(scores: np.ndarray, size: int) -> np.ndarray:
    """(Q, min(size, G)) column indices of each row's `size` highest finite scores, best first; -1 pads rows
    with fewer finite entries (LocalMatcher.score ignores negative candidates)."""
    size = min(int(size), scores.shape[1])
    if size <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-scores, size - 1, axis=1)[:, :size]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    chosen = np.take_along_axis(part, order, axis=1).astype(np.int64)
    chosen[~np.isfinite(np.take_along_axis(scores, chosen, axis=1))] = -1
    return chosen


def _drop_owner(distances: np.ndarray, owners: np.ndarray, owner: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first `keep` neighbours that do not belong to `owner` (rows short of them pad with -1)."""
    other = owners != owner
    order = np.argsort(~other, axis=1, kind="stable")  # other-image neighbours first, in distance order
    distances = np.take_along_axis(distances, order, axis=1)[:, :keep]
    owners = np.where(np.take_along_axis(other, order, axis=1), np.take_along_axis(owners, order, axis=1), -1)[:, :keep]
    return distances, owners
