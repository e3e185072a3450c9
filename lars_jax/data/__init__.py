"""TFDS input pipelines without TensorFlow: on-device for small data sets, grain on the host.

Data sets: "fashion_mnist" (prepared offline from Debian's `dataset-fashion-mnist`),
"cifar10", "cifar100", "imagenet2012".
"""

from lars_jax.data.augment import (
    DeviceDataset,
    apply_cutout,
    augment_batch,
    batch_indices,
    device_batch,
    epoch_permutation,
    normalize,
    random_crop,
    random_flip,
    steps_per_epoch,
)
from lars_jax.data.fashion_mnist import (
    FashionMnistVerificationError,
    verify_fashion_mnist_files,
)
from lars_jax.data.host import center_crop, host_batches, random_resized_crop
from lars_jax.data.info import DATASET_NAMES, DatasetInfo, dataset_info
from lars_jax.data.sources import (
    data_source,
    default_data_dir,
    ensure_prepared,
    load_split,
    prepare_fashion_mnist,
    prepare_from_archive,
    prepare_imagenet,
    prepare_with_local_files,
)

__all__ = [
    "DATASET_NAMES",
    "DatasetInfo",
    "DeviceDataset",
    "FashionMnistVerificationError",
    "apply_cutout",
    "augment_batch",
    "batch_indices",
    "center_crop",
    "data_source",
    "dataset_info",
    "default_data_dir",
    "device_batch",
    "ensure_prepared",
    "epoch_permutation",
    "host_batches",
    "load_split",
    "normalize",
    "prepare_fashion_mnist",
    "prepare_from_archive",
    "prepare_imagenet",
    "prepare_with_local_files",
    "random_crop",
    "random_flip",
    "random_resized_crop",
    "steps_per_epoch",
    "verify_fashion_mnist_files",
]
