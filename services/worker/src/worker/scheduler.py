"""`python -m worker.scheduler [--once]`: the scheduled work, as a loop or a cron run.

Locally (`make scheduler`, `make dev`) it loops every `SCHEDULER_INTERVAL_SECONDS`;
as a Render cron job it runs `--once`. Several copies may run at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import asdict

from common.broker import create_celery
from common.logging import configure_logging
from common.tracing import configure_tracing, shutdown_tracing
from worker.maintenance import run_once
from worker.resources import get_resources
from worker.settings import get_settings

_logger = logging.getLogger("worker.scheduler")


def main(argv: list[str] | None = None) -> int:
    """Run the maintenance once or until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="worker.scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="one round, then exit (cron)")
    args = parser.parse_args(argv)
    # Before the engine is built, so its statements are traced (when tracing is on).
    configure_tracing(get_settings().service_name)
    resources = get_resources()
    settings = resources.settings
    configure_logging(settings.log_level)
    celery = create_celery(settings, main="scheduler")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    _logger.info("scheduler started (interval %ss)", settings.scheduler_interval_seconds)
    while True:
        try:
            tally = run_once(resources, celery)
            if any(asdict(tally).values()):
                _logger.info("maintenance round", extra=asdict(tally))
        except Exception:
            if args.once:
                raise
            # Postgres or Redis briefly away: the next round tries again.
            _logger.exception("maintenance round failed")
        if args.once or stop.wait(settings.scheduler_interval_seconds):
            break
    celery.close()
    resources.engine.dispose()
    resources.redis.close()
    shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
