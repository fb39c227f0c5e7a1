"""What the mm task tests share: the tiny Swin run overrides, and a float network beside its quant twin
with every quantizer off."""
from __future__ import annotations

import torch

# A randomly initialised micro Swin backbone at 128 px, 2 calibration and 2 evaluation images.
TINY_MM_SWIN = ["model.checkpoint=null", "model.kwargs.embed_dim=16", "model.kwargs.depths=[1,1,2,1]",
                "model.kwargs.num_heads=[1,1,2,2]", "task.max_eval_images=2", "task.image_scale=[128,128]",
                "method.n_calib=2", "logger=none"]


@torch.no_grad()
def float_and_twin_predictions(cfg) -> tuple:
    """``test_step`` outputs of the float model and of its twin (quantizers disabled) on the first val image."""
    from mmengine.dataset import pseudo_collate

    from vitquant.config import bit_widths
    from vitquant.models.quantize import quantized_twin
    from vitquant.nn.site import set_quant_state
    from vitquant.pipelines.common import build_recipe
    from vitquant.tasks.base import build_task

    task = build_task(cfg.task, cfg.model, cfg.data)
    fp = task.build_model()
    q = quantized_twin(fp, build_recipe(cfg.method), list(cfg.policy.kinds), bit_widths(cfg), 0)
    set_quant_state(q, weights=False, activations=False)
    batch = pseudo_collate([task.dataset("val")[0]])
    return fp.net.test_step(batch)[0], q.net.test_step(batch)[0]
