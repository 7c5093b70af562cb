"""Convert a MiewID checkpoint into a wildreid model that produces the same embeddings.

MiewID (WildMeOrg/wbia-plugin-miew-id, `MiewIdNet`; Hub remote code of `conservationxlabs/miewid-msv2`
and `-msv3`) computes ``bn(GeM(backbone.forward_features(x)))`` with a timm backbone whose classifier and
global pool are replaced by identities. Its state dict therefore holds:

- ``backbone.*``   the timm model's own tensors (no ``classifier``/``global_pool`` entries);
- ``pooling.p``    GeM exponent, shape [1] (eps is the constant 1e-6);
- ``bn.*``         BatchNorm1d over the pooled vector: weight, bias, running_mean, running_var,
                   num_batches_tracked. Its output is MiewID's embedding;
- ``final.*``      identity head, only in checkpoints that kept it (Hub msv2/msv3: ``nn.Linear`` with 10
                   outputs, ``loss_module="softmax"``; ArcFace variants: ``final.kernel`` or
                   ``final.wmetric_classify.weight``); never used to compute embeddings;
- ``fc.*``         the optional ``use_fc`` projection, whose output MiewID computes and discards.

Training runs save either that dict (``model_best.bin``), a resumable checkpoint wrapping it under
``model_state_dict``, or a stochastic-weight-averaging model (``module.`` prefix plus ``n_averaged``).
All of these are unwrapped here. The mapping onto [`WildReIDModel`] is ``backbone.* -> backbone.*``,
``pooling.p -> pooling.p``, ``bn.* -> neck.norm.*`` with no projection, so ``pooler_output`` equals
MiewID's vector and ``embeddings`` is its L2 normalisation.

The checkpoint reading (files, Hub ids, wrappers; never unpickled) is `miewid_checkpoint`.

Usage::

    python -m modeling_wildreid.convert_miewid --checkpoint model.safetensors --output wildreid-miewid
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch

from .configuration_wildreid import IMAGENET_MEAN, IMAGENET_STD, WildReIDConfig
from .miewid_checkpoint import MAX_LISTED, MiewIDConversionError, listing, load_miewid_checkpoint
from .modeling_wildreid import WildReIDModel

MIEWID_IMAGE_SIZE = 440
MIEWID_GEM_EPS = 1e-6
MIEWID_BACKBONE = "efficientnetv2_rw_m"

# Architectures searched when the backbone is not named. MiewID's code supports EfficientNet-style
# backbones through `forward_features` + GeM; its ViT/Swin paths take a CLS token or permute NHWC maps,
# which the wildreid neck does not reproduce, so they are not candidates.
CANDIDATE_BACKBONES = (
    MIEWID_BACKBONE,
    "efficientnetv2_rw_t", "efficientnetv2_rw_s",
    "efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l",
    "tf_efficientnetv2_s", "tf_efficientnetv2_m", "tf_efficientnetv2_l",
    "tf_efficientnetv2_b0", "tf_efficientnetv2_b1", "tf_efficientnetv2_b2", "tf_efficientnetv2_b3",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5",
    "tf_efficientnet_b0", "tf_efficientnet_b1", "tf_efficientnet_b2", "tf_efficientnet_b3",
    "tf_efficientnet_b4", "tf_efficientnet_b5", "tf_efficientnet_b6", "tf_efficientnet_b7",
    "efficientnet_lite0", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2",
    "tf_efficientnet_lite3", "tf_efficientnet_lite4",
)

HEAD_REASON = "dropped: identity head (not needed for embeddings)"
FC_REASON = "dropped: use_fc projection (MiewID computes and discards it; the embedding is the BN output)"
SWA_REASON = "dropped: stochastic weight averaging counter (AveragedModel.n_averaged)"
UNKNOWN_REASON = "dropped: unknown key (--allow-unknown)"
# GeM installed as timm's `global_pool` instead of a separate `pooling` module (seen in re-exports).
GLOBAL_POOL_P = "backbone.global_pool.p"
BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ----------------------------------------------------------------------------------------------- mapping


@functools.lru_cache(maxsize=None)
def backbone_signature(name: str) -> tuple[tuple[tuple[str, tuple[int, ...]], ...], int]:
    """(key, shape) pairs of timm model ``name`` as MiewID holds it (no classifier, no pool), and its width.

    Built on the meta device: no memory for weights and no download.
    """
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()), int(model.num_features)


def _check_feature_map(name: str, image_size: int, width: int) -> None:
    """GeM pools a (B, C, H, W) map; refuse backbones whose `forward_features` returns anything else."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
        try:
            features = model.forward_features(torch.empty(1, 3, image_size, image_size))
        except Exception as error:  # timm raises assorted errors for unsupported input sizes
            raise MiewIDConversionError(
                f"backbone {name!r}: forward_features fails on a {image_size}x{image_size} input ({error})"
            ) from None
    if features.ndim != 4 or features.shape[1] != width:
        raise MiewIDConversionError(
            f"backbone {name!r}: forward_features returns shape {tuple(features.shape)}, not (B, {width}, H, W); "
            "the wildreid GeM neck only reproduces MiewID's convolutional path"
        )


