"""Leases: room on a queue set aside for one client's next puts (no Ray)."""

from __future__ import annotations

from raybeam.leases import LEASE_SECONDS, Leases


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_at_most_half_the_free_room() -> None:
    leases = Leases(Clock())
    assert leases.grant("q", "a", want=64, free=40) == 20
    assert leases.grant("q", "b", want=4, free=20) == 4
    assert leases.total("q") == 24
    assert (leases.own("q", "a"), leases.own("q", "b"), leases.own("q", None)) == (20, 4, 0)
    assert leases.total("other") == 0


def test_no_room_means_no_lease() -> None:
    leases = Leases(Clock())
    assert leases.grant("q", "a", want=16, free=1) == 0
    assert leases.grant("q", "a", want=16, free=-3) == 0
    assert leases.held["q"] == {}


def test_used_slots_leave_the_lease_and_use_renews_it() -> None:
    clock = Clock()
    leases = Leases(clock)
    leases.grant("q", "a", want=10, free=100)
    clock.now += LEASE_SECONDS * 0.9
    leases.use("q", "a", 4)
    assert leases.own("q", "a") == 6
    clock.now += LEASE_SECONDS * 0.9  # past the first expiry, within the renewed one
    assert leases.total("q") == 6
    leases.grant("q", "a", want=10, free=100)
    assert leases.own("q", "a") == 16


def test_a_lease_ends_when_its_client_goes_quiet() -> None:
    clock = Clock()
    leases = Leases(clock)
    leases.grant("q", "a", want=10, free=100)
    clock.now += LEASE_SECONDS
    assert leases.total("q") == 0
    assert leases.own("q", "a") == 0
    leases.use("q", "a", 1)  # a use after the end changes nothing
    assert leases.total("q") == 0
