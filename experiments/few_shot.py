"""Experiment 3: few-shot adaptation to a new species without the original training data.

For each species, start from the model trained on the other species (zero_shot.py's leave-one-species-out
model) and adapt it with 1, 2, 4 and all training images per identity (`--init_from`: a new identity head
initialised at each identity's mean embedding, `--freeze-steps` steps with the backbone frozen, then
everything); compare with the same adaptation started from the ImageNet embedder on the same images. Both
are evaluated leave-one-out on the species' evaluation set. 0 images per identity = no adaptation.

    python experiments/few_shot.py                              # 4 species x 4 sizes x 2 starts
    python experiments/few_shot.py --species pig lion --shots 1 all
    python experiments/few_shot.py --dry-run
    python experiments/few_shot.py --weights transfer   # after transfer_mix.py --checkpoints

`--weights transfer` starts each species from its leave-one-species-out model at the (step, share) point the
*other* species chose (transfer_step_mix.json's `chosen_without`, as zero_shot.py --weights transfer scores it):
the way the shipped model's point is chosen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import reporting
import transfer_mix

NAME = "few_shot"
STARTS = {"loso": "from other species", "imagenet": "from ImageNet"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, steps=50, steps_help="adaptation steps of every run")
    parser.add_argument("--freeze-steps", type=int, default=15, help="steps training only neck and head")
    parser.add_argument("--loso-steps", type=int, default=common.LOSO_STEPS, help="steps of the leave-one-species-out start models")
    parser.add_argument("--recipe", choices=common.RECIPES, default="flagship",
                        help="recipe of the start models (zero_shot.py's; flagship: configs/cpu_real.yaml's)")
    parser.add_argument("--shots", nargs="+", default=list(common.SHOTS), choices=common.SHOTS)
    transfer_mix.add_weights_argument(parser)
    args = parser.parse_args(argv)
    log = common.ExperimentLog(NAME, args)
    dry, species = args.dry_run, sorted(args.species)
    transfer = transfer_mix.chosen_points(args.weights, args.loso_steps, dry)
    n_runs = len(species) * len(args.shots) * len(STARTS)
    print(f"plan: {n_runs} adaptation runs x {args.steps} steps ({args.freeze_steps} frozen) = {n_runs * args.steps} "
          f"steps, plus {len(species)} leave-one-species-out start models of {args.loso_steps} steps unless present")
    curves: dict = {}
    for name in species:
        spec = common.eval_set(name, dry)
        loso = log.add_run(common.leave_one_species_out(name, args.loso_steps, seed=args.seed, dry_run=dry,
                                                               recipe=args.recipe))
        loso_weights = transfer_mix.point_folder(Path(common.run_path(loso)), *transfer[name]) if transfer else None
        starts = {"loso": str(loso_weights or common.run_path(loso)), "imagenet": common.IMAGENET}
        curves[name] = {}
        for start, model in starts.items():
            before = log.add_evaluation(f"{name} {start} before", common.evaluate_global(model, [spec], dry_run=dry))
            points = [{"shots": "0", "training_images": 0, **common.summary_metrics(before["species"][name])}]
            for shots in args.shots:
                record = log.add_run(common.adapt(name, shots, start, steps=args.steps, freeze_steps=args.freeze_steps,
                                                  loso_steps=args.loso_steps, seed=args.seed, dry_run=dry, force=args.force,
                                                  recipe=args.recipe, loso_weights=loso_weights if start == "loso" else None))
                after = log.add_evaluation(f"{name} {start} {shots}", common.evaluate_global(
                    common.run_path(record), [spec], dry_run=dry, force=args.force))
                points.append({"shots": shots, "training_images": record["training_images"],
                               "training_identities": record["training_identities"], **common.summary_metrics(after["species"][name])})
            curves[name][start] = points
    columns = ["Species", "Start"] + [f"{s} img/id" for s in ["0", *args.shots]]
    tables = {}
    for key, title in (("top1", "top-1"), ("map", "mAP")):
        rows = [[name, STARTS[start]] + [reporting.percent(p[key]) for p in curves[name][start]]
                for name in species for start in STARTS]
        tables[key] = {"columns": columns, "rows": rows, "caption": (
            f"{title} (%), leave-one-out on {', '.join(common.eval_set(s, dry) for s in species)} after {args.steps} "
            f"adaptation steps ({args.freeze_steps} with the backbone frozen) on n training images per identity of the "
            f"species' training pool ({_pool_note(species)}); 0 = before adaptation. 'from other species': the "
            f"leave-one-species-out model of zero_shot.py ({args.loso_steps} steps"
            + ("" if args.weights == "best" else ", at the (step, share) point the other held-out species chose")
            + f"); 'from ImageNet': lite0 ImageNet "
            f"weights through the same adaptation ({args.recipe} recipe). Seed {args.seed}.")}
        reporting.print_table(tables[key], f"Few-shot adaptation, {title}")
    sizes = {name: [p["training_images"] for p in curves[name]["loso"]] for name in species}
    tables["sizes"] = {"columns": ["Species"] + [f"{s} img/id" for s in ["0", *args.shots]],
                       "rows": [[name, *sizes[name]] for name in species],
                       "caption": "Training images behind each column."}
    plot = None if dry else common.RESULTS_DIR / f"{NAME}.png"
    if plot is not None:
        _plot(curves, ["0", *args.shots], plot)
    log.write(tables, {"curves": curves, "plot": str(plot.relative_to(common.EXPERIMENTS_DIR)) if plot else None})


def _pool_note(species: list[str]) -> str:
    return ", ".join(common.train_set(name) for name in species)


def _plot(curves: dict, shots: list[str], path) -> None:
    fig, axes = reporting.species_panels(len(curves))
    for ax, (name, starts) in zip(axes, curves.items()):
        for start, points in starts.items():
            ax.plot(range(len(points)), [100 * p["top1"] for p in points], marker="o", label=STARTS[start])
        ax.set_xticks(range(len(shots)), shots)
        ax.set_title(name)
    reporting.save_panels(fig, path, legend_size=8)


if __name__ == "__main__":
    main()
