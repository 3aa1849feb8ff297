"""The HTTP half: log in, submit and read jobs, and get WebSocket tickets."""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypedDict

import httpx

HTTP_TIMEOUT = 10.0
_DETAIL_CHARS = 200


class Refused(Exception):
    """Raised when the API or the realtime service refuses our credentials."""


class ApiError(Exception):
    """Raised when the API answers a call with an unexpected status; carries the status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"API answered {status}: {text[:_DETAIL_CHARS]}")
        self.status = status


class Job(TypedDict):
    """A job as the API returns it (times are RFC 3339 UTC strings)."""

    id: str
    kind: str
    state: str
    progress: int
    params: dict[str, Any]
    result: Any
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class ApiClient:
    """The API on behalf of one user: a fixed access token, or an email and password.

    With an email and password it logs in on first use, and again when the
    access token has expired, so a long-running watch outlives its token.

        async with ApiClient("http://127.0.0.1:8000", email=..., password=...) as api:
            job = await api.create_job("demo.countdown", {"steps": 5})
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        email: str | None = None,
        password: str | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> None:
        if token is None and not (email and password):
            raise ValueError("give a token, or an email and a password")
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._token = token
        self._email = email
        self._password = password

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    @property
    def can_log_in(self) -> bool:
        """Whether we hold an email and password (and so can get tickets and new tokens)."""
        return self._email is not None

    async def access_token(self, *, fresh: bool = False) -> str:
        """The current access token; `fresh` logs in again when we can."""
        if self._token is not None and not (fresh and self.can_log_in):
            return self._token
        response = await self._http.post(
            "/v1/auth/token", data={"username": self._email, "password": self._password}
        )
        if response.status_code != 200:
            raise Refused(
                f"login refused ({response.status_code}): {response.text[:_DETAIL_CHARS]}"
            )
        self._token = str(response.json()["access_token"])
        return self._token

    async def _call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One authenticated call, retried once with a new token when it has expired."""
        token = await self.access_token()
        sent = {**(headers or {}), "Authorization": f"Bearer {token}"}
        response = await self._http.request(method, path, headers=sent, **kwargs)
        if response.status_code == 401 and self.can_log_in:
            token = await self.access_token(fresh=True)
            sent["Authorization"] = f"Bearer {token}"
            response = await self._http.request(method, path, headers=sent, **kwargs)
        if response.status_code == 401:
            raise Refused(f"token refused: {response.text[:_DETAIL_CHARS]}")
        return response

    async def create_job(
        self, kind: str, params: dict[str, Any], *, idempotency_key: str | None = None
    ) -> Job:
        """Submit a job (202 Accepted); the same idempotency key gives the same job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self._call(
            "POST", "/v1/jobs", json={"kind": kind, "params": params}, headers=headers
        )
        return _expect(response, 200, 202)

    async def get_job(self, job_id: str) -> Job:
        """One of our jobs."""
        return _expect(await self._call("GET", f"/v1/jobs/{job_id}"), 200)

    async def cancel_job(self, job_id: str) -> Job:
        """Cancel one of our jobs; ApiError(409) when it has already finished."""
        return _expect(await self._call("POST", f"/v1/jobs/{job_id}/cancel"), 200)

    async def ticket(self) -> str:
        """A single-use WebSocket ticket, so no token goes into a URL."""
        response = await self._call("POST", "/v1/realtime/ticket")
        if response.status_code != 201:
            raise Refused(
                f"ticket refused ({response.status_code}): {response.text[:_DETAIL_CHARS]}"
            )
        return str(response.json()["ticket"])


def _expect(response: httpx.Response, *statuses: int) -> Job:
    if response.status_code not in statuses:
        raise ApiError(response.status_code, response.text)
    job: Job = response.json()
    return job
