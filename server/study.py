"""Installing a study (``study.json`` from ``python -m experiment.design``) in the store.

``python -m server load-study study.json`` reads the file (:mod:`server.study_file`),
copies every panel image into the image folder under its content hash (so image URLs
never go stale and can be cached for a year) and writes the panels, lists and targets.
A store that already holds participants is never overwritten by accident.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import string
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from analysis.exclusion import RuleError, Rules, parse_rules, read_rules
from common.files import atomic_path, sha256_file

from .store import (
    Store,
    get_store,
    list_panels,
    lists,
    now,
    panels,
    participants,
    prolific_files,
    responses,
)
from .store import study as study_table
from .study_file import DesignError, list_trials, read_study

__all__ = ["StudyError", "install_study", "current_study", "image_name", "init_app"]

log = logging.getLogger(__name__)

IMAGE_TYPES = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png", ".webp": ".webp", ".gif": ".gif"}


class StudyError(ValueError):
    """The design cannot be loaded (the message says why and what to do)."""


def image_name(path: Path, sha256: str | None = None) -> str:
    """The content-addressed file name of an image: ``<sha256>.<ext>``."""
    ext = IMAGE_TYPES.get(path.suffix.lower())
    if ext is None:
        raise StudyError(f"{path}: unsupported image type {path.suffix!r} "
                         f"(use one of {', '.join(sorted(set(IMAGE_TYPES.values())))})")
    if sha256 is None:
        sha256 = sha256_file(path)
    return f"{sha256}{ext}"


def _store_image(path: Path, image_dir: Path, sha256: str | None) -> str:
    name = image_name(path, sha256)
    target = image_dir / name
    if not target.exists():
        with atomic_path(target) as tmp:  # removed again if the check below fails
            shutil.copyfile(path, tmp)
            if sha256_file(tmp) != name.split(".")[0]:
                raise StudyError(f"{path}: the file changed since the design was written "
                                 "(its SHA-256 differs from study.json's): rebuild the design")
    return name


def install_study(store: Store, study_path: str | Path, image_dir: str | Path,
                  completion_code: str | None = None, prolific_study_id: str | None = None,
                  discard_data: bool = False,
                  progress: Callable[[Iterable], Iterable] | None = None,
                  exclusion_rules: Rules | None = None) -> dict[str, Any]:
    """Read the study file ``study_path``, copy its images into ``image_dir`` and make it
    the study of ``store``; returns counts. Refuses to replace a study that has
    participants unless ``discard_data``. ``progress`` wraps the image copying (a
    progress bar). ``exclusion_rules``: the study's pre-registered rules, in place of
    those in the study file (``exclusion_rules``; none: nobody is excluded by rule)."""
    try:
        design = read_study(study_path)
    except DesignError as exc:
        raise StudyError(str(exc)) from exc
    if exclusion_rules is None and "exclusion_rules" in design:
        exclusion_rules = parse_rules(design["exclusion_rules"])   # validated by read_study
    rules = exclusion_rules.to_json() if exclusion_rules is not None else None
    if rules is not None:
        design["exclusion_rules"] = rules
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    code = completion_code or _random_code()
    if not code.isalnum():
        raise StudyError(f"completion code {code!r}: use letters and digits only")

    # Copy images first (outside the transaction: slow, idempotent).
    practice_ids = list(design["practice"])
    sources = [(pid, design["practice_panels"][pid]) for pid in practice_ids]
    sources += list(design["panels"].items())
    catch_panels = design.get("catch_panels") or {}
    sources += list(catch_panels.items())
    files = {pid: _store_image(Path(info["path"]), image_dir, info.get("sha256"))
             for pid, info in (progress or iter)(sources)}

    with store.write() as conn:
        n_participants = conn.execute(select(func.count()).select_from(participants)).scalar()
        if n_participants and not discard_data:
            raise StudyError(
                f"the store already holds a study with {n_participants} participants: export "
                "their data, then load into a fresh database (DATABASE_URL) or pass "
                "--discard-data to delete them")
        for table in (responses, prolific_files, participants, list_panels, lists, panels,
                      study_table):
            conn.execute(table.delete())
        rows = [dict(id=pid, practice=True, layer=None, unit=None,
                     label=design["practice_panels"][pid].get("label"), image=files[pid],
                     position=i, expected=design["practice_panels"][pid].get("expected"))
                 for i, pid in enumerate(practice_ids)]
        rows += [dict(id=pid, practice=False, layer=info["layer"], unit=int(info["unit"]),
                      label=None, image=files[pid], position=i)
                 for i, (pid, info) in enumerate(design["panels"].items())]
        # catch panels: no unit, their answer known (docs/study-design.md, "Catch trials")
        rows += [dict(id=pid, practice=False, layer=None, unit=None, label=None,
                      image=files[pid], position=i, catch=True,
                      catch_expected=info["catch_expected"], catch_class=info.get("catch_class"))
                 for i, (pid, info) in enumerate(catch_panels.items(), len(design["panels"]))]
        conn.execute(panels.insert(), [{"catch": False, "catch_expected": None,
                                        "catch_class": None, "expected": None, **row}
                                       for row in rows])
        conn.execute(lists.insert(), [dict(id=int(item["id"]), target=int(item["target"]))
                                      for item in design["lists"]])
        # a list's trials in design order: its AM panels, its catch panels at their positions
        conn.execute(list_panels.insert(), [
            dict(list_id=int(item["id"]), position=i, panel_id=pid)
            for item in design["lists"] for i, pid in enumerate(list_trials(item))])
        conn.execute(study_table.insert().values(
            id=1, format=design["format"], seed=design.get("seed"),
            design=json.dumps(design), loaded_at=now(), status="open",
            completion_code=code, prolific_study_id=prolific_study_id,
            practice_trials=len(practice_ids),
            exclusion_rules=json.dumps(rules) if rules is not None else None,
            replace_excluded=bool(exclusion_rules and exclusion_rules.replace_excluded)))
    return {"panels": len(design["panels"]), "practice": len(practice_ids),
            "catch": len(catch_panels),
            "exclusion_rules": len(exclusion_rules.rules) if exclusion_rules else 0,
            "lists": len(design["lists"]),
            "participants": sum(int(item["target"]) for item in design["lists"]),
            "completion_code": code, "images": len(set(files.values()))}


def _random_code() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def current_study(conn: Connection):
    """The loaded study's row, or None: every column but ``design`` (the whole study.json,
    hundreds of kilobytes at the paper's size, which no participant request needs)."""
    return conn.execute(_CURRENT_STUDY).first()


