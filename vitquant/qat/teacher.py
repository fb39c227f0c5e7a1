"""The online distillation teacher: the float model by default, or any timm model + checkpoint.

``teacher=float`` with neither ``arch`` nor ``checkpoint`` reuses the float model the student was
made from (self-distillation, VVTQ's setting with an FKD-trained FP model). ``teacher.checkpoint``
alone loads other weights into the student's architecture; ``teacher.arch`` picks another timm
model. The teacher sees the student's crops, so it must share the input size and normalisation.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from vitquant.models.build import build_model


def build_teacher(teacher_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
                  fp_model: nn.Module) -> nn.Module | None:
    """The frozen teacher in eval mode, or None for ``teacher=none``."""
    if teacher_cfg.get("name") == "none":
        return None
    arch, checkpoint = teacher_cfg.get("arch"), teacher_cfg.get("checkpoint")
    if arch is None and checkpoint is None:
        teacher = fp_model
    else:
        cfg = dict(model_cfg)
        if arch is not None:
            cfg.update(arch=arch, kwargs=teacher_cfg.get("kwargs") or {})
        cfg.update(checkpoint=checkpoint, pretrained=bool(teacher_cfg.get("pretrained", False)))
        teacher = build_model(cfg).to(next(fp_model.parameters()).device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()
