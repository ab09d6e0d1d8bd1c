"""vit_l forward + backward at 16x224x224 in bf16 on CUDA; prints step time and peak memory."""

import time

import pytest
import torch

from vwm.config import MaskConfig, ModelConfig, OptimConfig
from vwm.masks.multiblock3d import sample_masks
from vwm.masks.collate import Batch
from vwm.models.jepa import build_models
from vwm.train.engine import LocalEngine
from vwm.train.step import train_step

pytestmark = pytest.mark.gpu


def test_vitl_train_step_bf16_cuda():
    device = torch.device("cuda")
    cfg = ModelConfig(preset="vit_l")
    jepa, target = build_models(cfg, frames=16, crop=224, num_mask_sets=2)
    engine = LocalEngine(jepa, OptimConfig(), device)
    target.to(device)
    batch_size = 8
    clips = torch.randint(0, 256, (batch_size, 16, 224, 224, 3), dtype=torch.uint8)
    times = []
    for step in range(6):
        masks = sample_masks(MaskConfig().sets, (8, 14, 14), batch_size, seed=0, epoch=0, step=step, rank=0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = train_step(engine, target, Batch(clips, masks), step=step, optim=OptimConfig(), total_steps=100,
                         device=device, autocast_dtype=torch.bfloat16)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        assert not out.skipped
    step_s = sorted(times[2:])[len(times[2:]) // 2]
    print(f"vit_l bf16 16x224x224 batch {batch_size}: {step_s:.3f} s/step, {batch_size / step_s:.1f} clips/s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB on {torch.cuda.get_device_name()}")
