"""When the scheduling pass after an event waits for more (`dispatch.coalesce_delay`).

A burst of submits and reports shares one pass: while the Host is busy (a pass
found tasks pending less than `PASS_QUIET_SECONDS` ago) the pass waits
`PASS_COALESCE_SECONDS` for the rest of the burst. On a quiet Host the first
event's pass runs at once, so a lone task is not held for a burst that is not
coming (it was 5 ms of every `--container NULL` task's start).
"""

from __future__ import annotations

import pytest

from hakuriver.host.dispatch import PASS_COALESCE_SECONDS, PASS_QUIET_SECONDS, coalesce_delay


@pytest.mark.parametrize(
    ("since_busy", "delay"),
    [
        (0.0, PASS_COALESCE_SECONDS),  # the pass that just ran had work: more is coming
        (PASS_QUIET_SECONDS / 2, PASS_COALESCE_SECONDS),
        (PASS_QUIET_SECONDS, 0.0),  # quiet since: this event is a burst's first, or alone
        (3600.0, 0.0),
    ],
)
def test_a_pass_waits_for_the_burst_only_while_the_host_is_busy(since_busy: float, delay: float) -> None:
    assert coalesce_delay(since_busy, 0.0) == delay


def test_a_host_that_never_had_work_is_quiet() -> None:
    assert coalesce_delay(0.0, float("-inf")) == 0.0
