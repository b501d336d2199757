"""A real browser (Debian's chromium, driven by Playwright, headless) takes part in a study:
consent, instructions, device check, 6 practice trials, a whole list with a reload in the
middle and a dropped connection, debrief, and the redirect to Prolific with the code."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from server_world import make_design, new_pid, serving, study_app
from sqlalchemy import select
from system_deps import chromium_path

from server.store import participants, responses

#: $CHROMIUM, else Debian's /usr/bin/chromium; without it these tests skip (fail under CI=true).
CHROMIUM = chromium_path()
pytestmark = pytest.mark.needs_system("chromium")

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="the playwright package is not installed "
                                            "(make install)")
expect = playwright_api.expect


@pytest.fixture
def live_server(tmp_path, request):
    config = dict(getattr(request, "param", {}))
    design = make_design(tmp_path / "design", {"conv5": 3, "fc6": 9, "fc8": 6}, n_lists=3,
                         participants=config.pop("participants", 3))
    app = study_app(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "instance", design,
                    "BROWSER1", COMPLETE_REDIRECT_SECONDS=1, **config)
    with serving(app) as base:
        yield app, base


@pytest.fixture
def page():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page
        browser.close()


def answer_trial(page, yes: bool, text: str = "") -> None:
    page.locator("#yes").wait_for(state="visible")
    assert page.locator("#panel").evaluate("img => img.complete && img.naturalWidth > 0")
    if yes:
        page.keyboard.press("y")
        page.locator("#object-text").wait_for(state="visible")
        page.keyboard.type(text)
        page.keyboard.press("Enter")
    else:
        page.keyboard.press("n")


def progress(page) -> str:
    return page.locator("#progress").inner_text()


def test_a_participant_completes_the_study_in_a_real_browser(live_server, page):
    app, base = live_server
    pid = new_pid()
    page.route("https://app.prolific.com/**",
               lambda route: route.fulfill(status=200, body="<p>Prolific</p>",
                                           content_type="text/html"))
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{base}/?PROLIFIC_PID={pid}&STUDY_ID={'c' * 24}&SESSION_ID={'d' * 24}")
    assert page.url.endswith("/consent")
    page.get_by_role("button", name="I agree to take part").click()
    page.wait_for_url("**/instructions")
    # The Continue button has the focus: Enter takes the participant on.
    expect(page.get_by_role("button", name="Continue")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url("**/device")
    assert "1280 x 800" in page.locator("#size").inner_text()
    page.get_by_role("button", name="Check my screen and continue").click()
    page.wait_for_url("**/trials")

    # The next panel is fetched while the current one is on screen.
    page.locator("#yes").wait_for(state="visible")
    # The whole panel fits the window, at least 600 px a side, the question beside it.
    panel, question = page.locator("#panel").bounding_box(), page.locator(".question") \
        .bounding_box()
    assert panel["width"] >= 600 and panel["y"] >= 0 and panel["y"] + panel["height"] <= 800
    assert question["x"] >= panel["x"] + panel["width"] and question["y"] < 100
    trials = page.evaluate("fetch('/api/state').then(r => r.json())")["trials"]
    for _ in range(100):
        if base + trials[1]["image"] in requested:
            break
        page.wait_for_timeout(50)
    assert base + trials[1]["image"] in requested

    # Practice: six panels, answered by keyboard. The fourth panel's image is held back:
    # while it loads, the third is not left on screen.
    held = []
    page.route(base + trials[3]["image"], lambda route: held.append(route))
    for i in range(6):
        expect(page.locator("#progress")).to_have_text(f"Practice panel {i + 1} of 6")
        if i == 3:
            expect(page.locator("#loading")).to_be_visible()
            expect(page.locator("#panel")).to_be_hidden()
            page.unroute(base + trials[3]["image"])
            for route in held:
                route.continue_()
        answer_trial(page, yes=i % 2 == 0, text=f"thing {i}")
    page.get_by_role("button", name="Start the study").wait_for()
    expect(page.locator("#panel")).to_be_hidden()  # nothing behind "Practice finished"
    page.keyboard.press("Enter")

    # Three main panels, then a reload: the page resumes at the fourth.
    for i in range(3):
        expect(page.locator("#progress")).to_have_text(f"Panel {i + 1} of 6")
        answer_trial(page, yes=i == 1, text="  a  red   car ")
    expect(page.locator("#progress")).to_have_text("Panel 4 of 6")
    page.reload()
    expect(page.locator("#progress")).to_have_text("Panel 4 of 6")

    # The connection drops while the fourth answer is sent: the page says so, keeps the
    # answer and sends it again; the server stores it once.
    dropped = []

    def drop_once(route):
        if not dropped:
            dropped.append(route.request.post_data)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    page.route("**/api/responses", drop_once)
    answer_trial(page, yes=True, text="bicycle")
    page.locator("#network").wait_for(state="visible")
    assert "answer is kept" in page.locator("#network").inner_text()
    expect(page.locator("#progress")).to_have_text("Panel 5 of 6")
    assert page.locator("#network").is_hidden()
    page.unroute("**/api/responses")
    assert json.loads(dropped[0])["object_text"] == "bicycle"

    answer_trial(page, yes=False)
    answer_trial(page, yes=False)
    page.wait_for_url("**/debrief")
    page.get_by_role("button", name="Finish and get my completion code").click()
    page.wait_for_url("**/complete")
    assert page.locator("#code").inner_text() == "BROWSER1"
    page.wait_for_url("https://app.prolific.com/submissions/complete?cc=BROWSER1")

    with app.extensions["store"].read() as conn:
        person = conn.execute(select(participants)
                              .where(participants.c.prolific_pid == pid)).one()
        rows = conn.execute(select(responses).where(responses.c.participant_id == person.id)
                            .order_by(responses.c.trial_index)).all()
    assert person.status == "completed" and person.debriefed_at is not None
    assert json.loads(person.device)["width"] == 1280
    assert [r.trial_index for r in rows] == list(range(12))
    assert [r.practice for r in rows] == [True] * 6 + [False] * 6
    assert [r.answer_yes for r in rows] == [True, False] * 3 + [False, True, False, True,
                                                                False, False]
    assert [r.object_text for r in rows if r.answer_yes] == [
        "thing 0", "thing 2", "thing 4", "a red car", "bicycle"]
    assert all(r.rt_answer_ms >= 0 and r.shown_at and r.answered_at for r in rows)
    assert all(r.rt_text_ms > 0 for r in rows if r.answer_yes)
    order = json.loads(person.trial_order)
    assert [r.panel_id for r in rows] == order
    assert abs(rows[-1].answered_at - time.time()) < 120


@pytest.mark.parametrize("live_server", [{"LEASE_MINUTES": 0.02}], indirect=True)
def test_a_participant_whose_place_was_taken_is_told_so(live_server, page):
    """Past the lease (1.2 s here) and with the place given to others, the next answer is
    refused and the page explains, instead of taking answers that cannot count."""
    app, base = live_server
    page.goto(f"{base}/?PROLIFIC_PID={new_pid()}&STUDY_ID={'c' * 24}&SESSION_ID={'d' * 24}")
    page.get_by_role("button", name="I agree to take part").click()
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Check my screen and continue").click()
    page.wait_for_url("**/trials")
    answer_trial(page, yes=False)
    expect(page.locator("#progress")).to_have_text("Practice panel 2 of 6")
    time.sleep(1.5)
    # Meanwhile every place of the study goes to others (3 lists of target 1).
    from server.assignment import start

    for _ in range(3):
        start(app.extensions["store"], new_pid(), "e" * 24, "f" * 24, lease_seconds=3600)
    answer_trial(page, yes=False)
    expect(page.get_by_role("heading", name="The time for this study has run out")) \
        .to_be_visible()
    with app.extensions["store"].read() as conn:
        assert len(conn.execute(select(responses)).all()) == 1


SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def digit_panel_study(root: Path) -> Path:
    """A study whose panels look like the demo's: 10x10 grids of real digits (one digit per
    panel), with practice panels of real digits too."""
    import pandas as pd
    from PIL import Image
    from sklearn.datasets import load_digits

    from experiment.design import build_design
    from generator.panels import grid, practice_panels, save_jpeg
    from server.study_file import write_study

    digits = load_digits()
    (root / "panels").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (layer, unit) in enumerate([("conv5", 3), ("fc6", 13), ("fc8", 7), ("fc8", 2)]):
        picks = [i for i, t in enumerate(digits.target) if t == [3, 4, 7, 2][k]][:100]
        cells = [np.asarray(Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8))
                            .resize((32, 32), Image.BILINEAR)) for i in picks]
        path = root / "panels" / f"{layer}_{unit:04d}.jpg"
        save_jpeg(grid(np.stack(cells), 10, 10), path, min_cell=64, cell=32)
        rows.append({"panel_id": path.stem, "layer": layer, "unit": unit, "path": str(path)})
    listing = practice_panels(root / "practice")
    practice = pd.read_csv(listing)
    practice["path"] = [str(root / "practice" / p) for p in practice["path"]]
    design = build_design(pd.DataFrame(rows), practice, n_lists=2, participants=6, seed=0)
    return write_study(design, root / "study.json")


def test_screenshots_of_the_participant_page_and_the_dashboard(tmp_path, page):
    """The README's two pictures, taken here: with UPDATE_SCREENSHOTS=1 they are written to
    docs/screenshots/ (JPEG, small); ``SCREENSHOT_STUDY=out/demo/study/study.json`` takes
    them on the demo study's real AM panels instead of grids of real digits."""
    from server.auth import create_admin
    from server.simulate import run_simulation

    design = Path(os.environ.get("SCREENSHOT_STUDY") or digit_panel_study(tmp_path / "study"))
    app = study_app(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "instance", design,
                    "SHOT1")
    create_admin(app.extensions["store"], "alice", "correct horse battery")
    with serving(app) as base:
        # some participants done and some under way, so the dashboard has something to show
        # (in a thread: Playwright's own event loop runs in this one)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            pool.submit(run_simulation, base, 5, 3, seed=1, think_ms=0, abandon_rate=0.4,
                        reload_rate=0).result()
        page.goto(f"{base}/?PROLIFIC_PID={new_pid()}&STUDY_ID={'c' * 24}"
                  f"&SESSION_ID={'d' * 24}")
        page.get_by_role("button", name="I agree to take part").click()
        page.get_by_role("button", name="Continue").click()
        page.get_by_role("button", name="Check my screen and continue").click()
        for _ in range(6):
            answer_trial(page, yes=True, text="dog")
        page.get_by_role("button", name="Start the study").click()
        # "no" until an fc8 panel is shown (fc8 unit k is digit k), then name its digit
        while True:
            page.locator("#yes").wait_for(state="visible")
            state = page.evaluate("fetch('/api/state').then(r => r.json())")
            panel = state["trials"][state["next_index"]]["panel_id"]
            if panel.startswith("fc8"):
                break
            answer_trial(page, yes=False)
            # (a string wait_for_function would be an eval, which the page's CSP forbids)
            expect(page.locator("#progress")).to_contain_text(
                f"Panel {state['next_index'] - 4} of ")
        words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        page.keyboard.press("y")
        page.locator("#object-text").wait_for(state="visible")
        page.keyboard.type(f"the number {words[int(panel.split('_')[1]) % 10]}")
        shots = {"participant.jpg": page.screenshot(type="jpeg", quality=70)}

        page.goto(f"{base}/admin/login")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "correct horse battery")
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{base}/admin/")
        expect(page.get_by_role("heading").first).to_be_visible()
        shots["dashboard.jpg"] = page.screenshot(type="jpeg", quality=70, full_page=True)

    import io

    from PIL import Image

    for name, data in shots.items():
        with Image.open(io.BytesIO(data)) as image:
            assert image.width == 1280 and image.height >= 800, name
            assert np.asarray(image.convert("L")).std() > 10, name  # not a blank page
        assert len(data) < 400_000, (name, len(data))
        (tmp_path / name).write_bytes(data)
        if os.environ.get("UPDATE_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            (SCREENSHOTS / name).write_bytes(data)


# --- what the trial page records (docs/study-design.md, "What the trial page records") ------

# Headless chromium never hides a page: another page brought to the front, a minimised
# window, all leave document.visibilityState "visible" and fire no visibilitychange. The
# test plays that part of the browser: the document says it is hidden (document.hidden,
# visibilityState) and visibilitychange fires, as in a browser whose user switches tabs.
# The focus is real: with Playwright's focus emulation off, another page brought to the
# front takes the focus from the trial page's window (a trusted blur), and gives it back.
HIDE = """hidden => {
  if (hidden) {
    Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
    Object.defineProperty(document, "visibilityState", {configurable: true,
                                                        get: () => "hidden"});
  } else {
    delete document.hidden;                    // the prototype's getters again
    delete document.visibilityState;
  }
  document.dispatchEvent(new Event("visibilitychange"));
  return document.visibilityState;
}"""


def other_window(page, other, away_ms: int = 100) -> None:
    """``other`` in front for ``away_ms``: the trial page's window loses the focus."""
    other.bring_to_front()
    page.wait_for_timeout(away_ms)
    page.bring_to_front()
    page.wait_for_timeout(50)                     # the focus event comes back
    assert page.evaluate("document.hasFocus()")


def switch_tab(page, other, away_ms: int) -> None:
    """Another tab in front for ``away_ms``: the page hidden, the window unfocused."""
    assert page.evaluate(HIDE, True) == "hidden"
    other_window(page, other, away_ms)
    assert page.evaluate(HIDE, False) == "visible"


def test_a_paste_and_a_tab_switch_reach_the_export(live_server, page, tmp_path):
    """Tracking (issue 17): a participant who switches tabs, pastes the object's name and
    answers with the mouse, the keys and the focused button; the export says so."""
    from server.export import write_exports

    app, base = live_server
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    other = page.context.new_page()                   # the other tab
    other.set_content("<p>Something else</p>")
    pid = new_pid()
    page.goto(f"{base}/?PROLIFIC_PID={pid}&STUDY_ID={'c' * 24}&SESSION_ID={'d' * 24}")
    consent = page.locator("main").inner_text()
    assert "whether text is pasted into the answer box" in consent
    page.get_by_role("button", name="I agree to take part").click()
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Check my screen and continue").click()
    page.wait_for_url("**/trials")
    # Playwright's focus emulation keeps every page focused: off for this document (a
    # navigation turns it on again), once the page really has the focus (else turning it
    # off would blur the window).
    page.bring_to_front()
    cdp = page.context.new_cdp_session(page)
    cdp.send("Emulation.setFocusEmulationEnabled", {"enabled": False})
    assert page.evaluate("document.hasFocus()")

    # 1. Away to another tab for 400 ms, back, yes with the mouse, the name pasted.
    page.locator("#yes").wait_for(state="visible")
    switch_tab(page, other, 400)
    page.locator("#yes").click()
    page.locator("#object-text").wait_for(state="visible")
    page.evaluate("text => navigator.clipboard.writeText(text)", "zebra")
    page.keyboard.press("Control+V")                      # a real paste, from the clipboard
    expect(page.locator("#object-text")).to_have_value("zebra")
    page.keyboard.press("Enter")
    # 2. Another window takes the focus for a moment; no with the N key.
    expect(page.locator("#progress")).to_have_text("Practice panel 2 of 6")
    page.locator("#yes").wait_for(state="visible")
    other_window(page, other)
    page.keyboard.press("n")
    # 3. Yes with Enter on the focused button, the name typed; nothing else happens.
    expect(page.locator("#progress")).to_have_text("Practice panel 3 of 6")
    page.locator("#yes").wait_for(state="visible")
    expect(page.locator("#yes")).to_be_focused()
    page.keyboard.press("Enter")
    page.locator("#object-text").wait_for(state="visible")
    page.keyboard.type("dog")
    page.keyboard.press("Enter")
    # 4. No with the mouse; a tab switch after the answer (while the next panel loads)
    # belongs to no trial.
    expect(page.locator("#progress")).to_have_text("Practice panel 4 of 6")
    page.locator("#no").wait_for(state="visible")
    page.locator("#no").click()
    switch_tab(page, other, 50)
    expect(page.locator("#progress")).to_have_text("Practice panel 5 of 6")
    page.locator("#yes").wait_for(state="visible")
    with app.extensions["store"].read() as conn:
        assert len(conn.execute(select(responses)).all()) == 4

    out = tmp_path / "export"
    write_exports(app.extensions["store"], out)
    import csv

    with open(out / "responses.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["prolific_pid"] == pid]
    fields = ("hidden_ms", "focus_losses", "pasted", "answer_input")
    assert [r["trial_index"] for r in rows] == ["0", "1", "2", "3"]
    first = rows[0]
    assert (first["answer_yes"], first["object_text"]) == ("true", "zebra")
    assert first["pasted"] == "true" and first["answer_input"] == "mouse"
    assert first["focus_losses"] == "1"                # the window lost the focus once
    # hidden for the 400 ms between the two events, within the trial's own time
    assert 400 <= int(first["hidden_ms"]) <= int(first["rt_answer_ms"]) + 1, first
    assert [{k: r[k] for k in fields} for r in rows[1:]] == [
        {"hidden_ms": "0", "focus_losses": "1", "pasted": "false", "answer_input": "key"},
        {"hidden_ms": "0", "focus_losses": "0", "pasted": "false", "answer_input": "key"},
        {"hidden_ms": "0", "focus_losses": "0", "pasted": "false", "answer_input": "mouse"}]
    assert rows[2]["object_text"] == "dog"
    objects = [o for o in json.loads((out / "responses.json").read_text(encoding="utf-8"))
               if o["prolific_pid"] == pid]
    assert objects[0]["pasted"] is True and objects[0]["hidden_ms"] >= 400
    assert [o["answer_input"] for o in objects] == ["mouse", "key", "key", "mouse"]
