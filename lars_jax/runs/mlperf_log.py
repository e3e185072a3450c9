"""MLPerf-style logs of a training run: MLLOG lines in ``<workdir>/mlperf_log.txt``.

With ``TrainConfig.mlperf`` the trainer writes the log that the MLPerf Training rules
require of a ResNet-50 submission, through the logger of the ``mlperf-logging`` package
(``mlperf_logging.mllog``; one ``:::MLLOG {json}`` line per event), so that the package's
compliance checker reads it::

    python -m mlperf_logging.compliance_checker --usage training --ruleset 4.0.0 \\
        runs/<workdir>/mlperf_log.txt

What is logged, in order: ``cache_clear``, ``init_start``, the submission tags
(``submission_org`` "lars_jax", ``submission_platform`` "<devices>x<device kind>",
``submission_division`` "closed", ``submission_status`` "research",
``submission_benchmark`` "resnet"), the hyperparameters (`hyperparameters`: ``seed``,
``global_batch_size``, ``gradient_accumulation_steps``, ``opt_name`` "lars", the
``lars_*`` keys, ``label_smoothing``, ``model_bn_span``, ``train_samples``,
``eval_samples``), ``init_stop``, ``run_start``; then per block of 4 epochs
``block_start``, ``epoch_start`` / ``epoch_stop`` per epoch, ``eval_start``,
``eval_accuracy``, ``eval_stop``, ``block_stop``; and ``run_stop`` with status "success"
at the first evaluation reaching the target accuracy (the run stops there) or "aborted"
when the run ends without reaching it. Epochs are numbered from 1, as in the references.

Only process 0 writes. The ResNet benchmark was retired after MLPerf Training v4.0, so the
log is checked against the ``4.0.0`` training ruleset (`RULESET`).

References:
  MLCommons, MLPerf Training rules (training_policies ``training_rules.adoc``) and
  logging (mlcommons/logging: ``mlperf_logging.mllog`` and the compliance checker's
  ``training_4.0.0`` rules).
  Google's MLPerf Training v0.7 JAX ResNet-50 submission (mlcommons/training_results_v0.7,
  ``train.py``): the block/eval event sequence.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, NamedTuple

LOG_FILE = "mlperf_log.txt"
RULESET = "4.0.0"
"""The last MLPerf Training ruleset with the ResNet-50 benchmark."""
TARGET_ACCURACY = 0.759
"""The rules' quality target for ResNet-50: 75.9% top-1 on the ImageNet validation set."""
EPOCHS_PER_BLOCK = 4
"""The rules' evaluation interval for ResNet-50, in epochs."""


class MlperfSteps(NamedTuple):
    """The step counts an MLPerf run logs and follows.

    Attributes:
      steps_per_epoch: ``ceil(num_train / batch_size)`` (the remainder batch kept).
      total_steps: ``epochs * steps_per_epoch``.
      warmup_steps: ``warmup_epochs * steps_per_epoch``.
      decay_steps: ``total_steps - warmup_steps + 1``.
    """

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    decay_steps: int


def _mllogger_class() -> Any:
    """`mlperf_logging.mllog.mllog.MLLogger` (ImportError with the install line)."""
    try:
        from mlperf_logging.mllog.mllog import MLLogger
    except ImportError as err:  # the optional "mlperf" extra
        raise ImportError("TrainConfig.mlperf=True needs the mlperf-logging package: "
                          "pip install 'lars_jax[mlperf]'") from err
    return MLLogger


