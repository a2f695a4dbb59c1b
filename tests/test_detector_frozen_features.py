"""Frozen-feature detectors on the tiny backbone twins: backbones, the feature cache, probe, kNN, disentangling."""
from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from detector_helpers import make_image, write_odd_images
from family_helpers import load_tensors, one_thread, sets, write_parent_child  # noqa: F401

from fakeforge.config import ConfigError

TWIN_CLASSES = {"timm_vit": "VisionTransformer", "timm_resnet": "ResNet", "open_clip_vit": "VisionTransformer",
                "hf_clip_vit": "CLIPVisionModelWithProjection"}


def _det(cls_name: str, backbone: str = "tiny:open_clip_vit", **kw):
    from detector import DETECTORS

    cls = DETECTORS.get(cls_name)
    return cls.from_config(cls.config_class(backbone=backbone, dtype="float32", **kw), "cpu")


def _specs(path):
    from detector.data import parse_set_specs

    return parse_set_specs([str(path)])


class CallCounter:
    """Counts forward calls of a module (to see whether features were computed or read from the cache)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


# ------------------------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("twin", sorted(TWIN_CLASSES))
def test_backbone_twins_load_through_their_library_and_see_the_image(twin, tiny_dir):
    from detector.families.frozen.backbones import FeatureBackbone

    bb = FeatureBackbone.load(f"tiny:{twin}", device="cpu")
    assert bb.architecture["class"] == TWIN_CLASSES[twin]
    assert bb.preprocess.image_size == 32 and len(bb.fingerprint) == 64
    assert FeatureBackbone.load(f"tiny:{twin}", device="cpu").fingerprint == bb.fingerprint
    tf = bb.preprocess.transform(False)
    rng = np.random.default_rng(0)
    x = torch.stack([tf(make_image(kind, rng)) for kind in ["real", "fake"] * 20])
    y = torch.tensor([0, 1] * 20)
    with torch.no_grad():
        f = bb(x).float()
    assert f.shape == (40, bb.feature_dim)
    direction = f[y == 1].mean(0) - f[y == 0].mean(0)
    proj = f @ (direction / direction.norm())  # 1-D Fisher criterion along the class-mean difference
    d_prime = (proj[y == 1].mean() - proj[y == 0].mean()) / (0.5 * (proj[y == 1].var() + proj[y == 0].var())).sqrt()
    assert d_prime > 5, f"the twin's features must separate the two image families (d' = {float(d_prime):.2f})"


def test_backbone_preprocessing_comes_from_each_library(tiny_dir):
    from detector.families.frozen.backbones import FeatureBackbone

    vit = FeatureBackbone.load("tiny:timm_vit", "cpu").preprocess  # timm pretrained_cfg of augreg_in21k
    assert (vit.crop_pct, vit.mean, vit.interpolation) == (0.9, [0.5] * 3, "bicubic")
    clip = FeatureBackbone.load("tiny:hf_clip_vit", "cpu").preprocess  # CLIPImageProcessor
    assert clip.mean[0] == pytest.approx(0.48145466) and clip.crop_pct == 1.0 and clip.resize == "shorter_side"
    oc = FeatureBackbone.load("tiny:open_clip_vit", "cpu").preprocess  # open_clip preprocess_cfg
    assert oc.std[2] == pytest.approx(0.27577711) and oc.source == "open_clip preprocess_cfg"


def test_unknown_backbone_names_list_close_matches():
    from detector.families.frozen.backbones import check_backbone

    with pytest.raises(ConfigError, match="unknown timm model 'resnet5O'.*resnet50"):
        check_backbone("timm:resnet5O")
    with pytest.raises(ConfigError, match="no pretrained tag 'a1_in1'.*resnet50.a1_in1k"):
        check_backbone("timm:resnet50.a1_in1")
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-L-41'.*ViT-L-14"):
        check_backbone("open_clip:ViT-L-41@openai")
    with pytest.raises(ConfigError, match="no pretrained tag 'openaii'.*close matches: openai"):
        check_backbone("open_clip:ViT-B-16@openaii")
    with pytest.raises(ConfigError, match="must look like LIBRARY:NAME"):
        check_backbone("clip:ViT-L-14")
    with pytest.raises(ConfigError, match="unknown tiny backbone 'clip'.*tiny:open_clip_vit"):
        check_backbone("tiny:clip")
    with pytest.raises(ConfigError, match="cannot load backbone 'transformers:/no/such/folder'"):
        _det("linear_probe", "transformers:/no/such/folder")


# ------------------------------------------------------------------------------------------- cache
def test_feature_cache_reused_for_the_same_backbone_rebuilt_for_another(sets, tiny_dir, tmp_path):
    from detector.families.frozen.feature_cache import FeatureCache, extract_features
    from fakeforge.tiny.backbone_twins import build_open_clip_vit

    specs = _specs(sets["test"])
    det = _det("linear_probe")
    counter = CallCounter(det.backbone)
    first = FeatureCache(tmp_path / "cache")
    feats = [first.load_or_build(det, s, batch_size=16) for s in specs]
    assert first.built == ["coco", "sd2"] and counter.calls > 0
    fresh = extract_features(det, specs[0], batch_size=7)
    assert torch.allclose(feats[0].features, fresh.features, atol=1e-5) and feats[0].keys == fresh.keys
    # same backbone, new process-like cache object: read back, no backbone call
    counter.calls = 0
    again = FeatureCache(tmp_path / "cache")
    reread = [again.load_or_build(det, s) for s in specs]
    assert again.reused == ["coco", "sd2"] and again.built == [] and counter.calls == 0
    assert all(torch.equal(a.features, b.features) and a.keys == b.keys for a, b in zip(feats, reread))
    # same architecture, other weights: another cache entry, computed again
    other_dir = tmp_path / "other_clip"
    build_open_clip_vit(other_dir, seed=1)
    other = _det("linear_probe", f"open_clip:local-dir:{other_dir}")
    assert other.feature_key() != det.feature_key()
    third = FeatureCache(tmp_path / "cache")
    other_feats = third.load_or_build(other, specs[0])
    assert third.built == ["coco"] and not torch.allclose(other_feats.features, feats[0].features)
    # other preprocessing (mean/std) on the same backbone: computed again
    det.preprocess = replace(det.preprocess, mean=[0.5, 0.5, 0.5])
    counter.calls = 0
    fourth = FeatureCache(tmp_path / "cache")
    fourth.load_or_build(det, specs[0])
    assert fourth.built == ["coco"] and counter.calls > 0


def test_new_weights_under_the_same_name_rebuild_the_cache_and_refuse_old_checkpoints(sets, tiny_dir, tmp_path):
    """A backbone folder (or hub snapshot) whose weights changed keeps its name: the weights hash decides."""
    from detector.base import CheckpointError
    from detector.families.frozen.feature_cache import FeatureCache
    from detector.checkpoint import load_detector, save_detector
    from fakeforge.tiny.backbone_twins import build_timm_vit

    folder = tmp_path / "vit"
    build_timm_vit(folder, seed=0)
    spec = _specs(sets["test"])[0]
    old = _det("linear_probe", f"timm:local-dir:{folder}")
    FeatureCache(tmp_path / "cache").load_or_build(old, spec)
    ckpt = save_detector(old, tmp_path / "probe")
    build_timm_vit(folder, seed=1)  # same name, other weights
    new = _det("linear_probe", f"timm:local-dir:{folder}")
    cache = FeatureCache(tmp_path / "cache")
    cache.load_or_build(new, spec)
    assert cache.built == ["coco"] and cache.reused == []
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_detector(ckpt, device="cpu")


def test_a_cache_file_from_another_backbone_is_rebuilt_not_reused(sets, tiny_dir, tmp_path):
    from detector.families.frozen.feature_cache import FeatureCache

    spec = _specs(sets["test"])[0]
    clip, vit = _det("linear_probe", "tiny:open_clip_vit"), _det("linear_probe", "tiny:hf_clip_vit")
    cache = FeatureCache(tmp_path / "cache")
    cache.load_or_build(clip, spec)
    wrong = cache.path_for(vit, spec)  # put the open_clip features where the transformers ones belong
    wrong.parent.mkdir(parents=True)
    shutil.copy(cache.path_for(clip, spec), wrong)
    counter = CallCounter(vit.backbone)
    got = cache.load_or_build(vit, spec)
    assert counter.calls > 0 and got.features.shape[1] == vit.backbone.feature_dim
    (name, reason), = cache.rebuilt
    assert name == "coco" and "tiny:open_clip_vit" in reason and "tiny:hf_clip_vit" in reason
    # a changed set (a shard rewritten) gets a new fingerprint: computed again
    tar = spec.paths[0]
    tar.write_bytes(tar.read_bytes())
    later = FeatureCache(tmp_path / "cache")
    later.load_or_build(clip, spec)
    assert later.built == ["coco"]


def test_corrupt_and_odd_images_are_listed_and_skipped(tiny_dir, tmp_path):
    from detector.data import parse_set_specs
    from detector.families.frozen.feature_cache import FeatureCache

    files = write_odd_images(tmp_path / "odd")
    spec, = parse_set_specs([f"odd=real:{tmp_path / 'odd'}"])
    det = _det("linear_probe")
    fs = FeatureCache(tmp_path / "cache").load_or_build(det, spec)
    assert len(fs) == len(files["good"]) == fs.features.shape[0]
    assert sorted(k.rsplit("/", 1)[-1] for k, _ in fs.errors) == sorted(p.name for p in files["bad"])
    assert FeatureCache(tmp_path / "cache").load_or_build(det, spec).errors == fs.errors  # kept in the cache


def test_one_class_training_data_is_refused(sets, tiny_dir, tmp_path):
    from detector.families.frozen.feature_cache import FeatureCache, fit_from_cache

    det = _det("linear_probe")
    with pytest.raises(ConfigError, match="only one class.*32 real, 0 fake"):
        fit_from_cache(det, _specs(sets["test"])[:1], cache=FeatureCache(tmp_path))


# ------------------------------------------------------------------------------------------- detectors
@pytest.fixture(scope="module")
def fitted(sets, tiny_dir, tmp_path_factory):
    """Each feature detector before/after fitting from the cache of the separable training set."""
    from detector.families.frozen.backbones import FeatureBackbone
    from detector.families.frozen.feature_cache import FeatureCache, FeatureSet, fit_from_cache

    torch.set_num_threads(1)
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    out = {}
    for name, backbone, kw in [("linear_probe", "tiny:open_clip_vit", {}), ("nearest_neighbor", "tiny:hf_clip_vit",
                                                                           {"k": 5}),
                               ("contrastive_disentangle", "tiny:timm_vit",
                                {"hidden_dim": 64, "proj_dim": 16, "epochs": 15, "batch_size": 32, "lr": 3e-3})]:
        det = _det(name, backbone, **kw)
        test = FeatureSet.concat([cache.load_or_build(det, s) for s in _specs(sets["test"])])
        untrained = float(((det.score_features(test.features) >= 0.5).long() == test.labels).float().mean())
        before = {k: v.clone() for k, v in det.checkpoint_state().items()}
        history, summary = fit_from_cache(det, _specs(sets["train"]), _specs(sets["test"]), cache=cache)
        fresh = FeatureBackbone.load(backbone, "cpu").model.state_dict()
        out[name] = {"det": det, "history": history, "summary": summary, "untrained": untrained, "before": before,
                     "fresh_backbone": fresh, "test": test}
    return out


@pytest.mark.parametrize("name", ["linear_probe", "nearest_neighbor", "contrastive_disentangle"])
def test_fit_beats_the_untrained_detector_on_held_out_data(fitted, name):
    f = fitted[name]
    last = f["history"][-1]
    assert f["untrained"] == 0.5  # zero head / empty bank: P(fake) = 0.5 for every image
    assert last["val_acc"] >= 0.9 and last["val_acc"] >= f["untrained"] + 0.35, f["history"]
    assert f["summary"]["train_samples"] == 128 and f["summary"]["val_samples"] == 64


@pytest.mark.parametrize("name", ["linear_probe", "nearest_neighbor", "contrastive_disentangle"])
def test_fitting_changes_the_head_and_never_the_backbone(fitted, name):
    f = fitted[name]
    det = f["det"]
    assert not any(p.requires_grad for p in det.backbone.parameters())
    state = det.backbone.model.state_dict()
    assert [k for k, v in f["fresh_backbone"].items() if not torch.equal(v, state[k])] == []
    after = det.checkpoint_state()
    changed = [k for k in after if k not in f["before"] or after[k].shape != f["before"][k].shape
               or not torch.equal(after[k], f["before"][k])]
    assert changed, "fitting changed nothing"


def test_probe_and_disentangle_losses_fall(fitted):
    probe = fitted["linear_probe"]["history"][0]
    assert probe["loss"] < probe["loss_before"] - 0.3
    hist = fitted["contrastive_disentangle"]["history"]
    assert hist[-1]["loss"] < hist[0]["loss"] - 1.0 and hist[-1]["classifier_loss"] < hist[0]["classifier_loss"]


@pytest.mark.parametrize("name", ["linear_probe", "nearest_neighbor", "contrastive_disentangle"])
def test_save_load_gives_identical_scores(fitted, name, sets, tmp_path):
    from detector.checkpoint import load_detector, save_detector

    det = fitted[name]["det"]
    back = load_detector(save_detector(det, tmp_path / name), device="cpu")
    x, _ = load_tensors(sets["test"], det.preprocess)
    assert torch.equal(det.score(x), back.score(x))
    assert back.num_trainable() == det.num_trainable()


def test_probe_scores_equal_scikit_learn(fitted):
    from sklearn.linear_model import LogisticRegression

    import copy

    det, test = copy.deepcopy(fitted["linear_probe"]["det"]), fitted["linear_probe"]["test"]
    x = ((test.features - det.feature_mean) / det.feature_std).double().numpy()
    clf = LogisticRegression().fit(x, test.labels.numpy())
    with torch.no_grad():
        det.head.weight.copy_(torch.from_numpy(clf.coef_).float())
        det.head.bias.copy_(torch.from_numpy(clf.intercept_).float())
    assert np.allclose(det.score_features(test.features).numpy(), clf.predict_proba(x)[:, 1], atol=1e-5)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_matches_scikit_learn_and_chunks_agree(tiny_dir, weights):
    from sklearn.neighbors import KNeighborsClassifier

    from detector.families.frozen.feature_cache import FeatureSet

    g = torch.Generator().manual_seed(0)
    det = _det("nearest_neighbor", "tiny:hf_clip_vit", k=5, weights=weights, chunk=7)
    bank, query = torch.randn(50, det.backbone.feature_dim, generator=g), torch.randn(20, det.backbone.feature_dim,
                                                                                      generator=g)
    labels = (bank[:, 0] + 0.5 * torch.randn(50, generator=g) > 0).long()
    assert torch.equal(det.score_features(query), torch.full((20,), 0.5))
    det.fit_features(FeatureSet(bank, labels, torch.full((50,), -1), [str(i) for i in range(50)]))
    ref = KNeighborsClassifier(n_neighbors=5, metric="cosine", weights=weights).fit(bank.numpy(), labels.numpy())
    assert np.allclose(det.score_features(query).numpy(), ref.predict_proba(query.numpy())[:, 1], atol=1e-5)
    whole = replace(det.config, chunk=1000)
    det.config = whole
    assert np.allclose(det.score_features(query).numpy(), ref.predict_proba(query.numpy())[:, 1], atol=1e-5)


def test_supcon_loss_rewards_clusters_and_skips_anchors_without_positives():
    from detector.families.frozen.disentangle import supcon_loss

    g = torch.Generator().manual_seed(0)
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    centres = torch.randn(2, 8, generator=g)
    clustered = centres[classes] + 0.01 * torch.randn(6, 8, generator=g)
    assert supcon_loss(clustered, classes, 0.1) < supcon_loss(torch.randn(6, 8, generator=g), classes, 0.1) - 0.5
    assert float(supcon_loss(torch.randn(4, 8), torch.tensor([-1, 0, 1, 2]), 0.1)) == 0.0  # no positive pair
    one_pair = supcon_loss(clustered[:4], torch.tensor([0, 0, -1, -1]), 0.1)
    assert torch.isfinite(one_pair) and one_pair > 0


def test_disentangling_separates_style_from_content_on_held_out_pairs(tiny_dir, tmp_path):
    """Semantic space: a fake lies next to its own parent real image; style space: next to other fakes."""
    from detector.families.frozen.feature_cache import FeatureCache, FeatureSet, fit_from_cache

    train = write_parent_child(tmp_path / "train", 96, seed=1)
    test = write_parent_child(tmp_path / "test", 32, seed=2)
    det = _det("contrastive_disentangle", "tiny:timm_vit", hidden_dim=64, proj_dim=16, epochs=30, batch_size=32,
               lr=3e-3)
    cache = FeatureCache(tmp_path / "cache")
    held = FeatureSet.concat([cache.load_or_build(det, s) for s in _specs(test)])
    same_source = (held.groups[:, None] == held.groups[None, :]) & ~torch.eye(len(held), dtype=torch.bool)
    cross_label = held.labels[:, None] != held.labels[None, :]

    def gaps():
        with torch.no_grad():
            emb = det.embed(held.features)
        out = {}
        for space, z in emb.items():
            sim = z @ z.T
            out[space] = float(sim[same_source].mean() - sim[cross_label & ~same_source].mean())
        return out

    before = gaps()
    fit_from_cache(det, _specs(train), cache=cache)
    after = gaps()
    assert after["semantic"] > before["semantic"] + 0.2 and after["semantic"] > 0.3, (before, after)
    assert after["style"] < 0.1, after  # the style space ignores the shared content
