"""Experiment 4: the training-set-size study (Algasov et al., arXiv 2405.15976): local features vs an
end-to-end model as the number of training images per identity grows, per species, and where the curves
cross.

End-to-end: lite0 from ImageNet trained on n images per identity of the species' training pool (the
'from ImageNet' arm of few_shot.py at the same --recipe: the same runs, reused when present), 0 = untrained
ImageNet embedding.
Local features: SIFT matching needs no training, so its score on the evaluation set is the same at every
size (a flat line). Both are evaluated leave-one-out on the species' evaluation set. The crossover is the
smallest size from which the end-to-end model's top-1 (and, separately, its mAP) stays at or above SIFT's.

    python experiments/size_study.py                 # table + experiments/results/size_study.png
    python experiments/size_study.py --species lion nyala --shots 1 4 all
    python experiments/size_study.py --dry-run
"""

from __future__ import annotations

import argparse

import common
import reporting

NAME = "size_study"


def crossover(sizes: list[str], model_top1: list[float], sift_top1: float | None) -> str:
    """Where the end-to-end curve meets the flat SIFT line, in words."""
    if sift_top1 is None:
        return "SIFT not run"
    ahead = [top1 >= sift_top1 for top1 in model_top1]
    if all(ahead):
        return "end-to-end ahead at every size"
    if not any(ahead):
        return "SIFT ahead at every size"
    for index in range(len(ahead)):
        if all(ahead[index:]):
            return f"end-to-end ahead from {sizes[index]} img/id"
    return "curves cross more than once: " + ", ".join(f"{s}: {'model' if a else 'SIFT'}" for s, a in zip(sizes, ahead))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, steps=50, steps_help="training steps of every end-to-end run")
    parser.add_argument("--freeze-steps", type=int, default=15, help="steps training only neck and head")
    parser.add_argument("--shots", nargs="+", default=list(common.SHOTS), choices=common.SHOTS)
    parser.add_argument("--no-local", action="store_true", help="skip SIFT")
    parser.add_argument("--recipe", choices=common.RECIPES, default="flagship",
                        help="training settings of the end-to-end runs (flagship: configs/cpu_real.yaml's frozen "
                             "stages, prototype head and learning rates; the same runs as few_shot.py's ImageNet arm)")
    args = parser.parse_args(argv)
    log = common.ExperimentLog(NAME, args)
    dry, species = args.dry_run, sorted(args.species)
    n_runs = len(species) * len(args.shots)
    print(f"plan: {n_runs} end-to-end runs x {args.steps} steps = {n_runs * args.steps} steps; SIFT once per species")
    sizes = ["0", *args.shots]
    curves, rows = {}, []
    for name in species:
        spec = common.eval_set(name, dry)
        points = [{"shots": "0", "training_images": 0, **common.summary_metrics(log.add_evaluation(
            f"{name} ImageNet", common.evaluate_global(common.IMAGENET, [spec], dry_run=dry))["species"][name])}]
        for shots in args.shots:
            record = log.add_run(common.adapt(name, shots, "imagenet", steps=args.steps, freeze_steps=args.freeze_steps,
                                              loso_steps=0, seed=args.seed, dry_run=dry, force=args.force,
                                              recipe=args.recipe))
            after = log.add_evaluation(f"{name} {shots}", common.evaluate_global(
                common.run_path(record), [spec], dry_run=dry, force=args.force))["species"][name]
            points.append({"shots": shots, "training_images": record["training_images"], **common.summary_metrics(after)})
        sift = None if args.no_local else common.summary_metrics(log.add_evaluation(f"{name} SIFT", common.evaluate_local(
            [spec], dry_run=dry, force=args.force))["species"][name])
        where = crossover(sizes, [p["top1"] for p in points], sift["top1"] if sift else None)
        where_map = crossover(sizes, [p["map"] for p in points], sift["map"] if sift else None)
        curves[name] = {"end_to_end": points, "sift": sift, "crossover": where, "crossover_map": where_map}
        rows.append([name, reporting.percent(sift["top1"]) if sift else None]
                    + [reporting.percent(p["top1"]) for p in points] + [where])
    table = {
        "columns": ["Species", "SIFT top-1"] + [f"model {s} img/id" for s in sizes] + ["Crossover"],
        "rows": rows,
        "caption": (f"Top-1 (%), leave-one-out on {', '.join(common.eval_set(s, dry) for s in species)}. Model: lite0 "
                    f"from ImageNet trained {args.steps} steps ({args.freeze_steps} with the backbone frozen; {args.recipe} "
                    f"recipe) on n "
                    f"images per identity of the species' training pool ({', '.join(common.train_set(s) for s in species)}); "
                    f"0 = untrained. SIFT needs no "
                    f"training: one value per species. Seed {args.seed}."),
    }
    map_table = {
        "columns": ["Species", "SIFT mAP"] + [f"model {s} img/id" for s in sizes] + ["Crossover (mAP)"],
        "rows": [[name, reporting.percent(curves[name]["sift"]["map"]) if curves[name]["sift"] else None]
                 + [reporting.percent(p["map"]) for p in curves[name]["end_to_end"]] + [curves[name]["crossover_map"]]
                 for name in species],
        "caption": ("mAP (%), same runs. SIFT's top-1 comes from the single best match (often a near-duplicate "
                    "photo); mAP also counts how the other images of the individual rank, so the two crossovers can differ."),
    }
    reporting.print_table(table, "Training-set size: SIFT vs end-to-end")
    reporting.print_table(map_table)
    plot = None if dry else common.RESULTS_DIR / f"{NAME}.png"
    if plot is not None:
        _plot(curves, sizes, plot)
    log.write({"top1": table, "map": map_table},
              {"curves": curves, "plot": str(plot.relative_to(common.EXPERIMENTS_DIR)) if plot else None})


def _plot(curves: dict, sizes: list[str], path) -> None:
    fig, axes = reporting.species_panels(len(curves))
    for ax, (name, curve) in zip(axes, curves.items()):
        ax.plot(range(len(sizes)), [100 * p["top1"] for p in curve["end_to_end"]], marker="o", label="end-to-end (lite0)")
        if curve["sift"]:
            ax.axhline(100 * curve["sift"]["top1"], color="tab:red", linestyle="--", label="SIFT (no training)")
        ax.set_xticks(range(len(sizes)), sizes)
        ax.set_title(f"{name}\n{curve['crossover']}", fontsize=8)
    reporting.save_panels(fig, path, legend_size=7)


if __name__ == "__main__":
    main()
