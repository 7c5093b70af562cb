"""Which weights -- WiSE-FT mix, and with `--checkpoints` the step -- transfer best to a species the model never saw
(issue 33, part 2).

A trained run keeps the weights that validate best on held-out individuals of the species it trained on; for a
species a user brings, keeping less of the fine-tuning (mixing the weights back towards the ImageNet start) may
transfer better. Measured here on held-out *species*: for each species, its leave-one-species-out model of
`zero_shot.py` (the flagship recipe, `--steps`) mixed with that run's own start weights at each share of its
fine-tuning kept (`--shares`; 0 = the start, 1 = its best step unmixed, whatever mix the run itself saved; the
unmixed weights are recovered exactly from the saved mix and the start), global leave-one-out on the
held-out species' training split (`common.fit_set`: training-side data, never a set a table reports). The share
above 0 with the best mean mAP over the held-out species is the mix for unseen species. Share 0 (ImageNet weights)
is measured for reference but not shipped: `wildreid calibrate` already weighs ImageNet lite0 against the shipped
model on every new gallery, so the shipped model is the trained weights that transfer best.

`--checkpoints` also weighs the step (results: transfer_step_mix.json): the leave-one-species-out models keep
their four evenly spaced checkpoints (trained again if they did not), and every (step, share) point is measured
the same way; the point with the best mean mAP is the one for unseen species, and `chosen_without` records, for
each species, the point the other three choose (what a zero-shot figure may use without peeking).

`--apply RUN --apply-output DIR` writes that mix of a trained run (the flagship: outputs/cpu_real) as a model
folder, with the run's records and a note of how the mix was chosen; `make ship-model` ships such a folder. With
`--checkpoints`, RUN must have kept its checkpoints over a schedule of the same `--steps`.

    python experiments/transfer_mix.py                               # after zero_shot.py (same --steps)
    python experiments/transfer_mix.py --apply outputs/cpu_real --apply-output outputs/cpu_real_transfer
    python experiments/transfer_mix.py --checkpoints --shares 0 0.25 0.5 0.75 1   # the step too (make shipped-run)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import common
import reporting
import yaml

NAME = "transfer_mix"
STEP_NAME = "transfer_step_mix"  # --checkpoints: the step weighed too
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
RUN_RECORDS = ("training_summary.json", "training_config.yaml", "wildreid_run.json", "validation_results.json",
               "start_embedder.safetensors")


def saved_share(model_dir: Path) -> float:
    """The share of its fine-tuning the run's saved weights keep (1 unless the run saved a WiSE-FT mix)."""
    saved = json.loads((model_dir / "config.json").read_text()).get("weight_interpolation")
    return 1.0 if saved is None else float(saved)


def checkpoint_state(model_dir: Path, step: int) -> dict:
    """The embedder's weights in `model_dir`'s kept checkpoint of `step` (unmixed: the trainer's own state)."""
    from safetensors.torch import load_file

    from wildreid.training.checkpoints import run_checkpoints

    kept = dict(run_checkpoints(model_dir))
    if step not in kept:
        raise SystemExit(f"{model_dir} kept no checkpoint of step {step} (it has {sorted(kept) or 'none'}): "
                         "train it with its checkpoints kept")
    prefix = "wildreid."  # WildReIDForMetricLearning's embedder; the identity head is not part of a model folder
    return {key[len(prefix):]: value for key, value in load_file(kept[step] / "model.safetensors").items()
            if key.startswith(prefix)}


def write_mix(model_dir: Path, share: float, destination: Path, step: int | None = None) -> Path:
    """The run's start plus `share` of its fine-tuning, as a model folder: of its best step (the saved weights:
    they are start + a x (fine-tuned - start) for the run's own mix a, so `share / a` of the saved change is that
    point), or of its kept checkpoint of `step`."""
    from modeling_wildreid import WildReIDModel
    from wildreid.training.weight_interpolation import interpolate_state, load_start_weights

    if (destination / "config.json").is_file():
        return destination
    model = WildReIDModel.from_pretrained(str(model_dir))
    if step is None:
        tuned, ratio = model.state_dict(), share / saved_share(model_dir)
    else:
        tuned, ratio = checkpoint_state(model_dir, step), share
    model.load_state_dict(interpolate_state(load_start_weights(model_dir), tuned, ratio))
    model.config.weight_interpolation = None if share == 1.0 else share  # what config.json says a mix is
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    from transformers import AutoImageProcessor  # the processor travels with the model folder

    AutoImageProcessor.from_pretrained(str(model_dir), trust_remote_code=True).save_pretrained(partial)
    partial.replace(destination)
    return destination


