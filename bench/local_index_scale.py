"""Local features at gallery scale: extraction and index build time, descriptor-index memory per image, what
100,000 images would take, and how far compressed (IVF-SQ8, IVF-PQ) LNBNN votes stray from exact ones.

For each extractor (SIFT and ALIKED-n16 by default, 512 keypoints, 512 px), on the first --images images of a
training split (nyala:train: 1,213 images, 179 individuals):
  (a) extraction time (reading, cropping, resizing, detecting; --workers processes of one thread each) and the
      build time of each descriptor index (`DescriptorIndex.build(index_type=...)`: exact, IVF-Flat, IVF-SQ8, IVF-PQ);
  (b) memory per image of each index (its faiss serialization, the owner of each descriptor, and IVF-PQ's
      precomputed distance table, which faiss rebuilds on load): exact float32, float16 storage (a
      `faiss.IndexScalarQuantizer` fp16 of the same vectors, built here only to weigh it), IVF-Flat, IVF-SQ8 (8-bit
      components in IVF-Flat's lists: `auto`'s choice past its exact limit) and IVF-PQ; and of the keypoints and
      descriptors a gallery keeps for spatial verification;
  (c) the projection to --project images (100,000) in --memory-gb (16): index and kept features in GiB, whether
      they fit, extraction hours on one thread, and the LNBNN search time per query (exact: linear in the
      descriptors; inverted files: in the descriptors scanned, nprobe x N / nlist, which overstates IVF-PQ, whose
      per-list distance tables do not grow; assumptions, not runs);
  (d) LNBNN votes of --queries randomly chosen gallery images, leave-one-out, with each index (k 4, as
      `OneVsManyMatcher`): agreement of each approximate index's best-voted image with exact search's, overlap of
      their 20-image shortlists (what spatial verification sees), and each index's leave-one-out top-1 by votes
      alone (the best-voted image is the query's individual; queries whose individual has another image).
Writes bench/results/local_index_scale.json (with the git commit). The data stay outside the repository.

    python bench/local_index_scale.py                       # 1,000 nyala:train images, 200 queries
    python bench/local_index_scale.py --images 80 --queries 20    # a quick check (~3 min)

The full run takes ~30 min on one thread (estimated from quick checks on 2 shared cores: extraction ~0.16 s per
image for SIFT and ~0.62 s for ALIKED-n16, ~2.5 min of index builds and ~5-6 min of voting per extractor, most of
it exact search); peak memory stays under 2 GB.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's wildreid, not another install

from bench_common import limit_threads, write_report  # noqa: E402

limit_threads()

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from hub_datasets.specs import load_specs  # noqa: E402
from wildreid.evaluation.matching import extract_local_set  # noqa: E402
from wildreid.matching import LocalFeatureExtractor  # noqa: E402
from wildreid.matching.descriptor_index import INDEX_TYPES as BUILT_TYPES, DescriptorIndex, inverted_lists  # noqa: E402
from wildreid.matching.one_vs_many import OneVsManyMatcher, shortlist_by_score, voted  # noqa: E402

INDEX_TYPES = tuple(kind for kind in BUILT_TYPES if kind != "auto")  # each kind DescriptorIndex.build makes
INVERTED = tuple(kind for kind in INDEX_TYPES if kind != "exact")
GIB = 2**30


def extractor_for(name: str) -> LocalFeatureExtractor:
    """"sift" or "aliked-<variant>" at the library's defaults (512 keypoints, 512 px)."""
    if name == "sift":
        return LocalFeatureExtractor("sift")
    return LocalFeatureExtractor("aliked", variant=name.removeprefix("aliked-"))


def stored_bytes(index: faiss.Index, owners: np.ndarray) -> int:
    """What an index takes in memory: its faiss serialization (the bytes a gallery's descriptor_index file holds),
    the int32 owner of each descriptor, and IVF-PQ's precomputed distance table (rebuilt on load, not saved)."""
    table = index.precomputed_table.size() * 4 if isinstance(index, faiss.IndexIVFPQ) else 0
    return int(len(faiss.serialize_index(index)) + owners.nbytes + table)


def fixed_bytes(index: faiss.Index, nlist: int) -> int:
    """The part of an index's memory that does not grow with its descriptors, for `nlist` inverted lists: coarse
    centroids, and for IVF-PQ its codebooks and precomputed table (nlist x sub-vectors x 256 float32)."""
    if not isinstance(index, faiss.IndexIVF):
        return 0
    size = nlist * index.d * 4
    if isinstance(index, faiss.IndexIVFPQ):
        size += (nlist * index.pq.M + index.d) * index.pq.ksub * 4
    return size


