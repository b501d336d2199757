"""Any PyTorch network, tapped at its modules by name with forward hooks (docs/networks.md,
"Any PyTorch network").

:class:`HookedNet` wraps an ``nn.Module`` (torchvision's ResNet, a user's ViT) with the
interface the pipeline uses for :class:`generator.networks.TappedNet`:
``forward(x, taps) -> {tap: tensor}``, ``taps``, ``tap_names``, ``layer_shapes``,
``input_shape`` and ``output_tap``. Its taps are the model's ``named_modules()`` names
(``layer4``, ``layer4.1.conv2``, ``blocks.11.mlp.fc2``; not the root) and ``output``,
the model's return value (the logits; ``output:return`` in a model that has a module
named ``output``).

How a forward reads the taps:

* a forward hook is registered on each requested module inside ``try`` and removed in
  ``finally``, so no hook outlives the call, even one that raises;
* each hooked output is cloned when it is produced (torchvision's ResNets apply
  ``ReLU(inplace=True)`` to a batch norm's output and add the shortcut in place: without
  the clone a tap would change under the later steps); a clone keeps the autograd graph,
  so gradients reach the input through any tap (activation maximization);
* a module that returns a tuple or list (``nn.MultiheadAttention``: (output, weights))
  gives its first element;
* when ``output`` is not wanted, the forward stops once every requested module has run
  (the last hook raises a private exception that the forward catches), so tapping
  ``layer1`` does not pay for ``layer4``;
* a module that runs several times in one forward (a shared module, such as the one
  ``relu`` of a torchvision ``BasicBlock``, applied twice) or never is not a tap:
  asking for it is a ``ValueError`` naming it and its call count (which call would be
  meant is ambiguous; tap the module before or after it instead). The counts come from
  one probe forward of a zero input (in eval mode, without gradients), made once;
  a forward that still sees a requested module run twice raises the same error.

Hooks are per call and per thread: a hook ignores calls of its module made by another
thread, so one network may serve several threads (the PPGN sampler's batches).

:func:`list_layers` gives every module's name, type and output shape for one input
(``python -m generator.record --list-layers``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["HookedNet", "Layer", "list_layers", "output_name", "OUTPUT_TAP"]

#: The tap of a :class:`HookedNet` that is the model's return value.
OUTPUT_TAP = "output"


class Layer(NamedTuple):
    """One module of a network as :func:`list_layers` sees it."""

    name: str
    type: str                       # the module's class name
    shape: tuple[int, ...] | None   # its output for one input, without the batch axis
    calls: int                      # times it runs in one forward (a tap needs exactly 1)


def output_name(module_names: Iterable[str]) -> str:
    """The name of the return-value tap: ``output``, or ``output:return`` in a model that
    has a module named ``output``."""
    return OUTPUT_TAP + ":return" if OUTPUT_TAP in set(module_names) else OUTPUT_TAP


_PROBING = threading.Lock()


class _Stop(BaseException):
    """Raised by the last hook a forward needs; a BaseException so that a model's own
    ``except Exception`` does not swallow it."""


def _first_tensor(value) -> torch.Tensor | None:
    if torch.is_tensor(value):
        return value
    if isinstance(value, tuple | list) and value and torch.is_tensor(value[0]):
        return value[0]
    return None


def _probe(model: nn.Module, input_shape: Sequence[int],
           ) -> tuple[dict[str, int], dict[str, tuple[int, ...] | None], torch.Tensor | None]:
    """Run one zero input through ``model`` (eval mode, no gradients) with a hook on every
    named module: (calls, last output shape, return value), by module name."""
    modules = {n: m for n, m in model.named_modules() if n}
    calls = dict.fromkeys(modules, 0)
    shapes: dict[str, tuple[int, ...] | None] = dict.fromkeys(modules)
    owner = threading.get_ident()

    def hook_for(name):
        def hook(module, inputs, output):
            if threading.get_ident() != owner:  # another thread's forward
                return
            calls[name] += 1
            t = _first_tensor(output)
            shapes[name] = tuple(t.shape[1:]) if t is not None else None
        return hook

    param = next(model.parameters(), None)
    x = torch.zeros((1, *input_shape), device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None and param.is_floating_point()
                    else None)
    modes = {m: m.training for m in model.modules()}
    handles = []
    try:
        model.eval()
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise ValueError(f"{type(model).__name__} fails on an input of shape "
                         f"{tuple(x.shape)} ({type(exc).__name__}: {exc}); does the "
                         "preprocessing (--preprocess) give the input it expects?") from exc
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    return calls, shapes, _first_tensor(out)


def list_layers(model: nn.Module, input_shape: Sequence[int]) -> list[Layer]:
    """Every named module of ``model`` (not the root) in ``named_modules()`` order, then
    ``output`` (the return value), with its output shape for one input of
    ``input_shape`` (channels, height, width) and how often it runs in one forward."""
    calls, shapes, out = _probe(model, input_shape)
    layers = [Layer(name, type(module).__name__, shapes[name], calls[name])
              for name, module in model.named_modules() if name]
    layers.append(Layer(output_name([layer.name for layer in layers]), type(model).__name__,
                        tuple(out.shape[1:]) if out is not None else None, 1))
    return layers


class HookedNet(nn.Module):
    """``model`` with its modules as taps (module docstring).

    ``input_shape``: (channels, height, width) of one input; ``definition`` says where
    the architecture came from (recorded in the activation table). The wrapped model is
    ``self.model`` (its state-dict keys carry the prefix ``model.``; load weights into
    ``self.model``).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], *, definition: str = ""):
        super().__init__()
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.definition = definition or type(model).__module__ + "." + type(model).__qualname__
        names = [n for n, _ in model.named_modules() if n]
        self.output_tap = output_name(names)
        self.taps = {name: name for name in [*names, self.output_tap]}
        self._layers: dict[str, Layer] | None = None

    @property
    def tap_names(self) -> list[str]:
        return list(self.taps)

    def module(self, tap: str) -> nn.Module:
        """The module of ``tap`` (the whole model for ``output``)."""
        return self.model if tap == self.output_tap else self.model.get_submodule(tap)

    def layers(self) -> dict[str, Layer]:
        """:func:`list_layers` of the model, by name (probed once, then kept)."""
        if self._layers is None:
            with _PROBING:  # one probe, even when threads start together
                if self._layers is None:
                    self._layers = {layer.name: layer
                                    for layer in list_layers(self.model, self.input_shape)}
        return self._layers

    def _check(self, wanted: Sequence[str]) -> None:
        unknown = [t for t in wanted if t not in self.taps]
        if unknown:
            raise KeyError(f"unknown tap(s) {unknown}; this network has {len(self.taps)} "
                           "(python -m generator.record --network ... --list-layers lists them)")
        layers = self.layers()
        for tap in wanted:
            layer = layers[tap]
            if layer.calls != 1:
                how = "never runs" if layer.calls == 0 else \
                    f"runs {layer.calls} times (a shared module)"
                raise ValueError(f"layer {tap} ({layer.type}) {how} in one forward; a tap "
                                 "must run exactly once: tap the module before or after it")
            if layer.shape is None:
                raise ValueError(f"layer {tap} ({layer.type}) gives no tensor")

    def forward(self, x: torch.Tensor, taps: Iterable[str] | None = None,
                ) -> dict[str, torch.Tensor]:
        """The requested taps (default: the output) for the batch ``x``, by name."""
        wanted = list(dict.fromkeys(taps if taps is not None else [self.output_tap]))
        if not wanted:
            return {}
        self._check(wanted)
        modules = [t for t in wanted if t != self.output_tap]
        early = self.output_tap not in wanted
        captured: dict[str, torch.Tensor] = {}
        owner = threading.get_ident()

        def hook_for(name):
            def hook(module, inputs, output):
                if threading.get_ident() != owner:  # another thread's forward
                    return
                if name in captured:
                    raise ValueError(f"layer {name} ran twice in one forward (a shared "
                                     "module); tap the module before or after it")
                captured[name] = _first_tensor(output).clone()
                if early and len(captured) == len(modules):
                    raise _Stop
            return hook

        handles = []
        try:
            for name in modules:
                module = self.model.get_submodule(name)
                handles.append(module.register_forward_hook(hook_for(name)))
            try:
                out = self.model(x)
            except _Stop:
                out = None
        finally:
            for handle in handles:
                handle.remove()
        missing = [t for t in modules if t not in captured]
        if missing:
            raise ValueError(f"layer(s) {missing} did not run in this forward")
        result = {t: captured[t] for t in modules}
        if not early:
            value = _first_tensor(out)
            if value is None:
                raise ValueError(f"{type(self.model).__name__} returns {type(out).__name__}, "
                                 "not a tensor: wrap it so that it returns the logits")
            result[self.output_tap] = value
        return {t: result[t] for t in wanted}

    def layer_shapes(self, taps: Iterable[str] | None = None) -> dict[str, tuple[int, ...]]:
        """Shape of each tap for one input image (without the batch axis)."""
        wanted = list(taps) if taps is not None else [
            n for n, layer in self.layers().items() if layer.calls == 1 and layer.shape]
        self._check(wanted)
        return {t: self.layers()[t].shape for t in wanted}
