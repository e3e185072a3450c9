"""Training configuration: one flat dataclass whose fields declare how they behave.

The defaults are the README's main job, ResNet-20 on Fashion-MNIST with LARS in under 8
minutes on 2 CPU cores (README.md gives the recipe and its measured accuracy and time).

Each field declares (`FieldMeta`) its help and group, choices or range, where it applies
(`Applies`) and its `Kind`; `lars_jax.runs.cli` generates the flags from them.
`TrainConfig.validate` checks the ranges in one loop, then the rules between fields below
it: a value with no effect is refused (`ConfigError`) or warned about (`ConfigWarning`).

References:
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017 (arXiv 1708.03888).
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017
  (arXiv 1706.02677).
  Masters, Luschi, "Revisiting Small Batch Training for Deep Neural Networks", 2018
  (arXiv 1804.07612).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from lars_jax import schedules
from lars_jax.data.info import DATASET_NAMES, dataset_info
from lars_jax.models import MODEL_NAMES
from lars_jax.runs.errors import ConfigError, ConfigWarning

__all__ = ["APPLIES", "ALWAYS_APPLIES", "Applies", "ConfigError", "ConfigWarning",
           "FieldMeta", "Kind", "TrainConfig", "field_meta", "fields_of_kind"]

ScheduleName = Literal["cosine", "poly2", "linear", "constant", "step", "onecycle", "mlperf"]
Kind = Literal["structural", "result", "location", "cosmetic"]
"""What a change of a field changes: ``structural``, the run and its checkpoints' state (a
checkpoint of another value is not restored); ``result``, what the run computes (a workdir's
rerun with either changed is refused, `lars_jax.train.loop`); ``location``, only where it
writes (a sweep sets it itself); ``cosmetic``, nothing the run computes (it may change)."""


_BOUNDS = {"ge": (operator.ge, ">=", "["), "gt": (operator.gt, ">", "("),
           "le": (operator.le, "<=", "]"), "lt": (operator.lt, "<", ")")}
"""The bounds of a field's range, lower first: each one's test, sign and bracket."""


def _range_text(bounds: tuple[tuple[str, float], ...]) -> str:
    """``> 0``, ``>= 1``, ``in [0, 1)``: a field's range as the error messages say it."""
    if len(bounds) == 1:
        return f"{_BOUNDS[bounds[0][0]][1]} {bounds[0][1]}"
    (low, a), (high, b) = bounds
    return f"in {_BOUNDS[low][2]}{a}, {b}{_BOUNDS[high][2]}"


class Applies(NamedTuple):
    """Where a field has an effect: ``applies(config)``, `when` in words (for messages); a
    non-default value elsewhere is refused, or only warned about (a setting of another
    optimizer, span or schedule that a sweep over those may share in its base config)."""

    when: str
    applies: Callable[[Any], bool]
    otherwise: Literal["refuse", "warn"]


class FieldMeta(NamedTuple):
    """What a `TrainConfig` field declares (its metadata["meta"]); `field_meta()` adds its
    name, scalar type (bool, int, float or str), whether it may be None and its default."""

    help: str
    group: str
    kind: Kind = "result"
    choices: tuple[Any, ...] | None = None
    range: tuple[tuple[str, float], ...] = ()  # e.g. (("ge", 0), ("lt", 1))
    applies: Applies | None = None
    name: str = ""
    type: type = object
    optional: bool = False
    default: Any = None


def _field(group: str, default: Any, help: str, *, kind: Kind = "result",
           choices: tuple[Any, ...] | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None,
           applies: Applies | None = None) -> Any:
    """A field with its declarations (``ge`` or ``gt``, ``le`` or ``lt``: its range)."""
    bounds = tuple(kv for kv in zip(_BOUNDS, (ge, gt, le, lt), strict=True) if kv[1] is not None)
    meta = FieldMeta(help, group, kind, choices, bounds, applies)
    return field(default=default, metadata={"help": help, "meta": meta})


_model, _data, _optim, _batch, _parallel, _manage = (functools.partial(_field, group) for group in (
    "Model", "Data", "Optimizer", "Batch and length", "Parallelism", "Run management"))


