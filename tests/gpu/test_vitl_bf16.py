"""vit_l forward + backward at 16x224x224 in bf16 on CUDA; prints step time and peak memory."""

import os
import time

import pytest
import torch

from vwm.configfile import load_config
from vwm.masks.collate import Batch
from vwm.masks.multiblock3d import sample_masks
from vwm.tasks.jepa import JepaTask
from vwm.train.engine import LocalEngine

pytestmark = pytest.mark.gpu


def test_vitl_train_step_bf16_cuda():
    device = torch.device("cuda")
    batch_size = int(os.environ.get("VWM_GPU_BATCH", "8"))  # the recipe's per-GPU batch is 24
    cfg = load_config(None, ["model.preset=vit_l", "data.frames=16", "data.crop=224", f"data.batch_size={batch_size}",
                             "train.device=cuda", "train.steps=100"])
    task = JepaTask(cfg, rank=0, device=device, run_name="gpu-check", provenance={})
    engine = LocalEngine(task.build(), cfg.optim, device)
    clips = torch.randint(0, 256, (batch_size, 16, 224, 224, 3), dtype=torch.uint8)
    times = []
    for step in range(6):
        masks = sample_masks(cfg.mask.sets, (8, 14, 14), batch_size, seed=0, epoch=0, step=step, rank=0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss, _ = task.loss(engine, Batch(clips, masks), step)
        engine.backward(loss)
        assert engine.step(1e-4, 0.04) is not None
        task.after_step(engine, step)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        assert torch.isfinite(loss)
    step_s = sorted(times[2:])[len(times[2:]) // 2]
    print(f"vit_l bf16 16x224x224 batch {batch_size}: {step_s:.3f} s/step, {batch_size / step_s:.1f} clips/s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB on {torch.cuda.get_device_name()}")
