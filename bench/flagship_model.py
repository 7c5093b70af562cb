"""The flagship model (`configs/cpu_real.yaml`): how its weights were chosen, and what they score on the sets the
README and model card report, beside untrained ImageNet lite0 in the same run.

- `selection`: every validation of the run on the held-out fifth of each species' training individuals (its
  `val_datasets`; `hub_datasets.reported_sets`), step by step and for each WiSE-FT mix tried, with the one saved.
  This is the only data the run chose on.
- `reported`: leave-one-out top-1 / mAP on lion:val, nyala:test, dog[max_identities=100]:test and pig:test
  (individuals never seen in training, species seen) for the flagship and for ImageNet lite0. Nothing was
  chosen on these.

    python bench/flagship_model.py [--model outputs/cpu_real] [--output bench/results/flagship_model.json]

The flagship's evaluation is also written in evaluate.py's own format (`--eval-output`, what the model card's
`model-index` is built from), with the evaluate.py command that reproduces it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid, not another install

from bench_common import write_report  # noqa: E402

REPORTED = ["lion:val", "nyala:test", "dog[max_identities=100]:test", "pig:test"]
IMAGENET = "imagenet:tf_efficientnet_lite0"


def percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def selection_table(summary: dict, species: list[str], transfer: dict | None = None,
                    shipped: dict | None = None) -> dict:
    """One row per validation of the run (steps, then WiSE-FT mixes), the saved one marked: the run's own choice,
    or the point `experiments/transfer_mix.py` chose by leave-one-species-out transfer (`transfer`): a share of
    the best step, or of a kept checkpoint's step, whose validation on the same sets (`shipped`) is its own row."""
    chosen_step = summary["best_step"]
    chosen_mix = summary.get("weight_interpolation") if transfer is None else (
        None if transfer["share"] == 1.0 else transfer["share"])
    checkpoint_point = transfer is not None and transfer.get("step") is not None

    def cells(entry: dict) -> list:
        return [f"{percent(entry['species'][s]['top1'])} / {percent(entry['species'][s]['map'])}"
                for s in species] + [percent(entry["mean"]["map"])]

    rows = []
    for entry in summary["history"]:
        mix = entry.get("alpha")  # WiSE-FT entries: the fine-tuned weights' share
        # a mix is of the best step's weights (runs before the trainer said so recorded the last step)
        label = (f"step {entry['step']}" if mix is None else
                 f"step {chosen_step}, {mix:g} x fine-tuned + {1 - mix:g} x start")
        saved = not checkpoint_point and ((mix == chosen_mix and mix is not None) or (
            mix is None and chosen_mix is None and entry["step"] == chosen_step
            and entry.get("phase") != "weight interpolation"))
        rows.append([label, *cells(entry), "saved" if saved else ""])
    if checkpoint_point:
        share = transfer["share"]
        rows.append([f"checkpoint of step {transfer['step']}" + (
            f", {share:g} x fine-tuned + {1 - share:g} x start" if share != 1.0 else ""), *cells(shipped), "saved"])
    if transfer is None:
        saved_note = "The saved weights are the row with the best mean mAP."
    else:
        point = (f"step {transfer['step']}'s checkpoint with {transfer['share']:g} of its fine-tuning"
                 if checkpoint_point else f"{transfer['share']:g} of the fine-tuning")
        saved_note = (f"The saved weights keep {point}: the point that transferred best to species the models "
                      "never saw (leave-one-species-out, experiments/transfer_mix.py), not the best row here.")
    return {"columns": ["Weights", *[f"{s} top-1 / mAP" for s in species], "Mean mAP %", ""], "rows": rows,
            "caption": "Top-1 / mAP (%), leave-one-out on the held-out fifth of each species' training individuals "
                       "(never trained on, never reported). " + saved_note}


