"""The descriptor index of one-vs-many local retrieval (`wildreid.matching.one_vs_many`): every descriptor of a
set of images in one faiss index, each remembering its image (`owners`), saved and loaded with the extractor
config it was built with (a query of another family, or an index built with other settings, is refused).

SIFT descriptors are indexed as RootSIFT, ALIKED descriptors as given; both are unit vectors. Index types
(`DescriptorIndex.build(index_type=...)`):

- "exact": `faiss.IndexFlatL2`, float32 vectors (512 bytes a 128-d descriptor);
- "ivf": an inverted file of float32 vectors (`IndexIVFFlat`, nlist ~ 4 sqrt(N), nprobe 16): as large as exact,
  each descriptor searched among the lists nearest to it only;
- "ivfsq8": the inverted file with each component quantized to 8 bits (`IndexIVFScalarQuantizer`, QT_8bit, 128
  bytes a 128-d descriptor, about 140 with the lists' ids): on 1,000 nyala:train images (~512k descriptors, 200
  leave-one-out queries, bench/local_index_scale.py) its best-voted image agreed with the exact index's as often as
  IVF-Flat's (SIFT 92.5 % both; ALIKED-n16 85.5 % against 85.0 %), with the same top-1 by votes and vote time, at
  27 % of IVF-Flat's memory;
- "ivfpq": the inverted file with product-quantized codes (`IndexIVFPQ`, `pq_layout`: dim / 2 sub-vectors of
  2 components, 8 bits each, 64 bytes a 128-d descriptor, 32 for ALIKED-t16's 64-d): half of IVF-SQ8's memory, for
  galleries whose descriptors outgrow even that. Its distances are estimates, so the LNBNN votes move: in the same
  run the best-voted image agreed with the exact index's for 91.5 % (SIFT) and 83.5 % (ALIKED) of queries (4
  components a code, 32 bytes, on 300 images: 83 %). Searching builds distance tables per probed list, 2-3x
  IVF-SQ8's time, and faiss keeps a precomputed table of nlist x dim / 2 x 256 float32 beside the codes (1 GiB at
  16,384 lists);
- "auto" (default): exact up to `exact_limit` descriptors, "ivfsq8" beyond: an inverted file's votes at no loss
  against IVF-Flat, and 100,000 images of 512 SIFT descriptors in ~6.7 GiB where IVF-Flat needs ~25 (the run's
  projection). Galleries indexed before "ivfsq8" existed keep their IVF-Flat index until indexed again.

Inverted files train their centroids (and codebooks) on at most `MAX_TRAINING_VECTORS` descriptors drawn across
all images, and descriptors are added `ADD_CHUNK_IMAGES` images at a time, so building never holds every
descriptor as float32 at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from .keypoints import UNIT_VECTOR_METHODS, LocalFeatures, check_descriptors, config_descriptor_spec, unit_vectors

INDEX_FORMAT = "wildreid-descriptor-index"
INDEX_FORMAT_VERSION = 1
INDEX_FILE = "descriptors.faiss"
INDEX_META_FILE = "descriptors.json"
OWNERS_FILE = "descriptor_owners.npy"
DESCRIPTOR_SPACES = {"sift": "rootsift", "aliked": "aliked-l2"}
INDEX_TYPES = ("auto", "exact", "ivf", "ivfsq8", "ivfpq")
# k-means trains on 64 descriptors per inverted list, at most 1,048,576 in all (512 MB of float32 128-d vectors;
# ~25 min of k-means on one thread, scaled from 12 s for 1,565 lists on 100k): nlist stops growing at 16,384, past
# ~16.7M descriptors (~33,000 images of 512), and lists grow longer beyond (a search scans more of them).
TRAINING_PER_LIST = 64
MAX_TRAINING_VECTORS = 1_048_576
ADD_CHUNK_IMAGES = 256


def check_index_type(index_type: str) -> None:
    """Refuse an unknown `index_type`, naming the known ones (early, before any work that would need the index)."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown descriptor index type {index_type!r}; choose one of {INDEX_TYPES}")


def pq_layout(dim: int) -> tuple[int, int]:
    """(sub-vectors, bits per code) of the IVF-PQ codes of `dim`-d descriptors: 2 components a sub-vector, 8 bits.
    Chosen on 300 nyala:train SIFT images (see the module docstring): 4 components a sub-vector halved the memory
    but lost 9 pp of best-voted-image agreement with exact search."""
    return dim // 2, 8


