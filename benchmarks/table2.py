"""Table 2 at the paper's size: 3,299 panels (256 conv5, 2,048 fc6, 995 fc8) rated by 333
participants, about 17,000 judgments, answers in everyday words coded against WordNet.

Prints each stage's time as a multiple of reading the responses CSV with pandas, measured
in the same run (no assertion on times)::

    python benchmarks/table2.py [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.coding import Coder, imagenet_class_senses
from analysis.example import EXAMPLE_ANSWERS
from analysis.table2 import (
    interpretability,
    kappa_by_layer,
    mixed_model,
    read_responses,
    table2,
)

LAYERS = (("conv5", 256, 0.2), ("fc6", 2048, 0.1), ("fc8", 995, 0.6))


def paper_sized(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, sel = [], []
    for layer, n, rate in LAYERS:
        for unit in range(n):
            for r in range(5 + (unit % 5 == 0)):          # 5 or 6 raters a panel
                yes = bool(rng.random() < rate)
                rows.append({"participant_id": (unit * 7 + r) % 333, "trial_index": len(rows),
                             "practice": False, "panel_id": f"{layer}_{unit}", "layer": layer,
                             "unit": unit, "answer_yes": yes,
                             "object_text": str(rng.choice(EXAMPLE_ANSWERS[unit % 20]))
                             if yes else ""})
            sel.append({"layer": layer, "unit": unit, "top_class": unit % 1000,
                        "ccmas_class": unit % 1000, "ccmas": rng.random(), "tcs": rng.random(),
                        "precision_100": rng.random()})
    return pd.DataFrame(rows), pd.DataFrame(sel)


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the simulated study (default %(default)s)")
    args = parser.parse_args()
    responses, selectivity = paper_sized(np.random.default_rng(args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "responses.csv"
        responses.to_csv(path, index=False)
        _, base = timed(lambda: pd.read_csv(path))
        judgments, t_read = timed(lambda: read_responses(path))
    coder, t_load = timed(Coder)
    classes = imagenet_class_senses()
    (_, detail), t_table = timed(lambda: table2(judgments, selectivity, coder, classes))
    units = detail[["layer", "unit", "n", "n_yes", "yes_share"]]
    _, t_kappa = timed(lambda: kappa_by_layer(judgments))
    _, t_interp = timed(lambda: interpretability(units, selectivity))
    _, t_mixed = timed(lambda: mixed_model(judgments))
    print(f"{len(judgments):,} judgments, {len(selectivity):,} units; baseline: pandas "
          f"read_csv {base:.3f} s")
    print(f"{'stage':<34} {'seconds':>8} {'x read_csv':>11}")
    for name, t in (("read_responses (checked)", t_read), ("WordNet + coder load", t_load),
                    ("Table 2 (coding, agreement)", t_table), ("Fleiss' kappa", t_kappa),
                    ("interpretability fits", t_interp), ("mixed-effects model (VB)", t_mixed)):
        print(f"{name:<34} {t:>8.2f} {t / base:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
