"""Compare toybox generator recipes at (about) equal CPU cost, judged by the generator gate's probe.

Why: the generator gate (notebooks/00_zoo_gates.py) asks whether samples of "a photo of a {category}"
are recognised as that category; one recipe takes ~40 min on a CPU thread, so recipes are compared
side by side on a GPU (each variant its own process), then the winner is trained on the CPU.

    # here (CPU): the generator's training images at 64 px + the gate's probe, in one file
    .venv/bin/python scripts/toybox_generator_sweep.py pack outputs/sweep/pack.npz
    # anywhere (a GPU makes it fast): every variant in parallel, results in OUT/results.json
    python scripts/toybox_generator_sweep.py sweep outputs/sweep/pack.npz OUT --device cuda [--only v1 f8w48]

The training functions are the shipped ones (prpg.zoo.generator), so a variant is a GeneratorConfig
plus at most two sweep-only switches: `data: single` (no distractor scenes) and `attention: all`
(cross-attention at every UNet level). The README's "Toybox model zoo" quotes the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

V1 = dict(vae_channels=(16, 32, 64), latent_channels=4, unet_channels=(32, 64, 128), unet_batch=16, unet_steps=7000)
F8 = dict(vae_channels=(16, 32, 64, 64), latent_channels=8, unet_channels=(48, 96, 192), unet_batch=32)
# Step counts match the CPU cost of v1's 800 VAE + 7000 UNet steps (one thread, measured with the shipped
# training loop: v1 284 ms/step at batch 16, f8w48 295 at 32, f8w48_lat4 257, f8w32_b64 289 at 64).
VARIANTS = {
    "v1": dict(V1),
    "v1_lr2e-3": dict(V1, unet_lr=2e-3),
    "v1_single": dict(V1, data="single"),
    "f8w48": dict(F8, unet_steps=6700),
    "f8w48_lr2e-3": dict(F8, unet_steps=6700, unet_lr=2e-3),
    "f8w48_lat4": dict(F8, unet_steps=7700, latent_channels=4),
    "f8w48_attn": dict(F8, unet_steps=5600, attention="all"),
    "f8w48_vae1600": dict(F8, unet_steps=5700, vae_steps=1600),
    "f8w32_b64": dict(F8, unet_channels=(32, 64, 128), unet_batch=64, unet_steps=6900),
    "f8w48_single": dict(F8, unet_steps=6700, data="single"),
    "v1_obj4": dict(V1, object_weight=4.0),
    "v1_obj10": dict(V1, object_weight=10.0),
    "v1_obj20": dict(V1, object_weight=20.0),
    "v1_obj10_lr2e-3": dict(V1, object_weight=10.0, unet_lr=2e-3),
    # Close-ups (object_zoom) are cut from the full-resolution pool images: `run` needs outputs/pool.
    "v1_zoom": dict(V1, object_zoom=(1.2, 2.0)),
    "v1_zoom_obj10": dict(V1, object_zoom=(1.2, 2.0), object_weight=10.0),
    "v1_zoom_obj20": dict(V1, object_zoom=(1.2, 2.0), object_weight=20.0),
    "v1_zoomtight_obj10": dict(V1, object_zoom=(1.1, 1.5), object_weight=10.0),
    # object_region "box": the weight covers each object's mask box (a tote's handle arc and what shows through).
    "v1_zoom_box10": dict(V1, object_zoom=(1.2, 2.0), object_weight=10.0, object_region="box"),
    "v1_zoom_box20": dict(V1, object_zoom=(1.2, 2.0), object_weight=20.0, object_region="box"),
    "v1_zoom_box40": dict(V1, object_zoom=(1.2, 2.0), object_weight=40.0, object_region="box"),
    # VAE on 32-px crops: 4x the steps in the same time (a sharper decoder for the same budget)
    "v1_zoom_box20_vaecrop": dict(V1, object_zoom=(1.2, 2.0), object_weight=20.0, object_region="box",
                                  vae_crop=32, vae_steps=3200),
}



def load_config(params: Path = Path("params.yaml")):
    import yaml

    from prpg.core.params import parse_group

    raw = yaml.safe_load(params.read_text())
    return parse_group("data", raw["data"]), parse_group("pretrain", raw["pretrain"])


def generator_records():
    """The pool, the pretrain params and the generator's training records, as notebooks/00_pretrain_generator.py
    selects them."""
    from prpg.data.prepare import load_pool

    data_p, p = load_config()
    pool = load_pool(data_p)
    keep = {i.name for c in pool.categories for i in pool.instances_in(category=c)[: p.generator_pool_per_category]}
    return pool, p, [r for split in ("train", "test") for r in pool.images(split) if r.instance in keep]


def to_uint8(pixels) -> np.ndarray:
    """(N, 3, R, R) in [-1, 1] -> (N, R, R, 3) uint8."""
    import torch

    return pixels.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def pack(out: Path) -> None:
    """The generator's training images (as notebooks/00_pretrain_generator.py selects them) + the gate's probe."""
    import torch
    from PIL import Image

    from prpg.data.images import load_mask
    from prpg.core.models import TOYBOX_ENCODER, load_backbone
    from prpg.zoo import gates
    from prpg.zoo.encoder import eval_transform
    from prpg.zoo.generator import images_to_tensor, masks_to_tensor

    pool, p, records = generator_records()
    pixels = images_to_tensor(gates.load_images(records), p.generator.resolution)
    coverage = masks_to_tensor([load_mask(r.mask_path) for r in records], p.generator.resolution)
    uint8 = to_uint8(pixels)
    # The gate's probe: fit on every pool scene at the generator's resolution (00_zoo_gates.py).
    all_recs = [r for s in ("train", "test") for r in pool.images(s)]
    encoder, tf = load_backbone(TOYBOX_ENCODER), eval_transform(p.encoder)
    probe = gates.fit_category_probe(gates.embed(encoder, gates.load_images(all_recs, p.generator.resolution), tf),
                                     [pool.instance(r.instance).category for r in all_recs])
    # JPEG (quality 95, no chroma subsampling: mean error 1.6/255) keeps the file small enough to travel.
    jpegs = []
    for a in uint8:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=95, subsampling=0)
        jpegs.append(np.frombuffer(buf.getvalue(), np.uint8))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, coverage=coverage[:, 0].mul(255).round().to(torch.uint8).numpy(), jpeg=np.concatenate(jpegs), jpeg_ends=np.cumsum([len(j) for j in jpegs]), captions=np.array([pool.annotation(r)["caption"] for r in records]),
        categories=np.array([pool.instance(r.instance).category for r in records]),
        splits=np.array([r.test_split or "train" for r in records]),
        probe_coef=probe.coef_, probe_intercept=probe.intercept_, probe_classes=probe.classes_)
    print(f"{out}: {len(records)} images, {out.stat().st_size / 1e6:.1f} MB")


def closeups(cfg, seed: int, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The object close-ups pretrain_generator adds (GeneratorConfig.object_zoom) at the generator's resolution:
    uint8 images (N, R, R, 3) and mask coverage (N, R, R), in the pack's order (checked on the captions)."""
    import torch

    from prpg.data.images import load_mask
    from prpg.zoo import gates
    from prpg.zoo.generator import images_to_tensor, masks_to_tensor, object_closeups

    pool, _, records = generator_records()
    assert [pool.annotation(r)["caption"] for r in records] == captions, "the pack is not of this pool: pack again"
    crops, masks = object_closeups(gates.load_images(records), [load_mask(r.mask_path) for r in records],
                                   cfg.object_zoom, seed)
    coverage = masks_to_tensor(masks, cfg.resolution)[:, 0].mul(255).round().to(torch.uint8).numpy()
    return to_uint8(images_to_tensor(crops, cfg.resolution)), coverage


