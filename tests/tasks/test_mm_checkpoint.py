"""The official Swin-Transformer-Object-Detection layout converter and the TimmSwin backbone."""
from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("mmdet", reason="needs the mm stack (make setup-mm)")
pytestmark = pytest.mark.mm

from vitquant.errors import UserError  # noqa: E402
from vitquant.tasks.mm_checkpoint import convert_official_swin, load_detector_checkpoint  # noqa: E402
from vitquant.tasks.mm_swin import TimmSwin  # noqa: E402

SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


def official_layout(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A TimmSwin state dict written the way the official mmdet 2.x Swin code saves it."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[prefix + key] = value
        if key.endswith("relative_position_bias_table"):  # persistent buffer in the official code
            out[prefix + key.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49)
    return out


@pytest.fixture
def backbone() -> TimmSwin:
    model = TimmSwin(**SWIN).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def test_official_keys_map_onto_timm_swin(backbone):
    official = official_layout(backbone.state_dict(), "backbone.")
    assert "backbone.layers.0.downsample.reduction.weight" in official and "backbone.norm3.weight" in official
    converted = convert_official_swin({**official, "neck.fpn_convs.0.conv.weight": torch.ones(1)})
    expected = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    assert set(converted) == set(expected) | {"neck.fpn_convs.0.conv.weight"}
    assert all(torch.equal(converted[k], v) for k, v in expected.items())


def test_timm_swin_with_official_weights_matches_mmdet_swin(backbone):
    """Same numbers as mmdet's own SwinTransformer (official order: pad to the window, then shift)."""
    from mmdet.models.backbones.swin import SwinTransformer, swin_converter

    theirs = SwinTransformer(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, init_cfg=None)
    theirs.eval()
    official = {k: v for k, v in official_layout(backbone.state_dict()).items() if "relative_position_index" not in k}
    state = {k.removeprefix("backbone."): v for k, v in swin_converter(official).items()}
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected and all("relative_position_index" in k for k in missing)
    x = torch.randn(1, 3, 96, 128)  # 24x32 tokens: not a multiple of the window, so blocks pad
    with torch.no_grad():
        for ours, ref in zip(backbone(x), theirs(x), strict=True):
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_official_detector_file_loads(backbone, tmp_path):
    """An mmdet 2.x checkpoint ({'meta', 'state_dict'}, official keys) loads into a net with TimmSwin."""
    net = torch.nn.Module()
    net.backbone = TimmSwin(**SWIN)
    path = tmp_path / "official.pth"
    torch.save({"meta": {"mmdet_version": "2.11.0", "CLASSES": ("person",)},
                "state_dict": official_layout(backbone.state_dict(), "backbone.")}, path)
    load_detector_checkpoint(net, path)
    assert all(torch.equal(net.backbone.state_dict()[k], v) for k, v in backbone.state_dict().items())


def test_classification_checkpoint_is_refused(backbone, tmp_path):
    net = torch.nn.Module()
    net.backbone = TimmSwin(**SWIN)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(16, 3, 4, 4), "head.weight": torch.zeros(10, 16)}},
               path)
    with pytest.raises(UserError, match="classification or backbone-only"):
        load_detector_checkpoint(net, path)


def test_timm_swin_reports_the_widths_of_its_outputs():
    """``channels`` is what a neck reads: one width per returned map, also for a subset of stages."""
    model = TimmSwin(**SWIN, out_indices=(1, 3)).eval()
    outs = model(torch.zeros(1, 3, 64, 64))
    assert model.channels == [o.shape[1] for o in outs] == [32, 128]
