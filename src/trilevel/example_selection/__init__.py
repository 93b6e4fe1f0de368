"""Example-level data reduction: which training examples to present each epoch.

This package implements the outer layer of the onion of Kong et al., "Peeling the Onion: Hierarchical
Reduction of Data Redundancy for Efficient Vision Transformer Training", AAAI 2023 (arXiv 2211.10801),
method section, example-level sparsity (the outermost level of the "onion"), plus two baselines
behind the same interface:

* :class:`ForgettingSelector` - the paper's selector. A seeded random fraction of the training set is
  moved to the *removed pool* before training; the rest is the *active set*. While training, every
  presentation of an example is recorded as correct or incorrect; a *forgetting event* (Toneva et al.,
  "An Empirical Study of Example Forgetting during Deep Neural Network Learning", ICLR 2019) is a
  transition from correct to incorrect between two consecutive presentations. Every ``update_every``
  epochs the active examples with the fewest forgetting events are moved to the removed pool and the
  same number of examples, drawn at random from the removed pool, come back, so the active set keeps
  its size (the example *keep ratio* ``1 - initial_remove_fraction`` is constant).
* :class:`RandomSelector` - same sizes and schedule, random swaps (an ablation baseline).
* :class:`LossSelector` - InfoBatch-style soft pruning (Qin et al., "InfoBatch: Lossless Training
  Speed Up by Unbiased Dynamic Data Pruning", ICLR 2024): each epoch, low-loss examples are dropped
  at random and the kept ones are up-weighted so that the expected gradient is unchanged.

The selectors are driven by :class:`ActiveSubsetSampler` (a ``DistributedSampler`` over the current
active set) and fed through :class:`IndexedDataset` (so that a batch carries its example indices)::

    selector = ForgettingSelector(num_examples=len(train_set))
    sampler = ActiveSubsetSampler(selector, num_replicas=world_size, rank=rank)
    loader = DataLoader(IndexedDataset(train_set), batch_size=256, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                    # applies a due selector update first
        for images, targets, indices in loader:
            logits = model(images)
            selector.record(indices, logits, targets)

Statistics are tensors of size ``num_examples`` on the selector's device (``device=`` or
:meth:`~ExampleSelector.to`; the CPU by default), updated with fixed-shape vectorised scatters: no
per-example Python loop and no host-device synchronisation in :meth:`~ExampleSelector.record` (put the
selector on the model's device: ``ForgettingSelector(n, device="cuda")``). Random draws happen on a
seeded CPU generator at epoch boundaries, so the device changes no decision. Under
``torch.distributed``, :meth:`~ExampleSelector.record` all-gathers the observations of every rank (one
fixed-shape collective; every rank passes the same batch size) so that all ranks hold identical,
global statistics and therefore make identical decisions (the authors' released code seeds each rank
differently and never combines the ranks' statistics).

Modules: :mod:`~trilevel.example_selection.base` (:class:`ExampleSelector`, the interface every
selector implements), :mod:`~trilevel.example_selection.forgetting`,
:mod:`~trilevel.example_selection.infobatch`, :mod:`~trilevel.example_selection.sampler`,
and the helpers (the speed benchmark of :meth:`ExampleSelector.record` is :mod:`trilevel.bench.selector_speed`)
:mod:`~trilevel.example_selection.collective` (cross-rank gathering),
:mod:`~trilevel.example_selection.syncfree` (sync-free device helpers: duplicate handling with a dummy
slot, non-blocking copies) and :mod:`~trilevel.example_selection.validation` (argument checks).
"""

from __future__ import annotations

from .base import ExampleSelector
from .forgetting import ForgettingSelector, RandomSelector, initial_active_count
from .mixing import dominant_indices
from .infobatch import LossSelector
from .sampler import ActiveSubsetSampler, IndexedDataset

__all__ = [
    "ExampleSelector",
    "ForgettingSelector",
    "RandomSelector",
    "LossSelector",
    "ActiveSubsetSampler",
    "IndexedDataset",
    "initial_active_count",
    "dominant_indices",
]
