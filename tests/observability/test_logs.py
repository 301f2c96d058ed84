"""The log line builders (`app.observability.logs`): pure functions, tested directly, and the
writer thread with a real stream."""

from __future__ import annotations

import io
import json
import logging
import math
import threading
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from app.observability.logs import (
    REDACTOR,
    LineFormat,
    LineTemplate,
    LineWriter,
    json_object,
    request_id,
)
from tests.observability.conftest import LogCapture

SCALARS = (
    st.text()
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.none()
    | st.lists(st.integers(), max_size=3)
)


@given(st.dictionaries(st.text(), SCALARS, max_size=8))
def test_json_object_is_json_dumps_text(fields: dict[str, Any]) -> None:
    """Byte for byte what json.dumps writes, NaN, infinities and non-ASCII included."""
    assert json_object(fields) == json.dumps(fields, default=str, separators=(",", ":"))


@given(
    st.text(max_size=20),
    st.integers() | st.floats(allow_nan=False) | st.text(max_size=10) | st.none(),
    st.sampled_from([None, "req-1", 'odd"id\\']),
    st.floats(min_value=0, max_value=4e9),
)
def test_a_template_line_is_the_line_log_event_writes(
    caller: str, value: Any, rid: str | None, created: float
) -> None:
    """LineFormat.templated with a template gives LineFormat.line's text for the same event."""
    line_format = LineFormat(as_json=True)
    fields = {"method": "GET", "status": 200, "latency_ms": value, "caller": caller}
    parts = line_format.template("app.http", logging.INFO, "http.request", fields, "latency_ms")
    token = request_id.set(rid)
    try:
        templated = line_format.templated(parts, value, created)
        direct = line_format.line("app.http", logging.INFO, "http.request", fields, created)
    finally:
        request_id.reset(token)
    assert templated == direct
    assert json.loads(templated)["latency_ms"] == value or (
        isinstance(value, float) and math.isnan(value)
    )


def test_template_lines_are_scrubbed_like_every_line(logs: LogCapture) -> None:
    """A registered secret in a template's fixed field or its value never reaches the stream."""
    logs.start("info")
    REDACTOR.add_secret("template-secret-0001")
    line = LineTemplate(
        logging.getLogger("app.test"),
        logging.INFO,
        "test.event",
        "n",
        who="template-secret-0001",
        n=None,
    )
    line.log("template-secret-0001")
    _, lines = logs.read()
    (written,) = [entry for entry in lines if entry["event"] == "test.event"]
    assert written["who"] == written["n"] == "[redacted]"


def test_a_template_follows_the_level(logs: LogCapture) -> None:
    """Below the configured level nothing is written; at it, one line."""
    logs.start("warning")
    line = LineTemplate(logging.getLogger("app.test"), logging.INFO, "quiet.event", "n", n=0)
    line.log(1)
    assert not [e for e in logs.read()[1] if e["event"] == "quiet.event"]
    logs.start("info")
    line.log(2)
    assert [e["n"] for e in logs.read()[1] if e["event"] == "quiet.event"] == [2]


def test_the_writer_keeps_order_across_threads_and_flushes_everything() -> None:
    """Lines put from several threads all arrive, each thread's in its order; close() writes
    what is still queued."""
    stream = io.StringIO()
    writer = LineWriter(stream, lambda n: f"dropped {n}")
    threads = [
        threading.Thread(target=lambda t=t: [writer.put(f"{t} {i}") for i in range(2000)])
        for t in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 8000
    for t in range(4):
        assert [int(line.split()[1]) for line in lines if line.startswith(f"{t} ")] == list(
            range(2000)
        )


class _Stuck(io.StringIO):
    """A stream whose writes block until released: a full pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def test_a_blocked_stream_drops_lines_beyond_the_bound_and_says_how_many() -> None:
    """put() never waits for the stream: past `max_held` queued lines it drops and counts, and
    the count is written once the stream moves again."""
    stream = _Stuck()
    writer = LineWriter(stream, lambda n: f"dropped {n}", batch=1, max_held=100)
    writer.put("first")  # the thread takes it and blocks in write()
    for _ in range(50):
        if not writer._lines:  # wait until the thread holds "first"
            break
        threading.Event().wait(0.01)
    for i in range(150):
        writer.put(f"line {i}")
    stream.release.set()
    writer.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "first"
    assert lines[1:101] == [f"line {i}" for i in range(100)]
    assert lines[101:] == ["dropped 50"]


def test_lines_of_other_libraries_share_the_format(logs: LogCapture) -> None:
    """A plain logging call (uvicorn's, httpx's) goes through the same format and writer."""
    logs.start("info")
    logging.getLogger("uvicorn.error").warning("plain %s", "message")
    entries = [e for e in logs.read()[1] if e.get("logger") == "uvicorn.error"]
    assert entries and entries[-1]["event"] == "plain message"
    assert entries[-1]["level"] == "warning"
