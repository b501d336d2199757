"""The server's capacity settings (README, "Production front"): images left to a reverse
proxy with X-Accel-Redirect, and a session cookie signed only when the session changes."""

from __future__ import annotations

from server_world import Participant


def test_images_can_be_left_to_the_front_proxy_with_x_accel_redirect(make_app):
    app = make_app(IMAGE_ACCEL_REDIRECT="/protected-images/")
    p = Participant(app.test_client())
    url = p.ready()["trials"][0]["image"]
    name = url.rsplit("/", 1)[1]
    response = p.client.get(url)
    assert response.status_code == 200 and response.data == b""
    assert response.headers["X-Accel-Redirect"] == f"/protected-images/{name}"
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    # the name is still checked by the app: nothing else reaches the proxy's location
    for bad in ("..%2Fsecret_key", "0" * 64 + ".txt", "0" * 63 + ".png", "A" * 64 + ".png"):
        refused = p.client.get(f"/img/{bad}")
        assert refused.status_code == 404 and "X-Accel-Redirect" not in refused.headers


def test_the_session_cookie_is_sent_when_the_session_changes_not_on_every_request(app):
    p = Participant(app.test_client())
    entered = p.enter()
    assert "study_session=" in entered.headers.get("Set-Cookie", "")
    consent = p.client.get("/consent")          # the CSRF token is new: the cookie changes
    assert consent.status_code == 200 and "Set-Cookie" in consent.headers
    again = p.client.get("/consent")            # nothing changed: no new cookie to sign
    assert again.status_code == 200 and "Set-Cookie" not in again.headers
    assert p.client.get("/study").headers.get("Set-Cookie") is None