def hyperparameters(config: Any, steps: MlperfSteps, *, peak_lr: float, num_train: int,
                    num_eval: int, num_devices: int) -> list[tuple[str, Any]]:
    """The ``(key, value)`` events a run logs between ``init_start`` and ``init_stop``.

    Args:
      config: the run's `lars_jax.train.TrainConfig`.
      steps: the run's step counts.
      peak_lr: the learning rate at the end of the warmup (``lars_opt_base_learning_rate``).
      num_train: training examples per epoch.
      num_eval: evaluation examples.
      num_devices: data-parallel devices (for ``model_bn_span``).
    """
    return [
        ("seed", config.seed),
        ("global_batch_size", config.batch_size),
        ("gradient_accumulation_steps", config.grad_accum_steps),
        ("opt_name", "lars"),
        ("lars_opt_base_learning_rate", peak_lr),
        ("lars_opt_end_learning_rate", config.end_learning_rate),
        ("lars_opt_learning_rate_warmup_epochs", config.warmup_epochs),
        ("lars_opt_learning_rate_decay_steps", steps.decay_steps),
        ("lars_opt_learning_rate_decay_poly_power", 2),
        ("lars_opt_weight_decay", config.weight_decay),
        ("lars_opt_momentum", config.momentum),
        ("lars_epsilon", 0.0),
        ("label_smoothing", config.label_smoothing),
        ("model_bn_span", config.batch_size // (num_devices * config.grad_accum_steps)),
        ("train_samples", num_train),
        ("eval_samples", num_eval),
    ]


class MlperfLog:
    """The MLLOG file of one run and the block/epoch/eval bookkeeping (module docstring).

    Args:
      workdir: the run's folder; the log is ``<workdir>/mlperf_log.txt`` (overwritten).
      steps: the run's step counts.
      target_accuracy: the top-1 accuracy at which the run stops (``run_stop`` success).
      enabled: False on processes other than 0 (every method is then a no-op).
      init_time_ms: when initialisation started (ms since the epoch), for ``init_start``.
    """

    def __init__(self, workdir: str | os.PathLike[str], steps: MlperfSteps,
                 target_accuracy: float, *, enabled: bool = True,
                 init_time_ms: int | None = None) -> None:
        self.steps = steps
        self.target_accuracy = target_accuracy
        self.path = os.path.join(os.fspath(workdir), LOG_FILE)
        self._log: Any = None
        self._handler: logging.Handler | None = None
        self.status: str | None = None
        if not enabled:
            return
        mllogger = _mllogger_class()
        os.makedirs(os.fspath(workdir), exist_ok=True)
        logger = logging.getLogger(f"lars_jax.mlperf_log.{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        self._handler = logging.FileHandler(self.path, mode="w")
        logger.addHandler(self._handler)
        self._log = mllogger(logger=logger, default_stack_offset=2)
        self._log.event("cache_clear", True)
        self._log.start("init_start", time_ms=init_time_ms)

    def _event(self, kind: str, key: str, value: Any = None, **metadata: Any) -> None:
        if self._log is not None:
            getattr(self._log, kind)(key, value, metadata=metadata or None)

    def _epoch(self, step: int) -> int:
        """The 1-based epoch that step number `step` (0-based) belongs to."""
        return step // self.steps.steps_per_epoch + 1

    def _block(self, first_epoch: int) -> dict[str, int]:
        epochs = self.steps.total_steps // self.steps.steps_per_epoch
        return {"first_epoch_num": first_epoch,
                "epoch_count": min(EPOCHS_PER_BLOCK, epochs - first_epoch + 1)}

    def header(self, platform: str, events: list[tuple[str, Any]]) -> None:
        """The submission tags and the `hyperparameters` events."""
        for key, value in [("submission_org", "lars_jax"), ("submission_platform", platform),
                           ("submission_division", "closed"),
                           ("submission_status", "research"),
                           ("submission_benchmark", "resnet"), *events]:
            self._event("event", key, value)

    def run_start(self, step: int = 0) -> None:
        """``init_stop`` and ``run_start``, then the first block and epoch."""
        self._event("end", "init_stop")
        self._event("start", "run_start")
        self._open(step)

    def _open(self, step: int) -> None:
        epoch = self._epoch(step)
        if (epoch - 1) % EPOCHS_PER_BLOCK == 0:
            self._event("start", "block_start", **self._block(epoch))
        self._event("start", "epoch_start", epoch_num=epoch)

    def step_done(self, step: int) -> None:
        """After `step` steps: closes an epoch that ends there, and opens the next one
        unless an evaluation is due (`evaluated` opens it then)."""
        spe = self.steps.steps_per_epoch
        if step % spe:
            return
        self._event("end", "epoch_stop", epoch_num=step // spe)
        if (step // spe) % EPOCHS_PER_BLOCK and step < self.steps.total_steps:
            self._open(step)

    def eval_start(self, step: int) -> None:
        self._event("start", "eval_start", epoch_num=math.ceil(step / self.steps.steps_per_epoch))

    def evaluated(self, step: int, accuracy: float) -> bool:
        """Logs an evaluation after `step` steps; True (and ``run_stop`` success) when it
        reaches the target."""
        epoch = math.ceil(step / self.steps.steps_per_epoch)
        self._event("event", "eval_accuracy", float(accuracy), epoch_num=epoch)
        self._event("end", "eval_stop", epoch_num=epoch)
        first = (epoch - 1) // EPOCHS_PER_BLOCK * EPOCHS_PER_BLOCK + 1
        self._event("end", "block_stop", **self._block(first))
        if accuracy >= self.target_accuracy:
            self.finish("success")
            return True
        if step < self.steps.total_steps:
            self._open(step)
        return False

    def finish(self, status: str) -> None:
        """``run_stop`` with `status` ("success" or "aborted"), once."""
        if self.status is None:
            self.status = status
            self._event("end", "run_stop", status=status)

    def close(self) -> None:
        """Flushes and closes the file (``run_stop`` "aborted" if the run had none)."""
        self.finish("aborted")
        if self._handler is not None:
            self._log.logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
