"""Tissue and tumour label maps of the synthetic BraTS-like cases (helpers of
:mod:`rirn.data.synthetic`).

Geometry is defined at BraTS scale (millimetres of a 240x240x155 volume) and scaled per axis to
the requested shape, so a ``[96, 96, 64]`` case is a shrunken copy of a full-size one. Irregular
shapes are level sets of smooth random fields (:func:`smooth_noise`): Gaussian noise on a coarse
lattice, upsampled with cubic splines. Everything heavy runs inside the bounding box of the
structure being drawn.

Tissue classes (``uint8`` map ``(X, Y, Z)``, see :class:`Tissue`) combine anatomy and the
tumour sub-regions; the MRI renderer (:mod:`rirn.data.synthetic_mri`) gives each class one
intensity per modality.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

# The shape all millimetre sizes below refer to (BraTS, 1 mm isotropic).
from rirn.labels import BRATS_SHAPE

#: Probability that a case is low-grade-like (no enhancing tumour, no necrosis).
LOW_GRADE_FRACTION = 0.15
#: Probability that a case has a second, separate lesion.
MULTIFOCAL_FRACTION = 0.12


class Tissue(IntEnum):
    """Classes of the synthetic tissue map (anatomy, then tumour sub-regions)."""

    BACKGROUND = 0
    CSF = 1
    GM = 2  # cortical grey matter
    WM = 3
    DEEP_GM = 4  # thalamus and lentiform nuclei
    OEDEMA = 5  # label 2
    NECROSIS = 6  # label 1 in high-grade-like cases
    ENHANCING = 7  # label 4
    NON_ENHANCING = 8  # label 1 in low-grade-like cases (solid non-enhancing tumour)
    VESSEL = 9  # surface vessels, bright on T1ce


#: BraTS 2018-2021 label written for each tumour class.
TUMOUR_LABELS: dict[Tissue, int] = {
    Tissue.OEDEMA: 2,
    Tissue.NECROSIS: 1,
    Tissue.ENHANCING: 4,
    Tissue.NON_ENHANCING: 1,
}


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion: centre (voxels), whole-tumour radius (mm) and grade."""

    centre: tuple[int, int, int]
    radius_mm: float
    low_grade: bool


# ----------------------------------------------------------------------------- smooth noise


@functools.lru_cache(maxsize=512)
def _spline_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float32 matrix of 1-D cubic-spline upsampling (``ndimage.zoom``).

    Spline zoom is separable and linear, so zooming the identity gives the matrix, and three
    small matrix products equal ``ndimage.zoom(order=3)`` on a 3-D lattice at a fraction of
    its cost (it evaluates 64 taps per output voxel).
    """
    eye = np.eye(n_in, dtype=np.float64)
    m = ndimage.zoom(eye, (n_out / n_in, 1.0), order=3, mode="mirror")
    m = m.astype(np.float32)
    m.flags.writeable = False
    return m


def upsample(low: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Cubic-spline upsample a 3-D lattice to ``shape`` (same result as ``ndimage.zoom``).

    Args:
        low: ``(a, b, c)`` float32, each side >= 2.
        shape: output ``(X, Y, Z)``; corners of ``low`` map onto corners of the output.

    Returns:
        float32 ``shape``, C-contiguous.
    """
    (a, b, c), (nx, ny, nz) = low.shape, shape
    mx, my, mz = (_spline_matrix(n, s) for n, s in zip(low.shape, shape, strict=True))
    # Plain 2-D (or contiguous batched) products only: numpy's batched matmul with a
    # transposed operand falls back to a loop ~100x slower than BLAS.
    out = (mx @ low.reshape(a, b * c)).reshape(nx, b, c)
    out = np.matmul(my, out)  # (X, Y, c)
    return (out.reshape(nx * ny, c) @ mz.T).reshape(nx, ny, nz)


def lattice_noise(rng: np.random.Generator, shape, cell) -> np.ndarray:
    """Standard normal values on a lattice of spacing ``cell`` voxels covering ``shape``.

    Returns:
        float32 ``(a, b, c)``, each side >= 2; :func:`upsample` it to ``shape``.
    """
    cells = np.broadcast_to(np.asarray(cell, dtype=np.float64), (3,))
    low_shape = tuple(
        max(2, int(np.ceil(s / max(c, 1.0))) + 1) for s, c in zip(shape, cells, strict=True)
    )
    return rng.standard_normal(low_shape, dtype=np.float32)


