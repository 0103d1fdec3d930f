"""Task ids: `next_many` gives what as many `next` calls would, and ids never repeat."""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st

from hakuriver.ids import IdGenerator


class SteppingClock:
    """A clock a test moves: each read returns the next of `times` (the last one repeats)."""

    def __init__(self, times: list[float]):
        self.times = times

    def __call__(self) -> float:
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


@hypothesis.given(
    calls=st.lists(st.tuples(st.integers(0, 5000), st.floats(1.8e9, 1.8e9 + 0.01)), min_size=1, max_size=12)
)
def test_next_many_is_as_many_next_calls(calls: list[tuple[int, float]]) -> None:
    """Same clock, same ids: whether an array takes its ids at once or one by
    one, including past 4,096 in one millisecond and a clock that steps back."""
    for_many = IdGenerator(generator=3, clock=SteppingClock([t for _, t in calls]))
    one_by_one_times: list[float] = []
    for n, t in calls:
        one_by_one_times += [t] * max(n, 1) if n else []
    one_by_one = IdGenerator(generator=3, clock=SteppingClock(one_by_one_times or [calls[0][1]]))
    many = [i for n, _ in calls for i in for_many.next_many(n)]
    single = [one_by_one.next() for _ in range(sum(n for n, _ in calls))]
    assert many == single
    assert many == sorted(set(many))  # increasing, no repeats


def test_ids_after_next_many_keep_increasing() -> None:
    gen = IdGenerator(clock=lambda: 1.8e9)
    ids = [gen.next(), *gen.next_many(5000), gen.next(), *gen.next_many(0), gen.next()]
    assert ids == sorted(set(ids)) and len(ids) == 5003
