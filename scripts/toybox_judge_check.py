"""Is the generator gate limited by its judge? A second, stronger judge for the same question.

The gate (notebooks/00_zoo_gates.py) asks a linear probe on the toybox encoder's CLS features which
category a "a photo of a {category}" sample shows; that probe itself recognises only ~0.75 of real
single-object val photos at 64 px. This script trains a small CNN from scratch on the same real pool
scenes at the generator's resolution, reports its accuracy on the real single-object val photos (its
ceiling) and on generator samples: the gate's 16 per category (seed 0) and 48 more (seed 1000), beside
the gate's own probe on the same images.

Run after `prpg data build-pool params.yaml` and `dvc repro data` (about 12 min on 2 idle CPU cores):
    .venv/bin/python scripts/toybox_judge_check.py
The README's "Toybox model zoo" quotes this output.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from prpg.data import load_dataset
from prpg.data.prepare import load_pool
from prpg.core.models import TOYBOX_ENCODER, TOYBOX_GENERATOR, load_backbone, load_generator
from prpg.core.params import parse_group
from prpg.core.paths import chdir_repo_root
from prpg.zoo import gates
from prpg.zoo.encoder import eval_transform
from prpg.zoo.generator import CATEGORY_PROMPT, sample

EPOCHS, BATCH, WIDTH = 6, 128, 16
JUDGE_SEEDS = (0, 1)  # two judges: how much of a verdict is the judge's own seed


def to_tensor(images) -> torch.Tensor:
    arrays = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.tensor(arrays).permute(0, 3, 1, 2).float() / 255


def block(c_in: int, c_out: int) -> nn.Module:
    conv = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*conv, nn.MaxPool2d(2))


def cnn(n_classes: int, w: int = WIDTH) -> nn.Module:
    return nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 8 * w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * w, n_classes))


def augment(x: torch.Tensor) -> torch.Tensor:
    """Flip, channel shuffle (categories differ in shape, not palette), brightness/offset, shift."""
    n = x.shape[0]
    x = torch.where((torch.rand(n) < 0.5)[:, None, None, None], x.flip(3), x)
    order = torch.stack([torch.randperm(3) for _ in range(n)])
    x = torch.gather(x, 1, order[:, :, None, None].expand_as(x))
    x = x * (0.7 + 0.6 * torch.rand(n, 1, 1, 1)) + 0.2 * (torch.rand(n, 1, 1, 1) - 0.5)
    dy, dx = (int(v) for v in torch.randint(-6, 7, (2,)))
    return torch.roll(x, (dy, dx), (2, 3)).clamp(0, 1)


def predict(net: nn.Module, mean: torch.Tensor, std: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        out = torch.cat([net((z[i : i + 256] - mean) / std).argmax(1) for i in range(0, len(z), 256)])
    net.train()
    return out.numpy()


def train_cnn(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int,
              x_val: torch.Tensor, y_val: np.ndarray) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The judge: a 4-block CNN, trained from scratch on the real pool scenes (category labels)."""
    torch.manual_seed(seed)  # here, so that the judge depends on its seed only
    net = cnn(n_classes)
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=EPOCHS * (len(x) // BATCH))
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x))
        for i in range(0, len(x) - BATCH + 1, BATCH):
            b = order[i : i + BATCH]
            loss = F.cross_entropy(net((augment(x[b]) - mean) / std), y[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        real = np.mean(predict(net, mean, std, x_val) == y_val)
        seconds = time.perf_counter() - t0
        print(f"epoch {epoch}: loss {loss.item():.3f}, real val {real:.3f} ({seconds:.0f} s)", flush=True)
    return net, mean, std


def main() -> None:
    chdir_repo_root()
    params = yaml.safe_load(Path("params.yaml").read_text())
    data_p, pretrain_p = parse_group("data", params["data"]), parse_group("pretrain", params["pretrain"])
    res, g = pretrain_p.generator.resolution, pretrain_p.gates
    pool, world = load_pool(data_p), load_dataset(params["common"]["data_root"])
    pool_recs = [r for s in ("train", "test") for r in pool.images(s)]
    cats = sorted(pool.categories)
    label = {c: i for i, c in enumerate(cats)}
    x = to_tensor(gates.load_images(pool_recs, res))
    y = torch.tensor([label[pool.instance(r.instance).category] for r in pool_recs])
    # as the gate's reference: the val instances' single-object photos
    val = [r for i in world.instances_in(split="val") for s in ("train", "test")
           for r in world.images(s, i.name) if "distractors" not in (r.test_split or "")]
    x_val = to_tensor(gates.load_images(val, res))
    y_val = np.array([label[world.instance(r.instance).category] for r in val])

    t0 = time.perf_counter()
    pipe = load_generator(TOYBOX_GENERATOR)
    samples = {}
    for seed, n in ((0, g.samples_per_category), (1000, 3 * g.samples_per_category)):
        prompts = [CATEGORY_PROMPT.format(category=c) for c in cats for _ in range(n)]
        samples[seed] = sample(pipe, prompts, seed=seed, steps=g.sample_steps, guidance=g.guidance)
    print(f"sampled in {time.perf_counter() - t0:.0f} s")

    # The gate's judge, as notebooks/00_zoo_gates.py builds it.
    encoder, tf = load_backbone(TOYBOX_ENCODER), eval_transform(pretrain_p.encoder)
    probe = gates.fit_category_probe(gates.embed(encoder, gates.load_images(pool_recs, res), tf),
                                     [cats[k] for k in y.tolist()])
    real = gates.embed(encoder, gates.load_images(val, res), tf)
    print(f"gate probe: real single-object val photos ({len(val)}): "
          f"{gates.category_probe_accuracy(probe, real, [cats[k] for k in y_val]):.3f}")
    for seed, ims in samples.items():
        truth = [c for c in cats for _ in range(len(ims) // len(cats))]
        print(f"  generator samples, seed {seed} ({len(ims)}): "
              f"{gates.category_probe_accuracy(probe, gates.embed(encoder, ims, tf), truth):.3f}")

    for judge_seed in JUDGE_SEEDS:
        net, mean, std = train_cnn(x, y, len(cats), judge_seed, x_val, y_val)
        n_params = sum(p.numel() for p in net.parameters())
        print(f"CNN judge, seed {judge_seed} ({n_params} parameters, {EPOCHS} epochs on {len(x)} pool scenes "
              f"at {res} px)")
        real = np.mean(predict(net, mean, std, x_val) == y_val)
        print(f"  real single-object val photos ({len(val)}): {real:.3f}")
        for seed, ims in samples.items():
            ys = np.repeat(np.arange(len(cats)), len(ims) // len(cats))
            pred = predict(net, mean, std, to_tensor(ims))
            per_cat = ", ".join(f"{c} {np.mean(pred[ys == k] == k):.2f}" for k, c in enumerate(cats))
            print(f"  generator samples, seed {seed} ({len(ys)}): {np.mean(pred == ys):.3f} ({per_cat})")

if __name__ == "__main__":
    main()
