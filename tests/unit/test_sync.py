"""The example level's per-step path has no host-device synchronisation (Kong et al., AAAI 2023).

``ExampleSelector.record``, ``LossSelector.batch_weights`` and ``dominant_indices`` run once per
training step; on a GPU any host read of device data stalls the host until the device queue drains.
A ``TorchDispatchMode`` sees every aten op they dispatch and fails on the ones that read device data
on the host or have a data-dependent shape (on CUDA those are syncs), so the check runs on the CPU
too; a CUDA test uses ``torch.cuda.set_sync_debug_mode("error")`` where a GPU is present. Also: the
dummy-slot handling of duplicate indices equals the old compaction (first occurrence wins), the
``valid`` flag, ``to(device)``, the unchanged ``state_dict`` format and ``batch_weights``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trilevel.example_selection import (
    ExampleSelector,
    ForgettingSelector,
    LossSelector,
    RandomSelector,
    dominant_indices,
)

K = 10
aten = torch.ops.aten


# --------------------------------------------------------------------------------------------------
# the sync detector
# --------------------------------------------------------------------------------------------------


class SyncViolation(AssertionError):
    """An op that would synchronise with the device (or read device data on the host) was dispatched."""


_FORBIDDEN = {
    aten._local_scalar_dense.default: "reads a scalar on the host (.item(), int(t), bool(t), float(t))",
    aten.is_nonzero.default: "reads a scalar on the host",
    aten.equal.default: "reads a bool on the host",
    aten.nonzero.default: "data-dependent shape",
    aten.masked_select.default: "data-dependent shape",
    aten._unique2.default: "data-dependent shape",
    aten.unique_consecutive.default: "data-dependent shape",
    aten.unique_dim.default: "data-dependent shape",
}


def _is_mask(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def _off_host(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "cpu"


class SyncDetector(TorchDispatchMode):
    """Record every aten op; raise :class:`SyncViolation` before running one that would sync."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append(str(func))
        reason = _FORBIDDEN.get(func)
        if func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
                    aten._index_put_impl_.default) and any(_is_mask(i) for i in args[1]):
            reason = "boolean-mask indexing (data-dependent shape)"
        if func is aten._to_copy.default and _off_host(args[0]):
            target = kwargs.get("device")
            if target is not None and torch.device(target).type == "cpu":
                reason = "copies device data to the CPU"
        if func is aten.copy_.default and not _off_host(args[0]) and _off_host(args[1]):
            reason = "copies device data to the CPU"
        if reason is not None:
            raise SyncViolation(f"{func}: {reason}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_sync():
    """Fail on any host read of device data inside the block; yields the detector (its ``ops``)."""
    detector = SyncDetector()
    with detector:
        yield detector
    assert detector.ops, "the detector saw no op: it was not active"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def fake_batch(indices, correct, num_classes=K):
    """Logits/targets such that example i is classified correctly iff correct[i]."""
    indices = torch.as_tensor(indices, dtype=torch.int64)
    correct = torch.as_tensor(correct, dtype=torch.bool)
    targets = indices % num_classes
    pred = torch.where(correct, targets, (targets + 1) % num_classes)
    return indices, torch.nn.functional.one_hot(pred, num_classes).float(), targets


def mixup_batch(batch, n, generator):
    """Indices with duplicates, logits and mixup-style soft targets (pairs i, B-1-i, lam 0.7)."""
    idx = torch.randint(n, (batch,), generator=generator)
    idx[1] = idx[0]
    idx[-1] = idx[2]
    labels = torch.randint(K, (batch,), generator=generator)
    one_hot = torch.nn.functional.one_hot(labels, K).float()
    soft = 0.7 * one_hot + 0.3 * one_hot.flip(0)
    logits = torch.randn(batch, K, generator=generator)
    return idx, labels, soft, logits


def make(cls, n, **kwargs):
    if cls is LossSelector:
        return LossSelector(n, num_epochs=4, seed=0, **kwargs)
    return cls(n, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=1, seed=0, **kwargs)


SELECTORS = [ForgettingSelector, RandomSelector, LossSelector]


# --------------------------------------------------------------------------------------------------
# the detector can fail (control assertions)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [
        lambda t: int(t[0]),
        lambda t: bool(t[0] > 0),
        lambda t: float(t.sum()),
        lambda t: t[0].item(),
        lambda t: t.nonzero(),
        lambda t: t[t > 1],
        lambda t: torch.masked_select(t, t > 1),
        lambda t: torch.unique(t),
        lambda t: torch.equal(t, t),
        lambda t: torch.ones(2, device="meta").to("cpu"),  # any device to the CPU
    ],
    ids=["int", "bool", "float", "item", "nonzero", "mask-index", "masked_select", "unique", "equal", "to-cpu"],
)
def test_detector_catches_syncs(action):
    t = torch.tensor([1, 2, 3])
    with pytest.raises(SyncViolation):
        with SyncDetector():
            action(t)


