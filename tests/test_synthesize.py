"""Stage "synthesize": positives (counts, prompt substitution, seeds), shared negatives, exact
cut-and-paste masks and scales, the shipped prompt files, and make_prompts' parsing. Generation runs
on a tiny random SD-class pipeline (32 px, 2 sampler steps)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prpg import prompts as pf
from prpg import synthesize as syn
from prpg.data import load_dataset
from prpg.runs.experiments import resolve
from prpg.synthesize import Cutout
from tests.conftest import toybox_params, toybox_config

ROOT = Path(__file__).resolve().parents[1]
MAGENTA = np.array([255, 0, 255], np.uint8)  # the object's colour; backgrounds never contain it


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from prpg.zoo.generator import build_pipeline
    from prpg.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    cfg = toybox_config("pretrain.generator", resolution=32, vae_channels=(8, 16), unet_channels=(16, 32),
                        attention_head_dim=4,
                          text_hidden=16, text_layers=1, text_heads=1, max_length=32)
    p = build_pipeline(cfg, build_clip_tokenizer(tmp_path_factory.mktemp("tok"), max_length=32))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def make_prompts():
    spec = importlib.util.spec_from_file_location("make_prompts", ROOT / "scripts/make_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


# ----------------------------------------------------------------------------- positives


def test_class_mode_makes_exactly_n_with_the_reference_prompt(pipe, tmp_path):
    cfg = toybox_config("synthesize.positives", n=3, prompt_mode="class", steps=2, batch=2, identifier="sks")
    out = syn.synthesize(pipe, "mug_03", "mug", tmp_path / "dreambooth", cfg, seed=0)
    rows = read_csv(out / "prompts.csv")
    assert [p.name for p in pngs(out)] == ["0000.png", "0001.png", "0002.png"]
    assert [r["file"] for r in rows] == ["0000.png", "0001.png", "0002.png"]
    assert {r["prompt"] for r in rows} == {"photo of a sks mug"}
    assert len({r["seed"] for r in rows}) == 3  # one seed per image
    assert Image.open(out / "0000.png").size == (32, 32)


def test_file_mode_samples_each_prompt_ceil_n_over_len_times(pipe, tmp_path):
    file = tmp_path / "prompts.json"
    file.write_text(json.dumps({"mug": ["A {identifier} {category} on a desk",
                                        "A <new1> mug in a sink",  # the reference's literal form
                                        "A close-up of a {identifier} {category}"]}))
    cfg = toybox_config("synthesize.positives", n=4, prompt_mode="file", prompt_file=str(file),
                        prompt_source=None, steps=2, batch=4, identifier="sks")
    out = syn.synthesize(pipe, "mug_03", "mug", tmp_path / "llm", cfg, seed=0)
    prompts = [r["prompt"] for r in read_csv(out / "prompts.csv")]
    assert len(pngs(out)) == 6  # ceil(4 / 3) = 2 images per prompt, prompt-major
    assert prompts == ["A sks mug on a desk"] * 2 + ["A sks mug in a sink"] * 2 + ["A close-up of a sks mug"] * 2
    assert not any(c in p for p in prompts for c in "{}<>")


def test_shipped_file_mode_gives_the_reference_500_for_450():
    cfg = toybox_config("synthesize.positives", n=450, prompt_file="pods")
    prompts = syn.synthesis_prompts(cfg, "tote_07", "tote")
    assert len(prompts) == 500 and len(set(prompts)) == 100
    assert all(prompts.count(p) == 5 and "<new1> tote" in p and "{" not in p for p in set(prompts))


def test_same_seed_same_files_other_seed_other_files(pipe, tmp_path):
    cfg = toybox_config("synthesize.positives", n=2, prompt_mode="class", steps=2, batch=2)
    a = syn.synthesize(pipe, "mug_03", "mug", tmp_path / "a", cfg, seed=7)
    b = syn.synthesize(pipe, "mug_03", "mug", tmp_path / "b", cfg, seed=7)
    c = syn.synthesize(pipe, "mug_03", "mug", tmp_path / "c", cfg, seed=8)
    for name in ("0000.png", "0001.png", "prompts.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "0000.png").read_bytes() != (c / "0000.png").read_bytes()
    # images of another instance with the same run seed get other noise
    d = syn.synthesize(pipe, "mug_04", "mug", tmp_path / "d", cfg, seed=7)
    assert read_csv(a / "prompts.csv")[0]["seed"] != read_csv(d / "prompts.csv")[0]["seed"]


@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_schedulers_sample_and_leave_the_pipeline_as_it_was(pipe, tmp_path, name):
    original = pipe.scheduler
    cfg = toybox_config("synthesize.positives", n=1, prompt_mode="class", steps=2, batch=1, scheduler=name)
    out = syn.synthesize(pipe, "mug_03", "mug", tmp_path / name, cfg, seed=0)
    assert len(pngs(out)) == 1 and pipe.scheduler is original
    assert type(syn.make_scheduler(name, original.config)).__name__ == {
        "ddim": "DDIMScheduler", "dpm++": "DPMSolverMultistepScheduler"}[name]


def test_a_failed_run_leaves_no_output(pipe, tmp_path, monkeypatch):
    out = tmp_path / "dreambooth"
    cfg = toybox_config("synthesize.positives", n=2, prompt_mode="class", steps=2, batch=1)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return original(*args, **kwargs)

    original = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        syn.synthesize(pipe, "mug_03", "mug", out, cfg, seed=0)
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- negatives


def test_negatives_are_made_once_per_category(pipe, tmp_path, monkeypatch):
    calls = []
    real = syn.generate_images
    monkeypatch.setattr(syn, "generate_images", lambda *a, **k: calls.append(k["desc"]) or real(*a, **k))
    cfg = toybox_config("priors.negatives", n=3, steps=2, batch=3)
    mug = syn.generate_negatives(pipe, "mug", tmp_path / "negatives", cfg, seed=0)
    stamps = {p.name: p.stat().st_mtime_ns for p in pngs(mug)}
    assert mug == tmp_path / "negatives/mug" and len(stamps) == 3
    assert {r["prompt"] for r in read_csv(mug / "prompts.csv")} == {"a photo of a mug"}

    again = syn.generate_negatives(pipe, "mug", tmp_path / "negatives", cfg, seed=0)  # second mug instance
    assert again == mug and calls == ["negatives mug"]
    assert {p.name: p.stat().st_mtime_ns for p in pngs(mug)} == stamps

    shoe = syn.generate_negatives(pipe, "shoe", tmp_path / "negatives", cfg, seed=0)
    assert calls == ["negatives mug", "negatives shoe"] and len(pngs(shoe)) == 3
    assert {r["prompt"] for r in read_csv(shoe / "prompts.csv")} == {"a photo of a shoe"}

    (mug / "0001.png").unlink()  # incomplete -> made again
    syn.generate_negatives(pipe, "mug", tmp_path / "negatives", cfg, seed=0)
    syn.generate_negatives(pipe, "mug", tmp_path / "negatives",
                           toybox_config("priors.negatives", n=4, steps=2, batch=4), seed=0)
    assert calls[2:] == ["negatives mug", "negatives mug"] and len(pngs(mug)) == 4


def test_category_backgrounds_are_generated_only_when_cut_and_paste_uses_them(tmp_path, monkeypatch):
    made = []

    def fake_generate(pipe, category, root, cfg, seed, instances):
        made.append((category, root, seed, tuple(instances)))
        (root / category).mkdir(parents=True)
        for name in ("0001.png", "0000.png"):
            (root / category / name).write_bytes(b"")
        return root / category

    monkeypatch.setattr(syn, "generate_backgrounds", fake_generate)
    cfg = toybox_config("priors.backgrounds")
    generated = syn.category_backgrounds("pipe", "mug", tmp_path / "bg", cfg, "both", seed=2, instances=["mug_01"])
    assert generated == [tmp_path / "bg/mug/0000.png", tmp_path / "bg/mug/0001.png"]
    assert made == [("mug", tmp_path / "bg", 2, ("mug_01",))]
    assert syn.category_backgrounds("pipe", "shoe", tmp_path / "bg", cfg, "real", seed=2) == []
    assert (tmp_path / "bg/shoe").is_dir() and not any((tmp_path / "bg/shoe").iterdir())  # the stage's output
    assert len(made) == 1


# ----------------------------------------------------------------------------- cut and paste


def object_photo(rng: np.random.Generator, size=(60, 40), rect=False) -> tuple[Image.Image, np.ndarray]:
    """A noise photo (never magenta: green >= 64) with a magenta object and its exact mask."""
    w, h = size
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[..., 1] = np.maximum(img[..., 1], 64)
    ys, xs = np.mgrid[0:h, 0:w]
    if rect:
        mask = (xs >= 10) & (xs < 40) & (ys >= 5) & (ys < 35)
    else:  # an ellipse with a handle: not a box, so the cut-out has transparent corners
        mask = ((xs - 25) / 15) ** 2 + ((ys - 20) / 12) ** 2 <= 1
        mask |= (xs >= 38) & (xs < 50) & (ys >= 16) & (ys < 22)
    img[mask] = MAGENTA
    return Image.fromarray(img), mask


def noise_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    bg[..., 1] = np.maximum(bg[..., 1], 64)
    return bg


def is_magenta(image: np.ndarray) -> np.ndarray:
    return (image == MAGENTA).all(axis=-1)


def test_paste_mask_is_exactly_the_pasted_pixels_also_across_the_border():
    rng = np.random.default_rng(0)
    photo, mask = object_photo(rng)
    cut = syn.cut_out(photo, mask, "photo")
    crossed = 0
    for k, scale in enumerate(np.linspace(0.3, 1.3, 21)):
        background = noise_background(rng, 64, 64)
        image, pasted, info = syn.paste(background, cut, float(scale), np.random.default_rng(k))
        assert pasted.any() and np.array_equal(pasted, is_magenta(image))
        assert np.array_equal(image[~pasted], background[~pasted])  # nothing else changed
        crossed += info["visible"] < 1
        if info["visible"] < 1:  # clipped: the object reaches the border it crosses
            ys, xs = np.nonzero(pasted)
            assert xs.min() == 0 or ys.min() == 0 or xs.max() == 63 or ys.max() == 63
    assert crossed >= 3  # the large scales overflow the 64 px side


def test_paste_scale_is_the_long_side_over_the_short_side():
    rng = np.random.default_rng(1)
    photo, mask = object_photo(rng, rect=True)  # a 30 x 30 box: the mask's box is the whole object
    cut = syn.cut_out(photo, mask)
    for scale in (0.3, 0.55, 0.8, 1.0):
        _, pasted, info = syn.paste(noise_background(rng, 100, 140), cut, scale, rng)
        ys, xs = np.nonzero(pasted)
        assert info["visible"] == 1
        assert xs.max() - xs.min() + 1 == ys.max() - ys.min() + 1 == round(scale * 100)


def test_cutout_edges_take_no_colour_from_the_photo_background():
    rng = np.random.default_rng(2)
    photo, mask = object_photo(rng)
    rgb, obj = syn.resize_cutout(syn.cut_out(photo, mask), 23)  # strong downscale: edges blend
    assert np.array_equal(np.round(rgb[obj]).astype(np.uint8), np.broadcast_to(MAGENTA, (obj.sum(), 3)))


def write_mini_dataset(root: Path, rng: np.random.Generator) -> Path:
    """mug_00 (magenta object photos, png: lossless), mug_01 and shoe_00 (noise photos)."""
    instances = {"mug_00": "mug", "mug_01": "mug", "shoe_00": "shoe"}
    for name in instances:
        for k in range(3):
            photo, mask = object_photo(rng, size=(60 + 10 * k, 40))
            if name != "mug_00":
                photo = Image.fromarray(noise_background(rng, 40, 60 + 10 * k))
            (root / "train" / name).mkdir(parents=True, exist_ok=True)
            (root / "train_masks" / name).mkdir(parents=True, exist_ok=True)
            photo.save(root / "train" / name / f"{k:04d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "train_masks" / name / f"{k:04d}.png")
    info = {"classes": list(instances), "class_to_idx": {n: i for i, n in enumerate(instances)},
            "class_to_sc": instances, "class_to_split": {n: "test" for n in instances}}
    (root / "mini_info.json").write_text(json.dumps(info))
    return root


def test_cut_and_paste_writes_exact_masks_on_real_and_generated_backgrounds(pipe, tmp_path):
    ds = load_dataset(write_mini_dataset(tmp_path / "mini", np.random.default_rng(3)))
    assert {p.parent.name for p in syn.real_background_paths(ds, "mug_00")} == {"shoe_00"}
    assert {p.parent.name for p in syn.real_background_paths(ds, "mug_00", "other_instances")} == {"mug_01", "shoe_00"}
    prompts = tmp_path / "scenes.json"
    prompts.write_text(json.dumps({"mug": ["A {identifier} {category} on a wooden table",
                                           "A photo of a {identifier} {category} sitting in a sink, seen from above"]}))
    cfg = toybox_config("synthesize.cut_paste", n=8, size=48, backgrounds="both")
    made = syn.category_backgrounds(pipe, "mug", tmp_path / "backgrounds",
                                    toybox_config("priors.backgrounds", prompt_file=str(prompts), prompt_source=None,
                                                  n=3, steps=2, batch=3), cfg.backgrounds, seed=0)
    out = syn.cut_and_paste(ds, "mug_00", tmp_path / "synthetic/mug_00/cut_and_paste", cfg, seed=0,
                            generated_backgrounds=made)
    backgrounds = tmp_path / "backgrounds/mug"
    assert made == sorted(backgrounds.glob("*.png")) and len(made) == 3
    assert [r["prompt"] for r in read_csv(backgrounds / "prompts.csv")] == [
        "a photo of a wooden table", "a photo of a sink", "a photo of a wooden table"]
    masks = tmp_path / "synthetic/mug_00/cut_and_paste_masks"
    rows = read_csv(out / "pastes.csv")
    assert [p.name for p in pngs(out)] == [p.name for p in pngs(masks)] == [f"{i:04d}.png" for i in range(8)]
    assert [r["background_kind"] for r in rows] == ["real", "generated"] * 4
    for row in rows:
        image = np.asarray(Image.open(out / row["file"]))
        mask = np.asarray(Image.open(masks / row["file"]))
        assert image.shape == (48, 48, 3) and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask > 0, is_magenta(image))
        assert 0.3 <= float(row["scale"]) <= 1.3
        assert ("shoe_00" in row["background"]) == (row["background_kind"] == "real")


def test_cut_and_paste_scales_stay_in_range(tmp_path):
    rng = np.random.default_rng(4)
    photo, mask = object_photo(rng, rect=True)
    bg = tmp_path / "bg.png"
    Image.fromarray(noise_background(rng, 90, 120)).save(bg)
    cfg = toybox_config("synthesize.cut_paste", n=40, size=50, backgrounds="real", scale_min=0.3,
                        scale_max=1.3)
    out = syn.compose_cut_and_paste([syn.cut_out(photo, mask)], [bg], [], tmp_path / "cp", cfg, seed=0)
    rows = read_csv(out / "pastes.csv")
    scales = np.array([float(r["scale"]) for r in rows])
    assert scales.min() >= 0.3 and scales.max() <= 1.3 and scales.max() - scales.min() > 0.6
    for row in rows:
        m = np.asarray(Image.open(tmp_path / "cp_masks" / row["file"])) > 0
        ys, xs = np.nonzero(m)
        side = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1  # visible extent
        assert side == min(50, round(float(row["scale"]) * 50))  # square object: clipped at 50 at most


def test_cut_and_paste_input_errors(tmp_path):
    ds = load_dataset(write_mini_dataset(tmp_path / "mini", np.random.default_rng(5)))
    with pytest.raises(ValueError, match="scale_min"):
        toybox_config("synthesize.cut_paste", scale_min=1.5, scale_max=1.0)
    with pytest.raises(ValueError, match="generated backgrounds"):
        syn.compose_cut_and_paste(syn.instance_cutouts(ds, "mug_00"), [Path("x.png")], [], tmp_path / "o",
                                  toybox_config("synthesize.cut_paste", backgrounds="both"), seed=0)
    with pytest.raises(ValueError, match="no generated backgrounds were given: the priors stage makes them"):
        syn.cut_and_paste(ds, "mug_00", tmp_path / "o",
                          toybox_config("synthesize.cut_paste", backgrounds="generated"), seed=0)
    (ds.root / "mini_info.json").unlink()
    one = load_dataset(ds.root, category="dog")  # a single-category dataset, like Dogs or DF2
    assert one.categories == ("dog",)
    with pytest.raises(ValueError, match="other_instances"):
        syn.real_background_paths(one, "mug_00")
    with pytest.raises(ValueError, match="empty mask"):
        syn.cut_out(Image.new("RGB", (4, 4)), np.zeros((4, 4), bool))


# ----------------------------------------------------------------------------- prompt files

EXPECTED_SETS = {
    "pods": {"mug", "bottle", "screwdriver", "shoe", "tote"},
    "df2": {"shirt"},
    "dogs": {"dog"},
    "toybox": {"mug", "bottle", "screwdriver", "shoe", "tote"},
}


@pytest.mark.parametrize("name", pf.PROMPT_SETS)
def test_shipped_prompt_files_have_100_distinct_sentences_with_the_subject(name):
    table = pf.load_prompts(name)
    assert set(table) == EXPECTED_SETS[name]
    for category, sentences in table.items():
        assert len(sentences) == 100
        assert len({s.lower().strip(" .") for s in sentences}) == 100
        for s in sentences:
            assert s.count(pf.SUBJECT) == 1 and "<new1>" not in s
            filled = pf.fill(s, "<new1>", category)
            assert "{" not in filled and f"<new1> {category}" in filled
            scene = syn.background_prompt(filled, "<new1>")
            assert "<new1>" not in scene and len(scene.split()) >= 4 and scene.startswith("a photo of ")


def test_toybox_prompts_use_only_toybox_caption_phrases(pipe):
    from prpg.toybox.backgrounds import BACKGROUNDS
    from prpg.toybox.objects import CATEGORIES
    from prpg.toybox.scenes import Pose, distractor_phrase, pose_words

    pose_vocab = {w for rot in (0, 30, -30) for scale in (1, 0.6, 1.2) for flip in (False, True)
                  for persp in ((0, 0), (0, 0.2), (0, -0.2), (0.2, 0))
                  for w in pose_words(Pose(rot, scale, flip, persp, (0.5, 0.5)))}
    assert len(pose_vocab) == 8  # 2 tilts, 2 distances, 3 views, mirrored
    for category, sentences in pf.load_prompts("toybox").items():
        heads = {f"a photo of a {pf.SUBJECT} {b.phrase}" for b in BACKGROUNDS.values()}
        others = [[a] for a in CATEGORIES] + [[a, b] for a in CATEGORIES for b in CATEGORIES]
        others += [[a, b, c] for a in CATEGORIES for b in CATEGORIES for c in CATEGORIES]
        tails = pose_vocab | {"partly hidden"} | {distractor_phrase(category, o) for o in others}
        for s in sentences:
            head, *rest = s.split(", ")
            assert head in heads and set(rest) <= tails, s
            filled = pf.fill(s, "<new1>", category)
            assert len(pipe.tokenizer(filled).input_ids) <= 32, filled  # fits the toybox text encoder


def test_toybox_file_is_what_make_prompts_builds(make_prompts, pipe):
    count = lambda text: len(pipe.tokenizer(text).input_ids)  # noqa: E731  same CLIP BPE as the toybox
    shipped = pf.load_prompts("toybox")
    assert make_prompts.toybox_prompts("screwdriver", count_tokens=count) == shipped["screwdriver"]


def test_prompt_loader_errors_and_reference_files(tmp_path):
    def write(obj) -> Path:
        path = tmp_path / "p.json"
        path.write_text(json.dumps(obj))
        return path

    with pytest.raises(pf.PromptFileError, match=r"'mug'\[1\].*no identifier"):
        pf.load_prompts(write({"mug": ["A {identifier} {category} here", "A mug there"]}))
    with pytest.raises(pf.PromptFileError, match=r"\{place\}"):
        pf.load_prompts(write({"mug": ["A {identifier} {category} in {place}"]}))
    with pytest.raises(pf.PromptFileError, match="not found"):
        pf.load_prompts(tmp_path / "missing.json")
    # the reference's layout: keyed by instance name, literal <new1>, totes under "bag"
    ref = pf.load_prompts(write({"mug_03": ["A <new1> mug on a desk"], "tote_00": ["A <new1> bag"],
                                 "bag": ["A <new1> bag on a hook"]}))
    assert pf.prompts_for(ref, instance="mug_03", category="mug") == ["A <new1> mug on a desk"]
    assert pf.prompts_for(ref, instance="tote_09", category="tote") == ["A <new1> bag on a hook"]
    with pytest.raises(pf.PromptFileError, match="no list for instance 'shoe_01'"):
        pf.prompts_for(ref, instance="shoe_01", category="shoe")
    assert pf.fill("A <new1> mug and {category}", "sks", "cup") == "A sks mug and cup"


def test_background_prompt_drops_the_subject_and_what_it_does():
    cases = {
        "A <new1> mug filled with tea on a picnic table": "a photo of a picnic table",
        "a photo of a <new1> mug on gravel, seen from above, with a bottle": "a photo of gravel",
        "a photo of a <new1> tote in a photo studio, mirrored": "a photo of a photo studio",
        "A close-up of a <new1> dog in a bright kitchen.": "a photo of a bright kitchen",
        "A <new1> bag hanging on a hook": "a photo of a hook",  # the reference's word for totes
        "Sunlight falls on a <new1> mug on a shelf": "a photo of Sunlight falls on on a shelf",
    }
    for sentence, scene in cases.items():
        assert syn.background_prompt(sentence, "<new1>") == scene
    assert syn.background_prompt("A sks dog on a sofa", "sks") == "a photo of a sofa"


def test_configs_validate():
    with pytest.raises(ValueError):
        toybox_config("synthesize.positives", n=0)
    with pytest.raises(ValueError):
        toybox_config("synthesize.positives", scheduler="euler")
    with pytest.raises(ValueError):
        toybox_config("priors.negatives", count=5)
    assert toybox_params()["synthesize"].positives.prompt_file == "toybox"
    settings = resolve("pods-dinov2_vitb14")  # its prompt file is downloaded data: the overrides themselves
    assert settings["synthesize.positives.guidance"] == 5.0
    assert math.ceil(settings["synthesize.positives.n"] / 100) * 100 == 500  # file mode: 100 a scene prompt


# ----------------------------------------------------------------------------- make_prompts

CANNED = """Sure! Here are the sentences:

