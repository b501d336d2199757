"""The demo study end to end (experiment/demo.py): the stage cache, the practice panels,
and the whole pipeline at reduced size, simulated participants (some inattentive), the
exclusion rules and Table 2 included."""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from system_deps import SHARED_PHOTOS

from common.files import FILE_MODE
from experiment.demo import (
    DEFAULT_RULES,
    METHODS,
    NETWORKS,
    DemoConfig,
    Stage,
    StageFailed,
    check_network,
    demo_stages,
    exclusion_report,
    free_port,
    main,
    parse_methods,
    participant_link,
    port_is_free,
    run_stages,
)
from generator.images import imagenet_classes
from generator.panels import MIXED_GROUPS, PRACTICE_GROUPS, practice_panels

ROOT = Path(__file__).resolve().parents[1]
#: The console script (pyproject.toml's [project.scripts]), installed beside the interpreter.
SELECTIVITY = str(Path(sys.executable).parent / "selectivity")


# -- the stage cache ---------------------------------------------------------------------------

def writer(path: Path, text: str) -> list[str]:
    return [sys.executable, "-c",
            f"import pathlib; pathlib.Path({str(path)!r}).write_text({text!r}); print('wrote')"]


def test_stages_run_once_then_come_from_the_cache(tmp_path):
    source, made = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("a")
    stage = Stage("copy", "copy", [writer(made, "x")], [made], [source], clean=[made])
    out = io.StringIO()
    took = run_stages([stage], tmp_path / "state", out=out)
    assert made.read_text() == "x" and took["copy"] is not None
    assert (tmp_path / "state" / "copy.log").read_text().splitlines()[-1] == "wrote"
    took = run_stages([stage], tmp_path / "state", out=out)
    assert took == {"copy": None} and "[1/1] copy: cached" in out.getvalue()

    # a changed input runs it again
    source.write_text("bb")
    assert run_stages([stage], tmp_path / "state", out=out)["copy"] is not None
    # a lost output too
    made.unlink()
    assert run_stages([stage], tmp_path / "state", out=out)["copy"] is not None
    # a changed recipe cleans the stage's outputs first
    other = tmp_path / "other.txt"
    changed = Stage("copy", "copy", [writer(other, "y")], [other], [source], clean=[made])
    run_stages([changed], tmp_path / "state", out=out)
    assert not made.exists() and other.read_text() == "y"


def test_a_failing_stage_names_its_command_and_shows_its_log(tmp_path):
    bad = Stage("bad", "bad", [[sys.executable, "-c", "print('the reason'); raise SystemExit(3)"]],
                [tmp_path / "never"])
    out = io.StringIO()
    with pytest.raises(StageFailed, match="exit status 3") as caught:
        run_stages([bad], tmp_path / "state", out=out)
    assert caught.value.stage.name == "bad" and "| the reason" in out.getvalue()
    json_stamp = json.loads((tmp_path / "state" / "bad.json").read_text())
    assert json_stamp["done"] is False  # not cached: the next run tries again

    silent = Stage("silent", "silent", [[sys.executable, "-c", "pass"]], [tmp_path / "never"])
    with pytest.raises(StageFailed, match="outputs not written"):
        run_stages([silent], tmp_path / "state", out=out)
    needs = Stage("needs", "needs", [[sys.executable, "-c", "pass"]], [], [tmp_path / "absent"])
    with pytest.raises(StageFailed, match="inputs missing"):
        run_stages([needs], tmp_path / "state", out=out)


def test_a_stage_says_what_it_does_on_first_use_only_when_it_runs(tmp_path):
    made = tmp_path / "out.txt"
    stage = Stage("s", "make it", [writer(made, "x")], [made], note="trains it on first use")
    out = io.StringIO()
    run_stages([stage], tmp_path / "state", out=out)
    run_stages([stage], tmp_path / "state", out=out)
    first, second = out.getvalue().splitlines()[0], out.getvalue().splitlines()[-1]
    assert first == "[1/1] make it (trains it on first use) ..."
    assert second == "[1/1] make it: cached"


