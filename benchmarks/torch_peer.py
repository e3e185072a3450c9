"""The peer for the side-by-side benchmark: the same ResNets and LARS update in plain PyTorch.

Written from the definitions, not from another project's code:

* `MLP` (the `mlp<k>` models with BatchNorm), to show where the CPU gap comes from.
* `CifarResNet` (ResNet-20 = depth 20) and `ResNet18` (3x3 stem, no max-pool) with exactly
  the layer order, padding, shortcut type and BatchNorm settings of `lars_jax.models`
  (`CifarResNet` uses He et al.'s option-A shortcuts: stride-2 subsampling plus zero channel
  padding; `ResNet18` 1x1 projections). Module attribute names mirror the Flax parameter
  names (`stem_conv`, `BatchNorm_0`, `BasicBlock_3/Conv_1`, `Dense_0`, ...), so that
  `load_flax_variables` can copy a Flax parameter tree into the torch model one to one.
* `LARS`: You et al. (2017) Algorithm 1 in its paper form, per parameter tensor
      ratio = tc * ||w|| / (||g|| + wd * ||w|| + eps)    (1 if a norm is 0)
      v     = m * v + lr * ratio * (g + wd * w)
      w     = w - v
  for tensors with more than one dimension (conv and dense kernels); biases and
  BatchNorm scale/offset get plain momentum SGD (no weight decay, no ratio), as in MLPerf
  and as `lars_jax.lars`'s default mask.

BatchNorm: Flax's momentum 0.9 is PyTorch's momentum 0.1 (PyTorch weights the new batch
statistic by `momentum`); epsilon 1e-5 in both. PyTorch updates the running variance with the
unbiased batch variance, Flax with the biased one: this only affects evaluation-mode
statistics, never the training step's gradients.

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  arXiv 1512.03385.
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
  arXiv 1708.03888.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_BN = dict(eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection (option A or B shortcut)."""

    def __init__(self, cin: int, features: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.stride, self.shortcut, self.features = stride, shortcut, features
        self.Conv_0 = nn.Conv2d(cin, features, 3, stride, 1, bias=False)
        self.BatchNorm_0 = nn.BatchNorm2d(features, **_BN)
        self.Conv_1 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
        self.BatchNorm_1 = nn.BatchNorm2d(features, **_BN)
        self.reshape = stride != 1 or cin != features
        if self.reshape and shortcut == "B":
            self.proj_conv = nn.Conv2d(cin, features, 1, stride, 0, bias=False)
            self.BatchNorm_2 = nn.BatchNorm2d(features, **_BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.BatchNorm_0(self.Conv_0(x)))
        y = self.BatchNorm_1(self.Conv_1(y))
        if self.reshape:
            if self.shortcut == "A":
                s = self.stride
                x = x[:, :, ::s, ::s]
                extra = self.features - x.shape[1]
                x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
            else:
                x = self.BatchNorm_2(self.proj_conv(x))
        return F.relu(x + y)


class _ResNet(nn.Module):
    def __init__(self, in_channels: int, c0: int, stages: Iterable[tuple[int, int]],
                 num_classes: int, shortcut: str) -> None:
        super().__init__()
        self.stem_conv = nn.Conv2d(in_channels, c0, 3, 1, 1, bias=False)
        self.BatchNorm_0 = nn.BatchNorm2d(c0, **_BN)
        cin, i = c0, 0
        for stage, (features, nblocks) in enumerate(stages):
            for b in range(nblocks):
                stride = 2 if stage > 0 and b == 0 else 1
                self.add_module(f"BasicBlock_{i}", BasicBlock(cin, features, stride, shortcut))
                cin, i = features, i + 1
        self.num_blocks = i
        self.Dense_0 = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.BatchNorm_0(self.stem_conv(x)))
        for i in range(self.num_blocks):
            x = getattr(self, f"BasicBlock_{i}")(x)
        return self.Dense_0(x.mean(dim=(2, 3)))


def _ch(c: int, width: float) -> int:
    """Channels of a layer at a width multiplier, rounded as `lars_jax.models` rounds them."""
    return max(1, int(round(c * width)))


