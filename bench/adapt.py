"""`wildreid adapt` on species its start model never saw: top-1 / mAP on individuals never in the gallery, before
and after, and the command's wall time.

For each species: the start model (lite0's ImageNet weights saved as a wildreid model folder, or `--start_model`,
e.g. the species' leave-one-species-out model of experiments/zero_shot.py, which never saw it), a gallery of the
species' training split (`wildreid index`), `wildreid adapt` on it with its default budget, then the species'
evaluation split, whose individuals were never in the gallery, leave-one-out (as evaluate.py and training's
validation measure) with the start model and with the model the gallery holds after adapt (the start model again
when adapt did not install); where the evaluation split records encounters (nyala), also across sightings: without
the other photos of a query's own encounter, as adapt's own before / after measure.

    python bench/adapt.py                                    # lion (train / val) and nyala (train / test)
    python bench/adapt.py --start_model \\
        lion=experiments/runs/loso_lion_flagship_s600_seed0/transfer_mix/share300_0.25 \\
        nyala=experiments/runs/loso_nyala_flagship_s600_seed0/transfer_mix/share450_0.25
        # models that never saw them, at the point the other species chose (experiments/transfer_mix.py)
    python bench/adapt.py --set tiny 'csv[species=zebra]:photos/labels.csv' 'csv[species=zebra]:photos/new.csv' \\
        --max_steps 10 --output /tmp/adapt.json              # a quick check on other data

Real data comes from $WILDREID_DATA (default ../shared/data). Writes JSON with the git commit to
bench/results/adapt.json; galleries and work folders go under --work_dir (git-ignored: they derive from the data).
Target (issue 31): at least +10 pp top-1 on both species, each adapt within 20 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid (and its commit in the JSON), not another install

from bench_common import leave_one_out_figures, run_wildreid, write_report  # noqa: E402

SETS = {"lion": ("lion:train", "lion:val"), "nyala": ("nyala:train", "nyala:test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--species", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    parser.add_argument("--set", nargs=3, action="append", default=[], metavar=("NAME", "GALLERY_SPEC", "EVAL_SPEC"),
                        help="another species: the gallery's spec and the evaluation spec (replaces --species)")
    parser.add_argument("--start_model", nargs="+", default=[], metavar="[SPECIES=]MODEL",
                        help="wildreid model folder to start from, for every set or per set as NAME=FOLDER (default: "
                             "ImageNet lite0 at 224 px)")
    parser.add_argument("--budget_minutes", type=float, help="passed to adapt (default: adapt's own)")
    parser.add_argument("--max_steps", type=int, help="passed to adapt (default: what its budget allows)")
    parser.add_argument("--local_features", action="store_true", help="index with SIFT keypoints (calibration: auto)")
    parser.add_argument("--num_threads", type=int, help="torch threads of every command (default: wildreid's)")
    parser.add_argument("--data_dir", help="real data (default $WILDREID_DATA, ../shared/data)")
    parser.add_argument("--work_dir", default=str(REPO / "bench" / "runs" / "adapt"))
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "adapt.json"))
    args = parser.parse_args()
    sets = {name: (gallery, evaluation) for name, gallery, evaluation in args.set} or \
        {name: SETS[name] for name in args.species}
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    starts = start_models(args.start_model, sets, work)
    rows = {name: run_set(name, gallery, evaluation, starts[name], work / name, args)
            for name, (gallery, evaluation) in sets.items()}
    print_table(rows)
    write_report(args.output, "adapt", {
        "start_model": {name: describe_start(start) for name, start in starts.items()},
        "adapt_options": adapt_options(args), "num_threads": args.num_threads, "sets": rows,
        "table": table(rows)})


def start_models(values: list[str], sets: dict, work: Path) -> dict[str, str]:
    """Each set's start model: `NAME=FOLDER` for that set, a bare FOLDER for the rest, else ImageNet lite0."""
    named = dict(value.split("=", 1) for value in values if "=" in value)
    bare = [value for value in values if "=" not in value]
    if len(bare) > 1 or set(named) - set(sets):
        raise SystemExit(f"--start_model takes one FOLDER and NAME=FOLDER for sets of {sorted(sets)}; got {values}")
    default = bare[0] if bare else None
    return {name: named.get(name) or default or str(imagenet_model(work / "imagenet-lite0")) for name in sets}


