"""Fine-tuning from pretrained weights (trilevel.training.pretrained): timm loads, we check and report.

Offline: every weights file is written to tmp_path by the test; the hub is replaced by a stub.
"""

from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from trilevel.checkpoint import save_checkpoint
from trilevel.training.pretrained import LoadReport, create_from_weights, read_state_dict

from _runs import needs_fmnist

VIT = "vit_tiny_patch16_224"
SRC = dict(img_size=28, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5, in_chans=1)
EVA_NAME = "eva02_tiny_patch14_224"
EVA = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=5,
           ref_feat_shape=(7, 7))
SWIN_NAME = "swin_tiny_patch4_window7_224"
SWIN = dict(img_size=28, patch_size=1, window_size=7, embed_dim=16, depths=(2, 2), num_heads=(1, 2), in_chans=1,
            num_classes=5, drop_path_rate=0.0)


def source_model(name: str = VIT, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A randomly initialised model whose every tensor is non-zero (timm zero-initialises some)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **(kwargs or SRC))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("vit") / "vit.pth"
    sd = source_model().state_dict()
    torch.save(sd, path)
    return path, sd


def assert_loaded_equal(model: torch.nn.Module, sd: dict, report: LoadReport) -> None:
    state = model.state_dict()
    assert report.loaded, report
    for k in report.loaded:
        assert torch.equal(state[k], sd[k]), k
    assert sorted(report.loaded + report.resampled + report.reinitialized) == sorted(state)


# --------------------------------------------------------------------------------------------
# Files and formats


@pytest.mark.parametrize("fmt", ["pth", "bin", "safetensors", "state_dict", "model_ddp", "trilevel"])
def test_every_format_loads_every_tensor(tmp_path, fmt):
    src = source_model()
    sd = src.state_dict()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.bin" if fmt == "bin" else "w.pth")
    if fmt == "safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "state_dict":
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif fmt == "model_ddp":  # DDP / torch.compile prefixes, as timm's clean_state_dict removes
        torch.save({"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}}, path)
    elif fmt == "trilevel":  # the layout of trilevel.training.checkpointing
        save_checkpoint({"model": sd, "format": 2, "config": {"model": VIT}, "ema": None, "epoch": 1}, path)
    else:
        torch.save(sd, path)
    model, report = create_from_weights(VIT, SRC, str(path), pretrained=False)
    assert report.loaded == list(sd) and not (report.resampled or report.reinitialized or report.unused)
    assert report.source == str(path) and report.by_value
    assert_loaded_equal(model, sd, report)
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), src(x), atol=1e-6)
    # provenance names the file as given (not a temporary copy), and no tensors are kept in the cfg
    assert model.pretrained_cfg["file"] == str(path) and "state_dict" not in model.pretrained_cfg


def test_hand_built_trilevel_checkpoint_with_ema(tmp_path):
    sd, ema_sd = source_model(seed=0).state_dict(), source_model(seed=1).state_dict()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": sd, "ema": {f"module.{k}": v for k, v in ema_sd.items()}, "config": {}}, path)
    model, report = create_from_weights(VIT, SRC, path, pretrained=False)
    assert_loaded_equal(model, sd, report)
    model, report = create_from_weights(VIT, SRC, path, pretrained=False, ema=True)
    assert report.source == f"{path} (ema)"
    assert len(report.loaded) == len(ema_sd)
    assert_loaded_equal(model, ema_sd, report)
    torch.save(sd, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="no EMA weights"):
        create_from_weights(VIT, SRC, tmp_path / "plain.pth", pretrained=False, ema=True)
    save_checkpoint({"model": sd, "ema": None, "config": {}}, tmp_path / "no_ema.pt")
    with pytest.raises(ValueError, match="no_ema.pt.*no EMA weights"):
        create_from_weights(VIT, SRC, tmp_path / "no_ema.pt", pretrained=False, ema=True)


