"""The service under uvicorn with N worker processes (an experiment for docs/benchmarks.md).

`loyalty serve` runs one uvicorn worker. This starts (or reuses) the embedded PostgreSQL and
NATS of $LOYALTY_DATA_DIR exactly as `loyalty serve` does, then runs `service.app.create_app`
under `uvicorn.run(..., workers=N)`. Run `loyalty serve` (serve.sh) once on the data dir first so
that the admin key and the program exist (the workers would otherwise race to create them).
Usage: .venv/bin/python scripts/bench/multiworker.py N
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def factory():  # called in each worker process
    from service.app import create_app
    from service.config import settings_from_env
    from service.logs import configure_logging

    settings = settings_from_env()
    configure_logging(settings.log_format)  # as `loyalty serve` does: one log line per request
    return create_app(settings)


def main() -> None:
    import uvicorn

    from service.cli import servers
    from service.config import settings_from_env
    from service.logs import configure_logging

    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    settings = settings_from_env()
    configure_logging(settings.log_format)
    with servers(settings) as resolved:
        os.environ.update(
            LOYALTY_DATABASE_URL=resolved.database_url,
            LOYALTY_NATS_URL=resolved.nats_url,
            LOYALTY_MASTER_KEY=resolved.master_key,
        )
        uvicorn.run(
            "multiworker:factory",
            factory=True,
            host=resolved.host,
            port=resolved.port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=20,
        )


if __name__ == "__main__":
    main()