# Built once (nearly every request runs it).
_CURRENT_STUDY = select(*[c for c in study_table.c if c.name != "design"]).where(
    study_table.c.id == 1)


def init_app(app: Flask) -> None:
    app.cli.add_command(load_study_command)


@click.command("load-study")
@with_appcontext
@click.argument("design", type=click.Path(exists=True, dir_okay=False))
@click.option("--completion-code", help="Prolific's completion code for this study "
              "(default: a new random code, printed).")
@click.option("--prolific-study-id", help="Accept only this Prolific STUDY_ID in entry links.")
@click.option("--discard-data", is_flag=True,
              help="Replace a loaded study even though it has participants (deletes them).")
@click.option("--exclusion-rules", "rules_path", type=click.Path(exists=True, dir_okay=False),
              help="Pre-registered exclusion rules (TOML, docs/exclusion.md), in place of "
                   "those in the study file (default: the study file's, if any).")
def load_study_command(design: str, completion_code: str | None,
                       prolific_study_id: str | None, discard_data: bool,
                       rules_path: str | None) -> None:
    """Load a study design (study.json from python -m experiment.design) into the store."""
    def bar(items):
        with click.progressbar(items, label="copying panel images", file=sys.stderr) as it:
            yield from it

    try:
        rules = read_rules(rules_path) if rules_path else None
        counts = install_study(get_store(), design, current_app.config["IMAGE_DIR"],
                               completion_code, prolific_study_id, discard_data, progress=bar,
                               exclusion_rules=rules)
    except (StudyError, RuleError) as exc:
        raise click.ClickException(str(exc)) from exc
    catch = f", {counts['catch']} catch trials" if counts["catch"] else ""
    if counts["exclusion_rules"]:
        catch += f", {counts['exclusion_rules']} exclusion rules"
    click.echo(f"loaded {design}: {counts['panels']} panels in {counts['lists']} lists{catch}, "
               f"{counts['practice']} practice panels, {counts['participants']} participants "
               f"wanted; {counts['images']} images in {current_app.config['IMAGE_DIR']}")
    click.echo(f"completion code: {counts['completion_code']} (enter it in Prolific's study "
               "settings)")
