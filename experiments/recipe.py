"""How the experiments' training recipe (`common.base_config`) is chosen: short multi-species runs of a few
learning-rate / warm-up / normalisation variants, each trained on four fifths of every species' training
individuals and compared leave-one-out on the other fifth (`common.selection_sets`), next to the untrained
ImageNet embedding. Never on `common.EVAL_SETS`: those are the sets the experiments report.

    python experiments/recipe.py                       # every variant, 150 steps each
    python experiments/recipe.py --variants head_only proto_bb1e-4_freeze50 --steps 300
"""

from __future__ import annotations

import argparse

import common
import reporting

NAME = "recipe"
VARIANTS = {
    "head_only": dict(freeze_backbone_steps=10**6),  # the backbone stays frozen for the whole run
    # The identity head starts at each identity's mean ImageNet embedding ("prototypes", the `init_from` path
    # of few-shot adaptation), trains alone for 50 steps, then the backbone fine-tunes at a low rate with its
    # BatchNorm statistics kept at ImageNet's (backbone_norm auto).
    "proto_bb1e-4_freeze50": dict(init_from="imagenet", backbone_learning_rate=1e-4, freeze_backbone_steps=50),
    "proto_bb3e-4_freeze50": dict(init_from="imagenet", backbone_learning_rate=3e-4, freeze_backbone_steps=50),
    # The same with the backbone's BatchNorm normalising by each 16-image batch (what training did before
    # backbone_norm existed): shows what the statistics of small P x K batches cost on real data.
    "proto_bb1e-4_freeze50_batchnorm": dict(init_from="imagenet", backbone_learning_rate=1e-4, freeze_backbone_steps=50,
                                            backbone_norm="batch"),
    # configs/cpu_real.yaml's settings (read from it): the prototype start above with the stem and three block
    # stages frozen throughout, which halves a step's cost.
    "flagship": dict(init_from="imagenet", **common.recipe_settings("flagship")),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, steps=150, steps_help="steps of every variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    log = common.ExperimentLog(NAME, args)
    dry, species = args.dry_run, sorted(args.species)
    print(f"plan: {len(args.variants)} variants x {args.steps} steps on {species}")
    train_specs, specs = zip(*(common.selection_sets(s, dry) for s in species))
    specs = list(specs)
    base = log.add_evaluation("ImageNet", common.evaluate_global(common.IMAGENET, specs, dry_run=dry))
    rows = [["ImageNet (untrained)", "–"] + _cells(base, species)]
    results = {"imagenet": base["species"]}
    for variant in args.variants:
        overrides = dict(VARIANTS[variant])
        overrides["init_from"] = common.imagenet_start(dry) if overrides.get("init_from") == "imagenet" else None
        record = log.add_run(common.train_model(
            f"recipe_{variant}_s{args.steps}_seed{args.seed}_heldout_fifth", dry_run=dry, force=args.force, seed=args.seed,
            max_steps=args.steps, datasets=list(train_specs), **overrides))
        evaluated = log.add_evaluation(variant, common.evaluate_global(common.run_path(record), specs, dry_run=dry,
                                                                       force=args.force))
        settings = ", ".join(f"{k}={v}" for k, v in record["config"].items()
                             if k in ("learning_rate", "backbone_learning_rate", "warmup_steps", "freeze_backbone_steps",
                                      "frozen_backbone_stages") and (v or k != "frozen_backbone_stages"))
        if record.get("init_from"):
            settings += ", head from ImageNet prototypes"
        if record["config"].get("backbone_norm") == "batch":
            settings += ", backbone BatchNorm on batch statistics"
        settings += f"; data: {', '.join(record['datasets'])}"
        rows.append([variant, settings] + _cells(evaluated, species))
        results[variant] = {"species": evaluated["species"], "mean": evaluated["mean"], "settings": record["config"],
                            "train_wall_s": record["train_wall_s"]}
    table = {
        "columns": ["Variant", "Settings"] + [f"{s} top-1 / mAP" for s in species] + ["Mean top-1", "Mean mAP"],
        "rows": rows,
        "caption": (f"Top-1 / mAP (%), leave-one-out on the held-out fifth of each training split ({', '.join(specs)}), after {args.steps} steps of 8 x 2 images "
                    f"(data of each run in its settings; lite0, ImageNet init, 224 px, seed {args.seed}). A frozen step "
                    "trains only the GeM/BN neck and the ArcFace head."),
    }
    reporting.print_table(table, "Recipe variants")
    log.write({"main": table}, results)


def _cells(evaluated: dict, species: list[str]) -> list:
    cells = [f"{100 * evaluated['species'][s]['top1']:.1f} / {100 * evaluated['species'][s]['map']:.1f}" for s in species]
    return cells + [reporting.percent(evaluated["mean"]["top1"]), reporting.percent(evaluated["mean"]["map"])]


if __name__ == "__main__":
    main()
