"""Stage "train": contrastive LoRA fine-tuning of a backbone on an instance's triplets (docs/protocol.md §1.7,
reference contrastive/train_custom.py and losses.py).

- LoRA (peft) on every block's fused `qkv` Linear: r 16, alpha 0.5, dropout 0.3, bias none; the base
  weights stay frozen. peft wraps the timm ViT directly (`get_peft_model`), saves the adapter with
  `save_pretrained` (safetensors) and reloads it onto a fresh base with `PeftModel.from_pretrained`.
- Embedding: concat(CLS, mean patch token) of the last block (`Backbone.embedding(x, "cls+patch")`),
  L2-normalized inside the losses.
- Loss: InfoNCE as the reference's `info_nce_fixed` (each anchor against every in-batch positive, all
  in-batch negatives, temperature 0.07); `multi_pos`; or the hinge, here on the embeddings (the
  reference computes it on raw pixels, docs/protocol.md §5.9, so it had no gradient path).
- Adam lr 3e-4, betas (0.5, 0.999), batch 16, 2 epochs; augmentation (flip, rotation +-10 deg,
  RandomResizedCrop scale 0.8-1) on the normalized tensors, independently for anchor/left/right.

Differences from the reference by design (docs/protocol.md §5): a plain PyTorch loop on CPU or CUDA (the
reference's Lightning Trainer is GPU-only, 7); the output is the final adapter in safetensors, not an
`epoch=0{E-1}.ckpt` Lightning pickle found by a name format (7); the hinge is on embeddings and the
temperature is configurable (9); optional bf16 autocast on CUDA (`bf16: true`, a speed option; off by
default and in paper runs, as the reference trains in fp32). Evaluation features (CLS vs CLS+patch, 10)
are the evaluation's choice.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from prpg.core.atomic import atomic_dir, write_json_atomic, write_text_atomic
from prpg.core.backbones import Backbone, vit
from prpg.core.configs import TrainConfig
from prpg.train.triplets import Triplet, as_triplets

ADAPTER_DIR = "adapter"
LOG_FILE = "train_log.csv"
CONFIG_FILE = "train_config.json"
LOG_COLUMNS = ("step", "epoch", "loss", "accuracy")



# --- losses ------------------------------------------------------------------------------------------


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, B) cosine matrix, rows a_i, columns b_j."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def info_nce(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Reference info_nce_fixed: for every positive p_j and anchor a_i, cross-entropy (target 0) over
    [cos(a_i, p_j), cos(a_i, n_1), ..., cos(a_i, n_B)] / tau, averaged over i, then over j."""
    pos = _cos(a, p) / temperature  # [i, j]
    neg = torch.logsumexp(_cos(a, n) / temperature, dim=1, keepdim=True)  # [i, 1]
    return (torch.logaddexp(pos, neg) - pos).mean()


def info_nce_multi_pos(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor,
                       temperature: float = 0.07) -> torch.Tensor:
    """Per anchor -log(P / (P + N)), P = sum_j e^{cos(a_i,p_j)/tau}, N = sum_k e^{cos(a_i,n_k)/tau};
    mean over anchors."""
    pos = _cos(a, p) / temperature
    neg = _cos(a, n) / temperature
    return (torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - torch.logsumexp(pos, dim=1)).mean()


def hinge(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """mean max(0, margin - (d(a,n) - d(a,p))), d = 1 - cos, on the embeddings of each triplet."""
    d_p = 1 - F.cosine_similarity(a, p, dim=-1)
    d_n = 1 - F.cosine_similarity(a, n, dim=-1)
    return F.relu(margin - (d_n - d_p)).mean()


def triplet_accuracy(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> float:
    """Fraction of triplets with cos(a, p) > cos(a, n)."""
    return (F.cosine_similarity(a, p, dim=-1) > F.cosine_similarity(a, n, dim=-1)).float().mean().item()


def loss_function(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if cfg.loss == "info_nce":
        return lambda a, p, n: info_nce(a, p, n, cfg.temperature)
    if cfg.loss == "multi_pos":
        return lambda a, p, n: info_nce_multi_pos(a, p, n, cfg.temperature)
    if cfg.loss == "hinge":
        return lambda a, p, n: hinge(a, p, n, cfg.margin)
    raise ValueError(f"train.loss: unknown loss {cfg.loss!r}; use info_nce, multi_pos or hinge")


# --- LoRA ----------------------------------------------------------------------------------------------


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      target_modules=["qkv"])


def add_lora(backbone: Backbone, cfg: TrainConfig, seed: int) -> Backbone:
    """A personalizable copy: LoRA on every `qkv`, only the LoRA weights trainable. The input backbone
    is untouched (peft injects its layers in place, so it works on a deep copy)."""
    from peft import get_peft_model

    if hasattr(backbone.model, "peft_config"):
        raise ValueError(f"{backbone.name}: already has LoRA adapters; start from the pretrained backbone")
    model = copy.deepcopy(vit(backbone.model))
    if not any(name.endswith("qkv") for name, _ in model.named_modules()):
        raise ValueError(f"{backbone.name}: no fused `qkv` Linear to put LoRA on (is it a timm ViT?)")
    with torch.random.fork_rng(devices=[]):  # peft draws lora_A from the global RNG
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, lora_config(cfg))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), f"non-LoRA parameters trainable: {trainable}"
    return dataclasses.replace(backbone, model=peft_model)


