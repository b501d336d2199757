"""The demo study end to end: the embedded default, from nothing to a served experiment.

    python -m experiment.demo                  # build (cached) and serve at 127.0.0.1:5000
    python -m experiment.demo --simulate 60    # ... then simulated participants, Table 2
    python -m experiment.demo --network resnet --methods ppgn,fourier,natural --simulate 60

Stages, each one of the project's own commands (run as a subprocess, so this module
never imports torch, and each stage can be rerun by hand):

1. ``record``: train the demo network on scikit-learn's digits (cached in ``.cache/``)
   and record its activations over the digits it classifies correctly;
2. ``selectivity``, ``tables``, ``figures``: every unit's selectivity; the paper's
   tables and figures;
3. ``panels-fc8``, ``panels-fc6``, ``panels-conv5``: a 10x10 AM panel for every unit
   of conv5 and fc8 and for half of fc6's, drawn with the seed, as the paper rated 2,048
   of AlexNet's 4,096 fc6 units (``--fc6-share``; PPGN with the demo generator, trained
   and cached on first use);
4. ``practice``: six practice panels of real photos (``--photos``, else those of the
   optional data folder, docs/data.md; real digits where there are none);
5. ``catch``: catch panels of real digits (docs/study-design.md, "Catch trials"): four of
   one digit each (expected yes) and four of every digit ten times (expected no). Digits
   whatever the practice shows: the study's AM panels show digits, and a catch trial
   asks what they ask of a looking participant (the simulated raters, too, know digits
   only: a panel of dog photos is a no to them);
6. ``design``: the lists and participant targets, ``--catch`` (4) catch trials in every
   list and the pre-registered exclusion rules (``experiment/exclusion_rules.toml``,
   ``--exclusion-rules``) in ``study.json``;
7. ``load``: the study into the SQLite store of ``OUT/instance`` (a changed design
   replaces the demo store's study, and any answers in it).

``--methods ppgn,fourier,natural`` (docs/networks.md, "Panel methods"): besides PPGN's
panels (the paper's, in ``OUT/am``), a panel of every rated unit by each other method
(``panels-<layer>-fourier`` into ``OUT/am/fourier``, ``panels-<layer>-natural`` into
``OUT/am/natural``, the same units as PPGN's); the design deals them all, layer x method
balanced and no unit twice in a list (docs/study-design.md, "Methods"), and Table 2 is
given per layer x method. The default is ``ppgn`` alone: the study as before methods.

``--network resnet``: the same study of the demo's second architecture, a small ResNet
(:mod:`generator.digits_resnet`, trained on first use and cached), through the generic
path a user's own model takes: recorded by module name (``layer2``, ``layer3``, ``fc``)
from the reference ``generator.digits:trained_digits_resnet``, its PPGN panels drawn
with the demo generator (the prior through the demo network's fc6). Its outputs go to
their own folder (default ``out/demo-resnet``); a folder built for one network is refused
to the other (:func:`check_network`). See :data:`NETWORKS` for what differs.

Then an admin account gets a new random password (printed), and gunicorn serves the
experiment at http://127.0.0.1:PORT until Ctrl-C.

Every stage is cached: it is skipped when its outputs exist and its command and inputs
are those of its last successful run (a stamp in ``OUT/.stages/``). A stage whose
recipe changed starts again from clean outputs; an interrupted one resumes (the AM
stages keep every finished unit). So a second run starts serving in seconds.

``--simulate N``: the study is loaded into a fresh store (``OUT/simulation/``) and
served on a free port; N simulated participants take it over HTTP
(:mod:`experiment.simulate`), answering from what an independent classifier sees in each
panel (:mod:`generator.rater`), except a share of inattentive ones (``--inattentive``,
default 0.2) who answer at random and fast; the store is checked, the data exported
(``python -m server export``, which applies the exclusion rules) and Table 2 computed
(``analysis/table2.py``, with the study file: per layer x method where there are several
methods, with the mixed model's test of the method effect) and printed. Then the
exclusion is held against the simulation's truth (``simulation/truth.csv``, who was
inattentive): who the rules excluded and kept, and Table 2 three ways, of every
participant, after exclusion, and of the attentive ones alone (the truth), with each
one's distance from the truth, per layer (x method) (:func:`exclusion_report`; written to
``simulation/exclusion.md``). A closing note gives the time of every stage and of the
simulation's steps, the CPU, Table 2's main figures and the method test
(:func:`closing_note`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common import data
from common.data import imagenet_photos
from common.files import atomic_write_text

__all__ = ["Stage", "StageFailed", "DemoConfig", "DemoNetwork", "NETWORKS", "METHODS",
           "run_stages", "demo_stages", "check_network", "simulate", "exclusion_report",
           "ExclusionReport", "closing_note", "DEFAULT_RULES", "main"]

log = logging.getLogger("experiment.demo")  # the same name under python -m

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("conv5", "fc6", "fc8")  # the demo network's rated layers (NETWORKS["demo"])
ADMIN_USER = "admin"
#: The demo's pre-registered exclusion rules.
DEFAULT_RULES = ROOT / "experiment" / "exclusion_rules.toml"
#: The side of the demo's AM images (generator.ppgn's digits): catch panels match them.
DIGIT_CELL = 32


# -- stages and their cache ------------------------------------------------------------------

@dataclass
class Stage:
    """One step of the pipeline: commands, what they read and what they write."""

    name: str
    title: str
    commands: list[list[str]]
    outputs: list[Path]
    inputs: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    clean: list[Path] = field(default_factory=list)  # removed before a changed recipe runs
    note: str = ""  # said only when the stage runs (e.g. "trains the network on first use")

    def key(self) -> str:
        """The recipe: commands, environment and the inputs' sizes and times."""
        def portable(cmd: list[str]) -> list[str]:
            return ["python" if c == sys.executable else c for c in cmd]

        inputs = []
        for p in self.inputs:
            st = p.stat()
            inputs.append([str(p), st.st_size, st.st_mtime_ns])
        text = json.dumps([[portable(c) for c in self.commands], self.env, inputs])
        return hashlib.sha256(text.encode()).hexdigest()


