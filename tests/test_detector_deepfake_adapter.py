"""DeepFake-Adapter on the tiny timm ViT twin (and the full-size ViT-B/16 shapes on the meta device)."""
from __future__ import annotations

import pytest
import torch
from family_helpers import accuracy, load_tensors, one_thread, sets, train_steps  # noqa: F401

from fakeforge.config import ConfigError


def _tiny(**kw):
    from detector.families.deepfake_adapter import DeepFakeAdapter, DeepFakeAdapterConfig

    return DeepFakeAdapter.from_config(DeepFakeAdapterConfig(backbone="tiny:timm_vit", spm_channels=16, **kw), "cpu")


def _fresh_vit_state(tiny_dir):
    import timm

    from fakeforge.tiny import ensure_tiny

    path = ensure_tiny("timm_vit", tiny_dir)
    return timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0).state_dict()


def test_full_size_vit_b16_trains_16_9m_parameters():
    """The official configuration on timm's ViT-B/16, built on the meta device (no weights, no memory)."""
    import timm

    from detector.families.deepfake_adapter import DeepFakeAdapter, DeepFakeAdapterConfig

    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        det = DeepFakeAdapter(vit, DeepFakeAdapterConfig())
        levels = det.spm(torch.empty(2, 3, 224, 224))
    assert det.num_trainable() == 16_917_838
    assert det.parameter_breakdown() == {"gba": 1_189_644, "spm": 1_529_408, "interactions": 14_194_944,
                                         "level_embed": 2_304, "head": 1_538}
    assert sum(p.numel() for p in det.vit.parameters()) == 85_798_656
    assert det.groups == [[0, 3], [4, 7], [8, 11]]
    assert [tuple(t.shape) for t in levels] == [(2, 784, 768), (2, 196, 768), (2, 49, 768)]  # 1,029 tokens
    assert "16,917,838" in det.trainable_summary()
    assert det.preprocess.image_size == 224 and det.preprocess.resize == "square"
    assert det.preprocess.mean == [0.5] * 3 and det.preprocess.std == [0.5] * 3


def test_only_adapters_and_head_are_trainable(tiny_dir):
    det = _tiny()
    trainable = set(det.named_trainable_parameters())
    assert trainable and all(n.startswith(det.state_prefixes) for n in trainable)
    assert not any(p.requires_grad for p in det.vit.parameters())
    assert {n.split(".")[0] for n in trainable} == {"gba", "spm", "level_embed", "interactions", "head"}
    assert set(det.checkpoint_state()) >= trainable | {"spm.stem.1.running_mean", "head.0.running_var"}
    assert det.min_train_batch == 2  # the BatchNorm1d head cannot train on one image


def test_adapters_start_as_a_no_op_on_the_vit_stream(tiny_dir):
    """Zero up-projection and zero injector gate: at init every block computes what the plain ViT block does."""
    det = _tiny()
    det.eval()
    v = det.vit
    x = v._pos_embed(v.patch_embed(torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))))
    c = torch.randn(3, 21, v.embed_dim)
    with torch.no_grad():
        assert torch.equal(det.interactions[0].injector(x, c), x)
        for i in range(len(v.blocks)):
            assert torch.allclose(det._block(i, x), v.blocks[i](x), atol=1e-6)
        # trained: the GBA reads the post-attention stream and adds next to the MLP branch
        det.gba[0].up_proj.weight.normal_(0, 0.1)
        blk = v.blocks[0]
        mid = x + blk.attn(blk.norm1(x))
        expected = mid + blk.mlp(blk.norm2(mid)) + det.gba[0](mid)
        assert torch.allclose(det._block(0, x), expected, atol=1e-5)
        assert not torch.allclose(det._block(0, x), blk(x), atol=1e-3)


@pytest.fixture(scope="module")
def trained(sets, tiny_dir):
    """The tiny detector before and after 3 epochs of the recipe's SGD on the separable training set."""
    from detector.train.config import OptimConfig

    torch.set_num_threads(1)
    det = _tiny()
    x_tr, y_tr = load_tensors(sets["train"], det.preprocess, train=True)
    x_te, y_te = load_tensors(sets["test"], det.preprocess)
    untrained = accuracy(det, x_te, y_te)
    before = {k: v.clone() for k, v in det.checkpoint_state().items()}
    losses = train_steps(det, x_tr, y_tr, OptimConfig(name="sgd", lr=None, blr=4.0, weight_decay=1e-4,
                                                      schedule="cosine_step", warmup_lr=0.0, warmup_epochs=0.5),
                         epochs=3, batch_size=16)
    return {"det": det, "before": before, "losses": losses, "untrained": untrained,
            "trained": accuracy(det, x_te, y_te), "x_test": x_te}


