"""CSRF protection: a random token per browser session, required on every state change.

Forms carry it in a hidden ``csrf_token`` field; the JSON API in an ``X-CSRF-Token`` header.
"""

from __future__ import annotations

import hmac
import secrets

from flask import abort, request, session

__all__ = ["csrf_token", "check_csrf"]


def csrf_token() -> str:
    """This browser session's token (created on first use)."""
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(24)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """Abort with 400 unless the request carries this session's token."""
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    expected = session.get("csrf")
    if not expected or not isinstance(sent, str) or \
            not hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode()):
        abort(400, description="The form has expired or did not come from this site: "
                               "reload the page and try again.")
