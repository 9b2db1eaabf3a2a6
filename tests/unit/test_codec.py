"""tidewater.codec: what a function app's caller sends is what the function gets.

Round trips of nested values with numpy arrays of many dtypes and shapes come
back equal (arrays bit for bit, with dtype and shape); whatever the codec
cannot carry is refused with a CodecError naming it and where it sat; and
whatever bytes arrive, decoding gives a value or a CodecError, nothing else.
"""

from __future__ import annotations

import collections
import datetime
import enum
import math
from typing import Any, NamedTuple

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tidewater import codec
from tidewater.codec import CodecError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(min_len=1, max_len=8),
    hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=8),
    hnp.array_dtypes(
        subtype_strategy=hnp.scalar_dtypes(), min_size=1, max_size=4, allow_subarrays=True
    ),
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
ARRAYS = DTYPES.flatmap(lambda dt: hnp.arrays(dt, SHAPES))
INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = st.one_of(
    st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=20), st.binary(max_size=20)
)
KEYS = st.one_of(st.text(max_size=10), INTS, st.binary(max_size=10), st.booleans(), st.none())
VALUES = st.recursive(
    st.one_of(SCALARS, ARRAYS),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(KEYS, children, max_size=4),
    ),
    max_leaves=12,
)


def same(sent: Any, got: Any) -> bool:
    """Equal as the codec promises: tuples arrive as lists, arrays bit for bit."""
    if isinstance(sent, np.ndarray):
        return (
            type(got) is np.ndarray
            and got.dtype == sent.dtype
            and got.shape == sent.shape
            and got.tobytes() == sent.tobytes()
        )
    if isinstance(sent, (list, tuple)):
        return type(got) is list and len(got) == len(sent) and all(map(same, sent, got))
    if isinstance(sent, dict):
        return (
            type(got) is dict
            and list(got) == list(sent)
            and all(same(sent[k], got[k]) for k in sent)
        )
    if isinstance(sent, float) and math.isnan(sent):
        return isinstance(got, float) and math.isnan(got)
    return type(got) is type(sent) and got == sent


# --------------------------------------------------------------------------- round trips


@FAST
@given(VALUES)
def test_nested_values_round_trip(value: Any) -> None:
    assert same(value, codec.decode(codec.encode(value)))


@FAST
@given(ARRAYS)
def test_arrays_round_trip_writable_and_independent(arr: np.ndarray[Any, Any]) -> None:
    data = codec.encode(arr)
    got = codec.decode(data)
    assert same(arr, got)
    assert got.flags.writeable and got.flags.c_contiguous and got.flags.aligned
    if got.size:
        got.reshape(-1).view(np.uint8)[:] = 0  # changing it changes neither the bytes nor `arr`
        assert same(arr, codec.decode(data))


@FAST
@given(
    st.lists(st.one_of(SCALARS, ARRAYS), max_size=4), st.dictionaries(st.text(), VALUES, max_size=3)
)
def test_calls_round_trip(args: list[Any], kwargs: dict[str, Any]) -> None:
    got_args, got_kwargs = codec.decode_call(codec.encode_call(tuple(args), kwargs))
    assert same(args, got_args)
    assert same(kwargs, got_kwargs)


