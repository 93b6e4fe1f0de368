"""Fine-tuning from pretrained weights: a timm model created and loaded by timm's own loader.

:func:`create_from_weights` builds the run's model with ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=...), **kwargs)``, so the weights go through timm's
``load_pretrained`` (``timm/models/_builder.py``) and the family's ``checkpoint_filter_fn``:

* ViT / DeiT (``timm.models.vision_transformer``): absolute position embeddings resampled to the
  new grid (``resample_abs_pos_embed``, bicubic), the patch embedding resampled to a new patch size
  (``resample_patch_embed``, FlexiViT), DeiT-III layer-scale names mapped.
* EVA-02 (``timm.models.eva``): the same position and patch embedding resampling; rotary tables
  are not loaded (they are rebuilt from the model's own grid).
* Swin (``timm.models.swin_transformer``): relative position bias tables resized when a stage's
  window changes (``resize_rel_pos_bias_table``; a different ``window_size``, or an ``img_size``
  whose feature maps are smaller than the window); the original Microsoft layout is renamed.
* Every family: the input convolution adapted to ``in_chans`` (``adapt_input_conv``: summed to one
  channel, or repeated and rescaled), and the classifier dropped (left at its random
  initialisation) when the run's number of classes differs from the file's.

What timm does not check, this module does: a width, depth or head layout that does not fit is a
``ValueError`` naming the tensors and both shapes (timm raises a ``RuntimeError``, or, once it has
dropped the classifier and loads with ``strict=False``, silently leaves missing blocks random).
Afterwards the model's tensors are compared with the file's into a :class:`LoadReport`. Reading the
file itself (which layouts, which weights of a checkpoint) is :mod:`trilevel.training.weight_files`.

Fine-tuning a model pretrained at one resolution at a higher one, with resampled position
embeddings, is the recipe of DeiT (Touvron et al., "Training data-efficient image transformers &
distillation through attention", ICML 2021, section "Fine-tuning at different resolution").
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .weight_files import read_state_dict, short_list

__all__ = ["LoadReport", "create_from_weights", "read_state_dict"]

logger = logging.getLogger("trilevel.training")

# timm.create_model arguments that change how the pretrained tensors are adapted (resampled,
# re-initialised), not which tensors the architecture has.
_ADAPTING_KWARGS = (
    "num_classes", "in_chans", "img_size", "patch_size", "window_size", "dynamic_img_size",
    "dynamic_img_pad", "strict_img_size", "drop_rate", "pos_drop_rate", "patch_drop_rate",
    "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "ref_feat_shape",
)
_LISTED = 6  # keys named per category in messages


@dataclass
class LoadReport:
    """How the pretrained tensors ended up in the model (every model key is in one list).

    Attributes:
        source: The weights file (as given), ``"<file> (ema)"`` for EMA weights,
            ``"hub:<hf_hub_id or url>"`` for timm's hub weights, or ``"none"`` (random init).
        loaded: Model keys whose tensor equals the file's (same key and shape, identical values;
            or renamed by timm's filter from a foreign layout).
        resampled: Model keys present in the file that timm adapted to the model: a different
            shape (position embeddings, patch embedding for another patch size or ``in_chans``,
            Swin relative position bias tables) or values changed by the family's filter.
        reinitialized: Model keys left at their random initialisation (the classifier when the
            number of classes differs from the file's).
        unused: File keys the model does not have (e.g. a DeiT distillation head, or the
            original names of a layout timm renamed).
        by_value: True when the lists come from comparing tensor values with the file's; False
            for hub weights, which timm downloads and loads itself: there the lists compare
            shapes with the pretrained architecture.
    """

    source: str
    loaded: List[str] = field(default_factory=list)
    resampled: List[str] = field(default_factory=list)
    reinitialized: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)
    by_value: bool = True

    def summary(self) -> str:
        """One log line: the source, the counts, and the resampled, re-initialised and unused keys."""
        parts = [f"init from {self.source}: {len(self.loaded)} tensors loaded"]
        for name, keys in (("resampled", self.resampled), ("re-initialised", self.reinitialized),
                           ("unused", self.unused)):
            if keys:
                parts.append(f"{len(keys)} {name} ({short_list(keys)})")
            else:
                parts.append(f"0 {name}")
        line = ", ".join(parts)
        return line if self.by_value else line + " [hub weights: compared by shape]"


# --------------------------------------------------------------------------------------------
# Models and timm's filters


def _registry_cfg(model_name: str) -> Any:
    """timm's pretrained cfg for ``model_name`` (its default tag), or timm's defaults."""
    from timm.models import PretrainedCfg, get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model_name)
    except (RuntimeError, ValueError, KeyError):
        cfg = None
    return cfg if cfg is not None else PretrainedCfg()


def _classifier_keys(cfg: Any) -> List[str]:
    names = cfg.classifier
    if not names:
        return []
    names = (names,) if isinstance(names, str) else tuple(names)
    return [f"{n}.{p}" for n in names for p in ("weight", "bias")]


def _reference_model(model_name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """The model of ``kwargs`` without weights (on the meta device when timm allows: no memory, no init)."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(model_name, pretrained=False, **kwargs)
    except (TypeError, AssertionError):
        raise
    except Exception:  # an __init__ that reads tensor values: build it for real
        return timm.create_model(model_name, pretrained=False, **kwargs)


def _replay_filter(sd: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """What the family's ``checkpoint_filter_fn`` makes of ``sd`` for ``model`` (``sd`` if none or it fails).

    The filter is timm's own, found in the module of the model's class (ViT, EVA, Swin); DeiT-III
    layer-scale renaming is enabled as ``timm.models.deit`` does.
    """
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return dict(sd)
    extra = {}
    try:
        if "adapt_layer_scale" in inspect.signature(fn).parameters:
            extra["adapt_layer_scale"] = True
    except (TypeError, ValueError):
        pass
    timm_logger = logging.getLogger("timm")
    level = timm_logger.level
    timm_logger.setLevel(logging.WARNING)  # timm already logged its resampling once
    try:
        return dict(fn(dict(sd), model, **extra))
    except Exception:
        return dict(sd)
    finally:
        timm_logger.setLevel(level)


def _shape(t: Any) -> Tuple[int, ...]:
    return tuple(t.shape)


def _layout(keys: Sequence[str], shapes: Mapping[str, Tuple[int, ...]], first_conv: Optional[str]) -> str:
    """``embed_dim E, depth D`` (ViT/EVA) or ``embed_dim E, depths (a, b)`` (Swin) read off tensor names and shapes."""
    parts = []
    w = shapes.get(f"{first_conv}.weight") if first_conv else None
    if w:
        parts.append(f"embed_dim {w[0]}")
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    stages: Dict[int, set] = {}
    for k in keys:
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k) or re.match(r"layers_(\d+)\.blocks\.(\d+)\.", k)
        if m:
            stages.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if blocks:
        parts.append(f"depth {max(blocks) + 1}")
    elif stages:
        n = range(max(stages) + 1)
        parts.append(f"depths {tuple(max(stages.get(i, {-1})) + 1 for i in n)}")
        tables = [shapes.get(f"layers.{i}.blocks.0.attn.relative_position_bias_table") for i in n]
        if all(t and len(t) == 2 for t in tables):  # Swin: one bias column per head
            parts.append(f"num_heads {tuple(t[1] for t in tables)}")
    return ", ".join(parts) or "an unrecognised layout"


def _misfit_message(source: str, model_name: str, shapes: Mapping[str, Tuple[int, ...]],
                    provided: Mapping[str, torch.Tensor], file_keys: Sequence[str],
                    file_shapes: Mapping[str, Tuple[int, ...]], skip: Sequence[str],
                    first_conv: Optional[str]) -> Optional[str]:
    """The ValueError text for tensors that do not fit (None when every tensor fits).

    Args:
        shapes: The model's tensor shapes by key.
        provided: The file's tensors after timm's filter (what timm hands to ``load_state_dict``).
        skip: Keys timm leaves out on purpose (a classifier it drops).
    """
    conv = f"{first_conv}.weight" if first_conv else None
    differ, lacking, extra = [], [], []
    for k, s in shapes.items():
        if k in skip:
            continue
        if k not in provided:
            lacking.append(k)
            continue
        p = _shape(provided[k])
        if p != s and not (k == conv and len(p) == len(s) == 4 and p[0] == s[0] and p[2:] == s[2:]):
            differ.append(f"{k}: file {p} vs model {s}")  # an in_chans change is adapted by timm
    extra = [k for k in provided if k not in shapes and k not in skip]
    if not (differ or lacking or extra):
        return None
    found = []
    if differ:
        found.append(f"{len(differ)} tensor(s) differ in shape ({'; '.join(differ[:_LISTED])}"
                     + (f"; ... {len(differ) - _LISTED} more" if len(differ) > _LISTED else "") + ")")
    if lacking:
        found.append(f"the file lacks {len(lacking)} tensor(s) of the model ({short_list(lacking, _LISTED)})")
    if extra:
        found.append(f"the model lacks {len(extra)} tensor(s) of the file ({short_list(extra, _LISTED)})")
    return (
        f"the weights in {source} do not fit {model_name} as configured: {', '.join(found)}. The file has "
        f"{_layout(file_keys, file_shapes, first_conv)}; the model has {_layout(list(shapes), shapes, first_conv)}. "
        "Set --embed-dim/--depth/--num-heads (for Swin also the per-stage depths and heads) to the pretrained "
        "model's, or leave them unset to use the model's defaults"
    )


def _first_line(exc: BaseException, limit: int = 300) -> str:
    return " ".join(str(exc).split())[:limit]


# --------------------------------------------------------------------------------------------
# Creating the model


def create_from_weights(model_name: str, kwargs: Mapping[str, Any], init_from: Optional[str | os.PathLike],
                        pretrained: bool, *, ema: bool = False) -> Tuple[nn.Module, LoadReport]:
    """Create a timm model and initialise it from pretrained weights, loaded by timm.

    With ``init_from`` (a local file): ``timm.create_model(model_name, pretrained=True,
    pretrained_cfg_overlay=dict(file=..., num_classes=<the file's>, input_size=(<the file's
    channels>, H, W), classifier=..., ...), **kwargs)``. timm then runs the family's
    ``checkpoint_filter_fn`` and ``load_pretrained``: position embeddings resampled to
    ``img_size`` (e.g. a 14x14 grid of 224 px / 16 px patches to 24x24 at 384 px, DeiT's
    fine-tuning at higher resolution), the patch embedding to ``patch_size``, Swin's relative
    position bias tables to the new windows, the input convolution to ``in_chans``, and the
    classifier dropped when ``num_classes`` differs from the file's (read off the classifier's
    weight, ``[num_classes, width]``). A trilevel checkpoint or a ``{"state_dict"/"model": ...}``
    checkpoint is first written as a plain state dict to a temporary folder, so that timm loads
    exactly the weights chosen here (``ema``), not its own choice.

    With ``pretrained`` and no ``init_from``: ``timm.create_model(model_name, pretrained=True,
    **kwargs)``, timm's hub weights (needs the network or timm's cache).

    With neither: a random initialisation (``pretrained=False``), reported as ``source="none"``.

    Args:
        model_name: timm model name (``vit_*``, ``deit_*``, ``eva02_*``, ``swin_*``, ...; a
            ``.tag`` selects hub weights).
        kwargs: ``timm.create_model`` keyword arguments of the run (``num_classes``, ``in_chans``,
            ``img_size``, ``drop_path_rate``, ``embed_dim``, ``depth``, ``num_heads``,
            ``patch_size``, ...; ``pretrained`` / ``pretrained_cfg_overlay`` are ignored). Not
            modified. Without ``num_classes`` / ``in_chans`` the model takes the file's (timm's
            defaults from the pretrained cfg). The width, depth and head layout must be the
            pretrained model's; sizes (``img_size``, ``patch_size``, Swin's ``window_size``),
            ``in_chans`` and ``num_classes`` may differ.
        init_from: Weights file: ``.pth``/``.pt``/``.bin`` (state dict, or a dict with it under
            ``"state_dict"``/``"model"``), ``.safetensors``, or a trilevel ``checkpoint.pt``.
            Takes precedence over ``pretrained``.
        pretrained: Use timm's hub weights when ``init_from`` is None.
        ema: Take the EMA weights of a checkpoint that has them (trilevel ``"ema"``, timm
            ``"state_dict_ema"``/``"model_ema"``).

    Returns:
        ``(model, report)``: the model on the CPU in training mode, and the
        :class:`LoadReport` of its tensors (logged at INFO as ``report.summary()``).

    Raises:
        FileNotFoundError: If ``init_from`` does not exist (named).
        ValueError: If ``init_from`` is not a checkpoint or state dict (named), the weights do not
            fit the configured width/depth/heads (the message names the tensors and both shapes,
            and the two layouts), timm has no hub weights for ``model_name``, or ``ema`` is asked
            of weights without EMA.
        OSError: If timm's hub weights cannot be fetched (no network, no cache): pass
            ``--init-from`` a local file instead.
        TypeError, AssertionError: As ``timm.create_model`` for arguments the model does not take
            (unchanged, as :func:`~trilevel.training.factory.build_model` handles them).
    """
    kwargs = {k: v for k, v in dict(kwargs).items() if k not in ("pretrained", "pretrained_cfg_overlay")}
    if init_from is not None:
        if pretrained:
            logger.info("init-from %s given: timm's hub weights are not used", init_from)
        model, report = _from_file(model_name, kwargs, Path(init_from).expanduser(), str(init_from), ema)
    elif pretrained:
        if ema:
            raise ValueError("EMA weights can only be taken from a checkpoint file (--init-from)")
        model, report = _from_hub(model_name, kwargs)
    else:
        import timm

        model = timm.create_model(model_name, pretrained=False, **kwargs)
        report = LoadReport(source="none", reinitialized=list(model.state_dict()))
    logger.info("%s", report.summary())
    return model, report


def _from_file(model_name: str, kwargs: Dict[str, Any], path: Path, given: str, ema: bool
               ) -> Tuple[nn.Module, LoadReport]:
    import timm

    sd, nested = read_state_dict(path, ema=ema)
    source = given + (" (ema)" if ema else "")
    cfg = _registry_cfg(model_name)
    heads = _classifier_keys(cfg)
    head_weight = heads[0] if heads else None
    # timm drops the classifier when the model's num_classes differs from the cfg's: the file's here
    file_classes = int(sd[head_weight].shape[0]) if head_weight in sd and sd[head_weight].dim() == 2 else 0
    conv = f"{cfg.first_conv}.weight" if cfg.first_conv else None
    input_size = tuple(cfg.input_size)
    if conv in sd and sd[conv].dim() == 4:  # timm adapts the input conv from input_size[0] channels
        input_size = (int(sd[conv].shape[1]), *input_size[1:])
    overlay: Dict[str, Any] = dict(
        url=None, hf_hub_id=None, hf_hub_filename=None, source=None, custom_load=False,
        num_classes=file_classes, input_size=input_size, label_offset=0,
        classifier=cfg.classifier, first_conv=cfg.first_conv,
    )
    with tempfile.TemporaryDirectory(prefix="trilevel-init-") as tmp:
        if nested:  # timm reads plain files itself; a nested checkpoint is handed over as its chosen weights
            plain = Path(tmp) / "weights.pth"
            torch.save(sd, plain)
            overlay["file"] = str(plain)
        else:
            overlay["file"] = str(path)
        try:
            model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except (TypeError, AssertionError):  # arguments the model does not take: as timm.create_model
            raise
        except Exception as exc:  # load_state_dict (RuntimeError) or a filter failing on misfit tensors
            if str(exc).startswith("Unknown model"):
                raise
            ref = _reference_model(model_name, kwargs)
            skip = heads if getattr(ref, "num_classes", file_classes) != file_classes else []
            shapes = {k: _shape(v) for k, v in ref.state_dict().items()}
            message = _misfit_message(source, model_name, shapes, _replay_filter(sd, ref), list(sd),
                                      {k: _shape(v) for k, v in sd.items()}, skip, cfg.first_conv)
            if message is None:  # not a misfit this module can name: timm's own words
                if isinstance(exc, RuntimeError):
                    raise ValueError(f"timm could not load {source} into {model_name}: {_first_line(exc, 600)}") from exc
                raise
            raise ValueError(message) from exc
    # provenance: the file as given, not the temporary copy; no reference to the tensors is kept
    pcfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pcfg, dict):
        pcfg["file"] = str(path)
    return model, _compare(model, model_name, source, sd, heads, file_classes, cfg.first_conv)


