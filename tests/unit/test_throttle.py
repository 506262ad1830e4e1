"""AUTH guessing limits per client address and per account (gateway.server.throttle)."""

from __future__ import annotations

from gateway.server.throttle import AuthThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_address_is_locked_after_max_failures_then_released() -> None:
    clock = Clock()
    t = AuthThrottle(3, window=60, lockout=300, clock=clock)
    assert not t.failure("10.0.0.1", "a@x") and not t.failure("10.0.0.1", "b@x")
    assert t.failure("10.0.0.1", "c@x")                    # third guess from one address
    assert t.locked("10.0.0.1", "anyone@x")                # even for another account
    assert not t.locked("10.0.0.2", "d@x")
    clock.now += 301
    assert not t.locked("10.0.0.1", "a@x")


def test_account_is_locked_against_guesses_from_many_addresses() -> None:
    t = AuthThrottle(3, window=60, lockout=300, clock=Clock())
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        t.failure(ip, "Lab@X")
    assert t.locked("192.0.2.9", "lab@x")                  # a fresh address gets nowhere either


def test_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    t = AuthThrottle(3, window=60, lockout=300, clock=clock)
    t.failure("10.0.0.1", "a@x")
    t.failure("10.0.0.1", "a@x")
    clock.now += 61
    assert not t.failure("10.0.0.1", "a@x")
    assert not t.locked("10.0.0.1", "a@x")


def test_success_clears_the_account_not_the_address() -> None:
    t = AuthThrottle(3, window=60, lockout=300, clock=Clock())
    t.failure("10.0.0.1", "a@x")
    t.failure("10.0.0.1", "a@x")
    t.success("a@x")
    assert not t.failure("10.0.0.2", "a@x")                # the account starts again at one
    assert t.failure("10.0.0.1", "b@x")                    # the address still has its two, +1


def test_memory_is_bounded_when_addresses_cycle() -> None:
    t = AuthThrottle(5, window=60, lockout=300, clock=Clock(), max_entries=100)
    for i in range(5000):
        t.failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"user{i}@x")
    assert len(t._counters) <= 100