@pytest.mark.parametrize(
    "arr",
    [
        pytest.param(np.array(2.5), id="0-d"),
        pytest.param(np.zeros((0, 3), dtype=">i2"), id="empty"),
        pytest.param(np.zeros((3, 0, 2), dtype=np.float32), id="empty-middle"),
        pytest.param(np.arange(12, dtype=">f8").reshape(3, 4), id="big-endian"),
        pytest.param(np.asfortranarray(np.arange(6.0).reshape(2, 3)), id="fortran"),
        pytest.param(np.arange(20)[::3], id="strided"),
        pytest.param(np.array(["a", "bcd"]), id="unicode"),
        pytest.param(np.array([b"x", b"yz"]), id="bytes"),
        pytest.param(np.array(["2024-01-01", "NaT"], dtype="M8[ns]"), id="datetime-nat"),
        pytest.param(np.array([1 + 2j, np.nan]), id="complex"),
        pytest.param(np.zeros(4, dtype="V3"), id="void"),
        pytest.param(np.zeros(2, dtype="V0"), id="void-0"),
        pytest.param(
            np.zeros(
                3,
                dtype=np.dtype(
                    {
                        "names": ["a", "b"],
                        "formats": ["<i4", (">f8", (2, 3))],
                        "offsets": [0, 8],
                        "itemsize": 64,
                    }
                ),
            ),
            id="structured-padded",
        ),
        pytest.param(
            np.zeros(2, dtype=[("p", [("x", "<f4"), ("y", "<f4")]), ("n", "u1")]),
            id="structured-nested",
        ),
        pytest.param(np.zeros(2, dtype=[(("Title", "t"), "<i4")]), id="structured-titles"),
        pytest.param(np.arange(1_000_000, dtype=np.float64), id="8MB"),
    ],
)
def test_array_edge_cases_round_trip(arr: np.ndarray[Any, Any]) -> None:
    assert same(arr, codec.decode(codec.encode(arr)))  # same() compares C-order bytes


def test_array_with_dtype_metadata_is_sent_without_it() -> None:
    arr = np.arange(3, dtype=np.dtype("f8", metadata={"unit": "m"}))
    got = codec.decode(codec.encode(arr))  # no warning (warnings are errors here)
    assert got.dtype == np.float64 and got.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        (np.float32(1.5), 1.5),
        (np.float64(-0.25), -0.25),
        (np.int8(-3), -3),
        (np.uint64(2**64 - 1), 2**64 - 1),
        (np.bool_(True), True),
        (np.str_("hé"), "hé"),
        (np.bytes_(b"ab"), b"ab"),
    ],
)
def test_numpy_scalars_arrive_as_python_scalars(scalar: np.generic, expected: object) -> None:
    got = codec.decode(codec.encode({"k": [scalar], scalar: 1}))
    assert got == {"k": [expected], expected: 1}
    assert type(got["k"][0]) is type(expected)


@FAST
@given(
    hnp.from_dtype(np.dtype("f8")) | hnp.from_dtype(np.dtype("i8")) | hnp.from_dtype(np.dtype("u2"))
)
def test_numpy_scalar_values(scalar: np.generic) -> None:
    assert same(scalar.item(), codec.decode(codec.encode(scalar)))


class Colour(enum.IntEnum):
    RED = 1


class Word(str, enum.Enum):  # noqa: UP042 - str() of it is "Word.HELLO", not its value
    HELLO = "hello"


class Point(NamedTuple):
    x: int
    y: float


def test_subclasses_of_builtins_arrive_as_builtins() -> None:
    value = collections.OrderedDict(
        [("c", Colour.RED), ("w", Word.HELLO), ("p", Point(1, 2.0)), (Colour.RED, "key")]
    )
    got = codec.decode(codec.encode(value))
    assert got == {"c": 1, "w": "hello", "p": [1, 2.0], 1: "key"}
    assert type(got) is dict and type(got["c"]) is int and type(got["w"]) is str


# --------------------------------------------------------------------------- refusals


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({1, 2}, "set"),
        (frozenset(), "frozenset"),
        (1j, "complex"),
        (datetime.datetime(2024, 1, 1), "datetime.datetime"),
        (Opaque(), "Opaque"),
        (len, "builtin_function_or_method"),
        (2**64, "18446744073709551616"),
        (-(2**63) - 1, "-9223372036854775809"),
        (np.array([object()]), "dtype object"),
        (np.zeros(2, dtype=[("a", "i4"), ("b", "O")]), "dtype [('a', '<i4'), ('b', 'O')]"),
        (np.ma.array([1, 2], mask=[False, True]), "MaskedArray"),
        (np.datetime64("2024-01-01"), "datetime64"),
        (np.complex128(1j), "complex128"),
        ({(1, 2): "tuple key"}, "dict key of type tuple"),
        (bytearray(b"x"), "bytearray"),
    ],
)
def test_unencodable_values_are_refused_by_name(value: object, named: str) -> None:
    with pytest.raises(CodecError, match="cannot encode") as info:
        codec.encode([value])
    assert named in str(info.value)
    assert "at value[0]" in str(info.value)