def test_the_demo_has_every_stage_of_the_pipeline(tmp_path):
    names = [s.name for s in demo_stages(DemoConfig(out=tmp_path))]
    assert names == ["record", "selectivity", "tables", "figures", "panels-fc8", "panels-fc6",
                     "panels-conv5", "practice", "catch", "design", "load"]
    design = next(s for s in demo_stages(DemoConfig(out=tmp_path)) if s.name == "design")
    command = design.commands[0]
    assert command[command.index("--catch") + 1] == "4"
    assert command[command.index("--catch-panels") + 1] == str(tmp_path / "catch" / "catch.csv")
    assert command[command.index("--exclusion-rules") + 1] == str(DEFAULT_RULES)
    assert DEFAULT_RULES in design.inputs   # a changed rules file designs the study again
    # catch panels of real digits, whatever the practice shows: the demo's panels are digits
    catch = next(s for s in demo_stages(DemoConfig(out=tmp_path, photos=tmp_path))
                 if s.name == "catch")
    assert "--digits" in catch.commands[0] and "--photos" not in catch.commands[0]
    # without catch trials or rules, neither is asked for
    bare = demo_stages(DemoConfig(out=tmp_path, catch=0, exclusion_rules=None))
    assert "catch" not in [s.name for s in bare]
    command = next(s for s in bare if s.name == "design").commands[0]
    assert "--catch" not in command and "--exclusion-rules" not in command


def command_of(stages: list[Stage], name: str) -> list[str]:
    """The one command of the stage ``name``."""
    (stage,) = [s for s in stages if s.name == name]
    (command,) = stage.commands
    return command


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_demo_network_with_every_method(tmp_path):
    """PPGN's stages as before methods; each other method a stage a layer into its own
    folder, for the same units (the same --units and --sample); the design deals all."""
    stages = demo_stages(DemoConfig(out=tmp_path, methods=METHODS))
    layers = ("fc8", "fc6", "conv5")
    assert [s.name for s in stages] == [
        "record", "selectivity", "tables", "figures",
        *(f"panels-{layer}" for layer in layers),
        *(f"panels-{layer}-fourier" for layer in layers),
        *(f"panels-{layer}-natural" for layer in layers),
        "practice", "catch", "design", "load"]
    ppgn_only = demo_stages(DemoConfig(out=tmp_path))
    for layer in layers:   # PPGN's commands (and so their caches) are those of ppgn alone
        assert command_of(stages, f"panels-{layer}") == command_of(ppgn_only, f"panels-{layer}")
    for method in ("fourier", "natural"):
        fc6 = command_of(stages, f"panels-fc6-{method}")
        assert fc6[1:6] == ["-m", "generator.am", "--method", method, "--network"]
        assert option(fc6, "--network") == "demo" and option(fc6, "--sample") == "50%"
        assert option(fc6, "--out") == str(tmp_path / "am" / method)
    fourier = command_of(stages, "panels-conv5-fourier")
    assert option(fourier, "--steps") == "64" and "--objective" not in fourier  # conv5:pre
    natural = command_of(stages, "panels-conv5-natural")
    assert option(natural, "--table") == str(tmp_path / "digits.h5")
    design = command_of(stages, "design")
    panels = design[design.index("--panels") + 1:design.index("--practice")]
    assert panels == [str(tmp_path / "am" / "manifest.csv"),
                      str(tmp_path / "am" / "fourier" / "manifest.csv"),
                      str(tmp_path / "am" / "natural" / "manifest.csv")]
    # a changed method's manifest designs the study again
    assert tmp_path / "am" / "natural" / "manifest_conv5.csv" in \
        next(s for s in stages if s.name == "design").inputs


