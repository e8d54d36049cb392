"""What a training run trains, as the report tells runs apart: :class:`Variant`.

A run's variant is read from its resolved config (:func:`variant_of`): the student's modality
subset, the loss switches of :data:`SWITCHES` (the RIRN terms of the paper's Table 4, then the
knowledge-transfer baselines ``loss.kd`` and ``loss.feature``) and the settings that change
what an enabled term does: ``loss.aggregation`` when CRR is on, ``loss.car_normalize`` and
``loss.car_temperature`` when CAR is on, ``loss.kd_temperature`` when KD is on,
``loss.feature_norm`` when feature KD is on. A setting of a term that is off is ``None``,
so it never tells two runs apart. A config from before a switch existed reads it as off, and
one from before the CAR options as the paper's relation: the runs of older sweeps keep their
variants.

Everything else (data, epochs, weights, seed) is the same within one ``-m`` launch and is not
part of the variant; when runs trained with other overrides share a folder, the report names
the settings that differ (:mod:`rirn.evaluation.recipes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from rirn.data.modalities import parse_modalities, subset_name
from rirn.losses.car import DEFAULT_CAR_RELATION, PAPER_CAR_RELATION
from rirn.losses.kd import DEFAULT_KD_TEMPERATURE

#: The RIRN switches of ``configs/loss/*.yaml``, in the column order of the paper's Table 4.
RIRN_SWITCHES: tuple[str, ...] = ("crr", "mf", "car", "adv")
#: The knowledge-transfer baselines (``configs/loss/kd.yaml``, ``feature.yaml``).
TRANSFER_SWITCHES: tuple[str, ...] = ("kd", "feature")
#: Every switch a :class:`Variant` holds, in this order.
SWITCHES: tuple[str, ...] = (*RIRN_SWITCHES, *TRANSFER_SWITCHES)


@dataclass(frozen=True)
class Variant:
    """What a run trains, as far as the report's tables tell runs apart.

    Attributes:
        subset: the student's modalities, canonical order.
        switches: ``loss.{crr,mf,car,adv,kd,feature}`` (:data:`SWITCHES`).
        aggregation: ``loss.aggregation``; ``None`` when CRR is off, where it has no effect.
        kd_temperature: ``loss.kd_temperature``; ``None`` when KD is off.
        feature_norm: ``loss.feature_norm``; ``None`` when feature KD is off.
        car_relation: ``(loss.car_normalize, loss.car_temperature)``; ``None`` when CAR is off.
    """

    subset: tuple[str, ...]
    switches: tuple[bool, ...]
    aggregation: str | None
    kd_temperature: float | None = None
    feature_norm: bool | None = None
    car_relation: tuple[bool, float] | None = None

    @property
    def kd(self) -> bool:
        return self.switches[SWITCHES.index("kd")]

    @property
    def feature(self) -> bool:
        return self.switches[SWITCHES.index("feature")]

    @property
    def transfers(self) -> bool:
        """Whether a knowledge-transfer baseline (KD or feature KD) is on."""
        return self.kd or self.feature


def make_variant(
    modality,
    switches: Sequence,
    aggregation: str = "mean",
    kd_temperature: float = DEFAULT_KD_TEMPERATURE,
    feature_norm: bool = False,
    car_relation: tuple[bool, float] = DEFAULT_CAR_RELATION,
) -> Variant:
    """A :class:`Variant` from a modality spelling, the switches in :data:`SWITCHES` order and
    the settings of the terms. Fewer switches than :data:`SWITCHES` are padded with ``False``:
    the four RIRN switches alone mean no knowledge-transfer baseline."""
    if len(switches) > len(SWITCHES):
        raise ValueError(f"{len(switches)} switches given; a variant has {len(SWITCHES)}")
    on = tuple(bool(s) for s in switches) + (False,) * (len(SWITCHES) - len(switches))
    kd, feature = (on[SWITCHES.index(k)] for k in TRANSFER_SWITCHES)
    return Variant(
        parse_modalities(modality),
        on,
        aggregation if on[0] else None,
        float(kd_temperature) if kd else None,
        bool(feature_norm) if feature else None,
        (bool(car_relation[0]), float(car_relation[1])) if on[2] else None,
    )


def variant_of(config: Mapping) -> Variant:
    """The :class:`Variant` of a training config (``.hydra/config.yaml`` or a composed one).

    Raises:
        KeyError: the config has no ``modality`` or no RIRN switches.
        ConfigError: its ``modality`` is not a subset.
    """
    loss = config["loss"]
    switches = [loss[k] for k in RIRN_SWITCHES] + [loss.get(k, False) for k in TRANSFER_SWITCHES]
    return make_variant(
        config["modality"],
        switches,
        str(loss.get("aggregation", "mean")),
        float(loss.get("kd_temperature", DEFAULT_KD_TEMPERATURE)),
        bool(loss.get("feature_norm", False)),
        (
            bool(loss.get("car_normalize", PAPER_CAR_RELATION[0])),
            float(loss.get("car_temperature", PAPER_CAR_RELATION[1])),
        ),
    )


def same_but_car_relation(variant: Variant | None, expected: Variant) -> bool:
    """Whether ``variant`` trains ``expected`` except, perhaps, for CAR's relation (both with
    CAR on): the test by which a row of rirn's default relation takes the runs of a sweep
    trained with another one (the paper's, or rirn before ``loss.car_normalize``)."""
    if variant is None or variant.car_relation is None or expected.car_relation is None:
        return False
    return replace(variant, car_relation=expected.car_relation) == expected


#: Switches -> the loss config of ``configs/loss/`` that sets them.
LOSS_CONFIGS: dict[tuple[bool, ...], str] = {
    (False, False, False, False, False, False): "baseline",
    (True, False, False, False, False, False): "crr",
    (True, True, False, False, False, False): "crr_mf",
    (False, False, True, False, False, False): "car",
    (True, True, True, False, False, False): "crr_mf_car",
    (True, True, True, True, False, False): "rirn",
    (False, False, False, False, True, False): "kd",
    (False, False, False, False, False, True): "feature",
}


def loss_overrides(variant: Variant) -> str:
    """The ``loss`` overrides of ``python -m rirn.train`` that train ``variant``'s loss, e.g.
    ``loss=rirn loss.aggregation=max`` or ``loss=kd loss.crr=true loss.kd_temperature=4``: the
    loss config whose switches differ least, then the switches and settings that differ from
    it. On a tie the config with the same knowledge-transfer switches wins (``loss=kd
    loss.crr=true``, not ``loss=crr loss.kd=true``), then the first in :data:`LOSS_CONFIGS`."""
    transfer = len(RIRN_SWITCHES)

    def distance(item: tuple[str, tuple[bool, ...]]) -> tuple[int, bool]:
        base = item[1]
        differ = sum(a != b for a, b in zip(base, variant.switches, strict=True))
        return differ, base[transfer:] != variant.switches[transfer:]

    name, base = min(((n, s) for s, n in LOSS_CONFIGS.items()), key=distance)
    parts = [f"loss={name}"]
    parts += [
        f"loss.{k}={str(v).lower()}"
        for k, v, b in zip(SWITCHES, variant.switches, base, strict=True)
        if v != b
    ]
    if variant.aggregation not in (None, "mean"):
        parts.append(f"loss.aggregation={variant.aggregation}")
    if variant.kd_temperature not in (None, DEFAULT_KD_TEMPERATURE):
        parts.append(f"loss.kd_temperature={variant.kd_temperature:g}")
    if variant.feature_norm:
        parts.append("loss.feature_norm=true")
    if variant.car_relation not in (None, DEFAULT_CAR_RELATION):
        normalize, temperature = variant.car_relation
        if normalize != DEFAULT_CAR_RELATION[0]:
            parts.append(f"loss.car_normalize={str(normalize).lower()}")
        if temperature != DEFAULT_CAR_RELATION[1]:
            parts.append(f"loss.car_temperature={temperature:g}")
    return " ".join(parts)


def train_overrides(variant: Variant) -> str:
    """``python -m rirn.train`` overrides that train ``variant``, e.g.
    ``modality=t1ce loss=rirn loss.aggregation=max``."""
    return f"modality={subset_name(variant.subset)} {loss_overrides(variant)}"
