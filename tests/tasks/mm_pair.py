"""What the mm task tests share: a float network and its quant twin with every quantizer off."""
from __future__ import annotations

import torch


@torch.no_grad()
def float_and_twin_predictions(cfg) -> tuple:
    """``test_step`` outputs of the float model and of its twin (quantizers disabled) on the first val image."""
    from mmengine.dataset import pseudo_collate

    from vitquant.config import bit_widths
    from vitquant.models.quantize import quantized_twin
    from vitquant.nn.site import set_quant_state
    from vitquant.ptq import build_recipe, build_task

    task = build_task(cfg.task, cfg.model, cfg.data)
    fp = task.build_model()
    q = quantized_twin(fp, build_recipe(cfg.method), list(cfg.policy.kinds), bit_widths(cfg), 0)
    set_quant_state(q, weights=False, activations=False)
    batch = pseudo_collate([task.dataset("val")[0]])
    return fp.net.test_step(batch)[0], q.net.test_step(batch)[0]