class StageFailed(RuntimeError):
    """A stage's command failed: which stage, which command, its exit status."""

    def __init__(self, stage: Stage, command: Sequence[str], status: int):
        self.stage, self.command, self.status = stage, list(command), status
        super().__init__(f"stage {stage.name!r} failed (exit status {status}): "
                         f"{' '.join(command)}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _run(cmd: Sequence[str], env: Mapping[str, str], stdout) -> int:
    return subprocess.run(list(cmd), env=dict(env), cwd=ROOT, stdout=stdout).returncode


def run_stages(stages: Sequence[Stage], state_dir: Path, *, out=None,
               runner=_run) -> dict[str, float | None]:
    """Run ``stages`` in order, skipping those whose stamp matches; returns the seconds
    each took (None: cached). ``runner(cmd, env, stdout)`` runs one command and returns
    its exit status: what a command prints goes to ``state_dir/<stage>.log`` (progress
    bars and warnings, on stderr, stay on the terminal); a failure shows the log's end."""
    out = out or sys.stdout
    state_dir.mkdir(parents=True, exist_ok=True)
    took: dict[str, float | None] = {}
    n = len(stages)
    for i, stage in enumerate(stages, 1):
        stamp = state_dir / f"{stage.name}.json"
        old = json.loads(stamp.read_text()) if stamp.exists() else None
        missing = [str(p) for p in stage.inputs if not p.exists()]
        if missing:
            raise StageFailed(stage, ["(inputs missing: " + ", ".join(missing) + ")"], 2)
        key = stage.key()
        if old and old.get("key") == key and old.get("done") and \
                all(p.exists() for p in stage.outputs):
            print(f"[{i}/{n}] {stage.title}: cached", file=out, flush=True)
            took[stage.name] = None
            continue
        if old and old.get("key") != key:
            for p in stage.clean:
                _remove(p)
        _write_json(stamp, {"key": key, "done": False})
        note = f" ({stage.note})" if stage.note else ""
        print(f"[{i}/{n}] {stage.title}{note} ...", file=out, flush=True)
        started = time.perf_counter()
        env = {**os.environ, **stage.env}
        log_path = state_dir / f"{stage.name}.log"
        with open(log_path, "w") as log_file:
            for cmd in stage.commands:
                print("$ " + " ".join(cmd), file=log_file, flush=True)
                status = runner(cmd, env, log_file)
                if status != 0:
                    log_file.flush()
                    tail = log_path.read_text().splitlines()[-20:]
                    print("\n".join(f"  | {line}" for line in tail), file=out, flush=True)
                    raise StageFailed(stage, cmd, status)
        missing = [str(p) for p in stage.outputs if not p.exists()]
        if missing:
            raise StageFailed(stage, ["(outputs not written: " + ", ".join(missing) + ")"], 1)
        seconds = time.perf_counter() - started
        _write_json(stamp, {"key": key, "done": True, "seconds": round(seconds, 2)})
        print(f"[{i}/{n}] {stage.title}: done in {seconds:.1f} s", file=out, flush=True)
        took[stage.name] = seconds
    return took


def _write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


# -- the demo's networks and methods ---------------------------------------------------------

#: The panel methods (docs/networks.md, "Panel methods"), in the order the design and
#: Table 2 take them: PPGN, the paper's, first.
METHODS = ("ppgn", "fourier", "natural")


@dataclass(frozen=True)
class DemoNetwork:
    """A network the demo studies: how it is named and recorded, its rated layers and
    what its AM stages need to know about them (this module never imports torch, so the
    layers' sizes are written here)."""

    name: str
    title: str
    reference: str  # the --network of generator.record, generator.ppgn and generator.am
    table: str  # the activation table's file name in OUT
    record_layers: tuple[str, ...]  # generator.record --layers (empty: its default)
    layers: tuple[str, ...]  # rated, in the order of their AM stages (the logits first)
    sizes: Mapping[str, int]  # units a layer has
    conv: tuple[str, ...]  # the conv layers among them
    # layers that get PPGN's conv schedule (1,000-step chains with resets, samples over
    # the 0.98 threshold): generator.sampler.settings_for gives it to layers named conv*
    # only; any other layer gets the fc schedule (each chain's last image, no threshold)
    ppgn_conv: tuple[str, ...]
    figure_layer: str  # the layer of the per-unit figures (jitter, classes, activations)
    shares: Mapping[str, int]  # default % of a layer's units rated (drawn with the seed)
    fourier_conv: tuple[str, ...] = ()  # generator.am --method fourier options, conv layers
    out: Path = Path("out/demo")  # the default --out

    def share(self, layer: str) -> int:
        return self.shares.get(layer, 100)


NETWORKS = {
    "demo": DemoNetwork(
        "demo", "the demo network", "demo", "digits.h5", (), ("fc8", "fc6", "conv5"),
        {"fc8": 10, "fc6": 128, "conv5": 32}, ("conv5",), ("conv5",), "fc6", {"fc6": 50}),
    # The digits ResNet, as a user's own model: a reference, layers by module name.
    # Its conv layers are the outputs of residual stages, after their last ReLU (a hooked
    # network has no pre-ReLU tap): Fourier images maximising the map's centre start
    # with that position closed on many units and get no gradient (their panels stay at
    # activation 0), so they maximise the channel's mean over the map (lucid's `channel`
    # objective; the tile is then the whole image). PPGN's chains, pushed by the prior
    # too, do not stall. Rated: every fc unit, half of layer2's 32 and a quarter of
    # layer3's 64 (16 each), drawn with the seed: the full demo of three methods then
    # takes about 20 minutes on 2 cores (README.md, "The demo study").
    "resnet": DemoNetwork(
        "resnet", "the digits ResNet", "generator.digits:trained_digits_resnet",
        "resnet.h5", ("layer2", "layer3", "fc"), ("fc", "layer3", "layer2"),
        {"fc": 10, "layer3": 64, "layer2": 32}, ("layer2", "layer3"), (), "layer3",
        {"layer2": 50, "layer3": 25}, ("--objective", "mean"), Path("out/demo-resnet")),
}


# -- the demo's stages -----------------------------------------------------------------------

@dataclass
class DemoConfig:
    """What the demo builds. The defaults are the full demo; tests shrink it."""

    out: Path = Path("out/demo")
    network: str = "demo"  # a key of NETWORKS
    methods: tuple[str, ...] = ("ppgn",)  # of METHODS, in its order
    units: str = "all"  # units per layer: "all" or the first K ("4")
    images_per_unit: int = 100  # a square: 100 = 10x10 panels
    fc_steps: int = 50  # sampler steps for fc6 and fc8 chains (the paper: 200 on CaffeNet)
    fc6_share: int = 50  # % of fc6's units rated, drawn with the seed (the paper: 2,048 of 4,096)
    # % of a layer's units rated, drawn with the seed, over the network's defaults
    # (DemoNetwork.shares; the demo's fc6: fc6_share)
    shares: dict[str, int] = field(default_factory=dict)
    conv_steps: int = 1000  # conv5 chains (the paper's schedule: resets every 100)
    # conv5 runs chains until 100 samples pass PPGN's threshold; a unit stops short after
    # this many chain-steps (generator.ppgn's own default is 10x a unit's least, 10,000)
    conv_chain_steps: int = 4000
    # Adam steps of a Fourier image: lucid's 512 take ~31 s a demo unit; at 64 the
    # independent classifier still recognises the demo's fc8 images (docs/networks.md)
    fourier_steps: int = 64
    lists: int = 10
    participants: int = 50
    photos: Path | None = None  # None: common.data.imagenet_photos(), else real digits
    catch: int = 4  # catch trials in every list (0: none)
    exclusion_rules: Path | None = DEFAULT_RULES  # the pre-registered rules (None: none)
    seed: int = 0

    @property
    def instance(self) -> Path:
        return self.out / "instance"

    @property
    def net(self) -> DemoNetwork:
        return NETWORKS[self.network]

    @property
    def table(self) -> Path:
        return self.out / self.net.table

    def share(self, layer: str) -> int:
        """The % of ``layer``'s units rated."""
        if layer in self.shares:
            return self.shares[layer]
        if self.network == "demo" and layer == "fc6":
            return self.fc6_share
        return self.net.share(layer)

    def method_dir(self, method: str) -> Path:
        """Where a method's panels go: PPGN's in ``am/`` (as before methods), the others'
        in ``am/<method>/``."""
        return self.out / "am" if method == "ppgn" else self.out / "am" / method


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def demo_stages(cfg: DemoConfig) -> list[Stage]:
    """The stages that build ``cfg``'s study, in order (see the module's docstring)."""
    out = cfg.out
    net = cfg.net
    table = cfg.table
    results = out / "selectivity.csv"
    figures = out / "figures"
    practice = out / "practice"
    catch = out / "catch"
    study = out / "study" / "study.json"
    layers = ["--layers", *net.record_layers] if net.record_layers else []
    unit = net.figure_layer
    stages = [
        Stage("record", f"record {net.title}'s activations over the digits",
              [_py("-m", "generator.record", "--network", net.reference, "--images", "digits",
                   *layers, "--out", str(table))], [table],
              clean=[table, Path(f"{table}.parts")], note="trains the network on first use"),
        Stage("selectivity", "every unit's selectivity",
              [_py("-m", "analysis.selectivity", str(table), "--out", str(results))],
              [results], [table]),
        Stage("tables", "the paper's tables",
              [_py("-m", "analysis.tables", str(results), "--out", str(out / "tables"),
                   "--class-names", str(table))],
              [out / "tables" / "tables.md"], [results, table]),
        Stage("figures", "the paper's figures", [
            _py("-m", "analysis.figures", "distributions", str(results), "--out", str(figures)),
            _py("-m", "analysis.figures", "ccmas2", str(results), "--out", str(figures)),
            _py("-m", "analysis.figures", "jitter", str(table), "--layer", unit, "--unit", "0",
                "--out", str(figures / f"jitter_{unit}_0")),
            _py("-m", "analysis.figures", "classes", str(table), "--layer", unit, "--unit",
                "0", "--out", str(figures / f"classes_{unit}_0")),
            _py("-m", "analysis.figures", "activation-dist", str(table), "--layer", unit,
                "--unit", "0", "--out", str(figures / f"activations_{unit}_0")),
            _py("-m", "analysis.figures", "a4", "--out", str(figures)),
        ], [figures / "figA4_synthetic.png"], [results, table]),
    ]
    first = True  # the first AM stage loads (and on first use trains) the demo's helpers
    for method in cfg.methods:
        for layer in net.layers:
            stages.append(_am_stage(cfg, method, layer, first))
            first = False
    photos = cfg.photos if cfg.photos is not None else imagenet_photos()
    photos = cfg.photos if cfg.photos is not None else imagenet_photos()
    source = ["--photos", str(photos)] if photos is not None else ["--digits"]
    stages += [
        Stage("practice", "practice panels from real "
              + ("photos" if photos is not None else "digits (no photo folder: --photos)"),
              [_py("-m", "generator.panels", "practice", *source, "--seed", str(cfg.seed),
                   "--out", str(practice))],
              [practice / "practice.csv"], clean=[practice]),
    ]
    design_args: list[str] = []
    # the manifests in the network's order (conv5, fc6, fc8), method by method
    design_inputs = [*(cfg.method_dir(method) / f"manifest_{layer}.csv"
                       for method in cfg.methods for layer in reversed(net.layers)),
                     practice / "practice.csv"]
    what = [f"{cfg.lists} lists", f"{cfg.participants} participants"]
    if cfg.methods != ("ppgn",):
        what.insert(0, "methods " + " x ".join(cfg.methods) + " balanced in every list")
    if cfg.catch:
        # a list takes ceil(K / 2) of a kind, each file once: make at least that many
        per_kind = max(4, math.ceil(cfg.catch / 2))
        stages.append(Stage(
            "catch", f"catch panels of real digits ({per_kind} of one digit each, {per_kind} "
            "of every digit)",
            [_py("-m", "generator.panels", "catch", "--digits", "--cell", str(DIGIT_CELL),
                 "--positive", str(per_kind), "--negative", str(per_kind),
                 "--seed", str(cfg.seed), "--avoid", str(practice / "practice_contents.csv"),
                 "--out", str(catch))],
            [catch / "catch.csv"], [practice / "practice_contents.csv"], clean=[catch]))
        design_args += ["--catch", str(cfg.catch), "--catch-panels", str(catch / "catch.csv")]
        design_inputs.append(catch / "catch.csv")
        what.append(f"{cfg.catch} catch trials a list")
    if cfg.exclusion_rules is not None:
        design_args += ["--exclusion-rules", str(cfg.exclusion_rules)]
        design_inputs.append(cfg.exclusion_rules)
        what.append(f"the exclusion rules of {_shown(cfg.exclusion_rules)}")
    stages += [
        Stage("design", f"the study design ({', '.join(what)})",
              [_py("-m", "experiment.design", "--panels",
                   *(str(cfg.method_dir(method) / "manifest.csv") for method in cfg.methods),
                   "--practice", str(practice / "practice.csv"), "--lists", str(cfg.lists),
                   "--participants", str(cfg.participants), *design_args,
                   "--seed", str(cfg.seed), "--out", str(study))],
              [study], design_inputs),
        Stage("load", "load the study into the SQLite store",
              [_py("-m", "server", "load-study", str(study), "--completion-code", "DEMO0000",
                   "--discard-data")],
              [cfg.instance / "study.db"], [study],
              env={"FLASK_INSTANCE_PATH": str(cfg.instance.resolve())}),
    ]
    return stages


def _am_stage(cfg: DemoConfig, method: str, layer: str, first: bool) -> Stage:
    """The stage that draws ``method``'s panels of ``layer``'s rated units. PPGN's stages
    (``panels-<layer>``, into ``am/``) run ``generator.ppgn`` with the same command as
    before there were methods (so their caches stay valid); the others
    (``panels-<layer>-<method>``, into ``am/<method>/``) run ``generator.am --method``.
    Every method gets the same units: ``--units`` (the first K) and the layer's share,
    drawn by ``--sample`` from the seed, (seed, layer, unit) deciding alone."""
    net = cfg.net
    folder = cfg.method_dir(method)
    size = net.sizes[layer]
    if cfg.units == "all":
        units = "all"
    else:
        units = f"0-{min(int(cfg.units), size) - 1}"
    what = "every unit" if units == "all" else f"units {units}"
    sample: list[str] = []
    share = cfg.share(layer)
    if share < 100:
        what = f"{share}% of the units (drawn)" + ("" if units == "all" else f" of units {units}")
        sample = ["--sample", f"{share}%"]
    conv = layer in net.conv
    common = ["--layer", layer, "--units", units, *sample]
    images = ["--images-per-unit", str(cfg.images_per_unit)]
    stem = layer if method == "ppgn" else f"{method}_{layer}"
    clean = [folder / f"manifest_{layer}.csv", folder / f"settings_{layer}.json",
             *folder.glob(f"units/{stem}_*"), *folder.glob(f"panels/{stem}_*")]
    if method == "ppgn":
        steps = cfg.conv_steps if layer in net.ppgn_conv else cfg.fc_steps
        # conv5 keeps a chain's best images, so few chains a unit: batches of 16 give each
        # CPU one (a batch of 64 would leave a core idle)
        batch = (["--batch-chains", "16", "--max-chain-steps", str(cfg.conv_chain_steps)]
                 if layer in net.ppgn_conv else [])
        return Stage(
            f"panels-{layer}",
            f"AM panels for {what} of {layer} ({cfg.images_per_unit} images each, "
            f"{steps} steps)",
            [_py("-m", "generator.ppgn", "--network", net.reference, "--generator", "demo",
                 *common, *batch, *images, "--steps", str(steps), "--seed", str(cfg.seed),
                 "--out", str(folder))],
            [folder / f"manifest_{layer}.csv"], clean=clean,
            note="trains the generator on first use" if first else "")
    if method == "fourier":
        options = ["--steps", str(cfg.fourier_steps), *(net.fourier_conv if conv else ())]
        title = (f"Fourier panels for {what} of {layer} ({cfg.images_per_unit} images each, "
                 f"{cfg.fourier_steps} steps)")
    elif method == "natural":
        options = ["--table", str(cfg.table)]
        title = (f"natural-image panels for {what} of {layer} (the {cfg.images_per_unit} "
                 "most activating digits each)")
    else:
        raise ValueError(f"unknown panel method {method!r}: expected one of "
                         f"{', '.join(METHODS)}")
    return Stage(
        f"panels-{layer}-{method}", title,
        [_py("-m", "generator.am", "--method", method, "--network", net.reference,
             *common, *images, *options, "--seed", str(cfg.seed), "--out", str(folder))],
        [folder / f"manifest_{layer}.csv"], [cfg.table] if method == "natural" else [],
        # the demo network's fourier and natural panels of fc8 are judged by the demo's
        # independent classifier too, which the first of them trains on first use
        clean=clean, note="trains the independent classifier on first use"
        if first and net.name == "demo" else "")


def parse_methods(text: str) -> tuple[str, ...]:
    """``--methods``: a comma-separated subset of :data:`METHODS`, returned in its order
    (PPGN, the paper's, first), each once."""
    asked = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in asked if m not in METHODS]
    if unknown or not asked:
        raise ValueError(f"--methods {text!r}: expected a comma-separated list of "
                         f"{', '.join(METHODS)} (e.g. ppgn,fourier,natural)"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return tuple(m for m in METHODS if m in asked)


def parse_share(text: str, net: DemoNetwork) -> tuple[str, int]:
    """``--share LAYER=PERCENT``: a rated layer of ``net`` and a percentage, 1-100."""
    layer, sep, value = text.partition("=")
    if not sep or layer not in net.layers or not value.strip().isdigit() \
            or not 1 <= int(value) <= 100:
        raise ValueError(f"--share {text!r}: expected LAYER=PERCENT with LAYER one of "
                         f"{net.title}'s rated layers ({', '.join(net.layers)}) and a "
                         "percentage from 1 to 100, e.g. "
                         f"{net.layers[1]}={net.share(net.layers[1])}")
    return layer, int(value)


def check_network(out: Path, network: str) -> None:
    """Refuse to build ``network``'s study in a folder that holds another network's: their
    stages share names and files (``selectivity.csv``, ``am/``, ``study/``, the store),
    and one would overwrite the other. The folder's network is written to
    ``.stages/network`` on first use (a folder with stamps but none is the demo network's:
    every folder built before ``--network``)."""
    marker = out / ".stages" / "network"
    if marker.exists():
        held = marker.read_text().strip()
    elif (out / ".stages" / "record.json").exists():
        held = "demo"
    else:
        held = None
    if held is not None and held != network:
        raise ValueError(f"{out} holds the study of --network {held}, not {network}: pass "
                         f"--out with another folder (the default for {network}: "
                         f"{NETWORKS[network].out}), or remove {out} first")
    if held is None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, network + "\n")


