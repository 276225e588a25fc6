#!/usr/bin/env bash
# The test suite's own set-up, on top of scripts/setup.sh (run by `make test`, not `make demo`):
# what only the object-store cluster test (tests/test_cluster.py) needs, cached outside the repo
# like Horovod's wheel, so a warm run takes a second:
#   - SeaweedFS (an S3 server; Apache-2.0) built from its Go module at a pinned version
#     (`go install` refuses it: its go.mod has replace directives; ~7 min on 2 cores, once),
#   - hadoop-aws (Spark's S3A) and the AWS SDK bundle it was built against, resolved from Maven
#     Central by scripts/resolve_jars.py (~560 MB, once),
#   - a class-data-sharing archive of a Spark driver (tests/scripts/class_archive.py: ~190 MB and
#     ~1.5 min, once per checkout location and jar set), which the tests' JVMs start from.
# `deepfm doctor` reports both; the cluster test skips naming this script when they are missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
CACHE="${DEEPFM_CACHE:-$HOME/.cache/deepfm-ctr}"
# deepfm.ops.doctor.SEAWEEDFS_VERSION names the same version (it finds the binary by it).
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6
WEED="$CACHE/seaweedfs/$SEAWEEDFS_VERSION/weed"

log() { printf '[setup-test %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf '[setup-test] ERROR: %s\n' "$*" >&2; exit 1; }

build_seaweedfs() {
  [ -x "$WEED" ] && return 0
  command -v go >/dev/null || die "go not found: building SeaweedFS needs Go (https://go.dev/dl/)"
  log "building SeaweedFS $SEAWEEDFS_VERSION into $WEED (~7 min on 2 cores, once)"
  local dir
  dir=$(go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" \
        | sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')
  [ -d "$dir" ] || die "go mod download gave no module folder for seaweedfs@$SEAWEEDFS_VERSION"
  mkdir -p "$(dirname "$WEED")"
  # Built beside its target and renamed: an interrupted build never leaves a broken binary.
  ( cd "$dir" && go build -o "$WEED.tmp-$$" ./weed ) || die "SeaweedFS build failed (see output above)"
  mv "$WEED.tmp-$$" "$WEED"
}

resolve_s3a_jars() {
  [ -n "$(ls "$CACHE/jars-s3a"/*hadoop-aws*.jar 2>/dev/null)" ] && return 0
  log "resolving hadoop-aws and the AWS SDK bundle into $CACHE/jars-s3a (~560 MB, once)"
  DEEPFM_CACHE="$CACHE" "$VENV/bin/python" "$ROOT/scripts/resolve_jars.py" s3a >/dev/null
}

build_class_archive() {
  # After the S3A jars: they are on the drivers' class path, so they are part of the archive's key.
  DEEPFM_CACHE="$CACHE" "$VENV/bin/python" "$ROOT/tests/scripts/class_archive.py" >/dev/null
}

main() {
  build_seaweedfs
  resolve_s3a_jars
  build_class_archive
  log "test set-up ready: $WEED, $CACHE/jars-s3a, $CACHE/class-archive"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
