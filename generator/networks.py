"""The classifiers, their named taps and their preprocessing (DESIGN.md §5).

Every network is a :class:`TappedNet`: an ordered list of named steps (layers,
ReLUs, pools, ...) whose ``forward(x, taps)`` returns the requested taps by
name and stops after the deepest one. Tap names:

* ``conv1`` .. ``conv5``, ``fc6``, ``fc7``: post-ReLU (what the paper records
  for fc6/fc7); ``conv5:pre``, ``fc6:pre``, ...: the same layer before its ReLU
  (what PPGN targets for conv5/fc6);
* ``pool5``: the input of fc6 (post-ReLU, pooled);
* ``fc8``: the logits (pre-softmax; the paper's fc8); ``prob``: softmax.

No step works in place, so a tap is never changed by a later step.

Networks by name (:data:`NETWORKS`): ``caffenet`` (bvlc_reference_caffenet:
pool before LRN), ``bvlc_alexnet`` (LRN before pool), ``alexnet``
(torchvision's architecture: 64/192/384/256/256, no LRN, no groups) and
``demo`` (the small digits network of :mod:`generator.demo`). Each has its own
:class:`Preprocessing`, defined here beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = [
    "TappedNet",
    "Preprocessing",
    "NetworkSpec",
    "NETWORKS",
    "CAFFE_PREPROCESSING",
    "TORCHVISION_PREPROCESSING",
    "caffenet",
    "bvlc_alexnet",
    "torchvision_alexnet",
    "get_spec",
    "load_network",
    "load_weights",
    "load_state",
    "state_dict_from_file",
    "file_sha256",
    "WeightsError",
]

log = logging.getLogger(__name__)


class WeightsError(ValueError):
    """Weights that do not fit a network (the message names the layer and shapes)."""


# -- the tapped network ----------------------------------------------------------------


class TappedNet(nn.Module):
    """A feed-forward classifier as named steps, with named taps.

    ``steps``: (name, module) in order; ``taps``: tap name -> the step after
    which it is read. Parameters keep the step names (``conv1.weight``), which
    are also the Caffe layer names.
    """

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


def _taps_for(layers: Sequence[str], relu_steps: Mapping[str, str], extra: Mapping[str, str]):
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
    taps = _taps_for(layers, relus, {"pool5": "pool5", "fc8": "fc8", "prob": "prob"})
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
    taps = _taps_for(layers, relus, {"pool5": "avgpool", "fc8": "fc8", "prob": "prob"})
    return TappedNet(steps, taps, (3, 224, 224))


# -- preprocessing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """Image file -> input tensor, as the network was trained.

    ``resize``: "square" resizes to (size, size) (Caffe), "shorter" scales the
    shorter side to ``size`` (torchvision); then a centre crop of ``crop``.
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
        image = image.resize(self.resized_size(*image.size), Image.BILINEAR)
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
        return json.dumps(asdict(self), sort_keys=True)


#: CaffeNet / BVLC AlexNet: 256x256, centre 227, BGR 0-255, mean (104, 117, 123).
CAFFE_PREPROCESSING = Preprocessing(
    size=256, resize="square", crop=227, channels="BGR", scale=1.0, mean=(104.0, 117.0, 123.0),
)
#: torchvision: shorter side 256, centre 224, RGB 0-1, ImageNet mean and std.
TORCHVISION_PREPROCESSING = Preprocessing(
    size=256, resize="shorter", crop=224, channels="RGB", scale=1.0 / 255,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)


# -- registry and weights ----------------------------------------------------------------


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    build: Callable[[], TappedNet]
    preprocessing: Preprocessing
    classes: str  # "imagenet" or "digits"
    description: str


NETWORKS: dict[str, NetworkSpec] = {
    "caffenet": NetworkSpec("caffenet", caffenet, CAFFE_PREPROCESSING, "imagenet",
                            "bvlc_reference_caffenet (the paper's and PPGN's network)"),
    "bvlc_alexnet": NetworkSpec("bvlc_alexnet", bvlc_alexnet, CAFFE_PREPROCESSING, "imagenet",
                                "BVLC AlexNet (LRN before pooling)"),
    "alexnet": NetworkSpec("alexnet", torchvision_alexnet, TORCHVISION_PREPROCESSING, "imagenet",
                           "torchvision's AlexNet architecture"),
}


def get_spec(name: str) -> NetworkSpec:
    if name == "demo":
        from .demo import DEMO_PREPROCESSING, demo_network

        return NetworkSpec("demo", demo_network, DEMO_PREPROCESSING, "digits",
                           "the small digits network (embedded default)")
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(
            f"unknown network {name!r}; choose one of {', '.join([*NETWORKS, 'demo'])}"
        ) from None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_from_file(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise WeightsError(f"{path}: not a PyTorch state dict ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return obj


def _rename_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        renamed[f"{TORCHVISION_KEYS.get(prefix, prefix)}.{leaf}"] = value
    return renamed


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


def load_weights(model: TappedNet, path: str | os.PathLike) -> None:
    """Load a ``.caffemodel`` or a PyTorch state dict (ours or torchvision's keys)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such weights file")
    if path.endswith(".caffemodel"):
        from .caffe import load_caffe_weights

        load_caffe_weights(model, path)
        return
    state = state_dict_from_file(path)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(("features.", "classifier.")) for k in state):
        state = _rename_torchvision(state)
    load_state(model, state, path)


def load_network(
    name: str, weights: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
) -> tuple[TappedNet, NetworkSpec, str]:
    """The network ``name`` in eval mode with its weights; returns (model, spec, checksum).

    ``weights`` None: the demo network is trained or taken from the cache;
    the others keep random weights (with a warning: fine for benchmarks only).
    """
    spec = get_spec(name)
    if name == "demo" and weights is None:
        from .demo import trained_demo_network

        model, checksum = trained_demo_network()
    else:
        model = spec.build()
        if weights is None:
            log.warning("%s: no weights given, using random weights", name)
            checksum = "random"
        else:
            load_weights(model, weights)
            checksum = file_sha256(weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device), spec, checksum
