"""Training configuration: one flat dataclass, validated before any compute.

Every field has a default; the defaults are the README's main job: ResNet-20 on
Fashion-MNIST with LARS, sized for well under 10 minutes on a 2-core CPU (where ResNet-20
trains at only ~200 images/s in bfloat16 when idle; bfloat16 is faster than float32 there):
batch 64, 1.25 epochs (1171 steps), warmup over 0.05 epochs from 0 to lr 0.125 (0.5 at batch
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
normalised on its own.

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
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from lars_jax.config_io import field_specs
from lars_jax.data.info import DATASET_NAMES, dataset_info
from lars_jax.models import MODEL_NAMES

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
    end_learning_rate: float = _f(0.0, "Final learning rate of the decaying schedules.")
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
    clip: bool = _f(False, "Clip the LARS trust ratio at 1 (LARC) when optimizer is lars.")
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
    epochs: float = _f(1.25, "Training length in epochs (may be fractional).")
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

    def validate(self, device_count: int | None = None) -> TrainConfig:
        """Checks every field; raises ValueError naming the field. Returns self.

        Args:
          device_count: the number of devices the run will use (global across processes);
            when given, the global batch must be divisible by it times grad_accum_steps.
            Defaults to `num_devices` when that is set.
        """
        def bad(name: str, msg: str) -> None:
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {msg}")

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
        if self.norm != "batch" and self.bn_span == "ghost":
            bad("bn_span", "ghost batch norm needs norm='batch'")
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
        if self.train_subset is not None and self.train_subset < self.batch_size:
            bad("train_subset", f"must be >= batch_size={self.batch_size}")
        return self
