"""SqueezeNet (Iandola et al., 2016, arXiv:1602.07360), faithful to the paper and to torchvision.

The whole architecture is the two tables below (``FIRES`` and ``VERSIONS``) plus ``Fire``.
With the defaults, module layout, ``state_dict`` keys and initialisation equal torchvision's, so
its published ``squeezenet1_0-b66bff10.pth`` / ``squeezenet1_1-b8a52dc0.pth`` load with strict=True.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import SqueezeNetError

# Paper Table 1: (name, squeeze s1x1, expand e1x1, expand e3x3). Identical in v1.0 and v1.1.
FIRES: list[tuple[str, int, int, int]] = [
    ("fire2", 16, 64, 64),
    ("fire3", 16, 64, 64),
    ("fire4", 32, 128, 128),
    ("fire5", 32, 128, 128),
    ("fire6", 48, 192, 192),
    ("fire7", 48, 192, 192),
    ("fire8", 64, 256, 256),
    ("fire9", 64, 256, 256),
]


@dataclass(frozen=True)
class Version:
    stem_channels: int  # conv1 filters
    stem_kernel: int  # conv1 kernel size, stride 2, no padding
    pool_after: tuple[str, ...]  # 3x3/2 ceil-mode max-pools follow these layers
    # Published figures, kept beside the architecture they describe (ANCHORS.md, torchvision).
    params_1000: int
    macs_224: float
    torchvision_top1: float
    torchvision_top5: float
    torchvision_file: str


VERSIONS = {
    "squeezenet1_0": Version(96, 7, ("conv1", "fire4", "fire8"), 1_248_424, 0.819e9, 58.092, 80.420,
                             "squeezenet1_0-b66bff10.pth"),
    # v1.1: 2.4x less computation, same accuracy: smaller conv1, pooling moved earlier.
    "squeezenet1_1": Version(64, 3, ("conv1", "fire3", "fire5"), 1_235_496, 0.349e9, 58.178, 80.624,
                             "squeezenet1_1-b8a52dc0.pth"),
}

# Paper section 6: simple bypass puts identity shortcuts where input and output channels match.
IDENTITY_BYPASS = ("fire3", "fire5", "fire7", "fire9")
BYPASS_MODES = ("none", "simple", "complex")


class Fire(nn.Module):
    """squeeze 1x1 -> ReLU -> [expand 1x1 || expand 3x3 (pad 1)] -> ReLU -> concat.

    ``shortcut`` (paper sec. 6) adds the input to the output: ``"identity"`` when channel counts
    match (simple bypass), ``"conv"`` for a 1x1 projection (complex bypass).
    """

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int,
                 batch_norm: bool = False, shortcut: str | None = None):
        super().__init__()
        out_channels = expand1x1 + expand3x3
        self.squeeze = nn.Conv2d(in_channels, squeeze, kernel_size=1, bias=not batch_norm)
        self.squeeze_bn = nn.BatchNorm2d(squeeze) if batch_norm else nn.Identity()
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1, bias=not batch_norm)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1, bias=not batch_norm)
        # One BN/ReLU over the concatenation equals one per branch (both are per-channel) and is
        # one kernel launch instead of two.
        self.expand_bn = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.expand_activation = nn.ReLU(inplace=True)
        if shortcut == "identity":
            if in_channels != out_channels:
                raise ValueError(f"identity shortcut needs in == out channels, got {in_channels} "
                                 f"-> {out_channels}")
            self.shortcut = nn.Identity()
        elif shortcut == "conv":
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        elif shortcut is None:
            self.shortcut = None
        else:
            raise ValueError(f"unknown shortcut {shortcut!r}")
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze_bn(self.squeeze(x)))
        out = torch.cat([self.expand1x1(s), self.expand3x3(s)], 1)
        out = self.expand_activation(self.expand_bn(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)  # not in place: ReLU's backward needs its output
        return out


class SqueezeNet(nn.Module):
    """features (conv1, pools, fire2..fire9) -> classifier (dropout, conv10, ReLU, global avg pool).

    ``small_input`` swaps the ImageNet stem's conv1 (7x7 or 3x3, stride 2, no padding) for a 3x3
    stride-1 conv1 with padding 1, for 28-32 px images; the pools stay where the version has them.
    With the ImageNet stem a 32 px image is 1x1 by fire6 (v1.1), so the last Fire modules see a
    single pixel and CIFAR accuracy stalls (forresti/SqueezeNet #54).
    """

    def __init__(self, fires=FIRES, stem_channels: int = 64, stem_kernel: int = 3,
                 pool_after=("conv1", "fire3", "fire5"), num_classes: int = 1000,
                 in_channels: int = 3, dropout: float = 0.5, bypass: str = "none",
                 batch_norm: bool = False, small_input: bool = False, final_relu: bool = True,
                 zero_init_residual: bool = True):
        super().__init__()
        if bypass not in BYPASS_MODES:
            raise SqueezeNetError(f"unknown bypass {bypass!r}: choose one of {', '.join(BYPASS_MODES)}")
        if num_classes < 1 or in_channels < 1:
            raise SqueezeNetError("num_classes and in_channels must be at least 1")
        if stem_channels < 1:
            raise SqueezeNetError(f"stem_channels must be at least 1, got {stem_channels}")
        unknown = sorted(set(pool_after) - {"conv1", *(name for name, *_ in fires)})
        if unknown:
            raise SqueezeNetError(
                f"cannot pool after {', '.join(unknown)}: pool_after names conv1 or fire layers "
                f"({', '.join(['conv1'] + [name for name, *_ in fires])})")
        self.num_classes = num_classes
        self.in_channels = in_channels
        pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)

        if small_input:
            conv1 = nn.Conv2d(in_channels, stem_channels, 3, stride=1, padding=1, bias=not batch_norm)
        else:
            conv1 = nn.Conv2d(in_channels, stem_channels, stem_kernel, stride=2, bias=not batch_norm)
        layers: list[nn.Module] = [conv1]
        if batch_norm:
            layers.append(nn.BatchNorm2d(stem_channels))
        layers.append(nn.ReLU(inplace=True))
        if "conv1" in pool_after:
            layers.append(pool())
        channels = stem_channels
        for name, s, e1, e3 in fires:
            shortcut = None
            if bypass != "none":
                if name in IDENTITY_BYPASS and channels == e1 + e3:
                    shortcut = "identity"
                elif bypass == "complex":
                    shortcut = "identity" if channels == e1 + e3 else "conv"
            layers.append(Fire(channels, s, e1, e3, batch_norm=batch_norm, shortcut=shortcut))
            channels = e1 + e3
            if name in pool_after:
                layers.append(pool())
        self.features = nn.Sequential(*layers)
        self.fire_names = [name for name, *_ in fires]

        final_conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        # The paper's ReLU after conv10 makes logits non-negative; from scratch with SGD it can
        # kill every class output (the "stuck at chance" reports). ``final_relu=False`` drops it;
        # keys are unchanged. Evidence: benchmarks/RESULTS.md#final-relu
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), final_conv,
            nn.ReLU(inplace=True) if final_relu else nn.Identity(), nn.AdaptiveAvgPool2d((1, 1))
        )
        # torchvision's initialisation: one rule, one named exception.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        # With BatchNorm, a bypassed Fire starts as the identity (zero BN scale on its expand
        # output, Goyal et al. 2017): summed un-normalised shortcuts otherwise blow up early
        # training. Evidence: benchmarks/RESULTS.md#zero-init-residual
        for m in self.features:
            if isinstance(m, Fire) and m.shortcut is not None and batch_norm and zero_init_residual:
                nn.init.zeros_(m.expand_bn.weight)
        self.min_input_size = min_input_size(self.features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before the classifier: (N, 512, H', W') (timm's name)."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            self.check_input(x)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits from a feature map; ``pre_logits``: the globally pooled features instead."""
        if pre_logits:
            return torch.flatten(self.classifier[3](x), 1)
        return torch.flatten(self.classifier(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh conv10 for ``num_classes`` classes (fine-tuning), initialised as at build time."""
        if num_classes < 1:
            raise SqueezeNetError(f"num_classes must be at least 1, got {num_classes}")
        old = self.classifier[1]
        conv = nn.Conv2d(old.in_channels, num_classes, kernel_size=1).to(old.weight.device, old.weight.dtype)
        nn.init.normal_(conv.weight, mean=0.0, std=0.01)
        nn.init.constant_(conv.bias, 0)
        self.classifier[1] = conv
        self.num_classes = num_classes

    def batchnorm_after(self, conv: str) -> tuple[nn.BatchNorm2d, slice] | None:
        """The BatchNorm (and its channels) that follows the conv named ``conv`` (a state_dict
        prefix such as ``features.3.expand3x3``), None where none does."""
        if conv == "features.0":
            bn = self.features[1]
            return (bn, slice(None)) if isinstance(bn, nn.BatchNorm2d) else None
        parent, _, leaf = conv.rpartition(".")
        fire = self.get_submodule(parent) if parent.startswith("features.") else None
        if not isinstance(fire, Fire) or leaf not in ("squeeze", "expand1x1", "expand3x3"):
            return None
        bn = fire.squeeze_bn if leaf == "squeeze" else fire.expand_bn
        e1 = fire.expand1x1.out_channels
        part = {"squeeze": slice(None), "expand1x1": slice(0, e1), "expand3x3": slice(e1, None)}[leaf]
        return (bn, part) if isinstance(bn, nn.BatchNorm2d) else None

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise SqueezeNetError(
                f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_input_size:
            raise SqueezeNetError(
                f"input {x.shape[-2]}x{x.shape[-1]} is below this model's minimum input size "
                f"{self.min_input_size}x{self.min_input_size}: resize the images up")


def _spatial(size: int, module: nn.Module) -> int:
    """Output size of one conv/pool along one axis, by PyTorch's own formula (< 1: too small)."""
    k, s, p = (module.kernel_size, module.stride, module.padding)
    k, s, p = (v[0] if isinstance(v, tuple) else v for v in (k, s, p))
    ceil = getattr(module, "ceil_mode", False)
    out = (size + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:  # PyTorch drops a window that starts in the padding
        out -= 1
    return out


def feature_size(features: nn.Sequential, size: int) -> int:
    """Spatial size of the feature map that ``features`` makes from a ``size`` x ``size`` input."""
    for m in features.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            size = _spatial(size, m)
            if size < 1:
                return 0
    return size


def min_input_size(features: nn.Sequential) -> int:
    return next(n for n in range(1, 1024) if feature_size(features, n) >= 1)


def metaparameter_fires(base_e: int = 128, incr_e: int = 128, pct3x3: float = 0.5, freq: int = 2,
                        squeeze_ratio: float = 0.125, num_fires: int = 8):
    """Paper section 5: e_i = base_e + incr_e * floor(i / freq), s_i = SR * e_i, e3_i = pct3x3 * e_i.

    The defaults reproduce v1.0's fire2..fire9 exactly (``FIRES``).
    """
    fires = []
    for i in range(num_fires):
        e = base_e + incr_e * (i // freq)
        e3 = int(round(pct3x3 * e))
        fires.append((f"fire{i + 2}", max(1, int(round(squeeze_ratio * e))), e - e3, e3))
    return fires


def squeezenet1_0(**kwargs) -> SqueezeNet:
    return _from_version("squeezenet1_0", **kwargs)


def squeezenet1_1(**kwargs) -> SqueezeNet:
    return _from_version("squeezenet1_1", **kwargs)


def squeezenet_meta(base_e: int = 128, incr_e: int = 128, pct3x3: float = 0.5, freq: int = 2,
                    squeeze_ratio: float = 0.125, version: str = "squeezenet1_0", **kwargs):
    """A SqueezeNet from the paper's metaparameters (stem and pools from ``version``)."""
    fires = metaparameter_fires(base_e, incr_e, pct3x3, freq, squeeze_ratio)
    return _from_version(version, fires=fires, **kwargs)


def _from_version(name: str, squeeze_ratio: float | None = None, pool_after=None,
                  stem_channels: int | None = None, **kwargs) -> SqueezeNet:
    """``squeeze_ratio`` (the paper's SR, section 5.1; 0.125 in v1.0 and v1.1) resizes every
    squeeze layer to SR x the module's expand channels, keeping the expand layers.
    ``pool_after`` moves the 3x3/2 max-pools (layer names, e.g. ``("conv1", "fire3", "fire7")``):
    the paper's strategy 3, downsample late, traded against computation as v1.0 and v1.1 trade it.
    ``stem_channels`` sets conv1's filters (96 in v1.0, 64 in v1.1)."""
    v = VERSIONS[name]
    fires = kwargs.pop("fires", FIRES)
    if squeeze_ratio is not None:
        if not 0 < squeeze_ratio <= 1:
            raise SqueezeNetError(f"squeeze_ratio must be in (0, 1], got {squeeze_ratio}")
        fires = [(n, max(1, round(squeeze_ratio * (e1 + e3))), e1, e3) for n, _, e1, e3 in fires]
    stem_channels = v.stem_channels if stem_channels is None else stem_channels
    return SqueezeNet(fires=fires, stem_channels=stem_channels, stem_kernel=v.stem_kernel,
                      pool_after=v.pool_after if pool_after is None else tuple(pool_after), **kwargs)
