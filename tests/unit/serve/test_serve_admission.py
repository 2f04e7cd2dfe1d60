"""The scoring queue admits ``workers + waiting`` scans and refuses the next at once; closing refuses
new scans but finishes the admitted ones; a slot comes back when its scan ends, fails or is cancelled.

The jobs are real callables held by an event, so which scans are running and waiting is known exactly."""

import threading
import time

import pytest

from ldm_ood.errors import QueueFullError, ServiceClosedError
from ldm_ood.serve.admission import ScoringQueue


def _until(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def test_workers_plus_waiting_are_admitted_and_the_next_is_refused():
    queue, gate = ScoringQueue(workers=2, waiting=1), threading.Event()
    futures = [queue.submit(lambda i=i: (gate.wait(), i)[1]) for i in range(3)]
    _until(lambda: queue.state().running == 2)
    state = queue.state()
    assert (state.running, state.waiting, state.workers, state.max_waiting) == (2, 1, 2, 1)
    with pytest.raises(QueueFullError, match=r"2 scan\(s\) being scored and 1 waiting.*\(2 at once, 1 waiting\)"):
        queue.submit(lambda: None)
    gate.set()
    assert sorted(f.result(10)[0] for f in futures) == [0, 1, 2]
    _until(lambda: queue.state().running == 0)
    assert queue.state().waiting == 0
    assert queue.submit(lambda: 7).result(10)[0] == 7  # the slots came back
    queue.shutdown()


def test_a_failing_or_cancelled_scan_gives_its_slot_back_and_the_wait_is_measured():
    queue, gate = ScoringQueue(workers=1, waiting=1), threading.Event()
    blocker = queue.submit(gate.wait)
    waiting = queue.submit(lambda: 1 / 0)
    gate.set()
    blocker.result(10)
    with pytest.raises(ZeroDivisionError):
        waiting.result(10)
    gate.clear()
    blocker = queue.submit(gate.wait)
    _until(lambda: queue.state().running == 1)
    cancelled = queue.submit(lambda: None)
    assert cancelled.cancel()  # not started: cancelled, and its slot released
    assert queue.state().waiting == 0
    held = time.perf_counter()
    last = queue.submit(lambda: "done")
    time.sleep(0.05)
    gate.set()
    result, waited = last.result(10)
    assert result == "done" and 0.05 <= waited <= time.perf_counter() - held
    queue.shutdown()


def test_closing_refuses_new_scans_and_finishes_the_admitted_ones():
    queue, gate = ScoringQueue(workers=1, waiting=2), threading.Event()
    admitted = [queue.submit(gate.wait) for _ in range(2)]
    queue.close()
    assert queue.state().closing
    with pytest.raises(ServiceClosedError, match="shutting down"):
        queue.submit(lambda: None)
    gate.set()
    assert all(f.result(10)[0] is True for f in admitted)  # Event.wait returned True: both ran
    queue.shutdown()
    with pytest.raises(ServiceClosedError):
        queue.submit(lambda: None)


def test_limits_are_checked():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ScoringQueue(workers=0)
