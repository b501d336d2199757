"""PPGN with a condition network other than the generator's own encoder.

PPGN's sampler (:mod:`generator.sampler`) reads two things from one classifier each step:
the target unit's activation (the condition term) and the code layer (fc6) of the
generated image (the prior term, through the reconstruction ``E(G(h))``). A generator is
trained against one encoder (DeePSiM's against CaffeNet's fc6, the demo's against the
demo network's fc6), so the code must come from that encoder whatever network is being
visualised. :class:`ConditionWithEncoder` is the classifier the sampler sees then: the
target taps from the condition network (any :mod:`generator.networks` or
:mod:`generator.hooked` network), the code tap (:data:`CODE_TAP`) from the encoder.
Both see the same input (the generator's image after ``Models.crop``), so the two
networks must share their input format (the demo's ResNet and the demo network both take
the demo's 1x32x32 digits).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["CODE_TAP", "ConditionWithEncoder"]

#: The name under which the encoder's code layer is read (never a condition network's tap).
CODE_TAP = "encoder:fc6"


class ConditionWithEncoder(nn.Module):
    """``condition``'s taps, and the encoder's ``code_tap`` as :data:`CODE_TAP`."""

    def __init__(self, condition: nn.Module, encoder: nn.Module, code_tap: str = "fc6"):
        super().__init__()
        if tuple(condition.input_shape) != tuple(encoder.input_shape):
            raise ValueError(f"the condition network takes inputs of shape "
                             f"{tuple(condition.input_shape)} but the generator's encoder "
                             f"{tuple(encoder.input_shape)}: PPGN feeds both the same image")
        self.condition = condition
        self.encoder = encoder
        self.code_tap = code_tap
        self.input_shape = tuple(condition.input_shape)
        self.output_tap = getattr(condition, "output_tap", "fc8")
        self.taps = {**condition.taps, CODE_TAP: code_tap}

    @property
    def tap_names(self) -> list[str]:
        return list(self.taps)

    def forward(self, x: torch.Tensor, taps: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        wanted = list(taps)
        out: dict[str, torch.Tensor] = {}
        own = [t for t in wanted if t != CODE_TAP]
        if own:
            out.update(self.condition(x, own))
        if CODE_TAP in wanted:
            out[CODE_TAP] = self.encoder(x, [self.code_tap])[self.code_tap]
        return out

    def layer_shapes(self, taps: Iterable[str] | None = None) -> dict[str, tuple[int, ...]]:
        wanted = list(taps) if taps is not None else self.tap_names
        shapes = self.condition.layer_shapes([t for t in wanted if t != CODE_TAP]) \
            if any(t != CODE_TAP for t in wanted) else {}
        if CODE_TAP in wanted:
            shapes[CODE_TAP] = self.encoder.layer_shapes([self.code_tap])[self.code_tap]
        return shapes
