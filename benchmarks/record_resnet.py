"""Benchmark of recording any PyTorch network: ResNet-18 (random weights) by module name.

    python benchmarks/record_resnet.py [--images 128] [--batch-size 32] [--workers 1]
                                       [--layers layer3 layer4 fc] [--photos DIR]

Measures in one run, on the CPU, with the thread count the recorder gives the network
(the available CPUs less the decoding processes):

* the baseline: ResNet-18's own forward pass (``model(x)``, inference mode) on ready
  tensors;
* the same forward through :class:`generator.hooked.HookedNet` with the recorded layers
  tapped (forward hooks, clones) and the output, then with the per-channel reduction;
* decoding and preprocessing alone (torchvision's ImageNet preprocessing, one process);
* the whole recorder (``generator.record.record``: decoding in worker processes,
  forward, reduction, HDF5 segment writes, the join) over the same images;

and prints each as images/s and as a ratio to the baseline, with the CPU model.
``torchvision:resnet18`` is torchvision's where it imports, else the project's copy
(``generator.torchvision_models``; the same layers). The images are generated JPEGs of
ImageNet's typical 500x375 (or ``--photos DIR``). It asserts nothing about time.
The activation-maximization half (gradients to the input through a tap) belongs
beside this one.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from generator.loading import build_network
from generator.networks import TORCHVISION_PREPROCESSING
from generator.record import record, reduce_activation
from generator.threads import available_cpus, torch_threads


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` 500x375 JPEGs of smooth noise (JPEG sizes and decoding times like photos')."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        noisy = np.asarray(image, np.int16) + rng.integers(-20, 21, (375, 500, 3))
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def rates(fns: dict, n_images: int, rounds: int) -> dict[str, float]:
    """Images/s of each of ``fns`` (one batch of ``n_images`` each), the best of ``rounds``
    after a warm-up, the functions taking turns within each round (so that a machine
    whose speed drifts, or that others share, slows them alike)."""
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: n_images / seconds for name, seconds in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes of the recorder (default: its own choice, "
                             "a quarter of the CPUs, at least 1)")
    parser.add_argument("--layers", nargs="+", default=["layer3", "layer4", "fc"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", type=Path, help="a folder of JPEG photos instead")
    args = parser.parse_args()

    cpus = available_cpus()
    workers = args.workers if args.workers is not None else max(1, min(4, cpus // 4))
    threads = max(1, cpus - workers)  # what the recorder gives the network on the CPU
    tmp = Path(tempfile.mkdtemp(prefix="bench-record-resnet-"))
    if args.photos:
        photos = sorted(args.photos.glob("*.jpg"))[:args.images]
    else:
        (tmp / "images").mkdir()
        photos = make_images(tmp / "images", args.images)
    listing = tmp / "images.csv"
    listing.write_text("path,label\n" + "".join(f"{p.resolve()},0\n" for p in photos))
    n = len(photos)

    torch.manual_seed(0)
    net, _ = build_network("torchvision:resnet18")
    net.eval()
    model = net.model
    print(f"ResNet-18 ({net.definition}), random weights; CPU: {cpu_model()}, {cpus} available "
          f"CPU(s); the network on {threads} thread(s), {workers} decoding process(es); "
          f"{n} images, batch {args.batch_size}; layers {' '.join(args.layers)}; "
          f"torch {torch.__version__}")

    started = time.perf_counter()
    tensors = [TORCHVISION_PREPROCESSING(Image.open(p)) for p in photos]
    decode = n / (time.perf_counter() - started)
    batch = torch.stack(tensors[:args.batch_size])
    taps = [*args.layers, "output"]
    b = len(batch)
    with torch.inference_mode(), torch_threads(threads):
        measured = rates({
            "base": lambda: model(batch),
            "hooked": lambda: net(batch, taps),
            "reduced": lambda: [reduce_activation(v, "max", k)
                                for k, v in net(batch, taps).items()],
            "early": lambda: net(batch, ["layer3"]),
        }, b, args.rounds)
    base, hooked, reduced, early = (measured[k] for k in ("base", "hooked", "reduced", "early"))

    started = time.perf_counter()
    record("torchvision:resnet18", str(listing), tmp / "t.h5", layers=args.layers, keep="all",
           batch_size=args.batch_size, workers=workers, device="cpu", progress=False)
    whole = n / (time.perf_counter() - started)

    rows = [
        ("baseline: model(x), the network's own forward", base),
        (f"HookedNet forward, taps {' '.join(taps)}", hooked),
        ("  + per-channel max reduction", reduced),
        ("HookedNet forward to layer3 only (stops early)", early),
        ("decode + preprocess (224, ImageNet), one process", decode),
        ("recorder end to end (decode, forward, reduce, write, join)", whole),
    ]
    print(f"\n{'stage':62s} {'images/s':>9s} {'x baseline':>11s}")
    for label, value in rows:
        print(f"{label:62s} {value:9.1f} {value / base:11.2f}")
    print(f"\nhooks and clones cost {100 * (1 - hooked / base):.1f}% of the forward rate; the "
          f"recorder runs at {whole / base:.0%} of the network-alone rate")
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
