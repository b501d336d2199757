"""Response headers and files: every participant and admin page is ``no-store`` (the
completion page shows the code, the dashboard Prolific ids), panel images stay cacheable,
``HSTS_SECONDS`` adds Strict-Transport-Security to every response, and the SQLite store
(with its WAL and shared-memory files) is created readable by its owner only."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from server_world import Participant
from sqlalchemy import select

from server import create_app
from server.store import Store, participants

PASSWORD = "correct horse battery"


def admin_client(app):
    result = app.test_cli_runner().invoke(args=["create-admin", "alice", "--password-stdin"],
                                          input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    client = app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/admin/login", data={"username": "alice", "password": PASSWORD,
                                             "csrf_token": token}).status_code == 302
    return client


def every_page(app) -> dict[str, object]:
    """(label -> response) for every page a participant or an experimenter can see."""
    seen = {}
    stranger = app.test_client()
    seen["welcome"] = stranger.get("/")
    seen["bad link"] = stranger.get("/?PROLIFIC_PID=x")
    seen["not found"] = stranger.get("/nowhere")
    seen["api refusal"] = stranger.get("/api/state")
    seen["health"] = stranger.get("/api/health")
    person = Participant(app.test_client())
    seen["entry"] = person.enter()
    seen["study"] = person.client.get("/study")
    seen["consent"] = person.client.get("/consent")
    seen["consent post"] = person.consent()
    seen["instructions"] = person.client.get("/instructions")
    person.instructions()
    seen["device"] = person.client.get("/device")
    seen["device refused"] = person.device(width=800)
    person.device()
    seen["trials"] = person.client.get("/trials")
    seen["state"] = person.client.get("/api/state")
    seen["answer"] = person.answer(0, True, "a dog")
    person.answer_all(1)
    seen["debrief"] = person.client.get("/debrief")
    person.post("/debrief")
    seen["complete"] = person.client.get("/complete")
    declines = Participant(app.test_client())
    declines.enter()
    seen["declined post"] = declines.consent("decline")
    seen["declined"] = declines.client.get("/declined")
    preview = app.test_client()
    seen["preview"] = preview.get("/preview")
    seen["preview consent"] = preview.get("/consent")
    admin = admin_client(app)
    seen["login"] = app.test_client().get("/admin/login")
    seen["dashboard"] = admin.get("/admin/")
    seen["design"] = admin.get("/admin/design.json")
    seen["export"] = admin.get("/admin/export/responses.csv")
    return seen


def test_every_page_is_no_store(app):
    pages = every_page(app)
    assert b"DONE123" in pages["complete"].data                  # the code is on it
    for label, response in pages.items():
        assert response.headers.get("Cache-Control") == "no-store", \
            (label, response.status_code, response.headers.get("Cache-Control"))
        assert "Strict-Transport-Security" not in response.headers, label   # off by default


def test_panel_images_stay_cacheable(app):
    person = Participant(app.test_client())
    image = person.ready()["trials"][0]["image"]
    reply = person.client.get(image)
    assert reply.status_code == 200
    assert reply.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    static = person.client.get("/static/trials.js")
    assert static.status_code == 200 and "no-store" not in static.headers["Cache-Control"]


def test_hsts_on_every_response_when_set(make_app):
    app = make_app(HSTS_SECONDS=31536000)
    pages = every_page(app)
    person = Participant(app.test_client())
    pages["image"] = person.client.get(person.ready()["trials"][0]["image"])
    pages["static"] = person.client.get("/static/study.css")
    for label, response in pages.items():
        assert response.headers.get("Strict-Transport-Security") == "max-age=31536000", label


def test_hsts_setting_from_the_environment_and_its_checks(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASK_HSTS_SECONDS", "600")
    app = create_app({"SECRET_KEY": "x", "DATABASE_URL": db_url}, instance_path=tmp_path / "i")
    assert app.test_client().get("/").headers["Strict-Transport-Security"] == "max-age=600"
    app.extensions["store"].dispose()
    monkeypatch.delenv("FLASK_HSTS_SECONDS")
    for bad in (-1, "a year", 1.5, True):
        with pytest.raises(ValueError, match="HSTS_SECONDS"):
            create_app({"SECRET_KEY": "x", "DATABASE_URL": db_url, "HSTS_SECONDS": bad},
                       instance_path=tmp_path / "i")


# --- the SQLite file ------------------------------------------------------------------------

def modes(db: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode)
            for p in db.parent.iterdir() if p.name.startswith(db.name)}


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o000])
def test_the_sqlite_store_and_its_wal_are_created_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        app = create_app({"SECRET_KEY": "x"}, instance_path=tmp_path / "instance")
        db = tmp_path / "instance" / "study.db"
        store = app.extensions["store"]
        with store.write() as conn:         # the WAL and its index exist while connected
            conn.execute(select(participants.c.id)).all()
        found = modes(db)
        assert {"study.db", "study.db-wal", "study.db-shm"} <= set(found), found
        assert set(found.values()) == {0o600}, {k: oct(v) for k, v in found.items()}
        assert os.umask(umask) == umask         # the process's umask is left as it was
        store.dispose()
    finally:
        os.umask(old)


def test_an_existing_sqlite_file_is_kept_and_a_relative_path_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store("sqlite:///relative.db")
    store.migrate()
    store.dispose()
    assert stat.S_IMODE((tmp_path / "relative.db").stat().st_mode) == 0o600
    again = Store("sqlite:///relative.db")
    assert again.migrate() > 0                   # the same file, schema and all
    again.dispose()
