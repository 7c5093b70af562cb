"""`train.py` flags: `--config FILE` plus one flag per `TrainingConfig` field, named as the field (transformers'
`HfArgumentParser`); defaults, then the YAML file, then the flags."""

from __future__ import annotations

import argparse
import dataclasses
import types
from dataclasses import fields

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .augment import AugmentationConfig
from .config import TrainingConfig, load_config_file


def _none_or(kind):
    def parse(text: str):
        return None if str(text).lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


class TrainingArgumentParser(HfArgumentParser):
    """HfArgumentParser's flags (bools as `--flag`, `--flag false` or `--no_flag`), plus three spellings it has no
    field type for: `--augmentation KEY=VALUE ...` for the nested augmentation settings, `--LIST` with no value
    to clear a list (e.g. `--val_datasets` to train without validation), and `none` for optional numbers and
    paths (`--embedding_dim none`: the backbone's width)."""

    def __init__(self):
        super().__init__(TrainingConfig, prog="train.py",
                         description="Train a wildreid model (run with `accelerate launch train.py ...`).")
        self.add_argument("--config", help="YAML file of training options; flags override it")

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        flag, kinds = f"--{field.name}", [kind for kind in getattr(field.type, "__args__", ()) if kind is not type(None)]
        if field.name == "augmentation":
            parser.add_argument(flag, nargs="+", metavar="KEY=VALUE", default=None,
                                help=f"augmentation overrides, keys: {', '.join(f.name for f in fields(AugmentationConfig))}")
        elif field.type in (list[str], list[float]):
            parser.add_argument(flag, nargs="*", type=field.type.__args__[0], default=field.default_factory())
        elif isinstance(field.type, types.UnionType) and len(kinds) == 1 and kinds[0] is not bool:
            parser.add_argument(flag, type=_none_or(kinds[0]), default=field.default)
        else:
            HfArgumentParser._parse_dataclass_field(parser, field)


def build_argument_parser() -> TrainingArgumentParser:
    return TrainingArgumentParser()


def config_from_args(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults, then the `--config` YAML, then command-line flags."""
    parser = build_argument_parser()
    config_file = parser.parse_known_args(argv)[0].config
    file_values = load_config_file(config_file) if config_file else {}
    TrainingConfig.from_dict(file_values)  # names unknown keys before any flag is read
    parser.set_defaults(**{key: value for key, value in file_values.items() if key != "augmentation"})
    values = vars(parser.parse_args(argv))
    values.pop("config")
    augmentation = {**(file_values.get("augmentation") or {}), **augmentation_overrides(values.pop("augmentation"))}
    return TrainingConfig.from_dict({**values, "augmentation": augmentation})


def augmentation_overrides(pairs: list[str] | None) -> dict[str, float | bool]:
    """`--augmentation KEY=VALUE ...` as a dict (keys checked against `AugmentationConfig`'s fields)."""
    known = [field.name for field in fields(AugmentationConfig)]
    overrides: dict[str, float | bool] = {}
    for pair in pairs or []:
        key, sign, text = pair.partition("=")
        if key not in known or not sign:
            raise ValueError(f"--augmentation {pair!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        try:
            overrides[key] = string_to_bool(text) if text.lower() in ("true", "false") else float(text)
        except ValueError:
            raise ValueError(f"--augmentation {pair!r}: {text!r} is not a number") from None
    return overrides
