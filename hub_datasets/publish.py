"""Publish built-in species as configs of one Hub dataset repo, or as the same layout in a local folder.

    python -m hub_datasets.publish --species lion nyala [--data_dir DIR] (--repo org/wildreid | --output_dir DIR)

For each species: build it, split it into a `DatasetDict` by its `split` column, embed the image bytes
into parquet shards `<species>/<split>-NNNNN-of-NNNNN.parquet`, and merge the dataset card
(`README.md`): YAML `configs:` / `dataset_info:` for the species, its licence, homepage, citation and
statistics (under a `wildreid:` key), and a body rendered from all configs. Configs not being
published are left as they are, so re-publishing one species keeps the others. `load_dataset(repo_or_dir,
"lion")` reads either result (the local folder offline).

A local publish writes each config into a hidden staging folder (`load_dataset` skips hidden paths) and
moves it into place only once every shard and the card are complete, so an interrupted publish leaves the
previous state readable and no partial split. A lock file makes a second concurrent publish into the same
folder fail at once; a rerun after an interruption removes the leftovers and publishes again.
"""
from __future__ import annotations

import argparse
import math
import logging
import os
import shutil
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.table import embed_table_storage
from datasets.utils.metadata import MetadataConfigs
from filelock import FileLock, Timeout
from huggingface_hub import DatasetCard, HfApi, hf_hub_download

from .info import SourceInfo
from .schema import FEATURES, FIELD_DOCS
from .species import SPECIES_BUILDERS, build_species
from .synthetic import INFO as SYNTHETIC_INFO
from .synthetic import build_synthetic

PUBLISHABLE = (*SPECIES_BUILDERS, "synthetic")
MAX_SHARD_SIZE = 500 * 1024 * 1024  # bytes of image files per parquet shard, as push_to_hub's default
SPLIT_ORDER = ("train", "val", "validation", "test")
CARD_KEY = "wildreid"
LOCK_FILE = ".publish.lock"
STAGING_PREFIX = ".staging-"  # hidden: datasets' file resolution ignores it
REPLACED_PREFIX = ".replaced-"

logger = logging.getLogger(__name__)


def source_info(name: str) -> SourceInfo:
    """Card metadata of a publishable source."""
    if name == "synthetic":
        return SYNTHETIC_INFO
    if name not in SPECIES_BUILDERS:
        raise ValueError(f"cannot publish {name!r}; choose from {list(PUBLISHABLE)}")
    return SPECIES_BUILDERS[name].info


