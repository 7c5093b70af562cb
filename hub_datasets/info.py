"""Descriptive metadata of a data source (what goes into `DatasetInfo` and the dataset card)."""
from __future__ import annotations

from dataclasses import dataclass

from datasets import DatasetInfo

from .schema import FEATURES


@dataclass(frozen=True)
class SourceInfo:
    """Card metadata of one source.

    Args:
        name: config / species name (`lion`).
        pretty_name: human name of the source dataset (`LionData`).
        description: what the images show, their quirks.
        homepage: where the source comes from.
        license: Hub licence identifier (`cc-by-4.0`, `cc-by-nc-4.0`, `unknown`, ...).
        license_details: licence in words, with caveats.
        citation: BibTeX to cite when using the data.
        default_split: how the `split` column is defined.
    """

    name: str
    pretty_name: str
    description: str
    homepage: str
    license: str
    license_details: str
    citation: str
    default_split: str

    def dataset_info(self) -> DatasetInfo:
        return DatasetInfo(
            description=self.description,
            homepage=self.homepage,
            license=self.license,
            citation=self.citation,
            features=FEATURES,
            config_name=self.name,
        )
