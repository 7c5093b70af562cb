"""Which method identifies individuals best, per set: ImageNet lite0, the trained model, pairwise SIFT, the plain
SIFT recipe (`plain_recipe.py`), one-vs-many local retrieval and union fusion with SIFT and with ALIKED features,
auto with SIFT and auto choosing among both extractors, with the time each takes.

Sets (real data, `$WILDREID_DATA`): leave-one-out on lion:val, nyala:test, dog[max_identities=100]:test,
pig:test, and closed-set lion and nyala (hub_datasets `closed_set` split, test queried against train).
Fusion and auto are fitted (calibration, combiner, method choice) on the training split of each species,
leave-one-out within it: never on the test queries. Their global input is the `--model` on the
leave-one-out sets (ImageNet lite0 without one, or with `--fusion-model imagenet`): calibrating on the split
the model learned could teach fusion to over-trust it; measured, the trained input did as well or better on
lion, pig and nyala and 0.6 pp worse on dog (README, "How well it identifies real animals"). On the closed-set
rows `--model` saw the test images in training; their trained column is `--closed-set-model`
(configs/cpu_closed_set.yaml: trained on the closed-set train part, i.e. the gallery, never the test queries),
and fusion's global input stays ImageNet lite0: the only labelled images to fit fusion on are that model's
own training images, on which its scores are inflated (measured: lion 45.2 % with it vs 48.4 % local alone).
A `--model` trained with individuals held out of each training split (`resplit_from`, e.g.
`pig[resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:train`) has fusion and auto fitted on
those held-out individuals instead of the split it trained on. `--center-box 0.4` adds nyala-test and nyala-closed
twins scored on the middle of each photo (`center_box`, every method and its fit).

    python bench/identification_accuracy.py --model outputs/cpu_real --closed-set-model outputs/cpu_closed_set

Prints one table and writes JSON (with the git commit) to bench/results/identification_accuracy.json.
Local features and embeddings are cached under --cache-dir (outside the repo: they derive from the data).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's wildreid (and its commit in the JSON), not another install

from bench_common import limit_threads, measured_by  # noqa: E402
from identification_tables import print_table, tables  # noqa: E402

limit_threads()

from feature_cache import boxed, embeddings, local_features  # noqa: E402  (thread settings first)
from hub_datasets.specs import load_specs, parse_spec  # noqa: E402
from identification_methods import EXTRACTOR_LABELS, choose_across_extractors, pairwise, plain_recipe  # noqa: E402
from plain_recipe import PlainSiftExtractor  # noqa: E402
from wildreid.embedding.training_record import held_out_spec  # noqa: E402
from wildreid.evaluation.method_protocols import image_set  # noqa: E402
from wildreid.evaluation.metrics import NoAnswerableQueryError, retrieval_metrics_from_similarity  # noqa: E402
from wildreid.matching import LocalFeatureExtractor  # noqa: E402
from wildreid.matching.image_set import ImageSet  # noqa: E402
from wildreid.matching.keypoints import ALIKED_VARIANTS, DEFAULT_ALIKED_VARIANT, DEFAULT_MAX_KEYPOINTS, LOCAL_FEATURE_CHOICES  # noqa: E402
from wildreid.matching.methods import AutoMethod, FusionMethod, GlobalMethod, OneVsManyLocalMethod  # noqa: E402
from wildreid.matching.one_vs_many import OneVsManyMatcher  # noqa: E402
from wildreid.matching.selection import known_groups, validation_pairs  # noqa: E402
from wildreid.matching.union_fusion import UnionFusion  # noqa: E402

IMAGENET = "imagenet:tf_efficientnet_lite0"
# name: (queries, gallery or None for leave-one-out, validation = a training split)
SETS = {
    "lion-val": ("lion:val", None, "lion:train"),
    # Fitting fusion leave-one-out on all 1,213 nyala training images takes longer than the rest together: 100 of
    # its individuals, as for dog.
    "nyala-test": ("nyala:test", None, "nyala[max_identities=100]:train"),
    "dog-test": ("dog[max_identities=100]:test", None, "dog[max_identities=100]:train"),
    "pig-test": ("pig:test", None, "pig:train"),
    "lion-closed": ("lion[split_strategy=closed_set]:test", "lion[split_strategy=closed_set]:train",
                    "lion[split_strategy=closed_set]:train"),
    "nyala-closed": ("nyala[split_strategy=closed_set]:test", "nyala[split_strategy=closed_set]:train",
                     "nyala[split_strategy=closed_set]:train"),
}
# --center-box adds a twin of these cropped to the photo's middle: nyala's photos are loosely cropped, and the shared
# background of a sighting's two photos is what the local matcher finds (docs: "Same-sighting matches on nyala").
BOXED = ("nyala-test", "nyala-closed")
PUBLISHED = {"lion-closed": 25.16, "nyala-closed": 36.45}  # MegaDescriptor-L-384, wildlife-tools baselines
RESULTS = Path(__file__).parent / "results" / "identification_accuracy.json"


def weights_sha256(model: str) -> str | None:
    """sha256 of the model folder's model.safetensors, recorded beside its rows: "outputs/cpu_real" names a
    folder, not the weights in it (`sha256sum outputs/cpu_real/model.safetensors` checks which)."""
    weights = Path(model) / "model.safetensors"
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def measure(scores: np.ndarray, queries, gallery) -> dict:
    """Top-1 / mAP as published; where the set records encounters, also without a query's own encounter's photos
    (`across_sightings`): the figure for matching a new sighting to known individuals."""
    labels = {"query_labels": queries.identities, "gallery_labels": None if gallery is None else gallery.identities,
              "leave_one_out": gallery is None}
    metrics = retrieval_metrics_from_similarity(scores, **labels)
    entry = {"top1": metrics["top1"], "map": metrics["map"], "n_queries": metrics["n_queries"]}
    if known_groups(queries.encounters).any():
        reference = queries if gallery is None else gallery
        try:
            strict = retrieval_metrics_from_similarity(scores, **labels, query_groups=queries.encounters,
                                                       gallery_groups=reference.encounters)
            entry["across_sightings"] = {key: strict[key] for key in ("top1", "map", "n_queries", "n_skipped")}
        except NoAnswerableQueryError:
            entry["across_sightings"] = None  # no individual of the set was seen in two encounters
    return entry


def chosen_sets(args) -> dict[str, tuple]:
    """--sets, each nyala set followed by its twin cropped to the photo's central part with --center-box."""
    sets = {}
    for name in args.sets:
        sets[name] = SETS[name]
        if args.center_box is not None and name in BOXED:
            sets[f"{name} center_box={args.center_box:g}"] = tuple(boxed(spec, args.center_box) for spec in SETS[name])
    return sets


