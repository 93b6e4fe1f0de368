"""The README's own-training-loop example runs as written (with a tiny model and data)."""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
from torch.utils.data import TensorDataset

import trilevel
from _models import tiny_vit

README = Path(__file__).resolve().parents[2] / "README.md"


def _own_loop_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Your own training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_own_loop_example_runs(monkeypatch):
    code = _own_loop_block()
    assert "trilevel.TriLevel(" in code and "tl.after_forward(" in code
    # The example's deit_tiny_patch16_224 is swapped for a tiny ViT on 28x28 images (same class).
    made = tiny_vit(depth=4)
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: made)
    g = torch.Generator().manual_seed(0)
    train_set = TensorDataset(torch.randn(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g))
    scope = {"train_set": train_set, "epochs": 2}
    torch.manual_seed(0)
    exec(compile(code, str(README), "exec"), scope)
    tl = scope["tl"]
    assert trilevel.is_patched(scope["model"])
    # every step set the scheduled ratios; the last step's are the schedule at its progress (the
    # default schedule grows to 1.0 and ends dense), and the first epoch's were pruned
    steps = len(scope["loader"])
    assert tl.keep_ratio == tl.token_schedule(trilevel.run_progress(1, steps - 1, steps, 2))
    assert tl.token_schedule(trilevel.run_progress(0, 1, steps, 2)) < 1.0
    # the forgetting selector saw every active example once in the last epoch (statistics since its update)
    assert int(tl.selector.presentations.sum()) == tl.selector.num_active
    assert tl.selector.num_updates == 1


def test_readme_fine_tuning_example_loads_the_file_and_patches(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text.split("### Fine-tuning a pretrained model", 1)[1], re.S).group(1)
    assert "pretrained=True" in code and "trilevel.TriLevel(" in code
    source = timm.create_model("deit_tiny_patch16_224")  # stands in for downloaded weights (1000 classes)
    torch.save(source.state_dict(), tmp_path / "deit_tiny.pth")
    monkeypatch.chdir(tmp_path)
    train_set = TensorDataset(torch.randn(8, 3, 224, 224), torch.randint(0, 10, (8,)))
    scope = {"train_set": train_set, "epochs": 1, "timm": timm, "trilevel": trilevel}
    exec(compile(code, str(README), "exec"), scope)
    model = scope["model"]
    assert trilevel.is_patched(model) and model.head.weight.shape == (10, 192)
    assert torch.equal(model.blocks[5].mlp.fc1.weight, source.blocks[5].mlp.fc1.weight)


def test_readme_models_block_runs_on_each_verb(monkeypatch):
    text = README.read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text.split("### Models", 1)[1], re.S).group(1)
    assert "trilevel.patch(model" in code and "trilevel.unpatch(model)" in code
    model, seen = tiny_vit(), {}
    count = trilevel.forward_flops

    def forward_flops(m, *args, **kwargs):  # the model as the block leaves it before unpatching
        seen.update(ratios=trilevel.get_keep_ratios(m), settings=trilevel.family_of(m).settings(m))
        return count(m, *args, **kwargs)

    monkeypatch.setattr(trilevel, "forward_flops", forward_flops)
    exec(compile(code, str(README), "exec"), {"trilevel": trilevel, "model": model})
    assert seen["ratios"] == (0.9, 0.3) and seen["settings"].prune_layers == (3, 6, 9)  # the paper's; keep set
    assert seen["settings"].token_fate == "drop" and not trilevel.is_patched(model)
