"""Synthetic card payments with a documented fraud mechanism and a drift switch.

Legitimate payments
    Each card has a home country (mostly US, GB, DE, FR) and a typical amount
    (log-normal around ~$33). A card pays about every ``card_interval_s``
    seconds on average, 97% at merchants in its home country, 30% online,
    in a category drawn from grocery, fuel, restaurants, travel, electronics,
    online services and (rarely) gift cards.

Fraud, pattern A: card testing (before the drift switch)
    A stolen card is tested with a burst of 4-10 small online payments
    ($0.50-$5) within about a minute at one foreign online-services merchant
    shared by the fraud ring, then cashed out with one large foreign
    electronics payment (5-10x the card's typical amount). Every payment of
    the episode is fraud. Signals: foreign, velocity (card and merchant
    counts over 1 minute), small then unusual amounts.

Fraud, pattern B: account takeover (after the drift switch)
    A taken-over card buys gift cards at domestic merchants: 3-5 payments of
    3-6x its typical amount, 20-60 s apart, online. Nothing is
    foreign and velocity stays low, so a model trained on pattern A misses
    most of it: the concept drift the monitors must notice.

Episodes start at a rate that makes ``fraud_rate`` of all payments fraud.
Events come out in event-time order from a Poisson process at ``rate``
events/s; everything is reproducible from ``seed``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FraudGenerator", "Labelled"]

_COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "BR"]
_HOME_WEIGHTS = [0.45, 0.15, 0.12, 0.1, 0.06, 0.05, 0.04, 0.03]
_FOREIGN_FRAUD = ["RU", "NG", "CN", "VN", "UA", "RO"]
_MCC = ["grocery", "fuel", "restaurants", "travel", "electronics", "online_services", "giftcards"]
_MCC_WEIGHTS = [0.3, 0.15, 0.2, 0.05, 0.08, 0.2, 0.02]
_MERCHANTS_PER_MCC = 400


@dataclass(frozen=True)
class Labelled:
    event: dict[str, Any]
    label: int
    pattern: str  # "legit", "card_testing" or "account_takeover"


class FraudGenerator:
    """An endless, time-ordered stream of labelled payments.

    >>> gen = FraudGenerator(rate=100, seed=1, start_us=0)
    >>> first = list(itertools.islice(gen, 3))
    >>> [x.event["event_id"] for x in first]
    ['e1-0', 'e1-1', 'e1-2']
    >>> all(a.event["event_time"] <= b.event["event_time"] for a, b in zip(first, first[1:]))
    True
    """

    def __init__(
        self,
        *,
        rate: float,
        seed: int = 0,
        start_us: int = 0,
        fraud_rate: float = 0.02,
        card_interval_s: float = 120.0,
        drift_at_us: int | None = None,
        id_prefix: str = "e",
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.seed = seed
        self.fraud_rate = fraud_rate
        self.drift_at_us = drift_at_us
        self.id_prefix = f"{id_prefix}{seed}-"
        self._rng = np.random.default_rng(seed)
        self.n_cards = max(100, int(rate * card_interval_s))
        self._home = self._rng.choice(len(_COUNTRIES), size=self.n_cards, p=_HOME_WEIGHTS)
        self._mu = self._rng.normal(3.5, 0.7, size=self.n_cards)
        self._t = float(start_us)
        self._ids = itertools.count()
        self._pending: list[tuple[float, int, Labelled]] = []
        self._seq = itertools.count()
        # mean events per episode: A ~ 8 (7 tests + cash-out), B ~ 4
        self._episode_share = {"card_testing": 8.0, "account_takeover": 4.0}
        self._buffer: list[float] = []

    # -- helpers ---------------------------------------------------------
    def _uniform(self) -> float:
        if not self._buffer:
            self._buffer = list(self._rng.random(4096))
        return self._buffer.pop()

    def _event(self, t_us: float, card: int, *, merchant: str, amount: float, country: str, channel: str, mcc: str) -> dict[str, Any]:
        return {
            "event_id": f"{self.id_prefix}{next(self._ids)}",
            "card_id": f"c{card}",
            "merchant_id": merchant,
            "amount": round(amount, 2),
            "country": country,
            "card_country": _COUNTRIES[int(self._home[card])],
            "channel": channel,
            "mcc": mcc,
            "event_time": int(t_us),
        }

    def _typical(self, card: int) -> float:
        return math.exp(float(self._mu[card]))

    def _legit(self, t_us: float) -> Labelled:
        card = int(self._uniform() * self.n_cards)
        mcc_i = int(np.searchsorted(np.cumsum(_MCC_WEIGHTS), self._uniform() * 0.999999))
        mcc = _MCC[mcc_i]
        home = _COUNTRIES[int(self._home[card])]
        country = home if self._uniform() < 0.97 else _COUNTRIES[int(self._uniform() * len(_COUNTRIES))]
        channel = "online" if (mcc in ("online_services", "giftcards") or self._uniform() < 0.3) else "pos"
        amount = math.exp(self._mu[card] + 0.6 * float(self._rng.standard_normal()))
        merchant = f"{mcc[:3]}{int(self._uniform() * _MERCHANTS_PER_MCC)}"
        ev = self._event(t_us, card, merchant=merchant, amount=amount, country=country, channel=channel, mcc=mcc)
        return Labelled(ev, 0, "legit")

    def _schedule(self, t_us: float, item: Labelled) -> None:
        heapq.heappush(self._pending, (t_us, next(self._seq), item))

    def _card_testing(self, t_us: float) -> None:
        card = int(self._uniform() * self.n_cards)
        country = _FOREIGN_FRAUD[int(self._uniform() * len(_FOREIGN_FRAUD))]
        tester = f"onl-ring{int(self._uniform() * 3)}"
        n = 4 + int(self._uniform() * 7)
        t = t_us
        for _ in range(n):
            ev = self._event(t, card, merchant=tester, amount=0.5 + 4.5 * self._uniform(), country=country,
                             channel="online", mcc="online_services")
            self._schedule(t, Labelled(ev, 1, "card_testing"))
            t += 1e6 * (2 + 10 * self._uniform())
        amount = self._typical(card) * (5 + 5 * self._uniform())
        ev = self._event(t, card, merchant=f"ele{int(self._uniform() * _MERCHANTS_PER_MCC)}", amount=amount,
                         country=country, channel="online", mcc="electronics")
        self._schedule(t, Labelled(ev, 1, "card_testing"))

    def _account_takeover(self, t_us: float) -> None:
        card = int(self._uniform() * self.n_cards)
        home = _COUNTRIES[int(self._home[card])]
        t = t_us
        for _ in range(3 + int(self._uniform() * 3)):
            amount = self._typical(card) * (3 + 3 * self._uniform())
            ev = self._event(t, card, merchant=f"gif{int(self._uniform() * _MERCHANTS_PER_MCC)}", amount=amount,
                             country=home, channel="online", mcc="giftcards")
            self._schedule(t, Labelled(ev, 1, "account_takeover"))
            t += 1e6 * (20 + 40 * self._uniform())

    def drifted(self, t_us: float) -> bool:
        return self.drift_at_us is not None and t_us >= self.drift_at_us

    # -- the stream ------------------------------------------------------
    def __iter__(self) -> Iterator[Labelled]:
        return self

    def __next__(self) -> Labelled:
        gap = -math.log(1.0 - self._uniform()) / self.rate * 1e6
        t_next = self._t + gap
        if self._pending and self._pending[0][0] <= t_next:
            t, _, item = heapq.heappop(self._pending)
            self._t = max(self._t, t)
            return item
        self._t = t_next
        pattern = "account_takeover" if self.drifted(t_next) else "card_testing"
        p_episode = self.fraud_rate / self._episode_share[pattern]
        if self._uniform() < p_episode:
            (self._account_takeover if pattern == "account_takeover" else self._card_testing)(t_next)
            t, _, item = heapq.heappop(self._pending)
            return item
        return self._legit(t_next)
