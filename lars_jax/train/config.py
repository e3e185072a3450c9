"""Training configuration: one flat dataclass, validated before any compute.

Every field has a default; the defaults are the README's main job: ResNet-20 on
Fashion-MNIST with LARS, sized for under 10 minutes on the project's 2-core CPU (ResNet-20
trains at ~370 images/s in bfloat16 there; 92% test accuracy after 464 s, BENCHMARKS.md):
batch 64, 3 epochs (2812 steps), warmup over 0.05 epochs from 0 to lr 0.125 (0.5 at batch
256, linear scaling), cosine decay to 0, momentum 0.9, weight decay 5e-4, trust
coefficient 0.02, no augmentation (it slows convergence in such a short run), the test set
evaluated at the end.
Each field carries its help text in `field(metadata={"help": ...})`, from which the
command line interface builds its flags and `--help`.

Batch-norm statistics span (`bn_span`), which changes results at large batch:

* ``"device"``: each device normalises over its own slice of the global batch
  (``batch_size / num_devices / grad_accum_steps`` examples); the usual data-parallel
  default (Goyal et al. use 32 examples per worker).
* ``"global"``: statistics are averaged over all devices (cross-device BN through the
  model's ``bn_axis_name``), i.e. over one whole micro-batch; what a single device with the
  same micro-batch computes.
* ``"ghost"``: fixed-size ghost groups of ``bn_ghost_size`` examples, independent of the
  number of devices (as MLPerf's ``bn_span``; Masters & Luschi find 4-8 best on CIFAR).

With gradient accumulation, statistics never span micro-batches: each micro-batch is
normalised on its own, and the running statistics (used at evaluation) are updated once per
step from the mean of the micro-batches' statistics, as across devices; so ``k``
micro-batches on one device give the running statistics of ``k`` devices.

Which options apply to which optimizer, norm, span and schedule is the table `APPLIES`:
`validate` refuses (ValueError) or warns about (`ConfigWarning`) a non-default value that
has no effect in the chosen combination (docs/cli.md lists the rules).

References:
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017
  (arXiv 1708.03888).
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017
  (arXiv 1706.02677).
  Masters, Luschi, "Revisiting Small Batch Training for Deep Neural Networks", 2018
  (arXiv 1804.07612).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

from lars_jax.data.info import DATASET_NAMES, dataset_info
from lars_jax.models import MODEL_NAMES
from lars_jax.runs.config_io import field_specs
from lars_jax.schedules import mlperf_total_steps

Optimizer = Literal["sgd", "lars", "larc", "clars"]
Norm = Literal["batch", "group", "none"]
BnSpan = Literal["device", "global", "ghost"]
LrScaling = Literal["linear", "sqrt", "none"]
WarmupStart = Literal["base", "zero"]
ScheduleName = Literal["cosine", "poly2", "linear", "constant", "step", "onecycle", "mlperf"]
Denominator = Literal["paper", "optax"]
ClarsGranularity = Literal["example", "device", "micro_batch"]
DType = Literal["float32", "bfloat16"]
Parallel = Literal["jit", "pmap"]
NanPolicy = Literal["stop", "skip"]
InputPipeline = Literal["auto", "device", "host"]


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A field with its ``--help`` text (and ``choices`` where the type is not a Literal)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """All settings of one training run (see the module docstring for `bn_span`)."""

    # The --help groups: title -> the first field of the group (fields are in order).
    GROUPS: ClassVar[dict[str, str]] = {
        "Model": "model", "Data": "dataset", "Optimizer": "optimizer",
        "Batch and length": "batch_size", "Parallelism": "parallel",
        "Run management": "seed"}

    # Model.
    model: str = _f("resnet20", f"Model name, one of {', '.join(MODEL_NAMES)}.",
                    choices=MODEL_NAMES)
    width: float = _f(1.0, "Width multiplier of the model's channels.")
    norm: Norm = _f("batch", "Normalisation layers: batch, group or none.")
    bn_span: BnSpan = _f(
        "device",
        "Batch-norm statistics span: device (each device's slice), global (whole micro-batch "
        "across devices) or ghost (groups of bn_ghost_size examples). Changes results at "
        "large batch.",
    )
    bn_ghost_size: int = _f(32, "Ghost batch size for bn_span=ghost.")
    zero_init_last_bn: bool = _f(False, "Zero-initialise the last BN scale of each block.")

    # Data.
    dataset: str = _f("fashion_mnist", f"Data set, one of {', '.join(DATASET_NAMES)}.",
                      choices=DATASET_NAMES)
    data_dir: str | None = _f(None, "Data directory (default: the data module's search path).")
    train_subset: int | None = _f(
        None, "Use only the first N training examples (None: all), for fast experiments."
    )
    test_subset: int | None = _f(None, "Evaluate on only the first N test examples.")
    crop_padding: int = _f(
        0, "Random-crop padding in pixels (0: no crop augmentation; 2-4 for longer runs).")
    flip: bool = _f(False, "Random horizontal flips (off for the sub-epoch default job).")
    cutout: int = _f(0, "Cutout square size in pixels (0: off).")
    # Host streaming (lars_jax.train.input_pipeline).
    input_pipeline: InputPipeline = _f(
        "auto", "Input path: device (whole data set in device memory), host (stream batches "
        "from the TFDS source through grain) or auto (host when the data set does not fit "
        "on the device: imagenet2012).")
    image_size: int | None = _f(
        None, "Side of the host-decoded images of imagenet2012 (None: 224).")
    input_threads: int = _f(8, "Host input pipeline: decoding threads per process.")

    # Optimizer.
    optimizer: Optimizer = _f("lars", "Optimizer: sgd, lars, larc or clars.")
    learning_rate: float = _f(
        0.5, "Base (peak) learning rate at base_batch_size, before scaling."
    )
    base_batch_size: int = _f(256, "Batch size at which learning_rate is given.")
    lr_scaling: LrScaling = _f(
        "linear",
        "Scale the learning rate from base_batch_size to batch_size: linear (x B/B0, "
        "Goyal et al.), sqrt (x sqrt(B/B0)) or none.",
    )
    warmup_epochs: float = _f(0.05, "Gradual warmup length in epochs (0: no warmup).")
    warmup_start: WarmupStart = _f(
        "zero",
        "Warmup starts from: base (the unscaled learning_rate, Goyal et al.) or zero (MLPerf).",
    )
    schedule: ScheduleName = _f(
        "cosine",
        "Decay after warmup: cosine, poly2 (LARS paper), linear, constant, step "
        "(/10 at 50% and 75%), onecycle, mlperf (lars_jax.mlperf_lars_schedule: warmup from 0, "
        "then poly2 to end_learning_rate).",
    )
    end_learning_rate: float = _f(
        0.0,
        "Final learning rate of cosine, poly2, linear and mlperf (reached at the end of the "
        "run). The other schedules have a fixed end and refuse a value other than 0: "
        "constant stays at the peak, step ends at peak/100, onecycle at peak/250000.",
    )
    momentum: float = _f(0.9, "Momentum coefficient.")
    nesterov: bool = _f(False, "Nesterov momentum.")
    weight_decay: float = _f(5e-4, "Weight decay (L2) coefficient.")
    trust_coefficient: float = _f(
        0.02,
        "LARS/LARC/CLARS trust coefficient (eta; the paper uses 0.001 with a 20-50x larger "
        "learning rate; 0.02 keeps the plain-SGD rate of biases and BN parameters moderate).",
    )
    denominator: Denominator = _f(
        "paper",
        "Trust-ratio denominator: paper (||g|| + wd ||w||) or optax (||g + wd w||).",
    )
    clip: bool = _f(
        False,
        "Clip the trust ratio at 1 (LARC) with optimizer lars or clars (larc always clips).")
    clars_granularity: ClarsGranularity = _f(
        "example",
        "CLARS gradient norms: example (exact per-example), device (each device's local "
        "gradient, free), micro_batch (each accumulation micro-batch).",
    )
    label_smoothing: float = _f(0.0, "Label smoothing of the cross-entropy loss.")

    # Batch and length.
    batch_size: int = _f(64, "Global batch size (all devices, all accumulation steps).")
    grad_accum_steps: int = _f(
        1, "Gradient accumulation micro-batches per step (lax.scan over micro-batches)."
    )
    epochs: float = _f(3.0, "Training length in epochs (may be fractional).")
    dtype: DType = _f("bfloat16", "Compute dtype (float32 or bfloat16); params stay float32.")

    # Parallelism.
    parallel: Parallel = _f(
        "jit", "Data-parallel path: jit (Mesh + sharding) or pmap (jax.pmap with pmean)."
    )
    num_devices: int | None = _f(None, "Number of local devices to use (None: all).")
    steps_per_call: int = _f(
        1, "Optimizer steps per compiled call (lax.scan; jit path): fewer dispatches for "
        "small models and batches. Calls stop at log, eval and checkpoint steps."
    )
    coordinator_address: str | None = _f(
        None, "Multi-host: host:port of process 0 (or env JAX_COORDINATOR_ADDRESS)."
    )
    num_processes: int | None = _f(None, "Multi-host: number of processes.")
    process_id: int | None = _f(None, "Multi-host: this process's id.")

    # Run management.
    seed: int = _f(0, "Random seed (init, data order and augmentation derive from it).")
    workdir: str = _f("runs/default", "Output folder: metrics, checkpoints, summary, plots.")
    checkpoint_every_steps: int = _f(
        200, "Save a checkpoint every N steps (0: only at the end; -1: never)."
    )
    keep_checkpoints: int = _f(3, "Number of checkpoints to keep.")
    resume: bool = _f(True, "Resume from the latest good checkpoint in workdir, if any.")
    nan_policy: NanPolicy = _f(
        "stop", "On NaN/Inf loss, gradients or updated parameters: stop (with a clear error) "
        "or skip the step (parameters, optimizer state and schedule stay as they were)."
    )
    max_skipped_fraction: float = _f(
        0.1, "nan_policy=skip: stop the run (exit 1) once more than this fraction of its "
        "steps were skipped."
    )
    eval_every_epochs: float = _f(
        0.0, "Evaluate on the test set every N epochs (0: only at the end).")
    eval_batch_size: int = _f(1000, "Evaluation batch size.")
    log_every_steps: int = _f(10, "Write a metrics row every N steps.")
    log_layer_stats: bool = _f(
        False, "Log per-layer trust ratios, weight norms and gradient norms."
    )
    log_diagnostics: bool = _f(
        False, "Log lars_jax.diagnostics.layer_diagnostics (weight-norm equilibrium)."
    )
    tensorboard: bool = _f(False, "Also write TensorBoard summaries (needs tensorboardX).")
    plot: bool = _f(True, "Write an end-of-run plot (PNG) of the loss/accuracy curves.")
    progress: bool = _f(True, "Show a tqdm progress bar.")
    mlperf: bool = _f(
        False, "MLPerf mode (BUILD.md, MLPerf-style runs): the reference's step counting "
        "(ceil(N/B) steps per epoch, poly decay over total - warmup + 1 steps), the remainder "
        "batch kept "
        "(padded, masked in the loss and the BN statistics), evaluation every 4 epochs, stop "
        "at target_accuracy, MLLOG lines in <workdir>/mlperf_log.txt.")
    target_accuracy: float = _f(
        0.759, "MLPerf mode: stop at the first evaluation reaching this top-1 accuracy (the "
        "rules' 75.9%).")

    # ------------------------------------------------------------------ helpers

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Builds a config from a dict; unknown keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> TrainConfig:
        return cls.from_dict(json.loads(s))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

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
            epoch_steps = mlperf_total_steps(num_train, self.batch_size, 1)
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

    def validate(self, device_count: int | None = None, num_train: int | None = None
                 ) -> TrainConfig:
        """Checks every field; raises ValueError naming the field. Returns self.

        A value that has no effect in the chosen combination (the table `APPLIES`) is
        refused, or only warned about (`ConfigWarning`) where a shared base config of a
        sweep may mean it for its other runs.

        Args:
          device_count: the number of devices the run will use (global across processes);
            when given, the global batch must be divisible by it times grad_accum_steps.
            Defaults to `num_devices` when that is set.
          num_train: the number of training examples (default: the data set's size after
            ``train_subset``), for the checks that depend on the number of steps.
        """
        def bad(name: str, msg: str) -> None:
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {msg}")

        def warn(name: str, msg: str) -> None:
            # stacklevel 1: one location, so each message is shown once per process
            warnings.warn(f"TrainConfig.{name}={getattr(self, name)!r}: {msg}", ConfigWarning,
                          stacklevel=1)

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                bad(f.name, "must be finite")

        for spec in field_specs(type(self)):  # the Literal types and the registries' names
            value = getattr(self, spec.name)
            if spec.choices and value not in spec.choices \
                    and not (value is None and spec.optional):
                bad(spec.name, f"must be one of {', '.join(map(str, spec.choices))}")
        if self.width <= 0:
            bad("width", "must be > 0")
        if self.bn_ghost_size < 1:
            bad("bn_ghost_size", "must be >= 1")
        for name in ("train_subset", "test_subset", "num_devices", "num_processes"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(name, "must be >= 1 or None")
        if self.process_id is not None and self.process_id < 0:
            bad("process_id", "must be >= 0")
        if (self.num_processes is not None and self.process_id is not None
                and self.process_id >= self.num_processes):
            bad("process_id", f"must be < num_processes={self.num_processes}")
        if self.input_pipeline == "device" and not dataset_info(self.dataset).fits_on_device:
            bad("input_pipeline", f"{self.dataset} does not fit on the device: use host or auto")
        if self.image_size is not None and (self.image_size < 1
                                            or dataset_info(self.dataset).fits_on_device):
            bad("image_size", "must be >= 1, and only for data sets cropped on the host "
                "(imagenet2012); None otherwise")
        if self.input_threads < 1:
            bad("input_threads", "must be >= 1")
        if self.crop_padding < 0:
            bad("crop_padding", "must be >= 0")
        if self.cutout < 0:
            bad("cutout", "must be >= 0")
        if self.learning_rate <= 0:
            bad("learning_rate", "must be > 0")
        if self.end_learning_rate < 0:
            bad("end_learning_rate", "must be >= 0")
        if self.base_batch_size < 1:
            bad("base_batch_size", "must be >= 1")
        if self.epochs <= 0:
            bad("epochs", "must be > 0")
        if self.warmup_epochs < 0:
            bad("warmup_epochs", "must be >= 0")
        if self.schedule == "mlperf" and self.warmup_start != "zero":
            bad("warmup_start", "schedule='mlperf' warms up from 0: use warmup_start='zero'")
        if self.warmup_epochs > self.epochs:
            bad("warmup_epochs", f"must be <= epochs={self.epochs}")
        if not 0 <= self.momentum < 1:
            bad("momentum", "must be in [0, 1)")
        if self.nesterov and self.momentum == 0:
            bad("nesterov", "needs momentum > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.trust_coefficient <= 0:
            bad("trust_coefficient", "must be > 0")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1)")
        if self.batch_size < 1:
            bad("batch_size", "must be >= 1")
        if self.grad_accum_steps < 1:
            bad("grad_accum_steps", "must be >= 1")
        if self.checkpoint_every_steps < -1:
            bad("checkpoint_every_steps", "must be >= -1")
        if self.keep_checkpoints < 1:
            bad("keep_checkpoints", "must be >= 1")
        if not 0 <= self.max_skipped_fraction <= 1:
            bad("max_skipped_fraction", "must be in [0, 1]")
        if self.eval_every_epochs < 0:
            bad("eval_every_epochs", "must be >= 0")
        if self.eval_batch_size < 1:
            bad("eval_batch_size", "must be >= 1")
        if self.log_every_steps < 1:
            bad("log_every_steps", "must be >= 1")
        if self.steps_per_call < 1:
            bad("steps_per_call", "must be >= 1")
        if self.steps_per_call > 1 and self.parallel != "jit":
            bad("steps_per_call", "> 1 needs parallel='jit'")
        if not self.workdir:
            bad("workdir", "must be a non-empty path")
        if self.clars_granularity == "micro_batch" and self.optimizer == "clars" \
                and self.grad_accum_steps < 2:
            bad("clars_granularity", "micro_batch needs grad_accum_steps >= 2")
        if self.optimizer == "clars" and self.denominator != "paper":
            bad("denominator", "clars supports only denominator='paper'")
        if self.norm == "batch" and self.bn_span == "ghost" and self.bn_ghost_size == 1:
            bad("bn_ghost_size", "batch norm over 1 example outputs its bias only (use >= 2)")
        if self.norm == "batch" and self.bn_span == "global" \
                and self.batch_size == self.grad_accum_steps:
            bad("batch_size", "a micro-batch of 1 example: batch norm over 1 example outputs "
                "its bias only (use norm='none' or fewer grad_accum_steps)")
        for name, rule in APPLIES.items():
            default = _DEFAULTS[name]
            if getattr(self, name) != default and not rule.applies(self):
                (bad if rule.otherwise == "refuse" else warn)(
                    name, f"has no effect: it applies only with {rule.when} "
                    f"(leave it at {default!r})")

        n = device_count if device_count is not None else self.num_devices
        if n is not None:
            if self.batch_size % (n * self.grad_accum_steps):
                bad(
                    "batch_size",
                    f"global batch must be divisible by devices x grad_accum_steps = "
                    f"{n} x {self.grad_accum_steps} = {n * self.grad_accum_steps}",
                )
            mb = self.micro_batch_size(n)
            if self.norm == "batch" and self.bn_span == "ghost" and mb % self.bn_ghost_size:
                bad(
                    "bn_ghost_size",
                    f"must divide the per-device micro-batch of {mb} examples",
                )
            if (self.optimizer == "clars" and self.clars_granularity == "device" and n < 2):
                bad("clars_granularity", "device needs >= 2 devices (use example)")
            if (self.norm == "batch" and self.bn_span == "device"
                    and self.batch_size == n * self.grad_accum_steps):
                bad("batch_size", f"1 example per device and micro-batch ({n} devices x "
                    f"{self.grad_accum_steps} micro-batches): batch norm over 1 example "
                    "outputs its bias only (use bn_span='global' or norm='none')")
        if self.train_subset is not None and self.train_subset < self.batch_size:
            bad("train_subset", f"must be >= batch_size={self.batch_size}")
        if self.mlperf:
            self._validate_mlperf(n, num_train, bad)
        self._validate_steps(num_train, bad, warn)
        return self

    def _validate_mlperf(self, device_count: int | None, num_train: int | None,
                         bad: Callable[[str, str], None]) -> None:
        """The settings MLPerf mode follows or supports (`mlperf`)."""
        if not 0 < self.target_accuracy <= 1:
            bad("target_accuracy", "must be in (0, 1]")
        wanted = {"optimizer": "lars", "schedule": "mlperf", "denominator": "paper",
                  "clip": False, "eval_every_epochs": 4, "steps_per_call": 1}
        for name, value in wanted.items():
            if getattr(self, name) != value:
                bad(name, f"MLPerf mode (mlperf=True) needs {name}={value!r} (the ResNet-50 "
                    "LARS rules and reference)")
        if self.norm == "batch" and self.bn_span != "device":
            bad("bn_span", "MLPerf mode masks the padding of the remainder batch out of each "
                "device's BN statistics: use bn_span='device' (the recipes' setting)")
        if not self.uses_host_input():
            bad("input_pipeline", "MLPerf mode streams from the host (host, or auto for "
                "imagenet2012)")
        if self.epochs != int(self.epochs):
            bad("epochs", "MLPerf mode counts whole epochs: must be an integer")
        if num_train is None:
            num_train = self.num_train_examples()
        spe = mlperf_total_steps(num_train, self.batch_size, 1)
        if self.warmup_epochs * spe != int(self.warmup_epochs * spe):
            bad("warmup_epochs", f"MLPerf mode: warmup_epochs x {spe} steps per epoch must be "
                "a whole number of steps")
        rest = num_train % self.batch_size
        groups = (device_count or 1) * self.grad_accum_steps
        if rest and rest < groups:
            bad("batch_size", f"MLPerf mode keeps the last {rest} examples of each epoch as a "
                f"padded batch, fewer than the {groups} devices x micro-batches that each "
                "need one")

    def _validate_steps(self, num_train: int | None, bad: Callable[[str, str], None],
                        warn: Callable[[str, str], None]) -> None:
        """The checks that depend on the number of steps of the run."""
        if num_train is None:
            try:
                num_train = self.num_train_examples()
            except ValueError:  # an unknown data set was refused above
                return
        epoch_steps, total_steps = self.run_steps(num_train)
        eval_every = int(round(self.eval_every_epochs * epoch_steps))
        if self.eval_every_epochs > 0 and eval_every == 0:
            bad("eval_every_epochs", f"rounds to 0 steps at {epoch_steps} steps per epoch "
                f"(use 0, or {1 / epoch_steps:.3g} for every step)")
        warmup = int(round(self.warmup_epochs * epoch_steps))
        if (self.warmup_epochs not in (0, _DEFAULTS["warmup_epochs"]) and warmup == 0
                and self.schedule != "onecycle"):
            warn("warmup_epochs", f"rounds to 0 steps at {epoch_steps} steps per epoch: "
                 "no warmup")
        if (self.warmup_start == "base" and warmup > 0 and self.schedule != "onecycle"
                and self._peak_learning_rate() <= self.learning_rate):
            warn("warmup_start", "the scaled peak rate is not above learning_rate (batch_size "
                 "<= base_batch_size or lr_scaling='none'): the warmup is flat")
        k = self.steps_per_call
        if k > 1:
            stops = {"log_every_steps": self.log_every_steps, "epochs": total_steps}
            if eval_every:
                stops["eval_every_epochs"] = eval_every
            if self.checkpoint_every_steps > 0:
                stops["checkpoint_every_steps"] = self.checkpoint_every_steps
            name, every = min(stops.items(), key=lambda item: item[1])
            if k > every:
                why = (f"the run has {every} steps" if name == "epochs"
                       else f"calls stop every {every} steps ({name})")
                # a speed setting with no effect on results: a sweep's shared base config
                # may mean it for its other runs, so a warning, not a refusal
                warn("steps_per_call", f"never used: {why} (every call runs single steps); "
                     f"use steps_per_call <= {every}")
            uneven = [name for name, every in stops.items()
                      if name != "epochs" and every % k]
            if uneven:
                warn("steps_per_call", f"{', '.join(uneven)} not a multiple of it: some "
                     "calls run single steps")

    def _peak_learning_rate(self) -> float:
        """``learning_rate`` scaled from ``base_batch_size`` to ``batch_size``."""
        ratio = self.batch_size / self.base_batch_size
        factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[self.lr_scaling]
        return self.learning_rate * factor


class ConfigWarning(UserWarning):
    """A config value with no effect in its run, which a sweep's base config may mean."""


