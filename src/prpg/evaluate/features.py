"""Features the evaluation compares, computed in chunks and optionally cached on disk.

Global: `embed_images` of prpg.core.backbones (L2-normalized CLS or CLS + mean patch). Dense: `bb.tokens`
on the padded canvas of geometry.py, each patch L2-normalized and rounded to float16 (the cache format)
whether or not a cache is used, so a warm cache gives exactly the numbers of a cold one.

Cache layout (one folder per dataset and backbone weights, reused by every instance):
    <cache_dir>/<dataset>/<backbone name>-<weights fingerprint[:16]>/
        global-<feature>-<settings>.safetensors      one (D,) tensor per image, keyed "<relative path>@<sha256>"
        dense-g<grid>-<settings>/<relative path>@<sha256>.safetensors   "features" (g, g, D) f16, "size" (H, W)
<settings> hashes the preprocessing (mean, std, resize, crop, patch size), so changing it never reads
stale features. Every entry is keyed by the sha256 of the image file's bytes, not only its path: a
rebuilt world (another seed or size) or a fixed photo under the same dataset name is a new entry, never
the stale one (the dataset name only groups the folders). No mask shapes a cached feature (masks are
applied to the loaded patches, in dense.py), so masks are not part of the key. The path stays in the key
so that two identical photos each keep the value of their own batch, as without a cache.
A PODS dense cache at grid 64 with a ViT-B is ~9 GB (1500 images x 64 x 64 x 768 x 2 B).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prpg.data import DatasetError, ImageRecord, load_image
from prpg.evaluate.geometry import PadGeometry, canvas_tensor

if TYPE_CHECKING:
    from prpg.core.backbones import Backbone


@dataclass(frozen=True)
class DenseFeatures:
    features: torch.Tensor  # (N, g, g, D) float16, each patch L2-normalized
    sizes: tuple[tuple[int, int], ...]  # original (H, W) of each image, for un-padding the maps

    def __len__(self) -> int:
        return len(self.sizes)

    def patches(self, i: int) -> torch.Tensor:
        return self.features[i].float()


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's state dict (names, dtypes, shapes, bytes): a changed weight, e.g. a LoRA
    adapter, is a different cache entry even under the same backbone name."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def relative_key(path: Path, root: Path) -> str:
    """`path` relative to the dataset root, the cache key. Lexical (absolute, normalized paths): no
    filesystem call per image (Path.resolve took 1.8 s of an evaluate stage's 6300 keys)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
        raise DatasetError(f"{path}: not under the dataset root {root}; feature cache keys are paths "
                           "relative to it, so pass the dataset's root")
    return Path(rel).as_posix()


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes: what the cached feature was computed from."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the image ({e.strerror or e})") from None


def content_key(path: Path, root: Path) -> str:
    """The cache key of one image: its path relative to the root and the hash of its bytes."""
    return f"{relative_key(path, root)}@{content_hash(path)}"


def _settings(bb: Backbone, protocol: str = "fixed", **extra) -> str:
    # "key" versions the key format: files of the path-only keys of before are never read. The reference
    # protocol changes the features (input statistics, position-embedding resampling), so it is part of
    # the key; "fixed" adds nothing, so the caches of before stay valid.
    s = {"mean": list(bb.mean), "std": list(bb.std), "resize": bb.resize, "crop": bb.crop,
         "patch": bb.patch_size, "key": "path@sha256", **extra}
    if protocol != "fixed":
        s["protocol"] = protocol
    return hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()[:10]


def model_dir(bb: Backbone, cache_dir: Path, dataset: str) -> Path:
    fp = fingerprint(bb.model)
    out = Path(cache_dir) / dataset / f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', bb.name)}-{fp[:16]}"
    meta = out / "meta.json"
    if not meta.exists():
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(meta, lambda p: p.write_text(json.dumps({"backbone": bb.name, "fingerprint": fp,
                                                               "dataset": dataset}, indent=2) + "\n"))
    return out