def point_key(step: int | None, share: float) -> str:
    """"0.25" (a share of the best step), "300@0.25" (of step 300), "0" (the start, whatever the step)."""
    return f"{share:g}" if step is None or share == 0 else f"{step}@{share:g}"


def parse_point(key: str) -> tuple[int | None, float]:
    """(step or None, share) of a `point_key`."""
    step, _, share = key.rpartition("@")
    return (int(step) if step else None), float(share)


def point_folder(model_dir: Path, step: int | None, share: float) -> Path:
    """The run's weights at a point as a model folder (written once, under the run's transfer_mix/)."""
    if step is None and share == saved_share(model_dir):
        return model_dir
    key = point_key(step, share)
    return write_mix(model_dir, share, model_dir / "transfer_mix" / f"share{key.replace('@', '_')}",
                     step=None if share == 0 else step)


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    """`--weights best|transfer`, as zero_shot.py and few_shot.py take it for their leave-one-species-out models."""
    parser.add_argument("--weights", choices=("best", "transfer"), default="best",
                        help="best: each leave-one-species-out model's saved weights (its best step on held-out "
                             "individuals of its own species); transfer: the point the other held-out species chose "
                             "(transfer_mix.py --checkpoints)")


def chosen_points(weights: str, loso_steps: int, dry_run: bool) -> dict[str, tuple[int | None, float]]:
    """With `weights="transfer"`, each held-out species' point as the other held-out species chose it (the results
    of `--checkpoints`, `chosen_without`); with "best", none."""
    if weights == "best":
        return {}
    chosen = json.loads(common.results_path(STEP_NAME, dry_run).read_text())["results"]
    if chosen["loso_steps"] != loso_steps:
        raise SystemExit(f"{STEP_NAME}.json weighed {chosen['loso_steps']}-step models, not {loso_steps}")
    return {held_out: parse_point(key) for held_out, key in chosen["chosen_without"].items()}


def measure(held_out: str, shares: list[float], args, log: common.ExperimentLog) -> dict:
    record = log.add_run(common.leave_one_species_out(held_out, args.steps, seed=args.seed, dry_run=args.dry_run,
                                                      recipe="flagship", keep_checkpoints=args.checkpoints))
    if not record["reused"] and not args.dry_run:
        print(f"note: {record['path']} was not there and has just been trained (zero_shot.py trains it too)")
    model_dir = Path(common.run_path(record))
    spec = common.fit_set(held_out, args.dry_run)
    steps = record["checkpoints"] if args.checkpoints else [None]
    figures = {}
    for step in steps:
        for share in shares:
            key = point_key(step, share)
            if key in figures:
                continue
            folder = point_folder(model_dir, step, share)
            result = log.add_evaluation(f"{held_out} {key}", common.evaluate_global(
                str(folder), [spec], dry_run=args.dry_run, force=args.force))
            figures[key] = common.summary_metrics(result["species"][held_out])
    return {"model": common.shown_path(str(model_dir)), "saved_share": saved_share(model_dir), "set": spec,
            "figures": figures}


def best_point(results: dict, species: list[str], points: list[str]) -> str:
    """The trained point (share above 0) with the best mean mAP over `species`; a tie keeps more fine-tuning."""
    trained = [p for p in points if p != "0"] or points
    mean = {p: sum(results[h]["figures"][p]["map"] for h in species) / len(species) for p in trained}
    return max(trained, key=lambda p: (mean[p], parse_point(p)[1], parse_point(p)[0] or 0))