def build_config(name: str, data_dir: str | os.PathLike | None = None) -> DatasetDict:
    """Build a publishable source and split it by its `split` column (train, val, test first)."""
    dataset = build_synthetic() if name == "synthetic" else build_species(name, data_dir)
    labels = list(dataset["split"])
    if None in labels:
        raise ValueError(f"{name}: {labels.count(None)} rows have no split; every published row needs one")
    order = sorted(set(labels), key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    return DatasetDict({split: dataset.select([i for i, label in enumerate(labels) if label == split]) for split in order})


def config_statistics(splits: DatasetDict) -> dict[str, Any]:
    """Images, individuals, images per individual (min/median/max) and images per split."""
    counts = Counter(identity for split in splits.values() for identity in split["identity"])
    per_individual = sorted(counts.values())
    median = statistics.median(per_individual)
    return {
        "images": sum(per_individual),
        "individuals": len(per_individual),
        "images_per_individual": {
            "min": per_individual[0],
            "median": int(median) if float(median).is_integer() else float(median),
            "max": per_individual[-1],
        },
        "splits": {name: len(split) for name, split in splits.items()},
    }


def _image_bytes(dataset: Dataset) -> int:
    total = 0
    for image in dataset.data.column("image").to_pylist():
        total += len(image["bytes"]) if image["bytes"] is not None else os.path.getsize(image["path"])
    return total


def shard_counts(splits: DatasetDict, max_shard_size: int = MAX_SHARD_SIZE) -> dict[str, int]:
    """Parquet shards per split so that each holds at most about `max_shard_size` bytes of images
    (and at least one row)."""
    return {
        name: min(len(split), max(1, math.ceil(_image_bytes(split) / max_shard_size))) for name, split in splits.items()
    }


def _card_metadata(info: SourceInfo, stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "pretty_name": info.pretty_name,
        "description": info.description,
        "homepage": info.homepage,
        "license": info.license,
        "license_details": info.license_details,
        "citation": info.citation,
        "default_split": info.default_split,
        "statistics": stats,
    }


def _table_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_card_body(configs: dict[str, dict[str, Any]], location: str) -> str:
    """Markdown body of the dataset card from the per-config `wildreid:` metadata."""
    first = next(iter(configs), "lion")
    lines = [
        "",
        "# wildreid animal re-identification datasets",
        "",
        "One config per species, all in one schema, for training and evaluating re-identification "
        "(which individual is this?) models. Load a species with:",
        "",
        "```python",
        "from datasets import load_dataset",
        f'dataset = load_dataset("{location}", "{first}")',
        "```",
        "",
        "## Configs",
        "",
        "| config | source | images | individuals | images per individual (min / median / max) | splits | licence |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, meta in configs.items():
        stats = meta["statistics"]
        per = stats["images_per_individual"]
        splits = ", ".join(f"{split} {count}" for split, count in stats["splits"].items())
        lines.append(
            f"| {name} | [{_table_cell(meta['pretty_name'])}]({meta['homepage']}) | {stats['images']} | "
            f"{stats['individuals']} | {per['min']} / {per['median']} / {per['max']} | {splits} | {meta['license']} |"
        )
    lines += ["", "## Fields", "", "| field | type | meaning |", "|---|---|---|"]
    for field, feature in FEATURES.items():
        lines.append(f"| `{field}` | {_table_cell(repr(feature))} | {_table_cell(FIELD_DOCS[field])} |")
    for name, meta in configs.items():
        lines += [
            "",
            f"## {name}",
            "",
            meta["description"],
            "",
            f"- Homepage: {meta['homepage']}",
            f"- Licence: `{meta['license']}`: {meta['license_details']}",
            f"- Split: {meta['default_split']}",
        ]
        if meta["citation"]:
            lines += ["", "```bibtex", meta["citation"], "```"]
    return "\n".join(lines) + "\n"


def update_card(card: DatasetCard, name: str, info: SourceInfo, stats: dict[str, Any], location: str) -> DatasetCard:
    """Merge one config's metadata into `card` (other configs untouched) and re-render its body."""
    configs = dict(card.data.get(CARD_KEY) or {})
    configs[name] = _card_metadata(info, stats)
    configs = dict(sorted(configs.items()))
    card.data[CARD_KEY] = configs
    licences = {meta["license"] for meta in configs.values()}
    card.data["license"] = licences.pop() if len(licences) == 1 else "other"
    card.data["pretty_name"] = "wildreid animal re-identification"
    card.data["task_categories"] = ["image-feature-extraction"]
    card.data["tags"] = ["animal-re-identification", "wildlife", "biology"]
    card.text = render_card_body(configs, location)
    return card


def _embedded(shard: Dataset) -> Dataset:
    return shard.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True).with_format(None)


def write_local(
    splits: DatasetDict, name: str, output_dir: str | os.PathLike, info: SourceInfo, num_shards: dict[str, int]
) -> Path:
    """Write `<output_dir>/<name>/<split>-NNNNN-of-NNNNN.parquet` (images embedded) and merge README.md.

    Everything is written under a hidden staging folder first and switched in by renames at the end (see
    the module docstring); raises `RuntimeError` when another publish holds the folder's lock.
    """
    output = Path(output_dir).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise ValueError(f"output folder {output} is a file")
    output.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(output / LOCK_FILE), timeout=0):
            return _write_local_locked(splits, name, output, info, num_shards)
    except Timeout:
        raise RuntimeError(f"{output}: another publish is writing to this folder (lock {output / LOCK_FILE} is held); "
                           "wait for it to finish") from None