def shipped_validation(model: str, data_dir: str | None, num_workers: int) -> dict:
    """The saved weights on the run's own validation sets (the held-out fifth), as a history entry."""
    import yaml

    from wildreid.evaluation.runner import EvaluationRequest, run_evaluation

    validation = yaml.safe_load((Path(model) / "training_config.yaml").read_text())["val_datasets"]
    result = run_evaluation(EvaluationRequest(datasets=validation, model=model, data_dir=data_dir,
                                              num_workers=num_workers))
    return {"species": result["species"], "mean": result["mean"]}


def reported_rows(model: str, data_dir: str | None, num_workers: int, eval_output: str) -> dict:
    import shlex

    from wildreid.evaluation.runner import EvaluationRequest, run_evaluation

    figures = {}
    for name, reference in (("ImageNet lite0 (untrained)", IMAGENET), ("flagship", model)):
        tick = time.perf_counter()
        output = eval_output if reference == model else None
        shown = os.path.relpath(eval_output, REPO) if Path(eval_output).is_absolute() else eval_output
        command = f"python evaluate.py --model {model} --datasets {shlex.join(REPORTED)} --output {shown}"
        result = run_evaluation(EvaluationRequest(datasets=REPORTED, model=reference, data_dir=data_dir,
                                                  num_workers=num_workers, output=output,
                                                  command=command if output else None))
        figures[name] = {"species": {s: {"top1": m["top1"], "map": m["map"], "n_queries": m["n_queries"]}
                                     for s, m in result["species"].items()},
                         "mean": {"top1": result["mean"]["top1"], "map": result["mean"]["map"]},
                         "seconds": round(time.perf_counter() - tick, 1)}
    return figures


def reported_table(figures: dict, species: list[str]) -> dict:
    rows = [[name] + [f"{percent(f['species'][s]['top1'])} / {percent(f['species'][s]['map'])}" for s in species]
            + [percent(f["mean"]["top1"]), percent(f["mean"]["map"])] for name, f in figures.items()]
    base, flagship = figures["ImageNet lite0 (untrained)"], figures["flagship"]
    gain = 100 * (flagship["mean"]["top1"] - base["mean"]["top1"])
    return {"columns": ["Model", *[f"{s} top-1 / mAP" for s in species], "Mean top-1 %", "Mean mAP %"], "rows": rows,
            "caption": f"Top-1 / mAP (%), leave-one-out on {', '.join(REPORTED)}: individuals never seen in "
                       f"training, of the four species it trained on. Mean top-1 {gain:+.1f} pp over ImageNet "
                       "lite0. On species nobody trained it on, see the zero-shot rows of the card."}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/cpu_real", help="training output of configs/cpu_real.yaml")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "flagship_model.json"))
    parser.add_argument("--eval-output", default=str(Path(__file__).parent / "results" / "flagship_eval.json"),
                        help="the flagship's evaluate.py results (the model card's model-index)")
    parser.add_argument("--data_dir")
    parser.add_argument("--num_workers", type=int, default=1)
    args = parser.parse_args()
    from wildreid.threads import configure_threads

    configure_threads(None)
    summary = json.loads((Path(args.model) / "training_summary.json").read_text())
    species = sorted(summary["training_species"])
    transfer_file = Path(args.model) / "transfer_mix.json"  # written by experiments/transfer_mix.py --apply
    transfer = json.loads(transfer_file.read_text()) if transfer_file.is_file() else None
    shipped = (shipped_validation(args.model, args.data_dir, args.num_workers)
               if transfer is not None and transfer.get("step") is not None else None)
    figures = reported_rows(args.model, args.data_dir, args.num_workers, args.eval_output)
    weights = Path(args.model) / "model.safetensors"
    from wildreid.records import file_sha256

    write_report(args.output, "flagship_model", {
        "model": args.model, "model_sha256": file_sha256(weights),
        "training": {key: summary.get(key) for key in ("best_step", "best_mean_map", "weight_interpolation",
                                                        "total_steps", "training_images", "training_identities",
                                                        "images_per_second", "git_commit", "git_dirty")},
        "transfer_mix": transfer, "reported": figures,
        "shipped_validation": shipped,
        "tables": {"selection": selection_table(summary, species, transfer, shipped),
                   "reported": reported_table(figures, species)},
    })


if __name__ == "__main__":
    main()
