"""bf16 mode: on CUDA a conv net trains in channels_last (bf16 convolutions are fast in NHWC only)
with BN's statistics in float32; on the CPU nothing changes layout."""

import pytest
import torch

from normbench.data import load_dataset
from normbench.layers import BatchNorm2d
from normbench.settings import RunConfig
from normbench.train import Trainer


def conv_trainer(device, **kw):
    cfg = RunConfig.from_dict({"model": "vgg", "model_options": {"layers": [8, 8, "M"]}, "norm": "bn", "bf16": True,
                               "steps": 3, "eval_every": 3, **kw})
    return Trainer([cfg], load_dataset("digits", "resources", device))


def test_cpu_bf16_keeps_the_layout():
    t = conv_trainer("cpu")
    assert t.models[0][1][0].weight.is_contiguous()  # 8 → 8 channels: NCHW and NHWC differ


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_trains_channels_last_with_float32_bn_statistics():
    t = conv_trainer("cuda", batch_size=8, workers=2)
    conv = t.models[0][1][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    t.run()
    bn = [m for m in t.models[0].modules() if isinstance(m, BatchNorm2d)]
    assert bn and all(m.running_mean.dtype == m.running_var.dtype == torch.float32 for m in bn)
    assert all(torch.isfinite(m.running_var).all() and (m.running_var != 1).any() for m in bn)
