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

The index (`wildreid.matching.descriptor_index.DescriptorIndex`, imported from here too) is exact
(`faiss.IndexFlatL2`) up to `exact_limit` descriptors and an inverted file of 8-bit codes
(`IndexIVFScalarQuantizer`, nlist ~ 4 sqrt(N), nprobe 16) beyond, unless the matcher's `index_type` asks for one kind
("ivf": float32 lists; "ivfpq": product-quantized codes, half IVF-SQ8's memory); `DescriptorIndex.recall` measures an
approximate index against exact search on a sample of queries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from .descriptor_index import DescriptorIndex, check_index_type
from .keypoints import LocalFeatures
from .local_matcher import LocalMatcher

INLIER_WEIGHT = 0.02


@dataclass
class OneVsManyMatcher:
    """LNBNN voting over a descriptor index, then pairwise verification of each query's top voted images.

    Args:
        k: neighbours that vote per query descriptor (HotSpotter's K); the (k+1)-th is the normaliser.
        shortlist: images per query re-scored by spatial verification (B).
        verifier: the pairwise matcher whose MAGSAC inlier count re-scores the shortlist; its settings serve either
            descriptor family (`verifier_for`: the indexed family's).
        index_type: "auto" (exact up to `exact_limit` gallery descriptors, IVF-SQ8 beyond), "exact", "ivf",
            "ivfsq8" or "ivfpq" (see `wildreid.matching.descriptor_index`).
        exact_limit: index exactly up to this many gallery descriptors, approximately (IVF) beyond ("auto").
        nprobe: inverted lists searched per descriptor by an inverted-file index.
        search_rows: query descriptors per faiss search, from consecutive queries: one query's few hundred rows
            a call left faiss's blocked BLAS search ~6x slower for the same votes (bench/lnbnn_voting_speed.py);
            1 searches each query alone.
    """

    k: int = 4
    shortlist: int = 20
    verifier: LocalMatcher | None = None
    index_type: str = "auto"
    exact_limit: int = 200_000
    nprobe: int = 16
    search_rows: int = 4096

    def __post_init__(self):
        check_index_type(self.index_type)
        if self.k < 1 or self.shortlist < 0 or self.search_rows < 1:
            raise ValueError(f"need k >= 1, shortlist >= 0 and search_rows >= 1, got k={self.k}, "
                             f"shortlist={self.shortlist}, search_rows={self.search_rows}")
        self.verifier = self.verifier or LocalMatcher()

    def verifier_for(self, extractor: str | dict[str, Any] | None) -> LocalMatcher:
        """The verifier for features of `extractor` (a method name or an extractor config; None or {}: as set)."""
        method = extractor.get("method") if isinstance(extractor, dict) else extractor
        return self.verifier.for_method(method)

    def build_index(self, gallery: Sequence[LocalFeatures], extractor_config: dict[str, Any]) -> DescriptorIndex:
        return DescriptorIndex.build(gallery, extractor_config, index_type=self.index_type,
                                     exact_limit=self.exact_limit, nprobe=self.nprobe)

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
