"""A gallery's descriptor index for one-vs-many local retrieval (`wildreid.matching.one_vs_many`).

`wildreid index --local-features` writes it beside the keypoint cache, in the same revision (file role
`descriptor_index`). Reading it refuses an index built with other extractor settings, naming both; a
folder saved without one (older galleries, or an index that no longer covers the gallery's images after
`Gallery.add_and_save`) gets one built in memory from the keypoint cache. Every save of a gallery with its
keypoint cache writes the index in the same revision, so an interrupted save leaves the old index or the
new one, never a mix (`store.write_revision`); the review app extends the index by a decision's photos
(`DescriptorIndex.add`) and saves it that way.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..matching.descriptor_cache import LocalFeatureCache
from ..matching.keypoints import UNIT_VECTOR_METHODS, LocalFeatures
from ..matching.one_vs_many import DescriptorIndex
from . import store

logger = logging.getLogger(__name__)


def descriptor_index_writer(cache: LocalFeatureCache, image_ids: Sequence[str], index: DescriptorIndex | None = None,
                            index_type: str = "auto") -> Callable[[Path], Path] | None:
    """A writer of the descriptor index of `image_ids` (in gallery order) for `store.write_revision`; None for
    ORB / AKAZE features, which one-vs-many retrieval does not index (SIFT and ALIKED it does). `index`: that index
    when the caller keeps it up to date (the review app extends it per decision), else one of `index_type` is built
    from `cache`."""
    if cache.config.get("method", "sift") not in UNIT_VECTOR_METHODS:
        return None
    if index is None:
        index = DescriptorIndex.build(cache.get_many(image_ids), cache.config, index_type=index_type)
    elif index.num_images != len(image_ids):
        raise ValueError(f"the descriptor index holds {index.num_images} images, the gallery {len(image_ids)}")
    return lambda path: index.to_npz(path, image_ids)


def load_descriptor_index(directory: str | os.PathLike, image_ids: Sequence[str],
                          extractor_config: Mapping[str, Any] | None, cache: LocalFeatureCache | None = None,
                          index_type: str = "auto") -> tuple[DescriptorIndex, list[LocalFeatures]]:
    """The descriptor index over the gallery images `image_ids` (in that order) and their keypoints.

    cache: the gallery's keypoint cache when the caller has read it already (else it is read here).
    index_type: the gallery's kind of index, for one built here when the saved one is absent or stale.
    Raises ValueError when the gallery has no keypoint cache, or when the cache or index was made with other
    extractor settings than `extractor_config` (the gallery's)."""
    directory = Path(directory)
    config = store.read_config(directory)
    if extractor_config is None or store.file_entry(config, "local_features") is None and \
            not (directory / store.LOCAL_FEATURES_FILE).is_file():
        raise ValueError(f"{directory}: the local and fusion methods need the gallery's keypoints; rebuild it with "
                         "`wildreid index --local-features`, or use --method global")
    if cache is None:
        cache = store.read_local_features(directory, extractor_config)
    elif cache.config != dict(extractor_config):
        raise ValueError(f"{directory}: the keypoint cache was made with {cache.config}, but the gallery records "
                         f"{dict(extractor_config)}")
    missing = [image_id for image_id in image_ids if image_id not in cache]
    if missing:
        raise ValueError(f"{directory}: the keypoint cache lacks {len(missing)} gallery images (added after it was "
                         f"built), e.g. {missing[:3]}; rebuild the gallery with `wildreid index --local-features`")
    features = cache.get_many(image_ids)
    if store.file_entry(config, "descriptor_index") is not None:
        path = store.checked_file(directory, config, "descriptor_index")
        index, indexed_ids = DescriptorIndex.from_npz(path, dict(extractor_config))
        if indexed_ids == list(image_ids):
            return index, features
        logger.warning("%s indexes %d images, the gallery has %d: rebuilt in memory", path, len(indexed_ids),
                       len(image_ids))
    return DescriptorIndex.build(features, dict(extractor_config), index_type=index_type), features
