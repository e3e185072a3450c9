"""The GPU device check (`benchmarks/device_check.py`): its IDX reader, and its `--smoke` run.

The smoke run executes the whole script on the CPU with tiny sizes, in a subprocess that
cannot import tensorflow-datasets or grain (the GPU machine has neither),
so that the prepared GPU command cannot rot unnoticed.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_BLOCK = """
import importlib.abc, runpy, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow_datasets", "grain"):
            raise ModuleNotFoundError("not on the GPU machine: " + name, name=name)
sys.meta_path.insert(0, _Block())
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_round_trips_a_hand_written_file(tmp_path):
    import device_check

    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(device_check.read_idx(tmp_path / "x.gz"), arr)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0])))
    with pytest.raises(ValueError, match="unsigned-byte"):
        device_check.read_idx(tmp_path / "bad.gz")


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Debian fashion-mnist files missing")
def test_fashion_mnist_idx_files_load_with_the_published_sizes():
    import device_check

    d = device_check.load_fashion_mnist(FASHION_MNIST)
    # Xiao et al. 2017: 60,000 training and 10,000 test images of 28x28, 10 classes.
    assert d["train_x"].shape == (60000, 28, 28, 1) and d["test_x"].shape == (10000, 28, 28, 1)
    assert sorted(np.unique(d["test_y"]).tolist()) == list(range(10))
    assert np.bincount(d["train_y"]).tolist() == [6000] * 10


def test_peak_lookup_by_device_name():
    import device_check

    assert device_check.peak_tflops("NVIDIA H200", None) == 989.0
    assert device_check.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert device_check.peak_tflops("Some TPU", None) is None
    assert device_check.peak_tflops("Some TPU", 100.0) == 100.0


@pytest.mark.slow
def test_smoke_run_writes_json_and_markdown_without_tfds_or_grain(tmp_path):
    args = [sys.executable, "-c", _BLOCK, str(ROOT / "benchmarks" / "device_check.py"),
            "--smoke", "--out-dir", str(tmp_path)]
    if FASHION_MNIST.exists():
        args += ["--fashion-mnist-dir", str(FASHION_MNIST)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (js,) = tmp_path.glob("device_check-*.json")
    (md,) = tmp_path.glob("device_check-*.md")
    result = json.loads(js.read_text())
    assert result["smoke"] is True and result["versions"]["jax"]
    assert not [n for n in result["notes"] if "failed" in n], result["notes"]
    # the smoke compiles ResNet-8 in every section (the GPU run's ResNet-18/50/20 are built
    # and counted by tests/test_models.py)
    assert [r["model"] for r in result["throughput"]] == ["resnet8"]
    for row in result["throughput"]:
        assert row["jax_images_per_s"] > 0 and row["fwd_gmacs_per_image"] > 0
        if result["versions"]["torch"]:
            assert "torch_images_per_s" in row, result["notes"]
            assert row["torch_images_per_s"] > 0 and row["jax_over_torch"] > 0
    assert [(r["optimizer"], r["model"]) for r in result["clars"]] == [("lars", "resnet8"),
                                                                         ("clars", "resnet8")]
    assert result["clars"][1]["xla_peak_mib"] > 0
    if FASHION_MNIST.exists():
        evals = result["time_to_accuracy"]["evals"]
        assert evals and 0.0 <= evals[-1]["test_accuracy"] <= 1.0
        assert result["time_to_accuracy"]["model"] == "resnet8"
    assert "| resnet8 |" in md.read_text()