def test_the_resnet_demo_goes_through_the_generic_path(tmp_path):
    """The ResNet by its reference and module names: recorded, visualised by each method,
    its per-unit figures of layer3; its shares and conv options its own."""
    reference = "generator.digits:trained_digits_resnet"
    stages = demo_stages(DemoConfig(out=tmp_path, network="resnet", methods=METHODS))
    layers = ("fc", "layer3", "layer2")
    assert [s.name for s in stages] == [
        "record", "selectivity", "tables", "figures",
        *(f"panels-{layer}" for layer in layers),
        *(f"panels-{layer}-{method}" for method in ("fourier", "natural")
          for layer in layers),
        "practice", "catch", "design", "load"]
    record = command_of(stages, "record")
    assert option(record, "--network") == reference
    assert record[record.index("--layers") + 1:record.index("--out")] == \
        ["layer2", "layer3", "fc"]
    assert option(record, "--out") == str(tmp_path / "resnet.h5")
    figures = next(s for s in stages if s.name == "figures").commands
    assert all(option(c, "--layer") == "layer3" for c in figures if "--layer" in c)
    for layer in layers:
        for method in METHODS:
            name = f"panels-{layer}" if method == "ppgn" else f"panels-{layer}-{method}"
            command = command_of(stages, name)
            assert option(command, "--network") == reference and \
                option(command, "--layer") == layer
            share = {"fc": None, "layer3": "25%", "layer2": "50%"}[layer]
            assert (option(command, "--sample") if "--sample" in command else None) == share
    ppgn = command_of(stages, "panels-layer2")
    assert ppgn[1:3] == ["-m", "generator.ppgn"] and option(ppgn, "--generator") == "demo"
    # PPGN's conv schedule is for layers named conv* (generator.sampler): the ResNet's
    # conv layers get the fc one, with --fc-steps, and no conv5 options
    assert option(ppgn, "--steps") == "50" and "--max-chain-steps" not in ppgn
    # post-ReLU taps: Fourier images maximise a conv channel's mean, the fc logits as is
    assert option(command_of(stages, "panels-layer3-fourier"), "--objective") == "mean"
    assert "--objective" not in command_of(stages, "panels-fc-fourier")
    assert option(command_of(stages, "panels-layer2-natural"), "--table") == \
        str(tmp_path / "resnet.h5")
    # --units K is each layer's first K, at most all of it (fc has 10)
    small = demo_stages(DemoConfig(out=tmp_path, network="resnet", units="20"))
    assert option(command_of(small, "panels-fc"), "--units") == "0-9"
    assert option(command_of(small, "panels-layer2"), "--units") == "0-19"
    shares = demo_stages(DemoConfig(out=tmp_path, network="resnet", shares={"layer3": 100}))
    assert "--sample" not in command_of(shares, "panels-layer3")


def test_methods_lists_and_shares_are_checked(tmp_path, capsys):
    assert parse_methods("natural, PPGN,fourier,natural") == ("ppgn", "fourier", "natural")
    with pytest.raises(ValueError, match="unknown: deepdream"):
        parse_methods("ppgn,deepdream")
    for argv, message in [
        (["--methods", "ppgn,fourier,natural", "--lists", "2"], "pass --lists 3 or more"),
        (["--network", "resnet", "--fc6-share", "20"], "--share layer2=50 --share layer3=25"),
        (["--network", "resnet", "--share", "fc6=20"], "rated layers (fc, layer3, layer2)"),
        (["--share", "fc6=0"], "a percentage from 1 to 100"),
    ]:
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "never"), "--no-serve", *argv])
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "never").exists()


def test_an_output_folder_holds_one_network(tmp_path, capsys):
    check_network(tmp_path / "a", "resnet")
    check_network(tmp_path / "a", "resnet")   # again: the same network
    assert (tmp_path / "a" / ".stages" / "network").read_text() == "resnet\n"
    with pytest.raises(ValueError, match="holds the study of --network resnet, not demo"):
        check_network(tmp_path / "a", "demo")
    # a folder built before --network is the demo network's
    (tmp_path / "old" / ".stages").mkdir(parents=True)
    (tmp_path / "old" / ".stages" / "record.json").write_text("{}")
    with pytest.raises(ValueError, match="out/demo-resnet"):
        check_network(tmp_path / "old", "resnet")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "old"), "--network", "resnet", "--no-serve"])
    assert "pass --out with another folder" in capsys.readouterr().err
    assert NETWORKS["resnet"].out != NETWORKS["demo"].out


