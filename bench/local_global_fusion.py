"""Local features vs global embeddings vs their fusion, leave-one-out, on the real species, in one table.

    python bench/local_global_fusion.py [--model imagenet:tf_efficientnet_lite0] [--output bench/results/local_global_fusion.json]

Sets (every method on the same images): lion:val, nyala:test, pig:test. Fusion is calibrated on each
species' training split (lion:train, nyala:train, pig:train), never on the evaluated images. Global is
the ImageNet EfficientNet-Lite0 embedder unless --model names a trained one. Prints top-1 / mAP (%) and
the wall time of each method.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid (and its commit in the JSON), not another install

from wildreid.evaluation.runner import EvaluationRequest, run_evaluation  # noqa: E402
from wildreid.provenance import code_version  # noqa: E402

SETS = {"lion": ("lion:val", "lion:train"), "nyala": ("nyala:test", "nyala:train"), "pig": ("pig:test", "pig:train")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="imagenet:tf_efficientnet_lite0")
    parser.add_argument("--species", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--data_dir")
    parser.add_argument("--output", help="write the table as JSON")
    args = parser.parse_args()
    evaluated = [SETS[name][0] for name in args.species]
    calibration = [SETS[name][1] for name in args.species]
    table, seconds = {}, {}
    for method in ("local", "global", "fusion"):
        start = time.perf_counter()
        results = run_evaluation(EvaluationRequest(
            datasets=evaluated, model=None if method == "local" else args.model, method=method,
            val_datasets=calibration if method == "fusion" else [], shortlist=args.shortlist, data_dir=args.data_dir,
        ))
        seconds[method] = time.perf_counter() - start
        table[method] = {name: {"top1": m["top1"], "map": m["map"], "n_queries": m["n_queries"]}
                         for name, m in results["species"].items()}
    print(f"\nleave-one-out top-1 / mAP (%), global = {args.model}, fusion shortlist {args.shortlist}")
    print(f"{'method':8s} " + " ".join(f"{name:>16s}" for name in args.species) + f" {'time (s)':>10s}")
    for method, per_species in table.items():
        cells = " ".join(f"{100 * per_species[n]['top1']:7.1f} / {100 * per_species[n]['map']:5.1f}" for n in args.species)
        print(f"{method:8s} {cells} {seconds[method]:10.0f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"model": args.model, "sets": {n: SETS[n] for n in args.species},
                                                 "results": table, "seconds": seconds, **code_version()}, indent=2))


if __name__ == "__main__":
    main()
