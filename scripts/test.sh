#!/usr/bin/env bash
# Run quring's test suite.
#
#   scripts/test.sh [extra cargo test args...]
#
# 1. Makes sure .venv (repo root) holds the Python packages the non-quinn
#    QUIC test client needs (tests/clients/requirements.txt). The venv is
#    (re)built only when missing, broken, or when the requirements file or
#    the base interpreter changed.
# 2. Exports QURING_PYTHON=<repo>/.venv/bin/python for the Rust tests.
# 3. Runs `cargo test --release "$@"` twice: once on the default datapath
#    (io_uring; QURING_DATAPATH unset) and once with QURING_DATAPATH=portable,
#    so every test runs on both datapaths. Stops at the first failing pass.
#
# Environment:
#   PYTHON   base interpreter used to create the venv (default: python3)
#
# Safe to run from any directory and any number of times.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REQ="tests/clients/requirements.txt"
VENV="$ROOT/.venv"
STAMP="$VENV/.quring-requirements.sha256"
PY="${PYTHON:-python3}"

die() {
    echo "scripts/test.sh: error: $*" >&2
    exit 1
}
note() {
    echo "scripts/test.sh: $*" >&2
}

command -v cargo >/dev/null 2>&1 || die "cargo not found in PATH (install a Rust toolchain, e.g. via rustup)"
command -v "$PY" >/dev/null 2>&1 || die "$PY not found in PATH (need Python >= 3.9; set PYTHON=... to choose one)"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' ||
    die "$PY is $("$PY" -c 'import platform; print(platform.python_version())') but Python >= 3.9 is required"
[ -f "$REQ" ] || die "$REQ is missing"

# What the venv was built from: the requirements file and the base
# interpreter (path + version). A different value means "rebuild".
wanted_stamp() {
    "$PY" - "$REQ" <<'EOF'
import hashlib, os, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    h.update(f.read())
h.update(b"\0" + os.path.realpath(sys.executable).encode() + b"\0" + sys.version.encode())
print(h.hexdigest())
EOF
}

venv_is_current() {
    [ -x "$VENV/bin/python" ] &&
        [ -f "$STAMP" ] &&
        [ "$(cat "$STAMP")" = "$1" ] &&
        "$VENV/bin/python" -c 'import aioquic' >/dev/null 2>&1
}

# Debian/Ubuntu ship the venv module without ensurepip unless python3-venv
# is installed, so `python3 -m venv` fails half-way. Detect that up front.
have_venv_support() {
    "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1
}

ensure_venv_support() {
    have_venv_support && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        note "Python venv support missing; installing python3-venv with apt-get"
        local log
        log="$(mktemp)"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; } >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            die "apt-get install python3-venv failed"
        fi
        rm -f "$log"
        have_venv_support && return 0
        local minor
        minor="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        die "still no venv support in $PY after installing python3-venv (is $PY Debian's default python3? try: apt-get install python${minor}-venv)"
    fi
    die "$PY cannot create virtual environments (module venv/ensurepip missing). Install it, e.g. as root: apt-get install python3-venv; or point PYTHON at an interpreter that has it"
}

build_venv() {
    local stamp="$1" log
    ensure_venv_support
    note "setting up .venv from $REQ (one-time)"
    rm -rf "$VENV"
    log="$(mktemp)"
    if ! "$PY" -m venv "$VENV" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        rm -rf "$VENV"
        die "'$PY -m venv .venv' failed"
    fi
    # --prefer-binary: take wheels even if a newer sdist exists, so no
    # C toolchain / OpenSSL headers are needed for the dependencies.
    if ! PIP_USER=0 PIP_REQUIRE_VIRTUALENV=0 "$VENV/bin/python" -m pip install \
        --disable-pip-version-check --no-input --quiet --prefer-binary \
        -r "$REQ" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        rm -rf "$VENV"
        die "pip install -r $REQ failed (see above)"
    fi
    rm -f "$log"
    "$VENV/bin/python" -c 'import aioquic' ||
        { rm -rf "$VENV"; die "aioquic is not importable after installing $REQ"; }
    echo "$stamp" >"$STAMP"
}

stamp="$(wanted_stamp)"
venv_is_current "$stamp" || build_venv "$stamp"

export QURING_PYTHON="$VENV/bin/python"
note "pass 1 of 2: default datapath (io_uring)"
env -u QURING_DATAPATH cargo test --release "$@"
note "pass 2 of 2: QURING_DATAPATH=portable"
QURING_DATAPATH=portable cargo test --release "$@"
note "both passes succeeded"