def global_rows(name: str, specs: tuple, record: dict, models: list[str], cache: Path) -> None:
    """Top-1 / mAP of each model's embeddings (cosine) on the set, into `record["methods"]`."""
    query_spec, gallery_spec, _ = specs
    for model in models:
        label = "ImageNet lite0" if model == IMAGENET else "trained model"
        parts = []
        for spec in (query_spec, gallery_spec):
            if spec:
                dataset = load_specs([spec])
                parts.append(image_set(dataset, embeddings(model, spec, dataset, cache), None))
        queries, gallery = parts[0], parts[1] if gallery_spec else None
        if gallery is not None:
            queries = queries.part(np.isin(queries.identities, list(set(gallery.identities))))
        tick = time.perf_counter()
        scores = GlobalMethod().scores(queries, gallery)
        record["methods"][label] = {**measure(scores, queries, gallery), "seconds": round(time.perf_counter() - tick, 2),
                                    **({"model": model, "model_sha256": weights_sha256(model)} if model != IMAGENET else {}),
                                    **({"note": "trained on the gallery images"} if gallery and model != IMAGENET else {})}
        print(f"  {name:13s} {label:22s} top-1 {100 * record['methods'][label]['top1']:5.1f}  "
              f"mAP {100 * record['methods'][label]['map']:5.1f}", flush=True)


def choose_flip(model: str, validation_spec: str, dataset, cache: Path) -> tuple[bool, dict]:
    """Test-time flip for the fusion's global input where it raises the global mAP on the validation split
    (`dataset`, leave-one-out; the criterion auto uses), never looking at the queries."""
    figures = {}
    for flip in (False, True):
        images = image_set(dataset, embeddings(model, validation_spec, dataset, cache, flip), None)
        figures["flipped" if flip else "plain"] = measure(GlobalMethod().scores(images, None), images, None)
    return figures["flipped"]["map"] > figures["plain"]["map"], figures


def trained_model(specs: tuple, args) -> str | None:
    """The set's trained model: --closed-set-model on the closed-set rows (--model saw their test images in
    training), --model on the leave-one-out sets."""
    return args.closed_set_model if specs[1] is not None else args.model


def resighted(images) -> bool:
    """Whether some individual of the image set was photographed in two encounters (nyala's sightings; pig's
    individuals are each in one video, lion and dog record none): what a fit across sightings needs."""
    return (images.encounters is not None and bool(known_groups(images.encounters).any())
            and bool(validation_pairs(images.identities, images.encounters).any()))