def test_detector_allows_fixed_shape_ops():
    t = torch.tensor([3, 1, 2])
    with no_sync() as detector:
        torch.sort(t, stable=True)
        torch.where(t > 1, t, 0).index_select(0, t.clamp(0, 2))
    assert "aten.sort.stable" in detector.ops


def test_no_sync_requires_an_active_detector():
    with pytest.raises(AssertionError, match="not active"):
        with no_sync():
            pass


# --------------------------------------------------------------------------------------------------
# record, batch_weights and dominant_indices dispatch no sync
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SELECTORS)
@pytest.mark.parametrize("valid", [None, True, False])
def test_record_dispatches_no_sync(cls, valid):
    n = 50
    sel = make(cls, n)
    sel.set_epoch(0)
    g = torch.Generator().manual_seed(1)
    idx, labels, soft, logits = mixup_batch(16, n, g)
    loss = torch.rand(16, generator=g, requires_grad=True)
    tie = torch.rand(16, generator=g)
    flag = None if valid is None else torch.tensor(valid)
    before = sel.digest()
    with no_sync() as detector:
        credited = dominant_indices(idx, labels, soft)
        out = sel.record(credited, logits, soft, loss=loss, tie_break=tie, valid=flag)
    assert any("sort" in op for op in detector.ops)  # the duplicate handling ran under the detector
    assert (sel.digest() == before) == (valid is False)
    if cls is LossSelector:
        out.backward()
        assert loss.grad is not None


def test_record_hard_targets_and_empty_batch_dispatch_no_sync():
    sel = ForgettingSelector(20, initial_remove_fraction=0.0, swap_fraction=0.0)
    idx, logits, targets = fake_batch([3, 3, 4, 5], [True, False, True, False])
    with no_sync():
        sel.record(idx, logits, targets)
        sel.record(torch.zeros(0, dtype=torch.long), torch.zeros(0, K), torch.zeros(0, dtype=torch.long))
    assert sel.presentations[3:6].tolist() == [1, 1, 1]


def test_batch_weights_dispatches_no_sync_and_matches_weights():
    n = 400
    sel = LossSelector(n, prune_ratio=0.5, num_epochs=4, seed=0)
    sel.set_epoch(0)
    all_idx = torch.arange(n)
    _, logits, targets = fake_batch(all_idx, torch.ones(n, dtype=torch.bool))
    sel.record(all_idx, logits, targets, loss=torch.linspace(0, 1, n))
    sel.set_epoch(1)
    assert set(sel.weights.unique().tolist()) == {1.0, 2.0}  # some weights were raised
    idx = torch.tensor([5, 399, 0, 5, 123, 250])
    with no_sync():
        w = sel.batch_weights(idx)
    assert w.dtype == torch.float32 and w.device == sel.device
    assert torch.equal(w, sel.weights[idx])
    assert torch.equal(sel.batch_weights(idx.tolist()), sel.weights[idx])
    loss = torch.rand(6, dtype=torch.float64, requires_grad=True)
    out = sel.reweighted(None, idx, loss)
    assert out.dtype == torch.float64
    assert torch.allclose(out, (loss * sel.weights[idx].double()).mean())
    with pytest.raises(ValueError, match="indices must lie in"):
        sel.batch_weights(torch.tensor([0, n]))
    with pytest.raises(ValueError, match="integer tensor"):
        sel.batch_weights(torch.tensor([0.0]))


