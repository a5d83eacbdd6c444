"""The toybox model zoo: tokenizer ids, gate metrics against hand computations, the training
functions at micro scale, and the shipped models' quality gates where they run in seconds."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from prpg.zoo import gates
from prpg.zoo.tokenizer import build_clip_tokenizer
from tests.conftest import toybox_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models/toybox"
# A same-architecture generator small enough to train in seconds.
# A tiny generator; training extras (crops, object weighting, close-ups) off unless a test turns one on.
TINY_GEN = dict(resolution=32, vae_channels=(8, 16), unet_channels=(16, 32), attention_head_dim=4, text_hidden=16,
                text_layers=1, text_heads=1, max_length=16, vae_crop=None, object_weight=1.0, object_region="mask",
                object_zoom=None)


def tiny_gen(**changes):
    """The toybox generator config at TINY_GEN's size, with `changes`."""
    return toybox_config("pretrain.generator", **{**TINY_GEN, **changes})


def test_tokenizer_gives_openai_clip_ids(tmp_path):
    import open_clip

    ours = build_clip_tokenizer(tmp_path)
    reference = open_clip.get_tokenizer("ViT-B-32")  # OpenAI CLIP's tokenizer, as shipped by open_clip
    for text in ["a photo of <new1> mug", "A photo of a tote on a wooden table, with other totes"]:
        ids = ours(text).input_ids
        assert ids == reference([text])[0][: len(ids)].tolist()
    assert len(ours) == 49408


def test_retrieval_map_matches_hand_computation():
    g = torch.eye(3)  # gallery items a, b, c on orthogonal axes
    q = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
    # query 0 (label a): a ranked first -> AP 1; query 1 (label b): c, b, a -> AP 1/2
    assert gates.retrieval_map(q, ["a", "b"], g, ["a", "b", "c"]) == pytest.approx(0.75)
    sims = (q @ g.T).numpy()
    ref = np.mean([average_precision_score([1, 0, 0], sims[0]), average_precision_score([0, 1, 0], sims[1])])
    assert gates.retrieval_map(q, ["a", "b"], g, ["a", "b", "c"]) == pytest.approx(ref)


def test_usual_pose_keeps_train_images_and_the_in_distribution_split():
    from prpg.data.dataset import ImageRecord

    recs = [ImageRecord(Path(f"{k}.jpg"), "mug_01", split, None, ts) for k, (split, ts) in enumerate(
        [("train", None), ("test", "in_distribution"), ("test", "pose"), ("test", "distractors"),
         ("test", "pose_and_distractors"), ("test", None)])]
    assert [r.path.stem for r in gates.usual_pose(recs)] == ["0", "1"]


def test_instance_margin_hand_computed():
    f = torch.tensor([[1.0, 0.0]])
    own = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    mates = torch.tensor([[0.0, 1.0]])
    assert gates.instance_margin(f, own, mates) == pytest.approx((1.0 + 0.6) / 2 - 0.0)


def test_min_snr_weights_match_the_schedule_by_hand():
    from diffusers import DDPMScheduler

    from prpg.zoo.generator import SCHEDULE, min_snr_weights

    sched = DDPMScheduler(**SCHEDULE)
    t = torch.tensor([0, 100, 500, 999])
    # SD's scaled-linear betas, by hand: alpha_bar_t = prod(1 - beta), SNR = alpha_bar / (1 - alpha_bar)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alpha_bar = np.cumprod(1 - betas)[t.numpy()]
    snr = alpha_bar / (1 - alpha_bar)
    want = np.minimum(snr, 5.0) / snr
    assert min_snr_weights(sched, t, 5.0).numpy() == pytest.approx(want, rel=1e-4)
    assert want[0] < 0.01 and want[-1] == 1.0  # nearly clean steps weigh little, the noisiest fully
    assert torch.equal(min_snr_weights(sched, t, None), torch.ones(4))


