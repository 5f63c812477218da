"""ingest_api.coalesce: concurrent callers share one flush, and each gets its own answer, by its deadline."""

import threading
import time

import pytest

from ingest_api.coalesce import Coalescer, DeadlinePassed


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


def _held_flush():
    """A flush that holds its first call until released; the items of each call."""
    flushes, first, release = [], threading.Event(), threading.Event()

    def flush(items):
        flushes.append(list(items))
        if len(flushes) == 1:
            first.set()
            release.wait(10)
        return [item * 10 for item in items]

    return flush, flushes, first, release


def test_an_item_still_pending_at_its_deadline_is_withdrawn_and_never_flushed():
    flush, flushes, first, release = _held_flush()
    coalescer = Coalescer(flush, "test")
    holder, results, _ = _submit_all(coalescer, [1])
    assert first.wait(5)
    started = time.monotonic()
    with pytest.raises(DeadlinePassed) as raised:
        coalescer.submit(2, deadline=started + 0.3)  # waits behind the held flush
    assert raised.value.withdrawn and 0.25 <= time.monotonic() - started < 2  # answered at its deadline
    # One handed over without waiting (post) is dropped by the flusher once its deadline has passed.
    late = coalescer.post(3, deadline=time.monotonic() + 0.05)
    on_time = coalescer.post(4, deadline=time.monotonic() + 30)
    time.sleep(0.1)
    release.set()
    assert coalescer.wait(on_time, time.monotonic() + 5) == 40
    with pytest.raises(DeadlinePassed) as raised:
        coalescer.wait(late, time.monotonic() + 5)
    assert raised.value.withdrawn
    holder[0].join(5)
    assert results == {1: 10} and flushes == [[1], [4]]  # neither 2 nor 3 reached a flush


def test_a_caller_whose_flush_outlasts_its_deadline_is_answered_at_it_and_the_flush_goes_on():
    flush, flushes, first, release = _held_flush()
    abandoned = []
    coalescer = Coalescer(flush, "test", on_abandoned=lambda item, result: abandoned.append((item, result)))
    started = time.monotonic()
    with pytest.raises(DeadlinePassed) as raised:
        coalescer.submit(1, deadline=started + 0.3)
    assert not raised.value.withdrawn and 0.25 <= time.monotonic() - started < 2
    assert first.is_set() and not abandoned
    release.set()  # the flush completes after its caller has gone: what it did can be undone
    deadline = time.monotonic() + 5
    while not abandoned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert abandoned == [(1, 10)]
    assert coalescer.submit(2, deadline=time.monotonic() + 5) == 20 and abandoned == [(1, 10)]


def test_waiting_on_a_posted_item_does_not_withdraw_it():
    # What must happen even if its caller cannot wait for it (an idempotency record's final answer): waiting
    # ends at the deadline, the item stays for the next flush.
    flush, flushes, first, release = _held_flush()
    coalescer = Coalescer(flush, "test")
    _submit_all(coalescer, [1])
    assert first.wait(5)
    slot = coalescer.post(2)
    with pytest.raises(DeadlinePassed) as raised:
        coalescer.wait(slot, time.monotonic() + 0.2)
    assert not raised.value.withdrawn
    release.set()
    assert coalescer.wait(slot, time.monotonic() + 5) == 20 and flushes == [[1], [2]]


def test_most_one_makes_a_pool_of_callers():
    # One item per flush, so a slow item holds up only its own flusher.
    running, peak, lock, gate = [0], [0], threading.Lock(), threading.Event()

    def flush(items):
        assert len(items) == 1
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        gate.wait(5)
        with lock:
            running[0] -= 1
        return items

    coalescer = Coalescer(flush, "test", flushers=3, most=1)
    threads, results, errors = _submit_all(coalescer, range(6))
    deadline = time.monotonic() + 5
    while peak[0] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(5)
    assert peak[0] == 3 and results == {i: i for i in range(6)} and not errors
