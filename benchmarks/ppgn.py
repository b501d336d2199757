"""Benchmark of the PPGN sampler: chain-steps per second, FLOPs per step, share of peak.

    python benchmarks/ppgn.py [--batches 8 32] [--device cpu|cuda] [--amp] [--skip-caffenet]
                              [--compare-chains 256] [--compare-steps 50] [--skip-compare]

On the CPU it first compares, on the demo pair at the demo's settings (50 steps a
chain), the sampler as ``generate`` runs it now (the networks prepared by
``generator.ppgn.load_models``: channels-last, a faster LRN and first convolution;
one batch per available CPU, each in its own thread with one intra-op thread) with
the old path measured in the same run (the networks as trained, one batch of 64 at a
time with torch's default thread count: every CPU), and prints the ratio. (The old
path drew each chain's noise one step at a time; both paths here draw it ahead, which
was under 1% of a step.)

Then, for the demo pair (trained on first use) and for CaffeNet + the DeePSiM
generator at 227/256 (random weights: speed does not depend on the values), it
times full sampler steps (G forward, classifier forward to the target,
backward to h, the update) at each batch size, counts the multiply-adds of one
chain-step from the layers' shapes, and compares the achieved FLOP rate with
the machine's measured dense matmul rate (a large float32 torch.mm) in the same
run. On a GPU it does the same there (say which card when you report it);
``--amp`` adds rows with bfloat16 autocast (``generate(amp=True)``), compared
with the measured bfloat16 matmul rate. It asserts nothing about time, and
states the projected time for the paper's 5,352 units x 100 images.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from generator.ppgn import Models, target_for
from generator.sampler import Sampler, Settings
from generator.threads import available_cpus, torch_threads, worker_pool


def macs_of(module: nn.Module, x: torch.Tensor, **kwargs) -> int:
    """Multiply-adds of one forward pass, from the conv and linear layers' shapes."""
    total = 0

    def hook(m, inputs, output):
        nonlocal total
        if isinstance(m, nn.Linear):
            total += output.numel() * m.in_features
        elif isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += output.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.ConvTranspose2d):
            kh, kw = m.kernel_size
            total += inputs[0].numel() * (m.out_channels // m.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d)]
    try:
        with torch.no_grad():
            module(x, **kwargs) if kwargs else module(x)
    finally:
        for h in handles:
            h.remove()
    return total


def matmul_rate(device: torch.device, n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    if device.type == "cuda":
        n = 8192  # a GPU needs a large product to reach its rate
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def time_steps(models: Models, layer: str, batch: int, steps: int, amp: bool = False) -> float:
    """Seconds per sampler step for ``batch`` chains."""
    target = target_for(models.classifier, layer)
    sampler = Sampler(models.generator, models.classifier, target,
                      settings=Settings(steps=steps, eps3=0.0), crop=models.crop,
                      code_dim=models.code_dim, amp=amp)
    units = [u % 10 for u in range(batch)]
    list(sampler.run(units, list(range(batch))))  # warm-up (and the one-off allocations)
    started = time.perf_counter()
    list(sampler.run(units, list(range(batch))))
    if next(models.generator.parameters()).is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def compare_paths(layer: str, chains: int, steps: int, batch: int = 64) -> tuple[float, float]:
    """(old, new) chain-steps/s on the demo pair for ``chains`` chains of ``steps`` steps."""
    from generator.digits import trained_demo_network
    from generator.digits_generator import trained_demo_generator
    from generator.ppgn import load_models
    from generator.sampler import settings_for

    new = load_models("demo", "demo")
    net, _ = trained_demo_network()
    gen, _ = trained_demo_generator()  # as trained: NCHW, nn.LocalResponseNorm, nn.Conv2d
    for p in net.parameters():  # as load_network gave it to the old path
        p.requires_grad_(False)
    settings = settings_for(layer, steps=steps)
    target = target_for(new.classifier, layer)
    cpus = available_cpus()

    def sampler(g, c):
        return Sampler(g, c, target, settings=settings, crop=new.crop, code_dim=new.code_dim,
                       layer_name=layer, init_codes=new.init_codes)

    old_sampler, new_sampler = sampler(gen.eval(), net.eval()), sampler(new.generator,
                                                                         new.classifier)
    rows = [(u % 10, c) for c, u in enumerate(range(chains))]
    batches = [rows[i:i + batch] for i in range(0, len(rows), batch)]

    def run(s, b):
        units, chain_ids = zip(*b, strict=True)
        return list(s.run(units, chain_ids, pad_to=batch))

    run(old_sampler, batches[0][:4])  # warm-up: one-off allocations, kernel choices
    run(new_sampler, batches[0][:4])
    with torch_threads(cpus):  # the old path: one batch at a time, every CPU inside it
        started = time.perf_counter()
        for b in batches:
            run(old_sampler, b)
        old = chains * steps / (time.perf_counter() - started)
    with torch_threads(1), worker_pool(cpus) as pool:  # the new: a batch per CPU
        started = time.perf_counter()
        list(pool.map(lambda b: run(new_sampler, b), batches))
        now = chains * steps / (time.perf_counter() - started)
    return old, now


def flops_per_chain_step(models: Models, layer: str) -> float:
    target = target_for(models.classifier, layer)
    device = next(models.generator.parameters()).device
    h = torch.zeros(1, models.code_dim, device=device)
    g = macs_of(models.generator, h)
    x = models.crop(models.generator(h).detach())
    c = macs_of(models.classifier, x, taps=[target.tap, "fc6"])
    # forward of G and the classifier, and a backward pass about twice the forward
    return 2 * 3 * (g + c)


def caffenet_models(device: torch.device) -> Models:
    from generator.deepsim import DeePSiMGenerator, crop_to_classifier, to_pixels
    from generator.networks import caffenet
    from generator.ppgn import _for_sampling

    gen, net = _for_sampling(DeePSiMGenerator(), caffenet(), device)  # as load_models does
    return Models(net, gen, lambda x: crop_to_classifier(x, 227), 4096, to_pixels,
                  {"network": "caffenet (random)", "generator": "deepsim (random)"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--skip-caffenet", action="store_true")
    parser.add_argument("--amp", action="store_true",
                        help="also time bfloat16 autocast (against the bfloat16 matmul rate)")
    parser.add_argument("--compare-chains", type=int, default=256,
                        help="chains per layer for the old-versus-new comparison (CPU)")
    parser.add_argument("--compare-steps", type=int, default=50,
                        help="steps a chain in the comparison (the demo's: 50)")
    parser.add_argument("--skip-compare", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and not args.skip_compare:
        print(f"old path (one batch of 64 at a time, {available_cpus()} intra-op threads, "
              f"the networks as trained) versus new (one batch of 64 per CPU, 1 thread "
              f"each, the prepared networks); demo pair, {args.compare_chains} chains x "
              f"{args.compare_steps} steps")
        for layer in ("fc8", "fc6"):
            old, new = compare_paths(layer, args.compare_chains, args.compare_steps)
            print(f"  {layer}: old {old:7.0f} chain-steps/s, new {new:7.0f} chain-steps/s: "
                  f"{new / old:.2f}x")
        print()
    demo_batches = [16, 64, 256] if device.type == "cpu" else [256, 1024, 4096]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({torch.get_num_threads()} threads, one batch at a time)"
    peak = matmul_rate(device)
    print(f"device: {card}; measured float32 matmul rate {peak / 1e9:.0f} GFLOP/s")
    peaks = {False: peak}
    if args.amp:
        peaks[True] = matmul_rate(device, dtype=torch.bfloat16)
        print(f"measured bfloat16 matmul rate {peaks[True] / 1e9:.0f} GFLOP/s")
    from generator.ppgn import load_models

    pairs = [("demo + demo generator", load_models("demo", "demo", device=device),
              ["fc8", "fc6", "conv5"], args.batches or demo_batches)]
    if not args.skip_caffenet:
        pairs.append(("CaffeNet + DeePSiM (random weights)", caffenet_models(device),
                      ["fc8", "conv5"], args.batches or ([8, 32] if device.type == "cpu"
                                                         else [32, 128, 512])))
    print(f"\n{'pair':38s} {'layer':6s} {'dtype':>6s} {'batch':>6s} {'chain-steps/s':>14s} "
          f"{'GFLOP/chain-step':>17s} {'of peak':>8s}")
    projection = None
    for name, models, layers, batches in pairs:
        for layer in layers:
            flops = flops_per_chain_step(models, layer)
            for amp in peaks:
                for batch in batches:
                    per_step = time_steps(models, layer, batch, args.steps, amp=amp)
                    rate = batch / per_step
                    print(f"{name:38s} {layer:6s} {'bf16' if amp else 'fp32':>6s} {batch:6d} "
                          f"{rate:14.1f} {flops / 1e9:17.3f} {rate * flops / peaks[amp]:8.1%}")
                    if name.startswith("CaffeNet") and layer == "fc8":
                        projection = max(projection or 0.0, rate)
    if projection:
        # the paper: 256 conv5 + 4,096 fc6 + 1,000 fc8 units, 100 images each;
        # fc: 200 steps a chain; conv5: chains of 1,000 steps until 100 samples pass
        # p > 0.98 (one a unit when all pass, 1 / pass rate on average: the fc layers
        # dominate either way, at most 10 a unit adding 2.3e6)
        chain_steps = (4096 + 1000) * 100 * 200 + 256 * 1000
        print(f"\nprojected for the paper's 5,352 units x 100 images ({chain_steps:.2e} "
              f"chain-steps, conv5 at one chain a unit) at the best CaffeNet rate above: "
              f"{chain_steps / projection / 3600:.1f} hours on this device")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
