"""Networks by name, with their weights: what the command-line tools load (docs/networks.md).

:data:`NETWORKS` names every classifier the tools take (``--network``): ``caffenet``,
``bvlc_alexnet``, ``alexnet`` (the architectures of :mod:`generator.networks`) and
``demo`` (the digits network of :mod:`generator.digits`), each a :class:`NetworkSpec`
with its preprocessing and the others it takes by name (``--preprocess``: ``authors``
or ``crop`` for the Caffe networks, :data:`CAFFE_PREPROCESSINGS`). :func:`load_weights`
reads a weights file into a network (a ``.caffemodel`` through :mod:`generator.caffe`,
or a PyTorch state dict with our keys or torchvision's); :func:`load_network` gives a
named network ready to run, with the SHA-256 of its weights.

Any other PyTorch network is taken by reference (docs/networks.md, "Any PyTorch
network") and tapped at its modules by :class:`generator.hooked.HookedNet`:

* ``torchvision:<name>``: torchvision's constructor (``torchvision.models.get_model``,
  random weights) when torchvision imports, else the project's copy of the ResNets
  (:mod:`generator.torchvision_models`: the same module names and state-dict keys);
  torchvision's ImageNet preprocessing; 1,000 ImageNet classes;
* ``module.path:callable`` or ``path/to/file.py:callable``: a user's function (or
  class) called with no arguments that returns an ``nn.Module``; its preprocessing is
  the attribute ``preprocessing`` (a :class:`generator.networks.Preprocessing`) of the
  model or of the callable, or ``--preprocess``; its classes are its outputs.

``--preprocess`` also takes a spec, ``KEY=VALUE,...`` (:func:`parse_preprocessing`),
for any network. Weights of a referenced network are a PyTorch state dict with the
model's own keys, loaded strictly (every mismatch a :class:`WeightsError`).

This module sits above the architectures (:mod:`generator.networks`,
:mod:`generator.torchvision_models`), the hooks (:mod:`generator.hooked`), the Caffe
reader (:mod:`generator.caffe`) and the demo's networks (:mod:`generator.digits`);
none of them imports it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pkgutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import util as import_util
from pathlib import Path

import torch
from torch import nn

from common.files import sha256_file

from . import digits, torchvision_models
from .caffe import load_caffe_weights
from .hooked import HookedNet
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
    "parse_preprocessing",
    "input_shape_of",
    "build_network",
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
    build: Callable[[], nn.Module]  # a TappedNet; the bare model when ``hooked``
    preprocessing: Preprocessing | None  # None: a user's model that names none
    classes: str  # "imagenet", "digits" or "outputs" (0..K-1 unless --classes)
    description: str
    preprocessings: Mapping[str, Preprocessing] = field(default_factory=dict)
    hooked: bool = False  # tapped by module names (generator.hooked.HookedNet)

    def preprocessing_named(self, name: str | None) -> Preprocessing | None:
        """The preprocessing called ``name`` (None: the default), or a ``KEY=VALUE,...``
        spec over the default (:func:`parse_preprocessing`); ValueError naming the
        choices if the network has none of that name."""
        if name is None:
            return self.preprocessing
        if "=" in name:
            return parse_preprocessing(name, self.preprocessing or TORCHVISION_PREPROCESSING)
        try:
            return self.preprocessings[name]
        except KeyError:
            raise ValueError(f"{self.name} has no preprocessing {name!r}; choose one of "
                             f"{', '.join(self.preprocessings) or '(none by name)'}, or give "
                             "a spec such as size=256,crop=224 (docs/networks.md)") from None

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
    """The :class:`NetworkSpec` called ``name``: one of :data:`NETWORKS`,
    ``torchvision:<name>`` or ``module.path:callable`` / ``file.py:callable`` (module
    docstring). ValueError naming the choices if none. A user's module is imported here
    (its callable is not called)."""
    if name in NETWORKS:
        return NETWORKS[name]
    if name.startswith(TORCHVISION_PREFIX):
        arch = name[len(TORCHVISION_PREFIX):]
        if not arch:
            raise ValueError(f"--network {name!r}: name the architecture, e.g. "
                             "torchvision:resnet18")
        return NetworkSpec(name, lambda: _torchvision_model(arch), TORCHVISION_PREPROCESSING,
                           "imagenet", f"torchvision's {arch}",
                           {"torchvision": TORCHVISION_PREPROCESSING}, hooked=True)
    if ":" in name:
        factory = _user_callable(name)
        preprocessing = _preprocessing_attribute(factory, name)
        return NetworkSpec(name, factory, preprocessing, "outputs", f"{name} (a user's model)",
                           {"model": preprocessing} if preprocessing else {}, hooked=True)
    raise ValueError(
        f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}, "
        "torchvision:<name> or module.path:callable (docs/networks.md)"
    )


#: The prefix of a torchvision architecture's name (``torchvision:resnet18``).
TORCHVISION_PREFIX = "torchvision:"
#: Packages a user's model may not come from: the layers generator never imports
#: (docs/architecture.md).
_FORBIDDEN_PACKAGES = ("server", "experiment")


def _torchvision_model(arch: str) -> nn.Module:
    """torchvision's ``arch`` with random weights; the project's copy when torchvision
    does not import (it cannot beside the CPU build of torch this project installs)."""
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001 - missing, or built for another torch
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if hasattr(torchvision.models, "get_model"):
            try:
                model = torchvision.models.get_model(arch, weights=None)
            except ValueError as exc:
                raise ValueError(f"torchvision:{arch}: {exc}") from None
            log.info("torchvision:%s: torchvision %s's constructor", arch,
                     torchvision.__version__)
            model._selectivity_definition = f"torchvision {torchvision.__version__}"
            return model
        reason = f"torchvision {torchvision.__version__} has no models.get_model (0.14+)"
    if arch not in torchvision_models.MODELS:
        raise ValueError(f"torchvision:{arch}: torchvision is not usable here ({reason}), "
                         "and the project defines only "
                         f"{', '.join('torchvision:' + n for n in torchvision_models.MODELS)}")
    log.info("torchvision:%s: torchvision is not usable here (%s); using the project's "
             "definition (generator.torchvision_models, the same module names and weights)",
             arch, reason)
    model = torchvision_models.MODELS[arch]()
    model._selectivity_definition = "generator.torchvision_models"
    return model


def _user_callable(ref: str) -> Callable[[], nn.Module]:
    """``module.path:callable`` or ``path/to/file.py:callable`` -> the callable."""
    target, _, attr = ref.rpartition(":")
    if not target or not attr:
        raise ValueError(f"--network {ref!r}: give module.path:callable or "
                         "path/to/file.py:callable")
    # A module named at run time, loaded in generator: the user's model (as experiment
    # loads a user's rater); the one such load below experiment/ (docs/architecture.md,
    # tests/test_layering.py). Modules of the layers generator may not import are refused.
    try:
        if target.endswith(".py") or "/" in target or os.sep in target:
            module = _module_from_file(Path(target), ref)
            obj = module
            for part in attr.split("."):
                obj = getattr(obj, part)
        else:
            if target.split(".")[0] in _FORBIDDEN_PACKAGES:
                raise ValueError(f"--network {ref!r}: a model cannot come from "
                                 f"{target.split('.')[0]}/ (docs/architecture.md)")
            obj = pkgutil.resolve_name(f"{target}:{attr}")
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--network {ref!r}: {type(exc).__name__}: {exc} (a module must be "
                         "importable, e.g. on PYTHONPATH; or name a file: "
                         "path/to/file.py:callable)") from None
    if not callable(obj):
        raise ValueError(f"--network {ref!r}: {attr} is a {type(obj).__name__}, not a "
                         "callable that returns an nn.Module")
    return obj


def _module_from_file(path: Path, ref: str):
    if not path.is_file():
        raise ValueError(f"--network {ref!r}: no such file {path}")
    resolved = path.resolve()
    name = f"_selectivity_model_{path.stem}_" \
        f"{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"
    spec = import_util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ValueError(f"--network {ref!r}: {path} cannot be loaded as a Python module")
    module = import_util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ValueError(f"--network {ref!r}: {path} fails on import "
                         f"({type(exc).__name__}: {exc})") from exc
    return module


def _preprocessing_attribute(obj, ref: str) -> Preprocessing | None:
    value = getattr(obj, "preprocessing", None)
    if value is None or isinstance(value, Preprocessing):
        return value
    raise ValueError(f"--network {ref!r}: its attribute 'preprocessing' is a "
                     f"{type(value).__name__}; make it a generator.networks.Preprocessing")


# -- preprocessing specs ---------------------------------------------------------------

_SPEC_KEYS = ("size", "crop", "resize", "channels", "scale", "mean", "std", "interpolation")


def parse_preprocessing(text: str, base: Preprocessing = TORCHVISION_PREPROCESSING,
                        ) -> Preprocessing:
    """A preprocessing from ``KEY=VALUE,...`` over ``base`` (keys not given keep its value).

    Keys: ``size`` (pixels the image is resized to), ``resize`` (``shorter``: the shorter
    side to ``size``, keeping the aspect ratio; ``square``: size x size), ``crop`` (the
    centre crop, at most ``size``), ``channels`` (``RGB``, ``BGR`` or ``L``), ``scale``
    (what 0-255 pixels are multiplied by; a fraction such as ``1/255`` is taken),
    ``mean`` and ``std`` (one value per channel, ``/``-separated: ``0.485/0.456/0.406``),
    ``interpolation`` (``pil`` or ``caffe``). Values: (pixels * scale - mean) / std.
    ValueError naming the bad part.
    """
    values: dict[str, object] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq or not value:
            raise ValueError(f"--preprocess {text!r}: {part!r} is not KEY=VALUE")
        if key not in _SPEC_KEYS:
            raise ValueError(f"--preprocess {text!r}: unknown key {key!r}; the keys are "
                             f"{', '.join(_SPEC_KEYS)}")
        try:
            if key in ("size", "crop"):
                values[key] = int(value)
            elif key == "scale":
                top, slash, bottom = value.partition("/")
                values[key] = float(top) / float(bottom) if slash else float(value)
            elif key in ("mean", "std"):
                values[key] = tuple(float(v) for v in value.split("/"))
            else:
                values[key] = value
        except ValueError:
            raise ValueError(f"--preprocess {text!r}: {part!r}: not a number"
                             + (" (give one per channel, /-separated)"
                                if key in ("mean", "std") else "")) from None
    choices = {"resize": ("shorter", "square"), "channels": ("RGB", "BGR", "L"),
               "interpolation": ("pil", "caffe")}
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            raise ValueError(f"--preprocess {text!r}: {key}={values[key]}: choose "
                             f"{', '.join(allowed)}")
    result = replace(base, **values)
    n_channels = 1 if result.channels == "L" else 3
    for key in ("mean", "std"):
        if len(getattr(result, key)) != n_channels:
            raise ValueError(f"--preprocess {text!r}: {key} has {len(getattr(result, key))} "
                             f"value(s) for {n_channels} channel(s) ({result.channels}); give "
                             f"{key}= with {n_channels}")
    if any(v == 0 for v in result.std):
        raise ValueError(f"--preprocess {text!r}: std has a zero")
    if result.size < 1 or result.crop < 1:
        raise ValueError(f"--preprocess {text!r}: size and crop must be positive")
    if result.crop > result.size:
        raise ValueError(f"--preprocess {text!r}: crop {result.crop} is larger than size "
                         f"{result.size}; give crop= too")
    return result


def input_shape_of(preprocessing: Preprocessing) -> tuple[int, int, int]:
    """(channels, height, width) of the inputs ``preprocessing`` makes."""
    return (1 if preprocessing.channels == "L" else 3, preprocessing.crop, preprocessing.crop)


def build_network(name: str, preprocess: str | None = None) -> tuple[nn.Module, NetworkSpec]:
    """The network ``name`` with random weights (in training mode, as built), and its spec.

    A referenced network comes as a :class:`HookedNet` whose input shape is that of its
    preprocessing: ``preprocess`` (a name or a spec), else its own; its spec's
    ``preprocessing`` is then that one.
    """
    spec = get_spec(name)
    if not spec.hooked:
        return spec.build(), spec
    model = spec.build()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--network {name!r}: the callable returned a "
                         f"{type(model).__name__}, not an nn.Module")
    if spec.classes == "outputs":
        own = _preprocessing_attribute(model, name)
        if own is not None:
            spec = replace(spec, preprocessing=own, preprocessings={"model": own})
    preprocessing = spec.preprocessing_named(preprocess)
    if preprocessing is None:
        raise ValueError(
            f"--network {name!r}: no preprocessing: give --preprocess KEY=VALUE,... (e.g. "
            "size=256,crop=224 over torchvision's ImageNet preprocessing; docs/networks.md) "
            "or set the attribute 'preprocessing' on the model or the callable")
    net = HookedNet(model, input_shape_of(preprocessing),
                    definition=getattr(model, "_selectivity_definition", ""))
    return net, replace(spec, preprocessing=preprocessing)


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
    preprocess: str | None = None,
) -> tuple[TappedNet | HookedNet, NetworkSpec, str]:
    """The network ``name`` in eval mode with its weights; returns (model, spec, checksum).

    ``weights`` None: the demo network is trained or taken from the cache;
    the others keep random weights (with a warning: fine for benchmarks only), but for a
    referenced model that loads its own and says so by a ``weights_sha256`` attribute.
    ``preprocess``: see :func:`build_network` (referenced networks only).
    """
    if name == "demo" and weights is None:
        spec = get_spec(name)
        model, checksum = digits.trained_demo_network()
    else:
        model, spec = build_network(name, preprocess)
        own = getattr(getattr(model, "model", None), "weights_sha256", None)
        if weights is None and own:
            # a callable that loads its own weights says which (e.g. the demo's ResNet)
            checksum = str(own)
        elif weights is None:
            log.warning("%s: no weights given, using random weights", name)
            checksum = "random"
        elif isinstance(model, HookedNet):
            path = os.fspath(weights)
            if not os.path.exists(path):
                raise WeightsError(f"{path}: no such weights file")
            if path.endswith(".caffemodel"):
                raise WeightsError(f"{path}: a .caffemodel fits caffenet and bvlc_alexnet; "
                                   f"{name} takes a PyTorch state dict with its own keys")
            load_state(model.model, state_dict_from_file(path), path)
            checksum = sha256_file(path)
        else:
            load_weights(model, weights)
            checksum = sha256_file(weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device), spec, checksum