def _signature_problems(given: Mapping[str, tuple[int, ...]], name: str) -> list[str]:
    expected = dict(backbone_signature(name)[0])
    problems = [f"backbone.{k}: missing from checkpoint (expected {expected[k]})" for k in expected if k not in given]
    problems += [f"backbone.{k}: not part of timm {name!r}" for k in given if k not in expected]
    problems += [
        f"backbone.{k}: checkpoint {given[k]} vs {name!r} {expected[k]}"
        for k in given
        if k in expected and tuple(given[k]) != tuple(expected[k])
    ]
    return problems


def infer_backbone(backbone_shapes: Mapping[str, Sequence[int]]) -> str:
    """The timm architecture whose tensors (names and shapes) are exactly ``backbone_shapes``.

    Keys are relative to the backbone (``conv_stem.weight``...). Architectures that differ only in padding
    or BatchNorm eps (``efficientnet_b0`` vs ``tf_efficientnet_b0``) have identical tensors; such a tie is
    refused rather than guessed, since the two produce different embeddings.
    """
    given = {k: tuple(v) for k, v in backbone_shapes.items()}
    signature = frozenset(given.items())

    def fits(name: str) -> bool:
        return frozenset(backbone_signature(name)[0]) == signature

    # Among the candidates only TF-ported twins (`x` / `tf_x`) share tensors (checked against timm 1.0), so
    # the search stops at the first fit plus its twin instead of building every architecture.
    match = next((name for name in CANDIDATE_BACKBONES if fits(name)), None)
    if match is not None:
        twin = match[len("tf_"):] if match.startswith("tf_") else "tf_" + match
        if twin not in CANDIDATE_BACKBONES or not fits(twin):
            return match
        raise MiewIDConversionError(
            f"the backbone tensors fit several timm architectures that differ in padding or BatchNorm eps: "
            f"{', '.join(sorted((match, twin)))}. Pass --backbone with the one the checkpoint was trained with."
        )
    closest = min(CANDIDATE_BACKBONES, key=lambda name: len(_signature_problems(given, name)))
    problems = _signature_problems(given, closest)
    raise MiewIDConversionError(
        f"the {len(given)} backbone tensors match none of the {len(CANDIDATE_BACKBONES)} EfficientNet "
        f"architectures searched; pass --backbone <timm name>. Closest: {closest!r}, "
        f"{len(problems)} differences:{listing(problems)}"
    )


