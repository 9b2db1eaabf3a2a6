"""The pure reconnect policy (backoff, what is worth retrying, URLs) and the outbox."""

from __future__ import annotations

import itertools
import random

import pytest
from websockets.exceptions import ConnectionClosedError as WsClosedError
from websockets.frames import Close

from tidewater import proto as P
from tidewater.errors import (
    AuthError,
    ConfigError,
    ConnectionBroken,
    ConnectionClosed,
    InvalidRequest,
    StoreError,
    TidewaterError,
)
from tidewater.transport import (
    Outbox,
    Rotation,
    _closed,
    backoff,
    controller_urls,
    is_retryable,
    ws_url,
)


def take(it, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    return list(itertools.islice(it, n))


# --------------------------------------------------------------------------- backoff


def test_backoff_without_jitter_grows_by_factor_to_cap() -> None:
    delays = take(backoff(initial=0.05, factor=2.0, cap=1.0, jitter=0.0), 8)
    assert delays == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_backoff_other_factor() -> None:
    delays = take(backoff(initial=1.0, factor=3.0, cap=100.0, jitter=0.0), 6)
    assert delays == pytest.approx([1.0, 3.0, 9.0, 27.0, 81.0, 100.0])


def test_backoff_never_ends() -> None:
    delays = take(backoff(initial=0.01, cap=0.02, jitter=0.0), 1000)
    assert len(delays) == 1000
    assert delays[-1] == pytest.approx(0.02)


@pytest.mark.parametrize("seed", range(20))
def test_backoff_jitter_bounded(seed: int) -> None:
    initial, factor, cap, jitter = 0.05, 2.0, 5.0, 0.5
    delays = take(backoff(initial=initial, factor=factor, cap=cap, jitter=jitter,
                          rng=random.Random(seed)), 30)
    for n, d in enumerate(delays):
        base = min(cap, initial * factor**n)
        assert base * (1 - jitter) - 1e-12 <= d <= base * (1 + jitter) + 1e-12
        assert d >= 0.0
    # Jitter is bounded relative to the cap as well: never more than cap * (1 + jitter).
    assert max(delays) <= cap * (1 + jitter)


def test_backoff_jitter_actually_spreads_peers() -> None:
    firsts = {next(backoff(initial=1.0, jitter=0.5, rng=random.Random(s))) for s in range(50)}
    assert len(firsts) > 40  # peers cut off together do not come back in lockstep
    assert all(0.5 <= d <= 1.5 for d in firsts)


def test_backoff_same_seed_same_delays() -> None:
    a = take(backoff(rng=random.Random(7)), 12)
    b = take(backoff(rng=random.Random(7)), 12)
    assert a == b


def test_backoff_new_generator_resets() -> None:
    rng = random.Random(3)
    gen = backoff(initial=0.05, factor=2.0, cap=5.0, jitter=0.5, rng=rng)
    long_run = take(gen, 10)
    assert long_run[-1] > 1.0  # it has grown
    # A success: start a fresh generator (sharing the rng) -> back at the initial delay.
    again = next(backoff(initial=0.05, factor=2.0, cap=5.0, jitter=0.5, rng=rng))
    assert 0.025 <= again <= 0.075


def test_backoff_large_jitter_never_negative() -> None:
    delays = take(backoff(initial=1.0, jitter=2.0, rng=random.Random(1)), 200)
    assert min(delays) >= 0.0


# --------------------------------------------------------------------------- is_retryable


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionBroken("reset"),
        ConnectionClosed("going away"),
        OSError("network unreachable"),
        ConnectionRefusedError(),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_retryable(exc: BaseException) -> None:
    assert is_retryable(exc) is True


@pytest.mark.parametrize(
    "exc",
    [
        AuthError("bad token"),
        ConfigError("bad url"),
        ValueError("nope"),
        RuntimeError(),
        InvalidRequest("refused"),
        StoreError("disk"),
        TidewaterError("generic"),
        KeyboardInterrupt(),
    ],
)
def test_not_retryable(exc: BaseException) -> None:
    assert is_retryable(exc) is False


def test_auth_error_wins_even_if_also_oserror() -> None:
    class Weird(AuthError, OSError):
        pass

    assert is_retryable(Weird("refused")) is False


# --------------------------------------------------------------------------- ws_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://host:8000", "ws://host:8000/ws"),
        ("ws://host:8000/", "ws://host:8000/ws"),
        ("ws://host:8000/ws", "ws://host:8000/ws"),
        ("ws://host:8000/ws/", "ws://host:8000/ws"),
        ("wss://example.org", "wss://example.org/ws"),
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("https://example.org/", "wss://example.org/ws"),
        ("https://example.org/ws", "wss://example.org/ws"),
        ("  ws://host:1  \n", "ws://host:1/ws"),
        ("ws://[::1]:8000", "ws://[::1]:8000/ws"),
        ("https://example.org/prefix", "wss://example.org/prefix/ws"),
    ],
)
def test_ws_url_normalises(given: str, expected: str) -> None:
    assert ws_url(given) == expected


def test_ws_url_is_idempotent() -> None:
    once = ws_url("https://example.org:443/")
    assert ws_url(once) == once