def test_token_targets_label_covered_patches_with_the_category():
    from prpg.zoo.encoder import token_targets

    m = torch.zeros(2, 1, 16, 16)
    m[0, 0, :8, :8] = 1.0  # image 0: the top-left patch fully covered
    m[1, 0, 8:, :] = 0.6  # image 1: the bottom row at 60 % coverage (per-pixel alpha)
    t = token_targets(m, torch.tensor([3, 1]), patch=8, background=5)
    assert t.tolist() == [[3, 5, 5, 5], [5, 5, 1, 1]]  # row-major, like the ViT's patch tokens


def test_encoder_views_and_augmentation_keep_the_object_under_its_mask():
    from PIL import Image

    from prpg.zoo.encoder import augment, cut_views

    cfg = toybox_config("pretrain.encoder", image_size=32, resize=36, texture_swap=0.0,
                        background_swap=0.0, rotation=0.0, jitter=0.0,
                        grayscale=0.0)
    a = np.zeros((64, 64, 3), np.uint8)
    a[20:40, 10:50] = (255, 0, 0)  # a red 40 x 20 object on black
    mask = a[..., 0] > 0
    views, masks = cut_views(Image.fromarray(a), mask, cfg, np.random.default_rng(0))
    assert views.shape == (3, 3, 36, 36) and masks.shape == (3, 36, 36) and views.dtype == torch.uint8
    # "object": a square of side (1 + 2 margin) x 40 px around the 40 x 20 object, margin in [0.1, 0.4]
    assert 0.5 / 1.8**2 - 0.01 < masks[0].float().mean() / 255 < 0.5 / 1.2**2 + 0.01
    # "box": the tight box, shorter side to 36 * 36/32 then center-cropped: the object fills it
    assert masks[1].float().mean() / 255 > 0.7
    x, m = augment(views[None], masks[None], torch.zeros(8, dtype=torch.long), cfg, torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, 32, 32) and m.shape == (8, 1, 32, 32)
    from prpg.zoo.encoder import IMAGENET_MEAN, IMAGENET_STD

    rgb = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    inside, outside = m[:, 0] > 0.9, m[:, 0] < 0.1
    # Under the mask sits the object (one bright channel after the channel shuffle); outside it, black.
    assert (rgb.amax(dim=1)[inside] > 0.8).float().mean() > 0.95
    assert (rgb.amax(dim=1)[outside] < 0.2).float().mean() > 0.95


def test_micro_pretraining_saves_loadable_models(tmp_path):
    from PIL import Image

    from prpg.core.models import load_backbone, load_generator
    from prpg.zoo.encoder import embed, eval_transform, pretrain_encoder
    from prpg.zoo.generator import pretrain_generator

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(6)]
    masks = [np.zeros((40, 40), bool) for _ in range(6)]
    for k, m in enumerate(masks):
        m[5 + k : 30, 10 : 20 + k] = True
    ecfg = toybox_config("pretrain.encoder", image_size=32, resize=36, patch_size=8, embed_dim=32,
                         depth=1, heads=2, steps=2, batch=4)
    stats = pretrain_encoder(images, masks, [0, 1, 2, 0, 1, 2], 3, tmp_path / "enc", ecfg, seed=0)
    assert stats["params"] > 0 and len(stats["losses"]) == 2
    enc = load_backbone(tmp_path / "enc")
    assert embed(enc, images, eval_transform(ecfg)).shape == (6, 32)

    gcfg = tiny_gen(vae_steps=2, vae_batch=2, unet_steps=2, unet_batch=2, category_caption=0.5,
                           object_weight=4.0, object_zoom=(1.2, 2.0))
    gstats = pretrain_generator(images, ["a photo of a mug on a wooden table"] * 6, tmp_path / "gen", gcfg, seed=0,
                                work_dir=tmp_path / "w", categories=["mug"] * 6, masks=masks)
    assert len(gstats["losses"]["unet"]) == 2 and np.isfinite(gstats["unet_final_loss"])
    assert gstats["train_images"] == 12  # 6 scenes + their 6 object close-ups
    from safetensors import safe_open

    with safe_open(str(tmp_path / "gen/unet/diffusion_pytorch_model.safetensors"), "pt") as f:
        key = next(iter(f.keys()))
        assert f.get_tensor(key).dtype == torch.float16  # shipped in fp16
    vae_cfg = json.loads((tmp_path / "gen/vae/config.json").read_text())
    assert vae_cfg["scaling_factor"] != 0.18215  # fitted to unit-variance latents
    pipe = load_generator(tmp_path / "gen")
    assert pipe.unet.dtype == torch.float32  # upcast on load


