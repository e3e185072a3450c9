"""On-device input pipeline for small data sets: indexing, augmentation, normalization in JAX.

Small data sets (Fashion-MNIST, CIFAR) are put on the device once as uint8 arrays; every
step then gathers its batch, augments and normalizes it inside the jitted step, so there is
no host round trip per step.

Determinism: `batch_indices(seed, step, ...)` depends only on (seed, step): epoch
`e = step // steps_per_epoch` uses the permutation keyed by `fold_in(key(seed), e)`, and
step `step % steps_per_epoch` takes the corresponding contiguous slice of it (the remainder
of each epoch is dropped). The permutation is a keyed Feistel network (`permute_indices`),
so a step costs O(batch) instead of a sort of the whole data set. A run resumed at step
`s` therefore sees exactly the batches of an uninterrupted run. Augmentation draws from
`fold_in(fold_in(key(seed), step), 1)` in `device_batch`, so it is reproducible in the same
way.

References:
  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv 1512.03385
  (pad-4 random crop and horizontal flip for CIFAR).
  DeVries, Taylor, "Improved Regularization of CNNs with Cutout", 2017, arXiv 1708.04552.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _as_key(seed: int | Array) -> Array:
    if isinstance(seed, (int, np.integer)):
        return jax.random.key(int(seed))
    seed = jnp.asarray(seed)
    if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if seed.dtype == jnp.uint32 and seed.shape == (2,):  # raw legacy key
        return jax.random.wrap_key_data(seed)
    return jax.random.key(seed)


def steps_per_epoch(batch_size: int, num_examples: int) -> int:
    """Full batches per epoch (the remainder is dropped)."""
    if batch_size <= 0 or num_examples < batch_size:
        raise ValueError(
            f"batch_size must be in [1, num_examples={num_examples}], got {batch_size}"
        )
    return num_examples // batch_size


_FEISTEL_ROUNDS = 6


def _mix32(x: Array) -> Array:
    """A uint32 avalanche function (the MurmurHash3 finalizer)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def permute_indices(key: Array, i: Array, num_examples: int) -> Array:
    """`perm[i]` for a keyed pseudo-random permutation `perm` of `range(num_examples)`.

    A balanced Feistel network (6 rounds, round function `_mix32(R ^ round_key)`) is a
    bijection on `[0, 4**h)` with `4**h >= num_examples > 4**(h-1)`; "cycle walking"
    (re-applying it while the value is `>= num_examples`, at most a few times on average
    since the domain is < 4x larger) restricts it to a bijection on `range(num_examples)`.
    Cost is O(len(i)), independent of `num_examples`: no sort of the whole data set.

    References:
      Black, Rogaway, "Ciphers with Arbitrary Finite Domains", CT-RSA 2002 (cycle walking).
    """
    n = int(num_examples)
    if not 0 < n <= 2**32:
        raise ValueError(f"num_examples must be in [1, 2**32], got {n}")
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = jnp.uint32((1 << half) - 1)
    round_keys = jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)

    def feistel(x: Array) -> Array:
        left, right = x >> half, x & mask
        for r in range(_FEISTEL_ROUNDS):
            left, right = right, left ^ (_mix32(right ^ round_keys[r]) & mask)
        return (left << half) | right

    def walk(x: Array) -> Array:
        return jnp.where(x >= n, feistel(x), x)

    y = feistel(jnp.asarray(i).astype(jnp.uint32))
    y = jax.lax.while_loop(lambda y: jnp.any(y >= n), walk, y)
    return y.astype(jnp.int32)


def epoch_permutation(seed: int | Array, epoch: int | Array, num_examples: int) -> Array:
    """The permutation of `range(num_examples)` used in `epoch` (keyed by fold_in(seed, epoch))."""
    key = jax.random.fold_in(_as_key(seed), epoch)
    return permute_indices(key, jnp.arange(num_examples, dtype=jnp.uint32), num_examples)


