"""The classifiers, their named taps and their preprocessing (docs/networks.md): the
bottom layer of :mod:`generator`, which imports nothing else of the package.

Every network is a :class:`TappedNet`: an ordered list of named steps (layers,
ReLUs, pools, ...) whose ``forward(x, taps)`` returns the requested taps by
name and stops after the deepest one. Tap names:

* ``conv1`` .. ``conv5``, ``fc6``, ``fc7``: post-ReLU (what the paper records
  for fc6/fc7); ``conv5:pre``, ``fc6:pre``, ...: the same layer before its ReLU
  (what PPGN targets for conv5/fc6);
* ``pool5``: the input of fc6 (post-ReLU, pooled);
* ``fc8``: the logits (pre-softmax; the paper's fc8); ``prob``: softmax.

No step works in place, so a tap is never changed by a later step.

The architectures here: :func:`caffenet` (bvlc_reference_caffenet: pool before
LRN), :func:`bvlc_alexnet` (LRN before pool) and :func:`torchvision_alexnet`
(torchvision's architecture: 64/192/384/256/256, no LRN, no groups), each with
its :class:`Preprocessing` beside it; the demo's digits networks are in
:mod:`generator.digits`. Also here: :func:`state_dict_from_file` and
:func:`load_state` (a PyTorch file's state dict into a model, every mismatch a
:class:`WeightsError`) and :func:`gradient_copy` (a copy of a network with faster
gradients to its input). Networks by name and their weight files (Caffe's among
them) are :mod:`generator.loading`'s.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = [
    "TappedNet",
    "taps_for",
    "Preprocessing",
    "CAFFE_PREPROCESSING",
    "AUTHORS_PREPROCESSING",
    "ILSVRC_2012_MEAN_PIXEL",
    "TORCHVISION_PREPROCESSING",
    "caffe_resize",
    "TORCHVISION_KEYS",
    "caffenet",
    "bvlc_alexnet",
    "torchvision_alexnet",
    "load_state",
    "state_dict_from_file",
    "WeightsError",
    "FastLocalResponseNorm",
    "OneChannelConv2d",
    "fast_copy",
    "gradient_copy",
]


class WeightsError(ValueError):
    """Weights that do not fit a network (the message names the layer and shapes)."""


# -- the tapped network ----------------------------------------------------------------


class TappedNet(nn.Module):
    """A feed-forward classifier as named steps, with named taps.

    ``steps``: (name, module) in order; ``taps``: tap name -> the step after
    which it is read. Parameters keep the step names (``conv1.weight``), which
    are also the Caffe layer names. ``output_tap``: the logits' tap (predictions).
    """

    output_tap = "fc8"

    def __init__(self, steps: Sequence[tuple[str, nn.Module]], taps: Mapping[str, str],
                 input_shape: tuple[int, int, int]):
        super().__init__()
        for name, module in steps:
            self.add_module(name, module)
        self._order = [name for name, _ in steps]
        unknown = set(taps.values()) - set(self._order)
        if unknown:
            raise ValueError(f"taps refer to unknown steps {sorted(unknown)}")
        self.taps = dict(taps)
        self.input_shape = input_shape  # (channels, height, width)

    @property
    def tap_names(self) -> list[str]:
        return list(self.taps)

    def forward(self, x: torch.Tensor, taps: Iterable[str] = ("fc8",)) -> dict[str, torch.Tensor]:
        wanted = list(taps)
        if not wanted:
            return {}
        unknown = [t for t in wanted if t not in self.taps]
        if unknown:
            raise KeyError(f"unknown tap(s) {unknown}; this network has {self.tap_names}")
        by_step: dict[str, list[str]] = {}
        for tap in wanted:
            by_step.setdefault(self.taps[tap], []).append(tap)
        last = max(self._order.index(self.taps[t]) for t in wanted)
        out: dict[str, torch.Tensor] = {}
        for name in self._order[:last + 1]:
            x = self._modules[name](x)
            for tap in by_step.get(name, ()):
                out[tap] = x
        return out

    def layer_shapes(self, taps: Iterable[str] | None = None) -> dict[str, tuple[int, ...]]:
        """Shape of each tap for one input image (without the batch axis)."""
        param = next(self.parameters(), None)
        with torch.no_grad():
            x = torch.zeros((1, *self.input_shape),
                            device=param.device if param is not None else None)
            outs = self.forward(x, taps or self.tap_names)
        return {name: tuple(t.shape[1:]) for name, t in outs.items()}


def taps_for(layers: Sequence[str], relu_steps: Mapping[str, str],
             extra: Mapping[str, str]) -> dict[str, str]:
    """The taps of a network whose ``layers`` each have a ReLU step (``relu_steps``: layer ->
    its ReLU step): ``<layer>`` after the ReLU, ``<layer>:pre`` before it, and ``extra``
    (tap -> step) as given."""
    taps = {}
    for layer in layers:
        taps[layer] = relu_steps[layer]
        taps[f"{layer}:pre"] = layer
    taps.update(extra)
    return taps


def _caffe_alexnet(lrn_first: bool, n_classes: int = 1000) -> TappedNet:
    """CaffeNet (pool, then LRN) or BVLC AlexNet (LRN, then pool)."""

    def pool():
        return nn.MaxPool2d(3, 2, ceil_mode=True)  # Caffe rounds pooled sizes up

    def lrn():
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def block(i, conv):
        steps = [(f"conv{i}", conv), (f"relu{i}", nn.ReLU())]
        if i in (1, 2):
            pair = [(f"norm{i}", lrn()), (f"pool{i}", pool())]
            steps += pair if lrn_first else pair[::-1]
        return steps

    steps = (
        block(1, nn.Conv2d(3, 96, 11, stride=4))
        + block(2, nn.Conv2d(96, 256, 5, padding=2, groups=2))
        + block(3, nn.Conv2d(256, 384, 3, padding=1))
        + block(4, nn.Conv2d(384, 384, 3, padding=1, groups=2))
        + block(5, nn.Conv2d(384, 256, 3, padding=1, groups=2))
        + [("pool5", pool()), ("flatten", nn.Flatten())]
        + [("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU()), ("drop6", nn.Dropout())]
        + [("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU()), ("drop7", nn.Dropout())]
        + [("fc8", nn.Linear(4096, n_classes)), ("prob", nn.Softmax(dim=1))]
    )
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    relus = {f"conv{i}": f"relu{i}" for i in range(1, 6)} | {"fc6": "relu6", "fc7": "relu7"}
    taps = taps_for(layers, relus, {"pool5": "pool5", "fc8": "fc8", "prob": "prob"})
    return TappedNet(steps, taps, (3, 227, 227))


def caffenet(n_classes: int = 1000) -> TappedNet:
    """bvlc_reference_caffenet: 227x227 BGR input, pooling before LRN."""
    return _caffe_alexnet(lrn_first=False, n_classes=n_classes)


def bvlc_alexnet(n_classes: int = 1000) -> TappedNet:
    """bvlc_alexnet: as CaffeNet but LRN before pooling."""
    return _caffe_alexnet(lrn_first=True, n_classes=n_classes)


#: torchvision AlexNet state-dict prefixes -> our step names.
TORCHVISION_KEYS = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3",
    "features.8": "conv4", "features.10": "conv5",
    "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8",
}


def torchvision_alexnet(n_classes: int = 1000) -> TappedNet:
    """torchvision's AlexNet architecture (224x224 RGB, 64/192/384/256/256)."""
    steps = [
        ("conv1", nn.Conv2d(3, 64, 11, stride=4, padding=2)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, 2)),
        ("conv2", nn.Conv2d(64, 192, 5, padding=2)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(3, 2)),
        ("conv3", nn.Conv2d(192, 384, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(384, 256, 3, padding=1)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(256, 256, 3, padding=1)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(3, 2)), ("avgpool", nn.AdaptiveAvgPool2d((6, 6))),
        ("flatten", nn.Flatten()),
        ("drop6", nn.Dropout()), ("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU()),
        ("drop7", nn.Dropout()), ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU()),
        ("fc8", nn.Linear(4096, n_classes)), ("prob", nn.Softmax(dim=1)),
    ]
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    relus = {f"conv{i}": f"relu{i}" for i in range(1, 6)} | {"fc6": "relu6", "fc7": "relu7"}
    taps = taps_for(layers, relus, {"pool5": "avgpool", "fc8": "fc8", "prob": "prob"})
    return TappedNet(steps, taps, (3, 224, 224))


