"""The store: one database, chosen by ``DATABASE_URL`` (SQLAlchemy 2, Core).

- ``sqlite:////abs/path.db`` (the embedded default is ``instance/study.db``): WAL journal,
  a busy timeout, foreign keys on, and every write transaction ``BEGIN IMMEDIATE``, so
  concurrent writers queue for the one write lock instead of failing half-way.
- ``postgresql://...`` (or ``postgres://``): the same schema through psycopg 3; the
  assignment takes row locks (``SELECT ... FOR UPDATE``) on the lists.

Times are stored as UTC seconds since the epoch (floats): portable across both stores and
easy to aggregate in SQL. The schema is created on start and migrated by the steps in
``MIGRATIONS`` (its version lives in the ``meta`` table); ``python -m server init-db``
does the same by hand.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.schema import CreateColumn

__all__ = ["Store", "get_store", "init_app", "metadata", "meta", "study", "panels", "lists",
           "list_panels", "participants", "responses", "admins", "login_attempts",
           "webhook_events", "admin_actions", "entry_log", "SCHEMA_VERSION", "now"]

log = logging.getLogger(__name__)

metadata = MetaData()

meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# One study per database: the row with id 1.
study = Table(
    "study", metadata,
    Column("id", Integer, primary_key=True),
    Column("format", String(64), nullable=False),
    Column("seed", Integer),
    Column("design", Text, nullable=False),          # the study.json as loaded (JSON text)
    Column("loaded_at", Float, nullable=False),
    Column("status", String(16), nullable=False, default="open"),  # open | closed
    Column("completion_code", String(64), nullable=False),
    Column("prolific_study_id", String(64)),         # when set, STUDY_ID must match
    Column("practice_trials", Integer, nullable=False),
)

panels = Table(
    "panels", metadata,
    Column("id", String(128), primary_key=True),
    Column("practice", Boolean, nullable=False),
    Column("layer", String(64)),
    Column("unit", Integer),
    Column("label", Text),
    Column("image", String(96), nullable=False),     # content-addressed file name
    Column("position", Integer, nullable=False),     # practice order; design order otherwise
)

lists = Table(
    "lists", metadata,
    Column("id", Integer, primary_key=True),
    Column("target", Integer, nullable=False),
)

list_panels = Table(
    "list_panels", metadata,
    Column("list_id", Integer, ForeignKey("lists.id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("panel_id", String(128), ForeignKey("panels.id"), nullable=False, unique=True),
)

participants = Table(
    "participants", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token", String(64), nullable=False, unique=True),   # the browser's session key
    Column("prolific_pid", String(64), nullable=False, unique=True),
    Column("study_param", String(64), nullable=False),
    Column("session_param", String(64), nullable=False),
    Column("list_id", Integer, ForeignKey("lists.id"), nullable=False, index=True),
    # active | completed | declined | returned | timed_out ("expired" is an active
    # participant whose lease has passed; it is derived, never stored)
    Column("status", String(16), nullable=False, index=True),
    Column("trial_order", Text, nullable=False),     # JSON list of panel ids, practice first
    Column("order_seed", Integer, nullable=False),
    Column("n_trials", Integer, nullable=False),
    Column("n_answered", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("lease_expires_at", Float, nullable=False),
    Column("consented_at", Float),
    Column("instructions_at", Float),
    Column("device_ok_at", Float),
    Column("device", Text),                          # JSON: window, screen, pointer, agent
    Column("debriefed_at", Float),
    Column("completed_at", Float),
    Column("ended_at", Float),                       # declined / returned / timed out
    Column("user_agent", Text),
)

responses = Table(
    "responses", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("participant_id", Integer, ForeignKey("participants.id"), nullable=False),
    Column("trial_index", Integer, nullable=False),
    Column("practice", Boolean, nullable=False),
    Column("panel_id", String(128), ForeignKey("panels.id"), nullable=False),
    Column("answer_yes", Boolean, nullable=False),
    Column("object_text", Text),
    Column("rt_answer_ms", Integer, nullable=False),   # client: image onset to yes/no
    Column("rt_text_ms", Integer),                     # client: yes to the text's submission
    Column("shown_at", Float),                         # client clock: image onset
    Column("client_answered_at", Float),               # client clock: submission
    Column("answered_at", Float, nullable=False),      # server clock: stored
    UniqueConstraint("participant_id", "trial_index", name="uq_response_trial"),
)

# -- the experimenter side (schema version 2) -----------------------------------------------

admins = Table(
    "admins", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_login_at", Float),
)

# Every login attempt, so that limits hold across gunicorn workers.
login_attempts = Table(
    "login_attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, index=True),
    Column("ip", String(64), nullable=False, index=True),
    Column("at", Float, nullable=False, index=True),
    Column("success", Boolean, nullable=False),
)

# Prolific's webhook deliveries, once each (the key makes a repeat a no-op).
webhook_events = Table(
    "webhook_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_key", String(128), nullable=False, unique=True),
    Column("event_type", String(64), nullable=False),
    Column("resource_id", String(64)),
    Column("prolific_pid", String(64)),
    Column("status", String(32)),
    Column("outcome", Text, nullable=False),
    Column("received_at", Float, nullable=False),
)

# What experimenters did (marking participants, opening and closing the study).
admin_actions = Table(
    "admin_actions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("admin", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(128)),
    Column("at", Float, nullable=False),
)

# -- entry to the study (schema version 3) --------------------------------------------------

# Every place taken ("entered") and every entry refused ("rate_limited", "other_session",
# "wrong_study"; docs/study-design.md, "Entry"). ``source`` is a keyed hash of the
# client's address (its /64 for IPv6), never the address: the per-address limit counts
# "entered" rows by source, in the store, so it holds across gunicorn workers.
entry_log = Table(
    "entry_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("source", String(64), nullable=False),
    Column("prolific_pid", String(64)),
    Column("study_param", String(64)),
    Column("session_param", String(64)),
    Index("ix_entry_log_source_at", "source", "at"),
)

SCHEMA_VERSION = 7   # 4: admin_sessions, 5: the responses' tracking columns, 6: the panels'
                     # catch columns, 7: exclusions and Prolific files (below)

_VERSION_1 = ("meta", "study", "panels", "lists", "list_panels", "participants", "responses")
_VERSION_2 = ("admins", "login_attempts", "webhook_events", "admin_actions")
_VERSION_3 = ("entry_log",)


def _migrate_to_1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[metadata.tables[name] for name in _VERSION_1])


def _migrate_to_2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[metadata.tables[name] for name in _VERSION_2])


def _migrate_to_3(conn: Connection) -> None:
    metadata.create_all(conn, tables=[metadata.tables[name] for name in _VERSION_3])


# version reached -> the step that reaches it from the one before
MIGRATIONS = {1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3}


# -- the experimenter's sessions (schema version 4) ------------------------------------------

# One row per logged-in browser (server/auth.py): the signed cookie carries only a random
# session id, the store only its SHA-256, so logging out, a new password or a timeout
# ends the session wherever its cookie has been copied to.
admin_sessions = Table(
    "admin_sessions", metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("admin_id", Integer, ForeignKey("admins.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False, index=True),
    Column("ip", String(64)),
)

__all__ += ["admin_sessions"]

_VERSION_4 = ("admin_sessions",)


def _migrate_to_4(conn: Connection) -> None:
    metadata.create_all(conn, tables=[metadata.tables[name] for name in _VERSION_4])


MIGRATIONS[4] = _migrate_to_4


# -- what the trial page records while a panel is shown (schema version 5) -------------------

# Four nullable columns of ``responses``, sent by the trial page with each answer
# (server/api.py, parse_answer; docs/study-design.md, "What the trial page records").
# NULL: not recorded (an answer stored before version 5, or sent by an older page).
TRACKING_COLUMNS = ("hidden_ms", "focus_losses", "pasted", "answer_input")
for _column in (
    Column("hidden_ms", Integer),        # client: ms the page was hidden while shown
    Column("focus_losses", Integer),     # client: the window's blur events while shown
    Column("pasted", Boolean),           # client: text pasted into the answer box
    Column("answer_input", String(8)),   # client: yes / no by key | mouse | touch | pen
):
    responses.append_column(_column)
del _column

__all__ += ["TRACKING_COLUMNS"]


def _add_columns(conn: Connection, table: Table, names: tuple[str, ...]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each of ``names`` that ``table`` lacks in the
    store (a table created at this version has them all already: the step is a no-op)."""
    present = {column["name"] for column in inspect(conn).get_columns(table.name)}
    quoted = conn.dialect.identifier_preparer.format_table(table)
    for name in names:
        if name not in present:
            column = CreateColumn(table.c[name]).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {quoted} ADD COLUMN {column}")


