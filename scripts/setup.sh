#!/usr/bin/env bash
# One set-up for the whole pipeline, driven only by files in this repository:
#   - checks Java (Spark 4 needs 17+),
#   - creates .venv and installs requirements.txt (every Python pin lives there) with uv, whose
#     cache outside the repo keeps the unpacked wheels: a fresh checkout hard-links torch's 6 GB
#     instead of downloading and unpacking them again (3.7 min with pip),
#   - installs Petastorm without its setuptools<70 pin (see requirements.txt),
#   - builds Horovod 0.28.1 from its sdist with patches/horovod-*.patch (PyTorch + Gloo),
#     caching the wheel outside the repo keyed on torch's version and the patch,
#   - resolves Delta Lake's jars once into a local cache that every Spark session reuses,
#   - creates Airflow's own virtualenv .airflow-venv from requirements-airflow.txt (the DAG
#     shells out to the pipeline, so the two environments never share pins).
# Idempotent: a stamp keyed on the inputs makes a second run take seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
AIRFLOW_VENV="$ROOT/.airflow-venv"
CACHE="${DEEPFM_CACHE:-$HOME/.cache/deepfm-ctr}"
PY_BIN="${PYTHON:-python3}"
UV_VERSION=0.13.9
HOROVOD_VERSION=0.28.1
HOROVOD_PATCH="$ROOT/patches/horovod-$HOROVOD_VERSION-cxx17.patch"
STAMP="$VENV/.setup-stamp"

log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

stamp_key() {
  cat "$ROOT/requirements.txt" "$ROOT/requirements-airflow.txt" "$HOROVOD_PATCH" "$ROOT/scripts/setup.sh" \
      "$ROOT/scripts/resolve_jars.py" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1
}

check_java() {
  command -v java >/dev/null || die "java not found: Spark 4 needs Java 17+ (apt-get install openjdk-17-jre-headless)"
  local major
  major=$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1)
  [ "${major:-0}" -ge 17 ] || die "Java $major found; Spark 4 needs Java 17+"
}

# uv itself, once per version, in a virtualenv of its own in the cache (built aside, then renamed).
bootstrap_uv() {
  local home="$CACHE/uv/$UV_VERSION"
  if [ ! -x "$home/bin/uv" ]; then
    log "installing uv $UV_VERSION into $home (once)"
    rm -rf "$home.tmp-$$"
    "$PY_BIN" -m venv "$home.tmp-$$"
    "$home.tmp-$$/bin/pip" install -q "uv==$UV_VERSION"
    rm -rf "$home" && mv "$home.tmp-$$" "$home"
  fi
  UV="$home/bin/uv"
  # Every uv call below: wheels hard-linked from its cache, the system's certificate store trusted
  # (as pip's is), no Python ever downloaded.
  export UV_CACHE_DIR="$CACHE/uv-cache" UV_LINK_MODE=hardlink UV_SYSTEM_CERTS=1 UV_PYTHON_DOWNLOADS=never
}

# Installs into the virtualenv whose python is $1. Modules are byte-compiled at install, as pip
# does: under PYTHONDONTWRITEBYTECODE nothing else would, and every process would compile torch
# anew (its import 7.4 s instead of 3.7). From the cache alone first: online, uv revalidates
# pyspark's 435 MB sdist and builds it again (~40 s).
uv_install() {
  local python="$1"; shift
  local -a uv=("$UV" pip install -q --compile-bytecode --python "$python" "$@")
  "${uv[@]}" --offline 2>/dev/null || "${uv[@]}"
}

# A virtualenv at $1 with pip in it (Horovod's build and `python -m pip` use it).
make_venv() {
  [ -x "$1/bin/python" ] && return 0
  log "creating virtualenv $1"
  "$UV" venv -q --seed --python "$PY_BIN" "$1"
}

install_python_deps() {
  make_venv "$VENV"
  log "installing pinned requirements (torch is large the first time; uv's cache serves every later checkout)"
  uv_install "$VENV/bin/python" -r "$ROOT/requirements.txt"
  log "installing petastorm 0.13.1 (--no-deps: its setuptools<70 pin conflicts with torch)"
  uv_install "$VENV/bin/python" --no-deps petastorm==0.13.1
  uv_install "$VENV/bin/python" --no-deps --no-build-isolation -e "$ROOT"
}

build_horovod() {
  local torch_version key wheel_dir wheel src
  torch_version=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
  key=$(printf '%s %s' "$torch_version" "$(sha256sum < "$HOROVOD_PATCH")" | sha256sum | cut -c1-16)
  wheel_dir="$CACHE/horovod-wheels/$key"
  wheel=$(ls "$wheel_dir"/horovod-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    log "building horovod $HOROVOD_VERSION from source against torch $torch_version (~6 min on 2 cores)"
    src=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$src"
    tar xzf "$src/horovod-$HOROVOD_VERSION.tar.gz" -C "$src"
    patch -d "$src/horovod-$HOROVOD_VERSION" -p1 < "$HOROVOD_PATCH"
    mkdir -p "$wheel_dir"
    # MPI, TensorFlow and MXNet off; Gloo for CPU collectives. NCCL is picked up on a CUDA machine
    # whose build sees CUDA_HOME (this CPU machine builds the Gloo-only variant).
    ( cd "$src/horovod-$HOROVOD_VERSION" &&
      HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=GLOO \
      MAKEFLAGS="-j$(nproc)" \
      "$VENV/bin/pip" wheel -q --no-deps --no-build-isolation -w "$wheel_dir" . ) \
      || die "horovod build failed (see output above)"
    rm -rf "$src"
    wheel=$(ls "$wheel_dir"/horovod-*.whl | head -1)
  fi
  log "installing $(basename "$wheel")"
  uv_install "$VENV/bin/python" --no-deps --reinstall "$wheel"
  # Captured first: `grep -q` in a pipeline under pipefail can end the writer with SIGPIPE.
  local build
  build=$("$VENV/bin/horovodrun" --check-build)
  printf '%s\n' "$build" >&2
  grep -q '\[X\] PyTorch' <<<"$build" || die "horovod was built without PyTorch"
  grep -q '\[X\] Gloo' <<<"$build" || die "horovod was built without Gloo"
}

resolve_delta_jars() {
  log "Delta Lake's jars in $CACHE/jars (resolved once; Spark sessions reuse them offline)"
  DEEPFM_CACHE="$CACHE" "$VENV/bin/python" "$ROOT/scripts/resolve_jars.py"
}

install_airflow() {
  make_venv "$AIRFLOW_VENV"
  log "installing Airflow (requirements-airflow.txt)"
  uv_install "$AIRFLOW_VENV/bin/python" -r "$ROOT/requirements-airflow.txt"
}

main() {
  check_java
  local key
  key=$(stamp_key)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] && [ -d "$CACHE/jars" ]; then
    log "environment up to date (stamp $STAMP)"
    return 0
  fi
  bootstrap_uv
  install_python_deps
  build_horovod
  resolve_delta_jars
  install_airflow
  echo "$key" > "$STAMP"
  log "done: $("$VENV/bin/python" -m deepfm doctor --brief 2>&1 | tail -1)"
}

# Sourcing the script (tests, debugging) defines the steps without running them.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
