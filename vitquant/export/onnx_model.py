"""The export pipeline's entry into ``vitquant.export``: the graph of a quantized twin, the onnx check, saving.

onnx (the optional ``export`` extra) is imported inside the functions, so importing this module needs only
torch and timm.
"""
from __future__ import annotations

from pathlib import Path

from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitquant.errors import UserError
from vitquant.io.atomic import atomic_write


def export_model(model: nn.Module, image_size: int, quantize: bool = True):
    """``(onnx.ModelProto, ExportReport)`` of a ViT/DeiT or Swin twin, by the timm class it is."""
    from vitquant.export.swin import export_swin
    from vitquant.export.vit import export_vit  # (imported here: onnx is the optional ``export`` extra)

    for cls, export in ((VisionTransformer, export_vit), (SwinTransformer, export_swin)):
        if isinstance(model, cls):
            return export(model, image_size, quantize)
    raise UserError(f"export supports ViT/DeiT (timm VisionTransformer) and Swin (timm SwinTransformer) models, "
                    f"not {type(model).__name__}")


def require_onnx() -> None:
    """One line naming the extra to install when onnx cannot be imported."""
    try:
        import onnx  # noqa: F401 - the optional ``export`` extra
    except ImportError as e:
        raise UserError(f"export.py needs onnx, which cannot be imported ({e}); "
                        "pip install 'vitquant[export]'") from None


def save_onnx(model, path: Path) -> Path:
    """Write the ``onnx.ModelProto`` atomically to ``path``."""
    import onnx

    return atomic_write(path, lambda tmp: onnx.save(model, tmp))