def _migrate_to_5(conn: Connection) -> None:
    _add_columns(conn, responses, TRACKING_COLUMNS)


MIGRATIONS[5] = _migrate_to_5


# -- catch trials (schema version 6) ----------------------------------------------------------

# Three columns of ``panels`` (docs/study-design.md, "Catch trials"): a catch panel is no
# unit (layer and unit NULL, practice false) but a panel whose answer is known. A panel
# stored before version 6 is no catch panel (``catch`` false).
CATCH_COLUMNS = ("catch", "catch_expected", "catch_class")
for _column in (
    Column("catch", Boolean, nullable=False, default=False, server_default=false()),
    Column("catch_expected", String(8)),   # catch panels: yes | no
    Column("catch_class", Text),           # positive catch panels: the class a yes names
):
    panels.append_column(_column)
del _column

__all__ += ["CATCH_COLUMNS"]


def _migrate_to_6(conn: Connection) -> None:
    _add_columns(conn, panels, CATCH_COLUMNS)


MIGRATIONS[6] = _migrate_to_6


# -- exclusions, practice scores and Prolific's files (schema version 7) ----------------------

# The study's pre-registered exclusion rules (analysis/exclusion.py; NULL: none) and
# whether an excluded participant frees their place on the list.
STUDY_EXCLUSION_COLUMNS = ("exclusion_rules", "replace_excluded")
study.append_column(Column("exclusion_rules", Text))
study.append_column(Column("replace_excluded", Boolean, nullable=False, default=False,
                           server_default=false()))

