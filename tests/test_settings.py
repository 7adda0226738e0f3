from __future__ import annotations

import re

import pytest

from streaming.errors import ConfigError
from streaming.settings import FIELDS, PREFIX, Settings, project_root


def test_defaults_are_valid_and_low_latency() -> None:
    s = Settings.from_env({})
    assert s.consumer_fetch_max_wait_ms < 100  # not Faust's hardcoded 1500
    assert s.producer_acks == "all"
    assert s.topics == {"events": "events", "predictions": "predictions", "labels": "labels",
                        "retrain": "retrain-requests", "dlq": "events-dlq"}


def test_every_field_reads_its_variable() -> None:
    s = Settings.from_env({"STREAMING_TOPIC_EVENTS": "tx", "STREAMING_BATCH_MAX_ROWS": "64",
                           "STREAMING_CHALLENGER": "false", "STREAMING_PRODUCER_LINGER_MS": "2.5"})
    assert (s.topic_events, s.batch_max_rows, s.challenger, s.producer_linger_ms) == ("tx", 64, False, 2.5)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("STREAMING_BATCH_MAX_ROWS", "many", "is not an integer"),
        ("STREAMING_CONSUMER_FETCH_MAX_WAIT_MS", "0", "must be at least 1"),
        ("STREAMING_PRODUCER_ACKS", "2", "is not one of"),
        ("STREAMING_CHALLENGER", "perhaps", "is not a boolean"),
        ("STREAMING_PRODUCER_LINGER_MS", "fast", "is not a number"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(var)) as err:
        Settings.from_env({var: value})
    assert message in str(err.value)


def test_contract_doc_lists_every_setting() -> None:
    doc = (project_root() / "docs" / "contract.md").read_text()
    documented = set(re.findall(r"`(STREAMING_[A-Z0-9_]+)`", doc))
    expected = {PREFIX + name.upper() for name in FIELDS}
    assert expected == documented