def test_the_exclusion_report_compares_each_layer_x_method(tmp_path):
    """Table 2 of several methods has a row per layer x method: each is held against the
    truth on its own (two rows of one layer must not overwrite each other)."""
    (tmp_path / "participants.csv").write_text(
        "prolific_pid,status,excluded,exclusion_reasons\np1,completed,false,\n")
    (tmp_path / "truth.csv").write_text("prolific_pid,inattentive\np1,false\n")
    tables = {}
    for way, fourier in (("all", 30.0), ("after", 20.0), ("truth", 10.0)):
        tables[way] = tmp_path / f"table2_{way}.csv"
        tables[way].write_text("layer,method,pct_yes,pct_units_yes80\n"
                               "fc8,ppgn,90.0,80.0\n"
                               f"fc8,fourier,{fourier},0.0\n")
    report = exclusion_report(tmp_path / "participants.csv", tmp_path / "truth.csv", tables)
    assert report.layers == ["fc8 / ppgn", "fc8 / fourier"]
    assert report.distance("all") == pytest.approx(10.0)     # (0 + 20) / 2
    assert report.distance("after") == pytest.approx(5.0)    # (0 + 10) / 2
    text = report.markdown()
    assert "| fc8 / fourier | 30.0 | 20.0 | 10.0 |" in text
    assert "layers x methods (Table 2's rows)" in text


# -- serving -------------------------------------------------------------------------------

def test_the_printed_participant_link_is_a_valid_fresh_prolific_link(app):
    links = [participant_link("http://127.0.0.1:5000") for _ in range(2)]
    assert links[0] != links[1]  # a fresh participant each run
    for link in links:
        ids = dict(part.split("=") for part in link.split("?", 1)[1].split("&"))
        assert sorted(ids) == ["PROLIFIC_PID", "SESSION_ID", "STUDY_ID"]
        assert all(re.fullmatch(r"[0-9a-f]{24}", v) for v in ids.values()), ids
        reply = app.test_client().get(link.removeprefix("http://127.0.0.1:5000"))
        assert reply.status_code == 302 and reply.location.endswith("/study")


def test_a_port_left_in_time_wait_is_free_to_serve_again():
    """A server that closes a kept-alive connection first leaves it in TIME-WAIT on its
    port; a new server binds with SO_REUSEADDR (as gunicorn does), so the port is free."""
    import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server closes first: its side goes to TIME-WAIT
    client.recv(1)
    client.close()
    listener.close()
    assert port_is_free(port)
    with socket.socket() as plain:  # what the old check did trips on TIME-WAIT
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    with socket.socket() as busy:  # but a port some server listens on is not free
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert not port_is_free(port)


# -- practice panels ---------------------------------------------------------------------------

def fake_photos(folder: Path, per_group: int = 20) -> None:
    """Solid-colour stand-ins named like ImageNet photos: ``per_group`` per practice
    category, and one per class of the mixed panels' categories."""
    wnids = imagenet_classes()[0]
    folder.mkdir(parents=True, exist_ok=True)
    for g, indices in enumerate(MIXED_GROUPS.values()):
        for k, i in enumerate(indices):
            Image.new("RGB", (300, 256), (10 * g, 5 * (k % 50), 200)).save(
                folder / f"{wnids[i]}.jpg")
    for g, indices in enumerate(PRACTICE_GROUPS.values()):
        for i in set(indices) - set(indices[:per_group]):
            (folder / f"{wnids[i]}.jpg").unlink(missing_ok=True)
        for k, i in enumerate(indices[:per_group]):
            Image.new("RGB", (300, 256), (40 * g, 10 * k, 100)).save(folder / f"{wnids[i]}.jpg")


def test_practice_panels_from_photos(tmp_path):
    # the mix, the contents and the expected answers: tests/test_practice_panels.py
    fake_photos(tmp_path / "photos")
    listing = practice_panels(tmp_path / "practice", photos=tmp_path / "photos")
    rows = list(csv.DictReader(listing.open()))
    assert [r["label"] for r in rows if r["expected"] == "yes"] == list(PRACTICE_GROUPS)
    assert [r["expected"] for r in rows] == ["yes", "no", "yes", "yes", "no", "yes"]
    for row in rows:
        with Image.open(tmp_path / "practice" / row["path"]) as panel:
            assert panel.size == (5 * 128 + 4 * 2, 4 * 128 + 3 * 2)  # 4x5 photos of 128 px
    # the study design reads the listing as it is
    from experiment.design import read_practice

    assert len(read_practice(listing)) == 6


def test_practice_panels_say_which_category_lacks_photos(tmp_path):
    fake_photos(tmp_path / "photos", per_group=19)
    with pytest.raises(ValueError, match="practice panel 'dog': 19 of its 118 classes"):
        practice_panels(tmp_path / "practice", photos=tmp_path / "photos")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        practice_panels(tmp_path / "practice", photos=tmp_path / "absent")


