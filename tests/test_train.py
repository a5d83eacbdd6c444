"""The personalized-representation stage on CPU: losses against hand-computed values, triplet sampling,
LoRA (only adapters train, exact save/load, seeded), the train() outputs, and a separation test on a
constructed problem (one colour-stripe instance vs category mates drawn with numpy)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prpg.core.backbones import embed_images, from_model, vit
from prpg.train.contrastive import (
    add_lora,
    fit,
    hinge,
    info_nce,
    info_nce_multi_pos,
    load_personalized,
    save_adapter,
    split_positive,
    train,
    triplet_accuracy,
)
from prpg.train.triplets import (
    COLUMNS,
    REAL_SOURCE,
    Triplet,
    load_triplets,
    make_triplets,
    positives_per_source,
    save_triplets,
)
from tests.conftest import experiment_params, toybox_params, toybox_config

torch.set_num_threads(1)
# make_triplets warns when fewer than num_synthetic (450) positives exist, as the reference; tests use few.
pytestmark = pytest.mark.filterwarnings("ignore:only .* synthetic positives")

SIDE = 32  # tiny ViT input: patch 8 -> 4x4 grid


# --- helpers ---------------------------------------------------------------------------------------------


def tiny_backbone(seed: int = 0):
    """A random 2-block ViT of the DINOv2 class, 32 px, with layer scale 1 (timm's DINOv2 default 1e-5
    would make a random model's output almost constant; pretrained DINOv2 has learned scales)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=SIDE, patch_size=8, embed_dim=32, depth=2,
        num_heads=2, num_classes=0, dynamic_img_size=True, init_values=1.0,
        pretrained_cfg_overlay=dict(input_size=(3, SIDE, SIDE), crop_pct=SIDE / 36, mean=(0.5,) * 3,
                                    std=(0.25,) * 3),
    )
    return from_model("tiny", model.eval())


def stripes(colors, rng: np.random.Generator, side: int = 36) -> Image.Image:
    """An 'object': three horizontal colour stripes (18x18) at a random place on a noise background."""
    a = (rng.integers(0, 256, (side, side, 3)) * 0.5 + 64).astype(np.uint8)
    x, y = rng.integers(2, side - 20, 2)
    for k, c in enumerate(colors):
        a[y + 6 * k : y + 6 * (k + 1), x : x + 18] = c
    return Image.fromarray(a)


