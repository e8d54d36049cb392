"""Data: modality subsets, BraTS discovery and reading, transforms, cache and synthetic data."""

from rirn.data.modalities import (
    MODALITIES,
    all_subsets,
    canonical_modality,
    channel_indices,
    parse_modalities,
    subset_name,
)

__all__ = [
    "MODALITIES",
    "all_subsets",
    "canonical_modality",
    "channel_indices",
    "parse_modalities",
    "subset_name",
]