def _shown(path: Path) -> str:
    """``path`` relative to the project where it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# -- serving ---------------------------------------------------------------------------------

def set_admin_password(instance: Path, password: str | None = None) -> str:
    """Create the admin account, or give it a new password; returns the password."""
    password = password or secrets.token_urlsafe(12)
    env = {**os.environ, "FLASK_INSTANCE_PATH": str(instance.resolve())}
    done = subprocess.run(_py("-m", "server", "create-admin", ADMIN_USER, "--password-stdin",
                              "--replace"), input=f"{password}\n", text=True, env=env,
                          capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not set the admin password: {done.stderr.strip()}")
    return password


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server can listen on 127.0.0.1:``port`` now. Binds as gunicorn does, with
    SO_REUSEADDR: the TIME-WAIT connections a stopped server leaves (a browser's kept-alive
    one, say) do not keep a new server from listening."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def gunicorn(instance: Path, port: int, *, workers: int = 2,
             log_file: Path | None = None) -> Iterator[subprocess.Popen]:
    """gunicorn serving ``server:create_app()`` for ``instance`` on 127.0.0.1:``port``,
    in its own session; entered once the health check answers, stopped on exit (also
    when the start fails or is interrupted)."""
    from server.healthcheck import check
    from server.serve import gunicorn_command

    env = {**os.environ, "FLASK_INSTANCE_PATH": str(instance.resolve())}
    cmd = gunicorn_command("127.0.0.1", port, workers=workers, threads=4, graceful_timeout=5)
    url = f"http://127.0.0.1:{port}/api/health"
    with ExitStack() as stack:
        output = stack.enter_context(open(log_file, "ab")) if log_file else None
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=output, stderr=output,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while check(url, timeout=2) is not None:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server stopped at start (exit status "
                                       f"{proc.returncode})"
                                       + (f"; see {log_file}" if log_file else ""))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer {url} within 60 s")
                time.sleep(0.2)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def participant_link(base: str) -> str:
    """A link as Prolific makes it: 24-hex-digit ids, a fresh participant each call."""
    pid, study, session = (secrets.token_hex(12) for _ in range(3))
    return f"{base}/?PROLIFIC_PID={pid}&STUDY_ID={study}&SESSION_ID={session}"


def banner(port: int, password: str) -> str:
    base = f"http://127.0.0.1:{port}"
    return "\n".join([
        "",
        "The demo study is served:",
        f"  participant (as from Prolific): {participant_link(base)}",
        f"  preview (stores nothing):       {base}/preview",
        f"  dashboard:                      {base}/admin/",
        f"  admin user {ADMIN_USER!r}, password: {password}",
        "Ctrl-C stops the server.",
    ])


# -- simulated participants, export, Table 2 -------------------------------------------------

def simulate(cfg: DemoConfig, participants: int, *, concurrency: int = 10,
             port: int | None = None, out=None, inattentive: float = 0.2,
             timings: dict[str, float] | None = None) -> Path:
    """Simulated participants on a fresh copy of the study, ``inattentive`` of them (a
    share) answering at random and fast; returns Table 2's Markdown (after exclusion).
    Also writes ``simulation/exclusion.md`` (:func:`exclusion_report`). Table 2 takes each
    panel's method from the study file (per layer x method where there are several).
    ``timings``, where given, gets the seconds each step took, by its title."""
    out = out or sys.stdout
    timings = {} if timings is None else timings
    sim = cfg.out / "simulation"
    _remove(sim)
    instance = sim / "instance"
    env = {**os.environ, "FLASK_INSTANCE_PATH": str(instance.resolve())}
    steps: list[tuple[str, list[str]]] = [
        ("load the study into a fresh store",
         _py("-m", "server", "load-study", str(cfg.out / "study" / "study.json"),
             "--completion-code", "DEMO0000")),
    ]
    timings.update(_run_steps(steps, env, out))
    # Every simulated participant comes from 127.0.0.1: no per-address entry limit here.
    (instance / "config.py").write_text("ENTRY_MAX_PER_ADDRESS = None\n")
    port = port or free_port()
    truth = sim / "truth.csv"
    careless = round(inattentive * participants)
    print(f"serving it at http://127.0.0.1:{port} ...", file=out, flush=True)
    with gunicorn(instance, port, log_file=sim / "server.log"):
        timings.update(_run_steps([(
            f"{participants} simulated participants rate the panels: "
            f"{participants - careless} look with an independent classifier, "
            f"{careless} answer at random and fast",
            _py("-m", "experiment.simulate", "--url", f"http://127.0.0.1:{port}",
                "--participants", str(participants), "--concurrency", str(concurrency),
                "--think-ms", "0", "--seed", str(cfg.seed), "--inattentive",
                f"{inattentive:g}", "--truth", str(truth), "--rater",
                "generator.rater:demo_rater", "--check-store",
                f"sqlite:///{(instance / 'study.db').resolve()}",
                "--json", str(sim / "simulation.json")))], env, out))
    export = sim / "export"
    table2 = sim / "table2"

    def table2_command(responses: Path, folder: Path, *extra: str) -> list[str]:
        return _py(str(ROOT / "analysis" / "table2.py"), "--responses", str(responses),
                   "--participants", str(export / "participants.csv"), "--selectivity",
                   str(cfg.out / "selectivity.csv"), "--classes", "digits", "--study",
                   str(cfg.out / "study" / "study.json"), "--out", str(folder), *extra)

    # what these print goes to their logs: Table 2 is printed once, by the caller
    timings.update(_run_steps(
        [("export the data", _py("-m", "server", "export", "--out", str(export)))],
        env, out, log_dir=sim))
    attentive = attentive_responses(export / "responses.csv", truth,
                                    sim / "attentive" / "responses.csv")
    timings.update(_run_steps([
        ("Table 2", table2_command(export / "responses.csv", table2)),
        ("Table 2 of every participant",
         table2_command(export / "responses.csv", sim / "table2_all", "--keep-excluded",
                        "--no-extras")),
        ("Table 2 of the attentive participants (the truth)",
         table2_command(attentive, sim / "table2_attentive", "--keep-excluded",
                        "--no-extras")),
    ], env, out, log_dir=sim))
    report = exclusion_report(export / "participants.csv", truth,
                              {"all": sim / "table2_all" / "table2.csv",
                               "after": table2 / "table2.csv",
                               "truth": sim / "table2_attentive" / "table2.csv"},
                              rules=cfg.exclusion_rules, inattentive=inattentive,
                              seed=cfg.seed)
    atomic_write_text(sim / "exclusion.md", report.markdown())
    return table2 / "table2.md"


# -- the closing note -------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; else the platform's word) and how many CPUs
    this process may use: what the times in the closing note were measured on."""
    import platform

    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "an unknown CPU"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cpus} CPU(s) available"


