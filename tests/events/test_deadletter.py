from streaming.events.deadletter import DeadLetter


def test_headers_carry_origin_stage_and_reason() -> None:
    dl = DeadLetter(b"k", b"\xff", "events", 2, 41, 1234, "decode", "DecodeError", "empty value")
    h = dict(dl.headers())
    assert h["dlq.topic"] == b"events" and h["dlq.partition"] == b"2" and h["dlq.offset"] == b"41"
    assert h["dlq.timestamp"] == b"1234" and h["dlq.stage"] == b"decode"
    assert h["dlq.error_class"] == b"DecodeError" and h["dlq.reason"] == b"empty value"
