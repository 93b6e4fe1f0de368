"""Optional integrations of :class:`trilevel.TriLevel` with training frameworks.

Each submodule needs its framework as an extra and is never imported by ``import trilevel``:

* :mod:`trilevel.integrations.lightning`: :class:`~trilevel.integrations.lightning.TriLevelCallback`,
  a PyTorch Lightning ``Callback`` (``pip install trilevel[lightning]``).
"""
