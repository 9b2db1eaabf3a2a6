"""Hypothesis strategies for wire frames: valid messages of proto.py, and hostile variants.

Valid messages are built from the Structs' own type information
(``msgspec.inspect``), so a new message or field is fuzzed without touching
this module; a field type it does not know fails loudly. Used by
tests/unit/test_proto_fuzz.py (the decoders) and
tests/integration/test_fuzz_controller.py (a real controller).
"""

from __future__ import annotations

import random
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from tidewater import proto as P

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[Any]], Any]


class Decoder(typing.Protocol):
    def decode(self, data: bytes, /) -> Any: ...


# Each decoder of proto.py and the union it decodes (test_proto_fuzz checks none is missing).
DIRECTIONS: dict[str, Any] = {
    "client_decoder": P.ClientToController,
    "to_client_decoder": P.ControllerToClient,
    "pilot_decoder": P.PilotToController,
    "to_pilot_decoder": P.ControllerToPilot,
    "agent_decoder": P.AgentToController,
    "to_agent_decoder": P.ControllerToAgent,
    "hello_decoder": P.Hello,
}
DECODERS: dict[str, Decoder] = {name: getattr(P, name) for name in DIRECTIONS}
_ACCEPTED = {
    id(DECODERS[name]): typing.get_args(union) or (union,) for name, union in DIRECTIONS.items()
}


def accepted(decoder: Decoder) -> tuple[type[P.Msg], ...]:
    """The message classes a decoder may return: its direction's union."""
    return _ACCEPTED[id(decoder)]


ALL_MESSAGES: list[type[P.Msg]] = sorted(
    {cls for dec in DECODERS.values() for cls in accepted(dec)}, key=lambda c: c.__name__
)
TAGS = sorted(str(cls.__struct_config__.tag) for cls in ALL_MESSAGES)

