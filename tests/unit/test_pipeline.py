"""When a `.put()` loop's buffered puts are sent (the rule alone; test_puts runs it on Ray)."""

import pytest

from raybeam.connection import MAX_SEND_DELAY, SEND_DELAY, send_at

pytestmark = pytest.mark.timeout(10)


def test_a_lone_put_goes_once_no_other_follows() -> None:
    assert send_at(10.0, 10.0) == pytest.approx(10.0 + SEND_DELAY)


def test_a_pause_sends_what_the_loop_put() -> None:
    assert send_at(10.0, 10.005) == pytest.approx(10.005 + SEND_DELAY)


def test_a_loop_that_keeps_putting_is_sent_by_the_oldest_put() -> None:
    """Puts 10 µs apart: the batch waits past each newest put, but not past its oldest's
    limit."""
    oldest = 10.0
    newest = oldest + 0.05  # 5,000 puts later, still arriving
    assert send_at(oldest, newest) == pytest.approx(oldest + MAX_SEND_DELAY)
    assert SEND_DELAY < MAX_SEND_DELAY
