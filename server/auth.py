"""Experimenter accounts: hashed passwords, rate-limited logins, sessions kept in the store.

- Accounts are made on the command line: ``python -m server create-admin NAME`` (the
  password is asked twice, or read from standard input with ``--password-stdin``);
  ``--replace`` sets a new password for an existing account and ends all its sessions.
- Passwords are stored as werkzeug hashes (scrypt), never in clear.
- Logins are limited, in the store (so across gunicorn workers), per user name and per
  address, within ``LOGIN_WINDOW_MINUTES``:

  * a user name with ``LOGIN_MAX_FAILURES`` failures (from any addresses) is locked: every
    further attempt for it is refused (429, with Retry-After), *even with the right
    password*, until the oldest failure leaves the window. Other accounts are not
    affected;
  * an address with ``LOGIN_MAX_FAILURES_PER_ADDRESS`` failures (any user names; set
    higher, for a shared lab address) is refused for every user name likewise.

  An attempt is recorded (as a failure) and counted in one write transaction, serialised
  across workers, *before* its password is checked; it becomes a success only once the
  password matched. So concurrent attempts see each other, and no more than the limit are
  ever checked. A refused attempt is not recorded: it neither checks a password nor
  extends the lockout.
- Sessions are rows of ``admin_sessions``: the signed cookie carries only a random id
  (``session["admin"]``), the store only its SHA-256. A session ends on logout, when the
  account gets a new password, ``ADMIN_SESSION_MINUTES`` after login, or after
  ``ADMIN_IDLE_MINUTES`` without a request (checked against the store on every request):
  a copied cookie is worth nothing once its row is gone.
"""

from __future__ import annotations

import functools
import hashlib
import math
import secrets
import sys

import click
from flask import current_app, g, session
from flask.cli import with_appcontext
from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection
from werkzeug.security import check_password_hash, generate_password_hash

from .store import Store, admin_sessions, admins, get_store, login_attempts, now

__all__ = ["AuthError", "LoginRefused", "create_admin", "check_login", "failures",
           "current_admin", "log_in", "log_out", "end_sessions", "create_admin_command",
           "MIN_PASSWORD"]

MIN_PASSWORD = 10
USERNAME_MAX = 64
# The idle clock is written at most this often per session (not on every request).
SEEN_EVERY_SECONDS = 30
# Serialises the count-then-record of login attempts on PostgreSQL (SQLite's write
# transactions are serial already); 727001 is the migration's lock.
_LOGIN_LOCK = 727002


class AuthError(ValueError):
    """A login or account that cannot be taken (the message is safe to show)."""


class LoginRefused(AuthError):
    """Too many failures: refused without checking the password."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


def create_admin(store: Store, username: str, password: str, replace: bool = False) -> None:
    """Create an account (or set a new password with ``replace``, which ends every session
    of the account)."""
    username = username.strip()
    if not username or len(username) > USERNAME_MAX or not username.isprintable():
        raise AuthError(f"user name: 1 to {USERNAME_MAX} printable characters")
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"the password needs at least {MIN_PASSWORD} characters")
    hashed = generate_password_hash(password)
    with store.write() as conn:
        existing = conn.execute(select(admins.c.id).where(admins.c.username == username)).first()
        if existing is not None and not replace:
            raise AuthError(f"an account {username!r} exists already (--replace sets a new "
                            "password)")
        if existing is not None:
            conn.execute(admins.update().where(admins.c.id == existing.id)
                         .values(password_hash=hashed))
            end_sessions(conn, existing.id)
        else:
            conn.execute(admins.insert().values(username=username, password_hash=hashed,
                                                created_at=now()))


# --- logins -------------------------------------------------------------------------------

def _recorded_name(username: str) -> tuple[str, bool]:
    """The user name as recorded (stripped, cut to the column, unprintable characters such
    as NUL replaced: PostgreSQL takes no NUL in text), and whether it could name an account
    at all (account names are printable)."""
    name = username.strip()[:USERNAME_MAX]
    if name.isprintable():
        return name, True
    return "".join(c if c.isprintable() else "?" for c in name), False


def failures(store: Store, username: str, ip: str, since: float) -> int:
    """Failed attempts for this user name or from this address since ``since``."""
    with store.read() as conn:
        return conn.execute(select(func.count()).select_from(login_attempts).where(and_(
            login_attempts.c.success.is_(False), login_attempts.c.at >= since,
            or_(login_attempts.c.username == username, login_attempts.c.ip == ip)))).scalar()


def _failed_since(conn: Connection, column, value: str, since: float, limit: int,
                  window_seconds: float, at: float) -> float | None:
    """None if fewer than ``limit`` failures for ``column == value`` (this attempt's
    included) are in the window; else the seconds until one fewer would be."""
    where = and_(login_attempts.c.success.is_(False), login_attempts.c.at >= since,
                 column == value)
    n = conn.execute(select(func.count()).select_from(login_attempts).where(where)).scalar()
    if n <= limit:
        return None
    # the failure whose leaving the window brings the count (with a new attempt) to limit
    oldest = conn.execute(select(login_attempts.c.at).where(where)
                          .order_by(login_attempts.c.at).offset(n - 1 - limit)
                          .limit(1)).scalar()
    return oldest + window_seconds - at


def check_login(store: Store, username: str, password: str, ip: str, max_failures: int,
                window_seconds: float, at: float | None = None,
                max_address_failures: int | None = None) -> int:
    """The account id for a right user name and password; AuthError otherwise
    (LoginRefused, before any password check, past a limit). Every checked attempt is
    recorded; see the module's docstring for the limits."""
    at = now() if at is None else at
    name, could_exist = _recorded_name(username)
    ip = _recorded_name(ip)[0][:64]
    since = at - window_seconds
    with store.write() as conn:                  # count and record: one serial transaction
        if store.dialect == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOGIN_LOCK})")
        attempt = conn.execute(login_attempts.insert().values(
            username=name, ip=ip, at=at, success=False)).inserted_primary_key[0]
        waits = [_failed_since(conn, login_attempts.c.username, name, since, max_failures,
                               window_seconds, at)]
        if max_address_failures is not None:
            waits.append(_failed_since(conn, login_attempts.c.ip, ip, since,
                                       max_address_failures, window_seconds, at))
        waits = [w for w in waits if w is not None]
        if waits:                                # raising rolls the attempt back
            wait = max(waits)
            raise LoginRefused(f"too many failed logins: try again in "
                               f"{max(1, math.ceil(wait / 60))} minutes", wait)
        account = conn.execute(select(admins).where(admins.c.username == name)).first() \
            if could_exist else None
    # Hash even for an unknown user, so timing does not tell which names exist.
    stored = account.password_hash if account is not None else _DUMMY_HASH()
    ok = check_password_hash(stored, password) and account is not None
    if not ok:
        raise AuthError("wrong user name or password")
    with store.write() as conn:
        conn.execute(login_attempts.update().where(login_attempts.c.id == attempt)
                     .values(success=True))
        conn.execute(admins.update().where(admins.c.id == account.id)
                     .values(last_login_at=at))
    return account.id


