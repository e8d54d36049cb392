"""Finding BraTS cases and their files, for every release layout.

Layouts (reference.md §3), detected automatically with ``release="auto"``:

==============================  ============================================================
release                         layout under ``root``
==============================  ============================================================
``brats2018``, ``brats2019``    ``HGG/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, ``LGG/...``
``brats2020``, ``brats2021``    ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (flat)
``brats2023``                   ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (flat)
==============================  ============================================================

A file's modality is the last ``_``/``-`` separated token of its name (case-insensitive,
aliases resolved by :func:`~rirn.data.modalities.canonical_modality`), with ``.nii`` or
``.nii.gz``. The case ID is the case folder's name. When no file is named ``*_seg``, a single
file whose name contains ``seg`` (e.g. ``W39_1998.09.19_Segm.nii`` in some BraTS 2020 copies)
is taken as the segmentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rirn.data.modalities import ALIASES, MODALITIES, canonical_modality
from rirn.errors import DataError

#: Releases that can be forced with ``release=...``.
RELEASES: tuple[str, ...] = ("brats2018", "brats2019", "brats2020", "brats2021", "brats2023")
_NESTED = ("brats2018", "brats2019")
_TOKEN_SPLIT = re.compile(r"[_\-.\s]+")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: the case folder's name.
        folder: the case folder.
        images: canonical modality -> NIfTI path; holds exactly the modalities asked for.
        seg: the segmentation, or ``None`` for an unlabelled case.
    """

    case_id: str
    folder: Path
    images: dict[str, Path] = field(hash=False)
    seg: Path | None = None


@dataclass(frozen=True)
class CaseIndex:
    """All cases of one dataset root, sorted by case ID.

    Attributes:
        root: the dataset root (absolute).
        release: one of :data:`RELEASES`.
        scheme: the label scheme name of ``release`` (see :func:`release_scheme`).
        cases: the cases, sorted by ``case_id``.
    """

    root: Path
    release: str
    scheme: str
    cases: tuple[CaseFiles, ...]

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def case(self, case_id: str) -> CaseFiles:
        """The :class:`CaseFiles` of ``case_id``; :class:`DataError` when unknown."""
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise DataError(f"case {case_id!r} not found under {self.root}")


def release_scheme(release: str) -> str:
    """Label scheme name of a release: ``"brats2023"`` for 2023+, ``"brats"`` before."""
    return "brats2023" if release == "brats2023" else "brats"


def check_release(release: str) -> str:
    """Normalise a release name (``"auto"``, ``"brats2021"``, ``"2021"``, ``"BraTS2021"``)."""
    key = str(release).strip().lower()
    if key.isdigit():
        key = f"brats{key}"
    if key == "auto" or key in RELEASES:
        return key
    raise DataError(f"unknown release {release!r}; valid: auto, {', '.join(RELEASES)}")


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith((".nii", ".nii.gz"))


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def _token(path: Path) -> str:
    return _TOKEN_SPLIT.split(_stem(path))[-1].lower()


def _niftis(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_nifti(p))


def modality_files(folder: str | Path) -> dict[str, list[Path]]:
    """The NIfTI files of one case folder by canonical modality (name token, aliases allowed).

    Returns:
        ``{modality: [paths, sorted]}`` for the modalities with at least one file, in canonical
        order; files of no modality (the segmentation, others) are left out.
    """
    found: dict[str, list[Path]] = {}
    for path in _niftis(Path(folder)):
        token = _token(path)
        if token in ALIASES:
            found.setdefault(ALIASES[token], []).append(path)
    return {m: found[m] for m in MODALITIES if m in found}


def _expected_name(case_id: str, modality: str, release: str) -> str:
    if release == "brats2023":
        new = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}
        return f"{case_id}-{new[modality]}.nii.gz"
    return f"{case_id}_{modality}.nii.gz"


def _find_seg(folder: Path, files: list[Path]) -> Path | None:
    exact = [p for p in files if _token(p) == "seg"]
    # Fallback for misnamed copies such as BraTS20_Training_355/W39_1998.09.19_Segm.nii.
    candidates = exact or [p for p in files if "seg" in p.name.lower()]
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DataError(f"case folder {folder}: several segmentation files ({names})")
    return candidates[0] if candidates else None


