"""`python -m bench.baselines.celery_send SECONDS`: the bare Celery send rate.

Sends the message the API sends for a job (common.broker.send_job, the same
Celery configuration and broker) in a loop for SECONDS and prints
`{"sent": n, "seconds": s}` as JSON. Nothing else: no HTTP, no database.
"""

from __future__ import annotations

import json
import sys
import time
import uuid

from common.broker import create_celery, send_job
from common.contracts.job_kinds import DEMO_COUNTDOWN
from common.settings import CommonSettings

PARAMS = {"steps": 1, "interval": 0}


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 5.0
    celery = create_celery(CommonSettings(), main="bench")
    send_job(celery, job_id=str(uuid.uuid4()), kind=DEMO_COUNTDOWN, params=PARAMS)  # connect
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        send_job(celery, job_id=str(uuid.uuid4()), kind=DEMO_COUNTDOWN, params=PARAMS)
        sent += 1
    elapsed = time.perf_counter() - start
    celery.close()
    print(json.dumps({"sent": sent, "seconds": elapsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
