from __future__ import annotations

from streaming.features.reference import ReferenceStore
from streaming.features.vector import VectorBuilder
from streaming.pipeline.spec import Pipeline

S = 1_000_000


def tx(eid: str, card: str, t_s: float, amount: float = 10.0, **kw: str) -> dict:
    ev = {"event_id": eid, "card_id": card, "merchant_id": "m1", "amount": amount, "country": "US",
          "card_country": "US", "channel": "pos", "mcc": "grocery", "event_time": int(t_s * S)}
    ev.update(kw)
    return ev


def names(p: Pipeline) -> list[str]:
    return [f.name for f in p.window_features]


def test_windows_cover_the_buckets_ending_with_the_event(fraud_pipeline: Pipeline) -> None:
    store = ReferenceStore(fraud_pipeline)
    col = {n: i for i, n in enumerate(names(fraud_pipeline))}
    rows = store.update_and_read([tx("a", "c1", 1000, 10), tx("b", "c1", 1030, 20), tx("c", "c1", 1075, 40)])
    # card_count_1m: 6 buckets of 10 s. At t=1075 the buckets are 1020..1070: 'a' (1000) has left.
    assert [r[col["card_count_1m"]] for r in rows] == [1, 2, 2]
    assert [r[col["card_amount_sum_10m"]] for r in rows] == [10, 30, 70]
    assert rows[2][col["card_amount_mean_1h"]] == 70 / 3
    # other cards are not affected; the merchant window sees all three
    assert store.update_and_read([tx("d", "c2", 1076)])[0][col["card_count_1m"]] == 1
    assert store.update_and_read([tx("e", "c3", 1077)])[0][col["merchant_count_1m"]] == 4


def test_a_redelivered_event_is_not_applied_twice(fraud_pipeline: Pipeline) -> None:
    store = ReferenceStore(fraud_pipeline)
    col = names(fraud_pipeline).index("card_count_10m")
    first = store.update_and_read([tx("a", "c1", 500)])
    again = store.update_and_read([tx("a", "c1", 500)])
    assert first[0][col] == again[0][col] == 1


def test_vector_in_model_input_order(fraud_pipeline: Pipeline) -> None:
    vb = VectorBuilder(fraud_pipeline)
    ev = tx("a", "c1", 1, amount=99.0, country="RU", channel="online", mcc="giftcards")
    window = [float(i + 100) for i in range(len(fraud_pipeline.window_features))]
    row = dict(zip(vb.names, vb.row(ev, window), strict=True))
    assert abs(row["amount_log"] - 4.605170) < 1e-5
    assert (row["foreign"], row["online"], row["mcc_giftcards"], row["mcc_electronics"]) == (1.0, 1.0, 1.0, 0.0)
    assert row["card_count_1m"] == 100.0 and row["merchant_count_1m"] == 104.0
    assert vb.matrix([ev], [window]).shape == (1, len(fraud_pipeline.model.inputs))
