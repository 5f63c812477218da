"""Delivering one batch to POST /v1/batch/events: the request, the retries, the verdict on each event.

Every attempt of a batch sends the same bytes under the same Idempotency-Key, so the server answers a retry of
a batch it already took with its first answer instead of taking the events again. A batch the server finds
too large (413) is split in two halves under keys derived from the batch's (`<key>.0`, `<key>.1`).
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import random
import time
from typing import Any, Callable, Protocol

import urllib3

log = logging.getLogger("flokit_client")

BATCH_PATH = "/v1/batch/events"
# The longest Retry-After honoured: a proxy's "come back tomorrow" must not park the client for a day.
MAX_RETRY_AFTER_SECONDS = 600.0
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


class Report(Protocol):
    """Where a batch's outcome goes (the client: its counters and on_error)."""

    def sending(self) -> None: ...
    def delivered(self, count: int) -> None: ...
    def rejected(self, event: bytes, error: str, message: str) -> None: ...
    def failed(self, event: bytes, error: str, message: str) -> None: ...
    def retrying(self, status: int | None) -> None: ...
    def split(self) -> None: ...


def batch_body(events: list[bytes]) -> bytes:
    return b'{"events":[' + b",".join(events) + b"]}"


# The bytes around the events' own (plus one comma per event after the first).
BODY_OVERHEAD = len(batch_body([]))


def backoff(failures: int) -> float:
    """Exponential, capped, with jitter (each delay drawn from its upper half) so clients that failed together
    do not come back together."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(failures - 1, 0))
    return random.uniform(ceiling / 2, ceiling)


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER_SECONDS)


class Sender:
    """Sends batches over one keep-alive connection. Used by the client's sender thread only."""

    def __init__(
        self,
        api_key: str,
        host: str,
        *,
        compress: bool,
        timeout: float,
        max_retries: int,
        body_limit: int,
        report: Report,
        wait: Callable[[float], bool],
    ):
        self._url = host.rstrip("/") + BATCH_PATH
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "User-Agent": "flokit-client/0.1",
        }
        if compress:
            self._headers["Content-Encoding"] = "gzip"
        self._compress = compress
        self._max_retries = max_retries
        self._report = report
        self._wait = wait  # sleeps; False when the client is closing and waiting must stop
        self._pool = urllib3.PoolManager(
            num_pools=1, maxsize=1, retries=False, timeout=urllib3.Timeout(connect=timeout, read=timeout)
        )
        # The largest body to send; lowered when the server answers 413 (it caps bodies lower than this).
        self.body_limit = body_limit

    def close(self) -> None:
        self._pool.clear()

    def deliver(self, events: list[bytes], key: str) -> None:
        """Send `events` under `key` until the server gives a verdict, the retries run out or the client
        closes; every event is reported exactly once."""
        body = batch_body(events)
        payload = gzip.compress(body, compresslevel=6, mtime=0) if self._compress else body
        headers = {**self._headers, "Idempotency-Key": key}
        failures = 0
        while True:
            self._report.sending()
            try:
                response = self._pool.request(
                    "POST", self._url, body=payload, headers=headers, redirect=False
                )
            except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out: the answer is unknown
                status, delay, problem = None, None, f"{type(exc).__name__}: {exc}"
            else:
                status = response.status
                answer = _json(response.data)
                if 200 <= status < 300:
                    return self._accepted(events, answer, status)
                if status == 413 and len(events) > 1:
                    return self._split(events, key, len(body))
                if status not in (408, 409, 429) and status < 500:
                    return self._refused(events, answer, status)
                delay = retry_after(response.headers.get("Retry-After"))
                problem = f"HTTP {status} {answer.get('error', '')}".rstrip()
            # 409 (the same key still in flight) and 429 (rate limited) are the server pacing a healthy
            # client: they wait as told and never use up the retries. Everything else counts.
            if status not in (409, 429):
                failures += 1
                if failures > self._max_retries:
                    for event in events:
                        self._report.failed(
                            event, "delivery_failed", f"gave up after {failures} attempts; last: {problem}"
                        )
                    return
            if delay is None:
                delay = backoff(failures if status not in (409, 429) else 1)
            log.info("batch %s: %s; retrying in %.1f s", key, problem, delay)
            self._report.retrying(status)
            if not self._wait(delay):
                for event in events:
                    self._report.failed(
                        event,
                        "client_closed",
                        f"the client was closed before this event was delivered (last: {problem})",
                    )
                return

    def _accepted(self, events: list[bytes], answer: dict[str, Any], status: int) -> None:
        if "accepted" not in answer:
            # Not the API's answer (a proxy, a wrong URL): the events' fate
            # is unknown, and retrying cannot help.
            for event in events:
                self._report.failed(
                    event,
                    "unexpected_response",
                    f"HTTP {status} without the API's batch answer; is the host right?",
                )
            return
        self._rejected_each(events, answer.get("errors") or [])
        self._report.delivered(int(answer["accepted"]))

    def _refused(self, events: list[bytes], answer: dict[str, Any], status: int) -> None:
        if answer.get("error") == "no_valid_events":
            return self._rejected_each(events, answer.get("errors") or [])
        error = answer.get("error") or f"http_{status}"
        message = answer.get("message") or f"the server answered HTTP {status}"
        if status == 401:
            log.error("the API key was refused (%s); %d events dropped", error, len(events))
        for event in events:
            self._report.rejected(event, error, message)

    def _rejected_each(self, events: list[bytes], errors: list[dict[str, Any]]) -> None:
        for item in errors:
            self._report.rejected(events[item["index"]], item["error"], item["message"])

    def _split(self, events: list[bytes], key: str, size: int) -> None:
        self.body_limit = min(self.body_limit, size // 2)
        self._report.split()
        log.info("batch %s: 413 for %d bytes; sending it in two halves", key, size)
        half = len(events) // 2
        self.deliver(events[:half], key + ".0")
        self.deliver(events[half:], key + ".1")


def _json(data: bytes) -> dict[str, Any]:
    """The answer's JSON object ({} for anything else): what the server says, not checked further."""
    try:
        answer = json.loads(data)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}
