"""Temporary worlds for the server's tests: a small study design on disk, a store
(SQLite file or a fresh PostgreSQL schema), an app with the design loaded, a live server
on a loopback port, and a participant helper that walks the flow through the HTTP
interface."""

from __future__ import annotations

import hashlib
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from sqlalchemy import func, select
from system_deps import PG_URL, missing, require

from experiment.design import build_design
from server import create_app
from server.store import Store, participants
from server.study import install_study
from server.study_file import write_study

#: The server tests' design: 18 panels, 6 per list over 3 lists (and 6 practice panels).
LAYERS = {"conv5": 3, "fc6": 9, "fc8": 6}


def make_design(root: Path, layers: dict[str, int], n_lists: int, participants: int,
                practice: int = 6, seed: int = 0) -> Path:
    """Tiny distinct PNG panels, their manifests and a study.json under ``root``."""
    rng = np.random.default_rng(seed)
    (root / "panels").mkdir(parents=True, exist_ok=True)
    rows = []
    for layer, n in layers.items():
        for unit in range(n):
            pid = f"{layer}_{unit:04d}"
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "panels" / f"{pid}.png")
            rows.append({"panel_id": pid, "layer": layer, "unit": unit,
                         "path": str(root / "panels" / f"{pid}.png")})
    prac = []
    for i in range(practice):
        pid = f"practice_{i}"
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "panels" / f"{pid}.png")
        prac.append({"panel_id": pid, "path": str(root / "panels" / f"{pid}.png"),
                     "label": f"class {i}"})
    design = build_design(pd.DataFrame(rows), pd.DataFrame(prac), n_lists=n_lists,
                          participants=participants, seed=seed, practice_trials=practice)
    return write_study(design, root / "study.json")


def study_app(db_url: str, instance: Path, design: Path | None, completion_code: str,
              **config: Any):
    """An app on the store ``db_url`` with ``design`` loaded (None: no study)."""
    app = create_app({"SECRET_KEY": "test", "DATABASE_URL": db_url, **config},
                     instance_path=instance)
    if design is not None:
        with app.app_context():
            install_study(app.extensions["store"], design, app.config["IMAGE_DIR"],
                        completion_code=completion_code)
    return app


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` served by a threaded werkzeug server on a free loopback port; yields its base
    URL, then stops the server and closes the store's connections."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        app.extensions["store"].dispose()


def postgres_available() -> str | None:
    """None if the test PostgreSQL ($TEST_DATABASE_URL) answers, else the reason it does not."""
    return missing("postgresql")


@contextmanager
def store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store: a SQLite file, or a new schema in the test PostgreSQL."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
        return
    require("postgresql")   # skips without it; fails in strict mode (CI=true)
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def new_pid() -> str:
    return secrets.token_hex(12)


class Participant:
    """One participant's browser: walks the flow through the HTTP interface."""

    def __init__(self, client, pid: str | None = None):
        self.client = client
        self.pid = pid or new_pid()
        self.study_id = "a" * 24
        # One Prolific submission per participant: every browser of this PID enters with
        # the same SESSION_ID (the server refuses a known PID with another one).
        self.session_id = hashlib.sha256(f"session {self.pid}".encode()).hexdigest()[:24]

    def enter(self, follow: bool = False, **params: str):
        query = {"PROLIFIC_PID": self.pid, "STUDY_ID": self.study_id,
                 "SESSION_ID": self.session_id, **params}
        return self.client.get("/", query_string=query, follow_redirects=follow)

    def csrf(self) -> str:
        with self.client.session_transaction() as sess:
            if "csrf" not in sess:
                sess["csrf"] = secrets.token_urlsafe(16)
            return sess["csrf"]

    def post(self, path: str, **form: str):
        return self.client.post(path, data={"csrf_token": self.csrf(), **form})

    def consent(self, choice: str = "agree"):
        return self.post("/consent", choice=choice)

    def instructions(self):
        return self.post("/instructions")

    def device(self, width: int = 1280, height: int = 800, **extra: str):
        form = {"width": str(width), "height": str(height), "screen_width": "1920",
                "screen_height": "1080", "touch_only": "0", "mobile": "0", **extra}
        return self.post("/device", **form)

    def ready(self):
        """Enter, consent, read the instructions, pass the device check."""
        self.enter()
        for step in (self.consent, self.instructions, self.device):
            response = step()
            assert response.status_code == 302, (step.__name__, response.status_code)
        return self.state()

    def state(self) -> dict[str, Any]:
        response = self.client.get("/api/state")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def answer(self, index: int, yes: bool = False, text: str | None = None,
               panel_id: str | None = None, **extra: Any):
        if panel_id is None:
            panel_id = self.state()["trials"][index]["panel_id"]
        body = {"trial_index": index, "panel_id": panel_id, "answer_yes": yes,
                "object_text": text, "rt_answer_ms": 900 + index,
                "rt_text_ms": 1500 if yes else None,
                "shown_at": 1.7e12, "client_answered_at": 1.7e12 + 2400, **extra}
        return self.client.post("/api/responses", json=body,
                                 headers={"X-CSRF-Token": self.csrf()})

    def answer_all(self, start: int = 0) -> dict[str, Any]:
        state = self.state()
        data = {}
        for trial in state["trials"][start:]:
            yes = trial["index"] % 2 == 0
            response = self.answer(trial["index"], yes, "a dog" if yes else None,
                                   trial["panel_id"])
            data = response.get_json()
            assert response.status_code in (200, 201), data
            assert data["duplicate"] is False and data["stored"] == (response.status_code == 201)
        return data


def png_rater():
    """A rater factory for ``experiment.simulate --rater server_world:png_rater``: yes "dog"
    when it was handed the panel's PNG bytes (so --rater implies fetching images)."""

    def rate(panel, image, rng):
        return (image is not None and image.startswith(b"\x89PNG")), "dog"

    return rate


# -- reading a test's store ------------------------------------------------------------------


def store_of(app) -> Store:
    return app.extensions["store"]


def count(app, table, *where) -> int:
    """Rows of ``table`` (matching every ``where`` clause) in ``app``'s store."""
    with store_of(app).read() as conn:
        query = select(func.count()).select_from(table)
        for clause in where:
            query = query.where(clause)
        return conn.execute(query).scalar()


def participant_row(app, pid: str):
    with store_of(app).read() as conn:
        return conn.execute(select(participants)
                            .where(participants.c.prolific_pid == pid)).one()