def test_dominant_indices_dispatch_no_sync_and_stay_on_target_device():
    indices = torch.tensor([10, 11, 12, 13], dtype=torch.int32)
    labels = torch.tensor([0, 1, 2, 3])
    mixed = 0.3 * torch.nn.functional.one_hot(labels, 4).float() + 0.7 * torch.nn.functional.one_hot(
        labels.flip(0), 4).float()
    with no_sync():
        out = dominant_indices(indices, labels, mixed)
    assert out.tolist() == [13, 12, 11, 10] and out.dtype == torch.int32 and out.device == mixed.device


@pytest.mark.parametrize("cls", SELECTORS)
@pytest.mark.parametrize("host_indices", [False, True], ids=["device-indices", "dataloader-indices"])
def test_record_on_meta_device_reads_nothing_on_the_host(cls, host_indices):
    """The "meta" device stands in for an accelerator on a CPU-only machine: its tensors hold no data,
    so any host read (``.tolist()``, ``.numpy()``, ``.item()``, a copy to the CPU) fails."""
    n, meta = 50, torch.device("meta")
    sel = make(cls, n)
    sel.set_epoch(0)
    assert sel.to(meta) is sel and sel.device == meta
    g = torch.Generator().manual_seed(2)
    idx, labels, soft, logits = mixup_batch(16, n, g)
    if not host_indices:
        idx = idx.to(meta)
    loss = torch.rand(16, device=meta, requires_grad=True)
    with no_sync():
        credited = dominant_indices(idx, labels.to(meta), soft.to(meta))
        out = sel.record(credited, logits.to(meta), soft.to(meta), loss=loss, tie_break=torch.rand(16, device=meta),
                         valid=torch.tensor(True, device=meta))
        sel.record(idx, logits.to(meta), labels.to(meta), loss=loss)  # hard targets, indices as given
        if cls is LossSelector:
            assert sel.batch_weights(idx).device == meta
    assert credited.device == meta  # the mixed targets' device, not the indices'
    assert all(t.device == meta for t in sel.stat_tensors().values())
    assert (out is None) == (cls is not LossSelector)


# --------------------------------------------------------------------------------------------------
# duplicates: the dummy slot gives the old compaction's statistics (first occurrence wins)
# --------------------------------------------------------------------------------------------------


def _reference_record(ref, idx, correct, loss, tie):
    """The old semantics, example by example: duplicates keep the first occurrence only."""
    seen = set()
    for i, c, lo, tb in zip(idx.tolist(), correct.tolist(), loss.tolist(), tie.tolist()):
        if i in seen:
            continue
        seen.add(i)
        if ref["last_correct"][i] and not c:
            ref["forgetting_counts"][i] += 1
        ref["ever_learned"][i] = ref["ever_learned"][i] or c
        ref["presentations"][i] += 1
        ref["last_correct"][i] = c
        ref["tie_break_scores"][i] = tb
        ref["last_loss"][i] = lo
        ref["has_loss"][i] = True


