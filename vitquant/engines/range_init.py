"""Range initialisation stage: one calibration forward in which each quantizer fits itself.

As in RepQ-ViT and I&S-ViT, the first ``n_images`` calibration images go through the model in a
single batch; each enabled quantizer initialises on the first tensor it sees and quantizes it, so
later layers are calibrated on the already quantized outputs of earlier ones.
"""
from __future__ import annotations

import torch
from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.nn.site import quantized_sites, set_calibrating, set_quant_state


@torch.no_grad()
def init_ranges(model: nn.Module, ctx: CalibContext, weights: bool = True, activations: bool = True,
                n_images: int | None = None, reinit: bool = False) -> None:
    """Initialise the enabled quantizers (weights from the weights, activations from data).

    ``reinit`` forgets earlier initialisation of those quantizers (weights after reparameterization).
    """
    set_quant_state(model, weights=weights, activations=activations)
    if reinit:
        for _, site in quantized_sites(model):
            if site.enabled:
                site.quantizer.initialized.fill_(False)
    images = ctx.images[: n_images or len(ctx.images)].to(ctx.device)
    was_training = model.training
    model.eval()
    set_calibrating(model, True)
    try:
        model(images)
    finally:
        set_calibrating(model, False)
        model.train(was_training)
