"""ingest_api.coalesce: concurrent callers share one flush, and each gets its own answer."""
import threading

import pytest

from ingest_api.coalesce import Coalescer


def _submit_all(coalescer, items):
    results, errors = {}, {}

    def call(item):
        try:
            results[item] = coalescer.submit(item)
        except Exception as exc:
            errors[item] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in items]
    for t in threads:
        t.start()
    return threads, results, errors


def test_what_arrives_during_a_flush_goes_to_the_next_flush_together():
    flushes, release = [], threading.Event()

    def flush(items):
        flushes.append(list(items))
        if len(flushes) == 1:
            release.wait(5)  # hold the first flush while the others arrive
        return [item * 10 for item in items]

    coalescer = Coalescer(flush, "test")
    first, results, errors = _submit_all(coalescer, [1])
    while not flushes:
        threading.Event().wait(0.001)
    rest, more, _ = _submit_all(coalescer, range(2, 12))
    threading.Event().wait(0.2)  # all ten are queued behind the held flush
    release.set()
    for t in first + rest:
        t.join(5)
    assert flushes[0] == [1]
    assert len(flushes) == 2 and sorted(flushes[1]) == list(range(2, 12))
    assert results == {1: 10} and more == {i: i * 10 for i in range(2, 12)} and not errors


def test_a_failed_flush_fails_its_callers_only_and_the_flusher_goes_on():
    def flush(items):
        if "bad" in items:
            raise ConnectionError("store down")
        return [item.upper() for item in items]

    coalescer = Coalescer(flush, "test")
    with pytest.raises(ConnectionError, match="store down"):
        coalescer.submit("bad")
    assert coalescer.submit("ok") == "OK"


def test_a_flush_must_answer_every_item():
    coalescer = Coalescer(lambda items: items[:-1], "test")
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        coalescer.submit("x")