# msgpack carries integers in [-2**63, 2**64 - 1]; SQLite in [-2**63, 2**63 - 1].
MSGPACK_INT = st.integers(-(2**63), 2**64 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# How deep "nest" mutations go: up to 100 mixed levels, or far past the interpreter's
# recursion limit (msgspec's RecursionError must come out as a DecodeError).
NESTING = st.lists(st.booleans(), min_size=1, max_size=100) | st.integers(900, 5000).map(
    lambda n: [True] * n)
_HOLE = "\x00hole\x00"  # stands for the nested value while the rest is encoded

# A frame whose op tag is not UTF-8 (one flipped string-length byte makes such a frame).
BAD_UTF8 = b"\x81\xa2op\xa2\xff\xfe"


def deep_unknown_field(tag: str, depth: int) -> bytes:
    """A frame with op ``tag`` (other fields missing) and an unknown field ``depth`` arrays deep."""
    head = msgspec.msgpack.encode({"op": tag, "zz": 0})
    return head[:-1] + b"\x91" * depth + b"\x00"  # the 0 becomes [[[...[0]...]]]


class Frames:
    """Strategies for messages and hostile frames, with the scalar strategies given."""

    def __init__(
        self, *, ints: st.SearchStrategy[int] = MSGPACK_INT,
        floats: st.SearchStrategy[float] | None = None,
        text: st.SearchStrategy[str] | None = None,
    ) -> None:
        self.ints = ints
        # NaN by default in hostile values; valid messages that must round-trip get none.
        self.floats = floats if floats is not None else st.floats(allow_nan=False)
        self.text = text if text is not None else st.text(max_size=12)
        self._structs: dict[type[Any], st.SearchStrategy[Any]] = {}
        ext = st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=12))
        scalars = (st.none() | st.booleans() | ints | st.floats() | st.text(max_size=10)
                   | st.binary(max_size=10) | ext)
        self.any_value: st.SearchStrategy[Any] = st.recursive(
            scalars,
            lambda inner: st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=6) | ints, inner, max_size=3),
            max_leaves=8,
        )

    # ------------------------------------------------------------------ valid messages

    def for_type(self, t: mi.Type) -> st.SearchStrategy[Any]:
        if isinstance(t, mi.BoolType):
            return st.booleans()
        if isinstance(t, mi.IntType):
            if t.ge is not None or t.le is not None:  # proto's I64: what the store can hold
                return self.ints.filter(
                    lambda i: (t.ge is None or i >= t.ge) and (t.le is None or i <= t.le))
            return self.ints
        if isinstance(t, mi.FloatType):
            return self.floats
        if isinstance(t, mi.StrType):
            return self.text
        if isinstance(t, mi.BytesType):
            return st.binary(max_size=32)
        if isinstance(t, mi.NoneType):
            return st.none()
        if isinstance(t, mi.LiteralType):
            return st.sampled_from(t.values)
        if isinstance(t, mi.ListType):
            return st.lists(self.for_type(t.item_type), max_size=3)
        if isinstance(t, mi.DictType):
            return st.dictionaries(self.for_type(t.key_type), self.for_type(t.value_type),
                                   max_size=3)
        if isinstance(t, mi.TupleType):
            return st.tuples(*(self.for_type(x) for x in t.item_types))
        if isinstance(t, mi.UnionType):
            return st.one_of([self.for_type(x) for x in t.types])
        if isinstance(t, mi.StructType):
            return self.struct(t.cls)
        raise TypeError(f"no strategy for {t!r}: teach Frames.for_type this field type")

    def struct(self, cls: type[T]) -> st.SearchStrategy[T]:
        if cls not in self._structs:
            info = mi.type_info(cls)
            assert isinstance(info, mi.StructType)
            required = {f.name: self.for_type(f.type) for f in info.fields if f.required}
            optional = {f.name: self.for_type(f.type) for f in info.fields if not f.required}
            self._structs[cls] = st.fixed_dictionaries(required, optional=optional).map(
                lambda kw: cls(**kw))
        return self._structs[cls]

    def message(self, classes: typing.Sequence[type[P.Msg]]) -> st.SearchStrategy[P.Msg]:
        return st.sampled_from(list(classes)).flatmap(self.struct)

    # ------------------------------------------------------------------ hostile frames

    def mutate(self, draw: Draw, raw: bytes) -> bytes:
        """One mutation of a valid frame, chosen by ``draw``."""
        how = draw(st.sampled_from([self.flip_bytes, self.truncate, self.extend, self.splice,
                                    self.restructure]))
        return how(draw, raw)

    def mutated(self, classes: typing.Sequence[type[P.Msg]]) -> st.SearchStrategy[bytes]:
        @st.composite
        def build(draw: Draw) -> bytes:
            return self.mutate(draw, P.encode(draw(self.message(classes))))

        return build()

    @staticmethod
    def flip_bytes(draw: Draw, raw: bytes) -> bytes:
        out = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(out) - 1))
            out[pos] ^= draw(st.integers(1, 255))
        return bytes(out)

    @staticmethod
    def truncate(draw: Draw, raw: bytes) -> bytes:
        return raw[: draw(st.integers(0, len(raw) - 1))]

    @staticmethod
    def extend(draw: Draw, raw: bytes) -> bytes:
        return raw + draw(st.binary(min_size=1, max_size=32))

    @staticmethod
    def splice(draw: Draw, raw: bytes) -> bytes:
        a = draw(st.integers(0, len(raw)))
        b = draw(st.integers(a, min(len(raw), a + 8)))
        return raw[:a] + draw(st.binary(max_size=8)) + raw[b:]

    def restructure(self, draw: Draw, raw: bytes) -> bytes:
        """Decode generically, then retype, remove, add or nest one node, or change the op."""
        obj = msgspec.msgpack.decode(raw)
        where = draw(st.sampled_from(paths(obj)))
        kind = draw(st.sampled_from(["retype", "remove", "add", "tag", "nest"]))
        if kind == "tag":
            assert isinstance(obj, dict)
            obj["op"] = draw(st.sampled_from(TAGS) | st.text(max_size=12) | self.any_value)
            return msgspec.msgpack.encode(obj)
        if kind == "add":
            target = get_at(obj, where)
            if isinstance(target, dict):
                target[draw(st.text(max_size=8) | self.ints)] = draw(self.any_value)
            elif isinstance(target, list):
                target.append(draw(self.any_value))
            else:
                obj = [obj, target]
            return msgspec.msgpack.encode(obj)
        if kind == "nest":
            # Built as bytes: msgspec cannot encode what it must refuse to decode.
            deep = nested_bytes(get_at(obj, where), draw(NESTING))
            if not where:
                return deep
            get_at(obj, where[:-1])[where[-1]] = _HOLE
            return msgspec.msgpack.encode(obj).replace(msgspec.msgpack.encode(_HOLE), deep, 1)
        new = draw(self.any_value) if kind == "retype" else None
        if not where:
            return msgspec.msgpack.encode(new)
        parent = get_at(obj, where[:-1])
        if kind == "remove":
            del parent[where[-1]]
        else:
            parent[where[-1]] = new
        return msgspec.msgpack.encode(obj)

    def random_bytes(self, max_size: int = 300) -> st.SearchStrategy[bytes]:
        return st.binary(max_size=max_size)

    @staticmethod
    def oversized(limit: int) -> st.SearchStrategy[bytes]:
        """A frame just over ``limit`` bytes (random content, cheap to draw)."""
        return st.tuples(st.integers(limit + 1, limit + 512), st.integers(0, 2**32)).map(
            lambda a: random.Random(a[1]).randbytes(a[0]))


Path = tuple[Any, ...]


def paths(obj: Any, here: Path = ()) -> list[Path]:
    """Every node of a decoded frame, by its path of keys and indexes."""
    out = [here]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, (*here, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, (*here, i))
    return out


def get_at(obj: Any, path: Path) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def nested_bytes(value: Any, kinds: list[bool]) -> bytes:
    """msgpack of ``value`` wrapped in one list (True) or map (False) per item of ``kinds``."""
    heads = b"".join(b"\x91" if as_list else b"\x81\xa1n" for as_list in reversed(kinds))
    return heads + msgspec.msgpack.encode(value)
