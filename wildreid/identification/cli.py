"""`wildreid` command line: galleries of known individuals and "which one is this, or a new one?".

    wildreid index --datasets folder:photos --output galleries/mine   # the shipped model (no --model)
    wildreid index --model outputs/cpu_real --datasets lion:train --output galleries/lion [--local-features]
    wildreid index --model outputs/cpu_real --datasets nyala:train --output galleries/nyala --local-features \\
        --max_keypoints 2048            # full-frame flank photos: more keypoints (bench/keypoint_budget.py)
    wildreid index --model outputs/cpu_real --datasets lion:train --output galleries/lion-aliked \\
        --local-features aliked [--aliked_variant n16|n16rot|t16] [--local_max_side 512]
    wildreid index --model outputs/cpu_real --datasets dog:train --output galleries/dog --flip_test
    wildreid calibrate --gallery galleries/lion --datasets lion:train --method auto
    wildreid calibrate --gallery galleries/lion --datasets lion:train --models imagenet:tf_efficientnet_lite0 runs/x
    wildreid calibrate --gallery galleries/lion --datasets lion:train --local-features   # keep its extractor
    wildreid identify --gallery galleries/lion --images photo1.jpg photo2.jpg --output matches.json [--method fusion]
    wildreid identify --gallery galleries/lion --datasets csv:/data/new_photos.csv --output matches.csv
    wildreid export --format onnx --model outputs/cpu_real --output outputs/cpu_real-onnx-int8 --quantize int8 \\
        --calibration_datasets lion:train
    wildreid index --runtime onnx --model outputs/cpu_real-onnx-int8 --datasets lion:train --output galleries/lion-int8
    wildreid app --gallery galleries/lion [--model M] [--host 127.0.0.1] [--port 7860]
    wildreid adapt --gallery galleries/lion [--budget_minutes 20]   # fine-tune its model on its own photos
    wildreid publish-model --repo_id my-org/wildreid-lite0 [--model outputs/cpu_real]

`identify` uses the gallery's own model unless --model is given, and refuses a model whose weights or
preprocessing differ from the gallery's. For big archives run `index` under
`accelerate launch --num_processes N -m wildreid.identification.cli index ...`: each process embeds its share.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys

from ..outputs import check_output_file, check_output_folder
from ..safe_text import printable
from ..threads import configure_threads
from ..embedding.onnx_runtime import RUNTIMES
from ..embedding.shipped_model import describe_default, publish_model_folder, shipped_model
from ..matching.descriptor_index import INDEX_TYPES
from ..matching.keypoints import ALIKED_VARIANTS, DEFAULT_MAX_KEYPOINTS, DEFAULT_MAX_SIDE, LOCAL_FEATURE_CHOICES
from .adapt import add_adapt_command, run_adapt
from .onnx_export import add_export_command, run_export
from .store import GalleryBusyError
from .gallery_methods import MAX_FIT_IMAGES, REQUESTABLE
from .embedding_choice import IMAGENET_LITE0, calibrate_choosing_features, describe_choice
from .extractor_choice import describe_extractor_choice
from .workflows import build_gallery, identify
from .results import write_results


def finite_float(text: str) -> float:
    """argparse type: a finite number (`nan` would make every query a known individual, `inf` none)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_dir", help="raw data of the built-in species (default $WILDREID_DATA, ../shared/data)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2, help="image-loading processes (at most the cores)")
    parser.add_argument("--num_threads", type=int,
                        help="torch CPU threads (default: $WILDREID_NUM_THREADS, else the cores this process may use)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch",
                        help="onnx: --model is a folder written by `wildreid export --format onnx`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wildreid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="embed known individuals into a gallery folder")
    index.add_argument("--model", help="wildreid model folder or Hub id (default: the model wildreid ships, "
                                       "EfficientNet-Lite0 trained on lion, nyala, dog and pig; wildreid/default_model)")
    index.add_argument("--datasets", nargs="+", required=True, help="dataset specs of the known individuals")
    index.add_argument("--output", required=True, help="gallery folder to write")
    index.add_argument("--local-features", nargs="?", const="sift", choices=LOCAL_FEATURE_CHOICES,
                       help="also cache local features beside the gallery: sift (what a bare --local-features gives) "
                            "or aliked (learned, kornia; shipped weights); the gallery records the extractor and its "
                            "queries are extracted the same way")
    index.add_argument("--max_keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS,
                       help="with --local-features: keypoints kept per image (the gallery's queries use the same); "
                            "bench/keypoint_budget.py measures budgets per species")
    index.add_argument("--local_max_side", type=int, default=DEFAULT_MAX_SIDE,
                       help="with --local-features: each crop is resized so its longest side is this many pixels "
                            "(small crops upscaled) before keypoints are detected")
    index.add_argument("--aliked_variant", choices=ALIKED_VARIANTS,
                       help="with --local-features aliked: n16 (default), n16rot (in-plane rotation), t16 (faster)")
    index.add_argument("--aliked_weights", help="with --local-features aliked: other .pth weights than the shipped "
                                                "ones (their SHA-256 is recorded in the gallery)")
    index.add_argument("--aliked_scales", type=float, nargs="+",
                       help="with --local-features aliked: pyramid levels, e.g. 1 0.5 0.25 (default 1: one scale; "
                            "bench/aliked_scales.py: the pyramid helps lion's crops at other zooms, not nyala)")
    index.add_argument("--descriptor_index", choices=INDEX_TYPES, default="auto",
                       help="with --local-features: the index one-vs-many retrieval searches. auto: exact up to "
                            "200,000 descriptors (~400 images), an inverted file of 8-bit codes (ivfsq8: ~140 bytes a "
                            "descriptor, votes as an uncompressed ivf's) beyond; ivfpq: 76 bytes (a 100,000-image "
                            "gallery's index in ~4.6 GiB instead of ~6.7), at some cost in votes "
                            "(bench/local_index_scale.py)")
    index.add_argument("--flip_test", action="store_true",
                       help="embed each image with its mirror image too and average the two (twice the time; the "
                            "gallery's queries are embedded the same way); evaluate.py --flip_test measures it")
    index.add_argument("--overwrite", action="store_true", help="replace an existing gallery")
    _add_data_options(index)

    calibrate = commands.add_parser("calibrate", help="fit the new-individual threshold on labelled validation images")
    calibrate.add_argument("--gallery", required=True)
    calibrate.add_argument("--datasets", nargs="+", required=True, help="validation specs (known and new individuals)")
    calibrate.add_argument("--model", help="default: the model the gallery was built with")
    calibrate.add_argument("--models", nargs="*", metavar="MODEL",
                           help="models to weigh against the gallery's own: each embeds the labelled images and has "
                                "the method chosen on them, and the best by validation mAP becomes the gallery's "
                                "embedding (a new revision; `adapt --undo` goes back). Default: the shipped model and "
                                f"{IMAGENET_LITE0} when the gallery holds one of them, else none; the flag alone: "
                                "none (the gallery's model only)")
    calibrate.add_argument("--local-features", "--local_features", nargs="*", choices=LOCAL_FEATURE_CHOICES,
                           metavar="EXTRACTOR", dest="local_features",
                           help="keypoint extractors to weigh against the gallery's own (sift, aliked: ALIKED-n16), at "
                                "the gallery's keypoints per image and side: each extracts keypoints of the labelled "
                                "images once and has the method chosen on them with each model, and the best pairing "
                                "by validation mAP becomes the gallery's (a new revision, its images' keypoints "
                                "extracted again; `adapt --undo` goes back). Default: the other of sift and aliked "
                                "when the gallery has local features; the flag alone: none (the gallery's extractor "
                                "only). A gallery without local features is given none")
    calibrate.add_argument("--method", choices=REQUESTABLE,
                           help="scoring method to fit per species on the labelled images (auto: the best by validation "
                                "mAP; default auto when the gallery has keypoints, else global)")
    calibrate.add_argument("--max_fit_images", type=int, default=MAX_FIT_IMAGES,
                           help="images per species the method is fitted on, whole individuals in a seeded order "
                                "(the fit grows with their square; 0: all)")
    calibrate.add_argument("--exclude_same_encounter", action="store_true",
                           help="fit and choose the method without pairs of one encounter (sighting, video): what "
                                "a new sighting will meet, where photos of one sighting share a background")
    _add_data_options(calibrate)

    query = commands.add_parser("identify", help="rank known individuals for query images")
    query.add_argument("--gallery", required=True)
    inputs = query.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--images", nargs="+", help="query image files")
    inputs.add_argument("--datasets", nargs="+", help="query dataset specs")
    query.add_argument("--model", help="default: the model the gallery was built with")
    query.add_argument("--method", choices=REQUESTABLE, default="auto",
                       help="auto: the gallery's per-species choice from calibrate, else global; local and fusion "
                            "need `index --local-features` (fusion also `calibrate`)")
    query.add_argument("--top_k", type=int, default=5)
    query.add_argument("--threshold", type=finite_float, help="override the calibrated new-individual threshold")
    query.add_argument("--output", help="results file (.json or .csv); printed when omitted")
    _add_data_options(query)

    app = commands.add_parser("app", help="browser app to review candidates and record decisions (needs wildreid[app])")
    app.add_argument("--gallery", required=True)
    app.add_argument("--model", help="default: the model the gallery was built with")
    app.add_argument("--host", default="127.0.0.1",
                     help="interface to bind (default 127.0.0.1: this machine only); anything else prints a warning: "
                          "whoever reaches the port can change the gallery, so pair it with --auth")
    app.add_argument("--auth", metavar="USER:PASSWORD",
                     help="require this login in the browser (default: $WILDREID_APP_AUTH when set, which keeps the "
                          "password out of the shell history; else no login)")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--method", choices=REQUESTABLE, default="auto",
                     help="as for identify: auto (the gallery's per-species choice from calibrate, else global), "
                          "global, local or fusion (fusion needs `calibrate --method fusion|auto` first)")
    app.add_argument("--top_k", type=int, default=5)
    app.add_argument("--threshold", type=finite_float, help="override the calibrated new-individual threshold (cosine)")
    app.add_argument("--review_dir", help="audit log and stored query photos (default: <gallery>.review)")
    app.add_argument("--max_upload_mb", type=float, default=20.0, help="largest accepted photo")
    app.add_argument("--runtime", choices=RUNTIMES, default="torch",
                     help="onnx: --model (or the gallery's model) is a `wildreid export --format onnx` folder")
    add_export_command(commands)
    add_adapt_command(commands)

    publish = commands.add_parser("publish-model", help="upload a model folder to the Hugging Face Hub")
    publish.add_argument("--repo_id", required=True, help="Hub model repo, e.g. my-org/wildreid-zebra (created if absent)")
    publish.add_argument("--model", help="model folder (default: the shipped model); a training output's checkpoints "
                                         "and logs are left out")
    publish.add_argument("--private", action="store_true", help="create the repo private")
    publish.add_argument("--token", help="Hub token (default: $HF_TOKEN or `hf auth login`'s)")
    return parser


