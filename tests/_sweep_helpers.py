"""A stand-in trainer for the sweep tests: writes the files a real run writes, instantly.

It tests the sweep's bookkeeping (resume, failures, records) without training; the real
trainer runs under a sweep in tests/test_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from lars_jax.train.config import TrainConfig


class TinyTrainer:
    """A real (if trivial) run function: writes metrics.jsonl and summary.json like the
    trainer does, counts calls, and can be told to fail or be interrupted on a run."""

    def __init__(self, interrupt_on: str | None = None, fail_on: str | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.interrupt_on = interrupt_on
        self.fail_on = fail_on

    def __call__(self, config: TrainConfig) -> dict:
        wd = Path(config.workdir)
        resumed = (wd / "checkpoint").exists()
        self.calls.append((wd.name, resumed))
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "checkpoint").write_text("step 1")
        if self.interrupt_on and self.interrupt_on in wd.name:
            raise KeyboardInterrupt
        if self.fail_on and self.fail_on in wd.name:
            raise FloatingPointError("non-finite loss at step 3")
        acc = 0.5 + config.seed / 100 + config.batch_size / 1e5
        (wd / "metrics.jsonl").write_text(
            json.dumps({"step": 1, "epoch": 1.0, "loss": 1.0, "test_accuracy": acc}) + "\n"
        )
        summary = {"status": "ok", "test_accuracy": acc, "steps": 1}
        (wd / "summary.json").write_text(json.dumps(summary))
        return summary


def tiny_base() -> TrainConfig:
    return TrainConfig(model="resnet8", width=0.25, train_subset=512, epochs=1.0)