@needs_fmnist
def test_real_training_checkpoint(tmp_path):
    from trilevel import train
    from trilevel.checkpoint import load_checkpoint

    cfg = dict(model=VIT, embed_dim=32, depth=2, num_heads=2, patch_size=7, dataset="fashion-mnist",
               train_subset=128, val_subset=32, epochs=1, batch_size=32, workers=0, device="cpu", seed=0,
               ema_decay=0.5, output_dir=str(tmp_path / "run"))
    train(cfg)
    ckpt_path = tmp_path / "run" / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path)
    kwargs = dict(img_size=28, in_chans=1, num_classes=10, patch_size=7, embed_dim=32, depth=2, num_heads=2)
    model, report = create_from_weights(VIT, kwargs, ckpt_path, pretrained=False)
    assert len(report.loaded) == len(ckpt["model"]) and not report.reinitialized
    assert_loaded_equal(model, ckpt["model"], report)
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    model, report = create_from_weights(VIT, {**kwargs, "img_size": 56, "num_classes": 3}, ckpt_path,
                                        pretrained=False, ema=True)
    assert report.resampled == ["pos_embed"] and report.reinitialized == ["head.weight", "head.bias"]
    assert_loaded_equal(model, ema, report)
    # 4 steps: timm's ModelEmaV3 copies the model on its first two updates, then averages
    assert not torch.equal(ema["blocks.0.attn.qkv.weight"], ckpt["model"]["blocks.0.attn.qkv.weight"])


# --------------------------------------------------------------------------------------------
# What timm adapts


def test_position_embeddings_resampled_to_a_larger_image(vit_file):
    path, sd = vit_file
    model, report = create_from_weights(VIT, {**SRC, "img_size": 56}, path, pretrained=False)
    assert model.pos_embed.shape == (1, 1 + 14 * 14, 32) and sd["pos_embed"].shape == (1, 1 + 7 * 7, 32)
    assert report.resampled == ["pos_embed"] and not report.reinitialized
    expected = resample_abs_pos_embed(sd["pos_embed"], new_size=(14, 14), old_size=(7, 7), num_prefix_tokens=1)
    assert torch.allclose(model.pos_embed.detach(), expected)  # timm's bicubic resampling of the file's
    assert_loaded_equal(model, sd, report)
    assert "1 resampled (pos_embed)" in report.summary()


def test_head_reinitialised_when_the_classes_differ(vit_file):
    path, sd = vit_file
    model, report = create_from_weights(VIT, {**SRC, "num_classes": 10}, path, pretrained=False)
    assert report.reinitialized == ["head.weight", "head.bias"] and model.head.weight.shape == (10, 32)
    assert not report.resampled and len(report.loaded) == len(sd) - 2
    assert_loaded_equal(model, sd, report)
    assert "2 re-initialised (head.weight, head.bias)" in report.summary()
    model, report = create_from_weights(VIT, SRC, path, pretrained=False)  # same classes: the head loads
    assert "head.weight" in report.loaded and torch.equal(model.head.weight, sd["head.weight"])


def test_input_channels_adapted(vit_file):
    path, sd = vit_file
    model, report = create_from_weights(VIT, {**SRC, "in_chans": 3}, path, pretrained=False)
    assert report.resampled == ["patch_embed.proj.weight"]
    expected = adapt_input_conv(3, sd["patch_embed.proj.weight"], base_chans=1)
    assert torch.equal(model.patch_embed.proj.weight.detach(), expected)
    assert_loaded_equal(model, sd, report)
    model(torch.randn(1, 3, 28, 28))


def test_patch_size_resampled(vit_file):
    path, sd = vit_file
    model, report = create_from_weights(VIT, {**SRC, "patch_size": 7}, path, pretrained=False)
    assert sorted(report.resampled) == ["patch_embed.proj.weight", "pos_embed"]
    assert model.patch_embed.proj.weight.shape == (32, 1, 7, 7)
    assert_loaded_equal(model, sd, report)