def _run_app(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535 or args.top_k < 1 or args.max_upload_mb <= 0:
        raise ValueError(f"need 1 <= --port <= 65535, --top_k >= 1 and --max_upload_mb > 0; got {args.port}, "
                         f"{args.top_k}, {args.max_upload_mb}")
    import importlib.util

    from .review.serving import resolve_auth

    auth = resolve_auth(args.auth)  # a malformed login is refused before anything is loaded
    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the app needs gradio; install it with: pip install 'wildreid[app]'")
    from .review import open_session
    from .review.ui import launch

    session = open_session(args.gallery, args.model, runtime=args.runtime, review_dir=args.review_dir,
                           method=args.method, top_k=args.top_k, threshold=args.threshold,
                           max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, SIGTERM or SIGHUP during start-up: a normal stop
        launch(session, host=args.host, port=args.port, auth=auth)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, low in (("batch_size", 1), ("num_workers", 0), ("top_k", 1), ("max_fit_images", 0), ("max_keypoints", 1)):
        value = getattr(args, flag, None)
        if value is not None and value < low:
            parser.error(f"--{flag} must be >= {low}, got {value}")
    try:
        configure_threads(getattr(args, "num_threads", None))
        if args.command == "app":
            return _run_app(args)
        if args.command == "export":
            print(run_export(args))
            return 0
        if args.command == "adapt":
            return run_adapt(args)
        if args.command == "publish-model":
            print(publish_model_folder(args.model or shipped_model(), args.repo_id, private=args.private,
                                       token=args.token))
            return 0
        data = dict(data_dir=args.data_dir, batch_size=args.batch_size, num_workers=args.num_workers,
                    runtime=args.runtime)
        if args.command == "identify" and args.output:  # output paths are checked before any work
            check_output_file(args.output, "--output")
        if args.command == "index":
            if (args.max_keypoints != DEFAULT_MAX_KEYPOINTS or args.local_max_side != DEFAULT_MAX_SIDE
                    or args.descriptor_index != "auto") and not args.local_features:
                parser.error("--max_keypoints, --local_max_side and --descriptor_index set the gallery's local "
                             "features: give --local-features with them")
            if (args.aliked_variant or args.aliked_weights or args.aliked_scales) and args.local_features != "aliked":
                parser.error("--aliked_variant, --aliked_weights and --aliked_scales need --local-features aliked")
            check_output_folder(args.output, "--output")
            print(describe_default(args.model))
            gallery, skipped = build_gallery(args.model or shipped_model(), args.datasets, args.output, local_features=args.local_features,
                                             max_keypoints=args.max_keypoints, overwrite=args.overwrite,
                                             local_max_side=args.local_max_side, aliked_variant=args.aliked_variant,
                                             aliked_weights=args.aliked_weights, aliked_scales=args.aliked_scales,
                                             descriptor_index=args.descriptor_index,
                                             flip_test=args.flip_test or None, **data)
            print(f"gallery {args.output}: {len(gallery)} images of {len(gallery.identities)} individuals"
                  + (f"; skipped {len(skipped)} unreadable (e.g. {printable(skipped[0].file)}: "
                     f"{printable(skipped[0].reason)})" if skipped else ""))
        elif args.command == "calibrate":
            calibrated = calibrate_choosing_features(
                args.gallery, args.datasets, model=args.model, models=args.models,
                local_features=args.local_features, method=args.method,
                max_fit_images=args.max_fit_images or None, exclude_same_encounter=args.exclude_same_encounter,
                report=lambda line: print(printable(line)), **data)
            threshold, choices = calibrated["threshold"], calibrated["choices"]
            for record, describe in ((calibrated["embedding"], describe_choice),
                                     (calibrated["extractor"], describe_extractor_choice)):
                if record:
                    print(printable(describe(record, args.gallery)))
            print(f"gallery {args.gallery}: new-individual threshold {threshold:.4f} (cosine)")
            for species, choice in choices.items():
                figures = ", ".join(f"{name} top-1 {100 * f['top1']:.1f} mAP {100 * f['map']:.1f}"
                                    for name, f in choice["validation"].items())
                print(f"  {species}: method {choice['method']} (validation, {choice['validation_queries']} "
                      f"images leave-one-out: {figures})")
        else:
            results, failures = identify(args.gallery, images=args.images, datasets=args.datasets, model=args.model,
                                         method=args.method, top_k=args.top_k, threshold=args.threshold, **data)
            for failure in failures:
                print(f"skipped {printable(failure.file)}: {printable(failure.reason)}", file=sys.stderr)
            if args.output:
                write_results(results, failures, args.output)
                print(f"{len(results)} queries identified, {len(failures)} skipped -> {args.output}")
            else:
                for result in results:
                    best = result.candidates[0] if result.candidates else None
                    verdict = "NEW individual" if result.is_new else (printable(best.identity) if best else "-")
                    print(f"{printable(result.query)}: {verdict}  ({result.method}; top score {result.top_score:.3f}; "
                          + ", ".join(f"{printable(c.identity)} {c.score:.3f}" for c in result.candidates) + ")"
                          + (f" [{printable(result.note)}]" if result.note else ""))
    except (ValueError, OSError, GalleryBusyError) as error:  # FileNotFoundError / FileExistsError are OSErrors
        print(f"error: {printable(error, keep_newlines=True)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