def plan_conversion(
    state_dict: Mapping[str, torch.Tensor],
    backbone: str | None = None,
    image_size: int = MIEWID_IMAGE_SIZE,
    allow_unknown: bool = False,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Map MiewID keys onto `WildReIDModel` keys and check every name and shape, without building a model.

    Returns the wildreid state dict and a report (``backbone``, ``backbone_inferred``, ``gem_p``,
    ``dropped_keys``: key -> reason). Every problem (missing, unknown, wrong shape) is collected and raised
    together in one :class:`MiewIDConversionError` naming the keys.
    """
    if image_size < 32:
        raise MiewIDConversionError(f"image_size must be at least 32 pixels, got {image_size}")
    mapped: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    unknown: list[str] = []
    backbone_tensors: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key == GLOBAL_POOL_P or key == "pooling.p":
            if "pooling.p" in mapped:
                raise MiewIDConversionError(f"checkpoint holds two GeM exponents: pooling.p and {GLOBAL_POOL_P}")
            mapped["pooling.p"] = tensor
        elif key.startswith("backbone."):
            backbone_tensors[key[len("backbone."):]] = tensor
        elif key.startswith("bn.") and key[len("bn."):] in BN_TENSORS:
            mapped["neck.norm." + key[len("bn."):]] = tensor
        elif key.startswith("final."):
            dropped[key] = HEAD_REASON
        elif key.startswith("fc."):
            dropped[key] = FC_REASON
        elif key == "n_averaged":
            dropped[key] = SWA_REASON
        else:
            unknown.append(key)
    if not backbone_tensors:
        raise MiewIDConversionError(
            f"no backbone.* tensors: not a MiewID state dict. First keys:{listing(list(state_dict)[:MAX_LISTED])}"
        )
    shapes = {k: tuple(v.shape) for k, v in backbone_tensors.items()}
    inferred = backbone is None
    name = infer_backbone(shapes) if inferred else backbone
    try:
        width = backbone_signature(name)[1]
    except RuntimeError as error:  # timm: "Unknown model (...)"
        raise MiewIDConversionError(f"backbone {name!r}: {error}") from None
    problems = _signature_problems(shapes, name)
    _check_feature_map(name, image_size, width)
    mapped.update({"backbone." + k: v for k, v in backbone_tensors.items()})

    expected_neck = {
        "pooling.p": (1,),
        **{f"neck.norm.{t}": (width,) for t in BN_TENSORS if t != "num_batches_tracked"},
        "neck.norm.num_batches_tracked": (),
    }
    source_name = {"pooling.p": "pooling.p", **{f"neck.norm.{t}": f"bn.{t}" for t in BN_TENSORS}}
    for key, shape in expected_neck.items():
        if key not in mapped:
            problems.append(f"{source_name[key]}: missing from checkpoint (expected {shape})")
        elif tuple(mapped[key].shape) != shape:
            problems.append(f"{source_name[key]}: checkpoint {tuple(mapped[key].shape)} vs expected {shape}")
    if unknown and not allow_unknown:
        problems += [f"{key}: unknown key, not part of MiewID (pass --allow-unknown to drop it)" for key in unknown]
    elif unknown:
        dropped.update({key: UNKNOWN_REASON for key in unknown})
    if problems:
        raise MiewIDConversionError(
            f"checkpoint does not match MiewID with backbone {name!r} ({len(problems)} problems):{listing(problems)}"
        )
    gem_p = float(mapped["pooling.p"].float().item())
    if not gem_p > 0:
        raise MiewIDConversionError(f"pooling.p = {gem_p}: the GeM exponent must be positive")
    report = {"backbone": name, "backbone_inferred": inferred, "gem_p": gem_p, "dropped_keys": dropped}
    return mapped, report


def convert_miewid_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    backbone: str | None = None,
    image_size: int = MIEWID_IMAGE_SIZE,
    allow_unknown: bool = False,
    provenance: Mapping | None = None,
) -> WildReIDModel:
    """A `WildReIDModel` (eval mode) computing the same embedding as the MiewID network ``state_dict``.

    ``state_dict`` uses MiewID's keys (``backbone.*``, ``pooling.p``, ``bn.*``, optional ``final.*``; see the
    module docstring). ``backbone`` is the timm name, inferred from the tensors when ``None``. The config
    reproduces MiewID's preprocessing: ``image_size`` squash resize (440 for the published models) and
    ImageNet mean/std. ``model.config.converted_from`` records the backbone, the dropped keys with reasons,
    and ``provenance`` (for example :func:`load_miewid_checkpoint`'s).
    """
    mapped, report = plan_conversion(state_dict, backbone, image_size, allow_unknown)
    config = WildReIDConfig(
        backbone=report["backbone"],
        image_size=image_size,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        gem_p=report["gem_p"],
        gem_eps=MIEWID_GEM_EPS,
        fast_downscale=False,  # MiewID resizes full-resolution images in one step
        embedding_dim=None,
        num_identities=0,
        converted_from={"format": "miewid", **dict(provenance or {}), **report},
    )
    model = WildReIDModel(config)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------- CLI


def _summary(model: WildReIDModel, output: Path) -> str:
    info = model.config.converted_from
    how = "inferred from the tensors" if info["backbone_inferred"] else "as given"
    lines = [
        f"converted MiewID checkpoint {info.get('checkpoint', '?')} (sha256 {info.get('sha256', '?')[:12]})",
        f"  backbone   {info['backbone']} ({how}); embedding {model.embedding_dim}-d = MiewID's BN output",
        f"  GeM        p = {info['gem_p']:.6f}, eps = {model.config.gem_eps}",
        f"  input      {model.config.image_size}x{model.config.image_size} squash resize, ImageNet mean/std",
    ]
    for note in ("wrapper", "stripped_prefix"):
        if note in info:
            lines.append(f"  {note:<10} {info[note]}")
    if info.get("ignored_entries"):
        lines.append(f"  ignored    training state: {', '.join(info['ignored_entries'])}")
    lines += [f"  {key}: {reason}" for key, reason in info["dropped_keys"].items()]
    lines.append(f"wrote {output} (model.safetensors, config.json, preprocessor_config.json, model code)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_wildreid.convert_miewid",
        description="Convert a MiewID checkpoint into a wildreid model with identical embeddings.",
    )
    parser.add_argument("--checkpoint", required=True, help="safetensors / .bin / .pth file, a folder, or a Hub repo id")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the wildreid model to")
    parser.add_argument("--backbone", help=f"timm model name (default: inferred; MiewID uses {MIEWID_BACKBONE})")
    parser.add_argument("--image-size", type=int, default=MIEWID_IMAGE_SIZE, help="input side in pixels (MiewID: 440)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) when --checkpoint is a repo id")
    parser.add_argument("--allow-unknown", action="store_true", help="drop (and report) keys that are not MiewID's")
    args = parser.parse_args(argv)
    try:
        state_dict, provenance = load_miewid_checkpoint(args.checkpoint, args.revision)
        model = convert_miewid_state_dict(state_dict, args.backbone, args.image_size, args.allow_unknown, provenance)
    except MiewIDConversionError as error:
        print(f"convert_miewid: error: {error}", file=sys.stderr)
        return 1
    model.save_pretrained(args.output)
    print(_summary(model, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
