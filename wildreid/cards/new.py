"""New model cards: the skeleton of a card (metadata, usage, one results block per results file) and the
card `train.py` writes into its output folder. Their results blocks are filled by `wildreid.cards.render`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from .render import TASK_TYPE


def new_model_card(
    model_name: str,
    results_files: Mapping[str, str],
    *,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    base_model: str | None = None,
    training: str = "",
    limitations: str = "",
) -> str:
    """Skeleton card (metadata, prose headings, one results block per ``{section title: json path}``).

    ``training`` and ``limitations`` are markdown for those sections; fill in or extend the prose by
    hand, then render with :func:`write_model_card`.
    """
    data = ModelCardData(
        model_name=model_name,
        license=license,
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        tags=["wildreid", "animal-re-identification", "wildlife", "image-feature-extraction", "custom_code"],
        datasets=list(datasets) or None,
        base_model=base_model,
    )
    sections = "\n".join(
        f"### {title}\n\n<!-- results:start {path} -->\n<!-- results:end -->\n" for title, path in results_files.items()
    )
    body = f"""
# {model_name}

One embedding model that re-identifies individual animals across species: images of the same
individual map to nearby L2-normalised embeddings, compared by cosine similarity.

## Usage

```python
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{model_name}", trust_remote_code=True)
model = AutoModel.from_pretrained("{model_name}", trust_remote_code=True)
embeddings = model(**processor(images, return_tensors="pt")).embeddings
```

{training}## Evaluation

Top-k: fraction of queries whose first correct gallery image is among the k most similar.
mAP: mean average precision. BAKS / BAUS: balanced accuracy on known / unknown individuals with
a "new individual" threshold chosen on the validation split. Ties count against the model.

{sections}
## Limitations

{limitations}
"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


def training_card(config: Any, summary: Mapping[str, Any], identities: Any, results_file: str | None) -> str:
    """Card of a `train.py` output folder: what was trained on what, for how long, and the best validation
    table (rendered from ``results_file`` by :func:`write_model_card` when there is one)."""
    species_rows = "\n".join(
        f"| {name} | {sum(1 for s in identities.species if s == name)} | "
        f"{sum(c for s, c in zip(identities.species, identities.counts) if s == name)} |"
        for name in summary["training_species"]
    )
    init = f"adapted from `{config.init_from}`" if config.init_from else (
        f"`{config.backbone}`" + (" with ImageNet weights" if config.backbone_pretrained else " from random init"))
    training = f"""## Training

Sub-center ArcFace (k={config.num_subcenters}, s={config.arcface_scale}) with dynamic per-identity margins in
[{config.margin_min}, {config.margin_max}], backbone {init}, {config.image_size} px inputs, {summary["total_steps"]} steps of
{config.identities_per_batch} identities x {config.images_per_identity} images on {summary["num_processes"]} process(es),
seed {config.seed}. Datasets: {", ".join(f"`{d}`" for d in config.datasets)} (identities with fewer than
{config.min_images_per_identity} images left out). Full settings: `training_config.yaml`; every validation: `training_summary.json`.

| Species | Individuals | Images |
|---|---:|---:|
{species_rows}

"""
    limitations = (
        "Embeddings are only comparable with embeddings from this exact model; keep galleries per model version. "
        "Species absent from training are zero-shot: check accuracy on your own data before relying on it."
    )
    sections = {"Validation (best step)": results_file} if results_file else {}
    return new_model_card(
        config.hub_model_id or Path(config.output_dir).name, sections,
        datasets=[d for d in config.datasets if "/" in d.split(":")[0]], training=training, limitations=limitations,
    )