def read_case_folder(
    folder: str | Path,
    modalities: tuple[str, ...] | list[str] = MODALITIES,
    require_seg: bool = False,
    release: str = "auto",
) -> CaseFiles:
    """Find the files of one case folder, e.g. for prediction on a single new case.

    Args:
        folder: the case folder; its name is the case ID.
        modalities: the modalities needed (names or aliases). Others present are ignored.
        require_seg: raise when there is no segmentation file.
        release: only used to print the expected file names in error messages.

    Raises:
        DataError: the folder is missing, a needed modality is missing (the message names the
            expected file), or a modality/segmentation has several candidate files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"case folder {folder} does not exist")
    wanted = [canonical_modality(m) for m in modalities]
    files = _niftis(folder)
    found = modality_files(folder)
    case_id = folder.name
    if release == "auto":
        tokens = {_token(p) for p in files}
        release = "brats2023" if tokens & {"t1n", "t1c", "t2w", "t2f"} else "brats2021"
    missing = [m for m in MODALITIES if m in wanted and m not in found]
    if missing:
        expected = ", ".join(_expected_name(case_id, m, release) for m in missing)
        raise DataError(
            f"case {case_id} ({folder}): missing modality file(s) {'+'.join(missing)} "
            f"(expected {expected})"
        )
    images = {}
    for m in MODALITIES:
        if m in wanted:
            if len(found[m]) > 1:
                names = ", ".join(p.name for p in found[m])
                raise DataError(f"case {case_id} ({folder}): several {m} files ({names})")
            images[m] = found[m][0]
    seg = _find_seg(folder, files)
    if seg is None and require_seg:
        raise DataError(
            f"case {case_id} ({folder}): missing segmentation file "
            f"(expected {_expected_name(case_id, 'seg', release)})"
        )
    return CaseFiles(case_id=case_id, folder=folder, images=images, seg=seg)


def _case_folders(root: Path, nested: bool) -> list[Path]:
    parents = [root / g for g in ("HGG", "LGG") if (root / g).is_dir()] if nested else [root]
    return [
        d
        for parent in parents
        for d in sorted(parent.iterdir())
        if d.is_dir() and not d.name.startswith(".") and any(_is_nifti(p) for p in d.iterdir())
    ]


def detect_release(root: str | Path) -> str:
    """Guess the release of a dataset root from its layout, file names and case IDs.

    ``HGG``/``LGG`` folders -> 2018/2019 (2019 when IDs start with ``BraTS19``); ``t1n``-style
    names -> 2023; otherwise 2020 when IDs start with ``BraTS20_`` and 2021 else.
    2018 vs 2019 and 2020 vs 2021 share labels and layout, so a wrong guess there is harmless.
    """
    root = Path(root)
    if (root / "HGG").is_dir() or (root / "LGG").is_dir():
        folders = _case_folders(root, nested=True)
        is_2019 = any(d.name.lower().startswith("brats19") for d in folders)
        return "brats2019" if is_2019 else "brats2018"
    folders = _case_folders(root, nested=False)
    for d in folders:
        if {_token(p) for p in _niftis(d)} & {"t1n", "t1c", "t2w", "t2f"}:
            return "brats2023"
    return "brats2020" if any(d.name.startswith("BraTS20_") for d in folders) else "brats2021"


def discover_cases(
    root: str | Path,
    release: str = "auto",
    require_seg: bool = True,
    modalities: tuple[str, ...] | list[str] = MODALITIES,
) -> CaseIndex:
    """Find every case under a BraTS dataset root.

    Args:
        root: the dataset root (the folder holding the case folders, or ``HGG``/``LGG``).
        release: ``"auto"`` or one of :data:`RELEASES` (``"2021"`` also accepted).
        require_seg: every case must have a segmentation (training); ``False`` allows
            unlabelled cases (prediction, test sets).
        modalities: the modalities each case must have.

    Returns:
        A :class:`CaseIndex` with cases sorted by case ID.

    Raises:
        DataError: the root is missing or holds no case, the forced release does not match the
            layout, a case lacks a file, or two case folders share an ID.
    """
    root = Path(root).expanduser().resolve()
    release = check_release(release)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    detected = detect_release(root)
    if release == "auto":
        release = detected
    elif (release == "brats2023") != (detected == "brats2023"):
        raise DataError(
            f"data root {root}: release {release} was given but the file names look like "
            f"{detected} (the label schemes differ); use release=auto or {detected}"
        )
    nested = release in _NESTED
    if nested and not ((root / "HGG").is_dir() or (root / "LGG").is_dir()):
        raise DataError(f"data root {root}: release {release} expects HGG/ and LGG/ folders")
    folders = _case_folders(root, nested)
    if not folders:
        where = "HGG/ or LGG/" if nested else "it"
        raise DataError(f"data root {root}: no case folders with NIfTI files found in {where}")
    cases = [read_case_folder(d, modalities, require_seg, release) for d in folders]
    cases.sort(key=lambda c: c.case_id)
    for a, b in zip(cases, cases[1:], strict=False):
        if a.case_id == b.case_id:
            raise DataError(f"data root {root}: case {a.case_id} in {a.folder} and {b.folder}")
    return CaseIndex(root=root, release=release, scheme=release_scheme(release), cases=tuple(cases))
