"""Experiment 2: zero-shot to an unseen species (MiewID's zero-shot claim).

Leave one species out: train on the other species (`--steps` steps), evaluate on the held-out species'
evaluation set (`common.EVAL_SETS`, leave-one-out), next to the untrained ImageNet embedding and SIFT
matching on the same images. The models trained here are the starting points of `few_shot.py`.

    python experiments/zero_shot.py                          # 4 models x 300 steps
    python experiments/zero_shot.py --species lion --steps 300
    python experiments/zero_shot.py --dry-run
"""

from __future__ import annotations

import argparse

import common
import reporting

NAME = "zero_shot"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, steps=300, steps_help="training steps of each leave-one-species-out model")
    parser.add_argument("--no-local", action="store_true", help="skip SIFT")
    args = parser.parse_args(argv)
    log = common.ExperimentLog(NAME, args)
    dry, species = args.dry_run, sorted(args.species)
    print(f"plan: {len(species)} leave-one-species-out models x {args.steps} steps = {len(species) * args.steps} "
          "training steps; ImageNet and SIFT on each held-out evaluation set")
    rows, results = [], {}
    for held_out in species:
        spec = common.eval_set(held_out, dry)
        record = log.add_run(common.leave_one_species_out(held_out, args.steps, seed=args.seed, dry_run=dry,
                                                          force=args.force))
        zero = log.add_evaluation(f"zero-shot {held_out}", common.evaluate_global(
            common.run_path(record), [spec], dry_run=dry, force=args.force))["species"][held_out]
        if zero["seen_in_training"]:
            raise RuntimeError(f"{record['path']} has seen {held_out}: not a zero-shot model")
        base = log.add_evaluation(f"ImageNet {held_out}", common.evaluate_global(
            common.IMAGENET, [spec], dry_run=dry, force=args.force))["species"][held_out]
        sift = None if args.no_local else log.add_evaluation(f"SIFT {held_out}", common.evaluate_local(
            [spec], dry_run=dry, force=args.force))["species"][held_out]
        results[held_out] = {"trained_on": record["datasets"], "zero_shot": common.summary_metrics(zero),
                             "imagenet": common.summary_metrics(base), "sift": common.summary_metrics(sift) if sift else None}
        rows.append([held_out, ", ".join(s for s in common.SPECIES if s != held_out), zero["n_queries"],
                     reporting.percent(base["top1"]), reporting.percent(base["map"]),
                     reporting.percent(sift["top1"]) if sift else None, reporting.percent(sift["map"]) if sift else None,
                     reporting.percent(zero["top1"]), reporting.percent(zero["map"]),
                     round(100 * (zero["top1"] - base["top1"]), 1)])
    table = {
        "columns": ["Held-out species", "Trained on", "Queries", "ImageNet top-1", "ImageNet mAP", "SIFT top-1",
                    "SIFT mAP", "Zero-shot top-1", "Zero-shot mAP", "Zero-shot - ImageNet top-1 (pp)"],
        "rows": rows,
        "caption": (f"Leave-one-out on the held-out species' evaluation set ({', '.join(common.eval_set(s, dry) for s in species)}), "
                    f"percentages. Zero-shot: lite0 trained {args.steps} steps on the other species' train splits "
                    f"(common recipe, seed {args.seed}); it never saw the held-out species. SIFT: OpenCV, no training."),
    }
    reporting.print_table(table, "Zero-shot to an unseen species")
    log.write({"main": table}, results)


if __name__ == "__main__":
    main()