def batch_indices(
    seed: int | Array, step: int | Array, batch_size: int, num_examples: int
) -> Array:
    """Example indices of batch `step` (int32 [batch_size]); jittable in `seed` and `step`.

    Equals `epoch_permutation(seed, e, n)[p * batch_size:(p + 1) * batch_size]` with
    `e, p = divmod(step, n // batch_size)`, computed in O(batch_size).

    Args:
      seed: an int or a PRNG key.
      step: global step number (0-based); may be traced.
      batch_size: examples per batch (static).
      num_examples: size of the data set (static).

    Example:
      >>> a = batch_indices(0, 7, 4, 10)
      >>> b = batch_indices(0, 7, 4, 10)
      >>> bool((a == b).all()), a.shape
      (True, (4,))
    """
    spe = steps_per_epoch(batch_size, num_examples)
    epoch, pos = jnp.divmod(jnp.asarray(step, jnp.int32), spe)
    key = jax.random.fold_in(_as_key(seed), epoch)
    pos_in_epoch = pos.astype(jnp.uint32) * batch_size + jnp.arange(batch_size, dtype=jnp.uint32)
    return permute_indices(key, pos_in_epoch, num_examples)


def _check_images(images: Array) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    if images.dtype != jnp.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")


def random_crop(rng: Array, images: Array, padding: int) -> Array:
    """Crops each image at a random offset from its zero-padded version (same size)."""
    if padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {padding}")
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

    def crop(img: Array, off: Array) -> Array:
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(rng: Array, images: Array) -> Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def apply_cutout(rng: Array, images: Array, size: int) -> Array:
    """Zeroes a `size` x `size` square at a uniformly random centre (clipped at the border)."""
    if size < 0:
        raise ValueError(f"cutout must be >= 0, got {size}")
    if size == 0:
        return images
    n, h, w, _ = images.shape
    ky, kx = jax.random.split(rng)
    cy = jax.random.randint(ky, (n, 1, 1, 1), 0, h)
    cx = jax.random.randint(kx, (n, 1, 1, 1), 0, w)
    y = jnp.arange(h)[None, :, None, None]
    x = jnp.arange(w)[None, None, :, None]
    top, left = cy - size // 2, cx - size // 2
    inside = (y >= top) & (y < top + size) & (x >= left) & (x < left + size)
    return jnp.where(inside, jnp.zeros((), images.dtype), images)


def augment_batch(
    rng: Array,
    images_uint8: Array,
    *,
    crop_padding: int = 4,
    flip: bool = True,
    cutout: int = 0,
) -> Array:
    """Random crop with zero padding, horizontal flip and optional Cutout, on uint8 images.

    The defaults are CIFAR's; see `dataset_info(name).augment_defaults` for each data set.

    Args:
      rng: PRNG key.
      images_uint8: uint8 [N, H, W, C].
      crop_padding: pixels of zero padding on each side before the random crop (0: none).
      flip: random horizontal flips.
      cutout: side of the zeroed square (0: no Cutout).

    Returns:
      uint8 [N, H, W, C].

    References:
      He et al. 2016, arXiv 1512.03385; DeVries and Taylor 2017, arXiv 1708.04552.
    """
    _check_images(images_uint8)
    k_crop, k_flip, k_cut = jax.random.split(rng, 3)
    x = random_crop(k_crop, images_uint8, int(crop_padding))
    if flip:
        x = random_flip(k_flip, x)
    return apply_cutout(k_cut, x, int(cutout))


