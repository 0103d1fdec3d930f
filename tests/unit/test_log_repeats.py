"""Repeated identical log records are written once, then once more with a count."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakuriver.cli.common import setup_service_logging
from hakuriver.logrepeats import CollapseRepeats


@pytest.fixture
def service_log(tmp_path: Path) -> Iterator[Path]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    path = tmp_path / "service.log"
    setup_service_logging(False, str(path))
    try:
        yield path
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def test_a_thousand_identical_failures_are_one_traceback_and_one_count(service_log: Path) -> None:
    log = logging.getLogger("hakuriver.test.flood")
    for i in range(1000):
        try:
            raise ConnectionResetError(f"peer {i} went away")
        except ConnectionResetError:
            log.exception("request from %s failed", f"10.0.0.{i % 250}")
    log.warning("something else")
    _flush()
    text = service_log.read_text()
    lines = text.splitlines()
    assert text.count("Traceback") == 1, text[:2000]
    failed = [line for line in lines if "request from" in line]
    assert len(failed) == 2, failed
    assert "request from 10.0.0.0 failed" in failed[0]
    assert failed[1].endswith("s)") and "(repeated 999 times in the last" in failed[1], failed[1]
    assert sum("something else" in line for line in lines) == 1
    assert len(lines) < 20, len(lines)  # one traceback's lines, the count, the other record


def test_records_that_differ_in_logger_level_template_or_exception_all_pass(service_log: Path) -> None:
    a, b = logging.getLogger("hakuriver.test.a"), logging.getLogger("hakuriver.test.b")
    a.warning("x %s", 1)
    a.warning("x %s", 2)  # same template: a repeat
    a.error("x %s", 3)  # another level
    b.warning("x %s", 4)  # another logger
    a.warning("y %s", 5)  # another template
    for exc in (ValueError("v"), KeyError("k")):
        try:
            raise exc
        except Exception:
            a.warning("z", exc_info=True)  # another exception type each
    _flush()
    text = service_log.read_text()
    for needle in ("x 1", "x 3", "x 4", "y 5", "ValueError", "KeyError", "(repeated 1 times"):
        assert needle in text, (needle, text)
    assert "x 2" not in text


def test_after_the_window_a_record_passes_again() -> None:
    now = [0.0]
    seen: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = CollapseRepeats([Sink()], window=10.0, clock=lambda: now[0])
    log = logging.getLogger("hakuriver.test.window")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        for _ in range(5):
            log.warning("tick")
        now[0] = 11.0
        log.warning("tick")
        assert seen == ["tick", "tick (repeated 4 times in the last 11 s)", "tick"]
        handler.flush()
        assert len(seen) == 3  # nothing was repeated since
    finally:
        log.removeHandler(handler)
        log.propagate = True


def test_info_records_are_events_and_all_pass() -> None:
    """Two environment versions loaded within a minute are two lines, not one."""
    seen: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = CollapseRepeats([Sink()], window=60.0, clock=lambda: 0.0)
    log = logging.getLogger("hakuriver.test.events")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        for version in (1, 2, 3):
            log.info("environment %s: loading tarball (version %d)", "env", version)
        assert seen == [f"environment env: loading tarball (version {v})" for v in (1, 2, 3)]
    finally:
        log.removeHandler(handler)
        log.propagate = True
