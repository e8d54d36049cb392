"""MRI contrast and acquisition artefacts of the synthetic cases (helper of
:mod:`rirn.data.synthetic`).

Each :class:`~rirn.data.synthetic_anatomy.Tissue` class gets one mean intensity per modality
(:data:`CONTRAST`, relative to white matter), following the usual appearance of gliomas:

* FLAIR: oedema and the whole tumour bright, CSF dark;
* T1: tumour slightly dark, the enhancing rim as dark as oedema (indistinguishable);
* T1ce: T1 plus a bright enhancing rim (the only modality that separates ET well);
* T2: oedema, necrosis and CSF bright.

On top come, in acquisition order: tissue texture (a smooth multiplicative field shared by the
modalities, stronger in tumour), a slight Gaussian blur (point spread), a smooth multiplicative
bias field per modality, Gaussian noise and a per-case, per-modality gain. The background
(outside the brain) is exactly 0 and brain voxels are at least 1, as in skull-stripped BraTS.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rirn.data.modalities import MODALITIES
from rirn.data.synthetic_anatomy import (
    Tissue,
    lattice_noise,
    smooth_noise,
    upsample,
    voxels_per_mm,
)

#: Mean intensity of each tissue class relative to white matter, in ``MODALITIES`` order
#: (flair, t1, t1ce, t2). Perturbed per case by :func:`case_contrast`.
CONTRAST: dict[Tissue, tuple[float, float, float, float]] = {
    Tissue.BACKGROUND: (0.0, 0.0, 0.0, 0.0),
    Tissue.CSF: (0.30, 0.35, 0.35, 2.60),
    Tissue.GM: (1.25, 0.72, 0.76, 1.50),
    Tissue.WM: (1.00, 1.00, 1.00, 1.00),
    Tissue.DEEP_GM: (1.10, 0.86, 0.88, 1.20),
    Tissue.OEDEMA: (2.10, 0.78, 0.80, 2.00),
    Tissue.NECROSIS: (1.70, 0.62, 0.65, 2.60),
    Tissue.ENHANCING: (1.90, 0.80, 2.40, 1.60),
    Tissue.NON_ENHANCING: (1.80, 0.62, 0.64, 2.20),
    Tissue.VESSEL: (0.50, 0.60, 2.00, 0.70),
}

#: Amplitude of the multiplicative texture per tissue class (tumour is heterogeneous).
TEXTURE: dict[Tissue, float] = {
    Tissue.BACKGROUND: 0.0,
    Tissue.CSF: 0.05,
    Tissue.GM: 0.04,
    Tissue.WM: 0.03,
    Tissue.DEEP_GM: 0.04,
    Tissue.OEDEMA: 0.08,
    Tissue.NECROSIS: 0.12,
    Tissue.ENHANCING: 0.10,
    Tissue.NON_ENHANCING: 0.10,
    Tissue.VESSEL: 0.10,
}

#: Typical white-matter level of each modality in the int16 files (before the random gain).
WM_LEVEL: dict[str, float] = {"flair": 900.0, "t1": 1000.0, "t1ce": 1100.0, "t2": 600.0}


def case_contrast(rng: np.random.Generator) -> np.ndarray:
    """Per-case contrast table ``float32 (len(Tissue), 4)``: :data:`CONTRAST` with random
    variations (about 7%), white matter kept at 1.

    Scanner-to-scanner variation does not change what distinguishes the regions: on T1 the
    enhancing rim stays at x0.99-1.05 of oedema (a hair above, which offsets the partial volume
    with the darker necrosis it encloses), and the T1ce enhancement varies in strength
    (x0.8-1.15) but stays far above oedema.
    """
    table = np.array([CONTRAST[t] for t in Tissue], dtype=np.float64)
    table *= np.exp(rng.normal(0.0, 0.07, table.shape))
    table[Tissue.WM] = 1.0
    t1, t1ce = MODALITIES.index("t1"), MODALITIES.index("t1ce")
    table[Tissue.ENHANCING, t1] = table[Tissue.OEDEMA, t1] * rng.uniform(0.99, 1.05)
    table[Tissue.ENHANCING, t1ce] = CONTRAST[Tissue.ENHANCING][t1ce] * rng.uniform(0.8, 1.15)
    return table.astype(np.float32)


def brain_box(tissue: np.ndarray, margin: int = 2) -> tuple[slice, slice, slice]:
    """Bounding box of the non-background voxels plus ``margin`` (whole volume if empty)."""
    box = []
    for axis in range(3):
        other = tuple(k for k in range(3) if k != axis)
        idx = np.flatnonzero(np.any(tissue, axis=other))
        if idx.size == 0:
            return tuple(slice(0, s) for s in tissue.shape)
        box.append(slice(max(0, idx[0] - margin), min(tissue.shape[axis], idx[-1] + margin + 1)))
    return tuple(box)


def render_mri(rng: np.random.Generator, tissue: np.ndarray) -> dict[str, np.ndarray]:
    """Render the four modalities of a tissue map.

    Args:
        rng: the case's generator (consumed in a fixed order).
        tissue: ``uint8 (X, Y, Z)`` :class:`~rirn.data.synthetic_anatomy.Tissue` map.

    Returns:
        modality -> ``int16 (X, Y, Z)`` in ``MODALITIES`` order; 0 exactly where ``tissue`` is
        background, >= 1 elsewhere.
    """
    box = brain_box(tissue)
    local = tissue[box]
    brain = local != Tissue.BACKGROUND
    bshape = local.shape
    mm = voxels_per_mm(tissue.shape)

    table = case_contrast(rng)
    amplitude = np.array([TEXTURE[t] for t in Tissue], dtype=np.float32)
    texture = 1.0 + amplitude[local] * smooth_noise(rng, bshape, 4.0 * mm)
    blur = rng.uniform(0.5, 0.8)
    noise_sd = rng.uniform(0.015, 0.035)

    images = {}
    for m, name in enumerate(MODALITIES):
        img = np.take(table[:, m], local) * texture
        ndimage.gaussian_filter(img, blur, output=img, mode="constant", truncate=3.0)
        # exp() of the coarse lattice, then upsampling: a positive smooth field at low cost.
        strength = rng.uniform(0.1, 0.25)
        img *= upsample(np.exp(strength * lattice_noise(rng, bshape, 80.0 * mm)), bshape)
        img += noise_sd * rng.standard_normal(bshape, dtype=np.float32)
        img *= WM_LEVEL[name] * np.exp(rng.uniform(-0.4, 0.4))
        np.clip(img, 1.0, np.iinfo(np.int16).max, out=img)
        out = np.zeros(tissue.shape, dtype=np.int16)
        out[box] = np.where(brain, np.rint(img), 0.0)
        images[name] = out
    return images
