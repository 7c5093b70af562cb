"""Which method identifies individuals best, per set: ImageNet lite0, the trained model, pairwise SIFT,
one-vs-many local retrieval, union fusion and auto, with the time each takes.

Sets (real data, `$WILDREID_DATA`): leave-one-out on lion:val, nyala:test, dog[max_identities=100]:test,
pig:test, and closed-set lion and nyala (hub_datasets `closed_set` split, test queried against train).
Fusion and auto are fitted (calibration, combiner, method choice) on the training split of each species,
leave-one-out within it: never on the test queries. Fusion/auto use `--model` as their global input
except on the closed-set rows, whose test individuals (and images) the trained model saw in training:
there they use ImageNet lite0.

    python bench/identification_accuracy.py --model outputs/cpu_real [--sets lion-val pig-test] [--shortlist 20]

Prints one table and writes JSON (with the git commit) to bench/results/identification_accuracy.json.
Local features and embeddings are cached under --cache-dir (outside the repo: they derive from the data).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from bench_common import limit_threads

limit_threads()

from hub_datasets.specs import load_specs  # noqa: E402  (thread settings first)
from wildreid.embedding import Embeddings, embed_dataset, load_embedder  # noqa: E402
from wildreid.evaluation.grouping import macro_average  # noqa: E402
from wildreid.evaluation.matching import LocalSet, extract_local_set  # noqa: E402
from wildreid.evaluation.method_protocols import image_set  # noqa: E402
from wildreid.evaluation.metrics import retrieval_metrics_from_similarity  # noqa: E402
from wildreid.matching import LocalFeatureExtractor, LocalFeatures  # noqa: E402
from wildreid.matching.methods import AutoMethod, FusionMethod, GlobalMethod, OneVsManyLocalMethod, PairwiseLocalMethod  # noqa: E402
from wildreid.matching.one_vs_many import OneVsManyMatcher  # noqa: E402
from wildreid.matching.selection import ranking_figures  # noqa: E402
from wildreid.matching.union_fusion import UnionFusion  # noqa: E402
from wildreid.provenance import code_version  # noqa: E402

IMAGENET = "imagenet:tf_efficientnet_lite0"
# name: (queries, gallery or None for leave-one-out, validation = a training split)
SETS = {
    "lion-val": ("lion:val", None, "lion:train"),
    "nyala-test": ("nyala:test", None, "nyala:train"),
    "dog-test": ("dog[max_identities=100]:test", None, "dog[max_identities=100]:train"),
    "pig-test": ("pig:test", None, "pig:train"),
    "lion-closed": ("lion[split_strategy=closed_set]:test", "lion[split_strategy=closed_set]:train",
                    "lion[split_strategy=closed_set]:train"),
    "nyala-closed": ("nyala[split_strategy=closed_set]:test", "nyala[split_strategy=closed_set]:train",
                     "nyala[split_strategy=closed_set]:train"),
}
PUBLISHED = {"lion-closed": 25.16, "nyala-closed": 36.45}  # MegaDescriptor-L-384, wildlife-tools baselines
RESULTS = Path(__file__).parent / "results" / "identification_accuracy.json"


def cache_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def model_stamp(model: str) -> str:
    weights = Path(model) / "model.safetensors"
    return f"{model}@{weights.stat().st_mtime_ns}" if weights.is_file() else model


def local_features(spec: str, cache: Path, extractor: LocalFeatureExtractor, workers: int):
    path = cache / f"local-{cache_key(spec, json.dumps(extractor.config, sort_keys=True))}.npz"
    dataset = load_specs([spec])
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        bounds = data["offsets"]
        features = [LocalFeatures(data["keypoints"][a:b], data["descriptors"][a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        rows = data["rows"]
        return dataset, LocalSet(features, rows, np.asarray(dataset["identity"], dtype=object)[rows],
                                 np.asarray(dataset["species"], dtype=object)[rows], [])
    tick = time.perf_counter()
    local = extract_local_set(dataset, extractor, num_workers=workers, progress=False)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in local.features])])
    np.savez(path, rows=local.rows, offsets=offsets,
             keypoints=np.concatenate([f.keypoints for f in local.features]),
             descriptors=np.concatenate([f.descriptors for f in local.features]))
    print(f"  local features of {spec}: {len(local.features)} images, {time.perf_counter() - tick:.0f} s", flush=True)
    return dataset, local


def embeddings(model: str, spec: str, dataset, cache: Path):
    path = cache / f"embed-{cache_key(model_stamp(model), spec)}.npz"
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        return Embeddings(data["vectors"], data["indices"])
    embedder = load_embedder(model)
    embedded = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=32, num_workers=0, progress=False)
    np.savez(path, vectors=embedded.vectors, indices=embedded.indices)
    return embedded


def measure(scores: np.ndarray, queries, gallery) -> dict:
    metrics = retrieval_metrics_from_similarity(scores, queries.identities, None if gallery is None else gallery.identities,
                                                leave_one_out=gallery is None)
    return {"top1": metrics["top1"], "map": metrics["map"], "n_queries": metrics["n_queries"]}


def run_set(name: str, args, cache: Path, extractor: LocalFeatureExtractor) -> dict:
    query_spec, gallery_spec, validation_spec = SETS[name]
    closed = gallery_spec is not None
    fusion_model = IMAGENET if closed or not args.model else args.model
    models = [IMAGENET] + ([args.model] if args.model else [])
    datasets, locals_, embedded = {}, {}, {}
    for spec in dict.fromkeys(s for s in (query_spec, gallery_spec, validation_spec) if s):
        datasets[spec], locals_[spec] = local_features(spec, cache, extractor, args.workers)
        for model in models:
            embedded[model, spec] = embeddings(model, spec, datasets[spec], cache)

    def images(spec: str, model: str):
        return image_set(datasets[spec], embedded[model, spec], locals_[spec], extractor.config)

    record: dict = {"queries": query_spec, "gallery": gallery_spec, "validation": validation_spec,
                    "fusion_global_model": fusion_model, "methods": {}}
    queries = images(query_spec, fusion_model)
    gallery = images(gallery_spec, fusion_model) if closed else None
    if closed:  # closed set: only queries whose individual is in the gallery
        queries = queries.part(np.isin(queries.identities, list(set(gallery.identities))))
    validation = images(validation_spec, fusion_model)
    record["n_queries"], record["n_gallery"] = len(queries), len(gallery) if closed else len(queries)

    def timed(label: str, method, *, fit: bool = False) -> np.ndarray:
        entry = {}
        if fit:
            tick = time.perf_counter()
            entry["fit"] = method.fit(validation)
            entry["fit_seconds"] = round(time.perf_counter() - tick, 1)
        tick = time.perf_counter()
        scores = method.scores(queries, gallery)
        entry["seconds"] = round(time.perf_counter() - tick, 1)
        entry.update(measure(scores, queries, gallery))
        record["methods"][label] = entry
        print(f"  {name:13s} {label:22s} top-1 {100 * entry['top1']:5.1f}  mAP {100 * entry['map']:5.1f}  "
              f"{entry['seconds']:7.1f} s", flush=True)
        return scores

    for model in models:
        label = "ImageNet lite0" if model == IMAGENET else "trained model"
        model_queries = images(query_spec, model)
        model_gallery = images(gallery_spec, model) if closed else None
        if closed:
            model_queries = model_queries.part(np.isin(model_queries.identities, list(set(model_gallery.identities))))
        tick = time.perf_counter()
        scores = GlobalMethod().scores(model_queries, model_gallery)
        record["methods"][label] = {**measure(scores, model_queries, model_gallery),
                                    "seconds": round(time.perf_counter() - tick, 2),
                                    **({"note": "saw these individuals in training"} if closed and model != IMAGENET else {})}
        print(f"  {name:13s} {label:22s} top-1 {100 * record['methods'][label]['top1']:5.1f}  "
              f"mAP {100 * record['methods'][label]['map']:5.1f}", flush=True)
    one_vs_many = timed("one-vs-many local", OneVsManyLocalMethod(OneVsManyMatcher(shortlist=args.shortlist),
                                                                 num_workers=args.workers))
    if not args.skip_pairwise:
        pairwise(record, queries, gallery, one_vs_many, args)
    fusion = FusionMethod(UnionFusion(shortlist=args.shortlist, num_workers=args.workers))
    timed("union fusion", fusion, fit=True)
    auto = AutoMethod(fusion.fusion)
    auto.choose(record["methods"]["union fusion"]["fit"])  # the same validation figures: fitted once
    timed("auto", auto)
    record["methods"]["auto"]["chosen"] = auto.choice
    if name in PUBLISHED:
        record["published_megadescriptor_l384_top1"] = PUBLISHED[name]
    return record


def pairwise(record: dict, queries, gallery, one_vs_many: np.ndarray, args) -> None:
    """Pairwise SIFT, on a seeded sample of `--pairwise-queries` queries where the set has more (its time
    extrapolated to all queries, and one-vs-many measured on the same sample for a like-for-like row)."""
    everyone = len(queries)
    sample = np.arange(everyone)
    if args.pairwise_queries and everyone > args.pairwise_queries:
        sample = np.sort(np.random.default_rng(0).choice(everyone, size=args.pairwise_queries, replace=False))
    chosen = np.zeros(everyone, dtype=bool)
    chosen[sample] = True
    reference = queries if gallery is None else gallery
    matcher = PairwiseLocalMethod(num_workers=args.workers).matcher
    tick = time.perf_counter()
    if gallery is None and len(sample) == everyone:
        scores = matcher.score_within(queries.local, num_workers=args.workers, progress=False)
    else:
        scores = matcher.score(queries.part(chosen).local, reference.local, num_workers=args.workers, progress=False)
    seconds = time.perf_counter() - tick
    self_columns = sample if gallery is None else None

    def figures(matrix: np.ndarray) -> dict:
        return ranking_figures(matrix, queries.identities[sample], reference.identities, self_columns=self_columns)

    entry = {**figures(scores),  # rows: the sampled queries
             "queries_scored": len(sample), "seconds_measured": round(seconds, 1),
             "seconds": round(seconds * everyone / len(sample), 1)}
    if len(sample) < everyone:
        entry["one_vs_many_on_the_same_queries"] = figures(one_vs_many[sample])
    record["methods"]["SIFT pairwise"] = entry
    print(f"  {'':13s} {'SIFT pairwise':22s} top-1 {100 * entry['top1']:5.1f}  mAP {100 * entry['map']:5.1f}  "
          f"{entry['seconds']:7.1f} s ({len(sample)} of {everyone} queries)", flush=True)


def print_table(results: dict) -> None:
    labels = list(dict.fromkeys(label for record in results.values() for label in record["methods"]))
    print("\n| set | " + " | ".join(labels) + " | auto chose |")
    print("|---" * (len(labels) + 2) + "|")
    for name, record in results.items():
        cells = []
        for label in labels:
            entry = record["methods"].get(label)
            cells.append("–" if entry is None else f"{100 * entry['top1']:.1f} / {100 * entry['map']:.1f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {record['methods']['auto']['chosen']} |")
    print("(top-1 % / mAP %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the trained model folder (e.g. outputs/cpu_real); ImageNet lite0 only when absent")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--shortlist", type=int, default=20, help="B: candidates per query from each shortlist")
    parser.add_argument("--workers", type=int, default=1, help="processes for local matching")
    parser.add_argument("--skip-pairwise", action="store_true", help="leave out pairwise SIFT (the slowest method)")
    parser.add_argument("--pairwise-queries", type=int, default=150,
                        help="pairwise SIFT on a seeded sample of this many queries where a set has more (0: all)")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/wildreid/bench"))
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    output = Path(args.output)
    previous = json.loads(output.read_text())["sets"] if output.is_file() else {}
    extractor = LocalFeatureExtractor()
    started = time.perf_counter()
    version = code_version()  # before the run: the code that produced these numbers
    results = {}
    for name in args.sets:
        print(f"[{name}]", flush=True)
        results[name] = run_set(name, args, cache, extractor)
        # Sets of earlier runs stay in the file (each records its own commit), so sets can be run separately.
        previous[name] = {**results[name], **version}
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"benchmark": "identification_accuracy", "sets": previous}, indent=1) + "\n")
    print_table(results)
    means = {label: macro_average({n: r["methods"][label] for n, r in results.items() if label in r["methods"]})
             for label in ("ImageNet lite0", "trained model", "one-vs-many local", "union fusion", "auto")
             if any(label in r["methods"] for r in results.values())}
    print("mean top-1 over these sets: " + ", ".join(f"{k} {100 * v['top1']:.1f}" for k, v in means.items()))
    print(f"wrote {output} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
