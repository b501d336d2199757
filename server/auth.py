"""Experimenter accounts: hashed passwords, rate-limited logins, expiring sessions.

- Accounts are made on the command line: ``python -m server create-admin NAME`` (the
  password is asked twice, or read from standard input with ``--password-stdin``).
- Passwords are stored as werkzeug hashes (scrypt), never in clear.
- Logins are limited: after ``LOGIN_MAX_FAILURES`` failures for a user name or from an
  address within ``LOGIN_WINDOW_MINUTES``, further attempts are refused (429) until the
  window has passed. Attempts are kept in the store, so the limit holds across workers.
- An experimenter's session ends ``ADMIN_SESSION_MINUTES`` after login, or after
  ``ADMIN_IDLE_MINUTES`` without a request.
"""

from __future__ import annotations

import functools
import sys

import click
from flask import current_app, session
from flask.cli import with_appcontext
from sqlalchemy import and_, func, or_, select
from werkzeug.security import check_password_hash, generate_password_hash

from .store import Store, admins, get_store, login_attempts, now

__all__ = ["AuthError", "create_admin", "check_login", "failures", "current_admin",
           "log_in", "log_out", "create_admin_command", "MIN_PASSWORD"]

MIN_PASSWORD = 10
USERNAME_MAX = 64


class AuthError(ValueError):
    """A login or account that cannot be taken (the message is safe to show)."""


def create_admin(store: Store, username: str, password: str, replace: bool = False) -> None:
    """Create an account (or set a new password with ``replace``)."""
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
        else:
            conn.execute(admins.insert().values(username=username, password_hash=hashed,
                                                created_at=now()))


def failures(store: Store, username: str, ip: str, since: float) -> int:
    """Failed attempts for this user name or from this address since ``since``."""
    with store.read() as conn:
        return conn.execute(select(func.count()).select_from(login_attempts).where(and_(
            login_attempts.c.success.is_(False), login_attempts.c.at >= since,
            or_(login_attempts.c.username == username, login_attempts.c.ip == ip)))).scalar()


def check_login(store: Store, username: str, password: str, ip: str, max_failures: int,
                window_seconds: float, at: float | None = None) -> int:
    """The account id for a right user name and password; AuthError otherwise. Every
    attempt is recorded; too many failures refuse further attempts for the window."""
    at = now() if at is None else at
    username = username.strip()[:USERNAME_MAX]
    ip = ip[:64]
    if failures(store, username, ip, at - window_seconds) >= max_failures:
        raise AuthError(f"too many failed logins: wait {window_seconds / 60:g} minutes")
    with store.read() as conn:
        account = conn.execute(select(admins).where(admins.c.username == username)).first()
    # Hash even for an unknown user, so timing does not tell which names exist.
    stored = account.password_hash if account is not None else _DUMMY_HASH()
    ok = check_password_hash(stored, password) and account is not None
    with store.write() as conn:
        conn.execute(login_attempts.insert().values(username=username, ip=ip, at=at,
                                                    success=ok))
        if ok:
            conn.execute(admins.update().where(admins.c.id == account.id)
                         .values(last_login_at=at))
    if not ok:
        raise AuthError("wrong user name or password")
    return account.id


@functools.cache
def _DUMMY_HASH() -> str:  # noqa: N802 - a constant, computed once
    return generate_password_hash("not a password")


def log_in(account_id: int, username: str) -> None:
    for key in ("admin", "csrf"):
        session.pop(key, None)
    at = now()
    session["admin"] = {"id": account_id, "name": username, "since": at, "seen": at}
    session.permanent = True


def log_out() -> None:
    session.pop("admin", None)
    session.pop("csrf", None)


def current_admin() -> dict | None:
    """The logged-in experimenter, or None (an expired session is ended here)."""
    info = session.get("admin")
    if not isinstance(info, dict):
        return None
    cfg = current_app.config
    at = now()
    if at - info.get("since", 0) > cfg["ADMIN_SESSION_MINUTES"] * 60 or \
            at - info.get("seen", 0) > cfg["ADMIN_IDLE_MINUTES"] * 60:
        log_out()
        return None
    if at - info["seen"] > 30:          # refresh the idle clock without a cookie per request
        session["admin"] = {**info, "seen": at}
    return info


@click.command("create-admin")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--replace", is_flag=True, help="Set a new password for an existing account.")
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