def _compare(model: nn.Module, model_name: str, source: str, sd: Mapping[str, torch.Tensor],
             heads: Sequence[str], file_classes: int, first_conv: Optional[str]) -> LoadReport:
    """The :class:`LoadReport` of a model timm loaded from ``sd``; a ValueError for tensors timm skipped."""
    state = model.state_dict()
    # timm dropped the classifier and loaded with strict=False: it did not check for missing or extra tensors
    dropped = list(heads) if getattr(model, "num_classes", file_classes) != file_classes else []
    filtered = _replay_filter(sd, model)
    message = _misfit_message(source, model_name, {k: _shape(v) for k, v in state.items()}, filtered, list(sd),
                              {k: _shape(v) for k, v in sd.items()}, dropped, first_conv)
    if message is not None and dropped:
        raise ValueError(message)
    report = LoadReport(source=source)
    for k, value in state.items():
        if k in dropped:
            report.reinitialized.append(k)
            continue
        f = sd.get(k)
        if f is not None and _shape(f) == _shape(value) and torch.equal(f.to(value.dtype), value):
            report.loaded.append(k)
        elif f is None and k in filtered and _shape(filtered[k]) == _shape(value) and torch.equal(
                filtered[k].to(value.dtype), value):
            report.loaded.append(k)  # renamed from a foreign layout by timm's filter
        else:
            report.resampled.append(k)  # timm loaded it strictly, adapted
    report.unused = [k for k in sd if k not in state]
    return report


