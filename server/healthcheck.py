"""``python -m server.healthcheck [URL]``: exit 0 when the server's health endpoint says ok.

The container's HEALTHCHECK (the slim image has no curl): GET ``URL`` (default
``http://127.0.0.1:8000/api/health``, or ``$HEALTHCHECK_URL``) with a short timeout; exit
status 0 on HTTP 200 with ``{"status": "ok"}``, else 1 with the reason on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

__all__ = ["check", "main", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8000/api/health"


def check(url: str, timeout: float = 5.0) -> str | None:
    """None when healthy, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - our URL
            body = json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    if body.get("status") != "ok":
        return f"{url}: status {body.get('status')!r}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    url = args[0] if args else os.environ.get("HEALTHCHECK_URL", DEFAULT_URL)
    problem = check(url)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