def test_practice_panels_of_real_digits_without_photos(tmp_path):
    listing = practice_panels(tmp_path / "practice")
    rows = list(csv.DictReader(listing.open()))
    assert [r["label"] for r in rows] == ["0", "", "1", "2", "", "3"]
    with Image.open(tmp_path / "practice" / rows[0]["path"]) as panel:
        pixels = np.asarray(panel.convert("L"))
    assert pixels.shape == (4 * 64 + 3 * 2, 5 * 64 + 4 * 2)
    assert 10 < pixels.mean() < 200  # digits drawn, not a blank


@pytest.mark.needs_system("shared_data")   # skips without the optional photos (docs/data.md)
def test_practice_panels_from_the_shared_photos(tmp_path):
    listing = practice_panels(tmp_path, photos=SHARED_PHOTOS)
    assert len(list(csv.DictReader(listing.open()))) == 6


# -- the whole demo at reduced size ------------------------------------------------------------

REDUCED = ["--units", "10", "--images-per-unit", "16", "--fc-steps", "30", "--conv-steps",
           "300", "--lists", "2", "--participants", "10"]


@pytest.mark.slow
def test_the_demo_end_to_end_at_reduced_size(tmp_path, capfd):
    out = tmp_path / "demo"
    status = main(["--out", str(out), *REDUCED, "--simulate", "12", "--concurrency", "4"])
    printed = capfd.readouterr().out
    assert status == 0, printed

    # every stage's product is there
    assert (out / "tables" / "tables.md").exists()
    assert (out / "figures" / "figA4_synthetic.png").exists()
    manifest = pd.read_csv(out / "am" / "manifest.csv")
    # half of fc6's units, drawn (as the paper rated 2,048 of 4,096)
    assert manifest.groupby("layer").size().to_dict() == {"conv5": 10, "fc6": 5, "fc8": 10}
    fc6 = manifest.loc[manifest["layer"] == "fc6", "unit"].tolist()
    assert len(set(fc6)) == 5 and set(fc6) <= set(range(10)) and fc6 != list(range(5))
    study = json.loads((out / "study" / "study.json").read_text())
    assert len(study["panels"]) == 25 and len(study["practice"]) == 6
    # four catch trials a list, of real digits, and the pre-registered rules
    assert study["catch_trials"] == 4 and len(study["catch_panels"]) == 2 * 4
    assert sorted(e["catch_expected"] for e in study["catch_panels"].values()) == \
        ["no"] * 4 + ["yes"] * 4
    assert set(study["exclusion_rules"]["rules"]) == {"catch", "fast", "same_answer"}
    # every output of the pipeline has one file mode (the store, with its secret key, and
    # the participants' data are the server's, kept private)
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.relative_to(out).as_posix(): oct(f.stat().st_mode & 0o777)
             for f in out.rglob("*") if f.is_file()
             and f.relative_to(out).parts[0] not in ("instance", "simulation")}
    assert "digits.h5" in modes and "selectivity.csv" in modes
    assert set(modes.values()) == {oct(FILE_MODE & ~umask)}, modes

    # the simulation went through HTTP and the store holds every acknowledged answer once
    assert "store check: " in printed and "FAILED" not in printed
    responses = pd.read_csv(out / "simulation" / "export" / "responses.csv")
    main_trials = responses[~responses["practice"].astype(bool)]
    assert len(main_trials) >= 9 * 12  # most of the 10 places, 12 or 13 panels each

    # Some simulated participants were inattentive (20%: 2 of 12); the rules excluded
    # every one who finished and kept the attentive (the classifier rater answers the
    # catch panels of real digits right; a lapse may cost one of them a catch trial)
    sim = out / "simulation"
    truth = pd.read_csv(sim / "truth.csv")
    assert len(truth) == 12 and truth["inattentive"].sum() == 2
    report = exclusion_report(sim / "export" / "participants.csv", sim / "truth.csv",
                              {"all": sim / "table2_all" / "table2.csv",
                               "after": sim / "table2" / "table2.csv",
                               "truth": sim / "table2_attentive" / "table2.csv"})
    assert report.confusion["inattentive"]["kept"] == 0, report.confusion
    assert report.confusion["attentive"]["excluded"] <= 1, report.confusion
    assert report.distance("after") <= report.distance("all")
    assert "# Exclusion in the simulated study" in printed
    assert (sim / "exclusion.md").read_text() in printed

    # Table 2 was printed, and it shows the paper's contrast: fc8 panels are judged
    # interpretable far more often than conv5 and fc6 panels
    assert "# Table 2" in printed and "| fc8 |" in printed
    table = pd.read_csv(out / "simulation" / "table2" / "table2.csv").set_index("layer")
    yes = table["pct_yes"]
    assert yes["fc8"] >= 70
    assert yes["fc8"] - max(yes["conv5"], yes["fc6"]) >= 30, yes.to_dict()

    # a second run, through the console script, takes everything from the cache
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / ".stages").glob("*.json")}
    again = subprocess.run([SELECTIVITY, "demo", "--out", str(out), *REDUCED, "--no-serve"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(": cached") == 11
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / ".stages").glob("*.json")}

    # served as `make demo` serves it: the printed password opens the dashboard, and the
    # printed participant and preview links, clicked in a browser, open the study
    port = free_port()
    served, text = serve_demo(out, port)
    try:
        assert text.count(": cached") == 11
        base = re.search(r"dashboard: +(http://127\.0\.0\.1:\d+)/admin/", text).group(1)
        password = re.search(r"password: (\S+)", text).group(1)
        assert log_in(base, "admin", password) == 200
        assert log_in(base, "admin", password + "x") == 401
        participant = re.search(r"participant \(as from Prolific\): +(\S+)", text).group(1)
        preview = re.search(r"preview \(stores nothing\): +(\S+)", text).group(1)
        assert click_links([participant, preview]) == [f"{base}/consent"] * 2
        # a kept-alive connection, as a browser tab holds one, when the server stops
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        kept.request("GET", "/api/health")
        assert kept.getresponse().read() and kept.sock is not None
    finally:
        served.send_signal(signal.SIGTERM)  # a plain kill stops gunicorn too (Ctrl-C alike)
        assert served.wait(30) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/api/health", timeout=5)
    # started again at once on the same port (TIME-WAIT does not make it "in use"), by
    # the console script this time
    again, text = serve_demo(out, port, (SELECTIVITY, "demo"))
    try:
        with urllib.request.urlopen(f"{base}/api/health", timeout=5) as reply:
            assert reply.status == 200
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0
    kept.close()