def apply_mix(run: Path, point: tuple[int | None, float], steps: int, destination: Path, chosen_by: dict) -> None:
    """`run`'s weights at the chosen point (step, share of its fine-tuning), with its records and how the point
    was chosen. A step is a point of a `steps`-step schedule: `run` must have trained one."""
    step, share = point
    if destination.exists():
        raise SystemExit(f"{destination} exists: remove it or name another --apply-output")
    if step is not None:
        planned = yaml.safe_load((run / "training_config.yaml").read_text()).get("resolved_total_steps")
        if planned != steps:
            raise SystemExit(f"the chosen step {step} is a point of a {steps}-step schedule; {run} trained {planned}")
    write_mix(run, share, destination, step=step)
    for name in RUN_RECORDS:
        if (run / name).is_file():
            shutil.copy2(run / name, destination / name)
    (destination / "transfer_mix.json").write_text(json.dumps({"run": str(run), "share": share, "step": step,
                                                               **chosen_by}, indent=1) + "\n")
    print(f"wrote {destination}: {run}" + (f" at step {step}" if step is not None else "")
          + f" with {share:g} of its fine-tuning kept")


def point_label(key: str) -> str:
    if key == "0":
        return "start (share 0)"
    step, share = parse_point(key)
    return (f"step {step}, " if step is not None else "best step, ") + f"share {share:g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, steps=common.LOSO_STEPS, steps_help="steps of the leave-one-species-out models (zero_shot.py's)")
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES),
                        help="shares of the fine-tuning kept, 0 (the start) to 1 (the saved weights)")
    parser.add_argument("--checkpoints", action="store_true",
                        help="weigh every kept checkpoint's step too (the models keep their checkpoints)")
    parser.add_argument("--apply", help="a trained run folder (outputs/cpu_real) to write at the chosen point")
    parser.add_argument("--apply-output", help="where --apply writes the mixed model folder")
    args = parser.parse_args(argv)
    if bool(args.apply) != bool(args.apply_output):
        parser.error("--apply and --apply-output go together")
    if any(not 0.0 <= share <= 1.0 for share in args.shares):
        parser.error(f"--shares must lie in [0, 1], got {args.shares}")
    log = common.ExperimentLog(STEP_NAME if args.checkpoints else NAME, args)
    species, shares = sorted(args.species), sorted(set(args.shares))
    results = {held_out: measure(held_out, shares, args, log) for held_out in species}
    points = [key for key in results[species[0]]["figures"] if all(key in results[h]["figures"] for h in species)]
    mean_map = {p: sum(results[h]["figures"][p]["map"] for h in species) / len(species) for p in points}
    mean_top1 = {p: sum(results[h]["figures"][p]["top1"] for h in species) / len(species) for p in points}
    chosen = best_point(results, species, points)
    best_overall = max(points, key=lambda p: mean_map[p])
    chosen_without = {h: best_point(results, [o for o in species if o != h], points) for h in species}
    step, share = parse_point(chosen)
    rows = [[point_label(p), *[f"{reporting.percent(results[h]['figures'][p]['top1'])} / "
                               f"{reporting.percent(results[h]['figures'][p]['map'])}" for h in species],
             f"{reporting.percent(mean_top1[p])} / {reporting.percent(mean_map[p])}"] for p in points]
    table = {"columns": ["Weights", *[f"{h}: top-1 / mAP" for h in species], "mean: top-1 / mAP"],
             "rows": rows,
             "caption": (f"Leave-one-out top-1 / mAP (%) on each held-out species' training split "
                         f"({', '.join(results[h]['set'] for h in species)}), by its leave-one-species-out model "
                         f"({args.steps} steps, flagship recipe) mixed with its start (share 0: ImageNet lite0 with "
                         f"the run's calibrated neck; 1: unmixed). Chosen: {point_label(chosen)}, the best mean mAP "
                         f"of the trained points (share above 0)"
                         + (f"; {point_label(best_overall)} scored higher still." if best_overall != chosen else "."))}
    reporting.print_table(table, "Which weights transfer to unseen species")
    chosen_by = {"chosen_share": share, "chosen_step": step, "chosen_point": chosen,
                 "best_point_overall": best_overall, "chosen_without": chosen_without, "mean_map": mean_map,
                 "mean_top1": mean_top1, "loso_steps": args.steps, "species": species}
    if args.apply:
        apply_mix(Path(args.apply), (step, share), args.steps, Path(args.apply_output),
                  {**chosen_by, "command": log.command})
    log.write({"main": table}, {"species": results, **chosen_by})


if __name__ == "__main__":
    main()