def test_kwargs_not_modified_and_pretrained_key_ignored(vit_file):
    path, _ = vit_file
    kwargs = dict(SRC, pretrained=False, drop_path_rate=0.1)
    before = dict(kwargs)
    model, report = create_from_weights(VIT, kwargs, path, pretrained=True)  # the file wins over the hub
    assert kwargs == before and report.source == str(path)
    assert model.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)


# --------------------------------------------------------------------------------------------
# Misfits and bad files


@pytest.mark.parametrize("num_classes", [5, 10])  # 5: timm loads strictly; 10: it drops the head, strict=False
def test_width_mismatch_is_a_clear_value_error(vit_file, num_classes):
    path, _ = vit_file
    with pytest.raises(ValueError) as info:
        create_from_weights(VIT, {**SRC, "embed_dim": 64, "num_classes": num_classes}, path, pretrained=False)
    msg = str(info.value)
    assert str(path) in msg and "--embed-dim" in msg
    assert "patch_embed.proj.weight: file (32, 1, 4, 4) vs model (64, 1, 4, 4)" in msg
    assert "the file has embed_dim 32, depth 2; the model has embed_dim 64, depth 2" in msg.lower()


@pytest.mark.parametrize("num_classes", [5, 10])
@pytest.mark.parametrize("depth, what", [(3, "the file lacks 12 tensor(s) of the model (blocks.2."),
                                         (1, "the model lacks 12 tensor(s) of the file (blocks.1.")])
def test_depth_mismatch_is_a_clear_value_error(vit_file, depth, what, num_classes):
    path, _ = vit_file
    with pytest.raises(ValueError) as info:
        create_from_weights(VIT, {**SRC, "depth": depth, "num_classes": num_classes}, path, pretrained=False)
    msg = str(info.value)
    assert what in msg and f"the model has embed_dim 32, depth {depth}" in msg and "--depth" in msg


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_from_weights(VIT, SRC, missing, pretrained=False)
    with pytest.raises(FileNotFoundError, match="folder"):
        create_from_weights(VIT, SRC, tmp_path, pretrained=False)


@pytest.mark.parametrize("name, content", [
    ("text.pth", b"not a checkpoint at all\n"),
    ("noise.safetensors", bytes(range(256)) * 4),
    ("list.pth", [1, 2, 3]),
    ("config.pth", {"epoch": 3, "lr": 0.1}),
    ("empty.pth", {}),
    ("no_tensors.pth", {"model": {"a": 1}}),
])
def test_garbage_file_is_a_value_error_naming_it(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        create_from_weights(VIT, SRC, path, pretrained=False)


def test_read_state_dict_refuses_pickled_objects(tmp_path):
    path = tmp_path / "obj.pth"
    torch.save({"model": source_model().state_dict(), "cfg": Path("x")}, path)  # weights_only refuses Path
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(path)


# --------------------------------------------------------------------------------------------
# EVA-02 and Swin


def test_eva02_round_trip_and_adaptation(tmp_path):
    src = source_model(EVA_NAME, **EVA)
    sd = src.state_dict()
    path = tmp_path / "eva.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model, report = create_from_weights(EVA_NAME, EVA, path, pretrained=False)
    assert report.loaded == list(sd) and not report.unused
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), src(x), atol=1e-5)
    model, report = create_from_weights(EVA_NAME, {**EVA, "img_size": 56, "num_classes": 10, "in_chans": 3},
                                        path, pretrained=False)
    assert sorted(report.resampled) == ["patch_embed.proj.weight", "pos_embed"]
    assert report.reinitialized == ["head.weight", "head.bias"]
    assert_loaded_equal(model, sd, report)
    model(torch.randn(1, 3, 56, 56))
    with pytest.raises(ValueError, match="depth 2; the model has embed_dim 32, depth 3"):
        create_from_weights(EVA_NAME, {**EVA, "depth": 3, "num_classes": 10}, path, pretrained=False)


