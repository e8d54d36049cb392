"""MRI modality names, aliases and the 15 modality subsets.

The canonical order is the paper's table order ``flair, t1, t1ce, t2``; every tuple of
modalities in rirn is in this order, and the channel order of every input tensor follows it.
"""

from __future__ import annotations

import itertools

from rirn.errors import ConfigError

MODALITIES: tuple[str, str, str, str] = ("flair", "t1", "t1ce", "t2")

#: Alternative spellings (lower case) -> canonical name. 2023+ releases use t1n/t1c/t2w/t2f.
ALIASES: dict[str, str] = {
    "flair": "flair",
    "fl": "flair",
    "t2f": "flair",
    "t2-flair": "flair",
    "t1": "t1",
    "t1n": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2": "t2",
    "t2w": "t2",
}

#: Short names used in the paper's tables.
PAPER_NAMES: dict[str, str] = {"flair": "Fl", "t1": "T1", "t1ce": "T1c", "t2": "T2"}


def canonical_modality(name: str) -> str:
    """Canonical name of one modality (case-insensitive, aliases allowed).

    Raises:
        ConfigError: the name is not a known modality; the message lists the valid names.
    """
    key = name.strip().lower()
    if key not in ALIASES:
        valid = ", ".join(MODALITIES)
        aliases = ", ".join(f"{a}={c}" for a, c in ALIASES.items() if a != c)
        raise ConfigError(
            f"unknown modality {name.strip()!r}; valid: {valid}, all (aliases: {aliases})"
        )
    return ALIASES[key]


def parse_modalities(text: str | list | tuple) -> tuple[str, ...]:
    """Parse a modality subset into a tuple in canonical order.

    Accepts ``"t1ce"``, ``"flair+t1ce"``, ``"T2+fl"`` (any order, aliases, case-insensitive;
    ``+``, ``,`` or spaces as separators), ``"all"``, or a list/tuple of names.

    Example:
        >>> parse_modalities("t2+T1c")
        ('t1ce', 't2')
    """
    if isinstance(text, (list, tuple)):
        parts = [str(p) for p in text]
    else:
        if str(text).strip().lower() == "all":
            return MODALITIES
        parts = str(text).replace(",", "+").replace(" ", "+").split("+")
    parts = [p for p in parts if p.strip()]
    if not parts:
        raise ConfigError(f"empty modality subset {text!r}; valid: {', '.join(MODALITIES)}, all")
    names = {canonical_modality(p) for p in parts}
    return tuple(m for m in MODALITIES if m in names)


def subset_name(subset: tuple[str, ...]) -> str:
    """Canonical string of a subset, e.g. ``("flair", "t1ce") -> "flair+t1ce"``."""
    return "+".join(parse_modalities(list(subset)))


def all_subsets() -> list[tuple[str, ...]]:
    """The 15 non-empty subsets in the paper's table order (Tables 1 and 3).

    Ordered by size, then by canonical order: Fl, T1, T1c, T2, Fl+T1, ..., all four.
    """
    return [c for k in range(1, 5) for c in itertools.combinations(MODALITIES, k)]


def subset_mask(subset: tuple[str, ...]) -> str:
    """The paper's dot notation for a subset, in Fl/T1/T1c/T2 order: ``"◦◦•◦"`` for T1ce."""
    return "".join("•" if m in subset else "◦" for m in MODALITIES)


def channel_indices(subset: tuple[str, ...]) -> list[int]:
    """Indices of ``subset``'s modalities in the canonical 4-channel stack."""
    return [MODALITIES.index(m) for m in subset]
