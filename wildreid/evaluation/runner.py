"""What `evaluate.py` does: load sets and a model, embed with the model's own preprocessing, run a
protocol per species, print the table, write the results JSON (and figures)."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset

from hub_datasets.specs import load_specs
from hub_datasets.splits import open_set_split

from ..cards.render import render_results_table
from ..embedding import Embeddings, LoadedEmbedder, embed_dataset, load_embedder, undecoded
from ..embedding.training_record import fitted_on_training_images
from ..matching import LocalFeatureExtractor
from ..matching.keypoints import DEFAULT_MAX_KEYPOINTS, DEFAULT_MAX_SIDE
from ..matching.methods import METHOD_NAMES
from ..provenance import code_version
from .plots import figure_paths, plot_cmc_curves, plot_match_grid
from .matching import LocalSet, extract_local_set
from .method_protocols import evaluate_method, image_set
from .protocols import PROTOCOLS, closed_set_by_species, leave_one_out_by_species, open_set_by_species

logger = logging.getLogger(__name__)
METHODS = METHOD_NAMES


@dataclass
class EvaluationRequest:
    """One evaluation; the fields are `evaluate.py`'s flags."""

    datasets: list[str]
    model: str | None = None
    protocol: str = "leave-one-out"
    method: str = "global"  # global, local (one-vs-many SIFT), local-pairwise, fusion (union of shortlists), auto
    shortlist: int = 20  # local / fusion / auto: candidates per query from each shortlist that get verified
    max_keypoints: int = DEFAULT_MAX_KEYPOINTS  # local / fusion / auto: keypoints kept per image
    local_features: str = "sift"  # local / fusion / auto: the extractor, "sift" or "aliked"
    aliked_variant: str | None = None  # with local_features="aliked": n16 (default), n16rot, t16
    aliked_scales: list[float] | None = None  # with local_features="aliked": pyramid levels (default [1.0])
    local_max_side: int = DEFAULT_MAX_SIDE  # local / fusion / auto: crops resized to this longest side
    gallery: list[str] = field(default_factory=list)  # closed/open-set gallery specs
    val_datasets: list[str] = field(default_factory=list)  # open-set: validation queries for the threshold
    output: str | None = None
    data_dir: str | None = None
    batch_size: int = 64
    num_workers: int = 2
    image_size: int | None = None  # baselines only: wildreid models keep their own
    runtime: str = "torch"  # or "onnx": --model is a `wildreid export --format onnx` folder
    flip_test: bool = False  # average each embedding with its mirror image's (WildReIDConfig.flip_test)
    exclude_same_encounter: bool = False  # a query does not see its own encounter's photos (metrics)
    split_seed: int = 0  # open-set without --gallery: seed of the derived gallery/query split
    plots: bool = False
    command: str | None = None

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if not self.datasets:
            raise ValueError("no datasets to evaluate: pass --datasets")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.model is None and self.method not in ("local", "local-pairwise"):
            raise ValueError(f"--model is required for --method {self.method} (only local matching needs none)")
        if (self.aliked_variant or self.aliked_scales) and self.local_features != "aliked":
            raise ValueError("--aliked_variant and --aliked_scales need --local_features aliked")
        if self.flip_test and self.model is None:
            raise ValueError("--flip_test changes how --model embeds images; local matching alone has no embeddings")
        if self.exclude_same_encounter and self.protocol == "open-set":
            raise ValueError("--exclude_same_encounter applies to leave-one-out and closed-set evaluation")
        if self.method != "global" and self.protocol == "open-set":
            raise ValueError("open-set evaluation supports --method global only")
        if self.method in ("fusion", "auto") and not self.val_datasets and self.protocol != "closed-set":
            raise ValueError(f"--method {self.method} is fitted on --val_datasets, a training split "
                             "(e.g. lion:train for lion:val); closed-set defaults to the --gallery")
        if self.protocol == "closed-set" and not self.gallery:
            raise ValueError("closed-set needs --gallery (e.g. --datasets lion:val --gallery lion:train)")
        if self.protocol == "open-set" and bool(self.gallery) != bool(self.val_datasets):
            raise ValueError("open-set takes --gallery and --val_datasets together, or neither (then the "
                             "gallery/query/validation parts are derived from --datasets)")


def _load(specs: list[str], data_dir: str | None, what: str) -> Dataset:
    dataset = load_specs(specs, data_dir=data_dir)
    if len(dataset) == 0:
        raise ValueError(f"{what} {specs} has no images")
    return dataset


