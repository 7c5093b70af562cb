"""Does an int8 export answer as its source model does? Measured when it is made, on labelled images.

int8 moves embeddings a little (mean cosine 0.97-0.99 to fp32 on real crops); what a user feels is whether the
nearest individual changes. Each check image queries the others of its species (leave-one-out); a query's
margin is the cosine to the nearest image of its own individual minus that to the nearest other individual's
(> 0: top-1 right). The check lists the queries whose answer int8 changes and their fp32 margins, which tells
near-ties reordered (bench/onnx_int8_accuracy.py lists them on real sets; docs/guides/onnx.md) from lost
discrimination.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasets import Dataset

from ..embedding import embed_dataset, load_embedder


def nearest_neighbour_margins(vectors: np.ndarray, identities: np.ndarray) -> np.ndarray:
    """Per query (leave-one-out): best same-identity cosine minus best other-identity cosine; NaN where the
    query is the only image of its individual (retrieval metrics skip it too) or no other individual is
    there to confuse it with."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    same = identities[:, None] == identities[None, :]
    other = ~same
    np.fill_diagonal(same, False)
    positive = np.where(same, similarity, -np.inf).max(1)
    negative = np.where(other, similarity, -np.inf).max(1)
    return np.where(same.any(1) & other.any(1), positive - negative, np.nan)


def changed_answers(fp32_margin: np.ndarray, int8_margin: np.ndarray) -> dict:
    """The queries whose top-1 correctness int8 changes, with their fp32 margins."""
    answered = ~np.isnan(fp32_margin)
    lost = answered & (fp32_margin > 0) & (int8_margin <= 0)
    gained = answered & (fp32_margin <= 0) & (int8_margin > 0)
    return {"queries": int(answered.sum()), "lost": int(lost.sum()), "gained": int(gained.sum()),
            "lost_fp32_margins": sorted(round(float(m), 4) for m in fp32_margin[lost]),
            "gained_fp32_margins": sorted(round(float(m), 4) for m in fp32_margin[gained]),
            "median_abs_fp32_margin": round(float(np.median(np.abs(fp32_margin[answered]))), 4)
            if answered.any() else None}


def check_rows(dataset: Dataset, images: int, seed: int = 1) -> list[int]:
    """About `images` rows, shared equally between the species: whole individuals with at least two images,
    in a seeded order, until each species has its share."""
    rows_of: dict = {}
    for row, key in enumerate(zip(dataset["species"], dataset["identity"])):
        rows_of.setdefault(key, []).append(row)
    species = sorted({name for name, _ in rows_of}, key=str)
    share = -(-images // len(species)) if species and images > 0 else 0
    chosen: list[int] = []
    rng = np.random.default_rng(seed)
    for name in species:
        candidates = [rows for (sp, _), rows in rows_of.items() if sp == name and len(rows) >= 2]
        taken = 0
        for index in rng.permutation(len(candidates)):
            if taken >= share:
                break
            chosen += candidates[index]
            taken += len(candidates[index])
    return sorted(chosen)


def compare_int8(source: str, int8_folder: str, dataset: Dataset, *, batch_size: int = 32,
                 num_workers: int = 2, flip_test: bool | None = None) -> dict:
    """Leave-one-out within each species of `dataset`: the source model (torch, fp32) against its int8
    export; top-1 both ways, the answers int8 changes, and the mean cosine between the two embeddings."""
    embedded = {}
    for name, runtime in (("fp32", "torch"), ("int8", "onnx")):
        embedder = (load_embedder(source, runtime=runtime, flip_test=flip_test) if name == "fp32"
                    else load_embedder(int8_folder, runtime=runtime))
        embedded[name] = embed_dataset(embedder.model, dataset, embedder.processor, batch_size=batch_size,
                                       num_workers=num_workers, desc=f"int8 check ({name})")
    common = np.intersect1d(embedded["fp32"].indices, embedded["int8"].indices)
    vectors = {}
    for name, e in embedded.items():  # rows that failed to load in either runtime are left out of both
        position = {int(row): i for i, row in enumerate(e.indices)}
        vectors[name] = e.vectors[[position[int(row)] for row in common]]
    species = np.asarray(dataset["species"], dtype=object)[common]
    identities = np.asarray(dataset["identity"], dtype=object)[common]
    report: dict = {"images": int(len(common)),
                    "mean_cosine": round(float((vectors["fp32"] * vectors["int8"]).sum(1).mean()), 5)
                    if len(common) else None, "species": {}}
    for name in sorted(set(species)):
        mask = species == name
        margins = {k: nearest_neighbour_margins(v[mask], identities[mask]) for k, v in vectors.items()}
        answered = ~np.isnan(margins["fp32"])
        changed = changed_answers(margins["fp32"], margins["int8"])
        top1 = {f"{k}_top1": round(float((m[answered] > 0).mean()), 4) if answered.any() else None
                for k, m in margins.items()}
        report["species"][name] = {**top1, **changed}
    return report


def summary_lines(report: dict) -> Sequence[str]:
    """What `wildreid export` prints about the check."""
    lines = [f"int8 check on {report['images']} labelled images (leave-one-out within each species; "
             f"mean cosine to fp32 {report['mean_cosine']}):"]
    for name, row in report["species"].items():
        if row["queries"] == 0:
            lines.append(f"  {name}: no individual with two check images")
            continue
        lines.append(f"  {name}: top-1 fp32 {100 * row['fp32_top1']:.1f} % -> int8 {100 * row['int8_top1']:.1f} %; "
                     f"int8 changes {row['lost']} right answers to wrong and {row['gained']} wrong to right of "
                     f"{row['queries']} queries (their fp32 margins {row['lost_fp32_margins'] or '-'}; median "
                     f"|margin| {row['median_abs_fp32_margin']})")
    return lines
