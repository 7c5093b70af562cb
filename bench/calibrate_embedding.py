"""`wildreid calibrate` choosing the embedding for a species its model never saw (issue 31, part 2).

A user's fifth species is one the shipped model never trained on. Here each dev species plays that part: its
gallery (the species' training split, embeddings only) is indexed with its leave-one-species-out model
(experiments/zero_shot.py, trained on the other species only), and `wildreid calibrate` on the gallery's own labelled images weighs it against
ImageNet lite0 (`--models`), choosing per gallery by validation mAP as it chooses methods. Reported per species:
- each candidate's validation figures and the choice (training-side images only: the gallery's own),
- the model the gallery embeds with after calibrate (what `identify` answers with),
- leave-one-out top-1 / mAP of both models on the species' evaluation split, whose individuals the gallery never
  held: whether the choice agrees with what new individuals show. Nothing is chosen on that split.

    python bench/calibrate_embedding.py --model lion=experiments/runs/loso_lion_flagship_s600_seed0 \\
        nyala=experiments/runs/loso_nyala_flagship_s600_seed0

Real data comes from $WILDREID_DATA (default ../shared/data); galleries go under --work_dir (git-ignored). Writes
bench/results/calibrate_embedding.json with the commit.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid (and its commit in the JSON), not another install

from bench_common import leave_one_out_figures, run_wildreid, write_report  # noqa: E402

SETS = {"lion": ("lion:train", "lion:val"), "nyala": ("nyala:train", "nyala:test"),
        "dog": ("dog[max_identities=100]:train", "dog[max_identities=100]:test"), "pig": ("pig:train", "pig:test")}
IMAGENET = "imagenet:tf_efficientnet_lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, metavar="SPECIES=MODEL",
                        help="each species' gallery model: one that never saw that species")
    parser.add_argument("--num_threads", type=int, help="torch threads of every command (default: wildreid's)")
    parser.add_argument("--data_dir", help="real data (default $WILDREID_DATA, ../shared/data)")
    parser.add_argument("--work_dir", default=str(REPO / "bench" / "runs" / "calibrate_embedding"))
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "calibrate_embedding.json"))
    args = parser.parse_args()
    models = dict(value.split("=", 1) for value in args.model)
    unknown = sorted(set(models) - set(SETS))
    if unknown or any("=" not in value for value in args.model):
        parser.error(f"--model takes SPECIES=MODEL for species of {sorted(SETS)}; got {args.model}")
    rows = {name: run_species(name, model, Path(args.work_dir) / name, args) for name, model in models.items()}
    result = table(rows)
    print(" | ".join(result["columns"]))
    for row in result["rows"]:
        print(" | ".join(str(cell) for cell in row))
    write_report(args.output, "calibrate_embedding", {"num_threads": args.num_threads, "sets": rows, "table": result})


def run_species(name: str, model: str, folder: Path, args) -> dict:
    from wildreid.identification import store
    from wildreid.identification.gallery import Gallery

    gallery_spec, eval_spec = SETS[name]
    data = ["--data_dir", args.data_dir] if args.data_dir else []
    gallery = folder / "gallery"
    shutil.rmtree(gallery, ignore_errors=True)  # each run indexes and calibrates from scratch
    index_seconds = run_wildreid("index", "--model", model, "--datasets", gallery_spec, "--output", str(gallery), *data,
                                 num_threads=args.num_threads)
    calibrate_seconds = run_wildreid("calibrate", "--gallery", str(gallery), "--datasets", gallery_spec,
                                     "--models", IMAGENET, *data, num_threads=args.num_threads)
    choice = Gallery.load(gallery).calibration["embedding_choice"]
    in_use = label(store.read_config(gallery)["model"]["model_name_or_path"])
    evaluation = {label(m): leave_one_out_figures(m, eval_spec, args.data_dir, args.num_threads)
                  for m in (model, IMAGENET)}
    better_on_eval = max(evaluation, key=lambda m: evaluation[m]["map"])
    return {"gallery_spec": gallery_spec, "eval_spec": eval_spec, "gallery_model": model,
            "validation_mean_map": {label(c["model"]): c["mean_map"] for c in choice["candidates"]},
            "candidates": choice["candidates"], "chosen": label(choice["best"]), "switched": choice["switched"],
            "gallery_embeds_with": in_use, "evaluation": evaluation, "better_on_evaluation_split": better_on_eval,
            "choice_agrees": in_use == better_on_eval,
            "index_seconds": round(index_seconds, 1), "calibrate_seconds": round(calibrate_seconds, 1)}


def label(reference: str) -> str:
    """The two candidates by what they are: ImageNet features, or the model that never saw the species."""
    return "ImageNet lite0" if reference.startswith("imagenet:") else "never-saw-it model"


def table(rows: dict) -> dict:
    models = ("never-saw-it model", "ImageNet lite0")

    def percent(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    return {"columns": ["Species", "Validation mAP: never-saw-it / ImageNet", "Chosen", "Gallery embeds with",
                        "Evaluation split top-1 / mAP: never-saw-it", "... ImageNet", "Choice agrees"],
            "rows": [[name, " / ".join(percent(row["validation_mean_map"].get(m)) for m in models), row["chosen"],
                      row["gallery_embeds_with"],
                      *[f"{percent(row['evaluation'][m]['top1'])} / {percent(row['evaluation'][m]['map'])}"
                        for m in models],
                      "yes" if row["choice_agrees"] else "no"] for name, row in rows.items()],
            "caption": "Galleries of embeddings only (indexed without keypoints), so calibrate chooses between the two "
                       "embeddings. Validation mAP: calibrate's figure (mean chosen-method mAP, leave-one-out on the "
                       "gallery's own labelled images). Evaluation split: leave-one-out on individuals never in the "
                       "gallery; 'Choice agrees': the gallery embeds with the model of the higher evaluation mAP."}


if __name__ == "__main__":
    main()