#: The ResNet study of three methods at reduced size: 2 fc units, one of layer3 and one of
#: layer2 (their shares of the first 2), 16 images a panel, few steps; 3 lists (one a method).
RESNET_REDUCED = ["--network", "resnet", "--methods", "ppgn,fourier,natural", "--units", "2",
                  "--images-per-unit", "16", "--fc-steps", "10", "--fourier-steps", "16",
                  "--lists", "3", "--participants", "9"]


@pytest.mark.slow
def test_the_resnet_demo_of_three_methods_at_reduced_size(tmp_path, capfd):
    """`--network resnet --methods ppgn,fourier,natural`: the ResNet recorded and
    visualised by reference and module name, the design balancing layer x method, Table 2
    and the closing note per layer x method (the ResNet trained once, cached in .cache/)."""
    out = tmp_path / "resnet"
    status = main(["--out", str(out), *RESNET_REDUCED, "--simulate", "12", "--concurrency",
                   "4"])
    printed = capfd.readouterr().out
    assert status == 0, printed

    # every stage ran the reference and the layer names (each log starts with its command)
    reference = "--network generator.digits:trained_digits_resnet"
    record = (out / ".stages" / "record.log").read_text().splitlines()[0]
    assert reference in record and "--layers layer2 layer3 fc --out" in record
    layers, methods = ("layer2", "layer3", "fc"), ("ppgn", "fourier", "natural")
    for layer in layers:
        for method in methods:
            name = f"panels-{layer}" if method == "ppgn" else f"panels-{layer}-{method}"
            command = (out / ".stages" / f"{name}.log").read_text().splitlines()[0]
            assert reference in command and f"--layer {layer} " in command, command
    assert (out / "tables" / "tables.md").read_text().count("| layer3 |") >= 2
    assert (out / "figures" / "jitter_layer3_0.png").exists()

    # the design: every unit's panel by every method, layer x method balanced over the
    # lists, no list holding a unit twice
    study = json.loads((out / "study" / "study.json").read_text())
    panels = study["panels"]
    cells = Counter((p["layer"], p["method"]) for p in panels.values())
    assert cells == {(layer, method): {"fc": 2}.get(layer, 1)
                     for layer in layers for method in methods}
    units = {m: sorted((p["layer"], p["unit"]) for p in panels.values() if p["method"] == m)
             for m in methods}
    assert units["ppgn"] == units["fourier"] == units["natural"]
    assert len(study["lists"]) == 3
    per_list = [Counter((panels[p]["layer"], panels[p]["method"]) for p in lst["panels"])
                for lst in study["lists"]]
    for cell in cells:
        counts = [c[cell] for c in per_list]
        assert max(counts) - min(counts) <= 1, (cell, counts)
    for lst in study["lists"]:
        held = [(panels[p]["layer"], panels[p]["unit"]) for p in lst["panels"]]
        assert len(held) == len(set(held)), lst

    # Table 2 per layer x method (layers in the network's order), printed; the mixed
    # model tests the method effect
    rows = [(layer, method) for layer in layers for method in methods]
    sim = out / "simulation"
    for folder in ("table2", "table2_all"):
        table = pd.read_csv(sim / folder / "table2.csv")
        assert list(zip(table["layer"], table["method"], strict=True)) == rows, folder
    assert "Table 2 per layer x method" in printed
    assert "| layer | method | % yes (of judgments) |" in printed
    assert "| fc | natural |" in printed
    assert "Method effect: Wald test of the 2 method term(s)" in \
        (sim / "table2" / "mixed_model.txt").read_text()
    # the exclusion report holds each layer x method against the truth
    assert "| layer2 / fourier |" in (sim / "exclusion.md").read_text()

    # the closing note: every stage's time, the simulation's steps, the CPU, the figures
    note = (sim / "closing.md").read_text()
    assert note in printed
    for name in ("record", "figures", "panels-layer2-natural", "design", "load"):
        assert re.search(rf"^\| {name} \| \d+\.\d \|$", note, re.M), name
    assert "| simulation: export the data |" in note and "measured on " in note
    assert re.search(r"^\| layer3 \| fourier \| [\d.]+ \| [\d.]+ \| 1 \|", note, re.M), note
    assert "Method effect: Wald test" in note and "fig2_distributions.png" in note


