"""Which WiSE-FT mix transfers best to a species the model never saw (issue 33, part 2).

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

`--apply RUN --apply-output DIR` writes that mix of a trained run (the flagship: outputs/cpu_real) as a model
folder, with the run's records and a note of how the mix was chosen; `make ship-model` ships such a folder.

    python experiments/transfer_mix.py                               # after zero_shot.py (same --steps)
    python experiments/transfer_mix.py --apply outputs/cpu_real --apply-output outputs/cpu_real_transfer
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import common
import reporting

NAME = "transfer_mix"
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
RUN_RECORDS = ("training_summary.json", "training_config.yaml", "wildreid_run.json", "validation_results.json",
               "start_embedder.safetensors")


def saved_share(model_dir: Path) -> float:
    """The share of its fine-tuning the run's saved weights keep (1 unless the run saved a WiSE-FT mix)."""
    saved = json.loads((model_dir / "config.json").read_text()).get("weight_interpolation")
    return 1.0 if saved is None else float(saved)


def write_mix(model_dir: Path, share: float, destination: Path) -> Path:
    """The run's start plus `share` of its fine-tuning (best step minus start), as a model folder. The run saved
    start + a x (fine-tuned - start) for its own mix a, so `share / a` of the saved change is that point."""
    from modeling_wildreid import WildReIDModel
    from wildreid.training.weight_interpolation import interpolate_state, load_start_weights

    if (destination / "config.json").is_file():
        return destination
    model = WildReIDModel.from_pretrained(str(model_dir))
    model.load_state_dict(interpolate_state(load_start_weights(model_dir), model.state_dict(),
                                            share / saved_share(model_dir)))
    model.config.weight_interpolation = None if share == 1.0 else share  # what config.json says a mix is
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    from transformers import AutoImageProcessor  # the processor travels with the model folder

    AutoImageProcessor.from_pretrained(str(model_dir), trust_remote_code=True).save_pretrained(partial)
    partial.replace(destination)
    return destination


def measure(held_out: str, shares: list[float], args, log: common.ExperimentLog) -> dict:
    record = log.add_run(common.leave_one_species_out(held_out, args.steps, seed=args.seed, dry_run=args.dry_run,
                                          recipe="flagship"))
    if not record["reused"] and not args.dry_run:
        print(f"note: {record['path']} was not there and has just been trained (zero_shot.py trains it too)")
    model_dir = Path(common.run_path(record))
    spec = common.fit_set(held_out, args.dry_run)
    figures = {}
    for share in shares:
        saved = share == saved_share(model_dir)
        folder = model_dir if saved else write_mix(model_dir, share, model_dir / "transfer_mix" / f"share{share:g}")
        result = log.add_evaluation(f"{held_out} share {share:g}", common.evaluate_global(
            str(folder), [spec], dry_run=args.dry_run, force=args.force))
        figures[f"{share:g}"] = common.summary_metrics(result["species"][held_out])
    return {"model": common.shown_path(str(model_dir)), "saved_share": saved_share(model_dir), "set": spec,
            "figures": figures}


def apply_mix(run: Path, share: float, destination: Path, chosen_by: dict) -> None:
    """`run`'s weights at `share` of its fine-tuning, with its records and how the share was chosen."""
    if destination.exists():
        raise SystemExit(f"{destination} exists: remove it or name another --apply-output")
    write_mix(run, share, destination)
    for name in RUN_RECORDS:
        if (run / name).is_file():
            shutil.copy2(run / name, destination / name)
    (destination / "transfer_mix.json").write_text(json.dumps({"run": str(run), "share": share, **chosen_by},
                                                              indent=1) + "\n")
    print(f"wrote {destination}: {run} with {share:g} of its fine-tuning kept")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser, steps=common.LOSO_STEPS, steps_help="steps of the leave-one-species-out models (zero_shot.py's)")
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES),
                        help="shares of the fine-tuning kept, 0 (the start) to 1 (the saved weights)")
    parser.add_argument("--apply", help="a trained run folder (outputs/cpu_real) to write at the chosen share")
    parser.add_argument("--apply-output", help="where --apply writes the mixed model folder")
    args = parser.parse_args(argv)
    if bool(args.apply) != bool(args.apply_output):
        parser.error("--apply and --apply-output go together")
    if any(not 0.0 <= share <= 1.0 for share in args.shares):
        parser.error(f"--shares must lie in [0, 1], got {args.shares}")
    log = common.ExperimentLog(NAME, args)
    species, shares = sorted(args.species), sorted(set(args.shares))
    results = {held_out: measure(held_out, shares, args, log) for held_out in species}
    mean_map = {f"{s:g}": sum(results[h]["figures"][f"{s:g}"]["map"] for h in species) / len(species) for s in shares}
    mean_top1 = {f"{s:g}": sum(results[h]["figures"][f"{s:g}"]["top1"] for h in species) / len(species) for s in shares}
    trained = [s for s in shares if s > 0] or shares
    chosen = max(trained, key=lambda s: (mean_map[f"{s:g}"], s))  # a tie keeps more of the fine-tuning
    best_overall = max(shares, key=lambda s: (mean_map[f"{s:g}"], s))
    rows = [[h, results[h]["set"], *[f"{reporting.percent(results[h]['figures'][f'{s:g}']['top1'])} / "
                                     f"{reporting.percent(results[h]['figures'][f'{s:g}']['map'])}" for s in shares]]
            for h in species]
    rows.append(["mean", "", *[f"{reporting.percent(mean_top1[f'{s:g}'])} / {reporting.percent(mean_map[f'{s:g}'])}"
                               for s in shares]])
    table = {"columns": ["Held-out species", "Measured on", *[f"share {s:g}: top-1 / mAP" for s in shares]],
             "rows": rows,
             "caption": (f"Leave-one-out top-1 / mAP (%) on each held-out species' training split, by the "
                         f"leave-one-species-out model ({args.steps} steps, flagship recipe) mixed with its start "
                         f"(share 0: ImageNet lite0 with the run's calibrated neck; 1: its best step unmixed). "
                         f"Chosen: share {chosen:g}, the best mean mAP of the trained shares (above 0)"
                         + (f"; share {best_overall:g} scored higher still." if best_overall != chosen else "."))}
    reporting.print_table(table, "WiSE-FT mix for unseen species")
    chosen_by = {"chosen_share": chosen, "best_share_overall": best_overall, "mean_map": mean_map,
                 "mean_top1": mean_top1,
                 "loso_steps": args.steps, "species": species}
    if args.apply:
        apply_mix(Path(args.apply), chosen, Path(args.apply_output), {**chosen_by, "command": log.command})
    log.write({"main": table}, {"species": results, **chosen_by})


if __name__ == "__main__":
    main()
