"""Loading float checkpoints: formats, wrappers, prefixes, pos-embed resampling, one-line errors."""
from __future__ import annotations

import argparse
import re

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from vitquant.models.checkpoint import CheckpointError, load_checkpoint


def fresh_vit(**overrides) -> VisionTransformer:
    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, "num_classes": 10}
    kwargs |= overrides
    return VisionTransformer(**kwargs).eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model": sd, "epoch": 3},
    lambda sd: {"state_dict": sd},
    lambda sd: {"model_ema": sd},
    lambda sd: {"state_dict": {"model": sd}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
], ids=["plain", "model", "state_dict", "model_ema", "nested", "module_prefix", "compiled_ddp"])
def test_wrapped_state_dicts_load(tmp_path, tiny_vit, wrap):
    path = tmp_path / "w.pth"
    torch.save(wrap(tiny_vit.state_dict()), path)
    assert_same_weights(load_checkpoint(fresh_vit(), path), tiny_vit)


def test_safetensors(tmp_path, tiny_vit):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, str(path))
    assert_same_weights(load_checkpoint(fresh_vit(), path), tiny_vit)


def test_official_deit_layout_with_pickled_namespace(tmp_path, tiny_vit):
    """DeiT's main.py saves {'model', 'optimizer', 'epoch', 'args': argparse.Namespace}."""
    path = tmp_path / "deit.pth"
    torch.save({"model": tiny_vit.state_dict(), "optimizer": {"state": {}}, "epoch": 299,
                "args": argparse.Namespace(model="deit_tiny_patch16_224", lr=5e-4)}, path)
    assert_same_weights(load_checkpoint(fresh_vit(), path), tiny_vit)


def test_other_pickled_classes_stay_refused(tmp_path, tiny_vit):
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_vit.state_dict(), "extra": torch.nn.ReLU()}, path)
    with pytest.raises(CheckpointError, match="corrupt or not a weights file"):
        load_checkpoint(fresh_vit(), path)


def test_pos_embed_is_resampled_to_the_model_grid(tmp_path):
    source = fresh_vit(img_size=64)  # 8×8 patch grid; the target has 4×4
    torch.save(source.state_dict(), tmp_path / "w.pth")
    target = load_checkpoint(fresh_vit(), tmp_path / "w.pth")
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=[4, 4], num_prefix_tokens=1)
    assert target.pos_embed.shape == (1, 17, 48)
    torch.testing.assert_close(target.pos_embed.detach(), expected)
    torch.testing.assert_close(target.pos_embed[:, 0], source.pos_embed[:, 0])  # class token kept as is
    torch.testing.assert_close(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_original_swin_layout_is_converted(tmp_path, tiny_swin):
    """Microsoft's Swin files downsample at the end of a stage and store index buffers."""
    old = {}
    for key, value in tiny_swin.state_dict().items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        old[key.replace("head.fc.", "head.")] = value
    old["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    torch.save({"model": old}, tmp_path / "swin.pth")
    fresh = type(tiny_swin)(img_size=32, patch_size=2, window_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4),
                            num_classes=10)
    assert_same_weights(load_checkpoint(fresh, tmp_path / "swin.pth"), tiny_swin)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth: file not found; set model.checkpoint"):
        load_checkpoint(fresh_vit(), tmp_path / "nope.pth")


@pytest.mark.parametrize("name", ["bad.pth", "bad.safetensors"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(fresh_vit(), tmp_path / name)
    message = str(info.value)
    assert name in message and "corrupt" in message and "\n" not in message


def test_width_mismatch_names_the_first_key_and_both_shapes(tmp_path, tiny_vit):
    torch.save(tiny_vit.state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(fresh_vit(embed_dim=96), tmp_path / "w.pth")
    assert "cls_token has shape (1, 1, 48) in the checkpoint but (1, 1, 96) in the model" in str(info.value)
    assert "model.kwargs" in str(info.value)


def test_depth_mismatch_names_missing_keys(tmp_path, tiny_vit):
    torch.save(tiny_vit.state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \['blocks\.2\.norm1\.weight'"):
        load_checkpoint(fresh_vit(depth=3), tmp_path / "w.pth")


def test_unexpected_keys_are_named(tmp_path, tiny_vit):
    torch.save(tiny_vit.state_dict() | {"extra.weight": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \['extra\.weight'\]"):
        load_checkpoint(fresh_vit(), tmp_path / "w.pth")


def test_no_state_dict_inside(tmp_path):
    torch.save({"epoch": 3, "args": {"lr": 1.0}}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_checkpoint(fresh_vit(), tmp_path / "w.pth")
