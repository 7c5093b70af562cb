"""Experiment 1: one multi-species model vs one model per species, at the same per-species step budget
(MiewID's headline: +12.5 % top-1 on average for the multi-species model).

The multi-species model trains `--steps` steps on all species; its sampler draws the species of every
identity group uniformly, so each species gets about `--steps / n_species` steps' worth of batches. Each
single-species model gets exactly that many steps on its own species. Both are evaluated leave-one-out on
each species' held-out identities (`common.EVAL_SETS`), next to the untrained ImageNet embedding.

    python experiments/multi_vs_single.py                    # 800 + 4 x 200 steps
    python experiments/multi_vs_single.py --dry-run          # a few steps, to check the script
"""

from __future__ import annotations

import argparse

import common
import reporting

NAME = "multi_vs_single"


def run_name(kind: str, species: list[str], steps: int, seed: int, recipe: str) -> str:
    return f"{kind}_{'-'.join(species)}_s{steps}_seed{seed}" + ("_flagship" if recipe == "flagship" else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, steps=800, steps_help="steps of the multi-species model (each single-species "
                                                          "model gets steps / number of species)")
    parser.add_argument("--recipe", choices=common.RECIPES, default="flagship",
                        help="training settings of both arms (flagship: configs/cpu_real.yaml's frozen stages, "
                             "prototype head and learning rates, at a fixed step budget)")
    args = parser.parse_args(argv)
    settings = common.recipe_settings(args.recipe)
    log = common.ExperimentLog(NAME, args)
    species = sorted(args.species)
    dry = args.dry_run
    single_steps = max(1, args.steps // len(species))
    print(f"plan: multi-species {args.steps} steps on {species}; single-species {single_steps} steps each "
          f"({args.steps + single_steps * len(species)} training steps in all)")

    eval_specs = [common.eval_set(s, dry) for s in species]
    multi = log.add_run(common.train_model(
        run_name("multi", species, args.steps, args.seed, args.recipe), dry_run=dry, force=args.force, seed=args.seed,
        **settings, max_steps=args.steps, datasets=[common.train_set(s, dry) for s in species]))
    multi_results = log.add_evaluation("multi-species model", common.evaluate_global(
        common.run_path(multi), eval_specs, dry_run=dry, force=args.force,
        label=f"wildreid-lite0-{len(species)}species (experiments/{multi['path']})",
        output=None if dry else common.RESULTS_DIR / "multi_species_model_eval.json"))
    imagenet = log.add_evaluation("ImageNet lite0", common.evaluate_global(
        common.IMAGENET, eval_specs, dry_run=dry, force=args.force))

    rows, results = [], {}
    gains_top1, gains_map = [], []
    for name in species:
        single = log.add_run(common.train_model(
            run_name("single", [name], single_steps, args.seed, args.recipe), dry_run=dry, force=args.force,
            seed=args.seed, **settings, max_steps=single_steps, datasets=[common.train_set(name, dry)]))
        single_results = log.add_evaluation(f"single-species {name}", common.evaluate_global(
            common.run_path(single), [common.eval_set(name, dry)], dry_run=dry, force=args.force))
        m, s, b = multi_results["species"][name], single_results["species"][name], imagenet["species"][name]
        gains_top1.append(m["top1"] - s["top1"])
        gains_map.append(m["map"] - s["map"])
        results[name] = {"multi": common.summary_metrics(m), "single": common.summary_metrics(s),
                         "imagenet": common.summary_metrics(b),
                         "gain_top1": gains_top1[-1], "gain_map": gains_map[-1]}
        rows.append([name, m["n_queries"], m["n_identities"], reporting.percent(b["top1"]), reporting.percent(b["map"]),
                     reporting.percent(s["top1"]), reporting.percent(s["map"]), reporting.percent(m["top1"]),
                     reporting.percent(m["map"]), _signed(gains_top1[-1]), _signed(gains_map[-1])])
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    mean_row = ["**mean**", None, None] + [
        reporting.percent(mean([results[n][arm][key] for n in species]))
        for arm in ("imagenet", "single", "multi") for key in ("top1", "map")
    ] + [_signed(mean(gains_top1)), _signed(mean(gains_map))]
    rows.append(mean_row)
    results["mean_gain_top1"], results["mean_gain_map"] = mean(gains_top1), mean(gains_map)
    table = {
        "columns": ["Species", "Queries", "Individuals", "ImageNet top-1", "ImageNet mAP", "Single top-1", "Single mAP",
                    "Multi top-1", "Multi mAP", "Gain top-1 (pp)", "Gain mAP (pp)"],
        "rows": rows,
        "caption": (f"Leave-one-out on held-out identities ({', '.join(eval_specs)}), percentages. Multi: one "
                    f"model, {args.steps} steps on {', '.join(common.train_set(s, dry) for s in species)}; single: "
                    f"one model per species, {single_steps} steps each (the multi model's per-species share); both at the "
                    f"{args.recipe} recipe. Gain = multi - single. Seed {args.seed}."),
    }
    reporting.print_table(table, "Multi-species vs single-species")
    log.write({"main": table}, results)


def _signed(value: float) -> float:
    return round(100.0 * value, 1)


if __name__ == "__main__":
    main()
