"""Networks by name, with their weights: what the command-line tools load (docs/networks.md).

:data:`NETWORKS` names every classifier the tools take (``--network``): ``caffenet``,
``bvlc_alexnet``, ``alexnet`` (the architectures of :mod:`generator.networks`) and
``demo`` (the digits network of :mod:`generator.digits`), each a :class:`NetworkSpec`
with its preprocessing and the others it takes by name (``--preprocess``: ``authors``
or ``crop`` for the Caffe networks, :data:`CAFFE_PREPROCESSINGS`). :func:`load_weights`
reads a weights file into a network (a ``.caffemodel`` through :mod:`generator.caffe`,
or a PyTorch state dict with our keys or torchvision's); :func:`load_network` gives a
named network ready to run, with the SHA-256 of its weights.

This module sits above the architectures (:mod:`generator.networks`), the Caffe reader
(:mod:`generator.caffe`) and the demo's networks (:mod:`generator.digits`); none of
them imports it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from common.files import sha256_file

from . import digits
from .caffe import load_caffe_weights
from .networks import (
    AUTHORS_PREPROCESSING,
    CAFFE_PREPROCESSING,
    TORCHVISION_KEYS,
    TORCHVISION_PREPROCESSING,
    Preprocessing,
    TappedNet,
    WeightsError,
    bvlc_alexnet,
    caffenet,
    load_state,
    state_dict_from_file,
    torchvision_alexnet,
)

__all__ = [
    "NetworkSpec",
    "NETWORKS",
    "CAFFE_PREPROCESSINGS",
    "get_spec",
    "load_weights",
    "load_network",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkSpec:
    """A network by name: how to build it, how its inputs are made, its classes.

    ``preprocessing`` is the default; ``preprocessings`` names every preprocessing the
    network takes (``--preprocess NAME``), the default among them.
    """

    name: str
    build: Callable[[], TappedNet]
    preprocessing: Preprocessing
    classes: str  # "imagenet" or "digits"
    description: str
    preprocessings: Mapping[str, Preprocessing] = field(default_factory=dict)

    def preprocessing_named(self, name: str | None) -> Preprocessing:
        """The preprocessing called ``name`` (None: the default); ValueError naming the
        choices if the network has none of that name."""
        if name is None:
            return self.preprocessing
        try:
            return self.preprocessings[name]
        except KeyError:
            raise ValueError(f"{self.name} has no preprocessing {name!r}; choose one of "
                             f"{', '.join(self.preprocessings)}") from None

    def preprocessing_name(self, preprocessing: Preprocessing) -> str:
        """The name of ``preprocessing`` among this network's ("custom" if none)."""
        return next((n for n, p in self.preprocessings.items() if p == preprocessing),
                    "custom")


#: The preprocessings of the Caffe networks, by name: ``authors``, as the paper's
#: authors recorded CaffeNet (Caffe's Python Transformer: the whole image straight to
#: 227x227, minus the ILSVRC-2012 mean pixel), and ``crop``, Caffe's ImageNet test-time
#: input (256x256, then the centre 227x227, minus (104, 117, 123)). docs/networks.md.
CAFFE_PREPROCESSINGS: dict[str, Preprocessing] = {
    "authors": AUTHORS_PREPROCESSING,
    "crop": CAFFE_PREPROCESSING,
}

NETWORKS: dict[str, NetworkSpec] = {
    # the paper's activations were recorded the authors' way (docs/networks.md)
    "caffenet": NetworkSpec("caffenet", caffenet, AUTHORS_PREPROCESSING, "imagenet",
                            "bvlc_reference_caffenet (the paper's and PPGN's network)",
                            CAFFE_PREPROCESSINGS),
    "bvlc_alexnet": NetworkSpec("bvlc_alexnet", bvlc_alexnet, CAFFE_PREPROCESSING, "imagenet",
                                "BVLC AlexNet (LRN before pooling)", CAFFE_PREPROCESSINGS),
    "alexnet": NetworkSpec("alexnet", torchvision_alexnet, TORCHVISION_PREPROCESSING, "imagenet",
                           "torchvision's AlexNet architecture",
                           {"torchvision": TORCHVISION_PREPROCESSING}),
    "demo": NetworkSpec("demo", digits.demo_network, digits.DEMO_PREPROCESSING, "digits",
                        "the small digits network (embedded default)",
                        {"demo": digits.DEMO_PREPROCESSING}),
}


def get_spec(name: str) -> NetworkSpec:
    """The :class:`NetworkSpec` called ``name`` (ValueError naming the others if none)."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(
            f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}"
        ) from None


def _rename_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        renamed[f"{TORCHVISION_KEYS.get(prefix, prefix)}.{leaf}"] = value
    return renamed


def load_weights(model: TappedNet, path: str | os.PathLike) -> None:
    """Load a ``.caffemodel`` or a PyTorch state dict (ours or torchvision's keys)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such weights file")
    if path.endswith(".caffemodel"):
        load_caffe_weights(model, path)
        return
    state = state_dict_from_file(path)
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
        model, checksum = digits.trained_demo_network()
    else:
        model = spec.build()
        if weights is None:
            log.warning("%s: no weights given, using random weights", name)
            checksum = "random"
        else:
            load_weights(model, weights)
            checksum = sha256_file(weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device), spec, checksum