def all_level_attention(pipe, cfg) -> None:
    """Swap in a UNet with cross-attention at every level (the shipped one has none at the top)."""
    from diffusers import UNet2DConditionModel

    old = pipe.unet.config
    n = len(cfg.unet_channels)
    pipe.unet = UNet2DConditionModel(**{
        **{k: old[k] for k in ("sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
                               "norm_num_groups", "cross_attention_dim", "attention_head_dim")},
        "down_block_types": ("CrossAttnDownBlock2D",) * n, "up_block_types": ("CrossAttnUpBlock2D",) * n})


def run_variant(name: str, pack_path: Path, out_dir: Path, device: str, seed: int = 0, smoke: bool = False) -> dict:
    import torch
    from PIL import Image
    from transformers import CLIPTokenizer

    from prpg.core.configs import GeneratorConfig
    from prpg.core.models import TOYBOX_ENCODER, TOYBOX_GENERATOR, load_backbone
    from prpg.zoo import generator as G
    from prpg.zoo.encoder import embed, eval_transform

    torch.set_num_threads(1)
    spec = dict(VARIANTS[name])
    data, attention = spec.pop("data", "all"), spec.pop("attention", "shipped")
    _, p = load_config()
    if smoke:  # a few steps of everything: checks the plumbing, not the recipe
        spec.update(vae_steps=3, unet_steps=3)
    cfg = GeneratorConfig(**{**dataclasses.asdict(p.generator), **spec})
    z = dict(np.load(pack_path))  # read once (each NpzFile[...] reads the archive again)
    ends = z["jpeg_ends"]
    images = np.stack([np.asarray(Image.open(io.BytesIO(z["jpeg"][a:b].tobytes())).convert("RGB"))
                       for a, b in zip(np.r_[0, ends[:-1]], ends, strict=True)])
    keep = np.ones(len(images), bool) if data == "all" else np.char.find(z["splits"], "distractors") < 0
    images, captions = images[keep], [str(c) for c in z["captions"][keep]]
    coverage, categories = z["coverage"][keep], z["categories"][keep]
    n_scenes = len(images)
    if cfg.object_zoom:  # as pretrain_generator does, from the full-resolution pool images
        assert data == "all", "object_zoom with data: single is not wired"
        crops, crop_cov = closeups(cfg, seed, captions)
        images, coverage = np.concatenate([images, crops]), np.concatenate([coverage, crop_cov])
        captions, categories = captions * 2, np.concatenate([categories, categories])
    if cfg.object_region == "box":  # the box of each 64-px coverage map (pretrain_generator: of the full mask)
        coverage = np.stack([G.fill_mask_box(c > 0) for c in coverage]).astype(np.uint8) * 255

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(TOYBOX_GENERATOR / "tokenizer")
    tokenizer.model_max_length = cfg.max_length
    pipe = G.build_pipeline(cfg, tokenizer)
    if attention == "all":
        all_level_attention(pipe, cfg)
    pipe.to(device)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    t0 = time.perf_counter()
    vae_losses = G.train_vae(pipe.vae, pixels, cfg, gen)
    mean, std = G.encode_latents(pipe.vae, pixels)
    pipe.vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    cats = [str(c) for c in z["probe_classes"]]
    encoder, tf = load_backbone(TOYBOX_ENCODER), eval_transform(p.encoder)

    def judge(ims) -> np.ndarray:
        logits = embed(encoder, ims, tf).numpy() @ z["probe_coef"].T + z["probe_intercept"]
        return np.asarray(cats)[logits.argmax(1)]

    def to_pil(x: torch.Tensor) -> list:
        return [Image.fromarray(a) for a in ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()]

    # How much of what the judge needs survives the VAE alone (printed at once: a bad VAE ends the variant early).
    probe_idx = np.linspace(0, n_scenes - 1, 240).astype(int)  # every category, spread over the whole scenes
    probe_truth = categories[probe_idx]
    with torch.no_grad():
        recon = pipe.vae.decode(mean[torch.from_numpy(probe_idx).to(device)]).sample
    recon_acc = float(np.mean(judge(to_pil(recon)) == probe_truth))
    real_acc = float(np.mean(judge([Image.fromarray(a) for a in images[probe_idx]]) == probe_truth))
    recon_l1 = float((recon - pixels[torch.from_numpy(probe_idx).to(device)]).abs().mean())
    print(f"{name}: VAE {time.perf_counter() - t0:.0f} s, reconstructions judged {recon_acc:.3f} "
          f"(real {real_acc:.3f}), L1 {recon_l1:.4f}", flush=True)
    weights = None if cfg.object_weight == 1.0 else G.latent_loss_weights(
        torch.from_numpy(coverage).float().div(255)[:, None], mean.shape[-1], cfg.object_weight).to(device)
    unet_losses = G.train_denoiser(pipe, mean, std, G.tokenize(tokenizer, captions), G.tokenize(tokenizer, [""])[0],
                                   cfg, gen, loss_weights=weights)
    seconds = time.perf_counter() - t0

    per = 2 if smoke else 48
    samples = G.sample(pipe, [G.CATEGORY_PROMPT.format(category=c) for c in cats for _ in range(per)], seed=seed,
                       steps=3 if smoke else 50, guidance=5.0, batch=120)
    truth = np.repeat(cats, per)
    pred = judge(samples)
    strong = G.sample(pipe, [G.CATEGORY_PROMPT.format(category=c) for c in cats for _ in range(per)], seed=seed,
                      steps=3 if smoke else 50, guidance=7.5, batch=120)  # SD's default CFG, for reference
    pred_strong = judge(strong)
    result = {
        "variant": name, "spec": VARIANTS[name], "seconds": round(seconds, 1), "device": device,
        "gate": float(np.mean(pred == truth)),
        "per_category": {c: float(np.mean(pred[truth == c] == c)) for c in cats},
        "confusion": {c: {d: int(np.sum(pred[truth == c] == d)) for d in cats} for c in cats},
        "gate_cfg7.5": float(np.mean(pred_strong == truth)),
        "per_category_cfg7.5": {c: float(np.mean(pred_strong[truth == c] == c)) for c in cats},
        "vae_recon_judged": recon_acc, "real_train_images_judged": real_acc, "vae_recon_l1": recon_l1,
        "vae_final_loss": float(np.mean(vae_losses[-50:])), "unet_final_loss": float(np.mean(unet_losses[-100:])),
        "params": {k: sum(q.numel() for q in getattr(pipe, k).parameters()) for k in ("vae", "text_encoder", "unet")},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = Image.new("RGB", (64 * 8, 64 * len(cats)))
    for r in range(len(cats)):
        for k in range(min(8, per)):
            grid.paste(samples[r * per + k].resize((64, 64)), (64 * k, 64 * r))
    grid.save(out_dir / f"{name}.png")
    pipe.to(torch.float16).save_pretrained(out_dir / name, safe_serialization=True)  # as shipped: fp16
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("variant", "gate", "per_category", "gate_cfg7.5", "seconds")}), flush=True)
    return result