class Applies(NamedTuple):
    """Where a field has an effect (see `APPLIES`).

    Attributes:
      when: the condition in words (for messages and docs/cli.md's table).
      applies: ``applies(config)``: True where the field has an effect.
      otherwise: a non-default value where it has no effect is refused ("refuse") or only
        warned about ("warn": a setting of another optimizer, span or schedule that a sweep
        over those may share in its base config).
    """

    when: str
    applies: Callable[[TrainConfig], bool]
    otherwise: Literal["refuse", "warn"]


APPLIES: dict[str, Applies] = {
    "bn_span": Applies("norm='batch'", lambda c: c.norm == "batch", "refuse"),
    "bn_ghost_size": Applies("norm='batch' and bn_span='ghost'",
                             lambda c: c.norm == "batch" and c.bn_span == "ghost", "warn"),
    "zero_init_last_bn": Applies("norm='batch' or 'group'", lambda c: c.norm != "none",
                                 "refuse"),
    "trust_coefficient": Applies("optimizer lars, larc or clars",
                                 lambda c: c.optimizer != "sgd", "warn"),
    "denominator": Applies("optimizer lars or larc",
                           lambda c: c.optimizer in ("lars", "larc"), "warn"),
    "clip": Applies("optimizer lars or clars (larc always clips)",
                    lambda c: c.optimizer in ("lars", "clars"), "warn"),
    "clars_granularity": Applies("optimizer clars", lambda c: c.optimizer == "clars", "warn"),
    "end_learning_rate": Applies(
        "schedule cosine, poly2, linear or mlperf (constant, step and onecycle have a "
        "fixed end)", lambda c: c.schedule in ("cosine", "poly2", "linear", "mlperf"),
        "refuse"),
    "warmup_start": Applies(
        "warmup_epochs > 0 and a schedule other than onecycle and mlperf (mlperf refuses "
        "'base')", lambda c: c.warmup_epochs > 0 and c.schedule not in ("onecycle", "mlperf"),
        "warn"),
    "keep_checkpoints": Applies("checkpoint_every_steps >= 0",
                                lambda c: c.checkpoint_every_steps >= 0, "warn"),
    "max_skipped_fraction": Applies("nan_policy='skip'", lambda c: c.nan_policy == "skip",
                                    "warn"),
    "input_threads": Applies("the host input pipeline (input_pipeline host, or auto for a "
                             "data set that does not fit on the device)",
                             lambda c: c.uses_host_input(), "warn"),
    "target_accuracy": Applies("mlperf=True", lambda c: c.mlperf, "refuse"),
}
"""The fields that apply only in some combinations; every other field always applies
(`ALWAYS_APPLIES`). A new field must be added to one of the two (the tests check it)."""

ALWAYS_APPLIES: frozenset[str] = frozenset({
    "model", "width", "norm", "dataset", "data_dir", "train_subset", "test_subset",
    "crop_padding", "flip", "cutout", "optimizer", "learning_rate", "base_batch_size",
    "lr_scaling", "warmup_epochs", "schedule", "momentum", "nesterov", "weight_decay",
    "label_smoothing", "batch_size", "grad_accum_steps", "epochs", "dtype", "parallel",
    "num_devices", "steps_per_call", "coordinator_address", "num_processes", "process_id",
    "seed", "workdir", "checkpoint_every_steps", "resume", "nan_policy",
    "eval_every_epochs", "eval_batch_size", "log_every_steps", "log_layer_stats",
    "log_diagnostics", "tensorboard", "plot", "progress", "input_pipeline", "image_size",
    "mlperf"})
"""Fields with an effect in every combination (`steps_per_call`, `eval_every_epochs`,
`nesterov`, `batch_size`, `input_pipeline`, `image_size` have their own checks in
`TrainConfig.validate`)."""

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
