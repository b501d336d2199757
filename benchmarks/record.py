"""Benchmark of activation recording: CaffeNet (random weights) over the sample photos.

    python benchmarks/record.py [--images 256] [--batch-size 64] [--device cpu|cuda]

Prints, in one run: JPEG decoding and preprocessing alone (one process, and
the DataLoader's worker processes), the network alone on ready tensors, and
the whole recorder (decode, network, reduction, HDF5 writes), as images/s,
with the share of one image's time spent in decoding vs the network. On a
machine with a GPU it does the same on the GPU (say which card when you
report it). Reads the optional photos (docs/data.md) or --photos. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import torch

from common.data import imagenet_photos
from generator.images import collate, load_image_set
from generator.loading import load_network
from generator.networks import CAFFE_PREPROCESSING
from generator.record import record

SAMPLES = imagenet_photos()  # the optional photos (docs/data.md), or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--photos", type=Path, default=SAMPLES,
                        help="a folder of JPEG photos (default: those of the optional data "
                             "folder, docs/data.md)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.photos is None or not args.photos.is_dir():
        print(f"no photos ({args.photos or 'none in the optional data folder'}): nothing to "
              "benchmark; give --photos DIR")
        return 1
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    photos = sorted(args.photos.glob("*.jpg"))[:args.images]
    tmp = Path(tempfile.mkdtemp(prefix="bench-record-"))
    listing = tmp / "images.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows([str(p.resolve()), p.stem] for p in photos)  # the CSV is elsewhere
    n = len(photos)
    print(f"CaffeNet, random weights, {n} photos (shorter side 256), batch {args.batch_size}, "
          f"device: {name}")

    images = load_image_set(str(listing))
    dataset = images.dataset(CAFFE_PREPROCESSING)
    started = time.perf_counter()
    tensors = [dataset[i][0] for i in range(n)]
    decode_one = (time.perf_counter() - started) / n
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                         num_workers=args.workers, collate_fn=collate)
    started = time.perf_counter()
    for _ in loader:
        pass
    decode_workers = n / (time.perf_counter() - started)

    model, _, _ = load_network("caffenet", device=device)
    batch = torch.stack(tensors[:args.batch_size]).to(device)
    taps = ["conv5", "fc6", "fc7", "fc8", "prob"]
    with torch.inference_mode():
        model(batch, taps)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        rounds = max(1, n // args.batch_size)
        started = time.perf_counter()
        for _ in range(rounds):
            model(batch, taps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        net_one = (time.perf_counter() - started) / (rounds * args.batch_size)

    started = time.perf_counter()
    record("caffenet", str(listing), tmp / "t.h5", keep="all", batch_size=args.batch_size,
           device=str(device), progress=False)  # the recorder's default decoding workers
    whole = n / (time.perf_counter() - started)

    print(f"\n{'stage':52s} {'images/s':>10s}")
    print(f"{'decode + preprocess, one process':52s} {1 / decode_one:10.1f}")
    print(f"{'decode + preprocess, ' + str(args.workers) + ' DataLoader workers':52s} "
          f"{decode_workers:10.1f}")
    print(f"{'network alone (conv5..prob taps)':52s} {1 / net_one:10.1f}")
    print(f"{'recorder, end to end (model build, writes, join)':52s} {whole:10.1f}")
    share = decode_one / (decode_one + net_one)
    print(f"\nper image: decoding {decode_one * 1e3:.1f} ms, network {net_one * 1e3:.1f} ms "
          f"({100 * share:.0f}% / {100 - 100 * share:.0f}% of one core-pass); "
          f"recorder at {whole * net_one:.0%} of the network-alone rate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
