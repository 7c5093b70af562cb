"""Per-group results (species, viewpoint...) and their unweighted mean row."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def grouped_metrics(
    groups: Sequence, compute: Callable[[np.ndarray], dict], *, skip_errors: bool = False
) -> dict[str, dict]:
    """Run ``compute(indices)`` for each distinct value of ``groups`` (species, viewpoint...).

    ``indices`` are the positions of the group's items; the callable slices its own arrays, e.g.
    ``grouped_metrics(species, lambda i: retrieval_metrics(embeddings[i], labels[i]))``. Keys are
    ``str(group)``, sorted. A group whose metrics are undefined raises with the group named, or is
    left out with a warning when ``skip_errors`` is set.
    """
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(str(group), []).append(index)
    results = {}
    for group in sorted(members):
        try:
            results[group] = compute(np.asarray(members[group]))
        except ValueError as error:
            if not skip_errors:
                raise ValueError(f"group {group!r}: {error}") from error
            logger.warning("group %r left out: %s", group, error)
    return results


def macro_average(results_by_group: Mapping[str, Mapping[str, Any]]) -> dict:
    """Mean row: unweighted mean of each metric over groups, sums of the ``n_*`` counts.

    A metric that is None (undefined) in some groups is averaged over the others; ``cmc`` and
    non-numeric entries are left out.
    """
    if not results_by_group:
        raise ValueError("no groups to average")
    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    keys = dict.fromkeys(k for result in results_by_group.values() for k in result)
    mean: dict[str, Any] = {}
    for key in keys:
        values = [r.get(key) for r in results_by_group.values()]
        # Per-group thresholds and flags such as seen_in_training have no meaningful mean.
        if key == "threshold" or any(v is not None and not is_number(v) for v in values):
            continue
        numbers = [v for v in values if v is not None]
        if key.startswith("n_"):
            mean[key] = int(sum(numbers))
        else:
            mean[key] = float(np.mean(numbers)) if numbers else None
    return mean