def vote_figures(votes: np.ndarray, exact: np.ndarray, identities: np.ndarray, shortlist: int) -> dict:
    """Agreement of `votes` with the exact index's: best-voted image, shortlist overlap; and top-1 by votes."""
    queries = len(votes)
    ours = shortlist_by_score(voted(votes, votes), shortlist)
    reference = shortlist_by_score(voted(exact, exact), shortlist)
    overlap = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(ours, reference)]
    # Queries whose individual has another gallery image: the only ones a vote can get right.
    answerable = np.array([np.sum(identities == identities[q]) > 1 for q in range(queries)])
    right = identities[votes.argmax(axis=1)] == identities[:queries]
    return {"best_voted_image_agrees": float(np.mean(votes.argmax(axis=1) == exact.argmax(axis=1))),
            "shortlist_overlap": float(np.mean(overlap)),
            "top1_by_votes": float(np.mean(right[answerable])) if answerable.any() else None,
            "answerable_queries": int(answerable.sum())}


def measure(name: str, dataset, args) -> dict:
    extractor = extractor_for(name).load()
    tick = time.perf_counter()
    extracted = extract_local_set(dataset, extractor, num_workers=args.workers, progress=False)
    extraction = time.perf_counter() - tick
    print(f"{name}: {len(extracted.features)} images extracted in {extraction:.0f} s", flush=True)
    # The queries are a random sample, put first in the gallery: query q is gallery image q, as leave-one-out
    # voting expects.
    order = np.random.default_rng(args.seed).permutation(len(extracted.features))
    features = [extracted.features[i] for i in order]
    identities = extracted.identities[order]
    images, descriptors = len(features), sum(len(f) for f in features)
    indexes, build = {}, {}
    for kind in INDEX_TYPES:
        tick = time.perf_counter()
        indexes[kind] = DescriptorIndex.build(features, extractor.config, index_type=kind, seed=args.seed)
        build[kind] = time.perf_counter() - tick
        print(f"{name}: {indexes[kind].config['index']} index of {descriptors} descriptors built in {build[kind]:.0f} s",
              flush=True)
    exact = indexes["exact"]
    half = faiss.IndexScalarQuantizer(exact.index.d, faiss.ScalarQuantizer.QT_fp16)
    half.add(exact.index.reconstruct_n(0, exact.index.ntotal))
    stored = {kind: stored_bytes(index.index, index.owners) for kind, index in indexes.items()}
    stored["float16"] = stored_bytes(half, exact.owners)
    lists = inverted_lists(descriptors)
    # Per descriptor beyond the fixed part: what the projection multiplies.
    growing = {kind: (size - fixed_bytes(indexes[kind].index if kind in indexes else half, lists)) / descriptors
               for kind, size in stored.items()}
    kept = sum(f.keypoints.nbytes + f.descriptors.nbytes for f in features) / images
    matcher = OneVsManyMatcher()
    queries = min(args.queries, images)
    votes, vote_seconds = {}, {}
    for kind in INDEX_TYPES:
        tick = time.perf_counter()
        votes[kind] = matcher.votes(features[:queries], indexes[kind], leave_one_out=True, progress=False)
        vote_seconds[kind] = (time.perf_counter() - tick) / queries
    agreement = {kind: vote_figures(votes[kind], votes["exact"], identities, matcher.shortlist)
                 for kind in INDEX_TYPES}
    row = {"extractor": name, "config": extractor.config, "images": images, "descriptors": descriptors,
           "extraction_seconds": round(extraction, 1), "extraction_seconds_per_image": round(extraction / images, 3),
           "build_seconds": {kind: round(s, 2) for kind, s in build.items()},
           "index": {kind: index.config["index"] for kind, index in indexes.items()},
           "bytes_per_image": {kind: round(size / images) for kind, size in stored.items()},
           "bytes_per_descriptor_beyond_fixed": {kind: round(b, 1) for kind, b in growing.items()},
           "kept_features_bytes_per_image": round(kept),
           "queries": queries, "vote_seconds_per_query": {kind: round(s, 3) for kind, s in vote_seconds.items()},
           "votes": agreement, "projection": projection({**indexes, "float16": half}, growing, kept, extraction / images,
                                                        vote_seconds, descriptors, images, args)}
    print_row(row)
    return row


