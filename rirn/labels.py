"""The one place that knows BraTS labels and the nested tumour regions.

Conventions used everywhere in rirn:

* Region channels are always in the fixed order ``REGIONS = ("WT", "TC", "ET")`` (whole tumour,
  tumour core, enhancing tumour). They are nested: ET ⊆ TC ⊆ WT in ground truth.
* A *region mask* array has shape ``(3, *S)`` (numpy ``bool``/``uint8`` or a torch tensor).
* A *region-bit* map packs the three masks into one ``uint8`` array of shape ``S``:
  bit 0 = WT, bit 1 = TC, bit 2 = ET. The preprocessed cache stores this form because it is
  release independent and a quarter of the size of the masks.
* A *label map* is the release's own segmentation (``uint8``, shape ``S``).

Releases (see reference.md §3):

=================  ==============  ==========================================
label scheme       releases        labels
=================  ==============  ==========================================
``brats``          2018-2021       0 bg, 1 NCR/NET, 2 ED, 4 ET
``brats2023``      2023 and later  0 bg, 1 NETC, 2 SNFH (oedema), 3 ET,
                                   4 resection cavity (2024+, not tumour)
=================  ==============  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REGIONS: tuple[str, str, str] = ("WT", "TC", "ET")

#: The grid of every BraTS 2018-2023 case (1 mm isotropic): the scale the synthetic cases are
#: drawn at and mmFormer's ET threshold was set at.
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)


@dataclass(frozen=True)
class LabelScheme:
    """Labels of one family of BraTS releases.

    Attributes:
        name: scheme name (``"brats"`` or ``"brats2023"``).
        valid_labels: every label value a segmentation may contain.
        region_labels: for each region of :data:`REGIONS`, the labels that form it.
        ncr, ed, et: the labels written for necrosis/non-enhancing core, oedema and enhancing
            tumour when turning region masks back into a label map.
    """

    name: str
    valid_labels: tuple[int, ...]
    region_labels: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    ncr: int
    ed: int
    et: int


SCHEMES: dict[str, LabelScheme] = {
    "brats": LabelScheme(
        name="brats",
        valid_labels=(0, 1, 2, 4),
        region_labels=((1, 2, 4), (1, 4), (4,)),
        ncr=1,
        ed=2,
        et=4,
    ),
    "brats2023": LabelScheme(
        name="brats2023",
        valid_labels=(0, 1, 2, 3, 4),
        region_labels=((1, 2, 3), (1, 3), (3,)),
        ncr=1,
        ed=2,
        et=3,
    ),
}


def get_scheme(name: str) -> LabelScheme:
    """Return the :class:`LabelScheme` called ``name`` (``"brats"`` or ``"brats2023"``)."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown label scheme {name!r}; valid: {sorted(SCHEMES)}") from None


def invalid_labels(seg: np.ndarray, scheme: LabelScheme) -> list[int]:
    """Label values present in ``seg`` that the scheme does not allow (sorted)."""
    present = np.unique(seg)
    return sorted(int(v) for v in present if int(v) not in scheme.valid_labels)


def labels_to_regions(seg: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Release label map ``(*S)`` (any integer dtype) -> nested region masks ``(3, *S)`` bool."""
    return np.stack([np.isin(seg, labels) for labels in scheme.region_labels])


def regions_to_labels(regions: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Region masks ``(3, *S)`` -> release label map ``(*S)`` uint8.

    WT-only voxels become oedema, TC voxels necrosis, ET voxels enhancing tumour. Later regions
    win, so a predicted ET voxel is written as ET even where the prediction is not nested.
    """
    regions = np.asarray(regions, dtype=bool)
    out = np.zeros(regions.shape[1:], dtype=np.uint8)
    out[regions[0]] = scheme.ed
    out[regions[1]] = scheme.ncr
    out[regions[2]] = scheme.et
    return out


def nest_regions(regions: np.ndarray) -> np.ndarray:
    """The nested masks that the label map of region masks encodes: union upward.

    Each region is thresholded on its own, so predicted masks need not be nested (a voxel can
    be TC but not WT). :func:`regions_to_labels` writes one label per voxel, and reading that
    map back (as BraTS and nnU-Net score a submission) gives ``WT | TC | ET``, ``TC | ET`` and
    ``ET``. This returns those masks directly: for every scheme it equals
    ``labels_to_regions(regions_to_labels(regions, scheme), scheme)``.

    Args:
        regions: region masks ``(3, *S)`` bool (or 0/1), channels ``WT, TC, ET``.

    Returns:
        A new ``bool`` array ``(3, *S)`` with ET ⊆ TC ⊆ WT; the input is not modified.
    """
    regions = np.asarray(regions, dtype=bool)
    if regions.ndim < 1 or regions.shape[0] != len(REGIONS):
        raise ValueError(f"expected region masks of shape (3, *S), got {regions.shape}")
    et = regions[2].copy()
    tc = regions[1] | et
    return np.stack([regions[0] | tc, tc, et])


def regions_to_bits(regions: np.ndarray) -> np.ndarray:
    """Region masks ``(3, *S)`` -> region-bit map ``(*S)`` uint8 (bit r set = region r)."""
    regions = np.asarray(regions, dtype=np.uint8)
    return (regions[0] | (regions[1] << 1) | (regions[2] << 2)).astype(np.uint8)


def bits_to_regions(bits: np.ndarray) -> np.ndarray:
    """Region-bit map ``(*S)`` uint8 -> region masks ``(3, *S)`` bool."""
    bits = np.asarray(bits)
    return np.stack([(bits >> r) & 1 for r in range(3)]).astype(bool)


def labels_to_bits(seg: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Release label map -> region-bit map (``uint8``), via :func:`labels_to_regions`."""
    return regions_to_bits(labels_to_regions(seg, scheme))


def phenotype(bits: np.ndarray) -> str:
    """The regions a region-bit map ``(*S)`` holds, joined in ``REGIONS`` order: ``"WT+TC+ET"``
    (a high-grade-like case), ``"WT+TC"`` (no enhancing tumour: the low-grade-like phenotype),
    ``"none"`` without tumour. Splits and training-case sampling group cases by it."""
    present = int(np.bitwise_or.reduce(np.asarray(bits, dtype=np.uint8), axis=None))
    names = [r for i, r in enumerate(REGIONS) if present >> i & 1]
    return "+".join(names) if names else "none"
