"""The experiment server: a Flask application factory (docs/architecture.md).

``create_app(test_config=None)`` builds the app with layered configuration, lowest first:

1. the defaults below;
2. ``config.py`` in the instance folder (``instance/`` beside the checkout, or
   ``FLASK_INSTANCE_PATH``), if present;
3. environment variables ``FLASK_<NAME>`` (values parsed as JSON where they parse), and
   ``DATABASE_URL`` for the store;
4. ``test_config``, for tests.

In production: ``gunicorn 'server:create_app()'``. For development:
``python -m server load-study study.json`` then ``python -m server run``.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from jinja2 import ChoiceLoader, FileSystemLoader
from werkzeug.middleware.proxy_fix import ProxyFix

__all__ = ["create_app", "DEFAULTS"]

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    # The store: None means a SQLite file ``study.db`` in the instance folder.
    "DATABASE_URL": None,
    # PostgreSQL connections kept open per process: at least gunicorn's --threads.
    "DB_POOL_SIZE": 10,
    # Where the study's panel images are kept (content-addressed); default instance/images.
    "IMAGE_DIR": None,
    # A reverse proxy's internal location serving IMAGE_DIR (e.g. "/protected-images/"):
    # image requests are answered with X-Accel-Redirect and the proxy sends the file
    # (README, "Production front"); None: the app sends it.
    "IMAGE_ACCEL_REDIRECT": None,
    # A participant's hold on a list slot: Prolific's maximum time for the study, which
    # Prolific derives from the estimated completion time (see assignment.lease_seconds);
    # LEASE_MINUTES, when set, overrides it.
    "ESTIMATED_MINUTES": 30,
    "LEASE_MINUTES": None,
    # Prolific passes these in the study URL; each must match this pattern.
    "PROLIFIC_ID_PATTERN": r"[0-9a-fA-F]{24}",
    "PROLIFIC_COMPLETE_URL": "https://app.prolific.com/submissions/complete?cc={code}",
    # Seconds the completion page waits before redirecting to Prolific.
    "COMPLETE_REDIRECT_SECONDS": 5,
    # The free-text answer: trimmed, at most this many characters.
    "OBJECT_TEXT_MAX": 200,
    # The device check: the smallest browser window that shows a 10x10 panel legibly
    # (the panel at 600 px or more, the question beside it).
    "MIN_WINDOW_WIDTH": 1000,
    "MIN_WINDOW_HEIGHT": 650,
    # No request body is larger than this (a trial answer is a few hundred bytes).
    "MAX_CONTENT_LENGTH": 64 * 1024,
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_NAME": "study_session",
    # The cookie is signed and sent when the session changes (entry, login, a new CSRF
    # token), not again on every response: it lasts PERMANENT_SESSION_LIFETIME (31 days)
    # from then, far beyond a study's lease, and an experimenter's session ends by its own
    # server-side limits (ADMIN_SESSION_MINUTES, ADMIN_IDLE_MINUTES). Re-signing it on
    # every request cost about a tenth of a request's CPU.
    "SESSION_REFRESH_EACH_REQUEST": False,
    # Strict-Transport-Security: max-age=N on every response when N > 0 (serve over HTTPS
    # only, then: browsers refuse plain HTTP to the host for N seconds); 0 leaves it off.
    "HSTS_SECONDS": 0,
    # A stable secret shared by every worker: generated once into the instance folder
    # unless given (``FLASK_SECRET_KEY``).
    "SECRET_KEY": None,
    # The experimenter side (server/auth.py): sessions are kept in the store and end this
    # long after login or after this long idle (and on logout or a new password);
    # logins for a user name are refused (429) after LOGIN_MAX_FAILURES failures in
    # LOGIN_WINDOW_MINUTES, whatever the address, even with the right password; from an
    # address, after LOGIN_MAX_FAILURES_PER_ADDRESS failures (any user names).
    "ADMIN_SESSION_MINUTES": 8 * 60,
    "ADMIN_IDLE_MINUTES": 60,
    "LOGIN_MAX_FAILURES": 5,
    "LOGIN_MAX_FAILURES_PER_ADDRESS": 20,
    "LOGIN_WINDOW_MINUTES": 15,
    # The dashboard highlights active sessions idle this long (or past their lease).
    "STALE_MINUTES": 10,
    # The dashboard's charts and counts refresh this often (milliseconds), without a reload.
    "DASHBOARD_REFRESH_MS": 5000,
    # Prolific's webhook secret (workspace hooks/secrets); unset, the webhook is off.
    "PROLIFIC_WEBHOOK_SECRET": None,
    # A delivery whose X-Prolific-Request-Timestamp is further than this from the server's
    # clock (either way) is refused (401): no stale, replayed or future-dated events.
    "PROLIFIC_WEBHOOK_WINDOW_SECONDS": 300,
    # Reverse proxies in front of the app whose X-Forwarded-* headers are trusted (so that
    # login limits see the real client address); 0 when serving directly.
    "TRUSTED_PROXIES": 0,
    # Entry (docs/study-design.md, "Entry"): a new arrival holds a place this long, each
    # step before the trials (consent, instructions, device check) restarting the hold,
    # until their first stored answer (practice included) holds it for the whole lease;
    # None holds the lease from entry. An address (an IPv6 /64) takes at most
    # ENTRY_MAX_PER_ADDRESS new places in ENTRY_WINDOW_MINUTES (a lab of 30 behind one
    # NAT gets in); returning participants are never counted; None turns the limit off.
    "ENTRY_HOLD_MINUTES": 5,
    "ENTRY_MAX_PER_ADDRESS": 40,
    "ENTRY_WINDOW_MINUTES": 60,
}


def create_app(test_config: dict[str, Any] | None = None,
               instance_path: str | os.PathLike | None = None) -> Flask:
    """Build the application: configuration, store (schema created or migrated), blueprints.

    ``instance_path``: the instance folder (default ``FLASK_INSTANCE_PATH``, else Flask's
    ``instance/`` beside the package)."""
    instance = instance_path or os.environ.get("FLASK_INSTANCE_PATH")
    instance = str(instance) if instance else None
    app = Flask(__name__, instance_path=instance, instance_relative_config=True)
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env()
    if os.environ.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = os.environ["DATABASE_URL"]
    if test_config:
        app.config.from_mapping(test_config)
    app.config["HSTS_SECONDS"] = _hsts_seconds(app.config.get("HSTS_SECONDS"))

    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = f"sqlite:///{Path(app.instance_path) / 'study.db'}"
    if not app.config["IMAGE_DIR"]:
        app.config["IMAGE_DIR"] = str(Path(app.instance_path) / "images")
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _instance_secret(Path(app.instance_path) / "secret_key")

    # Experimenters replace any page (consent.html with their approved wording, say) by a
    # file of the same name in instance/templates.
    app.jinja_loader = ChoiceLoader([FileSystemLoader(Path(app.instance_path) / "templates"),
                                     app.jinja_loader])

    from . import admin, api, auth, export, participant, prolific_files, serve, store, study

    store.init_app(app)
    study.init_app(app)
    export.init_app(app)
    prolific_files.init_app(app)   # its routes join admin.bp before it is registered
    app.cli.add_command(auth.create_admin_command)
    app.cli.add_command(serve.serve_command)
    app.register_blueprint(participant.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    participant.register_error_pages(app)
    app.add_template_filter(_isotime, "isotime")
    proxies = int(app.config["TRUSTED_PROXIES"])
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
    app.after_request(_security_headers)
    return app


# Every page comes from this site only: no inline scripts, no framing, no referrer (study
# URLs carry Prolific ids).
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def _security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    # No page is kept by the browser or a proxy (the completion page shows the code, the
    # dashboard Prolific ids); a response that may be cached says so itself (panel
    # images: immutable; static files: revalidated).
    response.headers.setdefault("Cache-Control", "no-store")
    hsts = current_app.config["HSTS_SECONDS"]
    if hsts:
        response.headers.setdefault("Strict-Transport-Security", f"max-age={hsts}")
    return response


def _hsts_seconds(value: Any) -> int:
    """HSTS_SECONDS as a whole number of seconds, 0 or more (None: 0); ValueError else."""
    if value is None:
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"HSTS_SECONDS must be a whole number of seconds, 0 or more "
                         f"(0: no Strict-Transport-Security), not {value!r}")
    return value


def _isotime(seconds: float | None, short: bool = False) -> str:
    """Epoch seconds as UTC: ``2026-11-26T01:02:03Z`` (``short``: ``11-26 01:02``)."""
    if seconds is None:
        return ""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%m-%d %H:%M") if short else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _instance_secret(path: Path) -> str:
    """The instance's secret key, created once (atomically: workers may race) and kept 0600."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    try:
        os.link(tmp, path)  # atomic and exclusive: the first worker's key wins
        log.info("created a secret key in %s", path)
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink()
    return key