def test_duplicates_match_first_occurrence_compaction():
    n, g = 30, torch.Generator().manual_seed(7)
    forgetting = ForgettingSelector(n, initial_remove_fraction=0.0, swap_fraction=0.0)
    loss_sel = LossSelector(n, num_epochs=2)
    ref = {
        "last_correct": [False] * n, "forgetting_counts": [0] * n, "ever_learned": [False] * n,
        "presentations": [0] * n, "tie_break_scores": [float("nan")] * n,
        "last_loss": [float("nan")] * n, "has_loss": [False] * n,
    }
    for step in range(40):
        batch = int(torch.randint(1, 24, (), generator=g))
        idx = torch.randint(n, (batch,), generator=g)  # many duplicates
        correct = torch.rand(batch, generator=g) < 0.6
        loss, tie = torch.rand(batch, generator=g), torch.rand(batch, generator=g)
        _, logits, targets = fake_batch(idx, correct)
        forgetting.record(idx, logits, targets, tie_break=tie)
        loss_sel.record(idx, logits, targets, loss=loss)
        _reference_record(ref, idx, correct, loss, tie)
    for name in ("last_correct", "forgetting_counts", "ever_learned", "presentations", "tie_break_scores"):
        expected = torch.tensor(ref[name], dtype=getattr(forgetting, name).dtype)
        assert torch.equal(getattr(forgetting, name), expected) or (
            name == "tie_break_scores" and torch.allclose(getattr(forgetting, name), expected, equal_nan=True)
        ), name
    assert int(forgetting.forgetting_counts.sum()) > 0 and int(forgetting.presentations.max()) > 1
    assert torch.allclose(loss_sel.last_loss, torch.tensor(ref["last_loss"]), equal_nan=True)
    assert torch.equal(loss_sel.has_loss, torch.tensor(ref["has_loss"]))


def test_dummy_slot_is_hidden():
    n = 12
    sel = ForgettingSelector(n, initial_remove_fraction=0.0, swap_fraction=0.0)
    idx, logits, targets = fake_batch([2, 2, 2, 5], [True, True, True, True])
    sel.record(idx, logits, targets)
    assert sel.full_stat("presentations").shape == (n + 1,)
    assert int(sel.full_stat("presentations")[n]) == 2  # the two repeats went to the dummy slot
    for name, tensor in sel.stat_tensors().items():
        assert tensor.shape == (n,) and getattr(sel, name) is tensor
        assert tensor.data_ptr() == sel.full_stat(name).data_ptr()  # a view, updated in place
    assert sel.presentations.tolist() == [0, 0, 1, 0, 0, 1] + [0] * 6


# --------------------------------------------------------------------------------------------------
# the valid flag
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SELECTORS)
def test_valid_false_ignores_the_batch(cls):
    n = 40
    a, b = make(cls, n), make(cls, n)
    idx, logits, targets = fake_batch([1, 2, 3, 3], [True, False, True, True])
    loss = torch.tensor([0.5, float("nan"), float("inf"), 1.0])
    a.record(idx, logits, targets, loss=loss, valid=torch.tensor(False))
    assert a.digest() == b.digest()
    a.record(idx, logits, targets, loss=loss.nan_to_num(), valid=torch.tensor(True))
    b.record(idx, logits, targets, loss=loss.nan_to_num())
    assert a.digest() == b.digest() != make(cls, n).digest()
    # an ignored batch still checks its indices
    with pytest.raises(ValueError, match="indices must lie in"):
        a.record(torch.tensor([0, n, 1, 2]), logits, targets, loss=loss, valid=torch.tensor(False))


def test_valid_must_be_a_0d_bool_tensor():
    sel = ForgettingSelector(10)
    idx, logits, targets = fake_batch([0, 1], [True, True])
    with pytest.raises(TypeError, match="valid"):
        sel.record(idx, logits, targets, valid=True)
    with pytest.raises(ValueError, match="valid must be a 0-d bool tensor"):
        sel.record(idx, logits, targets, valid=torch.tensor([True]))
    with pytest.raises(ValueError, match="valid must be a 0-d bool tensor"):
        sel.record(idx, logits, targets, valid=torch.tensor(1))