def _from_hub(model_name: str, kwargs: Dict[str, Any]) -> Tuple[nn.Module, LoadReport]:
    import timm

    cfg = _registry_cfg(model_name)
    where = cfg.hf_hub_id or cfg.url or model_name
    try:
        model = timm.create_model(model_name, pretrained=True, **kwargs)
    except (TypeError, AssertionError):
        raise
    except RuntimeError as exc:
        text = str(exc)
        if text.startswith("Unknown model"):
            raise
        if "No pretrained weights" in text or "Invalid pretrained config" in text:
            raise ValueError(f"timm has no pretrained weights for {model_name!r}; pass --init-from a local "
                             "weights file") from exc
        if "loading state_dict" in text:
            raise ValueError(
                f"timm's pretrained weights of {model_name} ({where}) do not fit the model as configured "
                f"({_first_line(exc, 600)}). Leave --embed-dim/--depth/--num-heads unset to use the pretrained "
                "architecture"
            ) from exc
        raise OSError(_hub_message(model_name, where, exc)) from exc
    except Exception as exc:  # no network: huggingface_hub / urllib / httpx errors
        raise OSError(_hub_message(model_name, where, exc)) from exc

    # timm downloaded and loaded the weights itself: compare the model with the pretrained architecture
    ref_kwargs = {k: v for k, v in kwargs.items() if k not in _ADAPTING_KWARGS}
    ref_kwargs["num_classes"] = cfg.num_classes
    ref = _reference_model(model_name, ref_kwargs)
    ref_shapes = {k: _shape(v) for k, v in ref.state_dict().items()}
    heads = _classifier_keys(cfg)
    drop = getattr(model, "num_classes", cfg.num_classes) != cfg.num_classes
    report = LoadReport(source=f"hub:{where}", by_value=False)
    state = model.state_dict()
    for k, value in state.items():
        if (drop and k in heads) or k not in ref_shapes:
            report.reinitialized.append(k)
        elif ref_shapes[k] == _shape(value):
            report.loaded.append(k)
        else:
            report.resampled.append(k)
    report.unused = [k for k in ref_shapes if k not in state]
    return model, report


def _hub_message(model_name: str, where: str, exc: BaseException) -> str:
    return (
        f"cannot fetch timm's pretrained weights of {model_name} ({where}): this machine cannot reach the "
        f"Hugging Face hub and they are not in its cache ({type(exc).__name__}: {_first_line(exc, 200)}). "
        "Download them where there is a network and pass --init-from the local file (.pth, .bin or .safetensors)"
    )