def smooth_noise(rng: np.random.Generator, shape, cell) -> np.ndarray:
    """Smooth random field: :func:`lattice_noise` upsampled to ``shape``.

    Args:
        rng: the case's generator (consumed in a fixed order, so fields are reproducible).
        shape: output ``(X, Y, Z)``.
        cell: lattice spacing in voxels (scalar or one per axis), the correlation length.

    Returns:
        float32 ``shape``, zero mean, standard deviation about 0.8.
    """
    shape = tuple(int(s) for s in shape)
    return upsample(lattice_noise(rng, shape, cell), shape)


# ---------------------------------------------------------------------------------- helpers


def voxels_per_mm(shape) -> np.ndarray:
    """Voxels per BraTS millimetre along each axis."""
    return np.asarray(shape, dtype=np.float64) / np.asarray(BRATS_SHAPE, dtype=np.float64)


def _box(centre, half, shape) -> tuple[slice, slice, slice]:
    """Bounding box ``centre +- half`` (voxels, per axis) clipped to the volume."""
    return tuple(
        slice(max(0, int(np.floor(c - h))), min(int(s), int(np.ceil(c + h)) + 1))
        for c, h, s in zip(centre, half, shape, strict=True)
    )


def _axes(box, centre, semi) -> list[np.ndarray]:
    """Normalised coordinates ``(i - centre) / semi`` of a box, as broadcastable 1-D arrays."""
    out = []
    for axis, (sl, c, a) in enumerate(zip(box, centre, semi, strict=True)):
        v = (np.arange(sl.start, sl.stop, dtype=np.float32) - np.float32(c)) / np.float32(a)
        out.append(v.reshape([-1 if k == axis else 1 for k in range(3)]))
    return out


def _box_shape(box) -> tuple[int, int, int]:
    return tuple(sl.stop - sl.start for sl in box)


def _paint_ellipsoid(tissue: np.ndarray, centre, semi, value: int, where: int) -> None:
    """Set voxels of an axis-aligned ellipsoid that currently hold ``where`` to ``value``."""
    box = _box(centre, semi, tissue.shape)
    u, v, w = _axes(box, centre, semi)
    local = tissue[box]
    local[((u * u + v * v + w * w) < 1.0) & (local == where)] = value


# ---------------------------------------------------------------------------------- anatomy


def draw_brain(rng: np.random.Generator, shape) -> np.ndarray:
    """Skull-stripped brain of random shape with WM, cortical and deep GM, CSF and vessels.

    The brain is an ellipsoid (BraTS proportions, egg-shaped, randomly scaled) whose radius is
    perturbed by a smooth field. The cortex is a band under the outer surface and under the
    medial surface of the interhemispheric fissure, folded by sulci: thin CSF sheets at the
    zero set of a medium-scale field, lined by grey matter. Some of the surface CSF holds
    vessels. Lateral ventricles are two bent tubes near the centre; thalami and lentiform
    nuclei are deep grey matter.

    Returns:
        ``uint8 (X, Y, Z)`` :class:`Tissue` map (BACKGROUND, CSF, GM, WM, DEEP_GM, VESSEL).
    """
    shape = tuple(int(s) for s in shape)
    mm = voxels_per_mm(shape)
    size = rng.uniform(0.92, 1.06)
    semi = np.array([67.0, 86.0, 66.0]) * size * rng.uniform(0.95, 1.05, 3) * mm
    centre = np.array([120.0, 122.0, 70.0]) * mm + rng.normal(0.0, 2.0, 3) * mm
    box = _box(centre, semi * 1.15, shape)
    bshape = _box_shape(box)
    u, v, w = _axes(box, centre, semi)

    r = np.sqrt(u * u + v * v + w * w)
    # Egg shape (wider at the back, where v > 0) and a random, gently lumpy outline.
    lumps = smooth_noise(rng, bshape, 40.0 * mm)
    r *= 1.0 - 0.06 * v
    r *= 1.0 + 0.04 * lumps
    outer = 1.0 - r  # normalised depth below the outer surface
    brain = outer > 0.0

    # The interhemispheric fissure is a second surface, except where the corpus callosum and
    # the deep nuclei join the hemispheres.
    midline = np.float32(rng.normal(0.0, 0.02)) + np.float32(rng.normal(0.0, 0.03)) * v
    medial = np.where(
        np.broadcast_to((w > 0.2) | (np.abs(v) > 0.45), bshape), np.abs(u - midline), 2.0
    )
    depth = np.minimum(outer, medial)

    gm_thickness = rng.uniform(0.05, 0.065)
    sulcal_depth = rng.uniform(0.18, 0.26)
    # Sulci are deeper in some regions than in others.
    sulcal_depth = sulcal_depth * (1.0 + 0.25 * lumps)
    band = brain & (depth < sulcal_depth)
    sulci = np.full(bshape, np.inf, dtype=np.float32)
    sulci[band] = _sulcal_field(
        rng, band, r, outer, medial, midline, centre - [b.start for b in box], semi, mm
    )
    tissue = np.full(bshape, Tissue.WM, dtype=np.uint8)
    tissue[(depth < gm_thickness) | (sulci < 0.55)] = Tissue.GM
    csf = (depth < rng.uniform(0.01, 0.02)) | ((sulci < 0.1) & (depth < sulcal_depth - 0.02))
    tissue[csf] = Tissue.CSF
    # Vessels run in the surface CSF (bright on T1ce, a confounder of enhancing tumour).
    vessels = csf & (depth < 0.05) & (smooth_noise(rng, bshape, 6.0 * mm) > 1.1)
    tissue[vessels] = Tissue.VESSEL
    tissue[~brain] = Tissue.BACKGROUND

    out = np.zeros(shape, dtype=np.uint8)
    out[box] = tissue
    for dx, dy, dz, sx, sy, sz in _DEEP_GREY:
        for side in (-1.0, 1.0):
            c = centre + np.array([side * dx, dy, dz]) * semi
            _paint_ellipsoid(out, c, np.array([sx, sy, sz]) * semi, Tissue.DEEP_GM, Tissue.WM)
    _paint_ventricles(rng, out, centre, semi, mm)
    return out


