"""The Quix Streams virtual environment, created on demand and cached.

Quix Streams pins an older confluent-kafka than this project's, so it never goes into our
environment: ``streaming bench pipeline`` creates ``.streaming/bench-venvs/quix`` (``python -m
venv``, ``pip install quixstreams==…``) the first time, records the requirement in a stamp file, and
reuses it after (a new requirement rebuilds it).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from streaming.errors import UserError
from streaming.settings import project_root

__all__ = ["QUIX_REQUIREMENT", "default_venv", "quix_python", "ready"]

QUIX_REQUIREMENT = "quixstreams==3.28.1"
_STAMP = ".streaming-requirement"


def default_venv() -> Path:
    return project_root() / ".streaming" / "bench-venvs" / "quix"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ready(venv: Path) -> bool:
    """The venv exists and was built for :data:`QUIX_REQUIREMENT`."""
    stamp = venv / _STAMP
    return _python(venv).exists() and stamp.exists() and stamp.read_text().strip() == QUIX_REQUIREMENT


def quix_python(venv: Path, say: Callable[[str], None] = lambda _m: None) -> Path:
    """The venv's interpreter, creating the venv first when needed (about 20 s with a warm pip cache)."""
    if ready(venv):
        return _python(venv)
    say(f"quix: creating {venv} ({QUIX_REQUIREMENT}; once, then cached)")
    for argv in ([sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", QUIX_REQUIREMENT]):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"could not build the Quix venv ({' '.join(argv[:3])} …): {done.stderr.strip()[-500:]}")
    (venv / _STAMP).write_text(QUIX_REQUIREMENT + "\n")
    return _python(venv)
