# shellcheck shell=bash
# s3s-fs: a real S3-compatible server on a local directory, for tests and benchmarks.
#
# Source this file, then:
#   ensure_s3s_fs            installs s3s-fs once (cached) and exports KILN_TEST_S3FS_BIN
#   start_s3s_fs DIR [PORT]  starts it on 127.0.0.1 serving DIR; exports KILN_S3FS_PID,
#                            KILN_S3FS_ENDPOINT, KILN_S3FS_ACCESS_KEY, KILN_S3FS_SECRET_KEY
#   stop_s3s_fs              stops the server started by start_s3s_fs
#
# Releases from 0.15 on need a newer rustc than the project's, hence the pin.

KILN_S3FS_VERSION="${KILN_S3FS_VERSION:-0.14.1}"
KILN_S3FS_ROOT="${KILN_S3FS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/s3s-fs-$KILN_S3FS_VERSION}"

ensure_s3s_fs() {
    local bin="$KILN_S3FS_ROOT/bin/s3s-fs"
    if [[ ! -x "$bin" ]]; then
        echo "installing s3s-fs $KILN_S3FS_VERSION into $KILN_S3FS_ROOT" >&2
        mkdir -p "$KILN_S3FS_ROOT"
        cargo install s3s-fs --version "$KILN_S3FS_VERSION" --features binary --locked \
            --root "$KILN_S3FS_ROOT" >&2 || return 1
    fi
    export KILN_TEST_S3FS_BIN="$bin"
    echo "$KILN_TEST_S3FS_BIN"
}

# A free TCP port on the loopback interface.
_kiln_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_s3s_fs() {
    local dir="$1" port="${2:-}"
    [[ -n "$port" ]] || port="$(_kiln_free_port)"
    [[ -n "${KILN_TEST_S3FS_BIN:-}" ]] || ensure_s3s_fs >/dev/null || return 1
    mkdir -p "$dir"
    export KILN_S3FS_ACCESS_KEY="${KILN_S3FS_ACCESS_KEY:-kiln-test-access}"
    export KILN_S3FS_SECRET_KEY="${KILN_S3FS_SECRET_KEY:-kiln-test-secret}"
    "$KILN_TEST_S3FS_BIN" --host 127.0.0.1 --port "$port" \
        --access-key "$KILN_S3FS_ACCESS_KEY" --secret-key "$KILN_S3FS_SECRET_KEY" \
        "$dir" >"$dir.log" 2>&1 &
    export KILN_S3FS_PID=$!
    export KILN_S3FS_ENDPOINT="http://127.0.0.1:$port"
    local i
    for i in $(seq 1 100); do
        if curl -s -o /dev/null "$KILN_S3FS_ENDPOINT/"; then
            return 0
        fi
        if ! kill -0 "$KILN_S3FS_PID" 2>/dev/null; then
            echo "s3s-fs exited; its log:" >&2
            cat "$dir.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "s3s-fs did not answer on $KILN_S3FS_ENDPOINT" >&2
    return 1
}

stop_s3s_fs() {
    if [[ -n "${KILN_S3FS_PID:-}" ]]; then
        kill "$KILN_S3FS_PID" 2>/dev/null || true
        wait "$KILN_S3FS_PID" 2>/dev/null || true
        unset KILN_S3FS_PID
    fi
}
