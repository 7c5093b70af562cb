"""`train.py` flags: `--config FILE` plus one flag per `TrainingConfig` field, named as the field;
defaults, then the YAML file, then the flags."""

from __future__ import annotations

from dataclasses import fields

from .augment import AugmentationConfig
from .config import TrainingConfig, load_config_file


def _parse_bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _optional(kind):
    def parse(text: str):
        return None if str(text).lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def build_argument_parser():
    """`train.py` flags: `--config FILE` plus one flag per :class:`TrainingConfig` field, named as the field."""
    import argparse
    import typing

    parser = argparse.ArgumentParser(
        prog="train.py", description="Train a wildreid model (run with `accelerate launch train.py ...`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of training options; flags override it")
    hints = typing.get_type_hints(TrainingConfig)
    for item in fields(TrainingConfig):
        hint, flag = hints[item.name], f"--{item.name}"
        origin_args = typing.get_args(hint)
        if item.name == "augmentation":
            parser.add_argument(flag, nargs="+", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                                help=f"augmentation overrides, keys: {', '.join(f.name for f in fields(AugmentationConfig))}")
        elif hint == list[str]:  # `--val_datasets` with no value clears the list
            parser.add_argument(flag, nargs="*", default=argparse.SUPPRESS)
        elif hint is bool:
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=argparse.SUPPRESS)
        else:
            kind = next((a for a in origin_args if a is not type(None)), hint) if origin_args else hint
            parser.add_argument(flag, type=_optional(kind) if type(None) in origin_args else kind, default=argparse.SUPPRESS)
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults, then the `--config` YAML, then command-line flags."""
    args = vars(build_argument_parser().parse_args(argv))
    values = load_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    augmentation = args.pop("augmentation", None)
    values.update(args)
    if augmentation:
        overrides = values.get("augmentation") or {}
        for pair in augmentation:
            key, _, text = pair.partition("=")
            overrides[key] = _parse_bool(text) if text.lower() in ("true", "false") else float(text)
        values["augmentation"] = overrides
    return TrainingConfig.from_dict(values)
