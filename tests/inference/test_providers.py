from __future__ import annotations

import pytest

from streaming.errors import ConfigError
from streaming.inference import providers


def test_auto_never_asks_for_cuda_when_it_cannot_load(monkeypatch: pytest.MonkeyPatch) -> None:
    providers.cuda_usable.cache_clear()
    monkeypatch.setattr(providers, "cuda_usable", lambda: False)
    assert providers.choose_providers("auto") == ["CPUExecutionProvider"]
    assert providers.choose_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="cannot load"):
        providers.choose_providers("cuda")


def test_auto_prefers_cuda_when_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "cuda_usable", lambda: True)
    assert providers.choose_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_probe_answers_without_raising() -> None:
    providers.cuda_usable.cache_clear()
    assert providers.cuda_usable() in (True, False)
