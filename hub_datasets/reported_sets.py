"""Which built-in data the README and model card report on, and the training-side sets every choice is made on.

A figure a reader trusts was not chosen on the images it is measured on. The tables report each built-in
species' evaluation split (`lion:val`, `nyala:test`, `dog:test`, `pig:test`, or a sample of one) and the
closed-set test parts (`lion[split_strategy=closed_set]:test`); so a best step, a WiSE-FT mix, a recipe, a
fusion fit or a threshold is chosen on held-out individuals of the training split instead:
`selection_set("lion")` is `lion[resplit_from=train,split_strategy=disjoint_set,test_fraction=0.2]:test`, the
fifth of lion:train's individuals that `selection_set("lion", "train")` (what the models train on) leaves out.
`tests/test_selection_sets.py` holds every config and benchmark selection step to that.
"""
from __future__ import annotations

from .specs import DatasetSpec, parse_spec

# The split of each built-in species that the result tables report (official where the source has one).
EVALUATION_SPLITS = {"lion": "val", "nyala": "test", "dog": "test", "pig": "test"}
SELECTION_FRACTION = 0.2


def selection_set(species: str, part: str = "test", **params: object) -> str:
    """The training-side spec of `species`: `part="test"` is the held-out fifth of its training split's
    individuals (where choices are validated), `"train"` the other four fifths (what is trained on).
    `params`: extra sampling parameters, e.g. `max_identities=100`."""
    if species not in EVALUATION_SPLITS:
        raise ValueError(f"no built-in species {species!r}; expected one of {', '.join(EVALUATION_SPLITS)}")
    options = {"resplit_from": "train", "split_strategy": "disjoint_set", "test_fraction": SELECTION_FRACTION, **params}
    return str(DatasetSpec("builtin", name=species, split=part, params=tuple(sorted(options.items()))))


def reported_rows_in(spec: DatasetSpec | str) -> str | None:
    """The reported set whose images `spec` contains, or None when it contains none (user data, synthetic
    data, a built-in training split or a re-split of one, or the closed-set train part: the gallery the
    closed-set rows are queried against, which the closed-set protocol fits on by design)."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind != "builtin" or parsed.name not in EVALUATION_SPLITS:
        return None
    evaluation = f"{parsed.name}:{EVALUATION_SPLITS[parsed.name]}"
    options = dict(parsed.params)
    if "resplit_from" in options:  # only the rows of that source split are re-cut
        return evaluation if options["resplit_from"] == EVALUATION_SPLITS[parsed.name] else None
    if "split_strategy" in options:  # every row re-cut: the evaluation split's images are in both parts
        if options["split_strategy"] == "closed_set" and parsed.split == "train":
            return None
        return f"{parsed.name}[split_strategy={options['split_strategy']}]:{parsed.split or '(all)'}"
    if parsed.split in (None, EVALUATION_SPLITS[parsed.name]):
        return evaluation
    return None


def check_training_side(specs: list[str], purpose: str) -> None:
    """Raise `ValueError` naming the first spec of `specs` that holds reported images: what a choice
    (`purpose`, e.g. "val_datasets of configs/cpu_real.yaml") must never be made on."""
    for spec in specs:
        reported = reported_rows_in(spec)
        if reported:
            raise ValueError(f"{purpose}: {spec!r} holds images of {reported}, a set the result tables report; "
                             f"choose on held-out training individuals instead, e.g. {selection_set(parse_spec(spec).name)}")
