"""`wildreid calibrate` choosing the gallery's keypoint extractor (SIFT or ALIKED) as it chooses its embedding.

ALIKED's learned keypoints match some species better than SIFT and others worse, so where a gallery has local features
`calibrate` weighs extractors as it weighs models (`embedding_choice`, which runs both choices): each extractor
extracts the keypoints of the calibration images once (they do not depend on the model), each (model, extractor)
pairing has the per-species method choice fitted on them and scores the mean over species of its chosen methods'
validation mAP. The gallery's pairing is kept unless another scores strictly higher. A winner with another extractor
becomes the gallery's in one new revision (with the winning model's embeddings, `revisions`): every gallery image's
keypoints extracted with it (those extracted for the calibration reused where the gallery's images are among the
calibration images, else read again from their recorded paths), its keypoint cache and descriptor index written.
`identify` and the review app extract queries with the extractor the gallery records, so they follow; `wildreid adapt
--undo` returns to the replaced revision, its keypoints included.

Candidates: the gallery's extractor and the other of sift / aliked (ALIKED-n16 on the shipped weights) at the
gallery's keypoint budget, side and upscaling, or those `--local-features` names (the flag alone: the gallery's only).
A gallery without local features is given none, and `--method global`, which scores without keypoints, weighs none.

Cost: keypoints are extracted only for the images the method is fitted on (at most `--max_fit_images` per species).
ALIKED-n16 takes ~0.49 s per image at 512 px on one CPU thread, SIFT ~0.07 s (bench/results/aliked_speed.json):
weighing ALIKED on 500 images of a species adds about 4 minutes on one thread, and a switch to it as much again per 500
gallery images. Each pairing fits the method choice: two models and two extractors fit it four times.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from datasets import Dataset

from ..matching import LocalFeatureCache, LocalFeatureExtractor
from ..matching.keypoints import LOCAL_FEATURE_CHOICES, LocalFeatures
from .gallery import Gallery
from .gallery_methods import CHOSEN_BY, chosen_figures, mean_chosen_map
from .workflows import CalibrationImages, keypoints_of_rows, keypoints_to_fit


@dataclass(eq=False)
class ExtractorCandidate:
    """An extractor calibrate weighs: its config, as the gallery would record it, and the keypoints it extracted, by
    row of the calibration dataset."""

    config: dict[str, Any]
    extracted: dict[int, LocalFeatures] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return LocalFeatureExtractor(**self.config).name

    def keypoints(self, dataset: Dataset, images: CalibrationImages, max_fit_images: int | None) -> list[LocalFeatures]:
        """Keypoints of the calibration `images` the method choice is fitted on, each extracted once for all models."""
        return keypoints_to_fit(dataset, images, self.config, max_fit_images, self.extracted)


def candidate_extractors(gallery_config: dict[str, Any] | None, requested: Sequence[str] | None, method: str | None,
                         where: str) -> list[ExtractorCandidate]:
    """The extractors to weigh, the gallery's first (module docstring), or [] when the gallery's is the only one.
    `requested`: `--local-features` (None: the default); `method`: calibrate's `--method` (None: its default)."""
    if gallery_config is None or method == "global":
        if requested:
            raise ValueError(f"--local-features: {where} has no local features and calibrate does not add them; index "
                             f"it with --local-features {requested[0]} to have them" if gallery_config is None else
                             "--local-features: --method global scores without keypoints, so no extractor is chosen; "
                             "use --method auto to weigh extractors")
        return []
    own = gallery_config.get("method", "sift")
    names = [name for name in (LOCAL_FEATURE_CHOICES if requested is None else dict.fromkeys(requested)) if name != own]
    if not names:
        return []
    budget = dict(max_keypoints=gallery_config["max_keypoints"], max_side=gallery_config["max_side"],
                  upscale=gallery_config.get("upscale", True))
    return [ExtractorCandidate(dict(gallery_config))] + [
        ExtractorCandidate(LocalFeatureExtractor(name, **budget).config) for name in names]


def gallery_keypoints(candidate: ExtractorCandidate, gallery: Gallery, dataset: Dataset, rows: np.ndarray,
                      reuse: bool) -> LocalFeatureCache:
    """Keypoints of every gallery image with `candidate`'s extractor, the images being `dataset`'s `rows` in gallery
    order; with `reuse` (`dataset` is the calibration dataset) those extracted for the calibration are reused. An
    image that cannot be read is an error: every gallery image stays matchable, as `index` requires."""
    features: list[LocalFeatures | None] = [candidate.extracted.get(row) if reuse else None for row in rows.tolist()]
    missing = [i for i, item in enumerate(features) if item is None or len(item) == 0]  # none: maybe unreadable then
    if missing:
        extracted, failed = keypoints_of_rows(dataset, rows[missing], LocalFeatureExtractor(**candidate.config))
        if failed:
            raise ValueError(f"{len(failed)} gallery images could not be read for {candidate.label} keypoints (e.g. "
                             f"{failed[0].file}: {failed[0].reason}); the gallery was not changed")
        for i, item in zip(missing, extracted):
            features[i] = item
    return LocalFeatureCache.from_features(list(gallery.metadata["image_id"]), features, candidate.config)


def extractor_record(candidates: list[ExtractorCandidate], choices: list[dict], best: int,
                     model_label: str | None) -> dict[str, Any]:
    """The calibration's `extractor_choice`: each candidate's score and per-species figures (`choices`: its method
    choice with the chosen model, `model_label` when models were weighed too), the best and why."""
    figures = [{"extractor": candidate.label, "config": candidate.config, "mean_map": mean_chosen_map(choice),
                "species": chosen_figures(choice)} for candidate, choice in zip(candidates, choices)]
    record = {"chosen_by": CHOSEN_BY, "candidates": figures, "best": figures[best]["extractor"], "switched": False}
    if model_label is not None:
        record["with_model"] = model_label
    if best == 0:
        record["reason"] = "no other extractor validates better; a tie keeps the gallery's"
    else:
        record["reason"] = (f"{figures[best]['extractor']} validates better: mean mAP "
                            f"{100 * figures[best]['mean_map']:.1f} against {_percent(figures[0]['mean_map'])} with "
                            f"the gallery's {figures[0]['extractor']}")
    return record


def _percent(value: float | None) -> str:
    return "nothing validated" if value is None else f"{100 * value:.1f}"


def describe_extractor_choice(record: dict[str, Any], gallery_dir: str | Path) -> str:
    """calibrate's line about the extractor it chose."""
    if record["switched"]:
        how = ("extracted from the calibration images" if record["gallery_keypoints"] == "calibration images"
               else "read again from their recorded paths")
        return (f"local features: {record['reason']}; {gallery_dir} now matches with {record['best']} keypoints "
                f"(revision {record['revision']}, its images' keypoints {how}); the previous revision is kept in "
                f"{Path(gallery_dir) / 'revisions' / record['replaced_revision']} (`wildreid adapt --gallery "
                f"{gallery_dir} --undo` returns to it)")
    if "not_switched_because" in record:
        return (f"local features: kept {record['candidates'][0]['extractor']}: {record['best']} validates better, "
                f"but {record['not_switched_because']}")
    return f"local features: kept {record['best']} ({record['reason']})"