def describe_start(model: str) -> dict:
    """What a start model is, for the report: its folder and the species it trained on (none for ImageNet)."""
    config = json.loads((Path(model) / "config.json").read_text())
    return {"model": model, "training_species": config.get("training_species") or []}


def imagenet_model(folder: Path) -> Path:
    """Lite0's ImageNet weights as a wildreid model folder (neck uninitialised, as `imagenet:tf_efficientnet_lite0`)."""
    if not (folder / "config.json").is_file():
        from modeling_wildreid import WildReIDConfig, WildReIDModel

        WildReIDModel.with_imagenet_backbone(WildReIDConfig(backbone="tf_efficientnet_lite0", image_size=224)) \
            .save_pretrained(folder)
    return folder


def adapt_options(args) -> list[str]:
    return ((["--budget_minutes", str(args.budget_minutes)] if args.budget_minutes else [])
            + (["--max_steps", str(args.max_steps)] if args.max_steps else []))


def run_set(name: str, gallery_spec: str, eval_spec: str, start_model: str, folder: Path, args) -> dict:
    gallery = folder / "gallery"
    for leftover in (gallery, folder / "gallery.adapt"):  # each run indexes and adapts from scratch
        shutil.rmtree(leftover, ignore_errors=True)
    data = ["--data_dir", args.data_dir] if args.data_dir else []
    index_seconds = run_wildreid("index", "--model", start_model, "--datasets", gallery_spec, "--output",
                                 str(gallery), *data, *(["--local-features"] if args.local_features else []),
                                 num_threads=args.num_threads)
    adapt_seconds = run_wildreid("adapt", "--gallery", str(gallery), *adapt_options(args),
                                 num_threads=args.num_threads)
    result = json.loads((folder / "gallery.adapt" / "result.json").read_text())
    from wildreid.identification import store

    adapted_model = store.resolve_model_reference(store.read_config(gallery)["model"]["model_name_or_path"], gallery)
    before, after = (leave_one_out_figures(model, eval_spec, args.data_dir, args.num_threads, across_sightings=True)
                     for model in (start_model, adapted_model))
    return {"gallery_spec": gallery_spec, "eval_spec": eval_spec, "start": describe_start(start_model),
            "installed": result["installed"],
            "before": before, "after": after, "top1_gain_pp": 100 * (after["top1"] - before["top1"]),
            "map_gain_pp": 100 * (after["map"] - before["map"]), "adapt_seconds": adapt_seconds,
            "index_seconds": index_seconds, "adapt_held_out": {"before": result["before"]["mean"],
                                                                "after": result["after"]["mean"]},
            "adapt_plan": result["plan"], "adapt_training": result["training"]}


def table(rows: dict) -> dict:
    return {"columns": ["Set", "Start model", "Evaluated on", "Top-1 before / after", "mAP before / after", "Gain (pp top-1)",
                        "Across sightings: top-1 before / after", "Installed", "adapt wall time (min)"],
            "rows": [[name, start_label(row["start"]), row["eval_spec"], before_after(row, "top1"),
                      before_after(row, "map"), round(row["top1_gain_pp"], 1),
                      before_after(row, "top1", "across_sightings"), "yes" if row["installed"] else "no",
                      round(row["adapt_seconds"] / 60, 1)] for name, row in rows.items()]}


def before_after(row: dict, metric: str, protocol: str | None = None) -> str:
    """"before / after" in %, over all queries or under `protocol` ("-" where the set records no encounters)."""
    before, after = ((row[when].get(protocol) if protocol else row[when]) for when in ("before", "after"))
    if not before or not after:
        return "-"
    return f"{100 * before[metric]:.1f} / {100 * after[metric]:.1f}"


def start_label(start: dict) -> str:
    species = start["training_species"]
    return f"trained on {', '.join(species)} only" if species else "ImageNet lite0"


def print_table(rows: dict) -> None:
    result = table(rows)
    print(" | ".join(result["columns"]))
    for row in result["rows"]:
        print(" | ".join(str(cell) for cell in row))


if __name__ == "__main__":
    main()
