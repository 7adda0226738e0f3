from __future__ import annotations

from pathlib import Path

import pytest

from streaming.errors import PipelineError
from streaming.events.schemas import SchemaRegistry
from streaming.pipeline.loader import load_pipeline
from streaming.pipeline.spec import CompareFeature, FieldFeature, Pipeline, WindowFeature
from streaming.settings import project_root

FRAUD = (project_root() / "models" / "fraud" / "pipeline.toml").read_text()


def test_the_fraud_pipeline_declares_everything(fraud_pipeline: Pipeline) -> None:
    p = fraud_pipeline
    assert p.name == "fraud" and p.event.key == ("card_id",) and p.event.schema == "transaction"
    assert p.threshold == 0.5 and p.slo_p99_ms == 50
    kinds = {type(f) for f in p.features}
    assert kinds == {FieldFeature, CompareFeature, WindowFeature}
    assert list(p.model.inputs) == [f.name for f in p.features]
    w = p.feature("card_amount_mean_1h")
    assert isinstance(w, WindowFeature) and (w.window_s, w.bucket_s, w.n_buckets, w.agg) == (3600, 300, 12, "mean")
    assert p.learner.kind == "logistic_regression"
    assert [(m.detector, m.signal) for m in p.monitors] == [("adwin", "error"), ("psi", "score"), ("ks", "features")]
    assert p.drift.require == 1 and p.retrain.min_rows == 2000 and p.learner.warmup == 200
    b = p.batching
    assert (b.policy, b.max_rows, b.budget_ms, b.max_wait_ms, b.queue_rows, b.buckets) == \
        ("adaptive", 256, 10.0, 5.0, 512, None)


def _load(tmp_path: Path, text: str) -> Pipeline:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return load_pipeline(path, SchemaRegistry.from_dir(project_root() / "schemas"))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('field = "amount"\ntransform', 'field = "amout"\ntransform', "unknown field 'amout'"),
        ('window = "1h"', 'window = "1 fortnight"', "bad duration"),
        ('window = "1m"\nbucket = "10s"', 'window = "1m"\nbucket = "5m"', "larger than its window"),
        ('window = "1m"\nbucket = "10s"', 'window = "1m"\nbucket = "7s"', "not a whole number of 7s buckets"),
        ('agg = "sum"', 'agg = "median"', "unknown agg 'median'"),
        ('"amount_log", "foreign"', '"amount_log", "foreigner"', "inputs name unknown features: foreigner"),
        ('kind = "logistic_regression"', 'kind = "deep_thought"', "unknown kind 'deep_thought'"),
        ('detector = "adwin"', 'detector = "crystal_ball"', "unknown detector"),
        ("threshold = 0.5", "threshold = 1.5", "threshold must be between 0 and 1"),
        ('schema = "transaction"', 'schema = "nope"', "unknown schema 'nope'"),
        ('name = "foreign"', 'name = "amount_log"', "duplicate feature names: amount_log"),
        ('field = "amount"\ntransform', 'field = "country"\ntransform', "is not numeric"),
        ('policy = "adaptive"', 'policy = "psychic"', "[batching] policy must be one of none, static, adaptive"),
        ("max_rows = 256 ", "max_rows = 0 ", "[batching] max_rows must be a positive integer, got 0"),
        ("budget_ms = 10 ", 'budget_ms = "fast" ', "[batching] budget_ms must be a positive number"),
        ("# queue_rows = 512", "queue_rows = 100", "queue_rows (100) must hold at least max_rows (256)"),
        ("# queue_rows = 512", "buckets = [1, 8, 64]", "max_rows 256 exceeds the largest bucket 64"),
        ("# queue_rows = 512", "buckets = [2, 512]", "buckets must start at 1"),
        ("# queue_rows = 512", "max_batch = 3", "[batching] unknown keys: max_batch"),
    ],
)
def test_mistakes_are_one_clear_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in FRAUD
    with pytest.raises(PipelineError) as err:
        _load(tmp_path, FRAUD.replace(old, new, 1))
    text = str(err.value)
    assert message in text and str(tmp_path) in text and "\n" not in text


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not valid TOML"):
        _load(tmp_path, "[pipeline\nname=")
    with pytest.raises(PipelineError, match="does not exist"):
        load_pipeline(tmp_path / "nope.toml", SchemaRegistry())


@pytest.mark.parametrize(("table", "message"), [
    ("max_depth = 0", "max_depth must be an integer from 1 to 48"),
    ("max_depth = 1000", "max_depth must be an integer from 1 to 48"),
    ("max_abs_number = 1e300", "max_abs_number must be a number above 0 and at most 1e30"),
    ("max_future = \"soon\"", "max_future: bad duration"),
    ("max_value = 5", "unknown keys: max_value"),
])
def test_bad_limits_are_one_clear_line(tmp_path: Path, schema_registry: SchemaRegistry, table: str,
                                       message: str) -> None:
    text = (project_root() / "models" / "fraud" / "pipeline.toml").read_text()
    start = text.index("[limits]")
    end = text.index("\n[", start + 1)
    path = tmp_path / "pipeline.toml"
    path.write_text(text[:start] + "[limits]\n" + table + "\n" + text[end:])
    with pytest.raises(PipelineError, match=message):
        load_pipeline(path, schema_registry)


def test_the_fraud_pipeline_declares_its_limits(fraud_pipeline: Pipeline) -> None:
    assert fraud_pipeline.limits.max_future_s == 300 and fraud_pipeline.limits.max_abs_number == 1e12
