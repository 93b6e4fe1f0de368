"""Tests for trilevel.example_selection (example-level selection, Kong et al. AAAI 2023)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trilevel.example_selection import (
    ActiveSubsetSampler,
    ExampleSelector,
    ForgettingSelector,
    IndexedDataset,
    LossSelector,
    RandomSelector,
)

K = 10  # classes of the fake model


# --------------------------------------------------------------------------------------------------
# helpers: a fake deterministic "model"
# --------------------------------------------------------------------------------------------------


def fake_batch(indices, correct, num_classes=K):
    """Logits/targets such that example i is classified correctly iff correct[i]."""
    indices = torch.as_tensor(indices, dtype=torch.int64)
    correct = torch.as_tensor(correct, dtype=torch.bool)
    targets = indices % num_classes
    pred = torch.where(correct, targets, (targets + 1) % num_classes)
    logits = torch.nn.functional.one_hot(pred, num_classes).float()
    return indices, logits, targets


def present(selector, indices, correct, **kwargs):
    return selector.record(*fake_batch(indices, correct), **kwargs)


def fake_correct(num_examples, epoch, seed=0):
    """Seeded per-epoch correctness: example i is right with a probability that depends on i."""
    g = torch.Generator().manual_seed(10_000 * seed + epoch)
    easiness = torch.linspace(0.05, 0.98, num_examples)
    easiness = easiness[torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))]
    return torch.rand(num_examples, generator=g) < easiness


def fake_scores(num_examples, epoch):
    g = torch.Generator().manual_seed(777 + epoch)
    return torch.rand(num_examples, generator=g)


def run_epochs(selector, sampler, start, stop, batch_size=16, with_tie_break=False):
    """Drive selector + sampler like a training loop; returns the per-epoch sample orders."""
    n = selector.num_examples
    orders = []
    for epoch in range(start, stop):
        sampler.set_epoch(epoch)
        order = list(sampler)
        orders.append(order)
        table = fake_correct(n, epoch)
        scores = fake_scores(n, epoch)
        for i in range(0, len(order), batch_size):
            idx = torch.tensor(order[i : i + batch_size])
            _, logits, targets = fake_batch(idx, table[idx])
            kwargs = {}
            if isinstance(selector, LossSelector):
                kwargs["loss"] = (1.0 - table[idx].float()) + scores[idx]
            if with_tie_break:
                kwargs["tie_break"] = scores[idx]
            selector.record(idx, logits, targets, **kwargs)
    return orders


def sets_partition(selector):
    active, removed = selector.active_indices, selector.removed_indices
    both = torch.cat([active, removed])
    return (
        active.dtype == torch.int64
        and removed.dtype == torch.int64
        and active.dim() == 1
        and removed.dim() == 1
        and both.numel() == selector.num_examples
        and torch.equal(both.sort().values, torch.arange(selector.num_examples))
    )


# --------------------------------------------------------------------------------------------------
# sizes, rounding, initial removal
# --------------------------------------------------------------------------------------------------


def test_paper_sizes_on_imagenet():
    sel = ForgettingSelector(1_281_167, num_epochs=300)
    assert sel.remove_count == 256_233 and sel.swap_count == 64_058
    assert sel.removed_indices.numel() == 256_233
    assert sel.active_indices.numel() == 1_281_167 - 256_233
    assert sel.update_epochs == [30, 60, 90, 120, 150]
    assert sets_partition(sel)


def test_counts_use_round_half_even():
    sel = ForgettingSelector(10, initial_remove_fraction=0.25, swap_fraction=0.15)
    assert sel.remove_count == 2  # round(2.5) == 2
    assert sel.swap_count == 2  # round(1.5) == 2
    assert sel.num_active == 8 and abs(sel.keep_ratio - 0.8) < 1e-12


def test_global_rng_untouched():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    sel = ForgettingSelector(500, swap_fraction=0.1, update_every=1)
    sampler = ActiveSubsetSampler(sel)
    run_epochs(sel, sampler, 0, 3)
    assert torch.equal(torch.get_rng_state(), before)


# --------------------------------------------------------------------------------------------------
# forgetting events and the update rule
# --------------------------------------------------------------------------------------------------


def test_forgetting_event_counting():
    sel = ForgettingSelector(6, initial_remove_fraction=0.0, swap_fraction=0.0)
    histories = {
        0: [1, 0, 1, 0],  # two events
        1: [0, 1],  # none: first presentation cannot be an event
        2: [1, 1, 0],  # one
        3: [0, 0, 0],  # none, never learned
        4: [1, 0, 0, 1, 0],  # two
        5: [],  # never presented
    }
    for step in range(5):
        idx = [i for i, h in histories.items() if step < len(h)]
        present(sel, idx, [bool(histories[i][step]) for i in idx])
    assert sel.forgetting_counts.tolist() == [2, 0, 1, 0, 2, 0]
    assert sel.ever_learned.tolist() == [True, True, True, False, True, False]
    assert sel.presentations.tolist() == [4, 2, 3, 3, 5, 0]
    assert sel.last_correct.tolist() == [False, True, False, False, False, False]


def craft(sel, counts):
    """Give active example i the forgetting history described by counts[i] (None = never learned)."""
    seqs = {}
    for ex, f in counts.items():
        seqs[ex] = [0, 0, 0] if f is None else [1, 0] * f + [1]
    for step in range(max(len(s) for s in seqs.values())):
        idx = [ex for ex, s in seqs.items() if step < len(s)]
        present(sel, idx, [bool(seqs[ex][step]) for ex in idx])


def test_removal_picks_exactly_the_fewest_forgetting():
    sel = ForgettingSelector(40, initial_remove_fraction=0.25, swap_fraction=0.075, update_every=3, seed=5)
    assert sel.swap_count == 3
    active = sel.active_indices.tolist()
    assert len(active) == 30
    # 3 never learned (0 events, but never correct), 3 with one event, 3 with two, the rest more.
    counts = {}
    for j, ex in enumerate(active):
        counts[ex] = None if j < 3 else (1 if j < 6 else (2 if j < 9 else 3 + j % 4))
    counts[active[20]] = 0  # the unique fewest among the learned ...
    counts[active[25]] = 0
    craft(sel, counts)
    expected_counts = torch.zeros(40, dtype=torch.int32)
    for ex, f in counts.items():
        expected_counts[ex] = 0 if f is None else f
    assert torch.equal(sel.forgetting_counts, expected_counts)
    # ... plus one of the three with one event (a tie broken at random)
    old_active, old_pool = set(active), set(sel.removed_indices.tolist())
    sel.set_epoch(3)
    new_active = set(sel.active_indices.tolist())
    removed_now = old_active - new_active
    assert len(removed_now) == 3
    assert {active[20], active[25]} <= removed_now
    assert len(removed_now & {active[3], active[4], active[5]}) == 1
    assert not removed_now & {active[0], active[1], active[2]}  # never learned: kept
    restored = new_active - old_active
    assert len(restored) == 3 and restored <= old_pool
    assert sel.history == [{"epoch": 3, "removed": 3, "restored": 3}]


def test_tie_break_scores_lower_removed_first():
    sel = ForgettingSelector(40, initial_remove_fraction=0.25, swap_fraction=0.075, update_every=1, seed=1)
    active = sel.active_indices
    # every active example learned with zero events: all tied on the count
    scores = torch.rand(40, generator=torch.Generator().manual_seed(3))
    present(sel, active, torch.ones(30, dtype=torch.bool), tie_break=scores[active])
    # make one low-score example forgettable: it must survive despite its low score
    lowest = active[scores[active].argsort()[:4]]
    present(sel, lowest[:1], [False])
    present(sel, lowest[:1], [True])
    sel.set_epoch(1)
    removed_now = set(active.tolist()) - set(sel.active_indices.tolist())
    assert removed_now == set(lowest[1:].tolist())


def test_ties_broken_by_seeded_random_order():
    removed = []
    for seed in (0, 0, 1, 2):
        sel = ForgettingSelector(200, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=1, seed=seed)
        active = sel.active_indices
        present(sel, active, torch.ones(active.numel(), dtype=torch.bool))  # all tied at 0 events
        sel.set_epoch(1)
        removed.append(set(active.tolist()) - set(sel.active_indices.tolist()))
        assert len(removed[-1]) == 10
    assert removed[0] == removed[1]
    assert removed[2] != removed[3]


def test_never_learned_examples_are_never_removed():
    sel = ForgettingSelector(50, initial_remove_fraction=0.2, swap_fraction=0.1, update_every=2, seed=0)
    active = sel.active_indices
    learned = active[:2]
    present(sel, active, torch.zeros(active.numel(), dtype=torch.bool))
    for _ in range(4):  # the two learned ones are forgotten again and again
        present(sel, learned, [True, True])
        present(sel, learned, [False, False])
    sel.set_epoch(2)
    new_active = set(sel.active_indices.tolist())
    assert set(active[2:].tolist()) <= new_active
    assert not set(learned.tolist()) & new_active
    assert sel.history[-1] == {"epoch": 2, "removed": 2, "restored": 2}
    assert sel.num_active == 40 and sets_partition(sel)


def test_restore_from_pool_sizes_invariant_and_stats_reset():
    sel = ForgettingSelector(300, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=2, max_updates=3, seed=4)
    sampler = ActiveSubsetSampler(sel, seed=0)
    for epoch in range(10):
        old_active = set(sel.active_indices.tolist())
        old_pool = set(sel.removed_indices.tolist())
        updates_before = sel.num_updates
        run_epochs(sel, sampler, epoch, epoch + 1)  # set_epoch(epoch) then one epoch of records
        if epoch in (2, 4, 6):
            assert sel.num_updates == updates_before + 1
            new_active = set(sel.active_indices.tolist())
            removed_now, restored = old_active - new_active, new_active - old_active
            assert len(removed_now) == len(restored) == 15
            assert restored <= old_pool  # drawn from the pool as it was before this update
            assert removed_now <= set(sel.removed_indices.tolist())
        else:
            assert sel.num_updates == updates_before
            assert set(sel.active_indices.tolist()) == old_active
        assert sel.num_active == 240 and sel.removed_indices.numel() == 60
        assert sets_partition(sel)
    assert sel.num_updates == 3 and [h["epoch"] for h in sel.history] == [2, 4, 6]
    # statistics are reset at an update, except each example's last outcome
    sel2 = ForgettingSelector(100, update_every=1, seed=0)
    present(sel2, sel2.active_indices, torch.ones(80, dtype=torch.bool), tie_break=torch.zeros(80))
    sel2.set_epoch(1)
    assert int(sel2.presentations.sum()) == 0 and not bool(sel2.ever_learned.any())
    assert bool(torch.isnan(sel2.tie_break_scores).all())
    assert int(sel2.last_correct.sum()) == 80  # kept across the update


def test_forgetting_events_span_updates():
    """With an update every epoch each example is presented once between updates; a correct-then-wrong
    pair of consecutive presentations across the update is still a forgetting event (Toneva et al.)."""
    sel = ForgettingSelector(100, update_every=1, seed=0)
    active = sel.active_indices
    present(sel, active, torch.ones(80, dtype=torch.bool))  # epoch 0: all correct
    sel.set_epoch(1)
    kept = sel.active_indices
    survivors = torch.tensor(sorted(set(kept.tolist()) & set(active.tolist())))
    wrong = torch.zeros(len(survivors), dtype=torch.bool)
    present(sel, survivors, wrong)  # epoch 1: the same examples, now wrong
    assert int(sel.forgetting_counts[survivors].sum()) == len(survivors)
    restored = torch.tensor(sorted(set(kept.tolist()) - set(active.tolist())))
    present(sel, restored, torch.zeros(len(restored), dtype=torch.bool))  # first presentation: no event
    assert int(sel.forgetting_counts[restored].sum()) == 0


def test_random_selector_same_sizes_random_swaps():
    sel = RandomSelector(300, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=1, max_updates=2, seed=0)
    ref = ForgettingSelector(300, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=1, max_updates=2, seed=0)
    assert torch.equal(sel.active_indices, ref.active_indices)  # same seeded initial removal
    active = sel.active_indices
    # even if nothing is learned, the random selector swaps swap_count examples
    present(sel, active, torch.zeros(active.numel(), dtype=torch.bool))
    old_pool = set(sel.removed_indices.tolist())
    sel.set_epoch(1)
    new_active = set(sel.active_indices.tolist())
    assert len(set(active.tolist()) - new_active) == 15
    assert new_active - set(active.tolist()) <= old_pool
    assert sel.num_active == 240 and sets_partition(sel)


def test_determinism_per_seed():
    def final(seed, cls=ForgettingSelector):
        sel = cls(400, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=2, max_updates=3, seed=seed)
        run_epochs(sel, ActiveSubsetSampler(sel, seed=seed), 0, 7)
        return sel

    a, b, c = final(0), final(0), final(1)
    assert torch.equal(a.active_indices, b.active_indices) and a.digest() == b.digest()
    assert not torch.equal(a.active_indices, c.active_indices) and a.digest() != c.digest()
    assert not torch.equal(
        ForgettingSelector(400, seed=0).active_indices, ForgettingSelector(400, seed=1).active_indices
    )
    r0, r1 = final(0, RandomSelector), final(0, RandomSelector)
    assert r0.digest() == r1.digest() and r0.digest() != a.digest()


def test_set_epoch_idempotent_and_schedule():
    sel = ForgettingSelector(100, swap_fraction=0.05, update_every=2, max_updates=2, seed=0)
    assert sel.update_epochs == [2, 4]
    present(sel, sel.active_indices, torch.ones(80, dtype=torch.bool))
    sel.set_epoch(0)
    sel.set_epoch(1)
    assert sel.num_updates == 0
    sel.set_epoch(2)
    after = (sel.digest(), sel.active_indices)
    present(sel, sel.active_indices, torch.ones(80, dtype=torch.bool))
    stats = sel.digest()
    sel.set_epoch(2)  # again: no second update, statistics untouched
    assert sel.num_updates == 1 and sel.digest() == stats
    assert torch.equal(sel.active_indices, after[1])
    for e in (3, 4, 5, 6, 8):
        sel.set_epoch(e)
    assert [h["epoch"] for h in sel.history] == [2, 4]  # max_updates caps the schedule
    never = ForgettingSelector(100, max_updates=0, update_every=1)
    present(never, never.active_indices, torch.ones(80, dtype=torch.bool))
    before = never.digest()
    for e in range(5):
        never.set_epoch(e)
    assert never.num_updates == 0 and never.digest() == before


def test_update_every_as_fraction():
    sel = ForgettingSelector(100, update_every=0.1, num_epochs=300)
    assert sel.update_every == 30 and sel.update_epochs == [30, 60, 90, 120, 150]
    sel = ForgettingSelector(100, update_every=0.25, num_epochs=10, max_updates=5)
    assert sel.update_every == 2  # round(2.5) == 2
    assert sel.update_epochs == [2, 4, 6, 8]  # only epochs < num_epochs are listed
    sel = ForgettingSelector(100, update_every=0.01, num_epochs=10)
    assert sel.update_every == 1  # max(1, round(0.1))
    sel.set_epoch(1)
    assert sel.num_updates == 1
    assert ForgettingSelector(100, update_every=30.0).update_every == 30
    with pytest.raises(ValueError, match="num_epochs"):
        ForgettingSelector(100, update_every=0.1)


# --------------------------------------------------------------------------------------------------
# record: correctness, mixup, duplicates, validation
# --------------------------------------------------------------------------------------------------


def test_mixup_soft_targets_judged_by_argmax():
    sel = ForgettingSelector(4, initial_remove_fraction=0.0, swap_fraction=0.0)
    logits = torch.zeros(4, 6)
    logits[:, 2] = 5.0  # the model predicts class 2 for all
    soft = torch.zeros(4, 6)
    soft[0, 2], soft[0, 5] = 0.7, 0.3  # larger mixing weight on class 2: correct
    soft[1, 2], soft[1, 5] = 0.3, 0.7  # larger weight on class 5: incorrect
    soft[2] = 0.02  # label smoothing + mixup: still the argmax
    soft[2, 2], soft[2, 4] = 0.55, 0.37
    soft[3] = 0.1
    soft[3, 0] = 0.5  # argmax class 0: incorrect
    sel.record(torch.arange(4), logits, soft)
    assert sel.last_correct.tolist() == [True, False, True, False]
    # hard targets
    sel.record(torch.arange(4), logits, torch.tensor([2, 2, 1, 2]))
    assert sel.last_correct.tolist() == [True, True, False, True]
    assert sel.forgetting_counts.tolist() == [0, 0, 1, 0]


def test_duplicate_indices_count_once_with_first_outcome():
    sel = ForgettingSelector(5, initial_remove_fraction=0.0, swap_fraction=0.0)
    present(sel, [1, 3, 1, 1], [True, False, False, False])
    assert sel.presentations.tolist() == [0, 1, 0, 1, 0]
    assert sel.last_correct.tolist() == [False, True, False, False, False]
    present(sel, [1, 1], [False, True])
    assert sel.forgetting_counts.tolist() == [0, 1, 0, 0, 0]


def test_record_accepts_empty_batch_and_returns_none():
    sel = ForgettingSelector(5, initial_remove_fraction=0.0, swap_fraction=0.0)
    before = sel.digest()
    assert sel.record(torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) is None
    assert sel.digest() == before
    assert present(sel, [0], [True]) is None


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.tensor([0, 10]), torch.zeros(2, 3), torch.tensor([0, 1])), "indices must lie in"),
        ((torch.tensor([-1, 0]), torch.zeros(2, 3), torch.tensor([0, 1])), "indices must lie in"),
        ((torch.tensor([0, 1]), torch.zeros(3, 3), torch.tensor([0, 1, 2])), "same batch size"),
        ((torch.tensor([0, 1]), torch.zeros(2, 3), torch.tensor([0, 1, 2])), "same batch size"),
        ((torch.tensor([[0, 1]]), torch.zeros(2, 3), torch.tensor([0, 1])), r"indices must have shape \(B,\)"),
        ((torch.tensor([0.0, 1.0]), torch.zeros(2, 3), torch.tensor([0, 1])), "integer tensor"),
        ((torch.tensor([0, 1]), torch.zeros(2, 3, 1), torch.tensor([0, 1])), r"logits must have shape \(B, K\)"),
        ((torch.tensor([0, 1]), torch.zeros(2, 3), torch.zeros(2, 4)), "soft targets must have shape"),
        ((torch.tensor([0, 1]), torch.zeros(2, 3), torch.zeros(2, 3, 1)), "targets must have shape"),
        ((torch.tensor([0, 1]), torch.zeros(2, 3), torch.tensor([0.0, 1.0])), "integer class indices"),
        ((torch.tensor([0, 1]), torch.zeros(2, 3), torch.tensor([0, 3])), r"class indices in \[0, K\)"),
    ],
)
def test_record_bad_input(args, match):
    sel = ForgettingSelector(10)
    before = sel.digest()
    with pytest.raises(ValueError, match=match):
        sel.record(*args)
    assert sel.digest() == before


def test_record_bad_extra_shapes():
    sel = ForgettingSelector(10)
    idx, logits, targets = fake_batch([0, 1], [True, True])
    with pytest.raises(ValueError, match="tie_break must have shape"):
        sel.record(idx, logits, targets, tie_break=torch.zeros(3))
    with pytest.raises(ValueError, match="loss must have shape"):
        sel.record(idx, logits, targets, loss=torch.zeros(2, 1))
    with pytest.raises(TypeError, match="logits"):
        sel.record(idx, [[0.0, 1.0]], targets)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_examples=0), "num_examples"),
        (dict(num_examples=10.5), "num_examples"),
        (dict(num_examples=100, initial_remove_fraction=1.0), "initial_remove_fraction"),
        (dict(num_examples=100, initial_remove_fraction=-0.1), "initial_remove_fraction"),
        (dict(num_examples=100, swap_fraction=1.2), "swap_fraction"),
        (dict(num_examples=100, initial_remove_fraction=0.1, swap_fraction=0.2), "larger than the removed pool"),
        (dict(num_examples=100, initial_remove_fraction=0.7, swap_fraction=0.5), "larger than the active set"),
        (dict(num_examples=1, initial_remove_fraction=0.6, swap_fraction=0.0), "empty active set"),
        (dict(num_examples=100, update_every=0), "update_every"),
        (dict(num_examples=100, update_every=-3), "update_every"),
        (dict(num_examples=100, update_every=2.5), "update_every"),
        (dict(num_examples=100, max_updates=-1), "max_updates"),
        (dict(num_examples=100, num_epochs=0), "num_epochs"),
        (dict(num_examples=100, seed=1.5), "seed"),
    ],
)
@pytest.mark.parametrize("cls", [ForgettingSelector, RandomSelector])
def test_constructor_bad_input(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_bad_epoch_and_sampler_args():
    sel = ForgettingSelector(10)
    with pytest.raises(ValueError, match="epoch"):
        sel.set_epoch(-1)
    with pytest.raises(ValueError, match="num_replicas"):
        ActiveSubsetSampler(sel, num_replicas=0, rank=0)
    with pytest.raises(ValueError, match="rank"):
        ActiveSubsetSampler(sel, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="epoch"):
        ActiveSubsetSampler(sel).set_epoch(-2)


# --------------------------------------------------------------------------------------------------
# state, resume, digest
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ForgettingSelector, RandomSelector, LossSelector])
def test_resume_equals_uninterrupted_run(cls, tmp_path):
    n, epochs, half = 300, 10, 5

    def make():
        if cls is LossSelector:
            return LossSelector(n, prune_ratio=0.5, num_epochs=epochs, anneal_fraction=0.2, seed=3)
        return cls(n, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=2, max_updates=3, seed=3)

    straight = make()
    straight_sampler = ActiveSubsetSampler(straight, seed=9)
    orders_a = run_epochs(straight, straight_sampler, 0, epochs, with_tie_break=True)

    first = make()
    first_sampler = ActiveSubsetSampler(first, seed=9)
    orders_b = run_epochs(first, first_sampler, 0, half, with_tie_break=True)
    path = tmp_path / "ckpt.pt"
    torch.save({"selector": first.state_dict(), "sampler": first_sampler.state_dict()}, path)
    del first, first_sampler
    ckpt = torch.load(path, weights_only=True)
    resumed = make()
    resumed_sampler = ActiveSubsetSampler(resumed, seed=9)
    resumed.load_state_dict(ckpt["selector"])
    resumed_sampler.load_state_dict(ckpt["sampler"])
    assert resumed_sampler.epoch == half - 1
    orders_b += run_epochs(resumed, resumed_sampler, half, epochs, with_tie_break=True)

    assert orders_a == orders_b
    assert resumed.digest() == straight.digest()
    assert torch.equal(resumed.active_indices, straight.active_indices)
    assert torch.equal(resumed.generator.get_state(), straight.generator.get_state())
    if cls is not LossSelector:
        assert resumed.history == straight.history and len(straight.history) == 3
    # a fresh (not resumed) selector would have decided differently: the test can fail
    fresh = make()
    fresh_sampler = ActiveSubsetSampler(fresh, seed=9)
    assert run_epochs(fresh, fresh_sampler, half, epochs, with_tie_break=True) != orders_a[half:]


def test_state_dict_contents_and_mismatch():
    sel = ForgettingSelector(50, update_every=1, seed=0)
    present(sel, sel.active_indices, torch.ones(40, dtype=torch.bool))
    sel.set_epoch(1)
    state = sel.state_dict()

    def check(obj):
        if isinstance(obj, dict):
            assert all(isinstance(k, str) for k in obj)
            for v in obj.values():
                check(v)
        elif isinstance(obj, list):
            for v in obj:
                check(v)
        else:
            assert isinstance(obj, (torch.Tensor, int, float, str, bool)), type(obj)

    check(state)
    copy = ForgettingSelector(50, update_every=1, seed=0)
    assert copy.digest() != sel.digest()
    copy.load_state_dict(state)
    assert copy.digest() == sel.digest() and copy.num_updates == 1 and copy.last_epoch == 1
    with pytest.raises(ValueError, match="seed"):
        ForgettingSelector(50, update_every=1, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples"):
        ForgettingSelector(51, update_every=1, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="RandomSelector"):
        RandomSelector(50, update_every=1, seed=0).load_state_dict(state)
    sampler = ActiveSubsetSampler(sel, seed=1)
    with pytest.raises(ValueError, match="seed"):
        ActiveSubsetSampler(sel, seed=2).load_state_dict(sampler.state_dict())


def test_digest_tracks_sets_and_statistics():
    a, b = ForgettingSelector(100, seed=0), ForgettingSelector(100, seed=0)
    assert a.digest() == b.digest() and len(a.digest()) == 16
    present(a, [a.active_indices[0]], [True])
    assert a.digest() != b.digest()
    present(b, [b.active_indices[0]], [True])
    assert a.digest() == b.digest()


# --------------------------------------------------------------------------------------------------
# LossSelector (InfoBatch-style)
# --------------------------------------------------------------------------------------------------


def test_loss_selector_prunes_low_loss_and_rescales():
    n = 4000
    sel = LossSelector(n, prune_ratio=0.5, num_epochs=8, anneal_fraction=0.25, seed=0)
    assert sel.anneal_start_epoch == 6
    sel.set_epoch(0)
    assert sel.num_active == n  # nothing recorded yet: everything kept
    seen = torch.arange(3000)  # examples 3000.. have no recorded loss
    loss = torch.where(seen % 2 == 0, 0.1, 1.0) + seen.float() * 1e-6  # mean ~0.55: evens are low
    idx, logits, targets = fake_batch(seen, torch.ones(3000, dtype=torch.bool))
    out = sel.record(idx, logits, targets, loss=loss)
    assert torch.allclose(out, loss.mean())  # weights are all 1 at epoch 0
    sel.set_epoch(1)
    active = set(sel.active_indices.tolist())
    low, high = set(range(0, 3000, 2)), set(range(1, 3000, 2))
    assert high <= active and set(range(3000, n)) <= active
    dropped = low - active
    assert 600 < len(dropped) < 900  # each low-loss example dropped with probability 0.5
    assert sel.num_active + sel.removed_indices.numel() == n and sets_partition(sel)
    kept_low = torch.tensor(sorted(low & active))
    assert torch.all(sel.weights[kept_low] == 2.0)
    assert torch.all(sel.weights[torch.tensor(sorted(high))] == 1.0)
    assert torch.all(sel.weights[3000:] == 1.0)
    # reweighted loss, with grad
    batch = torch.tensor([kept_low[0].item(), 1, 3001])
    per = torch.tensor([0.2, 0.4, 0.6], requires_grad=True)
    out = sel.record(*fake_batch(batch, [True, True, True]), loss=per)
    assert torch.allclose(out, torch.tensor((0.2 * 2 + 0.4 + 0.6) / 3))
    out.backward()
    assert torch.allclose(per.grad, torch.tensor([2.0, 1.0, 1.0]) / 3)
    assert sel.last_loss[3001] == pytest.approx(0.6) and bool(sel.has_loss[3001])
    # set_epoch idempotent: same epoch, same draw
    snapshot = sel.active_indices
    sel.set_epoch(1)
    assert torch.equal(sel.active_indices, snapshot)
    # a new epoch draws again
    sel.set_epoch(2)
    assert not torch.equal(sel.active_indices, snapshot)
    # annealing: full data, weight 1
    for e in (6, 7):
        sel.set_epoch(e)
        assert sel.num_active == n and torch.all(sel.weights == 1.0)


def test_loss_selector_sampler_follows_active_set_size():
    sel = LossSelector(200, prune_ratio=0.5, num_epochs=4, seed=0)
    sampler = ActiveSubsetSampler(sel, seed=0)
    sampler.set_epoch(0)
    assert len(sampler) == 200
    present(sel, torch.arange(200), torch.ones(200, dtype=torch.bool), loss=torch.linspace(0, 1, 200))
    sampler.set_epoch(1)
    assert len(sampler) == sel.num_active < 200
    assert sorted(sampler) == sel.active_indices.tolist()


def test_loss_selector_bad_input():
    with pytest.raises(ValueError, match="num_epochs"):
        LossSelector(10)
    with pytest.raises(ValueError, match="num_epochs"):
        LossSelector(10, num_epochs=0)
    with pytest.raises(ValueError, match="prune_ratio"):
        LossSelector(10, prune_ratio=1.0, num_epochs=5)
    with pytest.raises(ValueError, match="anneal_fraction"):
        LossSelector(10, num_epochs=5, anneal_fraction=-0.5)
    with pytest.raises(ValueError, match="num_examples"):
        LossSelector(0, num_epochs=5)
    sel = LossSelector(10, num_epochs=5)
    with pytest.raises(ValueError, match="requires loss"):
        present(sel, [0, 1], [True, True])
    with pytest.raises(ValueError, match="loss must have shape"):
        present(sel, [0, 1], [True, True], loss=torch.zeros(3))


# --------------------------------------------------------------------------------------------------
# sampler and dataset wrapper
# --------------------------------------------------------------------------------------------------


def test_sampler_partitions_active_set_like_distributed_sampler():
    sel = ForgettingSelector(103, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=1, seed=0)
    assert sel.num_active == 82
    for world in (1, 2, 3, 4):
        samplers = [ActiveSubsetSampler(sel, num_replicas=world, rank=r, seed=5) for r in range(world)]
        for s in samplers:
            s.set_epoch(0)
        shards = [list(s) for s in samplers]
        assert len({len(sh) for sh in shards}) == 1 and len(samplers[0]) == len(shards[0])
        assert len(shards[0]) == -(-82 // world)
        flat = [i for sh in shards for i in sh]
        assert set(flat) == set(sel.active_indices.tolist())
        if 82 % world == 0:
            assert len(flat) == len(set(flat))  # disjoint
        else:
            assert len(flat) - len(set(flat)) == (-82) % world  # only the padding repeats
    dropped = [ActiveSubsetSampler(sel, num_replicas=4, rank=r, drop_last=True) for r in range(4)]
    flat = [i for s in dropped for i in s]
    assert len(flat) == 80 == len(set(flat))
    # order: fixed per epoch, differs between epochs, ascending without shuffle
    s = ActiveSubsetSampler(sel, seed=5)
    s.set_epoch(0)
    assert list(s) == list(s)
    e0 = list(s)
    present(sel, sel.active_indices, torch.ones(82, dtype=torch.bool))
    s.set_epoch(1)  # also applies the selector's update
    assert sel.num_updates == 1 and sorted(s) == sel.active_indices.tolist() and list(s) != e0
    plain = ActiveSubsetSampler(sel, shuffle=False)
    assert list(plain) == sel.active_indices.tolist()


def test_sampler_rereads_selector_after_load_state_dict():
    sel = ForgettingSelector(60, update_every=1, seed=0)
    s = ActiveSubsetSampler(sel)
    s.set_epoch(0)
    other = ForgettingSelector(60, update_every=1, seed=0)
    present(other, other.active_indices, torch.ones(48, dtype=torch.bool))
    other.set_epoch(1)
    sel.load_state_dict(other.state_dict())
    assert sorted(s) == other.active_indices.tolist()


def test_selector_interface_version_and_index_sets():
    assert all(issubclass(c, ExampleSelector) for c in (ForgettingSelector, RandomSelector, LossSelector))
    assert LossSelector.needs_loss and not ForgettingSelector.needs_loss
    sel = ForgettingSelector(60, update_every=1, seed=0)
    version = sel.active_set_version
    active, removed = sel.index_sets()
    assert sel.index_sets()[0] is active and sel.index_sets()[1] is removed  # cached, not copied
    assert sel.active_indices is not active and torch.equal(sel.active_indices, active)
    assert torch.equal(sel.active_mask.nonzero().flatten(), active)
    sel.set_epoch(0)  # no update due at epoch 0: same sets, same version
    assert sel.active_set_version == version and sel.index_sets()[0] is active
    present(sel, active, torch.ones(48, dtype=torch.bool))
    sel.set_epoch(1)  # an update: a new version and new cached tensors
    assert sel.active_set_version != version and not torch.equal(sel.index_sets()[0], active)
    with pytest.raises(AttributeError):
        sel.active_set_version = 0


class _Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 7

    def __getitem__(self, i):
        return torch.full((2,), float(i)), i % 3


def test_indexed_dataset_and_loader():
    ds = IndexedDataset(_Toy())
    assert len(ds) == 7
    image, target, index = ds[4]
    assert torch.equal(image, torch.full((2,), 4.0)) and target == 1 and index == 4
    sel = ForgettingSelector(7, initial_remove_fraction=0.3, swap_fraction=0.0)
    sampler = ActiveSubsetSampler(sel)
    sampler.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler)
    seen = []
    for images, targets, indices in loader:
        assert torch.equal(images[:, 0].long(), indices)
        logits = torch.nn.functional.one_hot(targets, 3).float()
        sel.record(indices, logits, targets)
        seen += indices.tolist()
    assert sorted(seen) == sel.active_indices.tolist()
    assert torch.all(sel.presentations[sel.active_indices] == 1)


def test_benchmark_record_runs():
    from trilevel.bench.selector_speed import benchmark_record

    threads = torch.get_num_threads()
    out = benchmark_record(num_examples=5000, batch_size=32, repeats=5, num_threads=1)
    assert out["median_us"] > 0 and out["repeats"] == 5 and out["batch_size"] == 32 and out["threads"] == 1
    assert torch.get_num_threads() == threads


# --------------------------------------------------------------------------------------------------
# distributed: two gloo processes with different local observations
# --------------------------------------------------------------------------------------------------

DIST_N, DIST_EPOCHS, DIST_CALLS = 103, 7, 5


def _chunks(order):
    """Split a shard into DIST_CALLS batches of unequal sizes (one empty).

    The sizes are the same on every rank at each call, as ``record`` requires under DDP (the
    sampler pads every rank's shard to the same length).
    """
    n = len(order)
    cuts = [0, n // 2, n // 2, n // 2 + 3, n - 1, n]
    return [order[cuts[i] : cuts[i + 1]] for i in range(DIST_CALLS)]


def _dist_valid(rank, epoch, call):
    """Rank 1 marks one batch per epoch as invalid (e.g. a non-finite loss): its rows must be ignored."""
    return not (rank == 1 and call == 3 and epoch % 2 == 1)


def _dist_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = {}
        for name in ("forgetting", "loss"):
            if name == "forgetting":
                sel = ForgettingSelector(
                    DIST_N, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=2, max_updates=3, seed=0
                )
            else:
                sel = LossSelector(DIST_N, prune_ratio=0.5, num_epochs=DIST_EPOCHS, seed=0)
            sampler = ActiveSubsetSampler(sel, shuffle=True, seed=1)  # world size / rank from dist
            calls, shards, actives = [], [], []
            for epoch in range(DIST_EPOCHS):
                sampler.set_epoch(epoch)
                order = list(sampler)
                shards.append(order)
                actives.append(sel.active_indices.tolist())
                table = fake_correct(DIST_N, epoch, seed=rank + 1)  # each rank's own "model"
                for k, chunk in enumerate(_chunks(order)):
                    idx = torch.tensor(chunk, dtype=torch.long)
                    correct = table[idx]
                    loss = (1.0 - correct.float()) + 0.01 * idx.float() + 0.1 * rank
                    tie = fake_scores(DIST_N, epoch)[idx] + rank
                    _, logits, targets = fake_batch(idx, correct)
                    valid = _dist_valid(rank, epoch, k)
                    sel.record(idx, logits, targets, loss=loss, tie_break=tie, valid=torch.tensor(valid))
                    calls.append((idx.tolist(), correct.tolist(), loss.tolist(), tie.tolist(), valid))
            # duplicates within one batch and across the ranks, with different outcomes: the first
            # occurrence in rank order wins (rank 0's rows first)
            idx = torch.tensor([7, 8, 7, 9] if rank == 0 else [8, 7, 10, 8])
            correct = torch.tensor([True, False, False, True] if rank == 0 else [False, True, True, False])
            loss, tie = torch.arange(4.0) + 10 * rank, torch.arange(4.0) - 10 * rank
            _, logits, targets = fake_batch(idx, correct)
            sel.record(idx, logits, targets, loss=loss, tie_break=tie)
            calls.append((idx.tolist(), correct.tolist(), loss.tolist(), tie.tolist(), True))
            # an index out of range on rank 1 only: the gathered rows are on the CPU (gloo), so every
            # rank raises the same ValueError, before any statistic changes
            before = sel.digest()
            bad = torch.tensor([0, DIST_N + 5 if rank == 1 else 1])
            _, logits, targets = fake_batch(torch.tensor([0, 1]), [True, True])
            try:
                sel.record(bad, logits, targets, loss=torch.zeros(2), tie_break=torch.zeros(2))
                error = None
            except ValueError as exc:
                error = str(exc)
            assert sel.digest() == before
            result[name] = {
                "error": error,
                "digest": sel.digest(),
                "calls": calls,
                "shards": shards,
                "actives": actives,
                "len": len(sampler),
            }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_identical_state(tmp_path):
    world = 2
    init_file = tmp_path / "init"
    mp.spawn(_dist_worker, args=(world, str(init_file), str(tmp_path)), nprocs=world, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for name in ("forgetting", "loss"):
        r0, r1 = res[0][name], res[1][name]
        assert r0["digest"] == r1["digest"], name
        assert r0["actives"] == r1["actives"]
        # local observations differed (different shards and correctness), batch sizes did not
        assert [c[0] for c in r0["calls"]] != [c[0] for c in r1["calls"]]
        assert [len(c[0]) for c in r0["calls"]] == [len(c[0]) for c in r1["calls"]]
        assert any(not c[4] for c in r1["calls"]) and all(c[4] for c in r0["calls"])
        for r in (r0, r1):
            assert r["error"] is not None and "indices must lie in" in r["error"]
        for epoch in range(DIST_EPOCHS):
            a, b = r0["shards"][epoch], r1["shards"][epoch]
            active = r0["actives"][epoch]
            assert len(a) == len(b)
            assert set(a) | set(b) == set(active)
            if len(active) % world == 0:
                assert not set(a) & set(b)
        # replaying the union of the observations in one process gives the same state
        if name == "forgetting":
            ref = ForgettingSelector(
                DIST_N, initial_remove_fraction=0.2, swap_fraction=0.05, update_every=2, max_updates=3, seed=0
            )
        else:
            ref = LossSelector(DIST_N, prune_ratio=0.5, num_epochs=DIST_EPOCHS, seed=0)
        for epoch in range(DIST_EPOCHS + 1):
            ref.set_epoch(min(epoch, DIST_EPOCHS - 1))
            for k in range(DIST_CALLS if epoch < DIST_EPOCHS else 1):
                # the union of the valid ranks' rows, in rank order (an invalid batch is not recorded)
                cs = [c for c in (r0["calls"][epoch * DIST_CALLS + k], r1["calls"][epoch * DIST_CALLS + k]) if c[4]]
                idx = torch.tensor([i for c in cs for i in c[0]], dtype=torch.long)
                correct = torch.tensor([v for c in cs for v in c[1]], dtype=torch.bool)
                _, logits, targets = fake_batch(idx, correct)
                ref.record(
                    idx,
                    logits,
                    targets,
                    loss=torch.tensor([v for c in cs for v in c[2]], dtype=torch.float32),
                    tie_break=torch.tensor([v for c in cs for v in c[3]], dtype=torch.float32),
                )
        assert ref.digest() == r0["digest"], name
    assert res[0]["forgetting"]["digest"] != res[0]["loss"]["digest"]