class Split(NamedTuple):
    """One set's images as one extractor's features see them."""
    queries: ImageSet
    gallery: ImageSet | None  # None: leave-one-out
    validation: ImageSet | None  # None: nothing is fitted on these features (the plain recipe's)


def run_set(name: str, specs: tuple, args, cache: Path, extractors: dict[str, LocalFeatureExtractor]) -> dict:
    query_spec, gallery_spec, validation_spec = specs
    closed = gallery_spec is not None
    trained = trained_model(specs, args)
    fusion_model = trained if args.fusion_model == "trained" and trained and not closed else IMAGENET
    # A model that held individuals out of its training split (resplit_from) has fusion fitted on those instead.
    validation_spec = held_out_spec(fusion_model, validation_spec) or validation_spec
    datasets, features, embedded = {}, {}, {}
    for spec in dict.fromkeys(s for s in (query_spec, gallery_spec, validation_spec) if s):
        for kind, extractor in extractors.items():
            datasets[spec], features[kind, spec] = local_features(spec, cache, extractor, args.workers)
    flip, flip_validation = choose_flip(fusion_model, validation_spec, datasets[validation_spec], cache)
    for spec, dataset in datasets.items():
        embedded[spec] = embeddings(fusion_model, spec, dataset, cache, flip)

    def split(kind: str, config: dict, validation: bool = True) -> Split:
        def images(spec: str):
            return image_set(datasets[spec], embedded[spec], features[kind, spec], config)

        queries, gallery = images(query_spec), images(gallery_spec) if closed else None
        if closed:  # closed set: only queries whose individual is in the gallery
            queries = queries.part(np.isin(queries.identities, list(set(gallery.identities))))
        return Split(queries, gallery, images(validation_spec) if validation else None)

    splits = {kind: split(kind, extractor.config) for kind, extractor in extractors.items()}
    for other in splits.values():
        same_images(other, splits["sift"])
    record: dict = {"queries": query_spec, "gallery": gallery_spec, "validation": validation_spec,
                    "fusion_global_model": fusion_model, "fusion_global_model_sha256": weights_sha256(fusion_model),
                    "fusion_global_flip_test": flip, "flip_test_validation": flip_validation,
                    "local_features": extractors["sift"].config, "methods": {}}
    if "aliked" in extractors:
        record["aliked_local_features"] = extractors["aliked"].config
    center_box = dict(parse_spec(query_spec).params).get("center_box")
    if center_box is not None:
        record["center_box"] = float(center_box)
    queries, gallery, validation = splits["sift"]
    # Fitted across sightings, fusion does not learn to trust the other photo of the query's own sighting (found by
    # its background, README "Same-sighting matches on nyala"); the metrics stay as published.
    across = bool(args.fit_across_sightings and resighted(validation))
    record["fusion_fit_across_sightings"] = across
    record["n_queries"], record["n_gallery"] = len(queries), len(gallery) if closed else len(queries)
    record["fusion_global_input"] = measure(GlobalMethod().scores(queries, gallery), queries, gallery)

    def timed(label: str, method, images: Split, *, fit: bool = False) -> np.ndarray:
        entry = {}
        if fit:
            tick = time.perf_counter()
            entry["fit"] = method.fit(images.validation, across)
            entry["fit_seconds"] = round(time.perf_counter() - tick, 1)
        tick = time.perf_counter()
        scores = method.scores(images.queries, images.gallery)
        entry["seconds"] = round(time.perf_counter() - tick, 1)
        entry.update(measure(scores, images.queries, images.gallery))
        record["methods"][label] = entry
        print(f"  {name:13s} {label:22s} top-1 {100 * entry['top1']:5.1f}  mAP {100 * entry['map']:5.1f}  "
              f"{entry['seconds']:7.1f} s", flush=True)
        return scores

    def one_vs_many() -> OneVsManyLocalMethod:
        return OneVsManyLocalMethod(OneVsManyMatcher(shortlist=args.shortlist), num_workers=args.workers)

    def fusion() -> FusionMethod:
        return FusionMethod(UnionFusion(shortlist=args.shortlist, num_workers=args.workers))

    global_rows(name, specs, record, [IMAGENET] + ([trained] if trained else []), cache)
    sift_local = timed("one-vs-many local", one_vs_many(), splits["sift"])
    if not args.skip_pairwise:
        pairwise(record, queries, gallery, sift_local, args)
        plain = PlainSiftExtractor()
        for spec in (query_spec, gallery_spec):
            if spec:
                features["plain", spec] = local_features(spec, cache, plain, args.workers)[1]
        plain_images = same_images(split("plain", plain.config, validation=False), splits["sift"])
        plain_recipe(record, plain_images.queries, plain_images.gallery, args)
    fusions = {"sift": fusion()}
    timed("union fusion", fusions["sift"], splits["sift"], fit=True)
    auto = AutoMethod(fusions["sift"].fusion)
    auto.choose(record["methods"]["union fusion"]["fit"])  # the same validation figures: fitted once
    timed("auto", auto, splits["sift"])
    record["methods"]["auto"]["chosen"] = auto.choice
    if "aliked" in extractors:
        timed("one-vs-many ALIKED", one_vs_many(), splits["aliked"])
        fusions["aliked"] = fusion()
        timed("union fusion ALIKED", fusions["aliked"], splits["aliked"], fit=True)
        fits = {"sift": record["methods"]["union fusion"]["fit"], "aliked": record["methods"]["union fusion ALIKED"]["fit"]}
        chosen, validation_map = choose_across_extractors(fits)
        kind = "aliked" if chosen.endswith(EXTRACTOR_LABELS["aliked"]) else "sift"
        auto = AutoMethod(fusions[kind].fusion, choice=chosen.split()[0])
        timed("auto (SIFT or ALIKED)", auto, splits[kind])
        record["methods"]["auto (SIFT or ALIKED)"].update(chosen=chosen, validation_map=validation_map)
    if name in PUBLISHED:
        record["published_megadescriptor_l384_top1"] = PUBLISHED[name]
    return record


