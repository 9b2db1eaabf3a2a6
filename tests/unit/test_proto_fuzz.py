"""Hostile bytes against every decoder of proto.py.

Whatever arrives -- random bytes, a valid frame with flipped, cut or added
bytes, a frame re-encoded with a field retyped, removed or added, a wrong
``op`` tag, nesting -- a decoder returns a message of its own direction or
raises ``msgspec.DecodeError`` (``ValidationError`` is a subclass). Nothing
else, ever: the controller catches exactly that around every decode. Valid
frames round-trip exactly.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidewater import proto as P

from ..protofuzz import (
    ALL_MESSAGES,
    BAD_UTF8,
    DECODERS,
    Decoder,
    Frames,
    accepted,
    deep_unknown_field,
)

FUZZ = settings(max_examples=20, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FRAMES = Frames()

PAIRS = [
    pytest.param(name, cls, id=f"{name}-{cls.__name__}")
    for name, dec in DECODERS.items()
    for cls in accepted(dec)
]


def decode_checked(decoder: Decoder, data: bytes) -> P.Msg | None:
    """The property: a message of the decoder's direction, or None for a msgspec error."""
    try:
        msg = decoder.decode(data)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None
    assert isinstance(msg, accepted(decoder)), f"{type(msg).__name__} from {accepted(decoder)}"
    return msg


def test_every_decoder_and_message_is_fuzzed() -> None:
    assert {name for name in vars(P) if name.endswith("_decoder")} == set(DECODERS)
    every = set()
    todo = list(P.Msg.__subclasses__())
    while todo:
        cls = todo.pop()
        every.add(cls)
        todo.extend(cls.__subclasses__())
    assert set(ALL_MESSAGES) == every


@pytest.mark.parametrize("name", list(DECODERS))
@FUZZ
@given(data=FRAMES.random_bytes())
def test_random_bytes(name: str, data: bytes) -> None:
    decode_checked(DECODERS[name], data)


@pytest.mark.parametrize("name", list(DECODERS))
@FUZZ
@given(value=FRAMES.any_value)
def test_random_msgpack_values(name: str, value: Any) -> None:
    decode_checked(DECODERS[name], msgspec.msgpack.encode(value))


@pytest.mark.parametrize(("name", "cls"), PAIRS)
@FUZZ
@given(data=st.data())
def test_valid_frames_round_trip_exactly(name: str, cls: type[P.Msg], data: st.DataObject) -> None:
    msg = data.draw(FRAMES.struct(cls), label="msg")
    frame = P.encode(msg)
    back = decode_checked(DECODERS[name], frame)
    assert type(back) is cls
    assert back == msg
    assert P.encode(back) == frame


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
@FUZZ
@given(data=st.data())
def test_mutated_frames(cls: type[P.Msg], data: st.DataObject) -> None:
    frame = P.encode(data.draw(FRAMES.struct(cls), label="msg"))
    bad = FRAMES.mutate(data.draw, frame)
    # Every decoder, not only the message's own: peers send the wrong direction too.
    for decoder in DECODERS.values():
        decode_checked(decoder, bad)


# msgspec itself raises UnicodeDecodeError here; the controller catches only msgspec
# errors, so before proto wrapped its decoders one flipped byte dropped the connection.
@pytest.mark.parametrize(("name", "msg"), [
    *[pytest.param(n, None, id=f"{n}-op") for n in DECODERS],
    pytest.param("client_decoder", P.Submit(req_id=1, tasks=[P.TaskSpec(app="MARKER", site="s")]),
                 id="client_decoder-str-field"),
    pytest.param("client_decoder", P.Submit(req_id=1, tasks=[
        P.TaskSpec(app="a", site="s", tags={"MARKER": "v"})]), id="client_decoder-dict-key"),
    pytest.param("pilot_decoder", P.Bye(reason="MARKER"), id="pilot_decoder-str-field"),
    pytest.param("agent_decoder", P.RequestJob(key="MARKER", job=P.JobSpec(site="s")),
                 id="agent_decoder-str-field"),
    pytest.param("to_client_decoder", P.Reject(reason="MARKER"), id="to_client_decoder-str-field"),
])
def test_invalid_utf8_is_a_decode_error(name: str, msg: P.Msg | None) -> None:
    frame = BAD_UTF8 if msg is None else P.encode(msg).replace(b"MARKER", b"\xffARKER")
    with pytest.raises(msgspec.DecodeError):
        DECODERS[name].decode(frame)


# msgspec skips an unknown field recursively and raises RecursionError (a 1 kB frame
# is enough); the same story as invalid UTF-8.
@pytest.mark.parametrize("name", list(DECODERS))
def test_deep_nesting_is_a_decode_error(name: str) -> None:
    decoder = DECODERS[name]
    tag = str(accepted(decoder)[0].__struct_config__.tag)
    with pytest.raises(msgspec.DecodeError):
        decoder.decode(deep_unknown_field(tag, 5000))
    with pytest.raises(msgspec.DecodeError):
        decoder.decode(b"\x91" * 5000 + b"\x00")
