"""Reuse-caches are keyed by content: a changed image (or world, or generator) is never served stale."""

from __future__ import annotations

import json

import pytest
import torch

from prpg.data import load_dataset
from prpg.evaluate import cached_dense_features, cached_features, evaluate_instance
from tests.conftest import make_pods_tree, write_image, toybox_config
from tests.test_evaluation import one_thread, tiny_backbone  # noqa: F401 (one_thread: autouse fixture)

CFG = toybox_config("evaluate", dense_grid=4, batch=8)


@pytest.fixture(scope="module")
def models():
    return {"pretrained": tiny_backbone("tiny", 0), "personalized": tiny_backbone("tiny", 1)}


def no_compute(monkeypatch):
    import prpg.evaluate.features as features

    def fail(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(features, "embed_records", fail)
    monkeypatch.setattr(features, "dense_records", fail)


def test_a_changed_image_changes_the_cached_baseline(tmp_path, models, monkeypatch):
    ds = load_dataset(make_pods_tree(tmp_path / "pods", n_test=4, n_dense=2))
    cache, bb = tmp_path / "cache", models["pretrained"]
    before = evaluate_instance(ds, "mug_01", {"pretrained": bb}, CFG, cache_dir=cache)
    test, dense = ds.images("test"), ds.dense_images()
    feats = cached_features(bb, test, cache, root=ds.root)

    # Same bytes (even rewritten: a new mtime) -> every feature comes from the cache.
    with monkeypatch.context() as m:
        no_compute(m)
        for r in (test[0], dense[0]):
            r.path.write_bytes(r.path.read_bytes())
        assert evaluate_instance(ds, "mug_01", {"pretrained": bb}, CFG, cache_dir=cache) == before

    # One test photo and one dense photo of the instance itself fixed by a user, same names, same dataset name.
    own = next(i for i, r in enumerate(test) if r.instance == "mug_01")
    own_dense = next(i for i, r in enumerate(dense) if r.instance == "mug_01")
    write_image(test[own].path, seed=12345)
    write_image(dense[own_dense].path, seed=54321)
    ds = load_dataset(ds.root)
    after_feats = cached_features(bb, ds.images("test"), cache, root=ds.root)
    cold_feats = cached_features(bb, ds.images("test"), None, root=ds.root)
    torch.testing.assert_close(after_feats, cold_feats, rtol=0, atol=0)  # the new photo's, not the stale one
    assert not torch.equal(after_feats[own], feats[own])
    others = [i for i in range(len(test)) if i != own]
    torch.testing.assert_close(after_feats[others], feats[others], rtol=0, atol=0)
    dense_after = cached_dense_features(bb, ds.dense_images(), cache, root=ds.root, grid=4)
    dense_cold = cached_dense_features(bb, ds.dense_images(), None, root=ds.root, grid=4)
    torch.testing.assert_close(dense_after.features, dense_cold.features, rtol=0, atol=0)

    after = evaluate_instance(ds, "mug_01", {"pretrained": bb}, CFG, cache_dir=cache)
    assert after == evaluate_instance(ds, "mug_01", {"pretrained": bb}, CFG, cache_dir=None)  # warm == cold
    assert after != before  # the pretrained baseline moved with its inputs


def test_a_rebuilt_world_under_the_same_name_is_not_served_stale(tmp_path, models):
    """Two different worlds named `pods` at the same relative paths (toybox seed 0 vs seed 1)."""
    bb, cache = models["pretrained"], tmp_path / "cache"
    a = load_dataset(make_pods_tree(tmp_path / "a" / "pods", n_test=2, n_dense=1))
    b = load_dataset(make_pods_tree(tmp_path / "b" / "pods", n_test=2, n_dense=1))
    assert a.name == b.name
    fa = cached_features(bb, a.images("test"), cache, root=a.root)
    fb = cached_features(bb, b.images("test"), cache, root=b.root)
    torch.testing.assert_close(fb, cached_features(bb, b.images("test"), None, root=b.root), rtol=0, atol=0)
    assert not torch.equal(fa, fb)


def test_negatives_are_regenerated_for_other_generator_weights(tmp_path, monkeypatch):
    """The per-category reuse of negatives / backgrounds is keyed by the generator's weights and
    resolution, not by its name or path."""
    from prpg import synthesize as syn
    from prpg.priors import generator_fingerprint
    from prpg.core.configs import GeneratorConfig
    from prpg.synthesize import NegativesConfig
    from prpg.zoo.generator import build_pipeline
    from prpg.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)  # the tiny random SD pipeline of test_synthesize
    gcfg = toybox_config("pretrain.generator", resolution=32, vae_channels=(8, 16),
                         unet_channels=(16, 32), attention_head_dim=4,
                           text_hidden=16, text_layers=1, text_heads=1, max_length=32)
    pipe = build_pipeline(gcfg, build_clip_tokenizer(tmp_path / "tok", max_length=32))
    pipe.set_progress_bar_config(disable=True)
    calls = []
    real = syn.generate_images
    monkeypatch.setattr(syn, "generate_images", lambda *a, **k: calls.append(k["desc"]) or real(*a, **k))
    cfg = toybox_config("priors.negatives", n=2, steps=2, batch=2)
    folder = syn.generate_negatives(pipe, "mug", tmp_path / "negatives", cfg, seed=0)
    record = json.loads((folder / syn.RECORD_JSON).read_text())
    assert record["generator_weights"] == generator_fingerprint(pipe)
    syn.generate_negatives(pipe, "mug", tmp_path / "negatives", cfg, seed=0)
    assert calls == ["negatives mug"]  # same weights, same settings: reused
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.01)  # a fine-tuned copy under the same name_or_path
    syn.generate_negatives(pipe, "mug", tmp_path / "negatives", cfg, seed=0)
    assert calls == ["negatives mug", "negatives mug"]

