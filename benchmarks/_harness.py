"""Shared helpers for the benchmark scripts: timing, machine description, JSON output.

Every benchmark compares variants *side by side in one run*: `compare` interleaves the
variants round by round, so that background load on a shared machine hits all of them
alike, and reports each variant's median together with its ratio to a baseline.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def time_call(fn: Callable[[], Any], *, warmup: int = 2, iters: int = 10) -> list[float]:
    """Seconds per call of `fn()` (which must return JAX arrays or None), after `warmup` calls."""
    for _ in range(warmup):
        _block(fn())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - t0)
    return times


def compare(
    variants: dict[str, Callable[[], Any]],
    *,
    baseline: str | None = None,
    warmup: int = 2,
    rounds: int = 5,
    calls_per_round: int = 3,
) -> dict[str, dict[str, float]]:
    """Times several variants interleaved; returns median seconds per call and ratio to baseline.

    Args:
      variants: name -> zero-argument callable (already jitted and closed over its inputs).
      baseline: the name whose median defines ratio 1.0 (default: the first variant).
      warmup: untimed calls of each variant first (compilation happens here).
      rounds: rounds; in each round every variant runs `calls_per_round` timed calls.
      calls_per_round: timed calls per variant per round.
    """
    for fn in variants.values():
        for _ in range(warmup):
            _block(fn())
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].extend(time_call(fn, warmup=0, iters=calls_per_round))
    baseline = baseline or next(iter(variants))
    base = statistics.median(samples[baseline])
    out = {}
    for name, s in samples.items():
        med = statistics.median(s)
        out[name] = {
            "median_s": med,
            "min_s": min(s),
            "ratio_to_" + baseline: med / base,
            "samples": len(s),
        }
    return out


def machine_info() -> dict[str, Any]:
    """Describes the machine and the software versions, for the results file."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages
            pass
    gpu = None
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": versions,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Prints rows as a GitHub markdown table and returns the text."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def write_results(name: str, rows: Sequence[dict[str, Any]], **extra: Any) -> Path:
    """Writes `benchmarks/results/<name>-<UTC date-time>.json` with machine info and rows."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    payload = {"benchmark": name, "machine": machine_info(), "rows": list(rows), **extra}
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {path}")
    return path


def synthetic_data(shape: tuple[int, ...], num_train: int, num_test: int) -> Any:
    """Random uint8 images and 10-class labels for `lars_jax.train.build` (a step's cost does
    not depend on the pixel values)."""
    import numpy as np

    from lars_jax.train import Data

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_train + num_test, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, num_train + num_test).astype(np.int32)
    return Data(images[:num_train], labels[:num_train], images[num_train:], labels[num_train:],
                10, 0.5, 0.25)
