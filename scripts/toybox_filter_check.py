"""How discriminative is the synthetic-positive filter on toybox, and how far are the samples from it?

Run after `make demo` (it reads the default run's outputs/synthetic/<instance>/dreambooth):
    .venv/bin/python scripts/toybox_filter_check.py

Prints, with the filter exactly as params.yaml configures it (similarity model, localization, reduce):
1. scores of real photos (in-distribution and pose test images) of each *val* instance against its own
   train crops, and of its category mates' photos against the same crops: how well the filter's
   similarity separates identity, and what share of real photos would pass the threshold;
2. per run instance, the scores of its DreamBooth samples against its crops, as the filter sees them
   (native-resolution crops) and against crops downsampled to the samples' resolution.
The README's "Why the DreamBooth rows are thin" quotes this output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from prpg.filter import filtering
from prpg.data import load_dataset, load_image
from prpg.core.params import parse_group
from prpg.core.paths import chdir_repo_root

SINGLE_OBJECT = ("in_distribution", "pose")  # the test splits without distractors


def scores(images, model, reference, localize, reduce) -> np.ndarray:
    verdicts = filtering.filter_stream(images, model=model, reference=reference, localize=localize,
                                       n_keep=len(images), max_attempts=len(images), threshold=np.inf, reduce=reduce)
    return np.array([v.score for v in verdicts if v.score is not None])


def downsample(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.BOX)


def main() -> None:
    chdir_repo_root()
    params = yaml.safe_load(Path("params.yaml").read_text())
    cfg = parse_group("filter", params["filter"])
    ds = load_dataset(parse_group("common", params["common"]).data_root)
    model, backbone = filtering.build_similarity(cfg)

    own, mates = [], []
    for inst in ds.instances_in(split="val"):
        views = filtering.real_views(ds, inst.name)
        reference = model.embed([v.crop for v in views])
        localize = filtering.build_localizer(cfg, views[0], backbone)
        photos = lambda name: [load_image(r.path) for r in ds.images("test", name) if r.test_split in SINGLE_OBJECT]  # noqa: E731
        own.append(scores(photos(inst.name), model, reference, localize, cfg.reduce))
        others = [i.name for i in ds.instances_in(category=inst.category, split="val") if i.name != inst.name][:2]
        mates.append(scores([im for m in others for im in photos(m)], model, reference, localize, cfg.reduce))
    for name, s in (("own photos", np.concatenate(own)), ("category mates' photos", np.concatenate(mates))):
        print(f"val instances, {name}: n {len(s)}, median {np.median(s):.3f}, "
              f"pass {cfg.threshold:g}: {(s >= cfg.threshold).mean():.0%}")

    for instance in params["run"]["instances"]:
        files = sorted(Path(f"outputs/synthetic/{instance}/dreambooth").glob("*.png"))
        if not files:
            raise SystemExit(f"outputs/synthetic/{instance}/dreambooth: no samples; run `make demo` first")
        samples = [Image.open(f).convert("RGB") for f in files]
        views = filtering.real_views(ds, instance)
        localize = filtering.build_localizer(cfg, views[0], backbone)
        factor = samples[0].width / views[0].image.width
        row = []
        for label, crops in (("native crops", [v.crop for v in views]),
                             (f"crops x{factor:g}", [downsample(v.crop, factor) for v in views])):
            s = scores(samples, model, model.embed(crops), localize, cfg.reduce)
            row.append(f"{label}: median {np.median(s):.3f}, pass {int((s >= cfg.threshold).sum())}/{len(samples)}")
        print(f"{instance}: " + "; ".join(row))


if __name__ == "__main__":
    main()
