"""The login limiter's window, on a fake clock."""

from __future__ import annotations

from web.ratelimit import Limit, LoginLimiter


def test_limits_slide_and_a_success_clears_the_username() -> None:
    now = [1000.0]
    limiter = LoginLimiter(Limit(3, 60), Limit(5, 60), clock=lambda: now[0])
    for _ in range(3):
        assert limiter.blocked("Alice", "10.0.0.1") is None
        limiter.failed("Alice", "10.0.0.1")
    assert limiter.blocked("alice", "10.0.0.9") == 60  # per username (any case), from any address
    now[0] += 30
    assert limiter.blocked("alice", "10.0.0.9") == 30
    now[0] += 31
    assert limiter.blocked("alice", "10.0.0.9") is None
    for name in ("bob", "carol", "dave", "erin"):  # the earlier failures of 10.0.0.1 are out of the window
        limiter.failed(name, "10.0.0.1")
    assert limiter.blocked("frank", "10.0.0.1") is None
    limiter.failed("grace", "10.0.0.1")
    assert limiter.blocked("frank", "10.0.0.1") == 60  # 5 failures from that address within the window
    limiter.failed("erin", "10.0.0.2")
    limiter.failed("erin", "10.0.0.2")
    limiter.succeeded("erin")
    limiter.failed("erin", "10.0.0.3")
    assert limiter.blocked("erin", "10.0.0.4") is None
