"""The configuration of one training run: the one source of ``trilevel train``'s options.

:class:`TrainConfig` extends :class:`trilevel.algorithm.TriLevelConfig` (the method's settings)
with the training recipe (DeiT's, Touvron et al., ICML 2021, through timm), data, and runtime
settings. Construction validates every field; the command line is generated from the fields
(:mod:`trilevel.cli.train`), YAML files use the same names (hyphens or underscores), and the
resolved configuration is written to the run folder and checked on resume (reading it back from a
checkpoint and the resume check are :mod:`trilevel.training.checkpoint_config`, re-exported here).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, get_args

import yaml

from ..settings import TriLevelConfig, track_given
from ..data import ALLOWED_AUGS, ALLOWED_BAD_IMAGES
from ..options import (
    BlockList, Fraction, OptionalFloat, OptionalInt, check_bool, check_choice, check_float, check_int, check_path, flag,
    parse_fraction,
)
from .checkpoint_config import RUNTIME_KEYS, check_resume, config_from_checkpoint, defaults_of, stored_config

__all__ = [
    "ModelConfig",
    "ALLOWED_AMP",
    "ALLOWED_DATASETS",
    "ALLOWED_DEVICES",
    "ALLOWED_NONFINITE",
    "RUNTIME_KEYS",
    "TrainConfig",
    "config_from_checkpoint",
    "load_config_file",
    "normalize_keys",
    "check_resume",
    "field_defaults",
    "stored_config",
]

DatasetName = Literal["fashion-mnist", "cluttered-fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder"]
AugName = Literal["light", "none", "deit"]
AmpName = Literal["none", "bf16", "fp16"]
DeviceName = Literal["auto", "cpu", "cuda"]
NonFiniteName = Literal["stop", "skip"]
BadImagesName = Literal["fail", "skip"]

ALLOWED_DATASETS: Tuple[str, ...] = get_args(DatasetName)
ALLOWED_AMP: Tuple[str, ...] = get_args(AmpName)
ALLOWED_DEVICES: Tuple[str, ...] = get_args(DeviceName)
ALLOWED_NONFINITE: Tuple[str, ...] = get_args(NonFiniteName)
if get_args(AugName) != tuple(ALLOWED_AUGS) or get_args(BadImagesName) != tuple(ALLOWED_BAD_IMAGES):
    raise ImportError("trilevel.training.config is out of step with trilevel.data's allowed values")

@dataclass(frozen=True)
class ModelConfig:
    """Which timm model to build, with architecture overrides (validated on construction).

    Attributes:
        model: timm model name; tri-level training needs a model of a registered family: timm VisionTransformer (vit_*, deit_*), Eva (eva02_*) or SwinTransformer (swin_*).
        img_size: Input side in pixels; none: the dataset's native size.
        patch_size: Patch side in pixels; none: the model's.
        in_chans: Input channels; none: the dataset's (3 repeats a grayscale channel).
        embed_dim: Embedding width; none: the model's.
        depth: Number of blocks; none: the model's.
        num_heads: Attention heads; none: the model's.
        window_size: Swin: attention window side in tokens; none: the model's.
    """

    model: str = "vit_tiny_patch16_224"
    img_size: OptionalInt = None
    patch_size: OptionalInt = None
    in_chans: OptionalInt = None
    embed_dim: OptionalInt = None
    depth: OptionalInt = None
    num_heads: OptionalInt = None
    window_size: OptionalInt = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the model fields.

        Raises:
            ValueError: An unknown timm model name, or an override that is not a positive integer.
        """
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a timm model name, got {self.model!r}")
        import timm

        if not timm.is_model(self.model):
            raise ValueError(
                f"model {self.model!r} is not a timm model name; see timm.list_models('vit_*') "
                f"(e.g. vit_tiny_patch16_224, deit_small_patch16_224)"
            )
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "window_size"):
            check_int(name, getattr(self, name), 1, optional=True)

    def model_kwargs(self) -> Dict[str, Any]:
        """The architecture overrides that are set, as ``timm.create_model`` keyword arguments."""
        names = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "window_size")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@track_given
