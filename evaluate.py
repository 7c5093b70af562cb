"""Evaluate a re-identification model per species.

    python evaluate.py --model outputs/demo --datasets lion:val nyala:test --protocol leave-one-out \
        --output results/lion_nyala.json [--plots]

Protocols: leave-one-out (each image queries all others of its set, MiewID's protocol), closed-set
(--datasets queried against --gallery, MegaDescriptor's), open-set (some query individuals absent from
the gallery; the "new individual" threshold is fitted on validation data, never on the test queries).
Models: a wildreid folder or Hub id, `imagenet:tf_efficientnet_lite0` (no training), `timm:<name>`.
Methods: global embeddings (default); local retrieval (--method local: one-vs-many LNBNN voting and
spatial verification, no model needed; --method local-pairwise matches every pair) on SIFT or ALIKED
keypoints (--local_features sift|aliked); fusion of both over the
union of their shortlists (--method fusion); auto, the per-species best of those by validation mAP. Fusion
and auto are fitted on --val_datasets (a training split; closed-set defaults to the --gallery).

This file shares its name with the Hugging Face `evaluate` library; wildreid never imports the library
by plain name (see wildreid.evaluation.hf_evaluate), so running it from the repository root is safe.
"""
import argparse
import logging
import sys

from wildreid.embedding.shipped_model import describe_default, shipped_model
from wildreid.evaluation.runner import EvaluationRequest, command_line, run_evaluation
from wildreid.matching.keypoints import ALIKED_VARIANTS, DEFAULT_MAX_KEYPOINTS, DEFAULT_MAX_SIDE, LOCAL_FEATURE_CHOICES
from wildreid.outputs import check_output_file
from wildreid.threads import configure_threads


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="wildreid model folder or Hub id, imagenet:<lite name>, or timm:<name> "
                        "(default: the model wildreid ships, for every method but local ones)")
    parser.add_argument("--datasets", nargs="+", required=True, help="dataset specs to evaluate (queries)")
    parser.add_argument("--protocol", default="leave-one-out", choices=["leave-one-out", "closed-set", "open-set"])
    parser.add_argument("--method", default="global", choices=["global", "local", "local-pairwise", "fusion", "auto"],
                        help="global: model embeddings; local: one-vs-many local retrieval (no --model); local-pairwise: "
                             "local matching of every pair; fusion: global and local shortlists united, calibrated on "
                             "--val_datasets; auto: per species the best of global/local/fusion on --val_datasets")
    parser.add_argument("--shortlist", type=int, default=20,
                        help="local/fusion/auto: candidates per query from each shortlist that get verified")
    parser.add_argument("--max_keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS,
                        help="local/fusion/auto: keypoints kept per image (bench/keypoint_budget.py compares budgets)")
    parser.add_argument("--local_features", choices=LOCAL_FEATURE_CHOICES, default="sift",
                        help="local/fusion/auto: the local feature extractor, sift (OpenCV) or aliked (learned)")
    parser.add_argument("--aliked_variant", choices=ALIKED_VARIANTS,
                        help="with --local_features aliked: n16 (default), n16rot (in-plane rotation), t16 (faster)")
    parser.add_argument("--aliked_scales", type=float, nargs="+",
                        help="with --local_features aliked: pyramid levels, e.g. 1 0.5 0.25 (default 1: one scale)")
    parser.add_argument("--local_max_side", type=int, default=DEFAULT_MAX_SIDE,
                        help="local/fusion/auto: crops resized to this longest side (px) before extraction")
    parser.add_argument("--gallery", nargs="+", default=[], help="gallery specs (closed-set, open-set)")
    parser.add_argument("--val_datasets", nargs="+", default=[],
                        help="open-set: validation queries for the threshold; fusion: calibration set")
    parser.add_argument("--output", help="results JSON path")
    parser.add_argument("--plots", action="store_true", help="also write CMC curves and a top-5 match grid (PNG)")
    parser.add_argument("--data_dir", help="raw data of the built-in species (default $WILDREID_DATA, ../shared/data)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--image_size", type=int, help="input size for imagenet:/timm: baselines")
    parser.add_argument("--split_seed", type=int, default=0, help="open-set without --gallery: split seed")
    parser.add_argument("--flip_test", action="store_true",
                        help="average each image's embedding with its mirror image's (twice the embedding time)")
    parser.add_argument("--exclude_same_encounter", action="store_true",
                        help="leave-one-out/closed-set: a query does not see the other photos of its own encounter "
                             "(sighting, video: the dataset's `encounter` column), so only re-sightings count")
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                        help="onnx: --model is a folder written by `wildreid export --format onnx`")
    parser.add_argument("--num_threads", type=int,
                        help="torch CPU threads (default: $WILDREID_NUM_THREADS, else the cores this process may use)")
    args = parser.parse_args(argv)
    for flag, value, low in (("--batch_size", args.batch_size, 1), ("--num_workers", args.num_workers, 0),
                             ("--shortlist", args.shortlist, 1), ("--image_size", args.image_size, 32),
                             ("--max_keypoints", args.max_keypoints, 1), ("--local_max_side", args.local_max_side, 16)):
        if value is not None and value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if args.model is None and args.method not in ("local", "local-pairwise"):
        args.model = shipped_model()
        print(describe_default(None))
    options = vars(args)
    num_threads = options.pop("num_threads")
    request = EvaluationRequest(**options, command=command_line(argv))
    try:
        configure_threads(num_threads)
        if args.output:  # before the evaluation, not after it
            check_output_file(args.output, "--output")
        run_evaluation(request)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