# -- preprocessing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """Image file -> input tensor, as the network was trained (or as a study recorded it).

    ``resize``: "square" resizes to (size, size) (Caffe), "shorter" scales the
    shorter side to ``size`` (torchvision); then a centre crop of ``crop``.
    ``interpolation``: "pil" resizes with Pillow's bilinear filter (which widens
    when it shrinks, so it smooths), "caffe" as Caffe's Python ``caffe.io.resize_image``
    (scikit-image's order-1 resize before 0.15: bilinear at pixel centres, no
    smoothing, outside pixels at the image's minimum; :func:`caffe_resize`).
    Values: ``pixels * scale`` in ``channels`` order ("BGR", "RGB" or "L"), minus
    ``mean``, divided by ``std`` (per channel, in that order).
    """

    size: int
    resize: str
    crop: int
    channels: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...] = field(default=(1.0, 1.0, 1.0))
    interpolation: str = "pil"

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        # torchvision's rounding (Caffe's integer halving agrees for even margins)
        left = int(round((width - self.crop) / 2.0))
        top = int(round((height - self.crop) / 2.0))
        return left, top, left + self.crop, top + self.crop

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        if self.resize == "square":
            return self.size, self.size
        if width <= height:
            return self.size, max(1, int(self.size * height / width))
        return max(1, int(self.size * width / height)), self.size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("L" if self.channels == "L" else "RGB")
        size = self.resized_size(*image.size)
        if self.interpolation == "caffe":
            pixels = caffe_resize(np.asarray(image), size[1], size[0])
            left, top, right, bottom = self.crop_box(size[0], size[1])
            pixels = pixels[top:bottom, left:right]
        else:
            image = image.resize(size, Image.BILINEAR)
            image = image.crop(self.crop_box(*image.size))
            pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.channels == "BGR":
            pixels = pixels[:, :, ::-1]
        pixels = pixels * self.scale
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def to_json(self) -> str:
        fields = asdict(self)
        if fields["interpolation"] == "pil":  # as written before the field existed
            del fields["interpolation"]
        return json.dumps(fields, sort_keys=True)


def _caffe_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each output pixel along one axis: its two source pixels and their weights."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    low = np.floor(src).astype(np.int64)
    frac = src - low
    high = low + 1
    w_low = np.where((low >= 0) & (low < n_in), 1.0 - frac, 0.0)   # outside: the padding
    w_high = np.where((high >= 0) & (high < n_in), frac, 0.0)
    return (np.clip(low, 0, n_in - 1), np.clip(high, 0, n_in - 1),
            w_low.astype(np.float32), w_high.astype(np.float32))


def caffe_resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W[, C]) pixels -> float32 (height, width[, C]), as ``caffe.io.resize_image``.

    Caffe's Transformer resizes with scikit-image's ``resize(order=1)`` on the image
    rescaled to [0, 1] by its own minimum and maximum. In the scikit-image of Caffe's
    time (before 0.15: no ``anti_aliasing``, ``mode='constant'``) that is bilinear
    interpolation at pixel centres (output pixel i samples the input at
    (i + 0.5) * in / out - 0.5), with no smoothing when shrinking, and with the
    pixels outside the image at 0 of the rescaled image, the image's minimum
    (this matters only when enlarging, at the border). A constant image stays
    constant. Computed here axis by axis in float32.
    """
    pixels = np.asarray(pixels)
    lowest = pixels.min() if pixels.size else 0
    rows = _caffe_taps(pixels.shape[0], height)
    cols = _caffe_taps(pixels.shape[1], width)
    shape = (-1,) + (1,) * (pixels.ndim - 1)
    lowest32 = np.float32(lowest)
    top = pixels[rows[0]].astype(np.float32) - lowest32
    bottom = pixels[rows[1]].astype(np.float32) - lowest32
    out = top * rows[2].reshape(shape) + bottom * rows[3].reshape(shape)
    shape = (1, -1) + (1,) * (pixels.ndim - 2)
    out = out[:, cols[0]] * cols[2].reshape(shape) + out[:, cols[1]] * cols[3].reshape(shape)
    return out + lowest32


#: CaffeNet / BVLC AlexNet: 256x256, centre 227, BGR 0-255, mean (104, 117, 123).
CAFFE_PREPROCESSING = Preprocessing(
    size=256, resize="square", crop=227, channels="BGR", scale=1.0, mean=(104.0, 117.0, 123.0),
)
#: The mean pixel (B, G, R) of Caffe's ``python/caffe/imagenet/ilsvrc_2012_mean.npy``
#: (``mean(1).mean(1)``), what Caffe's Python examples and the paper's authors subtract.
ILSVRC_2012_MEAN_PIXEL = (104.0069879317889, 116.66876761696767, 122.6789143406786)
#: As the paper's authors recorded CaffeNet (their ``set_up_caffe_net.py`` and
#: ``Caffe_AlexNet2.py``): Caffe's Python Transformer on ``caffe.io.load_image``, the
#: whole image resized straight to 227x227 (:func:`caffe_resize`, no crop), BGR 0-255,
#: minus :data:`ILSVRC_2012_MEAN_PIXEL`.
AUTHORS_PREPROCESSING = Preprocessing(
    size=227, resize="square", crop=227, channels="BGR", scale=1.0,
    mean=ILSVRC_2012_MEAN_PIXEL, interpolation="caffe",
)
#: torchvision: shorter side 256, centre 224, RGB 0-1, ImageNet mean and std.
TORCHVISION_PREPROCESSING = Preprocessing(
    size=256, resize="shorter", crop=224, channels="RGB", scale=1.0 / 255,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)


# -- weights into a model -------------------------------------------------------------


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy a state dict into ``model``; every mismatch named with both shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise WeightsError(f"{source}: unknown parameter(s) {unexpected[:5]}; the network "
                           f"has {sorted(own)[:8]}...")
    if missing:
        raise WeightsError(f"{source}: no weights for {missing[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise WeightsError(f"{source}: layer {key.rsplit('.', 1)[0]} ({key}): file shape "
                               f"{tuple(value.shape)}, network shape {tuple(own[key].shape)}")
    model.load_state_dict(state)


def state_dict_from_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict saved in a PyTorch file (also under a ``state_dict`` or ``model``
    key; without the ``module.`` prefix of a model saved from DataParallel)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise WeightsError(f"{path}: not a PyTorch state dict ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


# -- a faster copy for gradients to the input (the PPGN sampler, training the generator) ---
#
# Profiled on the CPU (torch 2.13, one thread, the demo pair at 256 chains), a sampler step
# spent about a quarter of its time in nn.LocalResponseNorm (a chain of generic ops: square,
# pad, a 5x1x1 avg_pool3d, pow, divide, and the backward of each) and another eighth in
# the input gradient of the demo network's first convolution (one input channel: oneDNN's
# backward-data kernel with a single output channel is slow). The modules below compute
# the same functions: the forward passes give the same bits as the modules they replace
# (tests/test_ppgn.py checks it), only the backward passes round differently.


class _LRNFunction(torch.autograd.Function):
    """Local response normalisation across channels of an (N, C, H, W) tensor."""

    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        # F.local_response_norm sums the squares of a window with avg_pool3d (in order,
        # from the window's first channel, padding counted) and divides by ``size``; the
        # same sums in the same order give the same bits, in a handful of vectorised passes.
        sq = x * x
        s = _window_sum(sq, size // 2, (size - 1) // 2)
        base = s.div_(size).mul_(alpha).add_(k)
        den = base.pow(beta)
        ctx.save_for_backward(x, base, den)
        ctx.lrn = (size, alpha, beta)
        return x / den

    @staticmethod
    def backward(ctx, grad):
        # y_c = x_c B_c^-beta, B_c = k + alpha/size sum_{j in W(c)} x_j^2, so
        # dL/dx_i = g_i B_i^-beta - 2 alpha beta / size x_i sum_{c: i in W(c)} g_c x_c B_c^(-beta-1)
        x, base, den = ctx.saved_tensors
        size, alpha, beta = ctx.lrn
        t = grad * x / (den * base)
        s = _window_sum(t, (size - 1) // 2, size // 2)  # the windows that contain channel i
        return grad / den - (2.0 * alpha * beta / size) * x * s, None, None, None, None


def _window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """s_c = t_{c-before} + ... + t_{c+after} over channels (missing ones are 0), summed
    in that order."""
    c = t.shape[1]
    s = torch.zeros_like(t)
    for shift in range(-before, after + 1):  # s_c += t_{c+shift}
        lo, hi = max(0, -shift), min(c, c - shift)
        if lo < hi:
            s[:, lo:hi] += t[:, lo + shift:hi + shift]
    return s


class FastLocalResponseNorm(nn.LocalResponseNorm):
    """:class:`torch.nn.LocalResponseNorm` with the same forward bits and an analytic
    backward pass (2-3x faster on the CPU). 4-d inputs; others (and autocast) take the
    module it replaces."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)


class _OneChannelConvFunction(torch.autograd.Function):
    """A stride-1 convolution of a one-channel input whose input gradient is a depthwise
    convolution summed over channels (fast on channels-last tensors)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return torch.nn.functional.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (ph, pw), (kh, kw) = ctx.padding, weight.shape[2:]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.functional.conv2d(
                grad, weight.flip(2, 3), None, 1, (kh - 1 - ph, kw - 1 - pw),
                groups=weight.shape[0]).sum(1, keepdim=True)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1],
                list(ctx.padding), [1, 1], False, [0, 0], 1,
                [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_w, grad_b, None


class OneChannelConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` of a one-channel input (stride 1, no dilation, zero
    padding): the same forward, an input gradient several times faster on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        return _OneChannelConvFunction.apply(x, self.weight, self.bias, tuple(self.padding))


def _fits_one_channel(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.in_channels == 1 and m.groups == 1
            and tuple(m.stride) == (1, 1) and tuple(m.dilation) == (1, 1)
            and m.padding_mode == "zeros" and isinstance(m.padding, tuple)
            and all(0 <= p < k for p, k in zip(m.padding, m.kernel_size, strict=True)))


def fast_copy(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` with :class:`FastLocalResponseNorm` and :class:`OneChannelConv2d`
    in place of the modules they replace (same parameters, same forward bits, other
    rounding in the backward pass) and, with ``channels_last``, its 4-d weights in
    channels-last order (faster convolutions and pooling on the CPU; layouts only, not
    values). Its mode and parameters' ``requires_grad`` are those of ``model``, which is
    untouched; its ``repr`` names the new modules (an architecture fingerprint taken
    from it differs)."""
    net = copy.deepcopy(model)
    for parent in net.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.LocalResponseNorm:
                fast = FastLocalResponseNorm(child.size, child.alpha, child.beta, child.k)
            elif _fits_one_channel(child):
                fast = OneChannelConv2d(1, child.out_channels, child.kernel_size,
                                        padding=child.padding, bias=child.bias is not None,
                                        device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    fast.weight.copy_(child.weight)
                    if child.bias is not None:
                        fast.bias.copy_(child.bias)
                fast.weight.requires_grad_(child.weight.requires_grad)
                if child.bias is not None:
                    fast.bias.requires_grad_(child.bias.requires_grad)
            else:
                continue
            fast.train(child.training)
            setattr(parent, name, fast)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def gradient_copy(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """A frozen :func:`fast_copy` of ``model`` for gradients with respect to its input
    (the PPGN sampler, the demo generator's training): eval mode, no parameter gradients,
    the same function as ``model``, which is untouched."""
    net = fast_copy(model, channels_last=channels_last).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