@dataclass(frozen=True)
class TrainConfig(TriLevelConfig, ModelConfig):
    """Every setting of one training run (the flags of ``trilevel train``, hyphens for underscores).

    Construction validates every field and raises ``ValueError`` naming the option, the value and
    what is allowed; the config is frozen (``dataclasses.replace`` makes a changed copy). Use
    :meth:`from_dict` for mappings from files (hyphenated keys accepted, unknown keys rejected).
    The model fields are those of :class:`ModelConfig`, the tri-level fields those of
    :class:`~trilevel.algorithm.TriLevelConfig`.

    Attributes:
        drop_path: Stochastic-depth rate, in [0, 1) (DeiT: 0.1).
        pretrained: Start from timm's pretrained weights for --model (downloaded by timm from its hub: needs network access; offline, use --init-from).
        init_from: Start from the weights in this file: a trilevel checkpoint or a timm/PyTorch state dict (.pth, .pt, .bin, .safetensors), loaded through timm (position embeddings resampled to the image size, the patch embedding adapted to the input channels, the classifier re-initialised when the class count differs); the optimizer starts fresh (that is --resume); none: random initialisation.
        reset_head: With --init-from/--pretrained: re-initialise the classifier even when the class count matches the file's (a new task with as many classes, e.g. the other five Fashion-MNIST classes).
        layer_decay: Layer-wise learning-rate decay (BEiT, Bao et al., ICLR 2022; timm's param_groups_layer_decay): block i of L gets lr x layer_decay^(L - i), for fine-tuning, in (0, 1]; none: off.
        resolution_start: Resolution curriculum: the training input side at the start of the run as a fraction of the full side (images resized on the device, position embeddings resampled; EfficientTrain++, Wang et al., TPAMI 2024), in (0, 1]; 1: off.
        resolution_ramp_end: Resolution curriculum: fraction of the run where the side reaches full resolution (it stays full after).
        dataset: Dataset (cluttered-fashion-mnist: each Fashion-MNIST image at a random place on a larger canvas among fragments of others, Jaderberg et al. 2015; built once, cached).
        canvas_size: cluttered-fashion-mnist: side of the canvas in pixels (56: 196 tokens with 4x4 patches).
        clutter_fragments: cluttered-fashion-mnist: 8x8 fragments of other images scattered on each canvas.
        data_dir: Data folder; none: the dataset's default (Fashion-MNIST only).
        classes: Keep only these classes (original label indices, comma-separated), renumbered 0..k-1 in the order given, in every split (e.g. pretrain on Fashion-MNIST's classes 0,2,4,6,8 and fine-tune on 1,3,5,7,9); none: all.
        val_split: Hold out N training images as the validation split (chosen with a fixed generator: the same images for every seed and configuration, disjoint from the training set; taken before --train-subset). Validation top-1 (val_top1) is measured on them during the run and the test set is evaluated once at the end (test_top1): choose settings on val_top1, report test_top1. none: no split; the run evaluates on the test set (val_top1 is then the test set's).
        train_subset: Train on the first N training examples only (after --val-split); none: all.
        val_subset: Evaluate each epoch on the first N examples of the validation split (of the test set without --val-split) only; none: all. A split's test set is evaluated once, whole.
        aug: Training augmentation (light: random crop and flip; deit: timm's DeiT pipeline).
        workers: DataLoader worker processes per rank (0: load in the main process).
        epochs: Training epochs (>= 1); ignored with --budget.
        budget: Compute budget in dense-epoch equivalents (may be fractional): the run takes as many steps as fit the forward FLOPs of that many epochs of dense training, with its LR, warm-up and keep-ratio schedules fitted to those steps; none: train for --epochs.
        batch_size: Batch size per process (global batch = batch size x world size).
        lr: Peak learning rate, absolute (not scaled by the batch size).
        min_lr: Final learning rate of the cosine schedule.
        warmup_lr: Learning rate at the start of the linear warm-up (DeiT: 1e-6).
        warmup_epochs: Linear LR warm-up in epochs (may be fractional; with --budget, in dense-epoch equivalents), less than the run; none: 1/30 of the run (1 of 30 epochs).
        weight_decay: AdamW weight decay (DeiT: 0.05).
        seed: Seed of model init, data order, augmentation and the example selector (the same on every rank).
        device: Device: auto (CUDA when available), cpu or cuda.
        smoothing: Label smoothing, in [0, 1) (DeiT: 0.1).
        mixup: Mixup alpha (0: off; DeiT: 0.8).
        cutmix: CutMix alpha (0: off; DeiT: 1.0).
        clip_grad: Max gradient norm; none or 0: no clipping.
        amp: Mixed precision: none, bf16 (CUDA or CPU) or fp16 (CUDA only, with a GradScaler).
        compile: torch.compile the (patched) model: at most one compile per keep-ratio bucket (--ratio-buckets) and mode; the summary reports compile seconds apart from training time.
        ema_decay: EMA decay of the weights, in [0, 1); 0: no EMA.
        dense: Baseline: stock timm model, no keep-ratio schedules, no example selector.
        output_dir: Output folder; none: runs/<timestamp> (on resume: the checkpoint's folder).
        resume: Checkpoint to resume from (its configuration is the base); none: start fresh.
        stop_after_epoch: End this invocation after this (1-based) epoch, checkpoint saved, to resume later; none: run to the end.
        checkpoint_every: Also save the checkpoint every N optimizer steps inside an epoch, so that a crash loses at most N steps (the resume is exact); none: at the end of each epoch only.
        keep_last: Besides checkpoint.pt (always the latest), keep the last K checkpoints as checkpoint-step<global step>.pt (older ones are deleted once a newer one is written); 0: none.
        allow_world_size_change: On --resume with another number of processes than the checkpoint's, continue (from an epoch boundary; not an exact continuation, the differences are logged) instead of failing.
        nonfinite: On a NaN/inf loss: stop (save the last good state and fail) or skip the batch.
        bad_images: imagefolder: on an unreadable image file, fail naming its path, or skip it.
        log_interval: Steps between progress updates (the only per-step-range host reads).
        eval_every: Epochs between validation passes (the last epoch of the run and of this invocation is always evaluated).
        log_tensorboard: Write TensorBoard events to <output-dir>/tensorboard/ (rank 0): loss, lr, keep ratios, tokens per block, relative FLOPs and images/s per logged step; accuracy, val loss, active-set size, forgetting counts and the pruning picture per epoch (pip install trilevel[tensorboard]).
        log_wandb: Log the same to Weights & Biases, files under <output-dir>/wandb/ (pip install trilevel[wandb]; WANDB_MODE=offline needs no account or network).
        tensorboard_images_every: Epochs between pruning pictures of 4 fixed validation images in TensorBoard / W&B (the run's last epoch always has one; a dense run none).
    """

    # model (with ModelConfig's fields)
    drop_path: float = 0.1
    pretrained: bool = False
    init_from: Optional[str] = None
    reset_head: bool = False
    layer_decay: OptionalFloat = None
    resolution_start: float = 1.0
    resolution_ramp_end: Fraction = 0.8
    # data
    dataset: DatasetName = "fashion-mnist"
    canvas_size: int = 56
    clutter_fragments: int = 4
    data_dir: Optional[str] = None
    classes: BlockList = None
    val_split: OptionalInt = None
    train_subset: OptionalInt = None
    val_subset: OptionalInt = None
    aug: AugName = "light"
    workers: int = 2
    # optimisation
    epochs: int = 30
    budget: OptionalFloat = None
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: OptionalFloat = None
    weight_decay: float = 0.05
    seed: int = 0
    device: DeviceName = "auto"
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    clip_grad: OptionalFloat = None
    amp: AmpName = "none"
    compile: bool = False
    ema_decay: float = 0.0
    # the baseline switch
    dense: bool = False
    # output / runtime
    output_dir: Optional[str] = None
    resume: Optional[str] = None
    stop_after_epoch: OptionalInt = None
    checkpoint_every: OptionalInt = None
    keep_last: int = 0
    allow_world_size_change: bool = False
    nonfinite: NonFiniteName = "stop"
    bad_images: BadImagesName = "fail"
    log_interval: int = 50
    eval_every: int = 1
    log_tensorboard: bool = False
    log_wandb: bool = False
    tensorboard_images_every: int = 5

    def validate(self) -> None:
        """Check and normalise every field (run once, on construction).

        Raises:
            ValueError: Naming the first invalid option, its value and what is allowed.
        """
        inf = math.inf
        ModelConfig.validate(self)
        self._set(drop_path=check_float("drop_path", self.drop_path, 0.0, 1.0, high_open=True))
        check_bool("pretrained", self.pretrained)
        check_bool("reset_head", self.reset_head)
        if self.reset_head and self.init_from is None and not self.pretrained:
            raise ValueError("reset-head re-initialises the classifier of loaded weights: pass it with --init-from or "
                             "--pretrained (a randomly initialised model has a new head already)")
        self._set(init_from=check_path("init_from", self.init_from))
        if self.pretrained and self.init_from is not None:
            raise ValueError(f"pass --pretrained (timm's hub weights) or --init-from {self.init_from} (a local file), "
                             f"not both")
        self._set(layer_decay=check_float("layer_decay", self.layer_decay, 0.0, 1.0, low_open=True, optional=True))
        self._set(resolution_start=check_float("resolution_start", self.resolution_start, 0.0, 1.0, low_open=True))
        self._set(resolution_ramp_end=check_float("resolution_ramp_end", self.resolution_ramp_end, 0.0, 1.0,
                                                  low_open=True))
        check_choice("dataset", self.dataset, ALLOWED_DATASETS)
        check_int("canvas_size", self.canvas_size, 28)
        check_int("clutter_fragments", self.clutter_fragments, 0)
        if self.data_dir is not None:
            if not isinstance(self.data_dir, (str, os.PathLike)) or not str(self.data_dir):
                raise ValueError(f"data-dir must be a folder path, got {self.data_dir!r}")
            self._set(data_dir=os.fspath(self.data_dir))
        self._set(classes=_check_classes(self.classes))
        check_int("val_split", self.val_split, 1, optional=True)
        check_int("train_subset", self.train_subset, 1, optional=True)
        check_int("val_subset", self.val_subset, 1, optional=True)
        check_choice("aug", self.aug, ALLOWED_AUGS)
        check_int("workers", self.workers, 0)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        self._set(lr=check_float("lr", self.lr, 0.0, inf, low_open=True, high_open=True))
        self._set(min_lr=check_float("min_lr", self.min_lr, 0.0, inf, high_open=True))
        self._set(warmup_lr=check_float("warmup_lr", self.warmup_lr, 0.0, inf, high_open=True))
        self._set(budget=check_float("budget", self.budget, 0.0, inf, low_open=True, high_open=True, optional=True))
        self._set(warmup_epochs=check_float("warmup_epochs", self.warmup_epochs, 0.0, inf, high_open=True,
                                            optional=True))
        length, unit = (self.budget, "budget") if self.budget is not None else (self.epochs, "epochs")
        if self.warmup_epochs is not None and self.warmup_epochs >= length:
            raise ValueError(
                f"warmup-epochs ({self.warmup_epochs:g}) must be smaller than {unit} ({length:g}); "
                f"pass --warmup-epochs 0 (or a fraction of an epoch), or leave it unset (1/30 of the run)"
            )
        self._set(weight_decay=check_float("weight_decay", self.weight_decay, 0.0, inf, high_open=True))
        check_int("seed", self.seed, 0)
        check_choice("device", self.device, ALLOWED_DEVICES)
        self._set(smoothing=check_float("smoothing", self.smoothing, 0.0, 1.0, high_open=True))
        self._set(mixup=check_float("mixup", self.mixup, 0.0, inf, high_open=True))
        self._set(cutmix=check_float("cutmix", self.cutmix, 0.0, inf, high_open=True))
        self._set(clip_grad=check_float("clip_grad", self.clip_grad, 0.0, inf, high_open=True, optional=True))
        if self.clip_grad == 0.0:
            self._set(clip_grad=None)
        check_choice("amp", self.amp, ALLOWED_AMP)
        check_bool("compile", self.compile)
        self._set(ema_decay=check_float("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True))
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(f"batch-size must be even with mixup/cutmix (timm Mixup mixes pairs), got {self.batch_size}")
        TriLevelConfig.validate(self)
        check_bool("dense", self.dense)
        for name in ("output_dir", "resume"):
            self._set(**{name: check_path(name, getattr(self, name))})
        check_int("stop_after_epoch", self.stop_after_epoch, 1, optional=True)
        check_int("checkpoint_every", self.checkpoint_every, 1, optional=True)
        check_int("keep_last", self.keep_last, 0)
        check_bool("allow_world_size_change", self.allow_world_size_change)
        check_choice("nonfinite", self.nonfinite, ALLOWED_NONFINITE)
        check_choice("bad_images", self.bad_images, ALLOWED_BAD_IMAGES)
        check_int("log_interval", self.log_interval, 1)
        check_int("eval_every", self.eval_every, 1)

    # ------------------------------------------------------------------------------ conversions
    @classmethod
    def field_names(cls) -> List[str]:
        """Names of all fields (underscored)."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build a config from a mapping whose keys are field names (hyphens or underscores).

        Args:
            mapping: Keys such as ``batch-size`` or ``batch_size``.
            source: Where the mapping comes from, for error messages (e.g. a file name).

        Raises:
            ValueError: If a key is unknown (all unknown keys are named, with the allowed ones),
                a key appears twice (hyphen and underscore spelling), or a value is invalid.
        """
        return cls(**normalize_keys(mapping, source))

    @property
    def tri_level(self) -> bool:
        """Whether the model is patched (token/attention levels): ``not dense``."""
        return not self.dense

    @property
    def effective_selector(self) -> str:
        """The selector actually used (``none`` for a dense run)."""
        return "none" if self.dense else self.selector

    def warmup_fraction(self) -> float:
        """The LR warm-up as a fraction of the run: ``warmup_epochs`` over the run's epochs (or budget), else 1/30."""
        if self.warmup_epochs is None:
            return 1.0 / 30.0
        return self.warmup_epochs / (self.budget if self.budget is not None else self.epochs)

    def eval_ratios(self) -> Tuple[float, float]:
        """``(keep_ratio, attn_keep_ratio)`` for evaluation; ``(1.0, 1.0)`` for a dense run."""
        return (1.0, 1.0) if self.dense else super().eval_ratios()

    def to_dict(self) -> Dict[str, Any]:
        """All fields as plain Python values (YAML/JSON/``torch.load(weights_only=True)`` safe)."""
        d = dataclasses.asdict(self)
        for key in ("prune_layers", "classes"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


def _check_classes(value: Any) -> Optional[List[int]]:
    """None/``"none"`` -> None; ``"1,3,5"`` or ``[1, 3, 5]`` -> ``[1, 3, 5]`` (distinct, non-negative)."""
    from ..options import parse_block_list

    if isinstance(value, str):
        try:
            value = parse_block_list(value)
        except ValueError:
            raise ValueError(f"classes must be comma-separated class indices (e.g. 1,3,5,7,9) or 'none', "
                             f"got {value!r}") from None
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or not value
            or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in value)
            or len(set(value)) != len(value)):
        raise ValueError(f"classes must be distinct non-negative class indices (at least one), got {value!r}")
    return list(value)


def normalize_keys(mapping: Mapping[str, Any], source: str = "config") -> Dict[str, Any]:
    """Turn hyphenated keys into :class:`TrainConfig` field names; reject unknown or duplicate keys.

    Raises:
        ValueError: Unknown keys (named, with the allowed keys) or a key given twice.
    """
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{source} must be a mapping of option names to values, got {type(mapping).__name__}")
    names = set(TrainConfig.field_names())
    out: Dict[str, Any] = {}
    unknown = []
    for key, value in mapping.items():
        norm = str(key).replace("-", "_")
        if norm not in names:
            unknown.append(str(key))
            continue
        if norm in out:
            raise ValueError(f"{source}: option {flag(norm)!r} is given twice")
        out[norm] = value
    if unknown:
        allowed = ", ".join(sorted(flag(n) for n in names))
        raise ValueError(f"{source}: unknown key(s) {', '.join(repr(k) for k in unknown)}; allowed keys: {allowed}")
    return out


def _float_fields() -> frozenset:
    return frozenset(f.name for f in dataclasses.fields(TrainConfig) if "float" in str(f.type).lower()
                     or "Fraction" in str(f.type))


def load_config_file(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a YAML option file into a dict of :class:`TrainConfig` field names.

    Args:
        path: YAML file with a mapping of option names (flag names, hyphens or underscores) to
            values. An empty file is an empty mapping.

    Returns:
        The options, keys normalised to field names; numbers written as strings (YAML 1.1 reads
        ``1e-3`` as a string; fractions such as ``1/30``) converted for number options.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is not valid YAML, not a mapping, or has unknown keys (all named).
    """
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values, got {type(data).__name__}")
    options = normalize_keys(data, source=str(path))
    floats = _float_fields()
    for key, value in options.items():
        if key in floats and isinstance(value, str):
            try:
                options[key] = parse_fraction(value)
            except ValueError:
                raise ValueError(f"{path}: {flag(key)} must be a number, got {value!r}") from None
    return options


def field_defaults() -> Dict[str, Any]:
    """Every :class:`TrainConfig` field with a plain default, ``{name: default}``: the value a run of
    a version that did not have the option yet ran with (used to compare stored configurations)."""
    return defaults_of(TrainConfig)
