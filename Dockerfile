# The experiment server (and the whole pipeline's commands) in a container.
#   docker build -t selectivity-study .
#   docker compose up            # with PostgreSQL: compose.yaml
# Every command below is one the test suite runs (tests/test_docker.py): the install
# script is the Makefile's, and the CMD and HEALTHCHECK are started and probed as written.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/install.sh
COPY analysis analysis
COPY experiment experiment
COPY generator generator
COPY server server
RUN sh scripts/install.sh python .

RUN useradd --create-home --uid 10001 --user-group study \
    && mkdir -p /data /var/lib/selectivity /var/cache/selectivity \
    && chown study:study /data /var/lib/selectivity /var/cache/selectivity

# Configuration: any FLASK_<NAME> (see the README), DATABASE_URL (default: SQLite in the
# instance folder), and gunicorn's own GUNICORN_CMD_ARGS (a changed port goes into
# HEALTHCHECK_URL too).
ENV FLASK_INSTANCE_PATH=/var/lib/selectivity \
    SELECTIVITY_CACHE=/var/cache/selectivity \
    GUNICORN_CMD_ARGS="--bind 0.0.0.0:8000 --workers 4 --worker-class gthread --threads 4 --access-logfile -" \
    HEALTHCHECK_URL=http://127.0.0.1:8000/api/health

# /data: study folders (study.json and its panels) to load; /var/lib/selectivity: the
# instance (SQLite store, served images, secret key).
VOLUME ["/data", "/var/lib/selectivity"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "server.healthcheck"]
CMD ["gunicorn", "server:create_app()"]