def sweep(pack_path: Path, out: Path, device: str, only: list[str] | None, limit_s: float, smoke: bool) -> None:
    """Every variant in its own process at once; results.json, log.txt and grids.png in `out`
    (rewritten as variants finish, so a run cut short still reports what finished)."""
    from PIL import Image, ImageDraw

    names = only or list(VARIANTS)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "prpg_sweep"
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.txt", "w")
    procs = {n: subprocess.Popen([sys.executable, __file__, "run", str(pack_path), n, str(work), "--device", device,
                                  *(["--smoke"] if smoke else [])], stdout=log, stderr=subprocess.STDOUT) for n in names}
    t0 = time.time()
    while True:
        running = [n for n, pr in procs.items() if pr.poll() is None]
        done = {n: json.loads((work / f"{n}.json").read_text()) for n in names if (work / f"{n}.json").exists()}
        (out / "results.json").write_text(json.dumps(done, indent=1))
        if done:
            grid = Image.new("RGB", (512, 360 * len(done)), "white")
            for k, (n, r) in enumerate(done.items()):
                grid.paste(Image.open(work / f"{n}.png"), (0, 360 * k + 20))
                ImageDraw.Draw(grid).text((2, 360 * k + 4), f"{n}: gate {r['gate']:.3f} {r['per_category']}", fill="black")
            grid.save(out / "grids.png")
        if not running or time.time() - t0 > limit_s:
            break
        time.sleep(10)
    for n in running:
        procs[n].kill()
    print(f"{len(done)} of {len(names)} variants in {time.time() - t0:.0f} s; unfinished: {running}")
    for n, r in sorted(done.items(), key=lambda kv: -kv[1]["gate"]):
        print(f"{n:14s} gate {r['gate']:.3f}  {r['per_category']}  recon {r['vae_recon_judged']:.2f} "
              f"real {r['real_train_images_judged']:.2f}  {r['seconds']:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("out", type=Path)
    a = sub.add_parser("run")
    a.add_argument("pack", type=Path)
    a.add_argument("variant", choices=list(VARIANTS))
    a.add_argument("out", type=Path)
    a.add_argument("--device", default="cpu")
    a.add_argument("--smoke", action="store_true")
    a = sub.add_parser("sweep")
    a.add_argument("pack", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--device", default="cpu")
    a.add_argument("--only", nargs="*")
    a.add_argument("--limit-s", type=float, default=480)
    a.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    from prpg.core.paths import chdir_repo_root

    chdir_repo_root()
    if args.cmd == "pack":
        pack(args.out)
    elif args.cmd == "run":
        run_variant(args.variant, args.pack, args.out, args.device, smoke=args.smoke)
    else:
        sweep(args.pack, args.out, args.device, args.only, args.limit_s, args.smoke)


if __name__ == "__main__":
    main()