def test_string_dtype_arrays_are_refused() -> None:
    string_dtype = getattr(np.dtypes, "StringDType", None)
    if string_dtype is None:
        pytest.skip("numpy < 2 has no StringDType")
    with pytest.raises(CodecError, match="StringDType"):
        codec.encode(np.array(["a"], dtype=string_dtype()))


def test_refusal_says_where() -> None:
    with pytest.raises(CodecError, match=r"at value\['a'\]\[1\]\[0\]"):
        codec.encode({"a": [1, [{2}]]})
    with pytest.raises(CodecError, match=r"at args\[1\]"):
        codec.encode_call((1, object()), {})
    with pytest.raises(CodecError, match=r"at kwargs\['k'\]"):
        codec.encode_call((), {"k": {3}})
    with pytest.raises(CodecError, match="keyword argument names must be str"):
        codec.encode_call((), {1: 2})  # type: ignore[dict-item]


def test_cycles_and_deep_nesting_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CodecError, match="nested deeper than 256") as info:
        codec.encode(loop)
    assert len(str(info.value)) < 400
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(CodecError, match="nested deeper"):
        codec.encode(deep)
    with pytest.raises(CodecError, match="nested deeper"):
        codec.decode(b"\x91" * 300 + b"\xc0")
    with pytest.raises(CodecError):
        codec.decode(b"\x91" * 100_000 + b"\xc0")


# --------------------------------------------------------------------------- hostile bytes


def ext(payload: object, code: int = codec.NDARRAY_EXT) -> bytes:
    data = payload if isinstance(payload, bytes) else msgspec.msgpack.encode(payload)
    return msgspec.msgpack.encode(msgspec.msgpack.Ext(code, data))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "truncated"),
        (b"\xc1", "malformed"),
        (b"\x92\x01", "truncated"),
        (msgspec.msgpack.encode([1]) + b"\x00", "trailing"),
        (ext(b"", code=7), "unknown msgpack extension type 7"),
        (msgspec.msgpack.encode(datetime.datetime.now(datetime.UTC)), "datetime"),
        (ext(b"\xc1"), "array payload"),
        (ext(["<f8", [2]]), "array payload"),
        (ext(["<f8", [2], "not bytes"]), "array payload"),
        (ext(["<f8", [True], b"12345678"]), "array payload"),
        (ext(["<f8", [2], b"12345678"]), "needs 16 bytes"),
        (ext(["<f8", [-1], b""]), "shape"),
        (ext(["<f8", [1] * 65, b"12345678"]), "shape"),
        (ext(["|V0", [2**40, 2**40], b""]), "more than 2**62"),
        (ext(["O", [1], b"12345678"]), "object"),
        (ext([[["a", "<i4"], ["b", "O"]], [1], b"\x00" * 16]), "object"),
        (ext([[["a", "<i4", [-1]]], [1], b""]), "field shape"),
        (ext([[["a"]], [1], b""]), "field must be"),
        (ext([[[1, "<i4"]], [1], b"\x00" * 4]), "field name"),
        (ext([{"a": 1}, [1], b""]), "dtype must be"),
        (ext(["not a dtype", [1], b""]), "array dtype"),
        (ext(["(2,)f8", [1], b"\x00" * 16]), "subarray"),
        (ext(["|S0", [], b""]), "not the dtype of any array"),
        (ext(["T", [1], b"\x00" * 16]), "dtype"),
        (b"\x81" + ext(["<f8", [], b"\x00" * 8]) + b"\x01", "malformed"),  # an array as a key
        (b"\x81\x91\x01\x01", "map key of type tuple"),  # a list as a key
    ],
)
def test_malformed_bytes_raise_codec_error(data: bytes, says: str) -> None:
    with pytest.raises(CodecError) as info:
        codec.decode(data)
    assert says in str(info.value)