def test_training_learns_and_changes_only_the_adapters(trained, tiny_dir):
    """Loss falls, held-out accuracy far above the untrained model, frozen ViT bit-identical (in memory)."""
    det, losses, before = trained["det"], trained["losses"], trained["before"]
    untrained, acc = trained["untrained"], trained["trained"]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, losses
    assert acc >= 0.9 and acc >= untrained + 0.3, (untrained, acc)
    fresh = _fresh_vit_state(tiny_dir)
    assert [k for k, v in det.vit.state_dict().items() if not torch.equal(v, fresh[k])] == []
    after = det.checkpoint_state()
    for key in ("gba.0.up_proj.weight", "interactions.0.injector.gamma", "spm.fc2.weight", "head.1.weight",
                "spm.stem.1.running_mean", "head.0.running_mean", "level_embed"):
        assert not torch.equal(before[key], after[key]), f"{key} did not change"


def test_save_load_identical_scores_and_refusals(trained, tiny_dir, tmp_path):
    from detector.base import CheckpointError
    from detector.checkpoint import load_detector, load_detector_state, save_detector
    from fakeforge.tiny.backbone_twins import build_timm_vit

    det, x = trained["det"], trained["x_test"]
    out = save_detector(det, tmp_path / "dfa", training={"epoch": 3})
    back = load_detector(out, device="cpu")
    assert torch.equal(det.score(x), back.score(x))
    assert back.preprocess == det.preprocess and back.training is False
    # the same architecture with other weights (a twin built from another seed) is refused, naming both
    other = tmp_path / "other_vit"
    build_timm_vit(other, seed=1)
    with pytest.raises(CheckpointError) as err:
        load_detector(out, model_overrides={"backbone": f"local-dir:{other}"})
    assert "tiny:timm_vit" in str(err.value) and f"local-dir:{other}" in str(err.value)
    assert "weights_sha256" in str(err.value)
    # a frozen-feature checkpoint is not a DeepFake-Adapter one
    from detector.families.frozen.heads import LinearProbe, LinearProbeConfig

    probe = LinearProbe.from_config(LinearProbeConfig(backbone="tiny:timm_vit", dtype="float32"), "cpu")
    with pytest.raises(CheckpointError, match="'deepfake_adapter' detector, not 'linear_probe'"):
        load_detector_state(probe, out)


def test_unknown_or_unsuitable_backbones_list_close_matches(tiny_dir):
    from detector.families.deepfake_adapter import DeepFakeAdapter, DeepFakeAdapterConfig

    with pytest.raises(ConfigError, match="unknown timm model 'vit_base_patch16_244'.*vit_base_patch16_224"):
        DeepFakeAdapter.from_config(DeepFakeAdapterConfig(backbone="vit_base_patch16_244"), "cpu")
    with pytest.raises(ConfigError, match="no pretrained tag 'augreg_in21'.*vit_base_patch16_224.augreg_in21k"):
        DeepFakeAdapter.from_config(DeepFakeAdapterConfig(backbone="vit_base_patch16_224.augreg_in21"), "cpu")
    with pytest.raises(ConfigError, match="ResNet, not a timm VisionTransformer"):
        DeepFakeAdapter.from_config(DeepFakeAdapterConfig(backbone="tiny:timm_resnet"), "cpu")
    with pytest.raises(ConfigError, match="cross_attn_heads = 5 does not divide the ViT width 48"):
        _tiny(cross_attn_heads=5)
    with pytest.raises(ConfigError, match="must cover blocks 0..5"):
        _tiny(interaction_groups=[[0, 1], [3, 5]])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 0, 1])
    grads = []
    for checkpointing in (False, True):
        det = _tiny()
        if checkpointing:
            det.enable_gradient_checkpointing()
        det.train()
        det(x, y).backward()
        grads.append({n: p.grad.clone() for n, p in det.named_trainable_parameters().items() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_tiny_recipe_builds_on_the_twin(tiny_dir):
    from detector import DETECTORS
    from detector.train.config import load_train_config

    recipe = load_train_config("deepfake_adapter", ["data.train=[x]"], tiny=True)
    det = DETECTORS.get(recipe.detector).from_config(recipe.model, "cpu")
    assert det.preprocess.image_size == 32 and det.identity()["backbone"] == "tiny:timm_vit"
    assert det.score(torch.zeros(2, 3, 32, 32)).shape == (2,)
