"""The descriptor cache: local features of many images keyed by image id, one `.npz` of plain arrays."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .keypoints import LocalFeatures, check_descriptors, config_descriptor_spec

CACHE_FORMAT_VERSION = 1


class LocalFeatureCache:
    """Features of many images keyed by image id, stored as one `.npz` of plain arrays (no pickle).

    Layout: `keys` (unicode), `offsets` (N+1 int64), `keypoints` (total, 2) float32, `descriptors`
    (total, W) of the extractor's dtype (uint8; float16 for ALIKED), `config` (JSON text: the extractor's config,
    ALIKED's variant and weights checksum included). Loading refuses a cache made with another extractor config.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = dict(config)
        self._features: dict[str, LocalFeatures] = {}

    @classmethod
    def from_features(cls, keys: Iterable[str], features: Iterable[LocalFeatures], config: dict[str, Any]):
        cache = cls(config)
        for key, item in zip(keys, features, strict=True):
            cache[key] = item
        return cache

    def __len__(self) -> int:
        return len(self._features)

    def __contains__(self, key: str) -> bool:
        return key in self._features

    def __getitem__(self, key: str) -> LocalFeatures:
        return self._features[key]

    def __setitem__(self, key: str, features: LocalFeatures) -> None:
        check_descriptors(features.descriptors, self.config["method"], f"features for {key!r}",
                          self.config.get("variant"))
        self._features[str(key)] = features

    def keys(self) -> list[str]:
        return list(self._features)

    def get_many(self, keys: Iterable[str]) -> list[LocalFeatures]:
        """Features in the order of `keys`; a missing key raises KeyError naming it."""
        out = []
        for key in keys:
            if key not in self._features:
                raise KeyError(f"no local features cached for image {key!r}")
            out.append(self._features[key])
        return out

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        keys = self.keys()
        items = [self._features[key] for key in keys]
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in items], out=offsets[1:])
        width, dtype = config_descriptor_spec(self.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:  # a file handle stops numpy from appending ".npz"
            np.savez(
                handle,
                format_version=np.array(CACHE_FORMAT_VERSION),
                config=np.array(json.dumps(self.config, sort_keys=True)),
                keys=np.array(keys, dtype=str) if keys else np.zeros(0, dtype="<U1"),
                offsets=offsets,
                keypoints=np.concatenate([i.keypoints for i in items]) if items else np.zeros((0, 2), np.float32),
                descriptors=np.concatenate([i.descriptors for i in items]) if items else
                np.zeros((0, width or 128), dtype),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_config: dict[str, Any] | None = None) -> "LocalFeatureCache":
        """Read a cache written by `save`; pickled objects are never loaded."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable local-feature cache ({error})") from error
        required = {"format_version", "config", "keys", "offsets", "keypoints", "descriptors"}
        if missing := required - set(arrays):
            raise ValueError(f"{path}: local-feature cache lacks arrays {sorted(missing)}")
        if int(arrays["format_version"]) != CACHE_FORMAT_VERSION:
            raise ValueError(f"{path}: cache format {int(arrays['format_version'])}, expected {CACHE_FORMAT_VERSION}")
        config = json.loads(str(arrays["config"]))
        if expected_config is not None and config != dict(expected_config):
            raise ValueError(f"{path}: cache was made with {config}, but the extractor uses {dict(expected_config)}")
        keys, offsets = arrays["keys"], arrays["offsets"]
        keypoints, descriptors = arrays["keypoints"], arrays["descriptors"]
        if len(offsets) != len(keys) + 1 or offsets[-1] != len(keypoints) or len(keypoints) != len(descriptors):
            raise ValueError(f"{path}: inconsistent cache arrays (keys {len(keys)}, offsets {len(offsets)}, "
                             f"keypoints {len(keypoints)}, descriptors {len(descriptors)})")
        cache = cls(config)
        for i, key in enumerate(keys):
            start, stop = offsets[i], offsets[i + 1]
            cache[str(key)] = LocalFeatures(keypoints[start:stop], descriptors[start:stop])
        return cache


# ------------------------------------------------------------------------------------------ matching