def _sulcal_field(rng, band, r, outer, medial, midline, centre, semi, mm) -> np.ndarray:
    """|sulcal field| at the voxels of ``band`` (the cortex), in ``np.nonzero(band)`` order.

    A smooth field is sampled at each voxel's projection onto the nearest brain surface
    (radially onto the outer surface, across onto the midline plane), so its zero set, the
    sulci, runs perpendicular to the surface like real sulci instead of forming closed cells.
    The radial projection is partial, which lets sulci bend a little with depth.
    """
    field = smooth_noise(rng, band.shape, 6.5 * mm)
    i, j, k = np.nonzero(band)
    on_midline = (
        np.broadcast_to(medial, band.shape)[i, j, k] < np.broadcast_to(outer, band.shape)[i, j, k]
    )
    # Outer surface: pull the voxel radially to 0.97 of the (deformed) brain radius.
    pull = 0.6 * (0.97 / np.maximum(r[i, j, k], 0.05)) + 0.4
    pi = centre[0] + (i - centre[0]) * pull
    pj = centre[1] + (j - centre[1]) * pull
    pk = centre[2] + (k - centre[2]) * pull
    # Midline plane: step onto the plane, a few voxels to the voxel's side of it.
    mid = centre[0] + np.broadcast_to(midline, band.shape)[i, j, k] * semi[0]
    # Each hemisphere samples its own part of the field (1.5 cells off the plane), so the
    # medial sulci of the two sides differ.
    side = np.sign(i - mid) * 10.0 * mm[0]
    pi = np.where(on_midline, mid + side + 0.5 * (i - mid), pi)
    pj = np.where(on_midline, j, pj)
    pk = np.where(on_midline, k, pk)
    coords = [
        np.clip(np.rint(p), 0, n - 1).astype(np.intp)
        for p, n in zip((pi, pj, pk), band.shape, strict=True)
    ]
    # Plus some of the unprojected field: sulci branch and wander instead of radiating.
    return np.abs(0.8 * field[tuple(coords)] + 0.45 * field[i, j, k])


#: Thalami and lentiform nuclei: offset from the brain centre and semi-axes, in brain
#: semi-axes (mirrored left/right).
_DEEP_GREY = ((0.13, 0.10, -0.05, 0.10, 0.13, 0.13), (0.30, -0.06, 0.0, 0.06, 0.17, 0.14))


def _paint_ventricles(rng, tissue: np.ndarray, centre, semi, mm) -> None:
    """Lateral ventricles, in place: two tubes along the antero-posterior axis, diverging and
    bending down at both ends (frontal and occipital horns), randomly sized."""
    box = _box(centre, semi * np.array([0.45, 0.75, 0.45]), tissue.shape)
    u, v, w = _axes(box, centre, semi)
    grow = rng.uniform(0.7, 1.5)
    length = 0.42 * np.sqrt(grow)
    half_width = 0.05 * grow
    half_height = 0.11 * np.sqrt(grow)
    lump = 1.0 + 0.25 * smooth_noise(rng, _box_shape(box), 14.0 * mm)
    along = (v / length) ** 2
    mask = np.zeros(_box_shape(box), dtype=bool)
    for side in (-1.0, 1.0):
        x = side * (0.095 + 0.12 * ((v + 0.05) / length) ** 2)
        z = 0.12 - 0.25 * along
        mask |= ((u - x) / half_width) ** 2 + ((w - z) / half_height) ** 2 + along**2 < lump
    local = tissue[box]
    local[mask & (local != Tissue.BACKGROUND)] = Tissue.CSF