class CifarResNet(_ResNet):
    """ResNet-(6n+2) for 32x32 images: 16-32-64 channels, option-A shortcuts by default."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "A", width: float = 1.0) -> None:
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        super().__init__(in_channels, _ch(16, width),
                         [(_ch(c, width), n) for c in (16, 32, 64)], num_classes, shortcut)


class ResNet18(_ResNet):
    """ResNet-18 with a 3x3 stem and no max-pool (64-128-256-512), projection shortcuts."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__(in_channels, _ch(64, width),
                         [(_ch(c, width), 2) for c in (64, 128, 256, 512)], num_classes, "B")


class BottleneckBlock(nn.Module):
    """1x1, 3x3 (strided, v1.5), 1x1 (x4) conv + BN layers, projection shortcut."""

    def __init__(self, cin: int, features: int, stride: int) -> None:
        super().__init__()
        out = 4 * features
        self.Conv_0 = nn.Conv2d(cin, features, 1, 1, 0, bias=False)
        self.BatchNorm_0 = nn.BatchNorm2d(features, **_BN)
        self.Conv_1 = nn.Conv2d(features, features, 3, stride, 1, bias=False)
        self.BatchNorm_1 = nn.BatchNorm2d(features, **_BN)
        self.Conv_2 = nn.Conv2d(features, out, 1, 1, 0, bias=False)
        self.BatchNorm_2 = nn.BatchNorm2d(out, **_BN)
        self.reshape = stride != 1 or cin != out
        if self.reshape:
            self.proj_conv = nn.Conv2d(cin, out, 1, stride, 0, bias=False)
            self.BatchNorm_3 = nn.BatchNorm2d(out, **_BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.BatchNorm_0(self.Conv_0(x)))
        y = F.relu(self.BatchNorm_1(self.Conv_1(y)))
        y = self.BatchNorm_2(self.Conv_2(y))
        if self.reshape:
            x = self.BatchNorm_3(self.proj_conv(x))
        return F.relu(x + y)


