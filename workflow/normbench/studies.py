"""Study registry: the scientific questions a config can enable.

A study's grid and training settings live in the config; its name selects
its report (``reports.REPORTS``) and says what it is about."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Study:
    title: str
    question: str
    source: str = ""
    runner: str = "network"  # network: train.Trainer; linear_gd: feature_scaling.train


STUDIES: dict[str, Study] = {
    "lr_bs_sweep": Study(
        "Learning rate × batch size", "How large a learning rate does each normalizer tolerate, and how fast "
        "does it reach a target accuracy?", "Ioffe & Szegedy 2015"),
    "bn_placement": Study(
        "BN before vs after the nonlinearity", "Does BN work better before or after the activation, with or "
        "without its affine parameters?", "ducha-aiki/caffenet-benchmark"),
    "gn_small_batch": Study(
        "Group Norm at small batches", "BN's error grows as the batch shrinks; does GN's?", "Wu & He 2018"),
    "santurkar": Study(
        "How does BN help optimization?", "Does BN reduce internal covariate shift, or smooth the loss "
        "landscape? Noisy BN and ℓp BN.", "Santurkar et al. 2018"),
    "bjorck": Study(
        "Understanding BN", "How far can one step along the gradient go, and how do activations grow with "
        "depth, with and without BN?", "Bjorck et al. 2018"),
    "depth_stats": Study(
        "Activations through depth", "Activation std through a 100-layer MLP: default init, Kaiming init, "
        "BN before and after ReLU.", "He et al. 2015; Ioffe & Szegedy 2015"),
    "feature_scaling": Study(
        "Input feature scaling", "How does rescaling two features reshape a linear model's error surface and "
        "gradient descent?", "LeCun et al. 1998 (Efficient BackProp)", runner="linear_gd"),
}


def check_study(name: str) -> Study:
    try:
        return STUDIES[name]
    except KeyError:
        raise ConfigError(f"studies: {name!r} is not a known study; valid: {', '.join(STUDIES)}") from None