def inverted_lists(num_vectors: int) -> int:
    """nlist of an inverted file over `num_vectors` descriptors: ~4 sqrt(N), capped by the training bound."""
    return max(1, min(int(4 * np.sqrt(num_vectors)), MAX_TRAINING_VECTORS // TRAINING_PER_LIST))


class DescriptorIndex:
    """All descriptors of a set of images in one faiss index, each remembering its image (`owners`)."""

    def __init__(self, index: faiss.Index, owners: np.ndarray, num_images: int, config: dict[str, Any]):
        self.index, self.owners, self.num_images, self.config = index, owners, int(num_images), dict(config)

    @classmethod
    def build(cls, features: Sequence[LocalFeatures], extractor_config: dict[str, Any], *, index_type: str = "auto",
              exact_limit: int = 200_000, nprobe: int = 16, seed: int = 0) -> "DescriptorIndex":
        """The index of `features` (see the module docstring for `index_type`; `exact_limit` applies to "auto")."""
        extractor_config = dict(extractor_config)
        method = extractor_config.get("method", "sift")
        if method not in UNIT_VECTOR_METHODS:
            raise ValueError(f"one-vs-many retrieval indexes SIFT (as RootSIFT) or ALIKED descriptors; got method "
                             f"{method!r}")
        check_index_type(index_type)
        for i, item in enumerate(features):
            check_descriptors(item.descriptors, method, f"features[{i}]", extractor_config.get("variant"))
        counts = np.array([len(f) for f in features], dtype=np.int64)
        total = int(counts.sum())
        dim = config_descriptor_spec(extractor_config)[0] or (features[0].descriptors.shape[1] if features else 128)
        if index_type == "auto":
            index_type = "exact" if total <= exact_limit else "ivfsq8"
        if index_type == "exact":
            index, kind = faiss.IndexFlatL2(dim), "exact"
        else:
            nlist = inverted_lists(total)
            if index_type == "ivf":
                index, kind = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist), f"ivf{nlist},nprobe{nprobe}"
            elif index_type == "ivfsq8":
                index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit)
                kind = f"ivf{nlist},sq8,nprobe{nprobe}"
            else:
                subvectors, bits = pq_layout(dim)
                index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, subvectors, bits)
                # 64 points per codebook centroid, not faiss's 256: 2-d k-means needs no more, and the 64 codebooks'
                # training took ~3x longer with 256 (187 vs 58 s on 61k SIFT descriptors).
                index.pq.cp.max_points_per_centroid = 64
                kind = f"ivfpq{nlist},pq{subvectors}x{bits},nprobe{nprobe}"
            # k-means needs a training vector per centroid: nlist of them, and 2**bits per PQ codebook.
            needed = max(nlist, 2 ** pq_layout(dim)[1] if index_type == "ivfpq" else 1)
            if total < needed:
                raise ValueError(f"a {index_type} descriptor index needs at least {needed} descriptors to train on, "
                                 f"got {total}; use index_type 'exact' or 'auto' (`wildreid index --descriptor_index`)")
            size = min(total, TRAINING_PER_LIST * nlist)
            index.train(_training_sample(features, counts, size, method, seed))
            index.nprobe = nprobe
        for start in range(0, len(features), ADD_CHUNK_IMAGES):
            index.add(_indexed_vectors(features[start:start + ADD_CHUNK_IMAGES], 0, extractor_config)[0])
        owners = np.repeat(np.arange(len(features), dtype=np.int32), counts)
        config = {"extractor": extractor_config, "descriptor": DESCRIPTOR_SPACES[method], "index": kind}
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
        way instead of rebuilding). An inverted file keeps its trained centroids (and codebooks) and an exact
        index stays exact past `exact_limit`; `build` (`wildreid index`) chooses again."""
        vectors, owners = _indexed_vectors(features, self.num_images, self.config["extractor"])
        self.index.add(vectors)
        self.owners = np.concatenate([self.owners, owners])
        self.num_images += len(features)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, owners) of each vector's k nearest descriptors; L2 distances (not squared; IVF-PQ's and
        IVF-SQ8's are estimated from the codes), owner -1 where fewer than k exist."""
        k = min(k, len(self))
        if k == 0 or len(vectors) == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int32)
        squared, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        owners = np.where(ids >= 0, self.owners[np.maximum(ids, 0)], -1)
        return np.sqrt(np.maximum(squared, 0.0)), owners

    def recall(self, vectors: np.ndarray, k: int, sample: int = 2000, seed: int = 0,
               exact: "DescriptorIndex | None" = None) -> float | None:
        """Fraction of the exact k nearest neighbours the index returns, on a sample of `vectors`; None for an
        exact index (recall 1 by construction). `exact`: the same descriptors in an exact index, needed for
        IVF-PQ and IVF-SQ8 (their codes are not the descriptors); an IVF-Flat index holds them itself."""
        if not isinstance(self.index, faiss.IndexIVF) or len(vectors) == 0:
            return None
        if exact is None:
            if not isinstance(self.index, faiss.IndexIVFFlat):
                raise ValueError(f"the recall of a {self.config['index']} index needs the exact index of the same "
                                 "descriptors (exact=DescriptorIndex.build(..., index_type='exact'))")
            self.index.make_direct_map()
            reference = faiss.IndexFlatL2(self.index.d)
            reference.add(self.index.reconstruct_n(0, self.index.ntotal))
        else:
            reference = exact.index
        rng = np.random.default_rng(seed)
        chosen = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)]
        _, nearest = reference.search(chosen, k)
        _, approx = self.index.search(chosen, k)
        return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, nearest)]))

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


def _training_sample(features: Sequence[LocalFeatures], counts: np.ndarray, size: int, method: str,
                     seed: int) -> np.ndarray:
    """`size` unit vectors drawn without replacement from all images' descriptors, in the drawn order, without
    concatenating every descriptor first."""
    rows = np.random.default_rng(seed).choice(int(counts.sum()), size=size, replace=False)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    image = np.searchsorted(starts, rows, side="right") - 1
    by_image = np.argsort(image, kind="stable")
    images, first = np.unique(image[by_image], return_index=True)
    drawn = np.concatenate([features[i].descriptors[rows[group] - starts[i]]
                            for i, group in zip(images, np.split(by_image, first[1:]))])
    sample = np.empty_like(drawn)
    sample[by_image] = drawn  # back in the drawn order, as k-means saw the sample before this helper
    return unit_vectors(sample, method)


def _check_extractor(source: Path, built_with: Any, expected: dict[str, Any] | None) -> None:
    if expected is not None and built_with != dict(expected):
        raise ValueError(f"{source}: descriptor index was built with local features {built_with}, "
                         f"but this matcher extracts {dict(expected)}; rebuild the index")