@pytest.mark.parametrize(
    "bad", ["ftp://host", "host:8000", "localhost", "", "   ", "tcp://h:1", "ws:/host", "//host"]
)
def test_ws_url_bad_scheme(bad: str) -> None:
    with pytest.raises(ConfigError, match="ws://"):
        ws_url(bad)


# --------------------------------------------------------------------------- several URLs


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://a:1", ["ws://a:1/ws"]),
        ("ws://a:1,ws://b:2", ["ws://a:1/ws", "ws://b:2/ws"]),
        (" ws://a:1 , wss://b:2/ws ,", ["ws://a:1/ws", "wss://b:2/ws"]),
        ("ws://a:1,ws://a:1/ws", ["ws://a:1/ws"]),
        (["http://a:1", "ws://b:2"], ["ws://a:1/ws", "ws://b:2/ws"]),
    ],
)
def test_controller_urls_split_and_normalise(given: str | list[str], expected: list[str]) -> None:
    assert controller_urls(given) == expected


@pytest.mark.parametrize("bad", ["", " , ", [], "ws://a:1,ftp://b"])
def test_controller_urls_refuse_empty_or_bad(bad: str | list[str]) -> None:
    with pytest.raises(ConfigError):
        controller_urls(bad)


def test_rotation_moves_on_at_each_failure_and_backs_off_after_a_round() -> None:
    r = Rotation(["a", "b", "c"])
    tried, rounds = [], []
    for _ in range(7):
        tried.append(r.current)
        rounds.append(r.failed())
    assert tried == ["a", "b", "c", "a", "b", "c", "a"]
    # A delay is due only once every URL has failed since the last success.
    assert rounds == [False, False, True, False, False, True, False]


def test_rotation_stays_on_a_url_that_works_and_restarts_the_round_there() -> None:
    r = Rotation(["a", "b"])
    assert r.failed() is False  # a refused
    assert r.current == "b"
    r.connected()
    assert r.current == "b"
    # Lost: the other controller may lead now, so it is tried first...
    r.lost()
    assert r.current == "a"
    # ...and a whole round (a, then b again) fails before a delay.
    assert r.failed() is False
    assert r.current == "b"
    assert r.failed() is True


def test_rotation_of_one_url_keeps_it_and_backs_off_after_each_failure() -> None:
    r = Rotation(["only"])
    assert [r.failed() for _ in range(3)] == [True, True, True]
    r.lost()
    assert r.current == "only"


@pytest.mark.parametrize(
    ("code", "kind"),
    [(1012, ConnectionClosed),
     (1013, ConnectionClosed), (4003, ConnectionClosed), (1006, ConnectionBroken),
     (1011, ConnectionBroken)],
)
def test_a_close_says_whether_the_controller_meant_it(
    code: int, kind: type[TidewaterError],
) -> None:
    exc = _closed(WsClosedError(Close(code, "controller shutting down"), None))
    assert type(exc) is kind and is_retryable(exc)
    assert f"{code} controller shutting down" in str(exc)


# --------------------------------------------------------------------------- outbox


def _updates(seq: int) -> P.JobUpdates:
    return P.JobUpdates(seq=seq, updates=[P.JobUpdate(job_id=seq, state="queued")])


def _seqs(frames: list[bytes]) -> list[int]:
    return [P.agent_decoder.decode(f).seq for f in frames]  # type: ignore[union-attr]


def test_outbox_numbers_frames_in_order_and_keeps_them_until_acked() -> None:
    box = Outbox()
    frames = [box.keep(_updates) for _ in range(3)]
    assert _seqs(frames) == [1, 2, 3]
    assert box.seq == 3 and len(box) == 3
    assert box.resend() == frames  # everything, oldest first


def test_outbox_ack_is_cumulative() -> None:
    box = Outbox()
    for _ in range(5):
        box.keep(_updates)
    assert box.ack(3) == [1, 2, 3]
    assert _seqs(box.resend()) == [4, 5]
    assert 3 not in box and 4 in box


def test_outbox_ack_is_idempotent_and_ignores_old_numbers() -> None:
    box = Outbox()
    box.keep(_updates)
    box.keep(_updates)
    assert box.ack(1) == [1]
    assert box.ack(1) == []
    assert box.ack(0) == []
    assert _seqs(box.resend()) == [2]


def test_outbox_numbers_keep_growing_after_everything_is_acked() -> None:
    box = Outbox()
    box.keep(_updates)
    box.ack(1)
    assert box.resend() == [] and len(box) == 0
    assert _seqs([box.keep(_updates)]) == [2]  # a reconnect never reuses a number


def test_outbox_resend_after_partial_ack_sends_only_the_rest_in_order() -> None:
    box = Outbox()
    for _ in range(4):
        box.keep(_updates)
    box.ack(2)
    first = box.resend()
    assert _seqs(first) == [3, 4]
    assert box.resend() == first  # resending does not consume: only an Ack does


def test_outbox_frame_that_cannot_be_encoded_uses_no_number() -> None:
    box = Outbox()

    def bad(seq: int) -> P.Msg:
        return P.JobUpdates(seq=seq, updates=[P.JobUpdate(job_id=1, state="x\udc80")])

    with pytest.raises(UnicodeEncodeError):
        box.keep(bad)
    assert box.seq == 0 and len(box) == 0
    assert _seqs([box.keep(_updates)]) == [1]
