"""The CLIP backbone layer: names, files, the tiny model, precision, errors."""
from __future__ import annotations

import logging
import os

import open_clip
import pytest
import torch

from trainers.parts import backbone
from trainers.parts.backbone import COOP_TO_OPENCLIP, load_clip, resolve_precision, tiny_checkpoint


@pytest.mark.parametrize("name", ["RN50", "RN101", "ViT-B/32", "ViT-B/16", "ViT-L/14"])
def test_coop_names_map_to_openclip_models_with_openai_weights(name):
    arch = COOP_TO_OPENCLIP[name]
    assert arch in open_clip.list_models()
    assert "openai" in open_clip.list_pretrained_tags_by_model(arch)


@pytest.mark.slow  # builds a full-size ViT-B/32
def test_random_weights_build_the_named_architecture():
    model = load_clip("ViT-B/32", pretrained=False)
    assert model.visual.conv1.kernel_size == (32, 32)
    assert model.text_projection.shape == (512, 512)
    assert not any(p.requires_grad for p in model.parameters())


def test_tiny_is_written_once_and_loaded_like_real_weights(softcpt_cache, caplog):
    path = tiny_checkpoint()
    mtime = os.path.getmtime(path)
    with caplog.at_level(logging.WARNING, logger="trainers.parts.backbone"):
        a = load_clip("tiny")
    assert "accuracies mean nothing" in caplog.text
    assert os.path.getmtime(tiny_checkpoint()) == mtime
    b = open_clip.load_openai_model(path, precision="fp32", device="cpu")
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    assert a.visual.image_size == (32, 32)


def test_tiny_b16_has_vit_b16s_structure_at_small_size(tiny_b16_clip):
    """Several heads and layers in both towers, open_clip's plain blocks, read from an OpenAI file."""
    for tower in (tiny_b16_clip.transformer, tiny_b16_clip.visual.transformer):
        assert len(tower.resblocks) == 3
        assert {type(b).__name__ for b in tower.resblocks} == {"ResidualAttentionBlock"}
        assert {b.attn.num_heads for b in tower.resblocks} == {4}
    assert tiny_b16_clip.text_projection.shape == (256, 128)  # width > joint dimension, as ViT-B/16
    assert tiny_b16_clip.context_length == 77
    assert os.path.isfile(tiny_checkpoint(name="tiny-b16"))


def test_tiny_weights_depend_only_on_the_seed(tmp_path):
    other = torch.load(tiny_checkpoint(str(tmp_path)), weights_only=True)
    ours = torch.load(tiny_checkpoint(), weights_only=True)
    assert all(torch.equal(other[k], ours[k]) for k in ours)


def test_a_checkpoint_file_path_is_a_backbone_name(tmp_path, tiny_clip):
    path = tmp_path / "my_clip.pt"
    torch.save(tiny_clip.state_dict(), path)
    model = load_clip(str(path))
    assert torch.equal(model.token_embedding.weight, tiny_clip.token_embedding.weight)


def test_coop_name_uses_the_clip_cache_file_before_downloading(monkeypatch, tmp_path):
    monkeypatch.setattr(backbone, "OPENAI_CACHE", str(tmp_path))
    cached = backbone.openai_cache_file("ViT-B/16")
    assert cached == str(tmp_path / "ViT-B-16.pt")
    torch.save(torch.load(tiny_checkpoint(), weights_only=True), cached)
    model = load_clip("ViT-B/16")  # the tiny weights, under a CoOp name
    assert model.visual.image_size == (32, 32)


def test_failed_download_says_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(backbone, "OPENAI_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(open_clip, "load_openai_model", offline)
    with pytest.raises(RuntimeError, match=str(tmp_path / "RN50.pt")):
        load_clip("RN50")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="ViT-B/16"):
        load_clip("ResNet-9000")


def test_openclip_model_needs_a_pretrained_tag():
    with pytest.raises(ValueError, match="PRETRAINED_TAG"):
        load_clip("ViT-B-32")


def test_fp16_and_amp_fall_back_to_fp32_on_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="trainers.parts.backbone"):
        assert resolve_precision("fp16", "cpu") == "fp32"
        assert resolve_precision("amp", "cpu") == "fp32"
    assert "needs a GPU" in caplog.text
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("bf17", "cpu")
