"""No token reaches a log line, whoever logs it (aiohttp quotes raw headers in its errors)."""

from __future__ import annotations

import logging

from hakuriver.cli.common import setup_service_logging


def test_a_bearer_token_in_any_log_record_is_redacted(tmp_path) -> None:
    log_file = tmp_path / "service.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_service_logging(False, str(log_file))
        logging.getLogger("aiohttp.server").error(
            "Error handling request: Invalid header value char: b'Authorization: Bearer s3cr3t-token\\x00'"
        )
        logging.getLogger("hakuriver.test").warning("sent %s", "Authorization: bearer other-secret")
        try:
            raise ValueError("header was Bearer in-a-traceback")
        except ValueError:
            logging.getLogger("hakuriver.test").exception("failed")
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    text = log_file.read_text()
    assert "s3cr3t-token" not in text and "other-secret" not in text and "in-a-traceback" not in text
    # two messages, and the traceback twice (its source line and the exception)
    assert text.count("Bearer <redacted>") + text.count("bearer <redacted>") == 4