@dataclass
class TrainConfig:
    """All settings of one training run."""

    model: str = _model("resnet20", "Model name.", choices=tuple(MODEL_NAMES), kind="structural")
    width: float = _model(1.0, "Width multiplier of the model's channels.", gt=0, kind="structural")
    norm: Literal["batch", "group", "none"] = _model("batch", "Normalisation layers.",
                                                     kind="structural")
    bn_span: Literal["device", "global", "ghost"] = _model(
        "device", "Batch-norm statistics span: device (each device's slice), global (whole "
        "micro-batch across devices) or ghost (groups of bn_ghost_size examples). Changes results "
        "at large batch.", applies=Applies("norm='batch'", lambda c: c.norm == "batch", "refuse"))
    bn_ghost_size: int = _model(32, "Ghost batch size for bn_span=ghost.", ge=1, applies=Applies(
        "norm='batch' and bn_span='ghost'", lambda c: c.norm == "batch" and c.bn_span == "ghost",
        "warn"))
    zero_init_last_bn: bool = _model(
        False, "Zero-initialise the last BN scale of each block.", kind="structural",
        applies=Applies("norm='batch' or 'group'", lambda c: c.norm != "none", "refuse"))

    dataset: str = _data("fashion_mnist", "Data set.", choices=tuple(DATASET_NAMES),
                         kind="structural")
    data_dir: str | None = _data(None, "Data directory (none: $LARS_JAX_DATA_DIR, else "
                                 "$TFDS_DATA_DIR, else ~/tensorflow_datasets).", kind="cosmetic")
    train_subset: int | None = _data(
        None, "Use only the first N training examples (None: all), for fast experiments.", ge=1)
    test_subset: int | None = _data(None, "Evaluate on only the first N test examples.", ge=1)
    crop_padding: int = _data(
        0, "Random-crop padding in pixels (0: no crop augmentation; 2-4 for longer runs).", ge=0)
    flip: bool = _data(False, "Random horizontal flips (off by default: they slow convergence "
                       "in a run as short as the default 2.25 epochs).")
    cutout: int = _data(0, "Cutout square size in pixels (0: off).", ge=0)
    input_pipeline: Literal["auto", "device", "host"] = _data(
        "auto", "Input path: device (whole data set in device memory), host (stream batches "
        "from the TFDS source through grain) or auto (host when the data set does not fit on "
        "the device: imagenet2012).")
    image_size: int | None = _data(
        None, "Side of the host-decoded images of imagenet2012 (None: 224).", ge=1)
    input_threads: int = _data(
        8, "Host input pipeline: decoding threads per process.", ge=1, kind="cosmetic",
        applies=Applies("the host input pipeline (input_pipeline host, or auto for a data set "
                        "that does not fit on the device)", lambda c: c.uses_host_input(), "warn"))

    optimizer: Literal["sgd", "lars", "larc", "clars"] = _optim(
        "lars", "Optimizer: sgd (with momentum), lars, larc (lars with the trust ratio clipped at "
        "1) or clars (lars with the mean per-example gradient norm in the ratio).",
        kind="structural")
    learning_rate: float = _optim(
        0.5, "Base (peak) learning rate at base_batch_size, before scaling.", gt=0)
    base_batch_size: int = _optim(256, "Batch size at which learning_rate is given.", ge=1)
    lr_scaling: Literal["linear", "sqrt", "none"] = _optim(
        "linear", "Scale the learning rate from base_batch_size to batch_size: linear (x B/B0, "
        "Goyal et al.), sqrt (x sqrt(B/B0)) or none.")
    warmup_epochs: float = _optim(0.05, "Gradual warmup length in epochs (0: no warmup).", ge=0)
    warmup_start: Literal["base", "zero"] = _optim(
        "zero", "Warmup starts from: base (the unscaled learning_rate, Goyal et al.) or zero "
        "(MLPerf).", applies=Applies(
            "warmup_epochs > 0 and a schedule other than onecycle and mlperf (mlperf refuses "
            "'base')",
            lambda c: c.warmup_epochs > 0 and c.schedule not in ("onecycle", "mlperf"), "warn"))
    schedule: ScheduleName = _optim(
        "cosine", "Decay after warmup: cosine, poly2 (LARS paper), linear, constant, step (/10 "
        "at 50% and 75%), onecycle, mlperf (lars_jax.mlperf_lars_schedule: warmup from 0, then "
        "poly2 to end_learning_rate).")
    end_learning_rate: float = _optim(
        0.0, "Final learning rate of cosine, poly2, linear and mlperf (reached at the end of "
        "the run). The other schedules have a fixed end and refuse a value other than 0: "
        "constant stays at the peak, step ends at peak/100, onecycle at peak/250000.", ge=0,
        applies=Applies(
            "schedule cosine, poly2, linear or mlperf (constant, step and onecycle have a "
            "fixed end)", lambda c: c.schedule in ("cosine", "poly2", "linear", "mlperf"),
            "refuse"))
    momentum: float = _optim(0.9, "Momentum coefficient.", ge=0, lt=1)
    nesterov: bool = _optim(False, "Nesterov momentum.", kind="structural")
    weight_decay: float = _optim(5e-4, "Weight decay (L2) coefficient.", ge=0)
    trust_coefficient: float = _optim(
        0.02, "LARS/LARC/CLARS trust coefficient (eta; the paper uses 0.001 with a 20-50x larger "
        "learning rate; 0.02 keeps the plain-SGD rate of biases and BN parameters moderate).", gt=0,
        applies=Applies("optimizer lars, larc or clars", lambda c: c.optimizer != "sgd", "warn"))
    denominator: Literal["paper", "optax"] = _optim(
        "paper", "Trust-ratio denominator: paper (||g|| + wd ||w||) or optax (||g + wd w||).",
        kind="structural", applies=Applies("optimizer lars or larc",
                                           lambda c: c.optimizer in ("lars", "larc"), "warn"))
    clip: bool = _optim(
        False, "Clip the trust ratio at 1 (LARC) with optimizer lars or clars (larc always "
        "clips).", applies=Applies("optimizer lars or clars (larc always clips)",
                                   lambda c: c.optimizer in ("lars", "clars"), "warn"))
    clars_granularity: Literal["example", "device", "micro_batch"] = _optim(
        "example", "CLARS gradient norms: example (exact per-example), device (each device's "
        "local gradient, free), micro_batch (each accumulation micro-batch).",
        applies=Applies("optimizer clars", lambda c: c.optimizer == "clars", "warn"))
    label_smoothing: float = _optim(0.0, "Label smoothing of the cross-entropy loss.", ge=0, lt=1)

    batch_size: int = _batch(64, "Global batch size (all devices, all accumulation steps).", ge=1)
    grad_accum_steps: int = _batch(
        1, "Gradient accumulation micro-batches per step (lax.scan over micro-batches).", ge=1)
    epochs: float = _batch(2.25, "Training length in epochs (may be fractional).", gt=0)
    dtype: Literal["float32", "bfloat16"] = _batch(
        "bfloat16", "Compute dtype; params stay float32.")

    parallel: Literal["jit", "pmap"] = _parallel(
        "jit", "Data-parallel path: jit (Mesh + sharding) or pmap (jax.pmap with pmean).")
    num_devices: int | None = _parallel(None, "Number of local devices to use (None: all).", ge=1)
    steps_per_call: int = _parallel(
        1, "Optimizer steps per compiled call (lax.scan): fewer dispatches for small models "
        "and batches. Calls stop at log, eval and checkpoint steps.", ge=1, applies=Applies(
            "parallel='jit' on in-memory data (the host input pipeline feeds one step per call)",
            lambda c: c.parallel == "jit" and not c.uses_host_input(), "refuse"))
    coordinator_address: str | None = _parallel(None, "Multi-host: host:port of process 0 (or env "
                                                "JAX_COORDINATOR_ADDRESS).", kind="cosmetic")
    # a launch setting, not part of the run: the global batch of a step does not depend on
    # the process count, so a run resumes exactly with another one (docs/streaming.md)
    num_processes: int | None = _parallel(None, "Multi-host: number of processes.", ge=1,
                                          kind="cosmetic")
    process_id: int | None = _parallel(None, "Multi-host: this process's id.", ge=0,
                                       kind="cosmetic")

    seed: int = _manage(0, "Random seed (init, data order and augmentation derive from it).",
                        ge=0, lt=2**32)
    workdir: str = _manage(
        "runs/default", "Output folder: metrics, checkpoints, summary, plots.", kind="location")
    checkpoint_every_steps: int = _manage(200, "Save a checkpoint every N steps (0: only at the "
                                          "end; -1: never).", ge=-1, kind="cosmetic")
    keep_checkpoints: int = _manage(
        3, "Number of checkpoints to keep.", ge=1, kind="cosmetic", applies=Applies(
            "checkpoint_every_steps >= 0", lambda c: c.checkpoint_every_steps >= 0, "warn"))
    resume: bool = _manage(True, "Resume from the latest good checkpoint in workdir, if any (no: "
                           "start over there, the old checkpoints archived).", kind="cosmetic")
    extend_epochs: bool = _manage(
        False, "Let this run raise the epochs of the finished run in workdir: it trains on from "
        "its last step under the longer run's schedule, and summary.json records the "
        "extension (epochs_extended). Without it a changed setting is refused.", kind="cosmetic")
    nan_policy: Literal["stop", "skip"] = _manage(
        "stop", "On NaN/Inf loss, gradients or updated parameters: stop (with a clear error) "
        "or skip the step (parameters, optimizer state and schedule stay as they were).")
    max_skipped_fraction: float = _manage(
        0.1, "nan_policy=skip: stop the run (exit 1) once more than this fraction of its steps "
        "were skipped.", ge=0, le=1,
        applies=Applies("nan_policy='skip'", lambda c: c.nan_policy == "skip", "warn"))
    eval_every_epochs: float = _manage(
        0.0, "Evaluate on the test set every N epochs (0: only at the end).", ge=0)
    eval_batch_size: int = _manage(1000, "Evaluation batch size.", ge=1)
    log_every_steps: int = _manage(10, "Write a metrics row every N steps.", ge=1)
    log_layer_stats: bool = _manage(
        False, "Log per-layer trust ratios, weight norms and gradient norms.")
    log_diagnostics: bool = _manage(
        False, "Log lars_jax.diagnostics.layer_diagnostics (weight-norm equilibrium).")
    tensorboard: bool = _manage(
        False, "Also write TensorBoard summaries (needs tensorboardX).", kind="cosmetic")
    plot: bool = _manage(
        True, "Write an end-of-run plot (PNG) of the loss/accuracy curves.", kind="cosmetic")
    progress: bool = _manage(True, "Show a tqdm progress bar.", kind="cosmetic")
    mlperf: bool = _manage(
        False, "MLPerf mode (BUILD.md section 6): the reference's step counting (ceil(N/B) "
        "steps per epoch, poly decay over total - warmup + 1 steps), the remainder batch kept "
        "(padded, masked in the loss and the BN statistics), evaluation every 4 epochs, a stop "
        "at target_accuracy, MLLOG lines in <workdir>/mlperf_log.txt.")
    target_accuracy: float = _manage(
        0.759, "MLPerf mode: stop at the first evaluation reaching this top-1 accuracy (the "
        "rules' 75.9%).", gt=0, le=1, applies=Applies("mlperf=True", lambda c: c.mlperf, "refuse"))

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Builds a config from a dict; unknown keys raise `ConfigError` naming them."""
        unknown = sorted(set(d) - set(field_meta()))
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text."""
        return {name: m.help for name, m in field_meta().items()}

    def micro_batch_size(self, device_count: int) -> int:
        """Examples per device per accumulation micro-batch."""
        return self.batch_size // (device_count * self.grad_accum_steps)

    def run_steps(self, num_train: int) -> tuple[int, int]:
        """``(steps_per_epoch, total_steps)`` with `num_train` training examples.

        The last partial batch of an epoch is dropped; a run has at least one step. In
        MLPerf mode (``mlperf``) it is kept: ``ceil(num_train / batch_size)`` steps per
        epoch and ``epochs`` times that (`lars_jax.schedules.mlperf_total_steps`).
        """
        if self.mlperf:
            epoch_steps = schedules.mlperf_total_steps(num_train, self.batch_size, 1)
            return epoch_steps, epoch_steps * int(self.epochs)
        epoch_steps = max(1, num_train // self.batch_size)
        return epoch_steps, max(1, int(round(self.epochs * epoch_steps)))

    def num_train_examples(self) -> int:
        """Training examples of the data set after ``train_subset``."""
        n = dataset_info(self.dataset).num_train
        return min(n, self.train_subset) if self.train_subset else n

    def uses_host_input(self) -> bool:
        """Whether the data stream from the host (``input_pipeline`` host, or auto for a
        data set that does not fit on the device) instead of living on the device."""
        if self.input_pipeline == "auto":
            return not dataset_info(self.dataset).fits_on_device
        return self.input_pipeline == "host"

    def validate(self, device_count: int | None = None, num_train: int | None = None, *,
                 devices_later: bool = False) -> TrainConfig:
        """Checks every field; raises `ConfigError` (a ValueError) naming it. Returns self.

        Each check runs once per set of values (the command line, `train` and `build` may
        each call it). `device_count`: the run's devices (default ``num_devices`` if set; the
        device checks are skipped with `devices_later`); `num_train`: its training examples
        (default: the data set's after ``train_subset``), for the checks on its steps.
        """
        n = None if devices_later else self.num_devices if device_count is None else device_count
        done: set[tuple[Any, ...]] = self.__dict__.setdefault("_validated", set())
        for check, args in ((_check_fields, ()), (_check_devices, (n, num_train)),
                            (_check_steps, (num_train,))):
            key = (check, dataclasses.astuple(self), args)
            if key not in done and (check is not _check_devices or n is not None):
                check(self, *args)
                done.add(key)
        return self


@functools.cache
def field_meta() -> dict[str, FieldMeta]:
    """Field name -> its declarations, in declaration order (a ``Literal`` type's values
    are the field's choices)."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        meta, tp = f.metadata["meta"], hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        choices = tuple(args) if typing.get_origin(tp) is Literal else meta.choices
        tp = type(choices[0]) if choices else args[0] if optional else tp
        out[f.name] = meta._replace(name=f.name, type=tp, optional=optional,
                                    default=f.default, choices=choices)
    return out


def fields_of_kind(kind: Kind) -> tuple[str, ...]:
    """The fields of one `Kind`, e.g. ``fields_of_kind("structural")``; unknown kinds raise."""
    if kind not in typing.get_args(Kind):
        raise ValueError(f"kind={kind!r}: must be one of {', '.join(typing.get_args(Kind))}")
    return tuple(name for name, m in field_meta().items() if m.kind == kind)


APPLIES: dict[str, Applies] = {n: m.applies for n, m in field_meta().items() if m.applies}
"""The fields that apply only in some combinations (their `FieldMeta.applies`)."""
ALWAYS_APPLIES: frozenset[str] = frozenset(field_meta()) - set(APPLIES)
"""Fields with an effect in every combination (some have their own checks)."""


def peak_learning_rate(config: TrainConfig) -> float:
    """``learning_rate`` scaled from ``base_batch_size`` to ``batch_size``."""
    scale = {"linear": schedules.linear_scaling, "sqrt": schedules.sqrt_scaling,
             "none": lambda lr, b, b0: lr}[config.lr_scaling]
    return scale(config.learning_rate, config.batch_size, config.base_batch_size)


def _bad(c: TrainConfig, name: str, msg: str) -> ConfigError:
    return ConfigError(f"TrainConfig.{name}={getattr(c, name)!r}: {msg}")


def _warn(c: TrainConfig, name: str, msg: str) -> None:
    # stacklevel 1: one location, so each message is shown once per process
    warnings.warn(str(_bad(c, name, msg)), ConfigWarning, stacklevel=1)


def _check_fields(c: TrainConfig) -> None:
    """The single-field declarations (finite, choices, range), the rules between fields,
    then where each field applies."""
    for name, meta in field_meta().items():
        v = getattr(c, name)
        if isinstance(v, float) and not math.isfinite(v):
            raise _bad(c, name, "must be finite")
        if v is not None and meta.choices and v not in meta.choices:
            raise _bad(c, name, f"must be one of {', '.join(map(str, meta.choices))}")
        if v is not None and not all(_BOUNDS[op][0](v, b) for op, b in meta.range):
            raise _bad(c, name, f"must be {_range_text(meta.range)}{' or None' * meta.optional}")
    _check_data_and_parallel(c)
    _check_optimizer_and_norm(c)
    if c.mlperf:
        _check_mlperf(c)
    for name, rule in APPLIES.items():
        default = field_meta()[name].default
        if getattr(c, name) != default and not rule.applies(c):
            msg = f"has no effect: it applies only with {rule.when} (leave it at {default!r})"
            if rule.otherwise == "refuse":
                raise _bad(c, name, msg)
            _warn(c, name, msg)


def _check_data_and_parallel(c: TrainConfig) -> None:
    """Rules between the data, multi-host and run-management fields."""
    info = dataset_info(c.dataset)
    if (c.num_processes is not None and c.process_id is not None
            and c.process_id >= c.num_processes):
        raise _bad(c, "process_id", f"must be < num_processes={c.num_processes}")
    if c.input_pipeline == "device" and not info.fits_on_device:
        raise _bad(c, "input_pipeline", f"{c.dataset} does not fit on the device: use host or auto")
    if c.image_size is not None and info.fits_on_device:
        raise _bad(c, "image_size", "only for data sets cropped on the host (imagenet2012); "
                   "None otherwise")
    if not c.workdir:
        raise _bad(c, "workdir", "must be a non-empty path")
    if c.train_subset is not None and c.train_subset < c.batch_size:
        raise _bad(c, "train_subset", f"must be >= batch_size={c.batch_size}")
    for name, size, split in (("train_subset", info.num_train, "training"),
                              ("test_subset", info.num_test, "test")):
        if getattr(c, name) is not None and getattr(c, name) > size:
            raise _bad(c, name, f"above the {size} {split} examples of {c.dataset} (leave it "
                       "at None for all of them)")


def _check_optimizer_and_norm(c: TrainConfig) -> None:
    """Rules between the optimizer, schedule, batch and normalisation fields."""
    peak, top = peak_learning_rate(c), float(np.finfo(np.float32).max)
    if not peak <= top:  # the schedule runs in float32
        raise _bad(c, "learning_rate", f"scaled ({c.lr_scaling}) to batch_size={c.batch_size} "
                   f"it is {peak:.3g}, above the float32 range ({top:.3g})")
    if c.schedule == "mlperf" and c.warmup_start != "zero":
        raise _bad(c, "warmup_start", "schedule='mlperf' warms up from 0: use warmup_start='zero'")
    if c.warmup_epochs > c.epochs:
        raise _bad(c, "warmup_epochs", f"must be <= epochs={c.epochs}")
    if c.nesterov and c.momentum == 0:
        raise _bad(c, "nesterov", "needs momentum > 0")
    if c.optimizer == "clars" and c.clars_granularity == "micro_batch" and c.grad_accum_steps < 2:
        raise _bad(c, "clars_granularity", "micro_batch needs grad_accum_steps >= 2")
    if c.optimizer == "clars" and c.denominator != "paper":
        raise _bad(c, "denominator", "clars supports only denominator='paper'")
    if c.norm == "batch" and c.bn_span == "ghost" and c.bn_ghost_size == 1:
        raise _bad(c, "bn_ghost_size", "batch norm over 1 example outputs its bias only (use >= 2)")
    if c.norm == "batch" and c.bn_span == "global" and c.batch_size == c.grad_accum_steps:
        raise _bad(c, "batch_size", "a micro-batch of 1 example: batch norm over 1 example "
                   "outputs its bias only (use norm='none' or fewer grad_accum_steps)")


_MLPERF_SETTINGS: dict[str, Any] = {
    "optimizer": "lars", "schedule": "mlperf", "denominator": "paper", "clip": False,
    "eval_every_epochs": 4, "steps_per_call": 1}
"""What MLPerf mode follows: the ResNet-50 LARS rules and reference (BUILD.md section 6)."""


def _check_mlperf(c: TrainConfig) -> None:
    """The settings MLPerf mode (``mlperf``) follows or supports."""
    for name, value in _MLPERF_SETTINGS.items():
        if getattr(c, name) != value:
            raise _bad(c, name, f"MLPerf mode (mlperf=True) needs {name}={value!r} (the "
                       "ResNet-50 LARS rules and reference)")
    if c.norm == "batch" and c.bn_span != "device":
        raise _bad(c, "bn_span", "MLPerf mode masks the padding of the remainder batch out "
                   "of each device's BN statistics: use bn_span='device' (the recipes')")
    if not c.uses_host_input():
        raise _bad(c, "input_pipeline", "MLPerf mode streams from the host (host, or auto "
                   "for imagenet2012)")
    if c.epochs != int(c.epochs):
        raise _bad(c, "epochs", "MLPerf mode counts whole epochs: must be an integer")


def _check_devices(c: TrainConfig, n: int, num_train: int | None) -> None:
    """The rules that depend on the number of devices `n` (and in MLPerf mode on the training
    examples: each epoch's remainder batch needs an example per device and micro-batch)."""
    if c.batch_size % (n * c.grad_accum_steps):
        raise _bad(c, "batch_size", "global batch must be divisible by devices x "
                   f"grad_accum_steps = {n} x {c.grad_accum_steps} = {n * c.grad_accum_steps}")
    mb = c.micro_batch_size(n)
    if c.norm == "batch" and c.bn_span == "ghost" and mb % c.bn_ghost_size:
        raise _bad(c, "bn_ghost_size", f"must divide the per-device micro-batch of {mb} examples")
    if c.optimizer == "clars" and c.clars_granularity == "device" and n < 2:
        raise _bad(c, "clars_granularity", "device needs >= 2 devices (use example)")
    if c.norm == "batch" and c.bn_span == "device" and mb == 1:
        raise _bad(c, "batch_size", f"1 example per device and micro-batch ({n} devices x "
                   f"{c.grad_accum_steps} micro-batches): batch norm over 1 example outputs "
                   "its bias only (use bn_span='global' or norm='none')")
    rest = (c.num_train_examples() if num_train is None else num_train) % c.batch_size
    if c.mlperf and 0 < rest < n * c.grad_accum_steps:
        raise _bad(c, "batch_size", f"MLPerf mode keeps the last {rest} examples of each "
                   f"epoch as a padded batch, fewer than the {n * c.grad_accum_steps} devices x "
                   "micro-batches that each need one")


def _check_steps(c: TrainConfig, num_train: int | None) -> None:
    """The rules that depend on the number of steps of the run."""
    epoch_steps, total_steps = c.run_steps(
        c.num_train_examples() if num_train is None else num_train)
    eval_every = int(round(c.eval_every_epochs * epoch_steps))
    if c.eval_every_epochs > 0 and eval_every == 0:
        raise _bad(c, "eval_every_epochs", f"rounds to 0 steps at {epoch_steps} steps per "
                   f"epoch (use 0, or {1 / epoch_steps:.3g} for every step)")
    if c.mlperf and c.warmup_epochs * epoch_steps != int(c.warmup_epochs * epoch_steps):
        raise _bad(c, "warmup_epochs", f"MLPerf mode: warmup_epochs x {epoch_steps} steps per "
                   "epoch must be a whole number of steps")
    warmup = int(round(c.warmup_epochs * epoch_steps))
    if (c.warmup_epochs not in (0, field_meta()["warmup_epochs"].default) and warmup == 0
            and c.schedule != "onecycle"):
        _warn(c, "warmup_epochs", f"rounds to 0 steps at {epoch_steps} steps per epoch: no warmup")
    if (c.warmup_start == "base" and warmup > 0 and c.schedule != "onecycle"
            and (c.batch_size <= c.base_batch_size or c.lr_scaling == "none")):
        _warn(c, "warmup_start", "the scaled peak rate is not above learning_rate (batch_size "
              "<= base_batch_size or lr_scaling='none'): the warmup is flat")
    if c.steps_per_call > 1:
        _check_steps_per_call(c, total_steps, eval_every)


def _check_steps_per_call(c: TrainConfig, total_steps: int, eval_every: int) -> None:
    """Warns where calls of ``steps_per_call`` steps cannot be used (a speed setting with
    no effect on results: a sweep's shared base config may mean it for its other runs)."""
    k = c.steps_per_call
    stops = {"log_every_steps": c.log_every_steps, "epochs": total_steps,
             "eval_every_epochs": eval_every, "checkpoint_every_steps": c.checkpoint_every_steps}
    stops = {name: every for name, every in stops.items() if every > 0}  # 0, -1: no stops
    name, every = min(stops.items(), key=lambda item: item[1])
    if k > every:
        why = (f"the run has {every} steps" if name == "epochs"
               else f"calls stop every {every} steps ({name})")
        _warn(c, "steps_per_call", f"never used: {why} (every call runs single steps); "
              f"use steps_per_call <= {every}")
    uneven = [name for name, every in stops.items() if name != "epochs" and every % k]
    if uneven:
        _warn(c, "steps_per_call", f"{', '.join(uneven)} not a multiple of it: some calls "
              "run single steps")
