"""A small typed client for the jobs API and its realtime events.

    async with ApiClient(api_url, email=email, password=password) as api:
        job = await api.create_job("demo.countdown", {"steps": 5})
        async for event in EventStream(api, ws_url, last_event_id="0-0"):
            ...

`python -m jobsclient` is the command line built on it (progress bars, or
`--json`). Close codes, event names and job states come from `common.contracts`.
"""

from jobsclient._api import ApiClient, ApiError, Job, Refused
from jobsclient._events import EventStream, backoff

__all__ = ["ApiClient", "ApiError", "EventStream", "Job", "Refused", "backoff"]
