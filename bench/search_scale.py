"""Exact vs approximate top-k search at gallery scale: latency, recall@k, build time, peak memory.

    nice python bench/search_scale.py                          # 1M x {512, 2152}, 1000 queries, flat + IVF
    nice python bench/search_scale.py --dims 512 --kinds flat ivf hnsw --num 200000
    nice python bench/search_scale.py --data clustered         # vectors around 'individuals'

Vectors are generated chunk by chunk straight into each index (never one big array), and indexes are
built one after another and freed, so peak memory is about one index. Random Gaussian data has no
neighbourhood structure (every vector is nearly equidistant from every other), which makes it the worst
case for approximate recall; real embeddings cluster by individual (see --data clustered).
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wildreid.identification.search import EmbeddingIndex, default_nlist, recall_at_k  # noqa: E402


class PeakRSS:
    """Samples this process's resident memory every 50 ms; `peak_gb` is the maximum seen inside."""

    def __init__(self):
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.peak = 0

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.05)

    def __enter__(self):
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return self.peak / 2**30


class Generator:
    """Deterministic unit vectors, one chunk at a time (chunk i always has the same content)."""

    def __init__(self, kind: str, dim: int, seed: int, num_centres: int, spread: float = 0.35):
        self.kind, self.dim, self.seed, self.spread = kind, dim, seed, spread
        if kind == "clustered":
            self.centres = np.random.default_rng(seed).standard_normal((num_centres, dim), dtype=np.float32)

    def chunk(self, index: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        noise = rng.standard_normal((size, self.dim), dtype=np.float32)
        if self.kind == "clustered":
            noise *= self.spread
            noise += self.centres[rng.integers(0, len(self.centres), size)]
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        return noise

    def chunks(self, total: int, size: int):
        for i, start in enumerate(range(0, total, size)):
            yield self.chunk(i, min(size, total - start))


def timed_search(index: EmbeddingIndex, queries: np.ndarray, k: int, single: int) -> dict:
    start = time.perf_counter()
    _, ids = index.search(queries, k)
    batch_s = time.perf_counter() - start
    # One query at a time on one thread, as a service answering one photo would; with several OpenMP
    # threads on a busy machine each tiny search waits on thread wake-ups (24 ms vs 0.35 ms measured).
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    singles = []
    for query in queries[:single]:
        start = time.perf_counter()
        index.search(query[None], k)
        singles.append(time.perf_counter() - start)
    faiss.omp_set_num_threads(threads)
    return {"ids": ids, "batch_s": batch_s, "batch_ms_per_query": 1000 * batch_s / len(queries),
            "single_ms": 1000 * float(np.median(singles)) if singles else float("nan")}


def run_dim(args, dim: int) -> list[dict]:
    # Clustered data: ~10 images per "individual", like a real gallery.
    generator = Generator(args.data, dim, seed=args.seed, num_centres=max(1, args.num // 10))
    queries = generator.chunk(10**6, args.queries)  # same centres, fresh draws
    rows, exact_ids = [], None
    nlist = args.nlist or default_nlist(args.num)
    for kind in args.kinds:
        with PeakRSS() as memory:
            start = time.perf_counter()
            index = EmbeddingIndex(dim, kind, storage=args.storage, nlist=nlist, hnsw_m=args.hnsw_m,
                                   ef_construction=args.ef_construction)
            if index.needs_training:
                train_size = min(args.num, args.train_size or 64 * nlist)
                index.train(np.concatenate(list(generator.chunks(train_size, args.chunk))))
            for chunk in generator.chunks(args.num, args.chunk):
                index.add(chunk)
            build_s = time.perf_counter() - start
            knobs = {"flat": [None], "ivf": args.nprobe, "hnsw": args.ef_search}[kind]
            for knob in knobs:
                if kind == "ivf":
                    index.nprobe = knob
                elif kind == "hnsw":
                    index.ef_search = knob
                result = timed_search(index, queries, args.k, args.single)
                if kind == "flat":
                    exact_ids = result["ids"]
                recall = recall_at_k(result["ids"], exact_ids) if exact_ids is not None else float("nan")
                knob_text = "-" if knob is None else f"{'nprobe' if kind == 'ivf' else 'ef'}={knob}"
                rows.append({"dim": dim, "kind": kind, "knob": knob_text,
                             "build_s": build_s, "recall": recall, **{k: v for k, v in result.items() if k != "ids"}})
                print(format_row(rows[-1], memory.peak_gb), flush=True)
            del index
            gc.collect()
        for row in rows:
            if row["dim"] == dim and row["kind"] == kind:
                row["peak_gb"] = memory.peak_gb
    return rows


HEADER = ("| dim | index | knob | build s | recall@k | batch total s | batch ms/query "
          "| single-query ms (median, 1 thread) | peak RSS GB |\n|---|---|---|---|---|---|---|---|---|")


def format_row(row: dict, peak_gb: float) -> str:
    return (f"| {row['dim']} | {row['kind']} | {row['knob']} | {row['build_s']:.1f} | {row['recall']:.3f} | "
            f"{row['batch_s']:.2f} | {row['batch_ms_per_query']:.2f} | {row['single_ms']:.1f} | {peak_gb:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2152])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf"], choices=["flat", "ivf", "hnsw"])
    parser.add_argument("--storage", default="float32", choices=["float32", "float16"])
    parser.add_argument("--data", default="random", choices=["random", "clustered"])
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~sqrt(num))")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--train-size", type=int, default=None, help="IVF training vectors (default 64 x nlist)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--single", type=int, default=20, help="queries also timed one at a time")
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if "flat" not in args.kinds:
        parser.error("--kinds must include flat: it is the exact reference for recall")
    args.kinds = ["flat"] + [kind for kind in args.kinds if kind != "flat"]

    import faiss

    print(f"# search scale: {args.num:,} {args.data} unit vectors, {args.queries} queries, top-{args.k}, "
          f"storage {args.storage}; faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads, "
          f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM")
    if args.data == "random":
        print("# NOTE: random Gaussian vectors are the worst case for approximate recall (no cluster structure); "
              "real embeddings cluster by individual, try --data clustered")
    print(HEADER)
    rows = []
    for dim in args.dims:
        rows += run_dim(args, dim)
    print("\n# final (peak RSS per index phase)\n" + HEADER)
    for row in rows:
        print(format_row(row, row["peak_gb"]))
    print(f"# process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


if __name__ == "__main__":
    main()
