"""Model cards: what each shipped toybox model is, how it was made, and how good it is (measured).

The gates notebook (notebooks/00_zoo_gates.py) measures the models into one dict, the content of
reports/metrics/toybox_models.json; the cards are built from that dict, the pretraining params and each
model's training.json, so a card says exactly what the tracked metrics say."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prpg.core.params import PretrainParams

REGENERATE = ("`dvc unfreeze zoo && dvc repro zoo && dvc freeze zoo` (notebooks "
              "`00_pretrain_encoder.py` and `00_pretrain_generator.py` train at once, one CPU thread each, then "
              "`00_zoo_gates.py` measures; params group `pretrain`).")


@dataclass(frozen=True)
class Card:
    title: str
    role: str
    facts: dict
    metrics: dict


def encoder_card(p: PretrainParams, seed: int, training: dict, n_pool_instances: int, measured: dict) -> Card:
    """The encoder's card. `training`: its training.json; `measured`: the gates' metrics dict."""
    e, gates = p.encoder, measured["encoder"]
    return Card(
        "Toybox encoder (DINOv2 stand-in)",
        "A tiny ViT of timm's DINOv2 architecture. Load with `prpg.core.models.load_backbone('toybox')`. "
        "Category-supervised on the toybox pool: it knows categories, not instances.",
        {"architecture": f"timm vit_small_patch14_dinov2 class: patch {e.patch_size}, dim {e.embed_dim}, "
                         f"depth {e.depth}, heads {e.heads}, LayerScale init 1.0",
         "data": f"toybox pool: {training['train_images']} images of {n_pool_instances} instances (never evaluated on)",
         "objective": f"5-way category cross-entropy on CLS + {e.token_label_weight:g} x per-patch category "
                      f"(or background) cross-entropy from the masks; views object / box / scene {e.view_mix}; "
                      f"texture swap {e.texture_swap:g}, background swap {e.background_swap:g}, channel shuffle, "
                      f"rotation +-{e.rotation:g} deg, zoom, flip",
         "steps x batch": f"{e.steps} x {e.batch}, AdamW lr {e.lr}, cosine", "seed": seed,
         "parameters": training["params"], "train wall time (s)": training["seconds"],
         "train CPU time (s, all threads)": training["cpu_seconds"],
         "preprocessing": f"resize {e.resize} bicubic, center crop {e.image_size}, ImageNet mean/std"},
        {"category linear probe, val instances, objects (gate >= 0.90)": gates["category_probe_val_objects"],
         "category linear probe, val instances, whole scenes": gates["category_probe_val_scenes"],
         "instance retrieval mAP, test instances (pretrained baseline)": gates["instance_retrieval_map_test"],
         "final train loss": training["final_loss"], "final train accuracy": training["final_train_accuracy"]},
    )


def _generator_objective(c) -> str:
    return (f"VAE: L1+MSE+{c.vae_kl_weight:g} KL"
            + (f" on random {c.vae_crop}-px crops" if c.vae_crop else "")
            + "; UNet+text encoder: epsilon MSE"
            + (f" with min-SNR weighting (gamma {c.snr_gamma:g})" if c.snr_gamma else "")
            + (f", object {'pixels' if c.object_region == 'mask' else 'boxes'} weighted {c.object_weight:g}x"
               if c.object_weight != 1.0 else "")
            + f", {c.caption_dropout:.0%} empty captions"
            + (f", {c.category_caption:.0%} bare category captions" if c.category_caption else "")
            + ", EMA")


def generator_card(p: PretrainParams, seed: int, training: dict, measured: dict) -> Card:
    """The generator's card. `training`: its training.json; `measured`: the gates' metrics dict."""
    c, gates, smoke = p.generator, measured["generator"], measured["dreambooth_smoke"]
    instance = p.gates.dreambooth_instance
    closeup = gates.get("real_closeup_reference_accuracy")
    return Card(
        "Toybox generator (Stable Diffusion 1.5 stand-in)",
        "SD 1.5's architecture, shrunk: CLIP tokenizer (real CLIP BPE ids) + CLIPTextModel, AutoencoderKL, "
        "UNet2DConditionModel, PNDM. Load with `prpg.core.models.load_generator('models/toybox/generator')`.",
        {"resolution": c.resolution,
         # With object close-ups, every pool image is in the training set twice (scene + close-up).
         "data": f"toybox pool: {training['train_images'] // (2 if c.object_zoom else 1)} captioned images (the first "
                 f"{p.generator_pool_per_category} pool instances per category)"
                 + (f" + one object close-up each (square, {c.object_zoom[0]:g}-{c.object_zoom[1]:g}x the object "
                    "box, same caption)" if c.object_zoom else ""),
         "objective": _generator_objective(c),
         "steps": f"vae {c.vae_steps} x {c.vae_batch}, unet {c.unet_steps} x {c.unet_batch}",
         "seed": seed, "parameters": training["params"], "weights": "fp16 safetensors (upcast on load)",
         "train wall time (s)": training["total_seconds"], "train CPU time (s, all threads)": training["cpu_seconds"]},
        {"samples recognised as their category (gate >= 0.80)": gates["category_accuracy"],
         "  standard error (binomial, n samples)": gates["category_accuracy_se"],
         **{f"  {k}": v for k, v in gates["per_category"].items()},
         "reference: real single-object val images recognised by the same probe": gates["real_reference_accuracy"],
         "reference: the same photos in the usual poses (train + in_distribution), same probe":
             gates["real_usual_pose_reference_accuracy"],
         **({"reference: the same photos as object close-ups, same probe": closeup} if closeup else {}),
         f"DreamBooth smoke ({instance}): margin before": smoke["margin_before"],
         f"DreamBooth smoke ({instance}): margin after": smoke["margin_after"],
         "final unet loss": training["unet_final_loss"], "final vae loss": training["vae_final_loss"]},
    )


def card_readme(card: Card, size_mb: float, regenerate: str = REGENERATE) -> str:
    """The card's README.md text; `size_mb` is the model folder's size on disk."""
    facts = {**card.facts, "size on disk (MB)": size_mb}
    lines = [f"# {card.title}", "", card.role, "", "## Facts", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines += ["", "## Quality gates (measured)", "", "| gate | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in card.metrics.items()]
    lines += ["", "## Regenerate", "", regenerate, ""]
    return "\n".join(lines)


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def write_card(folder: Path, card: Card, regenerate: str = REGENERATE) -> Path:
    """README.md (human) + card.json (the same numbers, machine-readable) inside the model folder."""
    folder = Path(folder)
    size_mb = round(_size_mb(folder), 2)
    (folder / "README.md").write_text(card_readme(card, size_mb, regenerate))
    facts = {**card.facts, "size on disk (MB)": size_mb}
    (folder / "card.json").write_text(json.dumps({"facts": facts, "metrics": card.metrics}, indent=2, sort_keys=True) + "\n")
    return folder / "README.md"