def test_dreambooth_trains_unet_and_text_encoder_only(tmp_path):
    from PIL import Image

    from prpg.personalize import dreambooth
    from prpg.zoo.generator import build_pipeline

    torch.manual_seed(0)
    gcfg = tiny_gen()
    pipe = build_pipeline(gcfg, build_clip_tokenizer(tmp_path, max_length=16))
    before = {n: {k: v.clone() for k, v in getattr(pipe, n).state_dict().items()} for n in ("unet", "vae", "text_encoder")}
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    losses = dreambooth(pipe, ims, ims[:2], "mug", toybox_config("personalize", steps=3, lr=1e-3), seed=0)
    assert len(losses) == 3 and all(np.isfinite(losses))
    changed = {n: any(not torch.equal(v, getattr(pipe, n).state_dict()[k]) for k, v in sd.items()) for n, sd in before.items()}
    assert changed == {"unet": True, "vae": False, "text_encoder": True}


@pytest.mark.skipif(not (SHIPPED / "encoder/card.json").is_file(), reason="models/toybox not built yet")
def test_shipped_models_load_offline_with_the_right_shapes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from prpg.core.models import TOYBOX_GENERATOR, load_backbone, load_generator
    from prpg.zoo.generator import sample

    monkeypatch.chdir(ROOT)
    enc = load_backbone("toybox")
    dim = toybox_config("pretrain.encoder").embed_dim
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, dim)
    assert enc.forward_features(torch.randn(1, 3, 128, 128)).shape == (1, 1 + 16 * 16, dim)
    pipe = load_generator(TOYBOX_GENERATOR)
    assert np.asarray(sample(pipe, ["a photo of a mug"], seed=0, steps=2)[0]).shape == (64, 64, 3)
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 40e6, f"models/toybox is {size / 1e6:.1f} MB (budget 40 MB)"
    for sub in ("encoder", "generator"):
        card = json.loads((SHIPPED / sub / "card.json").read_text())
        assert card["metrics"], f"{sub} card has no measured gates"


@pytest.mark.parametrize("crop, seen", [(16, 16), (None, 32), (64, 32)])
def test_vae_trains_on_random_crops_of_the_configured_size(tmp_path, crop, seen):
    """`vae_crop` feeds the VAE random crops (a crop larger than the image means the whole image)."""
    from prpg.zoo.generator import build_pipeline, train_vae

    cfg = tiny_gen(vae_steps=3, vae_batch=2, vae_crop=crop)
    vae = build_pipeline(cfg, build_clip_tokenizer(tmp_path / "tok", max_length=16)).vae
    shapes, encode = [], vae.encode
    vae.encode = lambda x: shapes.append(tuple(x.shape)) or encode(x)
    pixels = torch.rand(5, 3, 32, 32) * 2 - 1
    losses = train_vae(vae, pixels, cfg, torch.Generator().manual_seed(0))
    assert shapes == [(2, 3, seen, seen)] * 3 and len(losses) == 3 and np.isfinite(losses).all()


def test_vae_crop_must_be_positive():
    with pytest.raises(ValueError, match="vae_crop"):
        toybox_config("pretrain.generator", vae_crop=0)


