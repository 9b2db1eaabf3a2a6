"""--log-format json: one object per line, exceptions included."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tidewater.logs import configure


def test_json_lines_with_exception() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure("json", logging.INFO, stream)
        log = logging.getLogger("tidewater.test")
        log.info("hello %s", "wörld\nnext")
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("it failed")
        log.debug("not shown")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [(x["level"], x["logger"], x["message"]) for x in lines] == [
        ("INFO", "tidewater.test", "hello wörld\nnext"), ("ERROR", "tidewater.test", "it failed")]
    assert "ValueError: bad" in lines[1]["exception"] and "exception" not in lines[0]
    assert lines[0]["time"].endswith("+00:00")


def test_unknown_format_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        configure("xml", logging.INFO)
