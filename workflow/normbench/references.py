"""Published numbers our reports show beside our own, with their sources and
the settings they were measured in.  ``approx`` marks figures read off a plot.
Reports read these; no published number is copied into a report's prose."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reference:
    source: str
    setting: str
    values: dict = field(default_factory=dict)
    approx: bool = False

    def cite(self) -> str:
        return f"{self.source}{' (approx., read off a figure)' if self.approx else ''}"


CAFFENET_PLACEMENT = Reference(
    "ducha-aiki/caffenet-benchmark, batchnorm.md",
    "ImageNet-2012, CaffeNet128 (fc 2048, no LRN, LSUV init), 128px crops, SGD momentum 0.9, wd 5e-4, "
    "lr 0.01 ×0.1 every 100K, 320K iterations, batch 256; top-1 accuracy / test log loss",
    {  # variant -> (accuracy, log loss)
        "no BN": (0.471, 2.36),
        "BN before ReLU": (0.474, 2.35),
        "BN before ReLU + scale&bias": (0.478, 2.33),
        "BN after ReLU": (0.499, 2.21),
        "BN after ReLU + scale&bias": (0.493, 2.24),
    },
)

CAFFENET_ACTIVATIONS = Reference(
    "ducha-aiki/caffenet-benchmark, batchnorm.md",
    "as above, BN after the activation",
    {"relu": (0.499, 2.21), "prelu": (0.503, 2.19), "elu": (0.498, 2.23), "sigmoid": (0.475, 2.35),
     "tanh": (0.448, 2.50), "identity": (0.384, 2.96)},
)

GN_WU_HE = Reference(
    "Wu & He 2018, Group Normalization (arXiv 1803.08494), Fig. 1 / Table 2",
    "ResNet-50, ImageNet, 8 GPUs, BN statistics per GPU, lr 0.1·N/32, 100 epochs; validation error (%)",
    {"bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
     "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
     "ln": {32: 25.3}, "in": {32: 28.4}, "brn": {4: 26.3}},
)

BN_PAPER_STEPS = Reference(
    "Ioffe & Szegedy 2015, §4.2.2", "Inception on ImageNet: steps to reach 72.2% top-1, best accuracy",
    {"Inception": (31.0e6, 0.722), "BN-Baseline": (13.3e6, 0.727), "BN-x5": (2.1e6, 0.730),
     "BN-x30": (2.7e6, 0.748), "BN-x5-Sigmoid": (None, 0.698)},
)

BN_PAPER_MNIST = Reference(
    "Ioffe & Szegedy 2015, §4.1, Fig. 1", "MNIST, 3 fully connected layers of 100 sigmoid units, small random "
    "Gaussian init, batch 60, 50k steps: BN trains faster and to higher test accuracy", {})

SANTURKAR = Reference(
    "Santurkar et al. 2018 (arXiv 1805.11604)",
    "VGG-like net on CIFAR-10, plain SGD, batch 128, lr 0.1, 15k steps, no augmentation",
    {"test_acc": {"bn": 0.83, "none": 0.80}},
)
SANTURKAR_BETA = Reference("Santurkar et al. 2018, Fig. 4", "VGG on CIFAR-10; effective β-smoothness",
                           {"range": (5, 45)}, approx=True)

BJORCK = Reference(
    "Bjorck et al. 2018 (arXiv 1806.02375)", "ResNet-110, CIFAR-10, SGD",
    {"final_acc": {("bn", 0.1): 0.93, ("bn", 0.003): 0.905, ("bn", 1e-4): 0.81, ("none", 1e-4): 0.82},
     "rel_loss": {"none": 1e6, "bn": 3.0}, "rel_loss_steps": {"none": 3e-3, "bn": 0.1}},
    approx=True,
)

DEPTH_STD = Reference("He et al. 2015; Ioffe & Szegedy 2015",
                      "std of max(z, 0) for z ~ N(0, 1): √(½ − 1/(2π))", {"bn_relu_std": math.sqrt(0.5 - 1 / (2 * math.pi))})

LECUN_SCALING = Reference("LeCun et al. 1998, Efficient BackProp, §4.3",
                          "inputs shifted to zero mean and scaled to unit variance speed up gradient descent", {})

# The batch-independent normalizers' claims (their abstracts' statements; no table numbers are copied).
FRN = Reference(
    "Singh & Krishnan 2020, Filter Response Normalization (arXiv 1911.09737), abstract and Fig. 1",
    "ResNetV2-50 and InceptionV3 on ImageNet, 8 workers: FRN+TLU has no batch dependence; ≈0.7–1.0% better "
    "top-1 than BN at large batches, >1% better than GN at small ones",
    {"vs_bn_large_batch": (0.7, 1.0), "vs_gn_small_batch": 1.0})
EVONORM = Reference(
    "Liu, Brock, Simonyan & Le 2020, Evolving Normalization-Activation Layers (arXiv 2004.02967), abstract",
    "EvoNorm-S0 normalizes with per-sample group statistics (no batch dependence) and is reported to hold "
    "its accuracy at small batches where BN degrades", {})
WS_GN = Reference(
    "Qiao, Wang, Liu, Shen & Yuille 2019, Weight Standardization (arXiv 1903.10520), abstract",
    "GN with Weight Standardization, trained with 1 image per GPU, matches or outperforms BN trained with "
    "large batches (ResNet-50, ImageNet)", {})

XIONG = Reference(
    "Xiong et al. 2020, On Layer Normalization in the Transformer Architecture (arXiv 2002.04745), Fig. 2-3",
    "IWSLT14 De-En, 6+6-layer Transformer, d 512, Adam (0.9, 0.98), lr 5e-4 / 1e-3, warm-up 1, 500 or 4000 steps "
    "then inverse square root; BLEU",
    {"bleu": {("post", "no warm-up"): 8.45, ("post", "warm-up"): 34.0, ("post", "warm-up 500, lr 5e-4"): 31.16,
              ("post", "warm-up 500, lr 1e-3"): 2.77},
     # Fig. 3, at initialization: the expected gradient norm of the FFN's W2 by layer -- Post-LN's grows
     # with the layer index (≈1.6 at the last layer, whatever the depth); Pre-LN's is flat across
     # layers and shrinks as the depth grows (∝ √(ln d / L), their Thm 1)
     "grad_trend": {"post": "grows with the layer index", "pre": "flat; smaller for deeper models"}},
    approx=True,
)

RMSNORM = Reference(
    "Zhang & Sennrich 2019, Root Mean Square Layer Normalization (arXiv 1910.07467), Tables 1-6",
    "RMSNorm (no re-centring, RMS re-scaling only) performs comparably to LayerNorm across the paper's "
    "models at 7-64% less running time", {})

DYT = Reference(
    "Zhu, Chen, He, LeCun & Liu 2025, Transformers without Normalization (arXiv 2503.10622), Tables 1-7",
    "DyT(x) = γ·tanh(αx) + β in place of every LN/RMSNorm, α₀ = 0.5 (non-LLM models): matches or beats the "
    "normalized models, mostly without hyperparameter tuning",
    {"alpha0": 0.5})
