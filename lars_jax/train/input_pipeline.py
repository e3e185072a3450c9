"""Host-streaming input for `train()`: data sets that do not fit on the device (ImageNet).

With ``TrainConfig.input_pipeline="host"`` (or ``"auto"`` for a data set whose
`DatasetInfo.fits_on_device` is False: imagenet2012), the trainer does not place the data
set on the devices. Instead `StreamingInput` reads per-step batches from the TFDS data
source with `lars_jax.data.host_batches` (grain worker threads decode JPEGs and apply the
host part of the augmentation), turns each process's slice into a global array sharded
over the ``"data"`` mesh axis (`jax.make_array_from_process_local_data`), and keeps
``prefetch`` such batches ahead on the devices from a background thread, so input overlaps
compute. The compiled train step is the same as on the in-memory path; only its
``prepare`` differs (`make_streaming_prepare`: optional device-side augmentation, then the
per-channel normalisation). In MLPerf mode (``TrainConfig.mlperf``) each epoch's remainder
is kept as a padded last step (`host_batches(remainder="pad")`): its padding rows carry label
-1, which the train step masks out of the loss and the BatchNorm statistics.

ImageNet preprocessing (in `host_batches`): Inception-style random-resized crop (area
8%-100%, aspect 3/4-4/3) and horizontal flip for training; resize so that the central
crop covers 87.5% of the shorter side, then centre crop, for evaluation; normalisation by
the per-channel mean and standard deviation on the device.

Several processes (multi-host, `jax.distributed`): process ``p`` of ``P`` reads the
``p``-th contiguous ``B / P`` rows of each global batch, which are the rows its devices hold
on the ``"data"`` mesh (checked when the input is built: a mesh that gives a process other
rows, or none, is refused), so together the processes read every example of an epoch once.

Exact resume: the global batch of step ``s`` is a function of ``(seed, s)`` only (each
epoch's record order is a permutation seeded by ``(seed, epoch)``, the crop and flip of
row ``r`` of step ``s`` are drawn from a generator seeded by ``(seed, s, r)``), whatever
the number of processes, so the step number stored in the checkpoint is the whole input
position: `StreamingInput.batch(s)` restarts the reader at ``s`` whenever it is asked for a
step other than the next one, and a run killed with SIGKILL and resumed, with the same or
another number of processes, sees exactly the batches of an uninterrupted run.

Debugging: with the environment variable ``LARS_JAX_INPUT_LOG`` set to a folder, each
process appends one JSON line per training step it feeds to
``<folder>/input-process<p>.jsonl``: ``{"step", "process", "index", "label", "sha1"}``
(the record numbers, labels and the SHA-1 of each uint8 image of its rows).

References:
  Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, arXiv 1409.4842.
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017
  (arXiv 1706.02677).
  grain, https://github.com/google/grain.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lars_jax.data import augment_batch, dataset_info, host_batches, normalize
from lars_jax.data.host import _data_source
from lars_jax.runs.errors import ConfigError
from lars_jax.train import parallel
from lars_jax.train.config import TrainConfig

DEFAULT_IMAGENET_SIZE = 224
INPUT_LOG_ENV = "LARS_JAX_INPUT_LOG"


def make_streaming_prepare(*, seed: int, mean: Any, std: Any, dtype: Any,
                           augment: dict[str, Any] | None = None
                           ) -> Callable[[jax.Array, jax.Array, jax.Array], Any]:
    """``prepare(images_uint8, labels, step) -> (x, y)`` for a batch already selected.

    The streaming counterpart of `lars_jax.train.parallel.make_prepare`: the same
    device-side augmentation key ``fold_in(fold_in(key(seed), step), 1)`` and the same
    normalisation, without the index selection (the host did it).
    """
    mean = tuple(float(m) for m in np.atleast_1d(mean))
    std = tuple(float(s) for s in np.atleast_1d(std))

    def prepare(images, labels, step):
        if augment is not None:
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), 1)
            images = augment_batch(key, images, **augment)
        return normalize(images, mean, std, dtype), labels.astype(jnp.int32)

    return prepare


def _split(base: str, subset: int | None) -> str:
    return f"{base}[:{subset}]" if subset else base


def check_process_rows(sharding: Any, num_devices: int) -> None:
    """Raises unless this process's devices hold its contiguous share of the batch rows.

    `host_batches` gives process ``p`` of ``P`` the rows ``[p * B / P, (p + 1) * B / P)``
    of a global batch; `jax.make_array_from_process_local_data` places them on the rows
    this process's devices hold on the mesh. The two agree only when the mesh gives every
    process the same number of devices, in process order; otherwise two processes would
    read the same examples (or a process none), silently.
    """
    p, count = jax.process_index(), jax.process_count()
    rows = sorted(i for d, idx in sharding.devices_indices_map((num_devices,)).items()
                  if d.process_index == p for i in range(num_devices)[idx[0]])
    share = num_devices // count
    if num_devices % count or rows != list(range(p * share, (p + 1) * share)):
        raise ConfigError(
            f"TrainConfig.num_devices={num_devices}: the host input needs every one of the "
            f"{count} processes to hold an equal, contiguous share of the mesh's devices; "
            f"process {p} holds rows {rows} (use all devices, the default)")


def _sha1s(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images]


class _TestBatches:
    """The evaluation split as ``(images, labels, mask, count)`` global batches, re-iterable."""

    def __init__(self, stream: StreamingInput, batch_size: int) -> None:
        self._stream, self._batch = stream, batch_size

    def __iter__(self) -> Iterator[tuple[Any, Any, Any, int]]:
        s = self._stream
        n = s.num_test
        for i, b in enumerate(host_batches(
                s.config.dataset, s.test_split, self._batch, seed=s.config.seed, train=False,
                process_index=jax.process_index(), process_count=jax.process_count(),
                data_dir=s.config.data_dir, image_size=s.image_size,
                num_threads=s.config.input_threads)):
            count = min(self._batch, n - i * self._batch)
            yield (s.put(b["image"]), s.put(b["label"]),
                   s.put(b["mask"].astype(np.float32)), count)


class StreamingInput:
    """Per-step global batches from the host, prefetched to the devices (module docstring).

    Attributes:
      config: the run's config.
      num_train: training examples (after ``train_subset``).
      num_test: evaluation examples (after ``test_subset``).
      num_classes, mean, std: from `lars_jax.data.dataset_info`.
      image_shape: (H, W, C) of the images the step receives.
      image_size: the crop side given to `host_batches` (None for small data sets).
    """

    def __init__(self, config: TrainConfig, mesh: Any, *, prefetch: int = 2) -> None:
        info = dataset_info(config.dataset)
        self.config = config
        self.train_split = _split("train", config.train_subset)
        self.test_split = _split(info.test_split, config.test_subset)
        self.num_train = len(_data_source(config.dataset, self.train_split, config.data_dir))
        self.num_test = len(_data_source(config.dataset, self.test_split, config.data_dir))
        self.num_classes, self.mean, self.std = info.num_classes, info.mean, info.std
        if info.fits_on_device:
            self.image_size = None
            self.image_shape = tuple(info.image_shape)
        else:
            self.image_size = config.image_size or DEFAULT_IMAGENET_SIZE
            self.image_shape = (self.image_size, self.image_size, info.image_shape[-1])
        self._sharding = parallel.batch_sharded(mesh)
        check_process_rows(self._sharding, mesh.devices.size)
        log = os.environ.get(INPUT_LOG_ENV)
        self._log = (Path(log) / f"input-process{jax.process_index()}.jsonl") if log else None
        # MLPerf mode: a kept remainder is spread over the groups that normalise separately
        self._groups = int(mesh.devices.size) * config.grad_accum_steps
        self._prefetch = max(1, prefetch)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._next = -1

    def put(self, local: np.ndarray) -> jax.Array:
        """This process's slice of a global batch -> the global array on the mesh."""
        return jax.make_array_from_process_local_data(self._sharding, np.asarray(local))

    def test_batches(self, batch_size: int) -> _TestBatches:
        """The evaluation batches (streamed anew on each pass; `build.evaluate` reads them)."""
        return _TestBatches(self, batch_size)

    def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        """The global ``(images uint8, labels int32)`` of `step` (a pure function of it)."""
        if step != self._next:
            self._start(step)
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        got, images, labels, record = item
        assert got == step, (got, step)
        self._next = step + 1
        if record is not None:
            self._log.parent.mkdir(parents=True, exist_ok=True)
            with open(self._log, "a") as f:
                f.write(json.dumps(record) + "\n")
        return images, labels

    def _start(self, step: int) -> None:
        self.close()
        self._stop = stop = threading.Event()
        self._queue = q = queue.Queue(maxsize=self._prefetch)
        cfg = self.config
        batches = host_batches(
            cfg.dataset, self.train_split, cfg.batch_size, seed=cfg.seed, start_step=step,
            process_index=jax.process_index(), process_count=jax.process_count(),
            data_dir=cfg.data_dir, train=True, image_size=self.image_size,
            num_threads=cfg.input_threads, prefetch=max(2, cfg.input_threads),
            remainder="pad" if cfg.mlperf else "drop", pad_groups=self._groups)

        def offer(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def work() -> None:
            try:
                for s, b in enumerate(batches, start=step):
                    record = None
                    if self._log is not None:
                        record = {"step": s, "process": jax.process_index(),
                                  "index": b["index"].tolist(), "label": b["label"].tolist(),
                                  "sha1": _sha1s(b["image"])}
                    if not offer((s, self.put(b["image"]), self.put(b["label"]), record)):
                        return
            except BaseException as err:  # handed to the consumer, raised there
                offer(err)

        self._thread = threading.Thread(target=work, name="lars_jax-input", daemon=True)
        self._thread.start()
        self._next = step

    def close(self) -> None:
        """Stops the reader thread (a later `batch` starts a new one)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
        self._next = -1
