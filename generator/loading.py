"""Networks by name, with their weights: what the command-line tools load (docs/networks.md).

:data:`NETWORKS` names every classifier the tools take (``--network``): ``caffenet``,
``bvlc_alexnet``, ``alexnet`` (the architectures of :mod:`generator.networks`) and
``demo`` (the digits network of :mod:`generator.digits`), each a :class:`NetworkSpec`
with its preprocessing. :func:`load_weights` reads a weights file into a network (a
``.caffemodel`` through :mod:`generator.caffe`, or a PyTorch state dict with our keys
or torchvision's); :func:`load_network` gives a named network ready to run, with the
SHA-256 of its weights.

This module sits above the architectures (:mod:`generator.networks`), the Caffe reader
(:mod:`generator.caffe`) and the demo's networks (:mod:`generator.digits`); none of
them imports it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from common.files import sha256_file

from . import digits
from .caffe import load_caffe_weights
from .networks import (
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
    "get_spec",
    "load_weights",
    "load_network",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkSpec:
    """A network by name: how to build it, how its inputs are made, its classes."""

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
    "demo": NetworkSpec("demo", digits.demo_network, digits.DEMO_PREPROCESSING, "digits",
                        "the small digits network (embedded default)"),
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
