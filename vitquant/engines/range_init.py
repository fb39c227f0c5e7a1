"""Range initialisation stage: calibration forwards in which each quantizer fits itself.

As in RepQ-ViT and I&S-ViT, the first ``n_images`` calibration images go through the model in a
single batch; each enabled quantizer initialises on the first tensor it sees and quantizes it, so
later layers are calibrated on the already quantized outputs of earlier ones. Each quantizer keeps
a bounded sample of its tensor (``vitquant.quant.stats``), so the statistics never outgrow the
forward itself.

The forward does outgrow memory at detection resolution (Mask R-CNN Swin-T at 1333×800 holds about
0.46 GB of activations per image on CPU: 15 GB for 32 images in one batch), so a batch of more than
``batch_pixels`` pixels is split into micro-batches of at most that many pixels (2^23: 167 images at
224², so every classification recipe keeps its single batch; 7 images at 1333×800):

1. *warm start* (``warm_start``): the first micro-batch runs as above, so every quantizer starts from
   parameters fitted on quantized inputs;
2. *streaming*: the quantizers that were uninitialised when the stage began observe every micro-batch
   (each its share of a sample of at most ``stream_max_elements`` values, plus exact extrema) while
   quantizing with their warm-start parameters, so later layers still see quantized inputs;
3. each streamed quantizer re-initialises from everything it observed.

Without warm start the streamed activations pass through in float (observer-style calibration).
Peak memory is then one micro-batch's forward plus the samples (at most ``stream_max_elements`` values
per site), independent of the number of calibration images.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from vitquant.engines.context import CalibContext
from vitquant.nn.site import quantized_sites, set_calibrating, set_quant_state, uninitialised_activation_quantizers

log = logging.getLogger(__name__)
DEFAULT_BATCH_PIXELS = 1 << 23
STREAM_MAX_ELEMENTS = 1 << 22


def images_per_forward(images: torch.Tensor, batch_pixels: int | None) -> int:
    """Images per calibration forward: all of them, or as many as fit in ``batch_pixels`` (at least one)."""
    if batch_pixels is None:
        return len(images)
    return max(1, min(len(images), int(batch_pixels) // math.prod(images.shape[2:])))


@torch.no_grad()
def init_ranges(model: nn.Module, ctx: CalibContext, weights: bool = True, activations: bool = True,
                n_images: int | None = None, reinit: bool = False, batch_pixels: int | None = DEFAULT_BATCH_PIXELS,
                stream_max_elements: int = STREAM_MAX_ELEMENTS, warm_start: bool = True) -> None:
    """Initialise the enabled quantizers (weights from the weights, activations from data).

    ``reinit`` forgets earlier initialisation of those quantizers (weights after reparameterization).
    ``batch_pixels`` (None: no limit), ``stream_max_elements`` and ``warm_start``: see the module docstring.
    """
    set_quant_state(model, weights=weights, activations=activations)
    if reinit:
        for _, site in quantized_sites(model):
            if site.enabled:
                site.quantizer.initialized.fill_(False)
    images = ctx.images[: n_images or len(ctx.images)]
    per = images_per_forward(images, batch_pixels)
    ctx.metrics["range_init_batch_images"] = per
    was_training = model.training
    model.eval()
    set_calibrating(model, True)
    try:
        if per >= len(images):
            model(images.to(ctx.device))
            return
        chunks = images.split(per)
        log.info("init_ranges: %d images in %d forwards of at most %d (batch_pixels=%d)",
                 len(images), len(chunks), per, batch_pixels)
        streamed = uninitialised_activation_quantizers(model)
        if warm_start:
            model(chunks[0].to(ctx.device))
        for q in streamed:
            q.start_observing(stream_max_elements)
        try:
            for chunk in chunks:
                for q in streamed:
                    q.sampler.share = len(chunk) / len(images)
                model(chunk.to(ctx.device))
        except BaseException:
            for q in streamed:  # a failed pass initialises nothing from a partial stream
                q.sampler = None
            raise
        for q in streamed:
            q.finish_observing()
    finally:
        set_calibrating(model, False)
        model.train(was_training)
