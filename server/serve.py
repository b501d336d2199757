"""``python -m server serve``: the experiment served as in production, by gunicorn.

The same WSGI application as ``gunicorn 'server:create_app()'`` (the Dockerfile's CMD),
with the project's defaults: threaded workers (``gthread``) on 127.0.0.1. The instance
folder (``FLASK_INSTANCE_PATH``), the store (``DATABASE_URL``) and every other setting
come from the environment as for any start of the app (README, "Configuration").
The command replaces itself by gunicorn, so signals (Ctrl-C, a container's SIGTERM)
reach gunicorn's master directly.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import click

__all__ = ["gunicorn_command", "serve_command"]

#: The WSGI application gunicorn serves.
APP = "server:create_app()"


def gunicorn_command(host: str = "127.0.0.1", port: int = 8000, workers: int = 4,
                     threads: int = 4, graceful_timeout: int = 30) -> list[str]:
    """The gunicorn command line that serves the app: the running Python's gunicorn."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port}: give a number from 1 to 65535")
    if workers < 1 or threads < 1:
        raise ValueError("workers and threads: at least 1 each")
    return [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", "gthread",
            "--threads", str(threads), "-b", f"{host}:{port}",
            "--graceful-timeout", str(graceful_timeout), APP]


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every interface, e.g. in a container)")
@click.option("--port", default=8000, show_default=True, type=int, help="port to listen on")
@click.option("--workers", default=4, show_default=True, type=int,
              help="gunicorn worker processes")
@click.option("--threads", default=4, show_default=True, type=int,
              help="threads per worker (each answers one request at a time)")
@click.option("--graceful-timeout", default=30, show_default=True, type=int,
              help="seconds a stopping worker may finish its requests")
def serve_command(host: str, port: int, workers: int, threads: int,
                  graceful_timeout: int) -> None:
    """Serve the study with gunicorn (production), e.g. --host 0.0.0.0 --port 8000."""
    try:
        cmd = gunicorn_command(host, port, workers, threads, graceful_timeout)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if importlib.util.find_spec("gunicorn") is None:
        raise click.ClickException("gunicorn is not installed: pip install gunicorn "
                                   "(make install does)")
    click.echo(f"serving {APP} at http://{host}:{port} ({workers} workers x {threads} "
               "threads); Ctrl-C stops", err=True)
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