# A practice panel's expected answer (yes | no; NULL: not scored).
PANEL_EXPECTED_COLUMNS = ("expected",)
panels.append_column(Column("expected", String(8)))

# What an action was about, in the experimenter's words (a manual exclusion's reason).
ADMIN_ACTION_COLUMNS = ("detail",)
admin_actions.append_column(Column("detail", Text))

# Per participant (server/exclusion.py): the rules' verdict, evaluated when they finish and
# again at export, and an experimenter's decision by hand, which overrides it. NULL
# ``excluded``: not evaluated yet (a participant who has not finished).
PARTICIPANT_EXCLUSION_COLUMNS = (
    "excluded", "exclusion_reasons", "manual_exclusion", "manual_reason", "catch_passed",
    "catch_total", "practice_correct", "practice_scored", "median_rt_ms", "evaluated_at")
for _column in (
    Column("excluded", Boolean),            # the decision: the rules', or the manual one
    Column("exclusion_reasons", Text),      # the rules that failed, "catch;fast" ("": none)
    Column("manual_exclusion", String(16)), # exclude | reinstate (NULL: the rules decide)
    Column("manual_reason", Text),          # the experimenter's reason
    Column("catch_passed", Integer),
    Column("catch_total", Integer),
    Column("practice_correct", Integer),
    Column("practice_scored", Integer),
    Column("median_rt_ms", Float),
    Column("evaluated_at", Float),
):
    participants.append_column(_column)
del _column

# What was written into Prolific's files, once per participant and kind: a second request
# writes only those not yet written (server/prolific_files.py).
prolific_files = Table(
    "prolific_files", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("participant_id", Integer, ForeignKey("participants.id"), nullable=False),
    Column("kind", String(16), nullable=False),        # approval | bonus
    Column("decision", String(16)),                    # approvals: approve | reject
    Column("reason", Text),                            # rejections: the failed rule(s)
    Column("amount", String(16)),                      # bonuses: e.g. "0.50"
    Column("written_at", Float, nullable=False),
    Column("batch", String(64), nullable=False),       # the file it went into
    UniqueConstraint("participant_id", "kind", name="uq_prolific_file"),
)

__all__ += ["STUDY_EXCLUSION_COLUMNS", "PANEL_EXPECTED_COLUMNS", "ADMIN_ACTION_COLUMNS",
            "PARTICIPANT_EXCLUSION_COLUMNS", "prolific_files"]


