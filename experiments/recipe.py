"""How the experiments' training recipe (`common.base_config`) was chosen: short multi-species runs of a few
learning-rate / warm-up variants, evaluated like every experiment (leave-one-out on `common.EVAL_SETS`), next
to the untrained ImageNet embedding. An early run of configs/cpu_real.yaml (backbone lr 3e-4, no frozen
warm-up) fell below the ImageNet embedding on lion and nyala, which is what these variants address.

    python experiments/recipe.py                       # every variant, 150 steps each
    python experiments/recipe.py --variants bb1e-4_freeze50 --steps 300
"""

from __future__ import annotations

import argparse

import common

NAME = "recipe"
VARIANTS = {
    "bb3e-4": dict(backbone_learning_rate=3e-4, freeze_backbone_steps=0),  # configs/cpu_real.yaml's rates
    "bb1e-4_freeze50": dict(backbone_learning_rate=1e-4, freeze_backbone_steps=50),
    "bb3e-5_freeze50": dict(backbone_learning_rate=3e-5, freeze_backbone_steps=50),
    "head_only": dict(backbone_learning_rate=0.0, freeze_backbone_steps=10**6),  # backbone never trains
    # The identity head starts at each identity's mean ImageNet embedding instead of at random, so the first
    # steps' gradients already point somewhere useful (the `init_from` path of few-shot adaptation).
    "proto_bb1e-4_freeze50": dict(init_from="imagenet", backbone_learning_rate=1e-4, freeze_backbone_steps=50),
    "proto_bb3e-5_freeze50": dict(init_from="imagenet", backbone_learning_rate=3e-5, freeze_backbone_steps=50),
    # Backbone BatchNorm statistics kept at ImageNet's while the weights fine-tune: restoring them after the
    # run above gave dog back its ImageNet mAP, so the drift of the statistics is what hurt dog.
    "proto_bb1e-4_freeze50_bn": dict(init_from="imagenet", backbone_learning_rate=1e-4, freeze_backbone_steps=50,
                                     freeze_backbone_norm=True),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, steps=150, steps_help="steps of every variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    log = common.ExperimentLog(NAME, args)
    dry, species = args.dry_run, sorted(args.species)
    print(f"plan: {len(args.variants)} variants x {args.steps} steps on {species}")
    specs = [common.eval_set(s, dry) for s in species]
    base = log.add_evaluation("ImageNet", common.evaluate_global(common.IMAGENET, specs, dry_run=dry))
    rows = [["ImageNet (untrained)", "–"] + _cells(base, species)]
    results = {"imagenet": base["species"]}
    for variant in args.variants:
        overrides = dict(VARIANTS[variant])
        overrides["init_from"] = common.imagenet_start(dry) if overrides.get("init_from") == "imagenet" else None
        record = log.add_run(common.train_model(
            f"recipe_{variant}_s{args.steps}_seed{args.seed}", dry_run=dry, force=args.force, seed=args.seed,
            max_steps=args.steps, datasets=[common.train_set(s, dry, full=True) for s in species], **overrides))
        evaluated = log.add_evaluation(variant, common.evaluate_global(common.run_path(record), specs, dry_run=dry,
                                                                       force=args.force))
        settings = ", ".join(f"{k}={v}" for k, v in record["config"].items()
                             if k in ("learning_rate", "backbone_learning_rate", "warmup_steps", "freeze_backbone_steps"))
        if record.get("init_from"):
            settings += ", head from ImageNet prototypes"
        if record["config"].get("freeze_backbone_norm"):
            settings += ", backbone BatchNorm statistics frozen"
        settings += f"; data: {', '.join(record['datasets'])}"
        rows.append([variant, settings] + _cells(evaluated, species))
        results[variant] = {"species": evaluated["species"], "mean": evaluated["mean"], "settings": record["config"],
                            "train_wall_s": record["train_wall_s"]}
    table = {
        "columns": ["Variant", "Settings"] + [f"{s} top-1 / mAP" for s in species] + ["Mean top-1", "Mean mAP"],
        "rows": rows,
        "caption": (f"Top-1 / mAP (%), leave-one-out on {', '.join(specs)}, after {args.steps} steps of 8 x 2 images "
                    f"(data of each run in its settings; lite0, ImageNet init, 224 px, seed {args.seed}). A frozen step "
                    "trains only the GeM/BN neck and the ArcFace head."),
    }
    common.print_table(table, "Recipe variants")
    log.write({"main": table}, results)


def _cells(evaluated: dict, species: list[str]) -> list:
    cells = [f"{100 * evaluated['species'][s]['top1']:.1f} / {100 * evaluated['species'][s]['map']:.1f}" for s in species]
    return cells + [common.percent(evaluated["mean"]["top1"]), common.percent(evaluated["mean"]["map"])]


if __name__ == "__main__":
    main()
