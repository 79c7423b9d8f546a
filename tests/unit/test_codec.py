"""Unit tests of cereal.codec: what can be stored as JSON, and how refusals are worded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cereal.codec import MAX_NAME_LENGTH, check_name, encode, try_encode
from cereal.errors import CerealError, InvalidNameError, SerializationError


def nested(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


# --- accepted values --------------------------------------------------------------------------


def test_none_encodes_to_sql_null() -> None:
    assert encode(None) is None


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        2**100,
        1.5,
        "",
        "snowman \u2603 and \U0001f600",
        True,
        [1, "two", None, [3.25]],
        {"a": {"b": [None, {"c": "d"}]}},
    ],
)
def test_json_values_round_trip(value: Any) -> None:
    text = encode(value)
    assert text is not None
    assert json.loads(text) == value


def test_unicode_is_kept_unescaped() -> None:
    assert encode("\u00e9\u2603") == '"\u00e9\u2603"'


def test_tuples_encode_as_lists_like_json_dumps() -> None:
    assert encode((1, 2)) == "[1,2]"


@pytest.mark.parametrize(
    "value",
    [
        "\\u0000",  # a backslash followed by the text u0000
        "\\\\u0000",  # two backslashes, then u0000
        "a\\u0000b\\u0000",
        {"key \\u0000": "value"},
        ["\\u00000"],
    ],
)
def test_escaped_backslash_that_looks_like_nul_escape_is_accepted(value: Any) -> None:
    text = encode(value)
    assert text is not None
    assert json.loads(text) == value


def test_deep_but_reasonable_nesting_is_accepted() -> None:
    text = encode(nested(200))
    assert text is not None
    assert text.count("[") == 201


# --- refused values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), [1.0, float("nan")], {"x": float("inf")}],
)
def test_nan_and_infinity_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError, match="NaN and Infinity are not valid JSON"):
        encode(value)


@pytest.mark.parametrize("value", ["a\x00b", ["\x00"], {"k": "\x00"}, {"\x00": 1}, "\\\x00"])
def test_nul_characters_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError, match="NUL character"):
        encode(value)


@pytest.mark.parametrize("value", ["\ud800", ["ok", "\udfff"], {"\udc80": 1}])
def test_lone_surrogates_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError, match="not valid Unicode"):
        encode(value)


def test_excessive_nesting_is_refused() -> None:
    with pytest.raises(SerializationError, match="nested too deeply"):
        encode(nested(100_000))


def test_circular_reference_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="Circular reference"):
        encode(loop)


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), (b"bytes", "bytes"), (object(), "object"), ({"k": frozenset()}, "frozenset")],
)
def test_non_json_types_are_refused_with_the_type_named(value: Any, type_name: str) -> None:
    with pytest.raises(SerializationError, match=f"Object of type {type_name} is not JSON"):
        encode(value)


def test_refusal_names_what_was_being_encoded() -> None:
    with pytest.raises(SerializationError, match=r"^payload of 'wf' is not JSON-serialisable"):
        encode({1, 2}, "payload of 'wf'")


def test_serialization_error_is_a_cereal_error_and_a_type_error() -> None:
    with pytest.raises(SerializationError) as info:
        encode({1})
    assert isinstance(info.value, CerealError)
    assert isinstance(info.value, TypeError)


def test_try_encode_returns_text_or_message() -> None:
    assert try_encode({"a": 1}, "result") == ('{"a":1}', None)
    text, err = try_encode(float("nan"), "result")
    assert text is None
    assert err == "result is not JSON-serialisable: NaN and Infinity are not valid JSON"


# --- names ------------------------------------------------------------------------------------


def test_valid_names_are_returned_unchanged() -> None:
    for name in ("a", "with space", "\u2603", "x" * MAX_NAME_LENGTH):
        assert check_name("workflow_name", name) == name


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must not be empty"),
        (None, "must be a str, got NoneType"),
        (42, "must be a str, got int"),
        (b"bytes", "must be a str, got bytes"),
        ("x" * (MAX_NAME_LENGTH + 1), f"the limit is {MAX_NAME_LENGTH}"),
        ("a\x00b", "NUL"),
        ("\ud800", "not valid Unicode"),
    ],
)
def test_bad_names_are_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidNameError, match=message) as info:
        check_name("instance_name", value)
    assert str(info.value).startswith("instance_name")
    assert isinstance(info.value, CerealError)
