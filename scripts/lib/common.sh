# Shared helpers for Kiln's scripts. Source it; it defines functions only.

# A step of a script, in bold on a terminal (plain in a log file).
log() {
  if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Install the Debian packages of "$@" that are missing (apt-get update once
# per run). Waits up to ten minutes for another apt or dpkg that holds the
# lock (another install on this machine, unattended upgrades) instead of
# failing at once. The one apt helper of the scripts.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} from Debian's packages"
  local apt=(as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
  if [ -z "${KILN_APT_UPDATED:-}" ]; then
    "${apt[@]}" update -qq
    export KILN_APT_UPDATED=1
  fi
  "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Wait until "$@" succeeds, at most $1 seconds.
wait_for() {
  local secs=$1; shift
  local i
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