def same_images(images: Split, sift: Split) -> Split:
    """`images` after checking they are SIFT's images row for row: every column must score the same queries."""
    for mine, reference in zip(images, sift):
        if mine is not None and not np.array_equal(mine.identities, reference.identities):
            raise RuntimeError("an image readable by one extractor was not by another: the columns would score "
                               "different queries")
    return images


def write_results(output: Path, sets: dict, command: str, seconds: float | None) -> None:
    """`command` and `seconds` are this run's; where the file's sets were measured by several runs (sets run
    separately are merged), the file's command is each of theirs, joined to rerun them in turn, with no one time."""
    commands = list(dict.fromkeys(record.get("command", command) for record in sets.values())) or [command]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "kind": "experiment", "experiment": "identification_accuracy", "command": " && ".join(commands),
        "wall_time_s": seconds if len(commands) == 1 else None,
        "hardware_label": f"{os.cpu_count()} CPU cores, 1 thread per process", "tables": tables(sets), "sets": sets,
    }, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the trained model folder (e.g. outputs/cpu_real); ImageNet lite0 only when absent")
    parser.add_argument("--closed-set-model",
                        help="model trained on the closed-set train parts (outputs/cpu_closed_set) for the closed-set rows")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--shortlist", type=int, default=20, help="B: candidates per query from each shortlist")
    parser.add_argument("--workers", type=int, default=1, help="processes for local matching")
    parser.add_argument("--skip-pairwise", action="store_true",
                        help="do not rerun pairwise SIFT nor the plain recipe (the slowest methods; neither depends on "
                             "the model): a set's earlier rows of them stay, marked with the commit that measured them")
    parser.add_argument("--pairwise-queries", type=int, default=150,
                        help="pairwise SIFT and the plain recipe on a seeded sample of this many queries where a set "
                             "has more (0: all)")
    parser.add_argument("--max-keypoints", type=int, default=DEFAULT_MAX_KEYPOINTS,
                        help="keypoints per image for one-vs-many, fusion and auto, SIFT and ALIKED alike "
                             "(bench/keypoint_budget.py measures the budget on the training splits); pairwise SIFT, "
                             "the baseline, needs the default")
    parser.add_argument("--local-features", nargs="+", choices=LOCAL_FEATURE_CHOICES, default=list(LOCAL_FEATURE_CHOICES),
                        help="extractors of the local columns: sift (the main table's) and aliked, which adds "
                             "one-vs-many and fusion with ALIKED and auto choosing among both extractors")
    parser.add_argument("--aliked-variant", choices=ALIKED_VARIANTS, default=DEFAULT_ALIKED_VARIANT,
                        help="ALIKED weights (shipped): n16, n16rot or t16 (about twice as fast)")
    parser.add_argument("--center-box", type=float,
                        help="also score nyala-test and nyala-closed (when in --sets) on the central fraction of each "
                             "photo, e.g. 0.4 (bench/encounter_matches.py chose it on nyala's training split)")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/wildreid/bench"))
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--fusion-model", choices=("imagenet", "trained"), default="trained",
                        help="global input of fusion and auto on the leave-one-out sets (trained: --model when given)")
    parser.add_argument("--fit-across-sightings", action="store_true",
                        help="fit fusion and auto without same-encounter pairs on sets whose training split has an "
                             "individual seen in two encounters (nyala); the metrics stay as published")
    parser.add_argument("--keep-trained-rows", action="store_true",
                        help="without the set's trained model (--closed-set-model on the closed-set rows, where fusion "
                             "does not use it): its earlier trained row stays, marked with the commit that measured it")
    parser.add_argument("--global-only", action="store_true",
                        help="only (re)compute the global rows (e.g. a new --model) of sets already in --output")
    parser.add_argument("--tables-only", action="store_true", help="only rebuild the tables of --output from its sets")
    args = parser.parse_args()
    output = Path(args.output)
    earlier_run = json.loads(output.read_text()) if output.is_file() else {}
    previous = earlier_run.get("sets", {})
    if args.max_keypoints != DEFAULT_MAX_KEYPOINTS and not args.skip_pairwise:
        parser.error(f"pairwise SIFT is the plain-SIFT baseline ({DEFAULT_MAX_KEYPOINTS} keypoints): with --max-keypoints "
                     f"{args.max_keypoints} give --skip-pairwise")
    if "sift" not in args.local_features:
        parser.error("--local-features needs sift: the main table, auto and the claims are SIFT's; aliked adds to them")
    if args.center_box is not None and not 0 < args.center_box < 1:
        parser.error(f"--center-box is a fraction of the photo in (0, 1), got {args.center_box}")
    sets = chosen_sets(args)
    if args.keep_trained_rows:
        for name, specs in sets.items():
            if trained_model(specs, args) or specs[1] is None:
                parser.error(f"--keep-trained-rows keeps only closed-set rows whose model is not given; {name} "
                             "is leave-one-out (its fusion uses the trained model) or has its model given")
    command = "python bench/identification_accuracy.py" + (f" --model {args.model}" if args.model else "") + (
        f" --closed-set-model {args.closed_set_model}" if args.closed_set_model else "") + (
        f" --max-keypoints {args.max_keypoints} --skip-pairwise --output {args.output}"
        if args.max_keypoints != DEFAULT_MAX_KEYPOINTS else "") + (
        " --fit-across-sightings" if args.fit_across_sightings else "") + (
        " --keep-trained-rows" if args.keep_trained_rows else "") + (
        " --local-features sift" if args.local_features == ["sift"] else "") + (
        f" --aliked-variant {args.aliked_variant}" if args.aliked_variant != DEFAULT_ALIKED_VARIANT else "") + (
        f" --center-box {args.center_box:g}" if args.center_box is not None else "")
    if args.tables_only:  # the sets, and the command and time that measured them, stay as they were
        write_results(output, previous, earlier_run.get("command", command), earlier_run.get("wall_time_s"))
        print_table(previous)
        return
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    extractors = {"sift": LocalFeatureExtractor(max_keypoints=args.max_keypoints)}
    if "aliked" in args.local_features:  # its weights checked now, not after the first sets
        extractors["aliked"] = LocalFeatureExtractor("aliked", args.max_keypoints, variant=args.aliked_variant).load()
    started = time.perf_counter()
    for name, specs in sets.items():
        print(f"[{name}]", flush=True)
        # Sets of earlier runs stay in the file (each records its own commit), so sets can be run separately.
        if args.global_only:
            trained = trained_model(specs, args)
            global_rows(name, specs, previous[name], [IMAGENET] + ([trained] if trained else []), cache)
            previous[name]["global_rows_version"] = measured_by()
        else:
            # The exact invocation too: sets run by separate processes are merged into one file.
            record = {**run_set(name, specs, args, cache, extractors), **measured_by(),
                      "command": " ".join(["python bench/identification_accuracy.py", *sys.argv[1:]])}
            # Rows that do not depend on what this run measured may come from the earlier run of the set.
            for label, keep in (("SIFT pairwise", args.skip_pairwise), ("plain recipe", args.skip_pairwise),
                                ("trained model", args.keep_trained_rows)):
                earlier = previous.get(name, {}).get("methods", {}).get(label)
                if keep and earlier:
                    record["methods"][label] = {**earlier, "carried_from_commit": earlier.get(
                        "carried_from_commit", previous[name]["git_commit"])}
            previous[name] = record
        write_results(output, previous, command, None if args.global_only else time.perf_counter() - started)
    print_table(previous)
    print(f"wrote {output} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