@pytest.mark.parametrize("share, expect", [(0.0, {"full"}), (1.0, {"bare"}), (0.5, {"full", "bare"})])
def test_category_caption_swaps_in_the_bare_category_prompt(tmp_path, share, expect):
    """`category_caption` trains that share of samples on "a photo of a {category}" instead of the caption."""
    from prpg.zoo.generator import build_pipeline, tokenize, train_denoiser

    cfg = tiny_gen(unet_steps=4, unet_batch=4, caption_dropout=0.0, category_caption=share)
    tok = build_clip_tokenizer(tmp_path / "tok", max_length=16)
    pipe = build_pipeline(cfg, tok)
    full = tokenize(tok, ["a photo of a mug on a wooden table"] * 3)
    bare = tokenize(tok, ["a photo of a mug"] * 3)
    seen = []
    pipe.text_encoder.register_forward_pre_hook(lambda module, args: seen.extend(args[0].clone()))
    mean = torch.randn(3, cfg.latent_channels, 16, 16)
    losses = train_denoiser(pipe, mean, torch.full_like(mean, 0.1), full, tokenize(tok, [""])[0], cfg,
                            torch.Generator().manual_seed(0), category_ids=bare)
    kinds = {"full" if torch.equal(ids, full[0]) else "bare" if torch.equal(ids, bare[0]) else "other" for ids in seen}
    assert len(seen) == 16 and kinds == expect and np.isfinite(losses).all()


def test_category_caption_needs_the_categories(tmp_path):
    from prpg.zoo.generator import pretrain_generator

    with pytest.raises(ValueError, match="category_caption"):
        toybox_config("pretrain.generator", category_caption=1.5)
    cfg = tiny_gen(category_caption=0.3)
    with pytest.raises(ValueError, match="one category per training image"):
        pretrain_generator([None] * 2, ["a photo of a mug"] * 2, tmp_path / "g", cfg, seed=0, work_dir=tmp_path)


def test_latent_loss_weights_by_hand():
    """Object coverage averaged over each latent's pixels: 1 on background, object_weight on the object."""
    from prpg.zoo.generator import latent_loss_weights

    cov = torch.zeros(1, 1, 4, 4)
    cov[0, 0, :2, :2] = 1.0  # the top-left latent fully covered
    cov[0, 0, 2, 2] = 1.0  # a quarter of the bottom-right latent covered
    w = latent_loss_weights(cov, 2, object_weight=5.0)
    assert torch.allclose(w[0, 0], torch.tensor([[5.0, 1.0], [1.0, 1.0 + 4.0 * 0.25]]))
    assert torch.equal(latent_loss_weights(cov, 2, object_weight=1.0), torch.ones(1, 1, 2, 2))


def test_weighted_mse_by_hand():
    import torch.nn.functional as F

    from prpg.zoo.generator import weighted_mse

    pred = torch.zeros(2, 2, 1, 2)
    target = torch.tensor([[[[1.0, 3.0]], [[1.0, 3.0]]], [[[2.0, 2.0]], [[2.0, 2.0]]]])
    plain = weighted_mse(pred, target, None)
    assert torch.allclose(plain, F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)))
    w = torch.tensor([[[[3.0, 1.0]]], [[[3.0, 1.0]]]])  # (N, 1, h, w): the first position weighs 3, over channels
    # sample 0: errors 1 and 9 in both channels -> (3*1 + 1*9) / (3 + 1) = 3; sample 1: all errors 4 -> 4
    assert torch.allclose(weighted_mse(pred, target, w), torch.tensor([3.0, 4.0]))


