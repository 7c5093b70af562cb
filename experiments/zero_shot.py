"""Experiment 2: zero-shot to an unseen species (MiewID's zero-shot claim).

Leave one species out: train on the other species (`--steps` steps of the flagship recipe, configs/cpu_real.yaml,
its best step and WiSE-FT mix chosen on held-out individuals of those species), evaluate on the held-out species'
evaluation set (`common.EVAL_SETS`, leave-one-out), next to the untrained ImageNet embedding and one-vs-many SIFT
on the same images, and auto (global / local / fusion, chosen and fitted on the held-out species' own training
split, as a user's labelled gallery would be) with the zero-shot model as its global input. The models trained
here are the starting points of `few_shot.py`.

    python experiments/zero_shot.py                          # 4 models x 600 steps of the flagship recipe
    python experiments/zero_shot.py --species lion --recipe common --steps 300
    python experiments/zero_shot.py --dry-run
    python experiments/zero_shot.py --weights transfer          # after transfer_mix.py --checkpoints

`--weights transfer` scores each held-out species with its model at the (step, share) point that the *other*
species chose by leave-one-species-out transfer (transfer_step_mix.json's `chosen_without`): the way the shipped
model's point is chosen, without looking at the species being scored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import reporting
import transfer_mix

NAME = "zero_shot"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, steps=common.LOSO_STEPS, steps_help="training steps of each leave-one-species-out model")
    parser.add_argument("--recipe", choices=common.RECIPES, default="flagship",
                        help="flagship: configs/cpu_real.yaml's recipe and validation rule; common: base_config")
    parser.add_argument("--no-local", action="store_true", help="skip SIFT and auto")
    transfer_mix.add_weights_argument(parser)
    args = parser.parse_args(argv)
    log = common.ExperimentLog(NAME, args)
    dry, species = args.dry_run, sorted(args.species)
    points = transfer_mix.chosen_points(args.weights, args.steps, dry)
    print(f"plan: {len(species)} leave-one-species-out models x {args.steps} steps = {len(species) * args.steps} "
          "training steps; ImageNet and SIFT on each held-out evaluation set")
    rows, results = [], {}
    for held_out in species:
        spec = common.eval_set(held_out, dry)
        record = log.add_run(common.leave_one_species_out(held_out, args.steps, seed=args.seed, dry_run=dry,
                                                          force=args.force, recipe=args.recipe))
        model = (str(transfer_mix.point_folder(Path(common.run_path(record)), *points[held_out])) if points
                 else common.run_path(record))
        zero = log.add_evaluation(f"zero-shot {held_out}", common.evaluate_global(
            model, [spec], dry_run=dry, force=args.force))["species"][held_out]
        if zero["seen_in_training"]:
            raise RuntimeError(f"{record['path']} has seen {held_out}: not a zero-shot model")
        base = log.add_evaluation(f"ImageNet {held_out}", common.evaluate_global(
            common.IMAGENET, [spec], dry_run=dry, force=args.force))["species"][held_out]
        sift = None if args.no_local else log.add_evaluation(f"SIFT {held_out}", common.evaluate_local(
            [spec], dry_run=dry, force=args.force))["species"][held_out]
        auto = None if args.no_local else log.add_evaluation(f"auto {held_out}", common.evaluate(
            model, [spec], method="auto", val_datasets=[common.fit_set(held_out, dry)],
            dry_run=dry, force=args.force))["species"][held_out]
        results[held_out] = {"trained_on": record["datasets"], "model": common.shown_path(model),
                             "zero_shot": common.summary_metrics(zero),
                             "imagenet": common.summary_metrics(base), "sift": common.summary_metrics(sift) if sift else None,
                             "auto": common.summary_metrics(auto) if auto else None}
        rows.append([held_out, ", ".join(s for s in common.SPECIES if s != held_out), zero["n_queries"],
                     reporting.percent(base["top1"]), reporting.percent(base["map"]),
                     reporting.percent(sift["top1"]) if sift else None, reporting.percent(sift["map"]) if sift else None,
                     reporting.percent(zero["top1"]), reporting.percent(zero["map"]),
                     reporting.percent(auto["top1"]) if auto else None, reporting.percent(auto["map"]) if auto else None,
                     round(100 * (zero["top1"] - base["top1"]), 1)])
    table = {
        "columns": ["Held-out species", "Trained on", "Queries", "ImageNet top-1", "ImageNet mAP", "SIFT top-1",
                    "SIFT mAP", "Zero-shot top-1", "Zero-shot mAP", "Auto top-1", "Auto mAP",
                    "Zero-shot - ImageNet top-1 (pp)"],
        "rows": rows,
        "caption": (f"Leave-one-out on the held-out species' evaluation set ({', '.join(common.eval_set(s, dry) for s in species)}), "
                    f"percentages. Zero-shot: lite0 trained {args.steps} steps on the other species' training splits "
                    f"({args.recipe} recipe, seed {args.seed}); it never saw the held-out species"
                    + ("" if args.weights == "best" else "; its weights are the (step, share of the fine-tuning) "
                       "point the other held-out species chose (transfer_mix.py --checkpoints)")
                    + ". SIFT: one-vs-many "
                    "local retrieval, no training. Auto: per species the best of global (the zero-shot model), "
                    "local and fusion by validation mAP on the held-out species' training split (common.fit_set)."),
    }
    reporting.print_table(table, "Zero-shot to an unseen species")
    log.write({"main": table}, results)


if __name__ == "__main__":
    main()
