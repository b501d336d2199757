"""Benchmark of fourier AM (generator/fourier.py): image-steps per second, and as a share
of the same network's bare forward/backward rate.

    python benchmarks/am_methods.py [--size 224] [--batch 8] [--steps 10] [--threads N]
                                    [--skip-demo] [--skip-resnet]

For the demo network (fc8, 32x32 grey, trained on first use) and ResNet-18
(``--network torchvision:resnet18``: torchvision's, or the project's copy where it cannot
import; random weights: speed does not depend on the values; its ``fc`` unit, ``--size``
RGB, read through forward hooks), it times :func:`generator.fourier.render`
(the Fourier parameterisation, colour decorrelation for RGB, lucid's transforms, the
preprocessing, forward to the target, backward, Adam) and, on the same batch, the
network's bare step: a forward of a fixed input to the target and the backward to the
input. The ratio says what the parameterisation and transforms cost on top of the
network. It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from generator import fourier
from generator.digits import training_environment
from generator.networks import Preprocessing, gradient_copy
from generator.threads import available_cpus, torch_threads


def bare_rate(net: nn.Module, tap: str, shape, steps: int) -> float:
    """Rows x steps per second of forward to ``tap`` and backward to the input."""
    x = torch.randn(*shape, requires_grad=True)
    net(x, [tap])[tap][:, 0].sum().backward()  # warm up
    start = time.perf_counter()
    for _ in range(steps):
        x.grad = None
        net(x, [tap])[tap][:, 0].sum().backward()
    return shape[0] * steps / (time.perf_counter() - start)


def fourier_rate(net: nn.Module, preprocessing, tap: str, batch: int, steps: int) -> float:
    pre = fourier.preprocess_fn(preprocessing)
    items = [(u % 10, u) for u in range(batch)]
    settings = fourier.Settings(steps=1)
    fourier.render(net, pre, tap, None, items, layer=tap, settings=settings)  # warm up
    start = time.perf_counter()
    fourier.render(net, pre, tap, None, items, layer=tap,
                   settings=fourier.Settings(steps=steps))
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="the ResNet's input side")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--demo-batch", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    model = training_environment()["cpu_model"]
    print(f"CPU: {model}; torch {torch.__version__}, {args.threads} thread(s)")
    rows = []
    with torch_threads(args.threads):
        if not args.skip_demo:
            from generator.loading import load_network

            net, spec, _ = load_network("demo")
            net = gradient_copy(net)
            rows.append(("demo fc8 (1x32x32)", args.demo_batch,
                         fourier_rate(net, spec.preprocessing, "fc8", args.demo_batch,
                                      args.steps),
                         bare_rate(net, "fc8", (args.demo_batch, 1, 32, 32), args.steps)))
        if not args.skip_resnet:
            from generator.loading import build_network

            # torchvision's ResNet-18 (or the project's copy of it), random weights, read
            # through forward hooks as every referenced network is (generator/hooked.py)
            net, spec = build_network(
                "torchvision:resnet18",
                f"size={args.size},resize=square,crop={args.size}")
            net = gradient_copy(net.eval())
            preprocessing = spec.preprocessing_named(None) if args.size == 224 else \
                Preprocessing(size=args.size, resize="square", crop=args.size, channels="RGB",
                              scale=1 / 255, mean=(0.485, 0.456, 0.406),
                              std=(0.229, 0.224, 0.225))
            rows.append((f"torchvision:resnet18 fc (3x{args.size}x{args.size})", args.batch,
                         fourier_rate(net, preprocessing, "fc", args.batch, args.steps),
                         bare_rate(net, "fc", (args.batch, 3, args.size, args.size),
                                   args.steps)))
    print("| network | batch | fourier image-steps/s | bare forward+backward rows/s | "
          "ratio |")
    print("|---|---|---|---|---|")
    for name, batch, rate, bare in rows:
        print(f"| {name} | {batch} | {rate:.1f} | {bare:.1f} | {rate / bare:.2f} |")
    for name, _, rate, _ in rows:
        print(f"{name}: 100 images x 512 steps = {100 * 512 / rate:.0f} s a unit")


if __name__ == "__main__":
    main()