PALETTE = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 200, 30), (200, 30, 200), (30, 200, 200),
           (240, 240, 240), (20, 20, 20)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The target instance (fixed stripes) and 8 category mates (other stripe colours); train files and
    held-out images. Mates 6 and 7 appear only in the held-out set."""
    d = tmp_path_factory.mktemp("stripes")
    rng = np.random.default_rng(0)
    target = [PALETTE[0], PALETTE[2], PALETTE[3]]
    mates = [[PALETTE[i] for i in rng.permutation(8)[:3]] for _ in range(8)]

    def save(images, tag):
        paths = []
        for i, im in enumerate(images):
            im.save(d / f"{tag}_{i:02d}.png")
            paths.append(str(d / f"{tag}_{i:02d}.png"))
        return paths

    return dict(
        real=save([stripes(target, rng) for _ in range(3)], "real"),
        synthetic=save([stripes(target, rng) for _ in range(16)], "syn"),
        negatives=save([stripes(mates[i % 6], rng) for i in range(24)], "neg"),
        target_test=[stripes(target, rng) for _ in range(8)],
        mates_test=[stripes(mates[i % 8], rng) for i in range(16)],
    )


FAST = toybox_config("train", num_triplets=32, batch=8, epochs=1, lr=3e-3, lora_alpha=16.0)


def world_triplets(world, n: int = 32, seed: int = 0) -> list[Triplet]:
    return make_triplets(world["real"], {"dreambooth": world["synthetic"]}, world["negatives"],
                         num_synthetic=16, num_triplets=n, seed=seed)


# --- losses ----------------------------------------------------------------------------------------------


def _cos(u, v) -> float:
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def loop_info_nce(A, P, N, t) -> float:
    total = 0.0
    for p in P:  # every positive ...
        per_anchor = 0.0
        for a in A:  # ... against every anchor, with all negatives
            logits = [_cos(a, p) / t] + [_cos(a, n) / t for n in N]
            per_anchor += -logits[0] + math.log(sum(math.exp(v) for v in logits))
        total += per_anchor / len(A)
    return total / len(P)


def loop_multi_pos(A, P, N, t) -> float:
    total = 0.0
    for a in A:
        pos = sum(math.exp(_cos(a, p) / t) for p in P)
        neg = sum(math.exp(_cos(a, n) / t) for n in N)
        total += -math.log(pos / (pos + neg))
    return total / len(A)


def loop_hinge(A, P, N, m) -> float:
    return sum(max(0.0, m - ((1 - _cos(a, n)) - (1 - _cos(a, p)))) for a, p, n in zip(A, P, N)) / len(A)


def test_losses_on_a_worked_example():
    # one triplet, 2-d: a = (1,0), p = (1,1) (cos 1/sqrt2), n = (0,1) (cos 0); tau = 1
    a, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    c = 1 / math.sqrt(2)
    expected = -c + math.log(math.exp(c) + math.exp(0))  # = log(1 + e^-c) = log(1.4931) = 0.4008
    assert info_nce(a, p, n, 1.0).item() == pytest.approx(expected, abs=1e-6)
    assert info_nce_multi_pos(a, p, n, 1.0).item() == pytest.approx(expected, abs=1e-6)  # one positive: same
    assert expected == pytest.approx(0.40083, abs=1e-5)
    # hinge: d(a,n) - d(a,p) = 1 - (1 - c) = 0.7071 > margin -> 0; swapped roles: 0.05 + 0.7071
    assert hinge(a, p, n, 0.05).item() == 0.0
    assert hinge(a, n, p, 0.05).item() == pytest.approx(0.05 + c, abs=1e-6)
    assert triplet_accuracy(a, p, n) == 1.0 and triplet_accuracy(a, n, p) == 0.0


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_losses_match_explicit_loops(t):
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(3, 4, generator=g) for _ in range(3))
    A, P, N = a.tolist(), p.tolist(), n.tolist()
    assert info_nce(a, p, n, t).item() == pytest.approx(loop_info_nce(A, P, N, t), rel=1e-5)
    assert info_nce_multi_pos(a, p, n, t).item() == pytest.approx(loop_multi_pos(A, P, N, t), rel=1e-5)
    assert hinge(a, p, n, 0.3).item() == pytest.approx(loop_hinge(A, P, N, 0.3), abs=1e-6)
    acc = sum(_cos(x, y) > _cos(x, z) for x, y, z in zip(A, P, N)) / 3
    assert triplet_accuracy(a, p, n) == pytest.approx(acc)
    # embeddings are L2-normalized inside: scale does not matter
    assert info_nce(3 * a, 0.5 * p, 2 * n, t).item() == pytest.approx(info_nce(a, p, n, t).item(), rel=1e-5)


def test_split_positive_follows_label():
    left, right = torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0], [20.0]])
    pos, neg = split_positive(left, right, torch.tensor([0, 1]))
    assert pos.flatten().tolist() == [1.0, 20.0] and neg.flatten().tolist() == [10.0, 2.0]


# --- triplets --------------------------------------------------------------------------------------------

REAL = [f"real/{i}.jpg" for i in range(3)]
SYN = {"dreambooth": [f"db/{i}.jpg" for i in range(40)], "cut_paste": [f"cp/{i}.jpg" for i in range(20)]}
NEG = [f"neg/{i}.jpg" for i in range(30)]


def test_triplets_counts_pools_and_labels():
    ts = make_triplets(REAL, SYN, NEG, num_synthetic=25, num_triplets=400, seed=1)
    assert [t.id for t in ts] == list(range(400))
    synthetic = {p for ps in SYN.values() for p in ps}
    assert all(t.ref_path in REAL for t in ts)  # ref_type real: anchors are the real images only
    assert all(t.positive_path in synthetic and t.negative_path in NEG for t in ts)
    assert {t.left_path if t.label == 0 else t.right_path for t in ts} == {t.positive_path for t in ts}
    assert len({t.positive_path for t in ts}) == 25  # the cap (400 draws cover all 25 kept)
    assert {t.ref_path for t in ts} == set(REAL)
    assert 150 < sum(t.label for t in ts) < 250  # random left/right swap
    for t in ts:
        assert t.positive_source == ("dreambooth" if t.positive_path.startswith("db/") else "cut_paste")
    assert {t.positive_source for t in ts} == {"dreambooth", "cut_paste"}  # sources pooled before the cap


def test_triplets_seeded_and_independent_of_source_order():
    a = make_triplets(REAL, SYN, NEG, num_triplets=50, seed=3)
    assert a == make_triplets(REAL, dict(reversed(list(SYN.items()))), NEG, num_triplets=50, seed=3)
    assert a != make_triplets(REAL, SYN, NEG, num_triplets=50, seed=4)


def test_triplets_ref_types():
    real = make_triplets(REAL, SYN, NEG, num_synthetic=10, num_triplets=300, seed=0)
    kept = {t.positive_path for t in real}
    syn = make_triplets(REAL, SYN, NEG, ref_type="synthetic", num_synthetic=10, num_triplets=300, seed=0)
    assert {t.ref_path for t in syn} == kept  # anchors from the kept synthetic images
    both = make_triplets(REAL, SYN, NEG, ref_type="both", num_synthetic=10, num_triplets=300, seed=0)
    assert {t.ref_path for t in both} == kept | set(REAL)
    with pytest.raises(ValueError, match="ref_type"):
        make_triplets(REAL, SYN, NEG, ref_type="fake", num_triplets=5)  # type: ignore[arg-type]


def test_triplets_fallback_to_real_and_augmented_real_baseline():
    with pytest.warns(UserWarning, match="no synthetic positives"):
        ts = make_triplets(REAL, {"dreambooth": []}, NEG, num_triplets=50, seed=0)
    assert {t.positive_path for t in ts} <= set(REAL) and {t.positive_source for t in ts} == {REAL_SOURCE}
    base = make_triplets(REAL, {"real": REAL}, NEG, num_triplets=50, seed=0)  # baseline: real as positives
    assert {t.positive_path for t in base} == set(REAL)
    with pytest.warns(UserWarning, match="fewer than num_synthetic=450"):
        make_triplets(REAL, SYN, NEG, num_synthetic=450, num_triplets=5)


def test_positives_per_source_counts_distinct_images(tmp_path):
    rows = [Triplet(0, 0, "r.jpg", "p1.png", "n.png", "dreambooth"), Triplet(1, 1, "r.jpg", "n.png", "p1.png", "dreambooth"),
            Triplet(2, 1, "r.jpg", "n2.png", "c1.png", "cut_paste"), Triplet(3, 0, "r.jpg", "p2.png", "n.png", "dreambooth")]
    assert positives_per_source(rows) == {"cut_paste": 1, "dreambooth": 2}  # p1 twice, negatives never counted
    ts = make_triplets(REAL, SYN, NEG, num_synthetic=25, num_triplets=400, seed=1)
    counts = positives_per_source(save_triplets(ts, tmp_path / "t.csv"))  # from the CSV the train stage writes
    assert sum(counts.values()) == 25 and set(counts) == {"cut_paste", "dreambooth"}
    with pytest.warns(UserWarning, match="no synthetic positives"):
        fallback = make_triplets(REAL, {"dreambooth_filtered": []}, NEG, num_triplets=50, seed=0)
    assert positives_per_source(fallback) == {REAL_SOURCE: len(REAL)}


def test_triplets_errors_name_the_input():
    with pytest.raises(ValueError, match="`negatives` is empty"):
        make_triplets(REAL, SYN, [], num_triplets=5)
    with pytest.raises(ValueError, match="no anchors.*`real` is empty.*ref_type='synthetic'"):
        make_triplets([], SYN, NEG, num_triplets=5)
    with pytest.raises(ValueError, match="no positives"), pytest.warns(UserWarning):
        make_triplets([], {}, NEG, ref_type="synthetic", num_triplets=5)


def test_triplets_csv_round_trip_and_reference_format(tmp_path):
    ts = make_triplets(REAL, SYN, NEG, num_triplets=20, seed=0)
    path = save_triplets(ts, tmp_path / "t" / "mug.csv")
    with open(path, newline="") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    assert load_triplets(path) == ts
    ref = tmp_path / "ref.csv"  # the reference's columns only
    ref.write_text("id,label,ref_path,left_path,right_path\n0,1,a.jpg,n.jpg,p.jpg\n")
    (t,) = load_triplets(ref)
    assert (t.positive_path, t.negative_path, t.positive_source) == ("p.jpg", "n.jpg", "unknown")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label,anchor,left_path,right_path\n0,0,a,b,c\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing column\(s\) ref_path"):
        load_triplets(bad)


# --- LoRA training ---------------------------------------------------------------------------------------


def test_paper_training_settings_and_typos_fail():
    c = experiment_params("pods-dinov2_vitb14", "train")["train"]
    assert (c.loss, c.temperature, c.margin, c.feature) == ("info_nce", 0.07, 0.05, "cls+patch")
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (16, 0.5, 0.3)
    assert (c.lr, c.betas, c.weight_decay) == (3e-4, (0.5, 0.999), 0)
    assert (c.batch, c.epochs, c.max_steps, c.augment, c.ref_type) == (16, 2, None, True, "real")
    assert (c.num_synthetic, c.num_triplets, c.device, c.num_workers) == (450, 4500, "cpu", 0)
    assert toybox_params()["train"].num_triplets == 320 < c.num_triplets
    with pytest.raises(Exception, match="lora_rank"):
        toybox_config("train", lora_rank=4)  # type: ignore[call-arg]


def test_lora_on_qkv_only_adapters_train_and_input_untouched(world):
    base = tiny_backbone()
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    bb = add_lora(base, FAST, seed=0)
    trainable = [n for n, p in bb.model.named_parameters() if p.requires_grad]
    assert trainable and all(".attn.qkv.lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2  # lora_A, lora_B per block
    lora_b = {n: p.detach().clone() for n, p in bb.model.named_parameters() if "lora_B" in n}
    assert all(float(v.abs().max()) == 0 for v in lora_b.values())  # peft init: B = 0, a no-op adapter
    fit(bb, world_triplets(world, 16), dataclasses.replace(FAST, max_steps=2), seed=0, progress=False)
    state = vit(bb.model).state_dict()
    after = {k.replace("base_layer.", ""): v for k, v in state.items() if "lora_" not in k}
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # frozen base weights
    assert all(not torch.equal(p, lora_b[n]) for n, p in bb.model.named_parameters() if "lora_B" in n)
    assert all(torch.equal(v, before[k]) for k, v in base.model.state_dict().items())  # the input backbone
    assert not any("lora" in n for n, _ in base.model.named_modules())


def test_adapter_save_load_reproduces_embeddings_exactly(world, tmp_path):
    base = tiny_backbone()
    bb = add_lora(base, FAST, seed=0)
    fit(bb, world_triplets(world, 16), dataclasses.replace(FAST, max_steps=2), seed=0, progress=False)
    save_adapter(bb, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    loaded = load_personalized(base, tmp_path / "adapter")
    assert not loaded.model.training
    x = torch.randn(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for feature in ("cls", "cls+patch"):
            assert torch.equal(bb.embedding(x, feature), loaded.embedding(x, feature))
        assert not torch.allclose(base.embedding(x), loaded.embedding(x))  # training did change it
    images = world["target_test"][:3]
    assert torch.equal(embed_images(bb, images), embed_images(loaded, images))
    merged = load_personalized(base, tmp_path / "adapter", merge=True)  # what evaluation uses
    assert not any("lora" in n for n, _ in merged.model.named_modules())
    with torch.no_grad():
        assert torch.allclose(merged.embedding(x, "cls+patch"), loaded.embedding(x, "cls+patch"), atol=1e-5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no adapter_config.json"):
        load_personalized(base, tmp_path / "empty")


def test_same_seed_same_losses(world):
    cfg = dataclasses.replace(FAST, max_steps=3)
    ts = world_triplets(world, 24)
    def losses(seed):
        return [r["loss"] for r in fit(add_lora(tiny_backbone(), cfg, seed), ts, cfg, seed, progress=False)]

    first = losses(5)
    assert losses(5) == first and len(first) == 3
    assert losses(6) != first


@pytest.mark.parametrize("loss", ["multi_pos", "hinge"])
def test_other_losses_train(world, loss):
    cfg = dataclasses.replace(FAST, loss=loss, max_steps=2, augment=False, feature="cls")
    log = fit(add_lora(tiny_backbone(), cfg, 0), world_triplets(world, 16), cfg, 0, progress=False)
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)


def test_train_writes_adapter_log_and_config(world, tmp_path):
    ts = world_triplets(world, 20)
    csv_path = save_triplets(ts, tmp_path / "triplets.csv")
    cfg = dataclasses.replace(FAST, batch=8, epochs=2, max_steps=5)  # 3 steps an epoch, capped at 5
    base = tiny_backbone()
    out = tmp_path / "run"
    summary = train(base, csv_path, cfg, seed=2, out_dir=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "train_config.json", "train_log.csv"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "loss", "accuracy"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [int(r["epoch"]) for r in rows] == [0, 0, 0, 1, 1]
    info = json.loads((out / "train_config.json").read_text())
    assert info == json.loads(json.dumps({k: v for k, v in summary.items() if k != "seconds"}))
    assert info["config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert (info["seed"], info["backbone"], info["triplets"], info["steps"]) == (2, "tiny", 20, 5)
    assert (out / info["triplets_csv"]).resolve() == csv_path.resolve() and summary["seconds"] >= 0
    # the file holds only what the inputs determine: the same run again writes the same bytes
    again = tmp_path / "again"
    train(base, csv_path, cfg, seed=2, out_dir=again, progress=False)
    for name in ("train_config.json", "train_log.csv", "adapter/adapter_model.safetensors"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    personal = load_personalized(base, out)  # the output folder itself works too
    assert personal.name == "tiny" and not list(tmp_path.glob(".run.tmp-*"))


def test_training_separates_the_instance_from_its_category_mates(world):
    """Mean cosine of the target's real images to its held-out images minus to the mates' held-out
    images (two mates never seen in training), on the CLS feature the evaluation uses."""
    base = tiny_backbone()

    def separation(bb) -> float:
        real = embed_images(bb, world["real"])
        return float((real @ embed_images(bb, world["target_test"]).T).mean()
                     - (real @ embed_images(bb, world["mates_test"]).T).mean())

    cfg = dataclasses.replace(FAST, num_triplets=128, batch=16, epochs=2)  # 16 steps
    bb = add_lora(base, cfg, seed=0)
    log = fit(bb, world_triplets(world, 128), cfg, seed=0, progress=False)
    before, after = separation(base), separation(bb)
    assert before < 0.1
    assert after > before + 0.3, (before, after)
    assert log[-1]["loss"] < log[0]["loss"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_fails_naming_the_key(world):
    cfg = dataclasses.replace(FAST, device="cuda")
    with pytest.raises(RuntimeError, match="train.device is 'cuda'.*use cpu or auto"):
        fit(add_lora(tiny_backbone(), cfg, 0), world_triplets(world, 8), cfg, 0, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_training_saves_an_adapter_that_loads_on_cpu(world, tmp_path):
    cfg = dataclasses.replace(FAST, device="cuda", max_steps=3, bf16=True)
    base = tiny_backbone()
    summary = train(base, world_triplets(world, 24), cfg, seed=0, out_dir=tmp_path / "run", progress=False)
    assert summary["device"] == "cuda" and summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    personal = load_personalized(base, tmp_path / "run")  # base on the CPU: the adapter loads there
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        assert not torch.allclose(personal.embedding(x), base.embedding(x))


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / "models/toybox/encoder/config.json").is_file(),
                    reason="models/toybox not built yet")
def test_toybox_training_increases_the_instance_separation(toybox_world, tmp_path):
    """The shipped toybox encoder, LoRA-trained on one toybox instance: positives are half of its test
    views (standing in for good synthetic positives), negatives its category mates' train images.
    Separation (mean cosine of its train images to its held-out test views minus to its mates' test
    images) must grow by a clear margin."""
    from prpg.core import backbones
    from prpg.train.contrastive import load_personalized, train
    from prpg.data import load_dataset

    torch.set_num_threads(2)
    root = Path(__file__).resolve().parents[1]
    ds = load_dataset(toybox_world / "toybox")
    inst, mates = "mug_06", [i.name for i in ds.instances_in(category="mug") if i.name != "mug_06"]
    real = [r.path for r in ds.images("train", inst)]
    test = [r.path for r in ds.images("test", inst)]
    positives, held_out = test[0::2], test[1::2]
    negatives = [r.path for m in mates for r in ds.images("train", m)]
    mate_test = [r.path for m in mates[:6] for r in ds.images("test", m)]
    base = backbones.load(root / "models/toybox/encoder")

    def separation(bb) -> float:
        a, own, other = (embed_images(bb, x) for x in (real, held_out, mate_test))
        return float((a @ own.T).mean() - (a @ other.T).mean())

    cfg = dataclasses.replace(toybox_params()["train"], num_triplets=320, epochs=1)
    triplets = make_triplets(real, {"views": positives}, negatives, num_triplets=cfg.num_triplets, seed=0)
    train(base, triplets, cfg, seed=0, out_dir=tmp_path / "run", progress=False)
    before, after = separation(base), separation(load_personalized(base, tmp_path / "run"))
    print(f"toybox mug_06 separation: {before:.3f} -> {after:.3f}")
    assert after > before + 0.05, (before, after)


def test_positive_sets_read_each_source_where_its_stage_writes(tmp_path, monkeypatch):
    from prpg.train.triplets import positive_sets

    monkeypatch.chdir(tmp_path)  # POSITIVE_SOURCES are relative to the repository root
    for folder, names in (("outputs/filtered/mug_06/kept", ["10.png", "2.png"]),
                          ("outputs/synthetic/mug_06/cut_paste", ["0.png", "notes.txt"]),
                          ("outputs/filtered/mug_07/kept", ["0.png"])):
        Path(folder).mkdir(parents=True)
        for name in names:
            (Path(folder) / name).write_bytes(b"")
    real = ["data/train/mug_06/a.jpg"]
    sets = positive_sets(["dreambooth_filtered", "real", "cut_paste", "dreambooth"], "mug_06", real)
    assert sets == {"dreambooth_filtered": [Path("outputs/filtered/mug_06/kept/2.png"),
                                            Path("outputs/filtered/mug_06/kept/10.png")],
                    "real": real, "cut_paste": [Path("outputs/synthetic/mug_06/cut_paste/0.png")],
                    "dreambooth": []}  # not synthesized: no positives from it