1. A <new1> mug on a wooden desk next to a laptop.
2) "A <new1> Mug steaming on a windowsill"
**3.** A <new1> mug on a wooden desk next to a laptop
4. A mug on a shelf in a kitchen
5. Two <new1> mugs on a tray
6. A <new1> mug in {place}
7. A <new1> mug's handle in close-up
8. A <new1> mug and another <new1> mug on a table
- 9. A <new1> mug   on a   snowy porch
Hope this helps!
"""


def test_parse_numbered_reads_every_numbering_style(make_prompts):
    sentences = make_prompts.parse_numbered(CANNED)
    assert len(sentences) == 9
    assert sentences[1] == "A <new1> Mug steaming on a windowsill"  # quotes stripped
    assert sentences[2] == "A <new1> mug on a wooden desk next to a laptop"  # bold stripped


def test_validation_keeps_valid_distinct_templates(make_prompts):
    got = make_prompts.collect(make_prompts.parse_numbered(CANNED), "mug", [], n=100)
    assert got == ["A {identifier} {category} on a wooden desk next to a laptop",
                   "A {identifier} {category} steaming on a windowsill",
                   "A {identifier} {category} on a snowy porch"]
    pf.validate_prompts({"mug": got}, "generated")  # what gets written loads back


def test_generate_category_asks_until_n_and_gives_up_clearly(make_prompts):
    replies = iter([CANNED, "1. A <new1> mug on a boat\n2. A <new1> mug on a boat\n3. A <new1> mug on a bus"])
    requests = []
    got = make_prompts.generate_category(lambda r: requests.append(r) or next(replies), "mug", n=5)
    assert len(got) == 5 and got[-2:] == ["A {identifier} {category} on a boat", "A {identifier} {category} on a bus"]
    assert "<new1> mug" in requests[0] and "1 to 5" in requests[0]
    with pytest.raises(RuntimeError, match="only 3 of 10"):
        make_prompts.generate_category(lambda r: CANNED, "mug", n=10, max_rounds=2)


def test_write_prompt_file_merges_and_validates(make_prompts, tmp_path):
    path = tmp_path / "p.json"
    make_prompts.write_prompt_file(path, {"mug": ["A {identifier} {category} on a desk"]})
    make_prompts.write_prompt_file(path, {"dog": ["A {identifier} {category} on a lawn"]})
    assert set(json.loads(path.read_text())) == {"mug", "dog"} and path.stat().st_mode & 0o044 == 0o044
    with pytest.raises(pf.PromptFileError):
        make_prompts.write_prompt_file(path, {"cat": ["A cat"]})
    assert set(json.loads(path.read_text())) == {"mug", "dog"}  # a bad table writes nothing


def test_endpoint_asker_speaks_openai_chat_completions(make_prompts, monkeypatch):
    import http.server
    import threading

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen["path"], seen["auth"] = self.path, self.headers.get("Authorization")
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": CANNED}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MY_KEY", "secret")
        ask = make_prompts.endpoint_asker(f"http://127.0.0.1:{server.server_port}/v1/", "gpt-x", api_key_env="MY_KEY")
        got = make_prompts.generate_category(ask, "mug", n=3)
    finally:
        server.shutdown()
    assert len(got) == 3 and seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer secret"
    assert seen["body"]["model"] == "gpt-x" and seen["body"]["messages"][0]["role"] == "user"


def test_transformers_asker_runs_a_local_model(make_prompts, pipe, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = pipe.tokenizer  # any tokenizer will do: a random 1-layer GPT-2 only has to produce text
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=512,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reply = make_prompts.transformers_asker(str(tmp_path), max_new_tokens=8)("Write 3 sentences")
    assert isinstance(reply, str) and reply and not reply.startswith("Write 3")  # only the new text


def test_backgrounds_of_a_category_from_an_instance_keyed_file():
    from prpg.prompts import PromptFileError, category_prompts

    table = {"mugs_cornell_dots": ["A <new1> mug on a desk", "A <new1> mug in a sink"],
             "mugs_blue": ["A <new1> mug on a desk", "A <new1> mug on grass", "A <new1> mug by a lamp"],
             "shoe_red": ["A <new1> shoe on a rug"]}
    got = category_prompts(table, category="mug", instances=["mugs_cornell_dots", "mugs_blue", "absent"])
    # interleaved instance by instance, repeats dropped, other categories' lists left out
    assert got == ["A <new1> mug on a desk", "A <new1> mug in a sink", "A <new1> mug on grass",
                   "A <new1> mug by a lamp"]
    assert category_prompts({"mug": ["A {identifier} {category} here"]}, category="mug") == [
        "A {identifier} {category} here"]
    with pytest.raises(PromptFileError, match="no list for category 'bottle'"):
        category_prompts(table, category="bottle", instances=["bottle_1"])
