"""Output from a guest is bounded: the head and tail are kept, with a note saying how much was cut."""

from labkit.guest.result import BoundedBuffer, Result


def test_small_output_is_kept_whole() -> None:
    buffer = BoundedBuffer(limit=100)
    buffer.write(b"hello ")
    buffer.write(b"world")
    assert buffer.getvalue() == b"hello world"
    assert not buffer.truncated


def test_large_output_keeps_head_and_tail() -> None:
    buffer = BoundedBuffer(limit=20)
    for chunk in (b"A" * 15, b"B" * 1000, b"C" * 15):
        buffer.write(chunk)
    value = buffer.getvalue()
    assert buffer.truncated
    assert value.startswith(b"A" * 10)
    assert value.endswith(b"C" * 10)
    assert b"labkit cut 1010 bytes" in value


def test_invalid_utf8_is_shown_not_raised() -> None:
    result = Result(0, b"ok \xff\xfe", b"", 0.1, "ssh")
    assert result.out == "ok \ufffd\ufffd"