# --------------------------------------------------------------------------------------------------
# device, state_dict format
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SELECTORS)
def test_to_device_round_trip_keeps_digest(cls):
    sel = make(cls, 60)
    sel.set_epoch(0)
    idx, logits, targets = fake_batch(torch.arange(0, 60, 2), torch.arange(30) % 3 == 0)
    sel.record(idx, logits, targets, loss=torch.rand(30, generator=torch.Generator().manual_seed(0)))
    sel.set_epoch(1)
    digest, state = sel.digest(), sel.state_dict()
    assert sel.device == torch.device("cpu")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        assert sel.to(device) is sel and sel.device.type == device
        assert sel.digest() == digest
        assert all(t.device.type == device for t in sel.stat_tensors().values())
        assert sel.active_mask.device.type == device
        assert sel.active_indices.device.type == "cpu" and sel.index_sets()[1].device.type == "cpu"
        for key, value in sel.state_dict()["stats"].items():
            assert value.device.type == "cpu"
            assert value.numpy().tobytes() == state["stats"][key].numpy().tobytes()  # NaN-safe, exact
        sel.to("cpu")
    other = make(cls, 60, device="cpu")
    other.load_state_dict(state)
    assert other.digest() == digest


def test_state_dict_format_unchanged(tmp_path):
    n = 50
    sel = ForgettingSelector(n, update_every=1, seed=0)
    idx, logits, targets = fake_batch(sel.active_indices, torch.ones(40, dtype=torch.bool))
    sel.record(idx, logits, targets, tie_break=torch.zeros(40))
    sel.set_epoch(1)
    state = sel.state_dict()
    assert list(state) == ["kind", "version", "config", "active_mask", "stats", "last_epoch", "generator_state",
                           "num_updates", "last_update_epoch", "history"]
    assert list(state["stats"]) == ["last_correct", "forgetting_counts", "ever_learned", "presentations",
                                    "tie_break_scores"]
    dtypes = [torch.bool, torch.int32, torch.bool, torch.int32, torch.float32]
    for tensor, dtype in zip(state["stats"].values(), dtypes):
        assert tensor.dtype == dtype and tensor.shape == (n,) and tensor.device.type == "cpu"
        assert tensor.untyped_storage().nbytes() == n * tensor.element_size()  # no dummy slot saved
        assert tensor.data_ptr() != sel.full_stat("presentations").data_ptr()
    assert state["active_mask"].shape == (n,) and state["active_mask"].dtype == torch.bool
    loss_state = LossSelector(n, num_epochs=3).state_dict()
    assert list(loss_state["stats"]) == ["last_loss", "has_loss", "weights"]
    assert all(t.shape == (n,) for t in loss_state["stats"].values())
    path = tmp_path / "state.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    copy = ForgettingSelector(n, update_every=1, seed=0)
    copy.load_state_dict(loaded)
    assert copy.digest() == sel.digest()
    assert issubclass(ForgettingSelector, ExampleSelector)


# --------------------------------------------------------------------------------------------------
# CUDA: no synchronisation with set_sync_debug_mode("error")
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", SELECTORS)
def test_cuda_record_does_not_synchronise(cls):
    n, device = 1000, torch.device("cuda")
    sel = make(cls, n, device=device)
    sel.set_epoch(0)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        idx, labels, soft, logits = mixup_batch(64, n, g)
        batches.append((idx.pin_memory(), labels.to(device), soft.to(device), logits.to(device),
                        torch.rand(64, generator=g).to(device), torch.rand(64, generator=g).to(device)))
    reference = make(cls, n)
    reference.set_epoch(0)
    flags = [torch.tensor(v, device=device) for v in (True, False)]
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, (idx, labels, soft, logits, loss, tie) in enumerate(batches):
            credited = dominant_indices(idx, labels, soft)  # on the GPU: indices copied non-blocking
            sel.record(credited, logits, soft, loss=loss, tie_break=tie, valid=flags[step == 1])
            sel.record(idx, logits, soft, loss=loss, tie_break=tie)  # CPU (pinned) indices
            if cls is LossSelector:
                sel.batch_weights(credited)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    for step, (idx, labels, soft, logits, loss, tie) in enumerate(batches):
        credited = dominant_indices(idx, labels.cpu(), soft.cpu())
        if step != 1:
            reference.record(credited, logits.cpu(), soft.cpu(), loss=loss.cpu(), tie_break=tie.cpu())
        reference.record(idx, logits.cpu(), soft.cpu(), loss=loss.cpu(), tie_break=tie.cpu())
    assert sel.digest() == reference.digest()
