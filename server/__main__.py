"""``python -m server COMMAND``: the Flask command line for this app.

Commands: ``load-study study.json`` (load a design), ``run`` (the development server; use
gunicorn 'server:create_app()' in production), ``init-db`` (create or migrate the schema),
plus Flask's own (``routes``, ``shell``). The store is chosen by ``DATABASE_URL``.
"""

from flask.cli import FlaskGroup

from . import create_app

cli = FlaskGroup(create_app=lambda: create_app(), help=__doc__)

if __name__ == "__main__":
    cli(prog_name="python -m server")
