"""Evaluation speed: embedding throughput of evaluate.py's embedding path, then the re-id metrics at
benchmark scale (10k queries x 10k gallery, and leave-one-out on 10k).

Embedding: `wildreid.embedding.embed_dataset` (JPEG decode, crop, resize, model; channels_last, bf16 on
CUDA) over generated JPEGs, with an ImageNet EfficientNet-Lite0 embedder unless --model is given.
Metrics: random 512-d embeddings over ~2000 identities (about 5 images each), the shape of a mid-sized
multi-species test split. Prints seconds per protocol and the peak resident memory.

    python bench/eval_speed.py [--model imagenet:tf_efficientnet_lite0] [--embed-images 256]
                               [--queries 10000] [--gallery 10000] [--dim 512] [--identities 2000]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hub_datasets.specs import load_spec
from hub_datasets.synthetic import generate_rows
from wildreid.embedding import embed_dataset, load_embedder
from wildreid.evaluation import choose_new_individual_threshold, open_set_metrics, retrieval_metrics, top1_matches


def embedding_throughput(model: str, images: int, batch_size: int, num_workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for row in generate_rows(n_species=1, n_identities=max(2, images // 4), images_per_identity=4, image_size=512, seed=2):
            (folder / row["identity"].split("/")[-1]).mkdir(exist_ok=True)
            (folder / row["identity"].split("/")[-1] / row["image_id"].split("/")[-1]).write_bytes(row["image"]["bytes"])
        dataset = load_spec(f"folder[species=bench]:{folder}")
        embedder = load_embedder(model)
        embed_dataset(embedder.model, dataset.select(range(batch_size)), embedder.processor, batch_size=batch_size,
                      num_workers=0, progress=False)  # warm-up
        start = time.perf_counter()
        result = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=batch_size,
                               num_workers=num_workers, progress=False)
        seconds = time.perf_counter() - start
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"embedding {len(result.indices)} JPEGs (512 px) with {model} at {embedder.processor.image_size}px, "
          f"batch {batch_size}, {num_workers} workers, on {device}: {len(result.indices) / seconds:.1f} img/s")


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
    parser.add_argument("--model", default="imagenet:tf_efficientnet_lite0", help="embedder for the throughput part")
    parser.add_argument("--embed-images", type=int, default=256, help="0 skips the embedding part")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    if args.embed_images:
        embedding_throughput(args.model, args.embed_images, args.batch_size, args.num_workers)

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
