"""The experimenter dashboard that shows, not only counts (issue 17): /admin/dashboard.json
(completions and active participants over time, the yes-rate per layer with its Wilson
95% interval, each list's fill, the participants' catch pass rate, median answer time
and exclusion status), exclusion by hand (POST /admin/participants/<id>/exclusion), and
the page in a real browser: the charts drawn with data, refreshed without a reload, under
the strict Content-Security-Policy. On SQLite and PostgreSQL (the browser: SQLite)."""

from __future__ import annotations

import csv
import io
import re
import time

import pytest
from server_world import count, make_design, serving, study_app
from sqlalchemy import event, select
from system_deps import chromium_path
from test_admin import PASSWORD, Experimenter

from server.admin import timeline, wilson_interval
from server.exclusion import evaluate_participant
from server.store import admin_actions, panels, participants, responses

T0 = 1_700_000_000.0


@pytest.fixture
def app(db_url, tmp_path, design_file):
    app = study_app(db_url, tmp_path / "instance", design_file, "DONE123", TESTING=True)
    add_admin(app)
    yield app
    app.extensions["store"].dispose()


def add_admin(app) -> None:
    result = app.test_cli_runner().invoke(args=["create-admin", "alice", "--password-stdin"],
                                          input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output


@pytest.fixture
def experimenter(app):
    person = Experimenter(app.test_client())
    assert person.login().location == "/admin/"
    return person


# --- building a store by hand ---------------------------------------------------------------

def add_catch_panels(store) -> None:
    """Two catch panels: a yes passes ``catch_yes``, a no passes ``catch_no``."""
    with store.write() as conn:
        conn.execute(panels.insert(), [
            dict(id=f"catch_{kind}", practice=False, layer=None, unit=None, label=None,
                 image=f"catch_{kind}.png", position=900 + i, catch=True,
                 catch_expected=kind)
            for i, kind in enumerate(("yes", "no"))])


def add_participant(store, name: str, list_id: int, status: str, created_at: float,
                    answers=(), completed_at: float | None = None,
                    ended_at: float | None = None, lease: float | None = None,
                    evaluate: bool | None = None) -> int:
    """A participant with ``answers`` (panel id, yes, rt ms[, practice]) stored as they
    would be; evaluated by the rules (as the completion path does) when ``evaluate`` or,
    by default, when completed."""
    with store.write() as conn:
        pid = conn.execute(participants.insert().values(
            token=f"tok-{name}", prolific_pid=f"pid-{name}", study_param="s",
            session_param=f"s-{name}", list_id=list_id, status=status, trial_order="[]",
            order_seed=0, n_trials=len(answers), n_answered=len(answers),
            created_at=created_at, completed_at=completed_at, ended_at=ended_at,
            lease_expires_at=lease if lease is not None else time.time() + 3600,
        )).inserted_primary_key[0]
        if answers:
            conn.execute(responses.insert(), [
                dict(participant_id=pid, trial_index=i, practice=bool(a[3:] and a[3]),
                     panel_id=a[0], answer_yes=a[1], rt_answer_ms=a[2],
                     answered_at=created_at + 1 + i)
                for i, a in enumerate(answers)])
        if evaluate if evaluate is not None else status == "completed":
            evaluate_participant(conn, pid)
    return pid


def small_world(app) -> dict[str, int]:
    """Four participants whose figures are worked out by hand in the tests below.

    - ``one`` (list 1, completed): conv5 yes, fc6 yes, fc6 no, catch_yes yes (passed),
      catch_no yes (failed), a practice yes (left out); main answer times 1000, 1200,
      1400, 800, 900 ms: median 1000 ms; catch 1 of 2.
    - ``two`` (list 2, completed, then excluded by hand): conv5 no, fc6 yes, fc8 yes,
      catch_yes yes; median of 1500, 1600, 1700, 1800 ms: 1650 ms; catch 1 of 1.
    - ``three`` (list 3, active, not evaluated): fc6 yes, fc8 no, catch_no no (passed);
      median of 700, 2000, 900 ms: 900 ms, computed from the answers so far.
    - ``four`` (list 1, declined): no answers.
    """
    store = app.extensions["store"]
    add_catch_panels(store)
    now = time.time()
    ids = {}
    ids["one"] = add_participant(store, "one", 1, "completed", now - 900, completed_at=now - 300,
                                 answers=[("practice_0", True, 100, True),
                                          ("conv5_0000", True, 1000), ("fc6_0000", True, 1200),
                                          ("fc6_0001", False, 1400), ("catch_yes", True, 800),
                                          ("catch_no", True, 900)])
    ids["two"] = add_participant(store, "two", 2, "completed", now - 800, completed_at=now - 200,
                                 answers=[("conv5_0001", False, 1500), ("fc6_0002", True, 1600),
                                          ("fc8_0000", True, 1700), ("catch_yes", True, 1800)])
    ids["three"] = add_participant(store, "three", 3, "active", now - 100,
                                   answers=[("fc6_0003", True, 700), ("fc8_0001", False, 2000),
                                            ("catch_no", False, 900)])
    ids["four"] = add_participant(store, "four", 1, "declined", now - 50, ended_at=now - 40)
    return ids


def live(experimenter, **query) -> dict:
    response = experimenter.client.get("/admin/dashboard.json", query_string=query)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    return response.get_json()


# --- the figures ----------------------------------------------------------------------------

def test_wilson_interval_by_hand():
    # 2 yes of 3, z = 1.96: centre (2/3 + z²/6) / (1 + z²/3) = 0.5731, half-width
    # z sqrt(2/27 + z²/36) / (1 + z²/3) = 0.3654 (as statsmodels' proportion_confint)
    low, high = wilson_interval(2, 3)
    assert low == pytest.approx(0.2076596, abs=1e-6)
    assert high == pytest.approx(0.9385081, abs=1e-6)
    assert wilson_interval(1, 1) == pytest.approx((0.2065493, 1.0), abs=1e-6)
    assert wilson_interval(0, 1) == pytest.approx((0.0, 0.7934507), abs=1e-6)
    assert wilson_interval(0, 0) is None


def test_dashboard_json_figures_by_hand(app, experimenter):
    ids = small_world(app)
    assert experimenter.post(f"/admin/participants/{ids['two']}/exclusion", action="exclude",
                             reason="answered with a bot").status_code == 302
    data = live(experimenter)
    assert data["generated_at"] == pytest.approx(time.time(), abs=30)
    assert data["study"] == "open"

    totals = data["totals"]
    assert {k: totals[k] for k in ("target", "completed", "active", "declined", "participants",
                                   "excluded", "kept", "pending")} == \
        {"target": 5, "completed": 2, "active": 1, "declined": 1, "participants": 4,
         "excluded": 1, "kept": 1, "pending": 2}
    assert totals["median_duration_s"] == pytest.approx(600)

    # Yes-rate per layer over main answers (no practice, no catch) of the participants
    # not excluded (one and three; two is excluded): conv5 1 of 1, fc6 2 of 3, fc8 0 of 1.
    layers = {row["layer"]: row for row in data["layers"]}
    assert [row["layer"] for row in data["layers"]] == ["conv5", "fc6", "fc8"]
    assert (layers["conv5"]["yes"], layers["conv5"]["n"]) == (1, 1)
    assert (layers["fc6"]["yes"], layers["fc6"]["n"]) == (2, 3)
    assert (layers["fc8"]["yes"], layers["fc8"]["n"]) == (0, 1)
    assert layers["fc6"]["rate"] == pytest.approx(2 / 3)
    assert (layers["fc6"]["low"], layers["fc6"]["high"]) == pytest.approx((0.20766, 0.93851),
                                                                         abs=1e-5)
    assert (layers["conv5"]["low"], layers["conv5"]["high"]) == pytest.approx((0.20655, 1.0),
                                                                             abs=1e-5)
    assert (layers["fc8"]["low"], layers["fc8"]["high"]) == pytest.approx((0.0, 0.79345),
                                                                         abs=1e-5)

    # targets 2, 1, 2 (5 participants over 3 lists); list 2 is full (one completed)
    assert data["lists"] == [
        {"id": 1, "target": 2, "completed": 1, "active": 0, "excluded": 0, "open": True},
        {"id": 2, "target": 1, "completed": 1, "active": 0, "excluded": 1, "open": False},
        {"id": 3, "target": 2, "completed": 0, "active": 1, "excluded": 0, "open": True}]

    people = {row["prolific_pid"]: row for row in data["participants"]}
    assert [row["id"] for row in data["participants"]] == sorted(ids.values(), reverse=True)
    one, two, three, four = (people[f"pid-{n}"] for n in ("one", "two", "three", "four"))
    assert (one["catch_passed"], one["catch_total"], one["catch_rate"]) == (1, 2, 0.5)
    assert one["median_rt_ms"] == 1000
    assert (one["exclusion"], one["reasons"]) == ("kept", [])
    assert (two["catch_passed"], two["catch_total"], two["catch_rate"]) == (1, 1, 1.0)
    assert two["median_rt_ms"] == 1650
    assert (two["exclusion"], two["reasons"], two["manual"], two["manual_reason"]) == \
        ("excluded", ["manual"], "exclude", "answered with a bot")
    # still in the study: computed from the answers so far
    assert (three["catch_passed"], three["catch_total"], three["catch_rate"]) == (1, 1, 1.0)
    assert three["median_rt_ms"] == 900
    assert (three["exclusion"], three["status"], three["n_answered"]) == ("pending", "active", 3)
    assert (four["catch_total"], four["catch_rate"], four["median_rt_ms"]) == (0, None, None)
    assert four["exclusion"] == "pending" and four["status"] == "declined"
    assert (data["total"], data["page"], data["pages"], data["status"]) == (4, 1, 1, "all")

    # The HTML table shows the same figures, without a script.
    page = experimenter.dashboard()
    row_two = re.search(rf'id="p{ids["two"]}">(.*?)</tr>', page, re.S).group(1)
    assert '<td class="catch">1 / 1 (100%)</td>' in row_two
    assert '<td class="rt">1650 ms</td>' in row_two
    assert "excluded (manual)" in row_two
    row_three = re.search(rf'id="p{ids["three"]}">(.*?)</tr>', page, re.S).group(1)
    assert '<td class="rt">900 ms</td>' in row_three and ">pending<" in row_three

    # Filtered and paged as the HTML table.
    active = live(experimenter, status="active")
    assert [row["prolific_pid"] for row in active["participants"]] == ["pid-three"]
    assert active["total"] == 1
    assert experimenter.client.get("/admin/dashboard.json?status=bogus").status_code == 400
    assert experimenter.client.get("/admin/dashboard.json?page=0").status_code == 400


def test_timeline_counts_completions_and_sessions_over_time(app):
    """60 steps of 10 s from the first entry (T0) to T0 + 600 s; at each step's end t,
    completions before t and sessions entered before t and not ended by t."""
    store = app.extensions["store"]
    at = T0 + 600
    add_participant(store, "a", 1, "completed", T0, completed_at=T0 + 105.5, evaluate=False)
    add_participant(store, "b", 2, "completed", T0 + 50.5, completed_at=T0 + 205.5,
                    evaluate=False)
    add_participant(store, "c", 3, "active", T0 + 300.5, lease=at + 3600)    # running
    add_participant(store, "d", 1, "declined", T0 + 400.5, ended_at=T0 + 410.5)
    add_participant(store, "e", 2, "active", T0 + 450.5, lease=T0 + 500.5)   # lease ran out
    with store.read() as conn:
        line = timeline(conn, at)
    assert (line["start"], line["end"], line["bucket_s"]) == (T0, at, pytest.approx(10))
    points = line["points"]
    assert len(points) == 60
    assert points[0]["t"] == pytest.approx(T0 + 10) and points[-1]["t"] == at
    completed = [p["completed"] for p in points]
    active = [p["active"] for p in points]
    # a completes in step 10 (105.5 s), b in step 20 (205.5 s)
    assert completed == [0] * 10 + [1] * 10 + [2] * 40
    # a: steps 0-9; b: 5-19; c: 30 on; d: 40 only (declined at 410.5 s); e: 45-49
    assert active == ([1] * 5 + [2] * 5 + [1] * 10 + [0] * 10 + [1] * 10 + [2] + [1] * 4
                      + [2] * 5 + [1] * 10)
    assert active[-1] == 1      # the running session: as the totals' "active" now
    # the same from the definition, point by point
    sessions = [(T0, T0 + 105.5), (T0 + 50.5, T0 + 205.5), (T0 + 300.5, None),
                (T0 + 400.5, T0 + 410.5), (T0 + 450.5, T0 + 500.5)]
    for p in points[:-1]:
        assert p["active"] == sum(s < p["t"] and (e is None or e >= p["t"])
                                  for s, e in sessions)
        assert p["completed"] == sum(c < p["t"] for c in (T0 + 105.5, T0 + 205.5))


def test_dashboard_json_without_participants(app, experimenter):
    data = live(experimenter)
    assert data["timeline"]["points"] == [] and data["participants"] == []
    assert [(row["layer"], row["n"], row["rate"], row["low"]) for row in data["layers"]] == \
        [("conv5", 0, None, None), ("fc6", 0, None, None), ("fc8", 0, None, None)]
    assert data["totals"]["pending"] == 0


def test_dashboard_json_needs_a_login(app):
    response = app.test_client().get("/admin/dashboard.json")
    assert response.status_code == 302 and response.location.startswith("/admin/login")


def test_dashboard_json_stays_fast_with_ten_thousand_participants(app, experimenter):
    """Aggregated in SQL and paged: the same statements for 10,000 participants (30,000
    answers) as for a few."""
    store = app.extensions["store"]
    now = time.time()
    with store.read() as conn:
        main = conn.execute(select(panels.c.id).where(panels.c.practice == False)  # noqa: E712
                            .order_by(panels.c.id)).scalars().all()
    people = [dict(token=f"t{i}", prolific_pid=f"{i:024x}", study_param="s",
                   session_param="t", list_id=1 + i % 3,
                   status=("completed", "active", "returned", "declined")[i % 4],
                   trial_order="[]", order_seed=0, n_trials=12, n_answered=3,
                   created_at=now - 20_000 + i, completed_at=now - 10_000 + i
                   if i % 4 == 0 else None, lease_expires_at=now + 3600,
                   excluded=(i % 8 == 0) if i % 4 == 0 else None,
                   evaluated_at=now if i % 4 == 0 else None, catch_passed=0, catch_total=0,
                   median_rt_ms=1000.0 if i % 4 == 0 else None)
              for i in range(10_000)]
    answers = [dict(participant_id=i + 1, trial_index=k, practice=False,
                    panel_id=main[(i + k) % len(main)], answer_yes=(i + k) % 2 == 0,
                    rt_answer_ms=800 + k, answered_at=now)
               for i in range(10_000) for k in range(3)]
    statements = []

    def counting(conn, cursor, statement, *args):
        statements.append(statement)

    with store.write() as conn:
        conn.execute(participants.insert(), people[:8])
        conn.execute(responses.insert(), answers[:24])
    event.listen(store.engine, "before_cursor_execute", counting)
    try:
        live(experimenter)
        few = len(statements)
        with store.write() as conn:
            conn.execute(participants.insert(), people[8:])
            conn.execute(responses.insert(), answers[24:])
        statements.clear()
        started = time.perf_counter()
        data = live(experimenter)
        took = time.perf_counter() - started
        assert len(statements) == few
    finally:
        event.remove(store.engine, "before_cursor_execute", counting)
    assert len(data["participants"]) == 50 and data["pages"] == 200
    assert data["totals"]["completed"] == 2500 and data["totals"]["excluded"] == 1250
    # answers of the 8,750 participants not excluded: 26,250
    assert sum(row["n"] for row in data["layers"]) == 26_250
    assert data["timeline"]["points"][-1]["completed"] == 2500
    assert took < 10, f"dashboard.json took {took:.1f} s for 10,000 participants"


# --- exclusion by hand ----------------------------------------------------------------------

def test_excluding_and_reinstating_by_hand(app, experimenter):
    ids = small_world(app)
    one = ids["one"]
    path = f"/admin/participants/{one}/exclusion"
    excluded = experimenter.post(path, action="exclude", reason="  typed  the same\tthing ")
    assert excluded.status_code == 302 and excluded.location == "/admin/"
    assert "excluded by hand" in experimenter.dashboard()
    with app.extensions["store"].read() as conn:
        action = conn.execute(select(admin_actions)).one()
        row = conn.execute(select(participants).where(participants.c.id == one)).one()
    assert (action.admin, action.action, action.target, action.detail) == \
        ("alice", "exclude", str(one), "typed the same thing")
    assert (row.excluded, row.manual_exclusion, row.manual_reason) == \
        (True, "exclude", "typed the same thing")
    layers = {r["layer"]: r for r in live(experimenter)["layers"]}
    assert (layers["conv5"]["yes"], layers["conv5"]["n"]) == (0, 1)   # two's no alone now

    # the export (evaluated again first) keeps the decision
    exported = experimenter.client.get("/admin/export/participants.csv")
    assert exported.status_code == 200
    rows = {r["prolific_pid"]: r for r in csv.DictReader(io.StringIO(exported.text))}
    assert rows["pid-one"]["excluded"] == "true"
    assert "manual" in rows["pid-one"]["exclusion_reasons"].split(";")
    assert rows["pid-one"]["manual_reason"] == "typed the same thing"

    assert experimenter.post(path, action="reinstate", reason="checked: a real person") \
        .status_code == 302
    person = {p["id"]: p for p in live(experimenter)["participants"]}[one]
    assert (person["exclusion"], person["manual"], person["reasons"]) == \
        ("kept", "reinstate", [])
    assert experimenter.post(path, action="rules").status_code == 302   # no reason needed
    person = {p["id"]: p for p in live(experimenter)["participants"]}[one]
    assert (person["exclusion"], person["manual"]) == ("kept", None)
    # an active participant handed back to the rules is still pending
    assert experimenter.post(f"/admin/participants/{ids['three']}/exclusion",
                             action="rules").status_code == 302
    person = {p["id"]: p for p in live(experimenter)["participants"]}[ids["three"]]
    assert person["exclusion"] == "pending"
    with app.extensions["store"].read() as conn:
        actions = conn.execute(select(admin_actions.c.action, admin_actions.c.detail)
                               .order_by(admin_actions.c.id)).all()
    assert [a.action for a in actions] == ["exclude", "reinstate", "rules decide",
                                           "rules decide"]
    assert actions[1].detail == "checked: a real person"


@pytest.mark.parametrize("form, status, message", [
    ({"action": "ban", "reason": "x"}, 400, "action must be one of"),
    ({"reason": "x"}, 400, "action must be one of"),
    ({"action": "exclude"}, 400, "say why"),
    ({"action": "exclude", "reason": "   "}, 400, "say why"),
    ({"action": "reinstate", "reason": ""}, 400, "say why"),
    ({"action": "exclude", "reason": "x" * 501}, 400, "at most 500"),
    ({"action": "exclude", "reason": "bad\x00byte"}, 400, "printable"),
])
def test_bad_exclusions_are_refused(app, experimenter, form, status, message):
    ids = small_world(app)
    response = experimenter.post(f"/admin/participants/{ids['one']}/exclusion", **form)
    assert response.status_code == status
    assert message in response.get_data(as_text=True)
    assert count(app, admin_actions) == 0


def test_exclusion_of_an_unknown_participant_or_without_the_token(app, experimenter):
    ids = small_world(app)
    assert experimenter.post("/admin/participants/9999/exclusion", action="exclude",
                             reason="x").status_code == 404
    forged = experimenter.client.post(f"/admin/participants/{ids['one']}/exclusion",
                                      data={"action": "exclude", "reason": "x"})
    assert forged.status_code == 400
    wrong = experimenter.client.post(f"/admin/participants/{ids['one']}/exclusion",
                                     data={"action": "exclude", "reason": "x",
                                           "csrf_token": "guess"})
    assert wrong.status_code == 400
    anonymous = app.test_client().post(f"/admin/participants/{ids['one']}/exclusion",
                                       data={"action": "exclude", "reason": "x"})
    assert anonymous.status_code in (302, 400)
    assert count(app, admin_actions) == 0
    assert count(app, participants, participants.c.manual_exclusion.is_not(None)) == 0


# --- in a real browser ----------------------------------------------------------------------

CSP_LISTENER = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI);
});
"""


@pytest.fixture
def live_server(tmp_path):
    design = make_design(tmp_path / "design", {"conv5": 3, "fc6": 9, "fc8": 6}, n_lists=3,
                         participants=3)
    app = study_app(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "instance", design,
                    "BROWSER1", DASHBOARD_REFRESH_MS=300)
    add_admin(app)
    with serving(app) as base:
        yield app, base


@pytest.mark.needs_system("chromium")
def test_the_dashboard_draws_and_refreshes_in_a_browser(live_server):
    playwright_api = pytest.importorskip("playwright.sync_api",
                                         reason="the playwright package is not installed "
                                                "(make install)")
    expect = playwright_api.expect
    app, base = live_server
    store = app.extensions["store"]
    ids = small_world(app)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(10_000)
            console = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            failed = []          # every request but the browser's own for /favicon.ico
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                    if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
            page.add_init_script(CSP_LISTENER)

            page.goto(f"{base}/admin/")
            page.get_by_label("User name").fill("alice")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{base}/admin/")
            page.wait_for_selector("#live[data-updated]")

            # the charts, with data
            bars = page.locator("#chart-layers rect.bar")
            expect(bars).to_have_count(3)
            assert bars.evaluate_all("bs => bs.map(b => b.getAttribute('data-layer'))") == \
                ["conv5", "fc6", "fc8"]
            # fc6: one's yes and no, two's yes, three's yes
            assert float(bars.nth(1).get_attribute("data-rate")) == pytest.approx(3 / 4)
            assert bars.nth(1).evaluate("b => b.getBBox().height") > 0
            expect(page.locator("#chart-layers path.whisker")).to_have_count(3)
            line = page.locator("#chart-timeline path.line.completed")
            assert len(line.get_attribute("d").split("L")) == 61     # a start and 60 points
            expect(page.locator("#chart-lists g.list")).to_have_count(3)
            assert page.locator("#chart-lists g.list[data-list='1'] rect.fill.completed") \
                .get_attribute("data-value") == "1"
            row = page.locator(f"#p{ids['one']}")
            expect(row.locator("td.catch")).to_have_text("1 / 2 (50%)")
            expect(row.locator("td.rt")).to_have_text("1000 ms")
            expect(row.locator("td.exclusion")).to_have_text("kept")

            # a participant completes: the page shows it without a reload
            page.evaluate("window.__marker = 1")
            before = int(page.locator("#live").get_attribute("data-updated"))
            totals = page.locator("#totals td")
            expect(totals.nth(1)).to_have_text("2")
            add_participant(store, "five", 3, "completed", time.time() - 60,
                            completed_at=time.time(),
                            answers=[("fc8_0002", True, 1100), ("fc8_0003", True, 1300)])
            expect(totals.nth(1)).to_have_text("3")
            assert int(page.locator("#live").get_attribute("data-updated")) > before
            expect(page.locator("#chart-lists g.list[data-list='3'] rect.fill.completed")) \
                .to_have_attribute("data-value", "1")
            expect(page.locator("#chart-layers rect.bar[data-layer='fc8']")) \
                .to_have_attribute("data-n", "4")          # two's, three's and five's
            expect(page.locator("#live-note")).to_contain_text("reload it to list them")
            # the participant still in the study answers on: their row follows
            with store.write() as conn:
                conn.execute(responses.insert().values(
                    participant_id=ids["three"], trial_index=3, practice=False,
                    panel_id="catch_yes", answer_yes=False, rt_answer_ms=950,
                    answered_at=time.time()))
                conn.execute(participants.update().where(participants.c.id == ids["three"])
                             .values(n_answered=4, n_trials=12))
            three = page.locator(f"#p{ids['three']}")
            expect(three.locator("td.catch")).to_have_text("1 / 2 (50%)")
            expect(three.locator("td.progress")).to_have_text("4 / 12")
            assert page.evaluate("window.__marker") == 1                # no reload
            assert page.evaluate("window.__csp") == []

            # exclusion by hand, with a reason, through the row's form
            form = row.locator("form.exclusion-form")
            form.locator("select[name=action]").select_option("exclude")
            form.locator("input[name=reason]").fill("the same text on every panel")
            form.get_by_role("button", name="apply").click()
            expect(page.locator(".flash")).to_contain_text(
                f"Participant {ids['one']} excluded by hand")
            page.wait_for_selector("#live[data-updated]")
            expect(page.locator(f"#p{ids['one']} td.exclusion")).to_have_text(
                "excluded (manual)")
            assert page.evaluate("window.__csp") == []
            exported = page.request.get(f"{base}/admin/export/participants.csv")
            assert exported.ok
            rows = {r["prolific_pid"]: r for r in csv.DictReader(io.StringIO(exported.text()))}
            assert rows["pid-one"]["excluded"] == "true"
            assert "manual" in rows["pid-one"]["exclusion_reasons"].split(";")
            assert rows["pid-five"]["excluded"] == "false"
        finally:
            browser.close()
    # a failed request is logged as an error too: those are in ``failed``
    problems = [m for m in console if "Content Security Policy" in m or m.startswith(
        ("error", "pageerror")) and "Failed to load resource" not in m]
    assert problems == [], problems
    assert failed == [], failed
    with store.read() as conn:
        detail = conn.execute(select(admin_actions.c.detail)).scalar()
    assert detail == "the same text on every panel"