def serve_demo(out: Path, port: int,
               command: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """``python -m experiment.demo`` (or ``command``) serving ``out`` (built) on ``port``;
    the process and what it printed up to its banner's password line."""
    command = command or (sys.executable, "-m", "experiment.demo")
    served = subprocess.Popen([*command, "--out", str(out), *REDUCED, "--port", str(port)],
                              cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        while not any("password:" in line for line in lines):
            line = served.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
    except BaseException:
        served.kill()
        served.wait()
        raise
    return served, "".join(lines)


def click_links(links: list[str]) -> list[str]:
    """Each link opened in a fresh headless chromium context; the URLs they land on."""
    landed = []
    with browser() as chromium:
        for link in links:
            context = chromium.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(link)
            page.locator("form").first.wait_for(state="visible", timeout=15_000)
            landed.append(page.url)
            context.close()
    return landed


@contextmanager
def browser():
    chromium_path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from system_deps import require

    require("chromium")   # skips without it (apt-get install chromium); fails under CI=true
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium_path, headless=True,
                                     args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def log_in(base: str, user: str, password: str) -> int:
    """Log in through the form (with its CSRF token); the status of the dashboard."""
    import http.cookiejar
    import urllib.error
    import urllib.parse
    import urllib.request

    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = opener.open(f"{base}/admin/login").read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode({"csrf_token": token, "username": user,
                                   "password": password}).encode()
    try:
        opener.open(f"{base}/admin/login", data)
        with opener.open(f"{base}/admin/") as reply:
            return reply.status if reply.url.endswith("/admin/") else 401
    except urllib.error.HTTPError as exc:
        return exc.code
