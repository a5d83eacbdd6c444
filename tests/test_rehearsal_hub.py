"""The rehearsal hub (mini shape): random-weight models written under the paper's hub ids load through
the project's UNCHANGED loaders with HF_HUB_OFFLINE=1. Each load runs in a subprocess, because
huggingface_hub reads HF_HOME when it is imported; one probe script per fixture loads everything
and reports shapes as JSON, and each test checks its part (a failed load is reported, not fatal)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from prpg.core.models import PAPER_BACKBONES, PAPER_GENERATOR
from prpg.rehearsal import hub

PROMPT = "a photo of <new1> mug"
# OpenAI CLIP's (= SD 1.5's) ids for PROMPT: <new1> splits into "<", "new", "1", ">".
PROMPT_IDS = [49406, 320, 1125, 539, 283, 686, 272, 285, 9722, 49407]

_PROBE_HEAD = '''
import json, sys, traceback
import numpy as np, torch
from PIL import Image

results = {}

def probe(name):
    def run(fn):
        try:
            results[name] = fn()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    return run

def photo(seed, h=48, w=64):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
'''

HUB_PROBE = _PROBE_HEAD + '''
@probe("generator")
def _():
    from prpg.core.models import load_generator, PAPER_GENERATOR
    from prpg.zoo.generator import sample
    pipe = load_generator(PAPER_GENERATOR)
    emb, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    image = sample(pipe, [PROMPT], seed=0, steps=2)[0]
    return {"classes": {k: type(v).__name__ for k, v in pipe.components.items()},
            "native": pipe.unet.config.sample_size * pipe.vae_scale_factor,
            "ids": pipe.tokenizer(PROMPT).input_ids, "embeds": list(emb.shape), "negative": list(neg.shape),
            "image": list(image.size), "scheduler": dict(pipe.scheduler.config)}

for name in ("dinov2_vitb14", "clip_vitb16", "mae_vitb16"):
    @probe(name)
    def _(name=name):
        from prpg.core.models import load_backbone
        model = load_backbone(name).eval()
        with torch.no_grad():
            pooled = model(torch.randn(2, 3, 224, 224))
            tokens = model.forward_features(torch.randn(1, 3, 224, 224))
        return {"pooled": list(pooled.shape), "tokens": list(tokens.shape),
                "act": type(model.blocks[0].mlp.act).__name__,
                "input_size": list(model.pretrained_cfg["input_size"]),
                "finite": bool(torch.isfinite(tokens).all())}

@probe("sam")
def _():
    from prpg.filter.filtering import load_sam
    model, processor = load_sam("facebook/sam-vit-huge")
    inputs = processor(images=photo(0), input_points=[[[10.0, 20.0], [30.0, 5.0]]], input_labels=[[1, 1]],
                       return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=True)
    masks = processor.image_processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                                         inputs["reshaped_input_sizes"])[0][0]
    return {"hidden": model.config.vision_config.hidden_size, "pred_masks": list(out.pred_masks.shape),
            "iou": list(out.iou_scores.shape), "masks": list(masks.shape)}

print("PROBE" + json.dumps(results))
'''

DREAMSIM_PROBE = _PROBE_HEAD + '''
@probe("dreamsim")
def _():
    from prpg.filter.similarity import DreamSimModel, default_dreamsim_cache
    hub_dir = torch.hub.get_dir()
    model = DreamSimModel(default_dreamsim_cache(), device="cpu", allow_download=False)  # PRPG_DREAMSIM_CACHE
    emb = model.embed([photo(0), photo(1, 30, 90), photo(2)])
    lora_b = [v for k, v in model.model.state_dict().items() if "lora_B" in k]
    return {"shape": list(emb.shape), "norms": emb.norm(dim=1).tolist(), "n_lora_b": len(lora_b),
            "lora_b_zero": [bool((v == 0).all()) for v in lora_b],
            "hub_dir_restored": torch.hub.get_dir() == hub_dir}

print("PROBE" + json.dumps(results))
'''


def run_probe(script: str, env: dict[str, str], cwd: Path) -> dict:
    full_env = {**os.environ, **env, "OMP_NUM_THREADS": "2"}
    code = f"PROMPT = {PROMPT!r}\n" + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-c", code], env=full_env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE")]
    assert proc.returncode == 0 and lines, (
        f"probe failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1].removeprefix("PROBE"))


def part(results: dict, name: str) -> dict:
    assert "error" not in results[name], f"{name} did not load offline:\n{results[name]['error']}"
    return results[name]


@pytest.fixture(scope="session")
def mini_hub(tmp_path_factory) -> Path:
    hf_home = tmp_path_factory.mktemp("rehearsal") / "hf"
    hub.build_hub(hf_home, "mini")
    return hf_home


@pytest.fixture(scope="session")
def hub_results(mini_hub) -> dict:
    return run_probe(HUB_PROBE, hub.offline_env(mini_hub), mini_hub.parent)


@pytest.fixture(scope="session")
def dreamsim_results(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dreamsim")
    cache = hub.build_dreamsim(root / "cache", "mini")
    try:  # an empty HF_HOME: DreamSim needs nothing from the hub
        yield run_probe(DREAMSIM_PROBE, hub.offline_env(root / "hf", cache), root)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # ~1 GB of ViT-Bs; pytest keeps old tmp dirs around


def test_hub_layout_is_the_hf_cache_layout_and_a_rebuild_is_a_no_op(mini_hub):
    t0 = time.perf_counter()
    again = hub.build_hub(mini_hub, "mini")
    assert time.perf_counter() - t0 < 1.0
    assert set(again) == {PAPER_GENERATOR, *PAPER_BACKBONES.values(), "facebook/sam-vit-huge"}
    for repo_id, snapshot in again.items():
        repo = mini_hub / "hub" / ("models--" + repo_id.replace("/", "--"))
        assert (repo / "refs" / "main").read_text() == hub.COMMIT == snapshot.name
        assert snapshot.parent == repo / "snapshots"
        assert not list(repo.rglob("*.bin")), "weights are safetensors"
    gen = again[PAPER_GENERATOR]
    for f in ["model_index.json", "scheduler/scheduler_config.json",
              "feature_extractor/preprocessor_config.json",
              "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
              "tokenizer/special_tokens_map.json", "unet/diffusion_pytorch_model.safetensors",
              "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"]:
        assert (gen / f).is_file(), f
    config = json.loads((again[PAPER_BACKBONES["dinov2_vitb14"]] / "config.json").read_text())
    assert config["architecture"] == "vit_base_patch14_dinov2" and config["model_args"] == hub.MINI_VIT_ARGS


def test_generator_loads_offline_and_samples_at_native_resolution(hub_results):
    r = part(hub_results, "generator")
    assert r["classes"]["unet"] == "UNet2DConditionModel" and r["classes"]["vae"] == "AutoencoderKL"
    assert r["classes"]["text_encoder"] == "CLIPTextModel" and r["classes"]["tokenizer"] == "CLIPTokenizer"
    assert r["classes"]["scheduler"] == "PNDMScheduler" and r["classes"]["safety_checker"] == "NoneType"
    assert r["native"] == 64 and r["image"] == [64, 64]
    assert r["ids"] == PROMPT_IDS
    assert r["embeds"] == r["negative"] == [1, 77, 32]
    s = r["scheduler"]
    assert (s["beta_start"], s["beta_end"], s["beta_schedule"], s["num_train_timesteps"]) == (
        0.00085, 0.012, "scaled_linear", 1000)
    assert s["skip_prk_steps"] and s["steps_offset"] == 1 and not s["set_alpha_to_one"]


@pytest.mark.parametrize("name, tokens", [("dinov2_vitb14", 1 + 16 * 16), ("clip_vitb16", 1 + 14 * 14),
                                          ("mae_vitb16", 1 + 14 * 14)])
def test_backbones_load_offline_and_run_at_224(hub_results, name, tokens):
    r = part(hub_results, name)
    dim = hub.MINI_VIT_ARGS["embed_dim"]
    assert r["pooled"] == [2, dim] and r["tokens"] == [1, tokens, dim] and r["finite"]
    assert r["act"] == ("QuickGELU" if name == "clip_vitb16" else "GELU")  # the loader's CLIP fix applies
    assert r["input_size"] == ([3, 518, 518] if name == "dinov2_vitb14" else [3, 224, 224])


def test_sam_loads_offline_and_predicts_three_masks(hub_results):
    r = part(hub_results, "sam")
    assert r["hidden"] == 32
    assert r["pred_masks"] == [1, 1, 3, 256, 256] and r["iou"] == [1, 1, 3]
    assert r["masks"] == [3, 48, 64]  # back at the photo's size


def test_dreamsim_loads_offline_with_its_lora_and_embeds_unit_rows(dreamsim_results):
    r = part(dreamsim_results, "dreamsim")
    assert r["shape"] == [3, 768 + 512 + 512]  # DINO CLS + CLIP and OpenCLIP embeddings
    assert all(abs(n - 1) < 1e-4 for n in r["norms"])
    assert r["n_lora_b"] == 3 * 12 and not any(r["lora_b_zero"]), "the random adapter weights were loaded"
    assert r["hub_dir_restored"]


def test_random_weights_are_seeded():
    a, b, c = (hub.random_model("sam", "mini", seed=s).state_dict() for s in (0, 0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["vision_encoder.patch_embed.projection.weight"],
                           c["vision_encoder.patch_embed.projection.weight"])


def test_unknown_shape_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown rehearsal shape 'huge'"):
        hub.build_hub(tmp_path, "huge")
    with pytest.raises(ValueError, match="unknown rehearsal shape"):
        hub.build_dreamsim(tmp_path / "ds", "huge")
    real = hub.repo_folder(tmp_path, PAPER_BACKBONES["mae_vitb16"])
    (real / "snapshots").mkdir(parents=True)  # as if the real model had been downloaded here
    with pytest.raises(FileExistsError, match="not written by prpg.rehearsal.hub"):
        hub.build_hub(tmp_path, "mini", generator=False, backbones=["mae_vitb16"], sam=False)


# Published parameter counts (SD 1.5 components; timm's ViT-Bs; SAM ViT-H as transformers counts it,
# tied positional embedding once), so the paper-shape configs cannot drift.
PAPER_PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480, "sam": 641_090_864,
                "dinov2_vitb14": 86_579_712, "clip_vitb16": 86_193_152, "mae_vitb16": 85_798_656}


def test_paper_shape_architectures_have_the_published_parameter_counts():
    for name, expected in PAPER_PARAMS.items():
        model = hub.empty_model(name, "paper")  # meta parameters: no weights, no memory
        assert sum(p.numel() for p in model.parameters()) == expected, name