@functools.cache
def _DUMMY_HASH() -> str:  # noqa: N802 - a constant, computed once
    return generate_password_hash("not a password")


# --- sessions -----------------------------------------------------------------------------

def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


def _limits() -> tuple[float, float]:
    cfg = current_app.config
    return float(cfg["ADMIN_SESSION_MINUTES"]) * 60, float(cfg["ADMIN_IDLE_MINUTES"]) * 60


def end_sessions(conn: Connection, admin_id: int) -> None:
    """End every session of an account (a new password, say)."""
    conn.execute(admin_sessions.delete().where(admin_sessions.c.admin_id == admin_id))


def _end_expired(conn: Connection, at: float) -> None:
    lifetime, idle = _limits()
    conn.execute(admin_sessions.delete().where(or_(
        admin_sessions.c.created_at < at - lifetime,
        admin_sessions.c.last_seen_at < at - idle)))


def log_in(account_id: int, ip: str | None = None) -> None:
    """A new session for the account in this browser (a previous one here ends: no session
    id chosen before login survives it); expired sessions are cleared from the store."""
    previous = session.get("admin")
    for key in ("admin", "csrf"):
        session.pop(key, None)
    session_id = secrets.token_urlsafe(32)
    at = now()
    with get_store().write() as conn:
        if isinstance(previous, str):
            conn.execute(admin_sessions.delete()
                         .where(admin_sessions.c.id_hash == _digest(previous)))
        _end_expired(conn, at)
        conn.execute(admin_sessions.insert().values(
            id_hash=_digest(session_id), admin_id=account_id, created_at=at,
            last_seen_at=at, ip=(ip or "")[:64] or None))
    session["admin"] = session_id
    session.permanent = True
    g.pop("_admin", None)


def log_out() -> None:
    """End this browser's session, in the store too."""
    session_id = session.pop("admin", None)
    session.pop("csrf", None)
    g.pop("_admin", None)
    if isinstance(session_id, str):
        with get_store().write() as conn:
            conn.execute(admin_sessions.delete()
                         .where(admin_sessions.c.id_hash == _digest(session_id)))


def current_admin() -> dict | None:
    """The logged-in experimenter (``id``, ``name``, ``since``, ``seen``), or None. The
    session is looked up in the store once a request; an expired one is ended here."""
    if "_admin" in g:
        return g._admin
    g._admin = info = _session_admin()
    return info


def _session_admin() -> dict | None:
    session_id = session.get("admin")
    if session_id is None:
        return None
    if not isinstance(session_id, str) or not 20 <= len(session_id) <= 100:
        session.pop("admin", None)              # an old-style cookie, or junk
        return None
    key = _digest(session_id)
    at = now()
    lifetime, idle = _limits()
    store = get_store()
    with store.read() as conn:
        row = conn.execute(select(admin_sessions, admins.c.username)
                           .join(admins, admins.c.id == admin_sessions.c.admin_id)
                           .where(admin_sessions.c.id_hash == key)).first()
    if row is None:
        session.pop("admin", None)
        return None
    if at - row.created_at > lifetime or at - row.last_seen_at > idle:
        with store.write() as conn:
            conn.execute(admin_sessions.delete().where(admin_sessions.c.id_hash == key))
        session.pop("admin", None)
        return None
    seen = row.last_seen_at
    if at - seen > SEEN_EVERY_SECONDS:          # the idle clock, without a write a request
        with store.write() as conn:
            conn.execute(admin_sessions.update().where(admin_sessions.c.id_hash == key)
                         .values(last_seen_at=at))
        seen = at
    return {"id": row.admin_id, "name": row.username, "since": row.created_at, "seen": seen}


@click.command("create-admin")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--replace", is_flag=True,
              help="Set a new password for an existing account (ends its sessions).")
@with_appcontext
def create_admin_command(username: str, password_stdin: bool, replace: bool) -> None:
    """Create an experimenter account for the dashboard."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        create_admin(get_store(), username, password, replace)
    except AuthError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"account {username!r} {'updated' if replace else 'created'}")
