"""The connection limiter's arithmetic: per address, in all, a reserve for trusted Runners."""

from __future__ import annotations

from hakuriver.connlimits import TRUST_SECONDS, ConnectionLimiter, ConnectionLimits


def limiter(total: int = 32, per_address: int = 4) -> tuple[ConnectionLimiter, list[float]]:
    now = [0.0]
    limits = ConnectionLimits(max_connections=total, max_connections_per_address=per_address)
    return ConnectionLimiter(limits, clock=lambda: now[0]), now


def test_one_address_gets_its_share_and_gets_it_back_on_release() -> None:
    lim, _ = limiter()
    assert [lim.admit("10.0.0.1") for _ in range(5)] == [True] * 4 + [False]
    assert lim.admit("10.0.0.2")
    lim.release("10.0.0.1")
    assert lim.admit("10.0.0.1") and not lim.admit("10.0.0.1")
    assert lim.total == 5 and lim.refused == 2


def test_the_last_slots_are_kept_for_trusted_runners_who_have_no_per_address_limit() -> None:
    lim, now = limiter(total=32, per_address=4)  # reserve: 2 of 32
    admitted = sum(lim.admit(f"10.0.1.{i // 4}") for i in range(40))
    assert admitted == 30 and lim.total == 30
    assert not lim.admit("10.0.9.9")
    lim.trust("10.0.0.5")
    assert lim.admit("10.0.0.5") and lim.admit("10.0.0.5")  # the 2 reserved slots
    assert not lim.admit("10.0.0.5")  # the total is a hard ceiling, even for Runners
    assert lim.total == 32
    now[0] = TRUST_SECONDS + 1
    for i in range(8):
        lim.release(f"10.0.1.{i // 4}")
    assert lim.admit("10.0.0.5")  # a trusted address past its hour is an ordinary one again
    assert not lim.is_trusted("10.0.0.5")


def test_a_trusted_address_is_not_held_to_the_per_address_limit() -> None:
    lim, _ = limiter(total=64, per_address=2)
    lim.trust("10.0.0.7")
    assert all(lim.admit("10.0.0.7") for _ in range(10))