def _embed(embedder: LoadedEmbedder, dataset: Dataset, request: EvaluationRequest, desc: str) -> Embeddings:
    embedded = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=request.batch_size,
                             num_workers=request.num_workers, desc=desc)
    if embedded.failures:
        print(f"warning: {len(embedded.failures)} image(s) of {desc} could not be read and were skipped, "
              f"e.g. {embedded.failures[0].file}: {embedded.failures[0].reason}", file=sys.stderr)
    if len(embedded.indices) == 0:
        raise ValueError(f"no image of {desc} could be embedded")
    return embedded


def _split(dataset: Dataset, name: str) -> Dataset:
    return dataset.filter(lambda split: split == name, input_columns="split")


def run_evaluation(request: EvaluationRequest) -> dict:
    request.validate()
    started = time.perf_counter()
    queries = _load(request.datasets, request.data_dir, "--datasets")
    embedder = (load_embedder(request.model, image_size=request.image_size, runtime=request.runtime,
                              flip_test=request.flip_test or None) if request.model else None)
    seen = embedder.training_species if embedder else []
    failures = []
    timings = {}

    def embed(dataset: Dataset, desc: str) -> Embeddings:
        tick = time.perf_counter()
        embedded = _embed(embedder, dataset, request, desc)
        timings[desc] = {"images": len(dataset), "seconds": round(time.perf_counter() - tick, 2)}
        failures.extend({"set": desc, **f.to_dict()} for f in embedded.failures)
        return embedded

    if request.method != "global":
        results = _run_matching(request, queries, embedder, embed, seen, timings, failures)
        query_embeddings = gallery_set = gallery_embeddings = None
    elif request.protocol == "leave-one-out":
        query_embeddings = embed(queries, "queries")
        results = leave_one_out_by_species(queries, query_embeddings, training_species=seen,
                                           exclude_same_encounter=request.exclude_same_encounter)
        gallery_set, gallery_embeddings = None, None
    elif request.protocol == "closed-set":
        gallery_set = _load(request.gallery, request.data_dir, "--gallery")
        query_embeddings, gallery_embeddings = embed(queries, "queries"), embed(gallery_set, "gallery")
        results = closed_set_by_species(queries, query_embeddings, gallery_set, gallery_embeddings, training_species=seen,
                                        exclude_same_encounter=request.exclude_same_encounter)
    else:
        if request.gallery:
            gallery_set = _load(request.gallery, request.data_dir, "--gallery")
            val_queries = _load(request.val_datasets, request.data_dir, "--val_datasets")
            val_gallery = gallery_set
        else:
            # Nested open-set splits: test queries vs the gallery part; the threshold is fitted on a second
            # open-set split made inside the gallery part, so test queries never influence it.
            parts = open_set_split(queries, seed=request.split_seed)
            gallery_set, queries = _split(parts, "train"), _split(parts, "test")
            inner = open_set_split(gallery_set, seed=request.split_seed + 1)
            val_gallery, val_queries = _split(inner, "train"), _split(inner, "test")
        query_embeddings, gallery_embeddings = embed(queries, "queries"), embed(gallery_set, "gallery")
        val_gallery_embeddings = gallery_embeddings if val_gallery is gallery_set else embed(val_gallery, "validation gallery")
        results = open_set_by_species(
            queries, query_embeddings, gallery_set, gallery_embeddings, val_query_set=val_queries,
            val_query=embed(val_queries, "validation queries"), val_gallery_set=val_gallery,
            val_gallery=val_gallery_embeddings, training_species=seen,
        )
    results.update({
        "model": request.model or f"local features ({request.local_features.upper()})", "protocol": request.protocol,
        "method": request.method,
        "datasets": request.datasets, "flip_test": bool(embedder and embedder.flip_test),
        "exclude_same_encounter": request.exclude_same_encounter,
        "gallery": request.gallery or None, "command": request.command, "failures": failures,
        "timings": {**timings, "total_seconds": round(time.perf_counter() - started, 2)}, **code_version(),
    })
    print(render_results_table(results, request.output or "(not saved)", "evaluate.py"))
    if request.output:
        output = Path(request.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
        if request.plots and query_embeddings is not None:
            _write_figures(output, results, embedder, queries, query_embeddings, gallery_set, gallery_embeddings)
        elif request.plots:
            plot_cmc_curves({n: m for n, m in results["species"].items() if m.get("cmc")}, figure_paths(output)[0],
                            title=f"CMC, {request.protocol}, {request.method}")
    return results


def _run_matching(request: EvaluationRequest, queries: Dataset, embedder: LoadedEmbedder | None, embed, seen,
                  timings: dict, failures: list) -> dict:
    """Every method but plain global: local features (--local_features: SIFT or ALIKED) on every crop (and
    embeddings where the method uses them), then `method_protocols.evaluate_method` per species. Fusion and auto
    are fitted on --val_datasets, or in closed-set on the --gallery (leave-one-out within it): training splits,
    never the test queries."""
    extractor = LocalFeatureExtractor(request.local_features, request.max_keypoints, request.local_max_side,
                                      **({"variant": request.aliked_variant, "scales": request.aliked_scales}
                                         if request.local_features == "aliked" else {})).load()
    uses_embeddings = request.method in ("fusion", "auto")

    def local(dataset: Dataset, desc: str) -> LocalSet:
        tick = time.perf_counter()
        extracted = extract_local_set(dataset, extractor, num_workers=request.num_workers)
        timings[f"{desc} (local features)"] = {"images": len(dataset), "seconds": round(time.perf_counter() - tick, 2)}
        failures.extend({"set": desc, **f} for f in extracted.failures)
        return extracted

    def images(dataset: Dataset, desc: str):
        return image_set(dataset, embed(dataset, desc) if uses_embeddings else None, local(dataset, desc), extractor.config)

    gallery_set = _load(request.gallery, request.data_dir, "--gallery") if request.protocol == "closed-set" else None
    query_images = images(queries, "queries")
    gallery_images = None if gallery_set is None else images(gallery_set, "gallery")
    validation, reused = None, []
    if uses_embeddings:
        validation = images(_load(request.val_datasets, request.data_dir, "--val_datasets"), "validation") \
            if request.val_datasets else gallery_images
        fit_specs = request.val_datasets or list(request.gallery)
        reused = fitted_on_training_images(request.model, fit_specs, f"--method {request.method}")
    tick = time.perf_counter()
    results = evaluate_method(request.method, query_images, gallery_images, validation=validation,
                              shortlist=request.shortlist, num_workers=request.num_workers, training_species=seen,
                              exclude_same_encounter=request.exclude_same_encounter)
    timings["matching and scoring"] = {"seconds": round(time.perf_counter() - tick, 2)}
    results["local_features"] = extractor.config
    if uses_embeddings and reused:
        results["fitted_on_training_images"] = reused
    return results


def _write_figures(output: Path, results: dict, embedder: LoadedEmbedder, queries: Dataset, query_embeddings: Embeddings,
                   gallery_set: Dataset | None, gallery_embeddings: Embeddings | None, n_queries: int = 6, top_k: int = 5) -> None:
    """CMC curves per species and a grid of the first queries with their top-k matches."""
    cmc_path, grid_path = figure_paths(output)
    curves = {name: m for name, m in results["species"].items() if m.get("cmc")}
    if curves:
        plot_cmc_curves(curves, cmc_path, title=f"CMC, {results['protocol']}")
    leave_one_out = gallery_set is None
    gallery_set, gallery_embeddings = (queries, query_embeddings) if leave_one_out else (gallery_set, gallery_embeddings)
    q_ids = np.asarray(queries["identity"], dtype=object)[query_embeddings.indices]
    g_ids = np.asarray(gallery_set["identity"], dtype=object)[gallery_embeddings.indices]
    q_species = np.asarray(queries["species"], dtype=object)[query_embeddings.indices]
    g_species = np.asarray(gallery_set["species"], dtype=object)[gallery_embeddings.indices]
    similarity = query_embeddings.vectors[:n_queries] @ gallery_embeddings.vectors.T
    similarity[q_species[:n_queries, None] != g_species[None, :]] = -np.inf  # metrics are per species too
    if leave_one_out:
        similarity[np.arange(len(similarity)), np.arange(len(similarity))] = -np.inf
    crop = embedder.processor.crop

    def image(dataset, row):
        record = undecoded(dataset)[int(row)]
        return crop(record["image"], record.get("bbox"), record.get("theta") or 0.0)

    rows, captions = [], []
    for q in range(len(similarity)):
        order = np.argsort(-similarity[q], kind="stable")[:top_k]
        matches = [(image(gallery_set, gallery_embeddings.indices[g]), str(g_ids[g]), float(similarity[q, g]),
                    g_ids[g] == q_ids[q]) for g in order]
        rows.append((image(queries, query_embeddings.indices[q]), matches))
        captions.append(str(q_ids[q]))
    plot_match_grid(rows, grid_path, query_captions=captions)


def command_line(argv: list[str]) -> str:
    return "python evaluate.py " + " ".join(shlex.quote(a) for a in argv)
