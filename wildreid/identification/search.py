"""Nearest-neighbour search over L2-normalised embeddings (inner product = cosine) with faiss.

Exact search (`IndexFlatIP`) is the default; above `approximate_threshold` (200k) vectors an
approximate index is used. The default approximate index is IVF-Flat: training + adding 1M x 512
took 169 s on 2 busy cores (bench/search_scale.py), it stores the vectors once (same memory as exact),
accepts new vectors without a rebuild, and trades recall for speed with one knob (`nprobe`, lists
visited per query). HNSW is offered too: better recall at equal latency, but its graph build took
65 s for 100k x 512 on the same cores (so well over 10 min for 1M) and adds ~`2 x hnsw_m x 4` bytes
per vector; its knob is `ef_search`.

`storage="float16"` halves memory (vectors stored as fp16, scores computed in fp32); exact search then
has fp16 rounding on scores (~1e-3 of a cosine).
"""
from __future__ import annotations

import math
import faiss
import numpy as np

INDEX_KINDS = ("flat", "ivf", "hnsw")
STORAGES = ("float32", "float16")
DEFAULT_APPROXIMATE_THRESHOLD = 200_000
NORM_TOLERANCE = 1e-3


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """float32 copy with unit-length rows (zero rows stay zero)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def check_embeddings(embeddings: np.ndarray, dim: int, name: str = "embeddings") -> np.ndarray:
    """C-contiguous float32 (N, dim) with unit-length rows, or a ValueError saying what is wrong."""
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        row = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise ValueError(f"{name} row {row} holds NaN or inf")
    norms = np.linalg.norm(array, axis=1)
    if len(norms) and np.max(np.abs(norms - 1.0)) > NORM_TOLERANCE:
        row = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"{name} must be L2-normalised; row {row} has norm {norms[row]:.4f} (use l2_normalize)")
    return array


def choose_index_kind(num_vectors: int, approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
                      approximate_kind: str = "ivf") -> str:
    """"flat" up to `approximate_threshold` vectors, `approximate_kind` above."""
    return "flat" if num_vectors <= approximate_threshold else approximate_kind


def default_nlist(num_vectors: int) -> int:
    """~sqrt(N) inverted lists, at most N / 39 so every centroid gets faiss's minimum training points."""
    return int(max(1, min(round(math.sqrt(num_vectors)), num_vectors // 39)))


class EmbeddingIndex:
    """A faiss index over unit-length embeddings; `search` returns cosine scores and row ids.

    Args:
        dim: embedding width.
        kind: "flat" (exact), "ivf" (IVF-Flat; call `train` before `add`) or "hnsw".
        storage: "float32" or "float16".
        nlist: IVF lists; nprobe: IVF lists searched per query.
        hnsw_m: HNSW links per node; ef_construction / ef_search: HNSW beam widths.
    """

    def __init__(self, dim: int, kind: str = "flat", *, storage: str = "float32", nlist: int = 1024,
                 nprobe: int = 32, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 128):
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {INDEX_KINDS}")
        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r}; choose one of {STORAGES}")
        self.dim, self.kind, self.storage = int(dim), kind, storage
        metric = faiss.METRIC_INNER_PRODUCT
        fp16 = faiss.ScalarQuantizer.QT_fp16
        if kind == "flat":
            self.index = (faiss.IndexFlatIP(dim) if storage == "float32"
                          else faiss.IndexScalarQuantizer(dim, fp16, metric))
        elif kind == "ivf":
            self._quantizer = faiss.IndexFlatIP(dim)  # must outlive the IVF index that points to it
            self.index = (faiss.IndexIVFFlat(self._quantizer, dim, nlist, metric) if storage == "float32"
                          else faiss.IndexIVFScalarQuantizer(self._quantizer, dim, nlist, fp16, metric))
            self.index.nprobe = nprobe
        else:
            self.index = (faiss.IndexHNSWFlat(dim, hnsw_m, metric) if storage == "float32"
                          else faiss.IndexHNSWSQ(dim, fp16, hnsw_m, metric))
            self.index.hnsw.efConstruction = ef_construction
            self.index.hnsw.efSearch = ef_search

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_approximate(self) -> bool:
        return self.kind != "flat"

    @property
    def nprobe(self) -> int:
        return int(self.index.nprobe) if self.kind == "ivf" else 0

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise ValueError(f"nprobe applies to IVF indexes, this one is {self.kind!r}")
        self.index.nprobe = int(value)

    @property
    def ef_search(self) -> int:
        return int(self.index.hnsw.efSearch) if self.kind == "hnsw" else 0

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.kind != "hnsw":
            raise ValueError(f"ef_search applies to HNSW indexes, this one is {self.kind!r}")
        self.index.hnsw.efSearch = int(value)

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def train(self, sample: np.ndarray) -> None:
        """Fit the IVF coarse quantizer (and fp16 ranges) on a representative sample."""
        sample = check_embeddings(sample, self.dim, "training sample")
        if self.kind == "ivf" and len(sample) < self.index.nlist:
            raise ValueError(f"IVF with {self.index.nlist} lists needs at least that many training vectors, "
                             f"got {len(sample)}")
        self.index.train(sample)

    def add(self, embeddings: np.ndarray) -> None:
        """Append vectors; their ids continue from `ntotal`."""
        if self.needs_training:
            raise RuntimeError(f"{self.kind} index must be trained before vectors are added (call train)")
        self.index.add(check_embeddings(embeddings, self.dim))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids), each (Q, min(k, ntotal)), best first; approximate indexes may return
        id -1 (score -inf) when they find fewer than k vectors."""
        queries = check_embeddings(queries, self.dim, "queries")
        k = min(int(k), self.ntotal)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, ids = self.index.search(queries, k)
        scores[ids < 0] = -np.inf
        return scores, ids


def build_index(embeddings: np.ndarray, kind: str = "auto", *,
                approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD, approximate_kind: str = "ivf",
                storage: str = "float32", nlist: int | None = None, nprobe: int = 32, train_size: int | None = None,
                seed: int = 0, **options) -> EmbeddingIndex:
    """An index holding `embeddings`; kind "auto" is exact up to `approximate_threshold` vectors.

    IVF is trained on `train_size` (default 64 x nlist) vectors drawn with `seed`.
    """
    embeddings = check_embeddings(embeddings, np.shape(embeddings)[-1])
    if kind == "auto":
        kind = choose_index_kind(len(embeddings), approximate_threshold, approximate_kind)
    nlist = nlist or default_nlist(len(embeddings))
    index = EmbeddingIndex(embeddings.shape[1], kind, storage=storage, nlist=nlist, nprobe=nprobe, **options)
    if index.needs_training:
        size = min(len(embeddings), train_size or 64 * nlist)
        rows = np.sort(np.random.default_rng(seed).choice(len(embeddings), size, replace=False))
        index.train(embeddings[rows])
    index.add(embeddings)
    return index


def exact_search(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours of each query in `gallery` (both L2-normalised)."""
    return build_index(gallery, kind="flat").search(queries, k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int | None = None) -> float:
    """Mean fraction of each query's exact top-k ids that the approximate top-k found."""
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(f"{approx_ids.shape[0]} approximate rows but {exact_ids.shape[0]} exact rows")
    k = k or exact_ids.shape[1]
    if k > exact_ids.shape[1]:
        raise ValueError(f"k={k} exceeds the {exact_ids.shape[1]} exact neighbours given")
    if len(exact_ids) == 0 or k == 0:
        raise ValueError("recall_at_k needs at least one query and k >= 1")
    hits = [len(np.intersect1d(a[:k][a[:k] >= 0], e[:k])) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k)

