"""Time the re-id metrics at benchmark scale: 10k queries x 10k gallery, and leave-one-out on 10k.

Random 512-d embeddings over ~2000 identities (about 5 images each), the shape of a mid-sized
multi-species test split. Prints seconds per protocol and the peak resident memory.

    PYTHONPATH=. python bench/metric_speed.py [--queries 10000] [--gallery 10000] [--dim 512] [--identities 2000]
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from wildreid.evaluation import choose_new_individual_threshold, open_set_metrics, retrieval_metrics, top1_matches


def timed(label: str, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    print(f"{label:<44} {time.perf_counter() - start:7.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--identities", type=int, default=2_000)
    parser.add_argument("--chunk-size", type=int, default=None, help="queries per chunk (default: automatic)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    gallery = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    query_labels = rng.integers(0, args.identities, args.queries)
    gallery_labels = rng.integers(0, args.identities, args.gallery)
    print(
        f"{args.queries} queries x {args.gallery} gallery, {args.dim}-d, {args.identities} identities, "
        f"chunk_size={args.chunk_size or 'auto'}, numpy {np.__version__}"
    )
    result = timed(
        "query vs gallery: CMC + mAP", retrieval_metrics, queries, query_labels, gallery, gallery_labels,
        chunk_size=args.chunk_size,
    )
    print(f"  top1 {result['top1']:.4f}  map {result['map']:.4f}  (random embeddings: chance level)")
    result = timed(
        "leave-one-out on the queries: CMC + mAP", retrieval_metrics, queries, query_labels, chunk_size=args.chunk_size
    )
    print(f"  n_queries {result['n_queries']}  n_skipped {result['n_skipped']}")
    matches = timed(
        "open set: top-1 matches", top1_matches, queries, query_labels, gallery, gallery_labels,
        chunk_size=args.chunk_size,
    )
    threshold = timed("open set: choose threshold + BAKS/BAUS", choose_new_individual_threshold, matches)
    open_set_metrics(matches, threshold)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    embeddings_mib = (queries.nbytes + gallery.nbytes) / 2**20
    print(f"peak resident memory {peak_mib:.0f} MiB (embeddings alone: {embeddings_mib:.0f} MiB)")


if __name__ == "__main__":
    main()