def test_swin_round_trip_and_resized_windows(tmp_path):
    src = source_model(SWIN_NAME, **SWIN)
    sd = src.state_dict()
    path = tmp_path / "swin.pth"
    torch.save(sd, path)
    model, report = create_from_weights(SWIN_NAME, SWIN, path, pretrained=False)
    assert report.loaded == list(sd) and not (report.resampled or report.reinitialized)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), src(x), atol=1e-5)

    # 56 px: the same 7x7 windows, nothing to resample; a new head (classifier "head.fc")
    model, report = create_from_weights(SWIN_NAME, {**SWIN, "img_size": 56, "num_classes": 10}, path, False)
    assert not report.resampled and report.reinitialized == ["head.fc.weight", "head.fc.bias"]
    assert_loaded_equal(model, sd, report)
    model(torch.randn(1, 1, 56, 56))

    # 12 px: stage 2's 6x6 map shrinks its window to 6x6, so timm resizes its bias tables (13x13 -> 11x11)
    model, report = create_from_weights(SWIN_NAME, {**SWIN, "img_size": 12}, path, pretrained=False)
    tables = [f"layers.1.blocks.{i}.attn.relative_position_bias_table" for i in (0, 1)]
    assert report.resampled == tables
    assert model.get_parameter(tables[0]).shape == (11 * 11, 2)
    assert_loaded_equal(model, sd, report)
    model(torch.randn(1, 1, 12, 12))

    # window 4: every table resized
    model, report = create_from_weights(SWIN_NAME, {**SWIN, "window_size": 4}, path, pretrained=False)
    assert len(report.resampled) == 4 and all(k.endswith("relative_position_bias_table") for k in report.resampled)
    assert_loaded_equal(model, sd, report)


def test_swin_head_layout_mismatch(tmp_path):
    path = tmp_path / "swin.pth"
    torch.save(source_model(SWIN_NAME, **SWIN).state_dict(), path)
    with pytest.raises(ValueError, match=r"num_heads \(1, 2\); the model has .* num_heads \(2, 4\)"):
        create_from_weights(SWIN_NAME, {**SWIN, "num_heads": (2, 4)}, path, pretrained=False)
    with pytest.raises(ValueError, match=r"depths \(2, 2\).*depths \(2, 3\)"):
        create_from_weights(SWIN_NAME, {**SWIN, "depths": (2, 3), "num_classes": 10}, path, pretrained=False)


# --------------------------------------------------------------------------------------------
# timm's hub weights (stubbed: these tests never touch the network)


def test_hub_weights_through_timm(monkeypatch):
    import timm.models._builder as builder

    hub = timm.create_model(VIT, pretrained=False)  # the registry architecture: 192 wide, 224 px, 3 channels
    calls = []

    def fake_hf(hub_id, *args, **kwargs):
        calls.append(hub_id)
        return {k: v.clone() for k, v in hub.state_dict().items()}

    monkeypatch.setattr(builder, "load_state_dict_from_hf", fake_hf)
    model, report = create_from_weights(VIT, dict(num_classes=10, img_size=64, in_chans=1), None, pretrained=True)
    assert calls and report.source == f"hub:{calls[0]}" and not report.by_value
    assert sorted(report.resampled) == ["patch_embed.proj.weight", "pos_embed"]
    assert report.reinitialized == ["head.weight", "head.bias"]
    assert torch.equal(model.blocks[3].attn.qkv.weight, hub.blocks[3].attn.qkv.weight)
    assert "compared by shape" in report.summary()


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    import timm.models._builder as builder
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    with pytest.raises(OSError, match="cannot reach the Hugging Face hub.*--init-from"):
        create_from_weights(VIT, SRC, None, pretrained=True)


def test_no_weights_is_a_random_init():
    model, report = create_from_weights(VIT, SRC, None, pretrained=False)
    assert report.source == "none" and report.reinitialized == list(model.state_dict()) and not report.loaded