def stage_seconds(stages: Sequence[Stage], took: Mapping[str, float | None],
                  state_dir: Path) -> list[tuple[Stage, float | None, bool]]:
    """(stage, seconds, ran now) for each stage: the seconds of this run, or, for a stage
    taken from the cache, those its stamp recorded when it was built (None: unknown)."""
    rows = []
    for stage in stages:
        seconds = took.get(stage.name)
        if seconds is not None:
            rows.append((stage, seconds, True))
            continue
        stamp = state_dir / f"{stage.name}.json"
        built = json.loads(stamp.read_text()).get("seconds") if stamp.exists() else None
        rows.append((stage, built, False))
    return rows


def closing_note(cfg: DemoConfig, stages: Sequence[Stage], took: Mapping[str, float | None],
                 simulation: Mapping[str, float] | None = None,
                 table2_dir: Path | None = None, total: float | None = None) -> str:
    """What a run of the demo did, in Markdown: the network and methods, the CPU, the time
    of each stage (a stage taken from the cache: the time it took when it was built) and
    of each step of the simulation; with ``table2_dir`` Table 2's main figures per layer
    (x method) after exclusion, and the mixed model's test of the method effect (from
    ``mixed_model.txt``, where the study has several methods); where the figures are."""
    net = cfg.net
    title = net.title[0].upper() + net.title[1:]
    lines = ["# Closing note", "",
             f"{title} (`--network {net.name}`: {net.reference}), panel methods "
             f"{', '.join(cfg.methods)}; outputs in {_shown(cfg.out)}; measured on "
             f"{cpu_model()}.", "",
             "| stage | seconds |", "|---|---|"]
    built = 0.0
    for stage, seconds, ran in stage_seconds(stages, took, cfg.out / ".stages"):
        shown = "–" if seconds is None else f"{seconds:.1f}"
        lines.append(f"| {stage.name} | {shown}{'' if ran else ' (from the cache: when built)'} |")
        built += seconds or 0.0
    lines.append(f"| the stages in all | {built:.1f} |")
    for title, seconds in (simulation or {}).items():
        lines.append(f"| simulation: {title} | {seconds:.1f} |")
    if total is not None:
        lines.append(f"| this run, wall | {total:.1f} |")
    lines.append("")
    if table2_dir is not None and (table2_dir / "table2.csv").exists():
        rows = _read_rows(table2_dir / "table2.csv")
        lines += ["Table 2 after exclusion, main figures (all: "
                  f"{_shown(table2_dir / 'table2.md')}):", "",
                  "| layer | method | % yes (of judgments) | % units with ≥80% yes | units | "
                  "judgments |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['layer']} | {r.get('method') or 'ppgn'} | "
                         f"{_number(r.get('pct_yes')):.1f} | "
                         f"{_number(r.get('pct_units_yes80')):.1f} | {r.get('n_units', '')} | "
                         f"{r.get('n_judgments', '')} |")
        lines.append("")
        model = table2_dir / "mixed_model.txt"
        test = _method_test_lines(model.read_text()) if model.exists() else []
        if test:
            lines += [f"The mixed model ({_shown(model)}):", "", "```", *test, "```", ""]
    figures = sorted(p.name for p in (cfg.out / "figures").glob("*.png"))
    if figures:
        lines += [f"Figures in {_shown(cfg.out / 'figures')}: {', '.join(figures)}.", ""]
    return "\n".join(lines)


