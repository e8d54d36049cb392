"""Losses of RIRN (Su et al., Neural Networks 2024), functional first, with thin module wrappers.

=============  =========================================  ================================
equation       function                                   module
=============  =========================================  ================================
Eq. 1          :func:`dice_loss`                          :mod:`rirn.losses.dice`
Eq. 1 + BCE    :func:`dice_bce_loss` (``loss.seg``)        :mod:`rirn.losses.dice`
(not paper)    :func:`deep_supervision_loss`              :mod:`rirn.losses.dice`
               (``model.deep_supervision``)
Eq. 2-5        :func:`crr_loss` (``region_masks``,         :mod:`rirn.losses.crr`
               ``region_centres``, ``region_relation``)
Eq. 6-7        :func:`relation`, :func:`car_loss`         :mod:`rirn.losses.car`
Eq. 8          :func:`discriminator_loss`,                :mod:`rirn.losses.adv`
               :func:`adversarial_loss`
baseline       :func:`kd_loss` (logit KD, ``loss.kd``)     :mod:`rirn.losses.kd`
baseline       :func:`feature_loss` (feature KD,          :mod:`rirn.losses.feature`
               ``loss.feature``)
=============  =========================================  ================================

The two baselines are not in the paper: they are the plain knowledge-transfer losses that RIRN's
relation terms are compared against (``configs/experiment/kd_comparison.yaml``).

All losses return float32 scalars (float64 for float64 inputs) and work with autocast on;
teacher inputs never receive a gradient. See ``docs/method.md`` for the reading of the paper.
"""

from rirn.losses.adv import adversarial_loss, discriminator_loss
from rirn.losses.car import DEFAULT_CAR_CHUNK, CARLoss, car_loss, relation
from rirn.losses.crr import (
    AGGREGATIONS,
    CRRLoss,
    crr_loss,
    region_centres,
    region_masks,
    region_relation,
)
from rirn.losses.dice import (
    DEFAULT_DICE_EPS,
    SEG_LOSSES,
    DiceLoss,
    bce_loss,
    deep_supervision_loss,
    deep_supervision_weights,
    dice_bce_loss,
    dice_loss,
    segmentation_loss,
)
from rirn.losses.feature import FEATURE_NORM_EPS, FeatureLoss, feature_loss, standardize_channels
from rirn.losses.kd import DEFAULT_KD_TEMPERATURE, KDLoss, kd_loss

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_CAR_CHUNK",
    "DEFAULT_DICE_EPS",
    "DEFAULT_KD_TEMPERATURE",
    "FEATURE_NORM_EPS",
    "CARLoss",
    "CRRLoss",
    "SEG_LOSSES",
    "DiceLoss",
    "FeatureLoss",
    "KDLoss",
    "bce_loss",
    "dice_bce_loss",
    "adversarial_loss",
    "car_loss",
    "crr_loss",
    "deep_supervision_loss",
    "deep_supervision_weights",
    "dice_loss",
    "discriminator_loss",
    "feature_loss",
    "kd_loss",
    "region_centres",
    "segmentation_loss",
    "region_masks",
    "region_relation",
    "relation",
    "standardize_channels",
]