@FAST
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except CodecError:
        pass


@FAST
@given(VALUES, st.data())
def test_damaged_encodings_decode_or_raise_codec_error(value: Any, data: st.DataObject) -> None:
    raw = bytearray(codec.encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and where < len(raw):
            raw[where] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del raw[where:]
        else:
            raw[where:where] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        codec.decode(bytes(raw))
    except CodecError:
        pass


DESCRS = st.recursive(
    st.sampled_from(
        ["<f8", ">i4", "|u1", "O", "T", "<U3", "|S0", "|V0", "M8[s]", "i4,O", "?", "<c16"]
    )
    | st.text(max_size=8),
    lambda inner: st.lists(
        st.tuples(st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3), inner).map(list)
        | st.tuples(st.text(max_size=3), inner, st.lists(st.integers(-2, 3), max_size=3)).map(list),
        max_size=3,
    ),
    max_leaves=5,
)


@FAST
@given(
    DESCRS,
    st.lists(st.integers(-(2**63), 2**64 - 1) | st.integers(-1, 4), max_size=5),
    st.binary(max_size=64),
)
def test_crafted_array_payloads_decode_or_raise_codec_error(
    descr: object, shape: list[int], raw: bytes
) -> None:
    try:
        got = codec.decode(ext([descr, shape, raw]))
    except CodecError:
        return
    assert isinstance(got, np.ndarray) and not got.dtype.hasobject
    assert got.nbytes == len(raw) and list(got.shape) == shape


# --------------------------------------------------------------------------- calls and paths


def test_empty_call_data_is_a_call_without_arguments() -> None:
    assert codec.decode_call(b"") == ([], {})


@pytest.mark.parametrize("value", [[1, 2], [[1], {}, 3], [{}, []], {"args": []}, [[], {1: 2}], 5])
def test_decode_call_refuses_what_is_not_a_call(value: object) -> None:
    with pytest.raises(CodecError, match="call|keyword"):
        codec.decode_call(codec.encode(value))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("mypkg.analysis:integrate", ("mypkg.analysis", "integrate")),
        ("m:f", ("m", "f")),
        ("_p.q2:Class.method", ("_p.q2", "Class.method")),
    ],
)
def test_valid_import_paths(path: str, expected: tuple[str, str]) -> None:
    assert codec.check_import_path(path) == expected


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("mypkg.analysis", "no ':'"),
        ("", "no ':'"),
        (":f", "invalid module"),
        (".rel:f", "invalid module"),
        ("a..b:f", "invalid module"),
        ("a.:f", "invalid module"),
        ("a b:f", "invalid module"),
        ("a:f g", "invalid function name"),
        ("a: f", "invalid function name"),
        ("a:f:g", "invalid function name"),
        ("a:A.b.c", "invalid function name"),
        ("a:", "invalid function name"),
        ("a:1f", "invalid function name"),
        ("a-b:f", "invalid module"),
        ("os:system()", "invalid function name"),
        ("a:lambda", "keyword"),
        ("class.x:f", "keyword"),
        ("é:f", "invalid module"),
        ("a:" + "f" * 600, "longer than 512"),
    ],
)
def test_invalid_import_paths(path: str, says: str) -> None:
    with pytest.raises(ValueError) as info:  # noqa: PT011 - the message is checked below
        codec.check_import_path(path)
    assert says in str(info.value)
