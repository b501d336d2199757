"""python -m server COMMAND: the experiment server's command line.

\b
  load-study study.json   load a design (python -m experiment.design writes it)
  serve                   serve the study with gunicorn (production; --host, --port)
  run                     Flask's development server (one process; for trying pages)
  init-db                 create or migrate the store's schema (also done on start)
  create-admin NAME       an experimenter account for the dashboard (/admin/)
  export --out DIR        responses.csv, participants.csv and the same as JSON
  entry-log               refused entries (rate limit, another SESSION_ID, STUDY_ID)
  prolific-files --out DIR [--bonus AMOUNT]
                          Prolific's approvals and bonus CSVs, once per participant

The store is chosen by DATABASE_URL (default: a SQLite file in the instance folder,
FLASK_INSTANCE_PATH); other settings by FLASK_<NAME> variables or instance/config.py.
"""

from flask.cli import FlaskGroup

from . import create_app

cli = FlaskGroup(create_app=lambda: create_app(), help=__doc__)

if __name__ == "__main__":
    cli(prog_name="python -m server")