def _write_local_locked(splits: DatasetDict, name: str, output: Path, info: SourceInfo, num_shards: dict[str, int]) -> Path:
    staging, replaced = output / f"{STAGING_PREFIX}{name}", output / f"{REPLACED_PREFIX}{name}"
    for leftover in (staging, replaced):  # an interrupted publish; we hold the lock, so nobody is writing them
        if leftover.exists():
            logger.warning("removing %s, left by an interrupted publish", leftover)
            shutil.rmtree(leftover)
    folder = staging / name
    folder.mkdir(parents=True)
    split_dict, download_size = SplitDict(), 0
    for split, dataset in splits.items():
        shards = num_shards[split]
        num_bytes = 0
        for index in range(shards):
            path = folder / f"{split}-{index:05d}-of-{shards:05d}.parquet"
            shard = _embedded(dataset.shard(num_shards=shards, index=index, contiguous=True))
            shard.to_parquet(str(path))
            num_bytes += shard.data.nbytes
            download_size += path.stat().st_size
        split_dict.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=len(dataset)))

    readme = output / "README.md"
    card = DatasetCard(readme.read_text(encoding="utf-8")) if readme.is_file() else DatasetCard("---\n\n---\n")
    MetadataConfigs(
        {name: {"data_files": [{"split": split, "path": f"{name}/{split}-*"} for split in splits]}}
    ).to_dataset_card_data(card.data)
    dataset_size = sum(s.num_bytes for s in split_dict.values())
    DatasetInfosDict(
        {
            name: DatasetInfo(
                features=FEATURES,
                splits=split_dict,
                download_size=download_size,
                dataset_size=dataset_size,
                config_name=name,
            )
        }
    ).to_dataset_card_data(card.data)
    update_card(card, name, info, config_statistics(splits), str(output))
    card.save(staging / "README.md")

    # Switch in: the old shards of this config (stale ones included) leave, the complete new ones arrive.
    if (output / name).exists():
        os.rename(output / name, replaced)
    os.rename(folder, output / name)
    os.replace(staging / "README.md", readme)
    shutil.rmtree(staging)
    if replaced.exists():
        shutil.rmtree(replaced)
    return output


def push_hub(
    splits: DatasetDict, name: str, repo_id: str, info: SourceInfo, num_shards: dict[str, int], token: str | None = None
) -> None:
    """`push_to_hub(repo_id, config_name=name)` (embeds images), then merge the card and upload it."""
    splits.push_to_hub(repo_id, config_name=name, token=token, num_shards=num_shards, commit_message=f"Publish {name}")
    # push_to_hub has just written the configs/dataset_info YAML of this config into README.md.
    card = DatasetCard(Path(hf_hub_download(repo_id, "README.md", repo_type="dataset", token=token)).read_text(encoding="utf-8"))
    update_card(card, name, info, config_statistics(splits), repo_id)
    HfApi(token=token).upload_file(
        path_or_fileobj=str(card).encode("utf-8"),
        path_in_repo="README.md",
        repo_id=repo_id,
        repo_type="dataset",
        commit_message=f"Update dataset card for {name}",
    )


def publish(
    species: list[str],
    data_dir: str | os.PathLike | None = None,
    repo: str | None = None,
    output_dir: str | os.PathLike | None = None,
    token: str | None = None,
    max_shard_size: int = MAX_SHARD_SIZE,
) -> dict[str, dict[str, Any]]:
    """Build and publish each species to `repo` (Hub) or `output_dir` (local); returns their statistics."""
    if (repo is None) == (output_dir is None):
        raise ValueError("give exactly one of repo (Hub repo id) or output_dir (local folder)")
    unknown = [name for name in species if name not in PUBLISHABLE]
    if unknown or not species:
        raise ValueError(f"cannot publish {unknown or 'nothing'}; choose from {list(PUBLISHABLE)}")
    published = {}
    for name in species:
        info = source_info(name)
        splits = build_config(name, data_dir)
        num_shards = shard_counts(splits, max_shard_size)
        if repo is not None:
            push_hub(splits, name, repo, info, num_shards, token)
        else:
            write_local(splits, name, output_dir, info, num_shards)
        published[name] = config_statistics(splits)
    return published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub_datasets.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--species", nargs="+", required=True, choices=PUBLISHABLE, help="configs to (re)publish")
    parser.add_argument("--data_dir", default=None, help="raw data root (default: $WILDREID_DATA or ../shared/data)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--repo", help="Hub dataset repo id, e.g. org/wildreid")
    target.add_argument("--output_dir", help="local folder that load_dataset(folder, species) reads")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one / $HF_TOKEN)")
    parser.add_argument("--max_shard_size", type=int, default=MAX_SHARD_SIZE, help="bytes of images per parquet shard")
    args = parser.parse_args(argv)
    if args.max_shard_size < 1:
        parser.error(f"--max_shard_size must be >= 1 byte, got {args.max_shard_size}")
    try:
        published = publish(args.species, args.data_dir, args.repo, args.output_dir, args.token, args.max_shard_size)
    except (ValueError, RuntimeError, FileNotFoundError) as error:  # bad data or folder: the message says which
        parser.exit(1, f"error: {error}\n")
    for name, stats in published.items():
        per = stats["images_per_individual"]
        print(
            f"{name}: {stats['images']} images, {stats['individuals']} individuals "
            f"({per['min']}/{per['median']}/{per['max']} per individual), splits {stats['splits']} "
            f"-> {args.repo or args.output_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
