"""Static facts about the supported data sets: shapes, sizes, normalization, augmentation.

`mean` and `std` are per-channel statistics of the training images on the [0, 1] scale
(pixel / 255). For Fashion-MNIST they are computed from the 60000 training images (the test
suite recomputes them from the prepared data and checks these values); for CIFAR and
ImageNet they are the values in common use (CIFAR: computed over the training set;
ImageNet: the torchvision constants).

The default augmentation per data set (`augment_defaults`, the keyword arguments of
`lars_jax.data.augment_batch`):
  * cifar10 / cifar100: random crop of 32x32 from the image zero-padded by 4, horizontal
    flip (He et al. 2016 section 4.2); Cutout off (16 for the DAWNBench recipe).
  * fashion_mnist: random crop from the image zero-padded by 2, horizontal flip (clothing is
    left-right symmetric, unlike digits).
  * imagenet2012: done on the host (random-resized crop + flip), see `host_batches`.

References:
  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv 1512.03385.
  Xiao, Rasul, Vollgraf, "Fashion-MNIST", 2017, arXiv 1708.07747.
  Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class DatasetInfo(NamedTuple):
    """Facts about one data set (TFDS name, classes, image shape, sizes, statistics)."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment_defaults: dict[str, Any]
    test_split: str = "test"
    fits_on_device: bool = True


_INFOS = {
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        num_classes=10,
        image_shape=(28, 28, 1),
        num_train=60_000,
        num_test=10_000,
        mean=(0.2860,),
        std=(0.3530,),
        augment_defaults={"crop_padding": 2, "flip": True, "cutout": 0},
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        image_shape=(32, 32, 3),
        num_train=50_000,
        num_test=10_000,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        augment_defaults={"crop_padding": 4, "flip": True, "cutout": 0},
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        image_shape=(32, 32, 3),
        num_train=50_000,
        num_test=10_000,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        augment_defaults={"crop_padding": 4, "flip": True, "cutout": 0},
    ),
    "imagenet2012": DatasetInfo(
        name="imagenet2012",
        num_classes=1000,
        image_shape=(224, 224, 3),
        num_train=1_281_167,
        num_test=50_000,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        augment_defaults={},
        test_split="validation",
        fits_on_device=False,
    ),
}

DATASET_NAMES = tuple(_INFOS)


def dataset_info(name: str) -> DatasetInfo:
    """Returns the `DatasetInfo` of "fashion_mnist", "cifar10", "cifar100" or "imagenet2012".

    Example:
      >>> dataset_info("cifar10").image_shape
      (32, 32, 3)
    """
    if name not in _INFOS:
        raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}")
    return _INFOS[name]
