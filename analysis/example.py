"""A generated example activation table, and the selectivity pipeline run on it.

The table imitates what the paper found in AlexNet, with known ground truth:
units of an early layer respond weakly to everything, a middle layer has a few
sparse, highly selective units among distributed ones, and an output layer has
one unit per class that responds to its class (fc8-like, with negative
activations). ``python -m analysis.example --out DIR`` writes the table, the
results CSV, the paper's tables and figures into DIR.

Until the demo network lands this is the README's main job; afterwards it
stays the quickest way to see the analysis side work, and the benchmark uses
:func:`synthetic_activations` for its large tables.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from .activations import TableWriter

__all__ = ["synthetic_activations", "make_example_table", "synthetic_ratings",
           "write_example_ratings", "main"]

log = logging.getLogger("analysis.example")  # the same name under python -m


def synthetic_activations(
    rng: np.random.Generator, labels: np.ndarray, n_units: int, kind: str, n_classes: int
) -> np.ndarray:
    """Activations (N, n_units) float32 of a made-up layer of the given ``kind``.

    * ``conv``: post-ReLU, every unit a little more active for one class;
    * ``fc``: post-ReLU and sparse; every eighth unit fires only for one class
      (some of them for a subset of its images);
    * ``out``: pre-softmax logits, unit u strongly tuned to class u mod K.
    """
    n = len(labels)
    units = np.arange(n_units)
    preferred = (units * 7919) % n_classes  # a fixed, spread-out preferred class per unit
    hit = (labels[:, None] == preferred[None, :]).astype(np.float32)
    noise = rng.standard_normal((n, n_units), dtype=np.float32)
    if kind == "conv":
        acts = np.maximum(0.0, 1.0 + noise + 0.3 * hit)
    elif kind == "fc":
        acts = np.maximum(0.0, noise - 1.0 + 0.8 * hit)
        sparse = units % 8 == 0
        share = rng.random((n, 1)) < np.where(units % 16 == 0, 1.0, 0.5)[None, :]
        acts[:, sparse] = (hit * share * (2.0 + np.abs(noise)))[:, sparse]
    elif kind == "out":
        acts = noise + 6.0 * (labels[:, None] == units[None, :] % n_classes)
    else:
        raise ValueError(f"unknown layer kind {kind!r}: conv, fc or out")
    return acts.astype(np.float32, copy=False)


def make_example_table(
    path: str | os.PathLike,
    *,
    n_classes: int = 20,
    images_per_class: int = 100,
    layers: Sequence[tuple[str, int, str]] = (
        ("conv5", 64, "conv"), ("fc6", 256, "fc"), ("fc8", 20, "out"),
    ),
    seed: int = 0,
    rows_per_write: int = 50_000,
) -> str:
    """Write a synthetic activation table (docs/activation-table.md) and return its path."""
    rng = np.random.default_rng(seed)
    n = n_classes * images_per_class
    labels = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int32), images_per_class))
    names = [f"class {c:03d}" for c in range(n_classes)]
    with TableWriter(
        path, names, {name: units for name, units, _ in layers}, n_images=n,
        attrs={"network": "synthetic example", "seed": seed},
        layer_attrs={name: {"reduction": "max"} for name, _, kind in layers if kind == "conv"},
    ) as writer:
        for start in range(0, n, rows_per_write):
            y = labels[start:start + rows_per_write]
            writer.append(y, {
                name: synthetic_activations(rng, y, units, kind, n_classes)
                for name, units, kind in layers
            })
    return os.fspath(path)


#: The example's classes stand for these ImageNet classes (index, WordNet id, short name),
#: so that free-text answers can be coded against WordNet.
EXAMPLE_IMAGENET_CLASSES = (
    ("n02099267", "flat-coated retriever"), ("n07742313", "Granny Smith"),
    ("n07932039", "eggnog"), ("n04037443", "racer"), ("n02123045", "tabby"),
    ("n01530575", "brambling"), ("n03272010", "electric guitar"), ("n07753592", "banana"),
    ("n02690373", "airliner"), ("n01443537", "goldfish"), ("n03028079", "church"),
    ("n04254680", "soccer ball"), ("n02504458", "African elephant"), ("n07747607", "orange"),
    ("n03417042", "garbage truck"), ("n02206856", "bee"), ("n04147183", "schooner"),
    ("n01644373", "tree frog"), ("n02110958", "pug"), ("n03792782", "mountain bike"),
)

#: Everyday words a rater might write for each class (a plural, a broader word, a synonym).
EXAMPLE_ANSWERS = (
    ("dogs", "a dog", "retriever"), ("apples", "green apple", "fruit"),
    ("drink", "a glass of milk", "beverage"), ("race car", "cars", "car"),
    ("cat", "cats", "a tabby cat"), ("bird", "finches", "birds"),
    ("guitar", "guitars", "electric guitar"), ("bananas", "banana", "fruit"),
    ("plane", "airplanes", "aircraft"), ("fish", "goldfish", "a fish"),
    ("church", "churches", "building"), ("football", "balls", "soccer ball"),
    ("elephant", "elephants", "an elephant"), ("oranges", "orange", "fruit"),
    ("truck", "lorry", "trucks"), ("bees", "insect", "bee"),
    ("ship", "boats", "sailing ship"), ("frog", "frogs", "a tree frog"),
    ("dog", "pug", "dogs"), ("bike", "bicycles", "mountain bike"),
)


def synthetic_ratings(results, rng: np.random.Generator, raters: int = 5,
                      yes_rates: dict[str, float] | None = None):
    """Made-up ratings in the server's export format (``responses.csv``), for trying the
    Table 2 analysis: each unit rated by ``raters`` participants. A unit's raters say yes
    with its layer's rate; the output layer's units are recognisable (most yes answers name
    their top class in everyday words), other units get scattered answers."""
    import pandas as pd

    yes_rates = yes_rates or {"conv5": 0.1, "fc6": 0.15, "fc8": 0.75}
    rows = []
    participants = [f"{i:024x}" for i in range(raters)]
    for trial, (layer, unit, top) in enumerate(zip(results["layer"], results["unit"],
                                                   results["top_class"], strict=True)):
        rate = yes_rates.get(layer, 0.1)
        recognisable = layer == "fc8" and top >= 0
        for r, pid in enumerate(participants):
            yes = bool(rng.random() < rate)
            text = ""
            if yes:
                cls = int(top) if recognisable and rng.random() < 0.9 else \
                    int(rng.integers(len(EXAMPLE_ANSWERS)))
                text = str(rng.choice(EXAMPLE_ANSWERS[cls % len(EXAMPLE_ANSWERS)]))
            rows.append({"participant_id": r + 1, "prolific_pid": pid, "list_id": 1,
                         "trial_index": trial, "practice": False,
                         "panel_id": f"{layer}_{int(unit):04d}", "layer": layer,
                         "unit": int(unit), "answer_yes": yes, "object_text": text,
                         "rt_answer_ms": int(rng.integers(600, 4000)),
                         "rt_text_ms": int(rng.integers(1500, 6000)) if yes else ""})
    return pd.DataFrame(rows)


def write_example_ratings(results_csv: str, out_dir: str, seed: int = 0) -> tuple[str, str]:
    """``responses.csv`` (synthetic ratings of every unit of ``results_csv``) and
    ``classes.tsv`` (the example's classes as ImageNet classes) in ``out_dir``."""
    import pandas as pd

    results = pd.read_csv(results_csv, dtype={"layer": str})
    responses = synthetic_ratings(results, np.random.default_rng(seed))
    responses_path = os.path.join(out_dir, "responses.csv")
    responses.to_csv(responses_path, index=False)
    classes_path = os.path.join(out_dir, "classes.tsv")
    with open(classes_path, "w") as fh:
        fh.write("index\twnid\tname\n")
        for i, (wnid, name) in enumerate(EXAMPLE_IMAGENET_CLASSES):
            fh.write(f"{i}\t{wnid}\t{name}\n")
    return responses_path, classes_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.example",
        description="Generate an example activation table and run the selectivity "
                    "pipeline on it: results CSV, the paper's tables and figures.",
    )
    parser.add_argument("--out", default="out/example", help="output folder (default out/example)")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the generated table (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from . import figures, selectivity, tables

    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    table = make_example_table(os.path.join(args.out, "activations.h5"),
                               n_classes=args.classes,
                               images_per_class=args.images_per_class, seed=args.seed)
    results = os.path.join(args.out, "selectivity.csv")
    steps = [
        ("selectivity", lambda: selectivity.main([table, "--out", results])),
        ("tables", lambda: tables.main([results, "--out", os.path.join(args.out, "tables")])),
        ("figures", lambda: figures.main(
            ["distributions", results, "--out", os.path.join(args.out, "figures")])),
        ("figures", lambda: figures.main(
            ["ccmas2", results, "--out", os.path.join(args.out, "figures")])),
        ("figures", lambda: figures.main(
            ["jitter", table, "--layer", "fc6", "--unit", "0",
             "--out", os.path.join(args.out, "figures", "jitter_fc6_0")])),
        ("figures", lambda: figures.main(["a4", "--out", os.path.join(args.out, "figures")])),
    ]
    if args.classes <= len(EXAMPLE_IMAGENET_CLASSES):
        steps.append(("table2", lambda: _table2(results, args.out, args.seed)))
    for name, step in steps:
        code = step()
        if code:
            print(f"error: the {name} step failed (exit {code})", file=sys.stderr)
            return code
    print(f"example pipeline done in {time.perf_counter() - started:.1f} s: see {args.out}/")
    return 0


def _table2(results: str, out: str, seed: int) -> int:
    from . import table2

    responses, classes = write_example_ratings(results, out, seed)
    print("Table 2 on synthetic ratings (made up: see analysis.example.synthetic_ratings):")
    return table2.main(["--responses", responses, "--selectivity", results,
                        "--classes", classes, "--out", os.path.join(out, "table2")])


if __name__ == "__main__":
    raise SystemExit(main())
