"""TriLevelCallback: the tri-level algorithm driven by a Lightning Trainer (tiny ViT, CPU, seconds)."""

import importlib
import io
import math
import sys

import pytest

pytest.importorskip("lightning")

import lightning  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import trilevel  # noqa: E402
from trilevel.integrations.lightning import TriLevelCallback  # noqa: E402

N, BATCH, EPOCHS = 64, 16, 2


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster and leaves the other cores alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=4,
                             num_heads=2, num_classes=10)


def dataset(n: int = N, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def algorithm(model: torch.nn.Module, **settings) -> trilevel.TriLevel:
    defaults = dict(preset="paper", ratio_warmup=0.0, ratio_decay_end=1.0, example_update_every=1, seed=0)
    return trilevel.TriLevel(model, N, epochs=EPOCHS, **{**defaults, **settings})


class Module(lightning.LightningModule):
    """Follows the callback's contract; logs what the model ran with at every step."""

    def __init__(self, model, reweight: bool = False, contract: bool = True):
        super().__init__()
        self.model, self.reweight, self.contract = model, reweight, contract
        self.steps, self.val_ratios, self.seen = [], [], []

    def training_step(self, batch, batch_idx):
        images, targets, indices = batch
        self.steps.append((self.current_epoch, batch_idx, int(indices.numel()), trilevel.get_keep_ratios(self.model)))
        self.seen.append(indices.clone())
        logits = self.model(images)
        if self.reweight:
            cb = next(c for c in self.trainer.callbacks if isinstance(c, TriLevelCallback))
            per_example = F.cross_entropy(logits, targets, reduction="none")
            weights = cb.after_forward(indices, logits, targets, per_example)
            assert weights.shape == per_example.shape
            return (per_example * weights).mean()
        loss = F.cross_entropy(logits, targets)
        if not self.contract:
            return loss
        return {"loss": loss, "logits": logits, "targets": targets, "indices": indices}

    def validation_step(self, batch, batch_idx):
        self.val_ratios.append(trilevel.get_keep_ratios(self.model))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(module, loader, callback, val_loader=None, **trainer_args):
    args = dict(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer = lightning.Trainer(callbacks=[callback], **{**args, **trainer_args})
    trainer.fit(module, loader, val_loader)
    return trainer


def train_loader(tl, n: int = N) -> DataLoader:
    return DataLoader(trilevel.IndexedDataset(dataset(n)), batch_size=BATCH, sampler=tl.sampler)


def test_fit_follows_schedules_records_every_example_and_round_trips_state():
    model = tiny_vit()
    tl = algorithm(model)
    cb = TriLevelCallback(tl)
    module = Module(model)
    val = DataLoader(trilevel.IndexedDataset(dataset(8, seed=1)), batch_size=8)
    fit(module, train_loader(tl), cb, val_loader=val, limit_val_batches=1)

    assert trilevel.is_patched(model)
    steps = math.ceil(tl.num_active / BATCH)
    assert [(e, i) for e, i, _, _ in module.steps] == [(e, i) for e in range(EPOCHS) for i in range(steps)]
    for epoch, i, _, ratios in module.steps:  # the ratios the forward ran with follow the schedules
        progress = trilevel.run_progress(epoch, i, steps, EPOCHS)
        assert ratios == pytest.approx((tl.token_schedule(progress), tl.attn_schedule(progress)))
    last = trilevel.run_progress(EPOCHS - 1, steps - 1, steps, EPOCHS)
    assert tl.keep_ratio == pytest.approx(tl.token_schedule(last)) and tl.keep_ratio < 1.0
    assert tl.attn_keep_ratio == pytest.approx(tl.attn_schedule(last))
    assert trilevel.get_keep_ratios(model) == pytest.approx((tl.keep_ratio, tl.attn_keep_ratio))

    # validation (sanity check included) ran at the evaluation ratios
    assert module.val_ratios and all(r == pytest.approx(tl.eval_ratios()) for r in module.val_ratios)

    # the selector updated at epoch 1 (presentations restart there), then saw exactly the active set
    sel = tl.selector
    assert sel.num_updates == 1
    assert int(sel.presentations.sum()) == sum(b for e, _, b, _ in module.steps if e == EPOCHS - 1) == tl.num_active
    assert torch.equal(sel.presentations > 0, sel.active_mask)

    # the callback state goes through a checkpoint into a fresh callback
    buf = io.BytesIO()
    torch.save({"callbacks": {cb.state_key: cb.state_dict()}}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["callbacks"][cb.state_key]
    fresh = TriLevelCallback(algorithm(tiny_vit()))
    assert fresh.algorithm.digest() != tl.digest()
    fresh.load_state_dict(state)
    assert fresh.algorithm.digest() == tl.digest()
    assert fresh.algorithm.sampler.epoch == tl.sampler.epoch == EPOCHS - 1


def test_loss_selector_reweights_through_after_forward():
    model = tiny_vit()
    tl = algorithm(model, selector="loss", example_remove=0.5)
    module = Module(model, reweight=True)
    fit(module, train_loader(tl), TriLevelCallback(tl), max_epochs=EPOCHS, limit_train_batches=2)
    assert tl.reweights_loss
    seen = torch.zeros(N, dtype=torch.bool)
    seen[torch.cat(module.seen)] = True
    assert len(module.steps) == 2 * EPOCHS
    assert torch.equal(tl.selector.has_loss, seen)


def test_loss_selector_without_after_forward_is_refused():
    model = tiny_vit()
    tl = algorithm(model, selector="loss")
    with pytest.raises(ValueError, match="after_forward"):
        fit(Module(model), train_loader(tl), TriLevelCallback(tl), limit_train_batches=1)


def test_outputs_without_logits_are_refused():
    model = tiny_vit()
    tl = algorithm(model)
    with pytest.raises(ValueError, match="lacks"):
        fit(Module(model, contract=False), train_loader(tl), TriLevelCallback(tl), limit_train_batches=1)


def test_loader_without_the_trilevel_sampler_is_refused():
    model = tiny_vit()
    tl = algorithm(model)
    loader = DataLoader(trilevel.IndexedDataset(dataset()), batch_size=BATCH, shuffle=True)
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        fit(Module(model), loader, TriLevelCallback(tl), limit_train_batches=1)


def test_setup_checks_epochs_and_model():
    model = tiny_vit()
    tl = algorithm(model)
    with pytest.raises(ValueError, match="max_epochs=3"):
        fit(Module(model), train_loader(tl), TriLevelCallback(tl), max_epochs=3)
    with pytest.raises(ValueError, match="not a submodule"):
        fit(Module(tiny_vit(seed=1)), train_loader(tl), TriLevelCallback(tl))


def test_bad_arguments():
    with pytest.raises(TypeError, match="TriLevel"):
        TriLevelCallback(tiny_vit())
    tl = algorithm(tiny_vit(), selector="none")
    with pytest.raises(ValueError, match="'yes'"):
        TriLevelCallback(tl, set_eval_ratios="yes")
    with pytest.raises(ValueError, match="'trilevel' key"):
        TriLevelCallback(tl).load_state_dict({"selector": None})


def test_imports_without_lightning(monkeypatch):
    for name in [m for m in sys.modules if m == "trilevel.integrations" or m.startswith("trilevel.integrations.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    importlib.import_module("trilevel.integrations")  # the package itself needs no lightning
    with pytest.raises(ImportError, match=r"pip install trilevel\[lightning\]"):
        importlib.import_module("trilevel.integrations.lightning")