def projection(indexes: dict, growing: dict, kept: float, extraction_per_image: float, vote_seconds: dict,
               descriptors: int, images: int, args) -> dict:
    """What --project images would take (see the module docstring for the assumptions)."""
    target = int(args.project * descriptors / images)  # descriptors at the projected size
    scan = {"exact": target / descriptors,  # brute force: every descriptor
            **{kind: target / descriptors * inverted_lists(descriptors) / inverted_lists(target)
               for kind in INVERTED}}  # nprobe lists of N / nlist descriptors each
    rows = {}
    for kind, per in growing.items():
        index = indexes[kind]
        index_gib = (per * target + fixed_bytes(getattr(index, "index", index), inverted_lists(target))) / GIB
        rows[kind] = {"index_gib": round(index_gib, 2), "bytes_per_image": round(index_gib * GIB / args.project),
                      "index_fits": index_gib <= args.memory_gb,
                      "with_kept_features_fits": index_gib + kept * args.project / GIB <= args.memory_gb}
        if kind in scan:
            rows[kind]["vote_seconds_per_query"] = round(vote_seconds[kind] * scan[kind], 2)
    return {"images": args.project, "memory_gib": args.memory_gb, "kept_features_gib": round(kept * args.project / GIB, 2),
            "extraction_hours_one_thread": round(extraction_per_image * args.project / 3600, 1), "indexes": rows}


def print_row(row: dict) -> None:
    print(f"\n## {row['extractor']}: {row['images']} images, {row['descriptors']} descriptors; extraction "
          f"{row['extraction_seconds']} s ({row['extraction_seconds_per_image']} s/image)")
    projected = row["projection"]
    print(f"| index | build s | bytes/image | bytes/image at {projected['images']:,} | GiB at {projected['images']:,} | fits {projected['memory_gib']} GiB "
          f"(+ kept features {projected['kept_features_gib']} GiB) | vote s/query | projected s/query | best voted "
          f"= exact | shortlist overlap | top-1 by votes |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("exact", "float16", *INVERTED):
        p, votes = projected["indexes"][kind], row["votes"].get(kind, {})
        cells = [kind, row["build_seconds"].get(kind, "-"), row["bytes_per_image"][kind], p["bytes_per_image"],
                 p["index_gib"],
                 f"{p['index_fits']} ({p['with_kept_features_fits']})", row["vote_seconds_per_query"].get(kind, "-"),
                 p.get("vote_seconds_per_query", "-"), votes.get("best_voted_image_agrees", "-"),
                 votes.get("shortlist_overlap", "-"), votes.get("top1_by_votes", "-")]
        print("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    print(f"extraction at {projected['images']:,} images: {projected['extraction_hours_one_thread']} h on one thread",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="nyala:train", help="a training split (never an evaluated set)")
    parser.add_argument("--images", type=int, default=1000, help="its first N images form the gallery")
    parser.add_argument("--queries", type=int, default=200, help="gallery images voted leave-one-out")
    parser.add_argument("--extractors", nargs="+", default=["sift", "aliked-n16"],
                        choices=["sift", "aliked-n16", "aliked-n16rot", "aliked-t16"])
    parser.add_argument("--workers", type=int, default=1, help="extraction processes (one thread each)")
    parser.add_argument("--project", type=int, default=100_000, help="gallery size to project to")
    parser.add_argument("--memory-gb", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", help="default $WILDREID_DATA")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "local_index_scale.json"))
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()
    dataset = load_specs([args.spec], data_dir=args.data_dir)
    dataset = dataset.select(range(min(args.images, len(dataset))))
    rows = [measure(name, dataset, args) for name in args.extractors]
    write_report(args.output, "local_index_scale", {
        "spec": args.spec, "images_asked": args.images, "workers": args.workers, "threads_per_worker": 1,
        "faiss": faiss.__version__, "cpu_count": os.cpu_count(), "load_average_before": [round(v, 2) for v in load_before],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "wall_seconds": round(time.perf_counter() - started), "rows": rows,
        "note": "GiB = 2**30 bytes; bytes_per_image: as measured at this gallery's size, fixed parts (an inverted "
                "file's centroids, IVF-PQ's codebooks and precomputed table) included; the projection adds the fixed "
                "parts at its own nlist to the growing bytes per descriptor; projected search times scale the measured ones by the "
                "descriptors scanned and are not runs; the machine was shared with other jobs (see the load "
                "averages), so seconds are upper bounds",
    })


if __name__ == "__main__":
    main()