@contextmanager
def _filling(folder: Path):
    """One process at a time computes what a cache folder lacks (prpg repro --jobs runs several
    evaluate stages at once, all needing the same pretrained features): the others wait, asleep,
    and then find it there instead of computing it too."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        yield


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise RuntimeError(f"{path}: unreadable feature cache ({e}); delete it and it is recomputed") from e


def _chunks(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


# --- computing -----------------------------------------------------------------------------------


def embed_records(bb: Backbone, records: Sequence[ImageRecord], feature: str = "cls", batch: int = 32,
                  device: str = "cpu", protocol: str = "fixed") -> torch.Tensor:
    """(N, D) float32 L2-normalized global embeddings; images are read `batch` at a time (PODS's
    10.9k test photos do not fit in memory at once). protocol "reference": the reference's position-
    embedding resampling (backbones.hub_pos_embed)."""
    from prpg.core.backbones import embed_images, hub_pos_embed
    from prpg.evaluate.protocol import is_reference

    with hub_pos_embed(bb, is_reference(protocol)):
        out = [embed_images(bb, [load_image(r.path) for r in chunk], feature=feature, batch=batch,
                            device=device).float().cpu() for chunk in _chunks(list(records), batch)]
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def dense_records(bb: Backbone, records: Sequence[ImageRecord], grid: int, batch: int = 32,
                  device: str = "cpu", protocol: str = "fixed") -> DenseFeatures:
    """Patch features of each image on its padded canvas (geometry.py), L2-normalized, float16. Eval
    mode (LoRA dropout off); the model's train/eval mode is restored afterwards, as embed_images does.
    protocol "reference": ImageNet input statistics for every backbone and the reference's position-
    embedding resampling (evaluation.protocol)."""
    from prpg.core.backbones import hub_pos_embed
    from prpg.evaluate.protocol import dense_stats, is_reference

    was_training = bb.model.training
    bb.model.eval().to(device)
    try:
        with hub_pos_embed(bb, is_reference(protocol)):
            return _dense(bb, records, grid, batch, device, *dense_stats(bb, protocol))
    finally:
        bb.model.train(was_training)


def _dense(bb: Backbone, records: Sequence[ImageRecord], grid: int, batch: int, device: str,
           mean, std) -> DenseFeatures:
    feats, sizes = [], []
    for chunk in _chunks(list(records), batch):
        images = [load_image(r.path) for r in chunk]
        geoms = [PadGeometry(im.height, im.width, grid, bb.patch_size) for im in images]
        x = torch.stack([canvas_tensor(im, g, mean, std) for im, g in zip(images, geoms)])
        _, patches = bb.tokens(x.to(device))
        if tuple(patches.shape[1:3]) != (grid, grid):
            raise ValueError(f"{bb.name}: tokens() gave a {tuple(patches.shape[1:3])} patch grid for "
                             f"{geoms[0].side} px input; expected {grid}x{grid} (patch_size {bb.patch_size})")
        feats.append(F.normalize(patches.float(), dim=-1).half().cpu())
        sizes += [(im.height, im.width) for im in images]
    if not feats:
        return DenseFeatures(torch.zeros(0, grid, grid, 0, dtype=torch.float16), ())
    return DenseFeatures(torch.cat(feats), tuple(sizes))


# --- caching -------------------------------------------------------------------------------------


def cached_features(bb: Backbone, records: Sequence[ImageRecord], cache_dir: Path | None, *, root: Path,
                    feature: str = "cls", batch: int = 32, device: str = "cpu",
                    dataset: str | None = None, protocol: str = "fixed") -> torch.Tensor:
    """(N, D) global embeddings of `records` (embed_records), read from / added to the cache when
    cache_dir is given. Only the images not cached yet are embedded."""
    records = list(records)
    if cache_dir is None:
        return embed_records(bb, records, feature, batch, device, protocol)
    folder = model_dir(bb, cache_dir, dataset or Path(root).name)
    path = folder / f"global-{feature}-{_settings(bb, protocol, feature=feature)}.safetensors"
    keys = [content_key(r.path, root) for r in records]
    stored = _load(path) if path.exists() else {}
    if any(k not in stored for k in keys):
        with _filling(folder):  # another process may have filled it while we waited
            stored = _load(path) if path.exists() else {}
            todo = [(k, r) for k, r in zip(keys, records) if k not in stored]
            if todo:
                new = embed_records(bb, [r for _, r in todo], feature, batch, device, protocol)
                stored.update({k: v.clone().contiguous() for (k, _), v in zip(todo, new)})
                dims = {tuple(v.shape) for v in stored.values()}
                if len(dims) > 1:
                    raise RuntimeError(f"{path}: cached embeddings of shapes {sorted(dims)}; delete the file")
                _write_atomic(path, lambda p: save_file(stored, str(p)))
    if not keys:
        return torch.zeros(0, 0)
    return torch.stack([stored[k] for k in keys]).float()


def cached_dense_features(bb: Backbone, records: Sequence[ImageRecord], cache_dir: Path | None, *,
                          root: Path, grid: int, batch: int = 32, device: str = "cpu",
                          dataset: str | None = None, protocol: str = "fixed") -> DenseFeatures:
    """Dense features of `records` (dense_records), one cache file per image when cache_dir is given.
    A batch with any image not cached is embedded whole: batches are always the same `batch`-sized
    slices of `records`, so a cached value does not depend on what was cached before (on CPU an
    image's features can differ in the last bits with the batch it was embedded in), nor on another
    process (prpg repro --jobs) filling the cache at the same time."""
    records = list(records)
    if cache_dir is None:
        return dense_records(bb, records, grid, batch, device, protocol)
    folder = model_dir(bb, cache_dir, dataset or Path(root).name)
    folder = folder / f"dense-g{grid}-{_settings(bb, protocol, grid=grid)}"
    paths = [folder / f"{content_key(r.path, root)}.safetensors" for r in records]
    if not all(p.exists() for p in paths):
        with _filling(folder):  # checked again per batch: another process may have filled some
            for chunk in _chunks(list(zip(paths, records)), batch):
                missing = [not p.exists() for p, _ in chunk]
                if not any(missing):
                    continue
                new = dense_records(bb, [r for _, r in chunk], grid, batch, device, protocol)
                for i, (p, _) in enumerate(chunk):
                    if missing[i]:
                        tensors = {"features": new.features[i].clone().contiguous(),
                                   "size": torch.tensor(new.sizes[i], dtype=torch.int64)}
                        _write_atomic(p, lambda tmp, t=tensors: save_file(t, str(tmp)))
    loaded = [_load(p) for p in paths]
    for p, t in zip(paths, loaded):
        if set(t) != {"features", "size"} or tuple(t["features"].shape[:2]) != (grid, grid):
            raise RuntimeError(f"{p}: not a {grid}x{grid} dense feature file; delete it and it is recomputed")
    if not loaded:
        return DenseFeatures(torch.zeros(0, grid, grid, 0, dtype=torch.float16), ())
    return DenseFeatures(torch.stack([t["features"] for t in loaded]),
                         tuple((int(t["size"][0]), int(t["size"][1])) for t in loaded))