def trainable_parameters(backbone: Backbone) -> list[torch.nn.Parameter]:
    return [p for p in backbone.model.parameters() if p.requires_grad]


def save_adapter(backbone: Backbone, out_dir: str | Path) -> Path:
    """adapter_config.json + adapter_model.safetensors (peft save_pretrained)."""
    if not hasattr(backbone.model, "save_pretrained"):
        raise ValueError(f"{backbone.name}: no LoRA adapter to save (build it with add_lora)")
    backbone.model.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def _adapter_dir(path: str | Path) -> Path:
    path = Path(path)
    if (path / ADAPTER_DIR / "adapter_config.json").is_file():
        return path / ADAPTER_DIR
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path}: no adapter_config.json here or in {path / ADAPTER_DIR}; pass a "
                                "train output folder or its adapter/ folder")
    return path


def load_personalized(base: Backbone, adapter_dir: str | Path, merge: bool = False) -> Backbone:
    """The base backbone with a saved adapter, in eval mode (LoRA dropout off). `adapter_dir` is a
    train output folder or its adapter/ folder. The base backbone is untouched. merge=True folds the
    LoRA update into the weights (peft merge_and_unload): the same function, a plain ViT, and no
    extra low-rank matmuls per layer at inference (evaluation)."""
    from peft import PeftModel

    path = _adapter_dir(adapter_dir)
    info = path.parent / CONFIG_FILE
    if info.is_file():
        trained_on = json.loads(info.read_text()).get("backbone")
        if trained_on not in (None, base.name):
            warnings.warn(f"{path} was trained on backbone {trained_on!r}, loading it onto {base.name!r}",
                          stacklevel=2)
    device = next(vit(base.model).parameters()).device
    model = PeftModel.from_pretrained(copy.deepcopy(vit(base.model)), str(path), is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    return dataclasses.replace(base, model=model.to(device).eval())


# --- data ----------------------------------------------------------------------------------------------


def augmentation(crop: int):
    """The reference's augmentation, on normalized tensors (rotation fills with 0 = the mean colour)."""
    from torchvision import transforms as T

    return T.Compose([T.RandomHorizontalFlip(), T.RandomRotation(degrees=10),
                      T.RandomResizedCrop(size=(crop, crop), scale=(0.8, 1.0))])


class TripletImages(Dataset):
    """(anchor, left, right, label) tensors of one triplet list. With `cache`, each file is decoded and
    preprocessed once (triplets reuse a few thousand files thousands of times); augmentation is drawn
    per item from torch's RNG, which DataLoader seeds per worker."""

    def __init__(self, triplets: Sequence[Triplet], transform, augment=None, cache: bool = True):
        self.triplets, self.transform, self.augment = list(triplets), transform, augment
        self.cache: dict[str, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.triplets)

    def _image(self, path: str) -> torch.Tensor:
        from prpg.data import load_image

        if self.cache is not None and path in self.cache:
            x = self.cache[path]
        else:
            try:
                x = self.transform(load_image(path))
            except (OSError, ValueError) as err:
                raise OSError(f"{path}: cannot read this triplet image ({err}); regenerate the triplets "
                              "or restore the file") from err
            if self.cache is not None:
                self.cache[path] = x
        return self.augment(x) if self.augment is not None else x

    def __getitem__(self, i: int):
        t = self.triplets[i]
        return self._image(t.ref_path), self._image(t.left_path), self._image(t.right_path), t.label


# --- training ------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but no CUDA device is available; use cpu or auto")
    return device


def split_positive(left: torch.Tensor, right: torch.Tensor,
                   label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) rows from the triplet slots: label 0 = the positive is left."""
    is_left = (label == 0).to(left.device)[:, None]
    return torch.where(is_left, left, right), torch.where(is_left, right, left)


def fit(backbone: Backbone, triplets, cfg: TrainConfig, seed: int, progress: bool = True) -> list[dict]:
    """Train `backbone`'s LoRA weights in place (from add_lora); returns the per-step log rows
    (step, epoch, loss, accuracy). The model ends in eval mode. Same seed, same CPU run."""
    device = resolve_device(cfg.device)
    rows = as_triplets(triplets)
    params = trainable_parameters(backbone)
    if not params:
        raise ValueError(f"{backbone.name}: nothing to train; wrap it with add_lora first")
    augment = augmentation(backbone.crop) if cfg.augment else None
    data = TripletImages(rows, backbone.global_transform(), augment, cache=cfg.num_workers == 0)
    loader = DataLoader(data, batch_size=cfg.batch, shuffle=True, num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(seed), pin_memory=device.type == "cuda")
    total = cfg.epochs * len(loader)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    loss_fn = loss_function(cfg)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16
           else contextlib.nullcontext())
    backbone.model.to(device).train()
    log: list[dict] = []
    forked = [device.index or 0] if device.type == "cuda" else []
    bar = tqdm(total=total, desc=f"train {backbone.name}", mininterval=5, disable=not progress)
    with torch.random.fork_rng(devices=forked), bar:
        torch.manual_seed(seed)
        for epoch in range(cfg.epochs):
            if len(log) >= total:
                break
            for anchor, left, right, label in loader:
                if len(log) >= total:
                    break
                b = len(label)
                x = torch.cat([anchor, left, right]).to(device, non_blocking=True)
                with amp:
                    emb = backbone.embedding(x, cfg.feature)
                a, left_emb, right_emb = emb.float().split(b)
                p, n = split_positive(left_emb, right_emb, label)
                loss = loss_fn(a, p, n)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                log.append(dict(step=len(log) + 1, epoch=epoch, loss=loss.item(),
                                accuracy=triplet_accuracy(a.detach(), p.detach(), n.detach())))
                bar.update()
                bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", acc=f"{log[-1]['accuracy']:.2f}",
                                refresh=False)
    backbone.model.eval()
    return log


def log_csv(log: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(log)
    return buf.getvalue()


def _tail_mean(log: Sequence[dict], key: str, n: int = 10) -> float:
    tail = [r[key] for r in log[-n:]]
    return sum(tail) / len(tail) if tail else math.nan


def train(backbone: Backbone, triplets_csv_or_rows, cfg: TrainConfig, seed: int, out_dir: str | Path,
          progress: bool = True) -> dict:
    """Personalize `backbone` on one instance's triplets (a CSV path or rows). Writes out_dir atomically:
    adapter/ (peft, safetensors), train_log.csv (step,epoch,loss,accuracy), train_config.json (the
    resolved config, seed, backbone, triplet count, summary). The file holds only what the inputs
    determine, so the same seed gives the same bytes (and the same DVC hash): a CSV path is recorded
    relative to out_dir (the pipeline writes it beside the model in a temp dir that is then renamed), and
    the wall seconds are only in the returned summary. `load_personalized(backbone, out_dir)` gives the
    trained model."""
    t0 = time.perf_counter()
    rows = as_triplets(triplets_csv_or_rows)
    personal = add_lora(backbone, cfg, seed)
    log = fit(personal, rows, cfg, seed, progress=progress)
    personal.model.to("cpu")  # save from the CPU: the caller's backbone may live elsewhere, the copy need not
    summary = {
        "config": dataclasses.asdict(cfg),
        "seed": seed,
        "backbone": backbone.name,
        "triplets": len(rows),
        "triplets_csv": (os.path.relpath(triplets_csv_or_rows, out_dir)
                         if isinstance(triplets_csv_or_rows, (str, Path)) else None),
        "steps": len(log),
        "trainable_params": sum(p.numel() for p in trainable_parameters(personal)),
        "final_loss": _tail_mean(log, "loss"),  # mean of the last 10 steps
        "final_accuracy": _tail_mean(log, "accuracy"),
        "device": str(resolve_device(cfg.device)),
    }
    with atomic_dir(Path(out_dir)) as tmp:
        save_adapter(personal, tmp / ADAPTER_DIR)
        write_text_atomic(tmp / LOG_FILE, log_csv(log))
        write_json_atomic(tmp / CONFIG_FILE, summary)
    return {**summary, "seconds": round(time.perf_counter() - t0, 1)}
