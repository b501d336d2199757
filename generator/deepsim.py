"""The DeePSiM fc6 generator: the image prior PPGN samples through (docs/networks.md).

Dosovitskiy & Brox (2016) trained it to invert CaffeNet's fc6; PPGN (Nguyen et
al. 2017, ``nets/generator/noiseless``) uses it as G. Layers, named as in the
Caffe file so that :func:`generator.caffe.load_caffe_weights` maps them by name:

======= ============= ============================ ===============
layer   Caffe type    torch module                 output
======= ============= ============================ ===============
defc7   InnerProduct  Linear 4096->4096            4096
defc6   InnerProduct  Linear 4096->4096            4096
defc5   InnerProduct  Linear 4096->4096            4096 -> 256x4x4
deconv5 Deconvolution ConvTranspose 4/2/1 256->256 256x8x8
conv5_1 Deconvolution ConvTranspose 3/1/1 256->512 512x8x8
deconv4 Deconvolution ConvTranspose 4/2/1 512->256 256x16x16
conv4_1 Deconvolution ConvTranspose 3/1/1 256->256 256x16x16
deconv3 Deconvolution ConvTranspose 4/2/1 256->128 128x32x32
conv3_1 Deconvolution ConvTranspose 3/1/1 128->128 128x32x32
deconv2 Deconvolution ConvTranspose 4/2/1 128->64  64x64x64
deconv1 Deconvolution ConvTranspose 4/2/1 64->32   32x128x128
deconv0 Deconvolution ConvTranspose 4/2/1 32->3    3x256x256
======= ============= ============================ ===============

A leaky ReLU (negative slope 0.3, never in place) follows every layer but
deconv0. ``conv5_1``, ``conv4_1`` and ``conv3_1`` are *Deconvolution* layers in
PPGN's ``generator.prototxt`` despite their names, so they are
:class:`~torch.nn.ConvTranspose2d` here too: their Caffe blobs are
(in, out, 3, 3) and copy in without transposes, like every other layer.

The output is in CaffeNet's input space: BGR, 0-255 scale, mean
(104, 117, 123) subtracted, 256x256; the classifier sees the centre 227x227
(:func:`crop_to_classifier`), and :func:`to_pixels` turns it into RGB pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.files import sha256_file

from .caffe import load_caffe_weights
from .networks import CAFFE_PREPROCESSING, WeightsError, load_state, state_dict_from_file

__all__ = [
    "DeePSiMGenerator",
    "FC_LAYERS",
    "IMAGE_LAYERS",
    "LAYERS",
    "DEFAULT_CHANNELS",
    "CAFFE_MEAN",
    "crop_to_classifier",
    "to_pixels",
    "layer_macs",
    "flops_per_image",
    "load_generator",
]

log = logging.getLogger(__name__)

#: CaffeNet's per-channel mean, in BGR order: (104, 117, 123).
CAFFE_MEAN: tuple[float, ...] = CAFFE_PREPROCESSING.mean

#: The fully connected layers, in order.
FC_LAYERS = ("defc7", "defc6", "defc5")

#: The (transposed) convolutions after the reshape: (name, kernel, stride, padding).
IMAGE_LAYERS = (
    ("deconv5", 4, 2, 1),
    ("conv5_1", 3, 1, 1),
    ("deconv4", 4, 2, 1),
    ("conv4_1", 3, 1, 1),
    ("deconv3", 4, 2, 1),
    ("conv3_1", 3, 1, 1),
    ("deconv2", 4, 2, 1),
    ("deconv1", 4, 2, 1),
    ("deconv0", 4, 2, 1),
)

#: Every layer with weights, in forward order (also the Caffe layer names).
LAYERS = FC_LAYERS + tuple(name for name, *_ in IMAGE_LAYERS)

#: Channels of each feature map from the reshaped defc5 output to the image.
DEFAULT_CHANNELS = (256, 256, 512, 256, 256, 128, 128, 64, 32, 3)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


class DeePSiMGenerator(nn.Module):
    """The DeePSiM fc6 generator: an fc6 code (N, 4096) -> an image (N, 3, 256, 256).

    The defaults build the real network (56,097,891 parameters). The sizes can
    be changed for tests and small experiments:

    * ``code_dim``: the input's width (CaffeNet's fc6: 4096);
    * ``fc``: the width of defc7 and defc6;
    * ``channels``: 10 channel counts: the reshaped defc5 output (defc5 has
      ``channels[0] * start**2`` outputs), then the output of each of the nine
      image layers in order (the last is the image's, 3);
    * ``start``: the reshaped map's side (4); the image's side is ``start * 64``;
    * ``negative_slope``: of the leaky ReLUs (0.3).
    """

    def __init__(self, code_dim: int = 4096, fc: int = 4096,
                 channels: Sequence[int] = DEFAULT_CHANNELS, start: int = 4,
                 negative_slope: float = 0.3):
        super().__init__()
        self.code_dim = _positive_int("code_dim", code_dim)
        self.fc = _positive_int("fc", fc)
        self.start = _positive_int("start", start)
        channels = tuple(channels)
        if len(channels) != len(IMAGE_LAYERS) + 1:
            raise ValueError(f"channels must hold {len(IMAGE_LAYERS) + 1} counts (the reshaped "
                             f"defc5 output, then each of {[n for n, *_ in IMAGE_LAYERS]}), "
                             f"not {len(channels)}: {channels}")
        self.channels = tuple(_positive_int(f"channels[{i}]", c) for i, c in enumerate(channels))
        self.negative_slope = float(negative_slope)

        reshaped = self.channels[0] * self.start ** 2
        self.defc7 = nn.Linear(self.code_dim, self.fc)
        self.defc6 = nn.Linear(self.fc, self.fc)
        self.defc5 = nn.Linear(self.fc, reshaped)
        for (name, kernel, stride, padding), c_in, c_out in zip(
                IMAGE_LAYERS, self.channels[:-1], self.channels[1:], strict=True):
            self.add_module(name, nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding))

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one generated image: (3, 256, 256) by default."""
        return self.layer_shapes()[LAYERS[-1]]

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each layer's output shape for one code (no batch axis), computed from the sizes.

        defc5's entry is its flat output; the reshape to
        ``(channels[0], start, start)`` follows it.
        """
        shapes: dict[str, tuple[int, ...]] = {}
        for name in FC_LAYERS:
            shapes[name] = (self._modules[name].out_features,)
        side = self.start
        for name, *_ in IMAGE_LAYERS:
            layer = self._modules[name]
            side = ((side - 1) * layer.stride[0] - 2 * layer.padding[0]
                    + layer.dilation[0] * (layer.kernel_size[0] - 1) + layer.output_padding[0] + 1)
            shapes[name] = (layer.out_channels, side, side)
        return shapes

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Codes (N, code_dim) (or (N, code_dim, 1, 1)) -> images (N, 3, 256, 256).

        The images are the raw deconv0 output, as in the original network:
        CaffeNet's input space (BGR, 0-255 scale, mean-subtracted), not clipped.
        """
        if h.dim() == 4 and h.shape[2:] == (1, 1):
            h = h.flatten(1)
        if h.dim() != 2 or h.shape[1] != self.code_dim:
            raise ValueError(f"the generator takes codes of shape (N, {self.code_dim}), "
                             f"not {tuple(h.shape)}")
        x = h
        for name in FC_LAYERS:
            x = F.leaky_relu(self._modules[name](x), self.negative_slope)
        x = x.reshape(x.shape[0], self.channels[0], self.start, self.start)
        last = IMAGE_LAYERS[-1][0]
        for name, *_ in IMAGE_LAYERS:
            x = self._modules[name](x)
            if name != last:
                x = F.leaky_relu(x, self.negative_slope)
        return x

    def extra_repr(self) -> str:
        return (f"code_dim={self.code_dim}, fc={self.fc}, channels={self.channels}, "
                f"start={self.start}, negative_slope={self.negative_slope}")


# -- images ------------------------------------------------------------------------------


def crop_to_classifier(x, crop: int = 227):
    """The centre ``crop`` x ``crop`` of images (..., H, W) that the classifier sees.

    The offset is ``(size - crop) // 2`` on each axis (PPGN's ``compute_topleft``):
    ``[14:241]`` for a 256 image and CaffeNet's 227. Works on tensors (a view,
    so gradients flow back into the full image) and numpy arrays.
    """
    if x.ndim < 2:
        raise ValueError(f"expected images (..., H, W), not shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if crop < 1 or crop > height or crop > width:
        raise ValueError(f"cannot crop {crop}x{crop} from {height}x{width} images")
    top, left = (height - crop) // 2, (width - crop) // 2
    return x[..., top:top + crop, left:left + crop]


def to_pixels(x, mean: Sequence[float] = CAFFE_MEAN, *,
              in_range: tuple[float, float] | None = None) -> np.ndarray:
    """Generator output (BGR, mean-subtracted) -> uint8 RGB image(s) for saving.

    ``x``: (3, H, W) or (N, 3, H, W), a tensor or an array. Adds ``mean`` (BGR
    order), rounds, clips to 0..255 and reorders BGR -> RGB; returns (H, W, 3)
    or (N, H, W, 3). ``in_range``: instead of adding the mean, map that range
    linearly onto 0..255 after clipping to it, as PPGN's own ``save_image`` does
    with (-120, 120).
    """
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (3, 4) or arr.shape[-3] != 3:
        raise ValueError(f"expected BGR images (3, H, W) or (N, 3, H, W), not shape {arr.shape}")
    if in_range is None:
        mean = np.asarray(mean, dtype=np.float64)
        if mean.shape != (3,):
            raise ValueError(f"mean must hold 3 values (B, G, R), not {mean.tolist()}")
        arr = arr + mean.reshape(3, 1, 1)
    else:
        low, high = map(float, in_range)
        if not high > low:
            raise ValueError(f"in_range must be (low, high) with low < high, not {in_range}")
        arr = (np.clip(arr, low, high) - low) * (255.0 / (high - low))
    pixels = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    pixels = pixels[..., ::-1, :, :]  # BGR -> RGB
    return np.ascontiguousarray(np.moveaxis(pixels, -3, -1))


# -- cost --------------------------------------------------------------------------------


def layer_macs(model: DeePSiMGenerator) -> dict[str, int]:
    """Multiply-adds of each layer for one code, counted from the layer sizes.

    Linear: in x out. Transposed convolution: every input position times
    (out/groups) x kh x kw (the dense computation, including the taps that fall
    into the cropped padding). Biases and activations are not counted. Needs no
    forward pass (works on the meta device).
    """
    shapes = model.layer_shapes()
    macs: dict[str, int] = {}
    for name in FC_LAYERS:
        layer = model._modules[name]
        macs[name] = layer.in_features * layer.out_features
    in_shape: tuple[int, ...] = (model.channels[0], model.start, model.start)
    for name, *_ in IMAGE_LAYERS:
        layer = model._modules[name]
        c_in, height, width = in_shape
        kh, kw = layer.kernel_size
        macs[name] = height * width * c_in * (layer.out_channels // layer.groups) * kh * kw
        in_shape = shapes[name]
    return macs


def flops_per_image(model: DeePSiMGenerator) -> int:
    """Multiply-adds of one forward pass per image (about 1.01e9 for the real network).

    A multiply-add counts once; double it for FLOPs in the two-operations sense.
    The per-layer counts are :func:`layer_macs`.
    """
    return sum(layer_macs(model).values())


# -- weights -----------------------------------------------------------------------------


def load_generator(
    weights: str | os.PathLike | None, *, device: str | torch.device = "cpu", **sizes,
) -> tuple[DeePSiMGenerator, str]:
    """The generator in eval mode with frozen parameters; returns (model, checksum).

    ``weights``: a ``.caffemodel`` (layers matched by name, see
    :func:`generator.caffe.load_caffe_weights`), a PyTorch state dict of this
    class, or None for random weights (a warning: fine for benchmarks only; the
    checksum is then ``"random"``). The checksum is the file's SHA-256.
    ``sizes`` go to :class:`DeePSiMGenerator` (the real network by default).
    Gradients still flow to the input code, which is what PPGN needs.
    """
    model = DeePSiMGenerator(**sizes)
    if weights is None:
        log.warning("DeePSiM generator: no weights given, using random weights "
                    "(fine for benchmarks only)")
        checksum = "random"
    else:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise WeightsError(f"{path}: no such weights file")
        if path.endswith(".caffemodel"):
            load_caffe_weights(model, path)
        else:  # without the "module." prefix of DataParallel (state_dict_from_file)
            load_state(model, state_dict_from_file(path), path)
        checksum = sha256_file(path)
        log.info("DeePSiM generator: weights %s (sha256 %s)", path, checksum[:12])
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model.to(device), checksum
