"""A RemoteFuture's states, driven the way its executor drives them (no controller).

The executor's side is four steps: ``_begin`` (about to send), ``_accepted``
(the controller took it), ``_settle`` (its outcome) and, around a cancel,
``_ask_cancel``/``_end_cancel``. The integration tests run them for real
(tests/integration/test_remote_executor.py); here the orders a race can
produce are laid out one by one.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from tidewater import RemoteFuture, SyncClient, TaskFailed
from tidewater.client_sync import RemoteExecutor


@pytest.fixture
def future() -> RemoteFuture:
    client = SyncClient("ws://127.0.0.1:9", token="unused")  # never entered: no connection
    return RemoteFuture(RemoteExecutor(client, "hpc"))


def test_a_call_cancelled_before_it_is_sent_is_never_sent(future: RemoteFuture) -> None:
    assert not future.running()
    assert future.cancel() is True
    assert future.cancelled() and future.done()
    # Waiters are told at once, without the executor getting to it.
    assert list(concurrent.futures.as_completed([future], timeout=1)) == [future]
    assert future._begin() is False  # the executor then sends nothing
    with pytest.raises(concurrent.futures.CancelledError):
        future.submitted(timeout=1)


def test_an_outcome_during_a_cancel_waits_for_the_controllers_answer(
    future: RemoteFuture,
) -> None:
    assert future._begin()
    # The controller said it could not kill it: it had just finished.
    assert future._ask_cancel()
    future._settle((True, 5))
    assert not future.done()  # held until the answer
    assert future._end_cancel(killed=False) is False
    assert future.result(timeout=1) == 5 and not future.cancelled()


def test_a_confirmed_kill_wins_over_the_killed_tasks_failure(future: RemoteFuture) -> None:
    assert future._begin()
    assert future._ask_cancel()
    future._settle((False, TaskFailed(4, "KILLED", None, "cancelled by user")))
    assert future._end_cancel(killed=True) is True
    assert future.cancelled()
    finished, _ = concurrent.futures.wait([future], timeout=1)
    assert finished == {future}
    future._settle((True, 1))  # anything later changes nothing
    assert future.cancelled()


def test_a_finished_call_is_not_cancelled(future: RemoteFuture) -> None:
    assert future._begin()
    future._settle((True, "done"))
    assert future.cancel() is False
    assert future._ask_cancel() is False
    assert future.result() == "done" and not future.running()


def test_a_refused_submission_is_the_futures_exception(future: RemoteFuture) -> None:
    assert future._begin()
    refused = ValueError("unknown app")
    future._settle((False, refused))
    assert future.exception(timeout=1) is refused and future.task_id is None
    with pytest.raises(ValueError, match="unknown app"):
        future.submitted(timeout=1)
    with pytest.raises(TimeoutError):
        RemoteFuture(future._executor).submitted(timeout=0.01)
