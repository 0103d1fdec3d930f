"""hakuriver.host.fairshare: decayed usage per user, kept in step with the ledger."""

from __future__ import annotations

import dataclasses
import math

import hypothesis
import pytest
from hypothesis import strategies as st

from hakuriver.config import config_from_dict
from hakuriver.errors import ConfigError
from hakuriver.host.fairshare import FairShare, span_usage
from hakuriver.host.scheduler import Ledger

from .test_scheduler import running

HOUR = 3600.0


def owned_running(task_id: int, owner: str, cores: int = 1, gpus: list[int] | None = None, at: float = 0.0):
    t = running(task_id, "n1", cores=cores, gpus=gpus)
    return dataclasses.replace(t, owner=owner, assigned_at=at)


def test_span_usage_is_the_decayed_integral():
    # An hour of 1 core ending now, half-life an hour: integral of 2^-(x/h) over one h = h/(2 ln 2).
    assert span_usage(1.0, 0.0, HOUR, HOUR, HOUR) == pytest.approx(HOUR / (2 * math.log(2)))
    # The same hour seen one half-life later counts half.
    assert span_usage(1.0, 0.0, HOUR, 2 * HOUR, HOUR) == pytest.approx(span_usage(1.0, 0.0, HOUR, HOUR, HOUR) / 2)
    assert span_usage(4.0, 10.0, 10.0, 20.0, HOUR) == 0.0  # no time held: nothing used
    # With a long half-life usage is (almost) plain core-seconds.
    assert span_usage(2.0, 0.0, 60.0, 60.0, 1e9) == pytest.approx(120.0, rel=1e-6)


def test_sync_follows_the_ledger_and_folds_ended_tasks():
    fs = FairShare(half_life=HOUR, gpu_weight=10)
    ledger = Ledger()
    ledger.hold(owned_running(1, "alice", cores=2))
    ledger.hold(owned_running(2, "bob", cores=1, gpus=[0]))
    fs.sync(ledger.holds(), now=0.0)
    assert fs.snapshot(0.0) == {"alice": 0.0, "bob": 0.0}
    later = fs.snapshot(HOUR)
    assert later["alice"] == pytest.approx(span_usage(2, 0, HOUR, HOUR, HOUR))
    assert later["bob"] == pytest.approx(span_usage(11, 0, HOUR, HOUR, HOUR))  # 1 core + 10 x 1 GPU

    ledger.release(1)
    fs.sync(ledger.holds(), now=HOUR)  # alice's task ended: folded, no longer accruing
    assert fs.snapshot(HOUR)["alice"] == pytest.approx(later["alice"])
    assert fs.snapshot(2 * HOUR)["alice"] == pytest.approx(later["alice"] / 2)  # one half-life later: half
    assert fs.snapshot(2 * HOUR)["bob"] > later["bob"]  # still running: still accruing


def test_rebuild_from_stored_spans_equals_what_sync_kept():
    kept = FairShare(half_life=HOUR)
    ledger = Ledger()
    ledger.hold(owned_running(1, "alice", cores=3))
    kept.sync(ledger.holds(), now=100.0)
    ledger.release(1)
    kept.sync(ledger.holds(), now=100.0 + HOUR)
    ledger.hold(owned_running(2, "alice", cores=1, at=200.0 + HOUR))
    kept.sync(ledger.holds(), now=200.0 + HOUR)

    rebuilt = FairShare(half_life=HOUR)
    rebuilt.rebuild(
        [("alice", 3, 0, 100.0, 100.0 + HOUR)], [owned_running(2, "alice", cores=1, at=200.0 + HOUR)], 300.0 + HOUR
    )
    now = 5 * HOUR
    assert rebuilt.snapshot(now)["alice"] == pytest.approx(kept.snapshot(now)["alice"])


def test_half_life_zero_turns_fair_share_off():
    fs = FairShare(half_life=0)
    ledger = Ledger.from_tasks([owned_running(1, "alice", cores=8)])
    fs.sync(ledger.holds(), now=0.0)
    fs.rebuild([("alice", 8, 0, 0.0, HOUR)], [], HOUR)
    assert not fs.enabled and fs.snapshot(10 * HOUR) == {}


def test_the_config_key_reads_durations_and_zero():
    assert config_from_dict({}).scheduler.half_life_seconds == 7 * 24 * 3600
    assert config_from_dict({"scheduler": {"fairshare_half_life": "12h"}}).scheduler.half_life_seconds == 12 * 3600
    assert config_from_dict({"scheduler": {"fairshare_half_life": "0"}}).scheduler.half_life_seconds == 0
    with pytest.raises(ConfigError, match="scheduler.fairshare_half_life"):
        config_from_dict({"scheduler": {"fairshare_half_life": "soon"}})
    with pytest.raises(ConfigError, match="fairshare_gpu_weight must be greater than zero"):
        config_from_dict({"scheduler": {"fairshare_gpu_weight": 0}})


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    events=st.lists(
        st.tuples(st.floats(0.0, 3 * HOUR), st.sampled_from(["alice", "bob"]), st.integers(1, 8), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_snapshot_equals_the_sum_over_holding_tasks(events: list[tuple[float, str, int, bool]]) -> None:
    """Each user's usage is kept as two running sums: over starts and ends
    spanning many half-lives (so the reference time moves), it matches the
    decayed integral of every task, ended or still holding."""
    fs = FairShare(half_life=HOUR / 4)
    ledger = Ledger()
    spans: dict[int, tuple[str, int, float, float | None]] = {}
    now = 1.8e9  # wall-clock seconds, as the Host passes them
    for task_id, (step, owner, cores, end_one) in enumerate(events, start=1):
        now += step
        holding = [t for t, (_, _, _, end) in spans.items() if end is None]
        if end_one and holding:
            ledger.release(holding[0])
            o, c, s, _ = spans[holding[0]]
            spans[holding[0]] = (o, c, s, now)
        else:
            ledger.hold(owned_running(task_id, owner, cores=cores, at=now))
            spans[task_id] = (owner, cores, now, None)
        fs.sync(ledger.holds(), now)
        expected: dict[str, float] = {}
        for o, c, s, end in spans.values():
            expected[o] = expected.get(o, 0.0) + span_usage(c, s, now if end is None else end, now, fs.half_life)
        got = fs.snapshot(now)
        for o, value in expected.items():
            assert got.get(o, 0.0) == pytest.approx(value, rel=1e-6, abs=1e-3)
