"""Flax ResNets (CIFAR ResNet-8/20/32/56, ResNet-18/9/50), MLPs, MAC counts, conv options."""

from lars_jax.models.base import ModelBase
from lars_jax.models.conv import CONV_IMPLS, patch_conv_general_dilated
from lars_jax.models.flops import count_fn_macs, count_macs, flops_per_example, jaxpr_macs
from lars_jax.models.mlp import MLP, MLP_DEPTHS
from lars_jax.models.normalization import NORM_KINDS, GhostBatchNorm, group_count, make_norm
from lars_jax.models.resnet import (
    MODEL_NAMES,
    BasicBlock,
    BottleneckBlock,
    CifarResNet,
    ResNet9,
    ResNet18,
    ResNet50,
    create_model,
)

__all__ = [
    "CONV_IMPLS",
    "MLP",
    "MLP_DEPTHS",
    "MODEL_NAMES",
    "ModelBase",
    "NORM_KINDS",
    "BasicBlock",
    "BottleneckBlock",
    "CifarResNet",
    "GhostBatchNorm",
    "ResNet9",
    "ResNet18",
    "ResNet50",
    "count_fn_macs",
    "count_macs",
    "create_model",
    "flops_per_example",
    "group_count",
    "jaxpr_macs",
    "make_norm",
    "patch_conv_general_dilated",
]