def _method_test_lines(text: str) -> list[str]:
    """The lines of ``mixed_model.txt`` that test the method effect: "Method effect: ...",
    its null and each method term's z (none in a study of one method)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Method effect:"):
            block = [line]
            for rest in lines[i + 1:]:
                if not rest.startswith("  "):
                    break
                block.append(rest)
            return block
    return []


# -- exclusion against the simulation's truth ------------------------------------------------

TRUE = ("true", "1", "yes")


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


def read_truth(path: Path) -> dict[str, bool]:
    """``server.simulate --truth``'s file: PROLIFIC_PID -> inattentive."""
    rows = _read_rows(path)
    if rows and not {"prolific_pid", "inattentive"} <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns prolific_pid, inattentive "
                         "(python -m server.simulate --truth)")
    return {r["prolific_pid"]: r["inattentive"].strip().lower() in TRUE for r in rows}


def attentive_responses(responses: Path, truth: Path, out: Path) -> Path:
    """``responses.csv`` with the rows of the attentive participants only (by
    ``prolific_pid``, after ``truth``), every cell as exported; returns ``out``."""
    careless = {pid for pid, yes in read_truth(truth).items() if yes}
    with open(responses, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        try:
            column = header.index("prolific_pid")
        except ValueError:
            raise ValueError(f"{responses}: no prolific_pid column (export it with "
                             "python -m server export)") from None
        rows = [row for row in reader if row[column] not in careless]
    buffer = io.StringIO()
    writer = csv.writer(buffer)   # the export's dialect: RFC 4180, CRLF line ends
    writer.writerow(header)
    writer.writerows(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buffer.getvalue())
    return out


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


#: The three Table 2s the report holds against each other, and their names in it.
WAYS = {"all": "every participant", "after": "after exclusion",
        "truth": "attentive only (truth)"}


@dataclass
class ExclusionReport:
    """The rules' verdicts held against who was inattentive, and Table 2 three ways.

    ``confusion[group][verdict]``: completed participants by ``group`` ("inattentive",
    "attentive") and ``verdict`` ("excluded", "kept"); ``unfinished`` those the rules did
    not judge (not completed), by group; ``fired[rule][group]``: how many of a group each
    rule excluded; ``tables[way][layer]``: Table 2's ``pct_yes`` and ``pct_units_yes80``
    for ``way`` in :data:`WAYS`, a row per layer, or per layer x method ("fc8 / fourier")
    in a study of several methods: each compared with the truth on its own."""

    confusion: dict[str, dict[str, int]]
    unfinished: dict[str, int]
    fired: dict[str, dict[str, int]]
    tables: dict[str, dict[str, dict[str, float]]]
    rules: list[str] = field(default_factory=list)
    rules_file: str = ""
    inattentive_share: float = 0.0
    seed: int = 0

    def rate(self, group: str) -> float:
        """The share of a group's completed participants that the rules excluded."""
        row = self.confusion[group]
        n = row["excluded"] + row["kept"]
        return row["excluded"] / n if n else math.nan

    @property
    def layers(self) -> list[str]:
        seen: list[str] = []
        for table in self.tables.values():
            seen += [layer for layer in table if layer not in seen]
        return seen

    def distance(self, way: str, column: str = "pct_yes") -> float:
        """Mean absolute difference from the truth over the layers (or layers x methods:
        Table 2's rows), in percentage points."""
        diffs = [abs(self.tables[way][layer][column] - self.tables["truth"][layer][column])
                 for layer in self.layers
                 if layer in self.tables[way] and layer in self.tables["truth"]]
        diffs = [d for d in diffs if not math.isnan(d)]
        return sum(diffs) / len(diffs) if diffs else math.nan

    def markdown(self) -> str:
        def pct(x: float) -> str:
            return "–" if math.isnan(x) else f"{x:.1f}"

        c = self.confusion
        n = {g: c[g]["excluded"] + c[g]["kept"] for g in c}
        lines = [
            "# Exclusion in the simulated study", "",
            f"Simulated participants, {self.inattentive_share:.0%} of them inattentive (drawn "
            f"with seed {self.seed}): yes or no at random, in 250-700 ms. The rules "
            f"(pre-registered{self.rules_file and ' in ' + self.rules_file}, put into "
            "study.json): " + ("; ".join(self.rules) or "none") + ".", "",
            "## Who the rules excluded", "",
            "Completed participants (the rules judge those who finished; "
            f"{self.unfinished['inattentive']} inattentive and "
            f"{self.unfinished['attentive']} attentive did not finish).", "",
            "| truth | excluded | kept | total | excluded % |",
            "|---|---|---|---|---|",
        ]
        for group in ("inattentive", "attentive"):
            lines.append(f"| {group} | {c[group]['excluded']} | {c[group]['kept']} | "
                         f"{n[group]} | {pct(100 * self.rate(group))} |")
        lines += ["", f"The rules caught {pct(100 * self.rate('inattentive'))}% of the "
                  f"inattentive ({c['inattentive']['excluded']} of {n['inattentive']}) and "
                  f"excluded {pct(100 * self.rate('attentive'))}% of the attentive "
                  f"({c['attentive']['excluded']} of {n['attentive']}).", ""]
        if self.fired:
            lines += ["| rule | inattentive excluded by it | attentive excluded by it |",
                      "|---|---|---|"]
            lines += [f"| {rule} | {by.get('inattentive', 0)} | {by.get('attentive', 0)} |"
                      for rule, by in self.fired.items()]
            lines += ["", "(A participant may fail several rules.)", ""]
        ways = list(WAYS)
        lines += ["## Table 2 three ways", "",
                  "Of every participant who finished, after exclusion (the rules' verdicts), "
                  "and of the attentive participants alone (the truth, whatever the rules "
                  "said). Distance from the truth: the mean absolute difference over the "
                  + ("layers x methods (Table 2's rows)" if any(" / " in r for r in self.layers)
                     else "layers") + ", in percentage points.", ""]
        for column, title in (("pct_yes", "% yes (of judgments)"),
                              ("pct_units_yes80", "% units with ≥80% yes")):
            lines += [f"| {title} | " + " | ".join(WAYS[w] for w in ways) + " |",
                      "|---|" + "---|" * len(ways)]
            for layer in self.layers:
                lines.append(f"| {layer} | " + " | ".join(
                    pct(self.tables[w].get(layer, {}).get(column, math.nan))
                    for w in ways) + " |")
            lines += ["| distance from the truth | " + " | ".join(
                pct(self.distance(w, column)) if w != "truth" else "–" for w in ways) + " |",
                ""]
        return "\n".join(lines) + "\n"


def exclusion_report(participants: Path, truth: Path, tables: Mapping[str, Path], *,
                     rules: Path | None = None, inattentive: float = 0.0,
                     seed: int = 0) -> ExclusionReport:
    """The export's ``participants.csv`` (``excluded``, ``exclusion_reasons``) joined
    with the simulation's ``truth`` on ``prolific_pid``, and the three Table 2s
    (``tables``: a ``table2.csv`` for each of :data:`WAYS`)."""
    careless = read_truth(truth)
    confusion = {g: {"excluded": 0, "kept": 0} for g in ("inattentive", "attentive")}
    unfinished = {"inattentive": 0, "attentive": 0}
    fired: dict[str, dict[str, int]] = {}
    rows = _read_rows(participants)
    if rows and "excluded" not in rows[0]:
        raise ValueError(f"{participants}: no 'excluded' column (an export from before the "
                         "exclusion rules: export again with python -m server export)")
    for row in rows:
        pid = row["prolific_pid"]
        if pid not in careless:
            raise ValueError(f"{participants}: participant {pid} is not in {truth}: "
                             "the export and the truth file come from different runs")
        group = "inattentive" if careless[pid] else "attentive"
        verdict = row["excluded"].strip().lower()
        if verdict == "":
            unfinished[group] += 1
            continue
        excluded = verdict in TRUE
        confusion[group]["excluded" if excluded else "kept"] += 1
        if excluded:
            for rule in filter(None, row.get("exclusion_reasons", "").split(";")):
                fired.setdefault(rule, {}).setdefault(group, 0)
                fired[rule][group] += 1
    read = {way: {_row_name(r): {"pct_yes": _number(r.get("pct_yes")),
                                 "pct_units_yes80": _number(r.get("pct_units_yes80"))}
                  for r in _read_rows(path)}
            for way, path in tables.items()}
    described: list[str] = []
    if rules is not None:
        from analysis.exclusion import read_rules

        described = read_rules(rules).describe()
    return ExclusionReport(confusion, unfinished, fired, read, described,
                           _shown(rules) if rules is not None else "", inattentive, seed)


def _row_name(row: Mapping[str, str]) -> str:
    """A Table 2 row's name: its layer, and its method where the table has a ``method``
    column (a study of several methods: one row per layer x method, "fc8 / fourier")."""
    method = row.get("method") or ""
    return f"{row['layer']} / {method}" if method else row["layer"]


def _run_steps(steps: Iterable[tuple[str, list[str]]], env: Mapping[str, str], out, *,
               log_dir: Path | None = None) -> dict[str, float]:
    """Run each ``(title, command)``; with ``log_dir`` a command's stdout goes to
    ``log_dir/<title>.log`` (its end is shown when it fails), else to the terminal.
    Returns the seconds each took, by title."""
    took: dict[str, float] = {}
    for title, cmd in steps:
        print(f"-- {title}", file=out, flush=True)
        started = time.perf_counter()
        if log_dir is None:
            status = _run(cmd, env, None)
        else:
            log_path = log_dir / f"{title.replace(' ', '_')}.log"
            with open(log_path, "w") as log_file:
                status = _run(cmd, env, log_file)
            if status != 0:
                tail = log_path.read_text().splitlines()[-20:]
                print("\n".join(f"  | {line}" for line in tail), file=out, flush=True)
        if status != 0:
            raise RuntimeError(f"{title} failed (exit status {status}): {' '.join(cmd)}")
        took[title] = time.perf_counter() - started
    return took


# -- command line ----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m experiment.demo",
        description="The demo study end to end on the embedded default (a small network "
                    "trained on scikit-learn's digits): activations, selectivity, tables and "
                    "figures, AM panels for every conv5/fc6/fc8 unit, practice panels, the "
                    "design, the SQLite store; then serve it at 127.0.0.1, or let simulated "
                    "participants take it and print Table 2. Every stage is cached. "
                    "--network resnet: the same study of a small ResNet (layer2, layer3, "
                    "fc), through the generic path; --methods: panels by several methods, "
                    "a condition of the study.",
        epilog="Reduced size (what tests/test_demo_study.py runs): --units 10 "
               "--images-per-unit 16 --fc-steps 30 --conv-steps 300 --lists 2 "
               "--participants 10 --simulate 12. Outputs: OUT/digits.h5 (resnet: "
               "resnet.h5), selectivity.csv, tables/, figures/, am/ (PPGN's panels and "
               "manifest; am/fourier/, am/natural/ the other methods'), practice/, catch/, "
               "study/study.json, instance/ (the SQLite store), simulation/ (with "
               "--simulate: export/, truth.csv, table2/ after exclusion, table2_all/, "
               "table2_attentive/, exclusion.md, closing.md), .stages/ (stamps and each "
               "stage's log). The ResNet's layers have no name the demo network's "
               "options know: its shares are --share layer2=50 --share layer3=25 "
               "(default), its conv layers' PPGN chains the fc schedule (--fc-steps: "
               "generator.sampler gives PPGN's conv schedule to layers named conv* "
               "only), its conv layers' Fourier images the channel-mean objective.")
    parser.add_argument("--network", choices=sorted(NETWORKS), default="demo",
                        help="demo (default): the demo's AlexNet-shaped network (conv5, fc6, "
                             "fc8); resnet: a small ResNet on the digits "
                             f"({NETWORKS['resnet'].reference}, trained on first use; "
                             "layer2, layer3, fc), recorded by module name")
    parser.add_argument("--methods", default="ppgn", metavar="LIST",
                        help="panel methods, comma-separated, of "
                             f"{','.join(METHODS)} (default %(default)s, the paper's); "
                             "several: a panel of every rated unit by each, balanced in "
                             "every list, Table 2 per layer x method")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: out/demo; out/demo-resnet with "
                             "--network resnet)")
    parser.add_argument("--port", type=int, default=None,
                        help="port to serve on (default 5000; with --simulate a free one)")
    parser.add_argument("--simulate", type=int, metavar="N", default=None,
                        help="N simulated participants take the study, then the data are "
                             "exported and Table 2 printed (no serving afterwards)")
    parser.add_argument("--concurrency", type=int, default=10,
                        help="simulated participants at once (default %(default)s)")
    parser.add_argument("--inattentive", type=float, default=0.2, metavar="FRACTION",
                        help="with --simulate: the share of simulated participants who answer "
                             "at random and fast (default %(default)s); the exclusion is then "
                             "held against who they were (simulation/exclusion.md)")
    parser.add_argument("--catch", type=int, default=4, metavar="K",
                        help="catch trials in every list, of real digits (default "
                             "%(default)s; 0: none)")
    parser.add_argument("--exclusion-rules", type=Path, default=DEFAULT_RULES,
                        metavar="FILE.toml",
                        help="the pre-registered exclusion rules put into the study "
                             f"(default {_shown(DEFAULT_RULES)}; docs/exclusion.md)")
    parser.add_argument("--no-exclusion-rules", action="store_true",
                        help="a study without exclusion rules")
    parser.add_argument("--no-serve", action="store_true",
                        help="build the study and stop (no server)")
    parser.add_argument("--photos", type=Path, default=None,
                        help="folder of ImageNet photos <wnid>.jpg for the practice panels "
                             f"(default: the photos of {data.DESCRIPTION}, docs/data.md, "
                             "where there are some; else real digits)")
    size = parser.add_argument_group("size")
    size.add_argument("--units", default="all",
                      help="units per layer: all (default) or the first K")
    size.add_argument("--images-per-unit", type=int, default=100,
                      help="AM images per panel, a square (default 100 = 10x10)")
    size.add_argument("--fc6-share", type=int, default=None, metavar="PERCENT",
                      help="share of fc6's units given panels, drawn with --seed (default "
                           "50: the paper rated 2,048 of AlexNet's 4,096; 100: all); the "
                           "demo network's, as --share fc6=PERCENT")
    size.add_argument("--share", action="append", default=[], metavar="LAYER=PERCENT",
                      help="share of a layer's units given panels (by every method), drawn "
                           "with --seed; repeat for several layers (default: fc6=50 for "
                           "the demo network, layer2=50 and layer3=25 for the ResNet, all "
                           "of the others)")
    size.add_argument("--fc-steps", type=int, default=50,
                      help="sampler steps for fc6 and fc8 chains (default %(default)s)")
    size.add_argument("--conv-steps", type=int, default=1000,
                      help="sampler steps for conv5 chains (default %(default)s)")
    size.add_argument("--conv-chain-steps", type=int, default=4000, metavar="N",
                      help="conv5: chain-steps a unit may take to reach 100 samples over "
                           "PPGN's threshold before its panel ends short (default "
                           "%(default)s; generator.ppgn's own default is 10,000)")
    size.add_argument("--fourier-steps", type=int, default=64, metavar="N",
                      help="--methods fourier: Adam steps of each image (default "
                           "%(default)s; lucid's 512 take ~8x as long, and at 64 the "
                           "independent classifier still recognises fc8's images)")
    size.add_argument("--lists", type=int, default=10,
                      help="lists (default %(default)s; at least one a method)")
    size.add_argument("--participants", type=int, default=50,
                      help="participant places over all lists (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of everything drawn: the AM chains, the practice photos, "
                             "the lists, the simulated participants (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.units != "all" and not (args.units.isdigit() and int(args.units) > 0):
        parser.error(f"--units: all or a positive number, got {args.units!r}")
    net = NETWORKS[args.network]
    try:
        methods = parse_methods(args.methods)
        shares = dict(parse_share(text, net) for text in args.share)
    except ValueError as exc:
        parser.error(str(exc))
    if args.fc6_share is not None:
        if args.network != "demo":
            parser.error(f"--fc6-share: {net.title} has no fc6; its shares: --share "
                         + " --share ".join(f"{k}={v}" for k, v in net.shares.items()))
        if not 1 <= args.fc6_share <= 100:
            parser.error(f"--fc6-share: a percentage from 1 to 100, got {args.fc6_share}")
    if args.lists < len(methods):
        parser.error(f"--lists {args.lists}: with {len(methods)} methods a unit has "
                     f"{len(methods)} panels and no list may hold two: pass --lists "
                     f"{len(methods)} or more")
    if args.fourier_steps < 1:
        parser.error(f"--fourier-steps: at least 1, got {args.fourier_steps}")
    if args.photos is not None and not args.photos.is_dir():
        parser.error(f"--photos {args.photos}: no such folder")
    if args.simulate is not None and args.simulate < 1:
        parser.error("--simulate: at least 1 participant")
    if not 0 <= args.inattentive <= 1:
        parser.error(f"--inattentive: a share from 0 to 1, got {args.inattentive:g}")
    if args.catch < 0:
        parser.error(f"--catch: 0 or more catch trials, got {args.catch}")
    rules = None if args.no_exclusion_rules else args.exclusion_rules.resolve()
    if rules is not None:
        from analysis.exclusion import RuleError, read_rules

        try:
            read_rules(rules)
        except RuleError as exc:
            parser.error(f"--exclusion-rules: {exc}")
    port = args.port or 5000
    serve = not args.no_serve and args.simulate is None
    if serve and not port_is_free(port):
        parser.error(f"port {port} on 127.0.0.1 is in use: pass --port with a free one")
    out = (args.out or net.out).resolve()
    cfg = DemoConfig(out=out, network=args.network, methods=methods, units=args.units,
                     images_per_unit=args.images_per_unit, fc_steps=args.fc_steps,
                     fc6_share=50 if args.fc6_share is None else args.fc6_share,
                     shares=shares, conv_steps=args.conv_steps,
                     conv_chain_steps=args.conv_chain_steps, fourier_steps=args.fourier_steps,
                     lists=args.lists, participants=args.participants,
                     photos=args.photos.resolve() if args.photos else None,
                     catch=args.catch, exclusion_rules=rules, seed=args.seed)
    try:
        check_network(cfg.out, cfg.network)
    except ValueError as exc:
        parser.error(str(exc))
    started = time.perf_counter()
    stages = demo_stages(cfg)
    try:
        took = run_stages(stages, cfg.out / ".stages")
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"the study is ready in {time.perf_counter() - started:.1f} s: {cfg.out}",
          flush=True)
    if args.simulate is not None:
        timings: dict[str, float] = {}
        try:
            table2 = simulate(cfg, args.simulate, concurrency=args.concurrency,
                              port=args.port, inattentive=args.inattentive, timings=timings)
        except (RuntimeError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        per = " per layer x method" if len(cfg.methods) > 1 else ""
        print(f"\nTable 2{per} (simulated participants, the excluded left out; {table2}):\n")
        print(table2.read_text())
        report = table2.parent.parent / "exclusion.md"
        print(f"\n{report}:\n")
        print(report.read_text())
        note = closing_note(cfg, stages, took, timings, table2.parent,
                            time.perf_counter() - started)
        atomic_write_text(table2.parent.parent / "closing.md", note)
        print(f"\n{note}")
        print(f"demo with simulation done in {time.perf_counter() - started:.1f} s")
        return 0
    if not serve:
        return 0
    password = set_admin_password(cfg.instance)
    # gunicorn runs in its own session (a Ctrl-C reaches this process only): stop it on
    # Ctrl-C, a plain kill or a closed terminal alike
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    try:
        with gunicorn(cfg.instance, port) as server:
            print(banner(port, password), flush=True)
            server.wait()
    except KeyboardInterrupt:
        print("\nthe server is stopped", flush=True)
    return 0


def _stop_on_signal(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