class ResNet50(nn.Module):
    """ResNet-50 v1.5 (7x7/2 stem, 3x3/2 max-pool, bottlenecks [3, 4, 6, 3], stride on 3x3)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0
                 ) -> None:
        super().__init__()
        c0 = _ch(64, width)
        self.stem_conv = nn.Conv2d(in_channels, c0, 7, 2, 3, bias=False)
        self.BatchNorm_0 = nn.BatchNorm2d(c0, **_BN)
        cin, i = c0, 0
        for stage, nblocks in enumerate((3, 4, 6, 3)):
            features = _ch(64 * 2**stage, width)
            for b in range(nblocks):
                stride = 2 if stage > 0 and b == 0 else 1
                self.add_module(f"BottleneckBlock_{i}", BottleneckBlock(cin, features, stride))
                cin, i = 4 * features, i + 1
        self.num_blocks = i
        self.Dense_0 = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.BatchNorm_0(self.stem_conv(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        for i in range(self.num_blocks):
            x = getattr(self, f"BottleneckBlock_{i}")(x)
        return self.Dense_0(x.mean(dim=(2, 3)))


class MLP(nn.Module):
    """`lars_jax.models.MLP` with BatchNorm: [Linear (no bias) -> BN -> ReLU] x depth -> head.

    The input is flattened in NHWC order (as the Flax model does) from the NCHW tensor.
    """

    def __init__(self, depth: int, num_classes: int, in_features: int, width: int = 256
                 ) -> None:
        super().__init__()
        self.depth = depth
        f = in_features
        for i in range(depth):
            setattr(self, f"Dense_{i}", nn.Linear(f, width, bias=False))
            setattr(self, f"BatchNorm_{i}", nn.BatchNorm1d(width, **_BN))
            f = width
        self.head = nn.Linear(f, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1).flatten(1)
        for i in range(self.depth):
            x = F.relu(getattr(self, f"BatchNorm_{i}")(getattr(self, f"Dense_{i}")(x)))
        return self.head(x)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3,
                 image_size: int = 32, width: float = 1.0) -> nn.Module:
    """`resnet8/20/32/56` (CIFAR family, option A), `resnet18`, `resnet50` or `mlp1`-`mlp4`
    (BatchNorm, 256 hidden units), as in lars_jax.models (`width`: the ResNets' channel
    multiplier)."""
    depths = {"resnet8": 8, "resnet20": 20, "resnet32": 32, "resnet56": 56}
    mlps = {"mlp1": 1, "mlp2": 2, "mlp3": 3, "mlp4": 4}
    if name in depths:
        return CifarResNet(depths[name], num_classes, in_channels, width=width)
    if name == "resnet18":
        return ResNet18(num_classes, in_channels, width=width)
    if name == "resnet50":
        return ResNet50(num_classes, in_channels, width=width)
    if name in mlps:
        return MLP(mlps[name], num_classes, image_size * image_size * in_channels)
    raise ValueError(f"name must be one of {sorted(depths) + ['resnet18', 'resnet50']}"
                     f" + {sorted(mlps)}, got {name!r}")


class LARS(torch.optim.Optimizer):
    """LARS, paper form (You et al. 2017, Algorithm 1); ndim <= 1 tensors: momentum SGD.

    Args:
      params: parameters (or parameter groups).
      lr: global learning rate (the caller changes `param_groups[i]["lr"]` for a schedule).
      momentum: m in [0, 1).
      weight_decay: coupled weight decay for tensors with ndim > 1.
      trust_coefficient: tc (0.001 in the paper).
      eps: added to the ratio's denominator.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 0.0) -> None:
        for name, v in (("lr", lr), ("weight_decay", weight_decay),
                        ("trust_coefficient", trust_coefficient), ("eps", eps)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: D102 - torch API
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            tc, eps = group["trust_coefficient"], group["eps"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if p.ndim > 1:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    ratio = tc * w_norm / (g_norm + wd * w_norm + eps)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio,
                                        torch.ones_like(ratio))
                    u = g.add(p, alpha=wd).mul_(ratio)
                else:
                    u = g
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(m).add_(u, alpha=lr)
                p.sub_(buf)


def _torch_name(path: tuple[str, ...]) -> tuple[str, str]:
    """Flax path (..., module, leaf) -> (torch module path, torch attribute)."""
    *mods, leaf = path
    attr = {"kernel": "weight", "scale": "weight", "bias": "bias",
            "mean": "running_mean", "var": "running_var"}[leaf]
    return ".".join(mods), attr


def load_flax_variables(model: nn.Module, variables: Mapping[str, Any]) -> int:
    """Copies a Flax variable dict (`params`, optional `batch_stats`) into the torch model.

    Conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in); values are converted to
    the torch tensors' dtype (call `.double()` first for a float64 copy). Every torch parameter
    and BatchNorm buffer must be matched exactly once (ValueError otherwise).

    Returns:
      The number of tensors copied.
    """
    modules = dict(model.named_modules())
    seen: set[tuple[str, str]] = set()

    def walk(tree: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, val in tree.items():
            if isinstance(val, Mapping):
                walk(val, prefix + (key,))
                continue
            mod_name, attr = _torch_name(prefix + (key,))
            if mod_name not in modules:
                raise ValueError(f"no torch module {mod_name!r} for Flax path {prefix + (key,)}")
            target = getattr(modules[mod_name], attr)
            arr = np.asarray(val)
            if arr.ndim == 4:
                arr = arr.transpose(3, 2, 0, 1)
            elif arr.ndim == 2:
                arr = arr.T
            if tuple(arr.shape) != tuple(target.shape):
                raise ValueError(f"shape mismatch at {mod_name}.{attr}: Flax {arr.shape} vs "
                                 f"torch {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(torch.from_numpy(np.array(arr, order="C")).to(target.dtype))
            seen.add((mod_name, attr))

    for collection in ("params", "batch_stats"):
        if collection in variables:
            walk(variables[collection], ())
    expected = {tuple(n.rsplit(".", 1)) for n, _ in model.named_parameters()}
    if "batch_stats" in variables:
        expected |= {tuple(n.rsplit(".", 1)) for n, _ in model.named_buffers()
                     if not n.endswith("num_batches_tracked")}
    missing = expected - seen
    if missing:
        raise ValueError(f"torch tensors not set from the Flax tree: {sorted(missing)[:5]}")
    return len(seen)


def flax_kernel_from_torch(weight: torch.Tensor) -> np.ndarray:
    """Torch conv/dense weight -> the Flax layout (HWIO / (in, out)), as numpy float32."""
    arr = weight.detach().cpu().numpy()
    if arr.ndim == 4:
        return arr.transpose(2, 3, 1, 0)
    if arr.ndim == 2:
        return arr.T
    return arr