# ----------------------------------------------------------------------------------- tumour


def plan_lesions(rng: np.random.Generator, tissue: np.ndarray) -> list[Lesion]:
    """Random lesion centres and sizes: one lesion, a second one in about
    :data:`MULTIFOCAL_FRACTION` of cases; all lesions of a case share its grade."""
    low_grade = bool(rng.random() < LOW_GRADE_FRACTION)
    count = 2 if rng.random() < MULTIFOCAL_FRACTION else 1
    solid = np.argwhere((tissue == Tissue.WM) | (tissue == Tissue.DEEP_GM))
    if solid.size == 0:
        raise ValueError(f"no white matter to place a tumour in a volume of shape {tissue.shape}")
    mm = voxels_per_mm(tissue.shape)
    main_radius = rng.uniform(16.0, 36.0)
    radii = [main_radius, main_radius * rng.uniform(0.45, 0.75)][:count]
    lesions: list[Lesion] = []
    for radius in radii:
        # A few tries to keep satellite lesions apart (in mm) from the ones already placed.
        for _ in range(20):
            c = solid[rng.integers(len(solid))]
            if all(
                np.linalg.norm((c - o.centre) / mm) > 1.2 * (radius + o.radius_mm) for o in lesions
            ):
                break
        lesions.append(Lesion(tuple(int(x) for x in c), radius, low_grade))
    return lesions


def draw_lesion(rng: np.random.Generator, tissue: np.ndarray, lesion: Lesion) -> None:
    """Paint one lesion into the tissue map, in place.

    Nested irregular shapes around the centre: the whole tumour (oedema, spreading further in
    white than in grey matter and sparing CSF), the core (the whole tumour radius times a
    random fraction) and, for high-grade-like lesions, necrosis inside the core. The enhancing
    rim is the core minus necrosis; necrosis is kept at least one voxel inside the core so the
    rim never vanishes. Low-grade-like cores are solid non-enhancing tumour.
    """
    mm = voxels_per_mm(tissue.shape)
    radius = lesion.radius_mm * rng.uniform(0.85, 1.15, 3) * mm
    box = _box(lesion.centre, radius * 1.7, tissue.shape)
    bshape = _box_shape(box)
    u, v, w = _axes(box, lesion.centre, radius)
    dist = np.sqrt(u * u + v * v + w * w)
    cell = np.maximum(radius * 0.55, 1.0)

    def radius_ratio(fraction: float, roughness: float) -> np.ndarray:
        """Distance over a wobbly radius: < 1 inside an irregular blob of size ``fraction``."""
        wobble = np.clip(smooth_noise(rng, bshape, cell), -1.8, 1.8)
        return dist / (fraction * (1.0 + roughness * wobble))

    local = tissue[box]
    inside = local != Tissue.BACKGROUND
    whole = radius_ratio(1.0, 0.35)
    # Oedema follows white-matter tracts: it reaches less far into the cortex, not into CSF.
    white = (local == Tissue.WM) | (local == Tissue.DEEP_GM)
    oedema = ((whole < 1.0) & white) | ((whole < 0.75) & (local == Tissue.GM))
    core = (radius_ratio(rng.uniform(0.45, 0.7), 0.25) < 1.0) & inside
    core[tuple(int(c) - sl.start for c, sl in zip(lesion.centre, box, strict=True))] = True
    local[oedema & ~core] = Tissue.OEDEMA
    if lesion.low_grade:
        local[core] = Tissue.NON_ENHANCING
        return
    necrosis = (radius_ratio(rng.uniform(0.3, 0.7), 0.3) < 1.0) & ndimage.binary_erosion(core)
    local[core] = Tissue.ENHANCING
    local[necrosis] = Tissue.NECROSIS


def tumour_labels(tissue: np.ndarray) -> np.ndarray:
    """BraTS 2018-2021 label map (``uint8``, labels 0/1/2/4) of a tissue map."""
    lut = np.zeros(len(Tissue), dtype=np.uint8)
    for cls, label in TUMOUR_LABELS.items():
        lut[cls] = label
    return lut[tissue]
