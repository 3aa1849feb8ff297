"""The API as shipped, plus `GET /test/heap`: what this worker's garbage collector walks.

`gunicorn -c services/api/gunicorn.conf.py tests.apps.heap_probe:app`
(tests/system/test_heap.py).
"""

from __future__ import annotations

import gc
import os

from api.main import app


async def heap() -> dict[str, int]:
    return {
        "pid": os.getpid(),
        "frozen": gc.get_freeze_count(),
        # What a full collection walks: every object tracked outside the permanent generation.
        "tracked": len(gc.get_objects()),
    }


app.add_api_route("/test/heap", heap)