def test_denoiser_weighs_each_sample_with_its_own_map(tmp_path, monkeypatch):
    """The loss weights follow the images drawn for the batch (the first draw of each step's generator)."""
    from prpg.zoo import generator as G

    cfg = tiny_gen(unet_steps=1, unet_batch=3, object_weight=2.0)
    tok = build_clip_tokenizer(tmp_path / "tok", max_length=16)
    pipe = G.build_pipeline(cfg, tok)
    mean = torch.randn(5, cfg.latent_channels, 16, 16)
    weights = torch.arange(5.0)[:, None, None, None].expand(5, 1, 16, 16) + 1  # image k weighs k + 1
    seen = []
    real = G.weighted_mse
    monkeypatch.setattr(G, "weighted_mse", lambda p, t, w: seen.append(w) or real(p, t, w))
    ids = G.tokenize(tok, ["a photo of a mug"] * 5)
    G.train_denoiser(pipe, mean, torch.full_like(mean, 0.1), ids, G.tokenize(tok, [""])[0], cfg,
                     torch.Generator().manual_seed(0), loss_weights=weights)
    drawn = torch.randint(5, (3,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[0][:, 0, 0, 0], drawn.float() + 1)


def test_object_weight_needs_the_masks(tmp_path):
    from prpg.zoo.generator import build_pipeline, pretrain_generator, tokenize, train_denoiser

    with pytest.raises(ValueError, match="object_weight"):
        toybox_config("pretrain.generator", object_weight=0.5)
    cfg = tiny_gen(object_weight=3.0)
    with pytest.raises(ValueError, match="one object mask per training image"):
        pretrain_generator([None] * 2, ["a photo of a mug"] * 2, tmp_path / "g", cfg, seed=0, work_dir=tmp_path)
    tok = build_clip_tokenizer(tmp_path / "tok", max_length=16)
    mean = torch.randn(2, cfg.latent_channels, 16, 16)
    with pytest.raises(ValueError, match="object masks"):
        train_denoiser(build_pipeline(cfg, tok), mean, mean, tokenize(tok, ["a"] * 2), tokenize(tok, [""])[0], cfg,
                       torch.Generator())


def test_fill_mask_box_by_hand():
    from prpg.zoo.generator import fill_mask_box

    mask = np.zeros((5, 6), bool)
    mask[1, 1] = mask[3, 4] = True  # a tote's two handle ends: the box spans the arc between them
    want = np.zeros((5, 6), bool)
    want[1:4, 1:5] = True
    assert np.array_equal(fill_mask_box(mask), want)
    assert not fill_mask_box(np.zeros((3, 3), bool)).any()


@pytest.mark.parametrize("region", ["mask", "box"])
def test_object_region_chooses_what_the_loss_weighs(tmp_path, monkeypatch, region):
    from PIL import Image

    from prpg.zoo import generator as G

    cfg = tiny_gen(vae_steps=1, object_weight=3.0, object_region=region)
    mask = np.zeros((32, 32), bool)
    mask[4:12, 4:8] = mask[4:12, 20:24] = True  # two bars 8 px apart: the box also covers the gap
    seen = {}

    def stop(*args, **kwargs):
        seen["weights"] = args[8]
        raise RuntimeError("stop after the weights")

    monkeypatch.setattr(G, "train_denoiser", stop)
    with pytest.raises(RuntimeError, match="stop after"):
        G.pretrain_generator([Image.new("RGB", (32, 32))] * 2, ["a photo of a tote"] * 2, tmp_path / "g", cfg,
                             seed=0, work_dir=tmp_path, masks=[mask] * 2)
    region_mask = mask if region == "mask" else G.fill_mask_box(mask)
    want = G.latent_loss_weights(G.masks_to_tensor([region_mask] * 2, cfg.resolution), seen["weights"].shape[-1], 3.0)
    assert torch.equal(seen["weights"], want)
    # 2x2-px latents (16x16 at 32 px): the bars cover 2 x (4 x 2) latents, their box 4 x 10
    assert (seen["weights"] > 1).sum() == (16 if region == "mask" else 40) * 2
    with pytest.raises(ValueError, match="object_region"):
        toybox_config("pretrain.generator", object_region="blob")


def test_object_closeup_box_by_hand():
    from prpg.zoo.generator import object_closeup_box

    mask = np.zeros((60, 100), bool)
    mask[20:30, 42:48] = True  # box x 42..48, y 20..30: longer side 10
    assert object_closeup_box(mask, 2.0) == (35, 15, 55, 35)  # side 20, centred on (45, 25)
    corner = np.zeros((60, 100), bool)
    corner[0:20, 0:10] = True
    assert object_closeup_box(corner, 2.0) == (0, 0, 40, 40)  # side 40, shifted inside the image
    assert object_closeup_box(corner, 10.0) == (0, 0, 60, 60)  # capped at the shorter side
    with pytest.raises(ValueError, match="mask is empty"):
        object_closeup_box(np.zeros((8, 8), bool), 1.5)


def test_object_closeups_are_seeded_and_cut_image_and_mask_alike():
    from PIL import Image

    from prpg.zoo.generator import object_closeups

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    masks = [np.zeros((64, 64), bool) for _ in range(5)]
    for k, m in enumerate(masks):
        m[20 + k : 30 + k, 24:36] = True  # longer side 12
    crops, crop_masks = object_closeups([Image.fromarray(a) for a in arrays], masks, (1.2, 2.0), seed=3)
    again, _ = object_closeups([Image.fromarray(a) for a in arrays], masks, (1.2, 2.0), seed=3)
    assert [c.size for c in crops] == [c.size for c in again]
    for crop, cm, a, m in zip(crops, crop_masks, arrays, masks, strict=True):
        assert crop.size[0] == crop.size[1] and 12 * 1.2 - 1 <= crop.size[0] <= 12 * 2.0 + 1
        assert cm.sum() == m.sum()  # the whole object is inside its close-up
        # the crop's offset in the image, from where the object sits in each mask: the pixels are that window's
        top, left = np.argwhere(m)[0] - np.argwhere(cm)[0]
        side = crop.size[0]
        assert np.array_equal(np.asarray(crop), a[top : top + side, left : left + side])
    sizes = {c.size[0] for c in object_closeups([Image.fromarray(a) for a in arrays], masks, (1.2, 2.0), seed=4)[0]}
    assert sizes != {c.size[0] for c in crops}  # another seed, other factors
    with pytest.raises(ValueError, match="object_zoom"):
        toybox_config("pretrain.generator", object_zoom=(2.0, 1.2))
    with pytest.raises(ValueError, match="one object mask per training image"):
        from prpg.zoo.generator import pretrain_generator

        pretrain_generator([None] * 2, ["a"] * 2, Path("unused"), tiny_gen(object_zoom=(1.2, 2.0)),
                           seed=0, work_dir=Path("unused"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_pretraining_on_cuda_makes_the_cpu_draws(tmp_path):
    """On a GPU the recipe draws its random numbers on the CPU generator too: the same batches and noise,
    so the first losses agree with a CPU run up to floating-point differences."""
    from PIL import Image

    from prpg.zoo.generator import pretrain_generator

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    cfg = tiny_gen(vae_steps=2, vae_batch=2, unet_steps=2, unet_batch=2)
    runs = [pretrain_generator(images, ["a photo of a mug"] * 4, tmp_path / d, cfg, seed=0, work_dir=tmp_path / f"w{d}",
                               device=d)["losses"] for d in ("cpu", "cuda")]
    assert np.allclose(runs[0]["vae"], runs[1]["vae"], rtol=1e-3) and np.allclose(runs[0]["unet"], runs[1]["unet"], rtol=1e-3)


def _card_metrics(sub: str) -> dict:
    return json.loads((SHIPPED / sub / "card.json").read_text())["metrics"]


@pytest.mark.skipif(not (SHIPPED / "encoder/card.json").is_file(), reason="models/toybox not built yet")
def test_shipped_encoder_probe_reproduces_its_card():
    """The category probe of the card (val instances, objects), recomputed from the shipped encoder and
    the default toybox world; the gate (>= 0.90) itself is checked in the next test."""
    from prpg.data import load_dataset
    from prpg.core.models import load_backbone
    from prpg.zoo.encoder import eval_transform

    pool_root, world_root = ROOT / "outputs/pool/toybox_pool", ROOT / "outputs/data/toybox"
    if not (pool_root.is_dir() and world_root.is_dir()):
        pytest.skip("needs the default world and pool: `dvc repro data` and `prpg data build-pool`")
    pool, world = load_dataset(pool_root), load_dataset(world_root)
    enc, tf = load_backbone(SHIPPED / "encoder"), eval_transform(toybox_config("pretrain.encoder"))

    train = [r for s in ("train", "test") for r in pool.images(s)]
    val = [r for i in world.instances_in(split="val") for s in ("train", "test") for r in world.images(s, i.name)]
    probe = gates.fit_category_probe(gates.embed(enc, gates.object_crops(train), tf), [pool.instance(r.instance).category for r in train])
    acc = gates.category_probe_accuracy(probe, gates.embed(enc, gates.object_crops(val), tf), [world.instance(r.instance).category for r in val])
    card = _card_metrics("encoder")["category linear probe, val instances, objects (gate >= 0.90)"]
    assert acc == pytest.approx(card, abs=0.02)


# Both shipped models meet their gates (cards: encoder probe 0.907, generator 0.892 +- 0.020 on 240 samples).
GATES = [pytest.param("encoder", "category linear probe, val instances, objects (gate >= 0.90)", 0.90),
         pytest.param("generator", "samples recognised as their category (gate >= 0.80)", 0.80)]


@pytest.mark.skipif(not (SHIPPED / "encoder/card.json").is_file(), reason="models/toybox not built yet")
@pytest.mark.parametrize("sub, key, gate", GATES)
def test_shipped_model_meets_its_gate(sub, key, gate):
    assert _card_metrics(sub)[key] >= gate


@pytest.mark.parametrize("model", ["encoder", "generator"])
def test_model_cards_rebuild_from_the_tracked_metrics(model, tmp_path):
    """The committed cards are what the card functions make from params.yaml's pretrain group, each
    model's training.json and reports/metrics/toybox_models.json (the pool: 5 categories x 150)."""
    from prpg.core.params import load_params
    from prpg.zoo.card import card_readme, encoder_card, generator_card, write_card

    params = load_params(ROOT / "params.yaml")
    p, seed = params["pretrain"], params["common"].seed
    measured = json.loads((ROOT / "reports/metrics/toybox_models.json").read_text())
    training = json.loads((SHIPPED / model / "training.json").read_text())
    card = (encoder_card(p, seed, training, 5 * params["data"].toybox.pool_per_category, measured)
            if model == "encoder" else generator_card(p, seed, training, measured))
    committed = json.loads((SHIPPED / model / "card.json").read_text())
    size_mb = committed["facts"]["size on disk (MB)"]
    assert card_readme(card, size_mb) == (SHIPPED / model / "README.md").read_text()
    (tmp_path / "weights.bin").write_bytes(b"\0" * 1_500_000)
    readme = write_card(tmp_path, card)
    assert "| size on disk (MB) | 1.5 |" in readme.read_text()
    written = json.loads((tmp_path / "card.json").read_text())
    assert written["metrics"] == committed["metrics"]
    assert {**written["facts"], "size on disk (MB)": size_mb} == committed["facts"]


def test_object_crops_cut_each_image_to_its_mask_box(tmp_path):
    from prpg.data import load_dataset
    from tests.conftest import box_for, make_pods_tree

    ds = load_dataset(make_pods_tree(tmp_path / "pods"))
    records = ds.images("train")[:3]
    crops = gates.object_crops(records)
    for crop, record in zip(crops, records, strict=True):
        x0, y0, x1, y1 = box_for(int(Path(record.path).stem))
        assert crop.size == (x1 - x0, y1 - y0)
        assert crop.tobytes() == gates.load_images([record])[0].crop((x0, y0, x1, y1)).tobytes()
