"""Settings that differ between the runs of one sweep although no report table tells them apart.

The report groups runs by their :class:`~rirn.evaluation.variants.Variant` (subset, loss
switches, the settings of the enabled terms) and by seed. Anything else, such as a loss weight,
``model.head_prior`` or the number of epochs, is assumed equal within a sweep. It is equal for
one ``-m`` launch, but not when runs with other overrides are trained into the same folder:
those would be averaged into the same rows without a word. :func:`recipe_differences` finds
such keys so that the report can name them.
"""

from __future__ import annotations

from collections.abc import Mapping

from rirn.training.resume import LEGACY_LOSS, RESUME_OPTIM, flatten_config

#: Keys that differ between the runs of a sweep by design (what a sweep varies, where the
#: files go, how a run is shown) or that cannot change the result (the loader's workers).
PER_RUN_KEYS: frozenset[str] = frozenset(
    {
        "seed",
        "modality",
        "resume",
        "data.synthetic.seed",
        "data.split_seed",
        "data.split_file",
        "data.cache_root",
        "data.cache_dir",
        "data.num_workers",
        "data.preprocess_workers",
        "teacher.checkpoint",
        "trainer.progress",
        "trainer.device",
        "trainer.log_every_n_steps",
    }
)
#: ``loss`` keys that are part of a run's variant: the tables already tell them apart.
VARIANT_KEYS: frozenset[str] = frozenset(
    f"loss.{k}"
    for k in (
        "crr",
        "mf",
        "car",
        "adv",
        "kd",
        "feature",
        "aggregation",
        "car_normalize",
        "car_temperature",
        "kd_temperature",
        "feature_norm",
    )
)
#: What a key missing from an older run's config meant: the behaviour before the key existed.
LEGACY: dict[str, object] = {
    **{f"loss.{k}": v for k, v in LEGACY_LOSS.items()},
    **{f"optim.{k}": v for k, v in RESUME_OPTIM.items()},
    "model.head_prior": None,
    "data.fg_regions": ("WT", "TC", "ET"),  # every region, before the key existed
}
#: The value written for a key a run's config does not have and :data:`LEGACY` does not know.
ABSENT = "(absent)"


def _shown(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    return str(value)


def recipe_differences(configs: Mapping[str, Mapping]) -> dict[str, dict[str, list[str]]]:
    """The settings that are not the same in every run, outside :data:`PER_RUN_KEYS` and
    :data:`VARIANT_KEYS`.

    Args:
        configs: run name -> its resolved config (a plain nested dict, e.g. the run's
            ``.hydra/config.yaml``).

    Returns:
        ``{key: {value as written: [run names]}}`` for each differing key (sorted by key;
        values by their first run), e.g. ``{"model.head_prior": {"0.12": ["a"], "null":
        ["b", "c"]}}``. A key missing from a run reads as its :data:`LEGACY` value, else as
        :data:`ABSENT`. Ints and floats of the same value are equal (``1 == 1.0``).
    """
    flat = {name: flatten_config(cfg) for name, cfg in configs.items()}
    keys = sorted(set().union(*flat.values()) - PER_RUN_KEYS - VARIANT_KEYS) if flat else []
    out: dict[str, dict[str, list[str]]] = {}
    for key in keys:
        by_value: dict[object, list[str]] = {}
        for name, values in flat.items():
            value = values[key] if key in values else LEGACY.get(key, ABSENT)
            by_value.setdefault(value, []).append(name)
        if len(by_value) > 1:
            out[key] = {_shown(v): names for v, names in by_value.items()}
    return out


def difference_lines(
    differences: Mapping[str, Mapping[str, list[str]]], most: int = 3
) -> list[str]:
    """The report's list item for :func:`recipe_differences` (``[]`` when there are none):
    each key with its values and how many runs have each; the runs of every value but the
    most common are named (up to ``most`` of them)."""
    if not differences:
        return []

    def part(key: str, values: Mapping[str, list[str]]) -> str:
        common = max(values, key=lambda v: len(values[v]))
        cells = []
        for value, names in values.items():
            cell = f"{value} in {len(names)} run{'s' * (len(names) != 1)}"
            if value != common:
                more = f" and {len(names) - most} more" if len(names) > most else ""
                cell += " (" + ", ".join(f"`{n}`" for n in names[:most]) + more + ")"
            cells.append(cell)
        return f"`{key}`: " + ", ".join(cells)

    return [
        "- **Settings that differ between runs but that no table tells apart** (such runs are "
        "averaged into the same rows; train them into separate sweep folders): "
        + "; ".join(part(k, v) for k, v in differences.items())
    ]
