"""Batch-size buckets: the fixed set of shapes a session is warmed for, and padding up to one.

A batch of ``n`` rows runs as the smallest bucket that holds it, padded with
zero rows, so no request ever pays for a shape the session has not seen.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

__all__ = ["default_buckets", "bucket_for", "floor_bucket", "check_buckets", "pad"]


def default_buckets(max_rows: int) -> tuple[int, ...]:
    """Powers of two up to 16, then half-steps (24, 32, 48, 64, 96, ...), ending at ``max_rows``.

    The half-steps above 16 keep padding waste under a third where batches are large.

    >>> default_buckets(1)
    (1,)
    >>> default_buckets(100)
    (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 100)
    >>> default_buckets(256)
    (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    out: list[int] = []
    b = 1
    while b < max_rows:
        out.append(b)
        if b >= 16 and b + b // 2 < max_rows:
            out.append(b + b // 2)
        b *= 2
    out.append(max_rows)
    return tuple(out)


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Validate a bucket list: positive, strictly increasing, starting at 1.

    >>> check_buckets([1, 4, 16])
    (1, 4, 16)
    >>> check_buckets([2, 4])
    Traceback (most recent call last):
    ValueError: buckets must start at 1 (a single row must fit), got (2, 4)
    """
    b = tuple(int(x) for x in buckets)
    if not b or b[0] != 1:
        raise ValueError(f"buckets must start at 1 (a single row must fit), got {b}")
    if any(y <= x for x, y in pairwise(b)):
        raise ValueError(f"buckets must be strictly increasing, got {b}")
    return b


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``rows``.

    >>> bucket_for(5, (1, 2, 4, 8))
    8
    >>> bucket_for(4, (1, 2, 4, 8))
    4
    >>> bucket_for(9, (1, 2, 4, 8))
    Traceback (most recent call last):
    ValueError: 9 rows exceed the largest bucket (8)
    """
    i = bisect_left(buckets, rows)
    if i == len(buckets):
        raise ValueError(f"{rows} rows exceed the largest bucket ({buckets[-1]})")
    return buckets[i]


def floor_bucket(rows: int, buckets: Sequence[int]) -> int:
    """The largest bucket not above ``rows`` (at least the first bucket).

    >>> floor_bucket(5, (1, 2, 4, 8))
    4
    >>> floor_bucket(100, (1, 2, 4, 8))
    8
    """
    i = bisect_right(buckets, rows)
    return buckets[max(i - 1, 0)]


def pad(X: np.ndarray, bucket: int) -> np.ndarray:
    """``X`` with zero rows appended up to ``bucket`` rows (``X`` itself when it is already that size).

    >>> pad(np.ones((3, 2), dtype=np.float32), 4)
    array([[1., 1.],
           [1., 1.],
           [1., 1.],
           [0., 0.]], dtype=float32)
    >>> x = np.ones((4, 2)); pad(x, 4) is x
    True
    """
    n = X.shape[0]
    if n == bucket:
        return X
    if n > bucket:
        raise ValueError(f"{n} rows do not fit bucket {bucket}")
    out = np.zeros((bucket, *X.shape[1:]), dtype=X.dtype)
    out[:n] = X
    return out
