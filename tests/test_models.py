"""The loading layer, offline: tiny same-architecture models saved locally go through the same
from_pretrained code as the paper's hub models; missing hub models fail at once, clearly."""

import time

import numpy as np
import pytest
import torch

from tests.conftest import toybox_config
from prpg.core.models import ModelNotAvailableError, load_backbone, load_generator
from prpg.zoo.encoder import build_encoder, model_args
from prpg.zoo.generator import build_pipeline, sample
from prpg.zoo.tokenizer import build_clip_tokenizer

TINY_GEN = toybox_config("pretrain.generator", resolution=32, vae_channels=(8, 16),
                         unet_channels=(16, 32), attention_head_dim=4,
                           text_hidden=16, text_layers=1, text_heads=1, max_length=16)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def test_tiny_sd_pipeline_round_trips_through_from_pretrained(tmp_path):
    torch.manual_seed(0)
    pipe = build_pipeline(TINY_GEN, build_clip_tokenizer(tmp_path / "tok", max_length=16))
    pipe.save_pretrained(tmp_path / "gen", safe_serialization=True)
    for sub in ["unet", "vae", "text_encoder"]:
        assert list((tmp_path / "gen" / sub).glob("*.safetensors")), f"{sub} not saved as safetensors"
    assert not list((tmp_path / "gen").rglob("*.bin")) and not list((tmp_path / "gen").rglob("*.pt"))
    loaded = load_generator(tmp_path / "gen")
    assert type(loaded.unet).__name__ == "UNet2DConditionModel" and type(loaded.vae).__name__ == "AutoencoderKL"
    assert type(loaded.text_encoder).__name__ == "CLIPTextModel" and type(loaded.tokenizer).__name__ == "CLIPTokenizer"
    pipe.set_progress_bar_config(disable=True)
    a = np.asarray(sample(pipe, ["a photo of a mug"], seed=3, steps=2)[0])
    b = np.asarray(sample(loaded, ["a photo of a mug"], seed=3, steps=2)[0])
    assert a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a, b)


def test_tiny_vit_round_trips_and_takes_any_input_size(tmp_path):
    from timm.models import save_for_hf

    cfg = toybox_config("pretrain.encoder", image_size=32, resize=36, patch_size=8, embed_dim=32, depth=1,
                        heads=2)
    model = build_encoder(cfg).eval()
    save_for_hf(model, str(tmp_path / "enc"), model_args=model_args(cfg), safe_serialization=True)
    loaded = load_backbone(tmp_path / "enc").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), loaded(x), rtol=0, atol=0)
    assert [n for n, _ in loaded.named_modules() if n.endswith("attn.qkv")], "fused qkv expected (LoRA target)"
    tokens = loaded.forward_features(torch.randn(1, 3, 48, 64))  # non-square, larger than trained
    assert tokens.shape == (1, 1 + (48 // 8) * (64 // 8), 32)


def test_missing_generator_offline_fails_at_once_naming_id_and_cache(offline_hub):
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as err:
        load_generator("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in msg and str(offline_hub) in msg
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in msg


@pytest.mark.parametrize("name,repo", [("dinov2_vitb14", "timm/vit_base_patch14_dinov2.lvd142m"),
                                       ("clip_vitb16", "timm/vit_base_patch16_clip_224.openai"),
                                       ("mae_vitb16", "timm/vit_base_patch16_224.mae")])
def test_missing_backbone_offline_fails_at_once(offline_hub, name, repo):
    with pytest.raises(ModelNotAvailableError, match=repo.replace(".", r"\.")):
        load_backbone(name)


def test_weights_fingerprint_hashes_the_safetensors_of_a_local_model(tmp_path):
    import hashlib

    from prpg.core.models import weights_fingerprint

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet/w.safetensors").write_bytes(b"abc")
    (tmp_path / "unet/config.json").write_text("{}")  # configs are not weights
    by_hand = hashlib.sha256(b"unet/w.safetensors\0abc").hexdigest()[:12]
    assert weights_fingerprint(tmp_path) == by_hand
    (tmp_path / "unet/config.json").write_text('{"x": 1}')
    assert weights_fingerprint(tmp_path) == by_hand
    (tmp_path / "unet/w.safetensors").write_bytes(b"abd")  # retrained weights, same path
    assert weights_fingerprint(tmp_path) != by_hand
    assert weights_fingerprint("stable-diffusion-v1-5/stable-diffusion-v1-5") is None  # a hub id names its weights
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="no \\*.safetensors"):
        weights_fingerprint(tmp_path / "empty")


def test_a_hub_id_may_pin_a_revision():
    from prpg.core.models import split_revision

    assert split_revision("stable-diffusion-v1-5/stable-diffusion-v1-5@39593d5") == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "39593d5")
    assert split_revision("timm/vit_base_patch14_dinov2.lvd142m") == ("timm/vit_base_patch14_dinov2.lvd142m", None)


def test_pinned_revision_missing_offline_names_it(offline_hub):
    with pytest.raises(ModelNotAvailableError, match="@abc123"):
        load_generator("stable-diffusion-v1-5/stable-diffusion-v1-5@abc123")
