"""The demo study end to end (experiment/demo.py): the stage cache, the practice panels,
and the whole pipeline at reduced size, simulated participants and Table 2 included."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from experiment.demo import (
    DemoConfig,
    Stage,
    StageFailed,
    demo_stages,
    free_port,
    main,
    run_stages,
)
from generator.images import imagenet_classes
from generator.panels import PRACTICE_GROUPS, practice_panels

ROOT = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


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


def test_the_demo_has_every_stage_of_the_pipeline(tmp_path):
    names = [s.name for s in demo_stages(DemoConfig(out=tmp_path))]
    assert names == ["record", "selectivity", "tables", "figures", "panels-fc8", "panels-fc6",
                     "panels-conv5", "practice", "design", "load"]


# -- practice panels ---------------------------------------------------------------------------

def fake_photos(folder: Path, per_group: int = 20) -> None:
    """Solid-colour stand-ins named like ImageNet photos, ``per_group`` per category."""
    wnids = imagenet_classes()[0]
    folder.mkdir(parents=True, exist_ok=True)
    for g, indices in enumerate(PRACTICE_GROUPS.values()):
        for k, i in enumerate(indices[:per_group]):
            Image.new("RGB", (300, 256), (40 * g, 10 * k, 100)).save(folder / f"{wnids[i]}.jpg")


def test_practice_panels_from_photos(tmp_path):
    fake_photos(tmp_path / "photos")
    listing = practice_panels(tmp_path / "practice", photos=tmp_path / "photos")
    rows = list(csv.DictReader(listing.open()))
    assert [r["label"] for r in rows] == list(PRACTICE_GROUPS)
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
    assert [r["label"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    with Image.open(tmp_path / "practice" / rows[0]["path"]) as panel:
        pixels = np.asarray(panel.convert("L"))
    assert pixels.shape == (4 * 64 + 3 * 2, 5 * 64 + 4 * 2)
    assert 10 < pixels.mean() < 200  # digits drawn, not a blank


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason=f"{SHARED_PHOTOS} is absent")
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
    assert manifest.groupby("layer").size().to_dict() == {"conv5": 10, "fc6": 10, "fc8": 10}
    study = json.loads((out / "study" / "study.json").read_text())
    assert len(study["panels"]) == 30 and len(study["practice"]) == 6

    # the simulation went through HTTP and the store holds every acknowledged answer once
    assert "store check: " in printed and "FAILED" not in printed
    responses = pd.read_csv(out / "simulation" / "export" / "responses.csv")
    main_trials = responses[~responses["practice"].astype(bool)]
    assert len(main_trials) >= 9 * 15  # most of the 10 places, 15 panels each

    # Table 2 was printed, and it shows the paper's contrast: fc8 panels are judged
    # interpretable far more often than conv5 and fc6 panels
    assert "# Table 2" in printed and "| fc8 |" in printed
    table = pd.read_csv(out / "simulation" / "table2" / "table2.csv").set_index("layer")
    yes = table["pct_yes"]
    assert yes["fc8"] >= 70
    assert yes["fc8"] - max(yes["conv5"], yes["fc6"]) >= 30, yes.to_dict()

    # a second run takes everything from the cache
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / ".stages").glob("*.json")}
    assert main(["--out", str(out), *REDUCED, "--no-serve"]) == 0
    again = capfd.readouterr().out
    assert again.count(": cached") == 10
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / ".stages").glob("*.json")}

    # served as `make demo` serves it: the printed password opens the dashboard
    served = subprocess.Popen([sys.executable, "-m", "experiment.demo", "--out", str(out),
                               *REDUCED, "--port", str(free_port())], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("password:" in line for line in lines):
            line = served.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        assert text.count(": cached") == 10
        base = re.search(r"dashboard: +(http://127\.0\.0\.1:\d+)/admin/", text).group(1)
        password = re.search(r"password: (\S+)", text).group(1)
        assert log_in(base, "admin", password) == 200
        assert log_in(base, "admin", password + "x") == 401
    finally:
        served.send_signal(signal.SIGTERM)  # a plain kill stops gunicorn too (Ctrl-C alike)
        assert served.wait(30) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/api/health", timeout=5)


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