def normalize(
    images_uint8: Array,
    mean: Sequence[float] | Array,
    std: Sequence[float] | Array,
    dtype: Any = jnp.float32,
) -> Array:
    """(images / 255 - mean) / std per channel, computed in float32, returned in `dtype`.

    `mean` and `std` are on the [0, 1] scale (as in `DatasetInfo`).
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    if mean.shape[-1:] not in ((images_uint8.shape[-1],), (1,)) or mean.shape != std.shape:
        raise ValueError(
            f"mean/std must have one value per channel ({images_uint8.shape[-1]}), got "
            f"{mean.shape} and {std.shape}"
        )
    x = images_uint8.astype(jnp.float32) * (1.0 / 255.0)
    return ((x - mean) / std).astype(dtype)


def device_batch(
    images: Array,
    labels: Array,
    step: int | Array,
    *,
    seed: int | Array,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: dict[str, Any] | None = None,
    dtype: Any = jnp.float32,
) -> tuple[Array, Array]:
    """Batch `step`: indices from `batch_indices(seed, step)`, augmentation, normalization.

    Pure and jittable (with `batch_size`, `mean`, `std`, `augment`, `dtype` static). The
    augmentation key is `fold_in(fold_in(key(seed), step), 1)` (the permutation of epoch
    `e` uses `fold_in(key(seed), e)` itself).

    Returns:
      (images `dtype` [batch_size, H, W, C], labels int32 [batch_size]).
    """
    idx = batch_indices(seed, step, batch_size, images.shape[0])
    x = jnp.take(images, idx, axis=0)
    y = jnp.take(labels, idx, axis=0).astype(jnp.int32)
    if augment is not None:
        key = jax.random.fold_in(jax.random.fold_in(_as_key(seed), step), 1)
        x = augment_batch(key, x, **augment)
    return normalize(x, mean, std, dtype), y


class DeviceDataset:
    """A small data set held on the device as uint8, with jitted `batch(step)`.

    Example:
      >>> import numpy as np
      >>> imgs = np.zeros((10, 8, 8, 1), np.uint8); labs = np.arange(10, dtype=np.int32)
      >>> ds = DeviceDataset(imgs, labs, batch_size=4, seed=0, mean=(0.5,), std=(0.5,),
      ...                    augment=dict(crop_padding=2, flip=True))
      >>> x, y = ds.batch(3)
      >>> x.shape, x.dtype, y.shape, ds.steps_per_epoch
      ((4, 8, 8, 1), dtype('float32'), (4,), 2)
    """

    def __init__(
        self,
        images: np.ndarray | Array,
        labels: np.ndarray | Array,
        *,
        batch_size: int,
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: dict[str, Any] | None = None,
        dtype: Any = jnp.float32,
        device: Any = None,
        sharding: Any = None,
    ) -> None:
        """Puts `images` (uint8 [N,H,W,C]) and `labels` ([N]) on `device` (or `sharding`).

        Args:
          images: uint8 images.
          labels: integer labels.
          batch_size: global batch size.
          seed: seed of the permutations and augmentation.
          mean: per-channel mean on the [0, 1] scale.
          std: per-channel std on the [0, 1] scale.
          augment: keyword arguments of `augment_batch`, or None for no augmentation.
          dtype: dtype of the normalized images.
          device: where to store the arrays (default: the default device).
          sharding: alternative to `device` (e.g. replicated over a mesh).
        """
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images and labels differ in length: {images.shape[0]} vs {labels.shape[0]}"
            )
        _check_images(jnp.asarray(images[:1]))
        self.num_examples = int(images.shape[0])
        self.steps_per_epoch = steps_per_epoch(batch_size, self.num_examples)
        placement = sharding if sharding is not None else device
        self.images = jax.device_put(np.asarray(images), placement)
        self.labels = jax.device_put(np.asarray(labels, np.int32), placement)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._fn = jax.jit(
            functools.partial(
                device_batch,
                seed=self.seed,
                batch_size=self.batch_size,
                mean=tuple(float(m) for m in mean),
                std=tuple(float(s) for s in std),
                augment=augment,
                dtype=dtype,
            )
        )

    def batch(self, step: int | Array) -> tuple[Array, Array]:
        """(normalized images, int32 labels) of global step `step`."""
        return self._fn(self.images, self.labels, jnp.asarray(step, jnp.int32))