def _migrate_to_7(conn: Connection) -> None:
    _add_columns(conn, study, STUDY_EXCLUSION_COLUMNS)
    _add_columns(conn, panels, PANEL_EXPECTED_COLUMNS)
    _add_columns(conn, admin_actions, ADMIN_ACTION_COLUMNS)
    _add_columns(conn, participants, PARTICIPANT_EXCLUSION_COLUMNS)
    metadata.create_all(conn, tables=[prolific_files])


MIGRATIONS[7] = _migrate_to_7


def now() -> float:
    """The server clock, UTC seconds since the epoch."""
    return time.time()


def engine_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; anything else is taken as is."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Store:
    """The engine and its two kinds of transaction: ``write()`` and ``read()``."""

    def __init__(self, url: str, echo: bool = False, pool_size: int = 10):
        self.url = engine_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise ValueError("DATABASE_URL: the SQLite store needs a file "
                                 "(sqlite:////path/to/study.db), not an in-memory database")
            _create_private(parsed.database)
            self.engine = create_engine(self.url, echo=echo,
                                        connect_args={"timeout": 30, "check_same_thread": False})
            _sqlite_setup(self.engine)
        elif self.dialect == "postgresql":
            # Keep at least one pooled connection per gunicorn thread: connections beyond
            # the pool are closed on return, and reopening them costs milliseconds.
            self.engine = create_engine(self.url, echo=echo, pool_pre_ping=True,
                                        pool_size=pool_size, max_overflow=pool_size)
        else:
            raise ValueError(f"DATABASE_URL: unsupported store {self.dialect!r}; "
                             "use sqlite:////path/file.db or postgresql://user@host/db")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``), committed on success."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (SQLite: deferred, so readers never wait for the lock)."""
        with self.engine.connect() as conn:
            conn.execution_options(store_read_only=True)
            with conn.begin():
                yield conn

    def lock_lists(self, conn: Connection) -> None:
        """Serialise assignments: PostgreSQL locks every list row until commit (SQLite's
        immediate transaction already holds the database's one write lock)."""
        if self.dialect == "postgresql":
            conn.execute(select(lists.c.id).order_by(lists.c.id).with_for_update())

    def schema_version(self, conn: Connection) -> int:
        if not self.engine.dialect.has_table(conn, "meta"):
            return 0
        value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        return int(value) if value is not None else 0

    def migrate(self) -> int:
        """Create or migrate the schema to ``SCHEMA_VERSION``; returns the version found."""
        with self.write() as conn:
            if self.dialect == "postgresql":
                # One migrator at a time, whichever worker starts first.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727001)")
            found = self.schema_version(conn)
            if found > SCHEMA_VERSION:
                raise RuntimeError(f"the store's schema is version {found}, newer than this "
                                   f"server's {SCHEMA_VERSION}: upgrade the server")
            for version in range(found + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](conn)
                log.info("store schema migrated to version %d", version)
            if found < SCHEMA_VERSION:
                conn.execute(meta.delete().where(meta.c.key == "schema_version"))
                conn.execute(meta.insert().values(key="schema_version",
                                                  value=str(SCHEMA_VERSION)))
        return found

    def dispose(self) -> None:
        self.engine.dispose()


def _create_private(path: str) -> None:
    """Create the SQLite file, if missing, readable and writable by its owner only (0600,
    whatever the umask): it holds Prolific ids and password hashes. SQLite creates the
    ``-wal`` and ``-shm`` files with the database file's permissions, so they follow. An
    existing file is left as it is (a warning says when others may read it); where the
    file cannot be made here, SQLite's own open reports why."""
    if path.startswith("file:"):                # a URI filename: SQLite opens it as given
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            log.warning("the store %s is readable by others (mode %o): it holds Prolific "
                        "ids and password hashes; chmod 600 it and its -wal and -shm files",
                        path, mode)
        return
    except OSError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        read_only = conn.get_execution_options().get("store_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def get_store() -> Store:
    return current_app.extensions["store"]


def init_app(app: Flask) -> None:
    """Open the store named by the app's ``DATABASE_URL``, migrate it, add ``init-db``."""
    store = Store(app.config["DATABASE_URL"], pool_size=int(app.config["DB_POOL_SIZE"]))
    store.migrate()
    app.extensions["store"] = store
    app.cli.add_command(init_db_command)


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create or migrate the store's schema (the server also does this on start)."""
    store = get_store()
    click.echo(f"store {store.engine.url.render_as_string(hide_password=True)}: "
               f"schema version {SCHEMA_VERSION}")
