# schemathesis (PyPI) in a virtualenv of its own under the user's cache.
# Requires lib/common.sh. Defines ensure_schemathesis.

KILN_SCHEMATHESIS_VERSION=4.32.5
# hypothesis releases after this one parse whole source files to describe
# lambdas, which trips a bug of Debian's Python 3.11.2 (an AST SystemError).
KILN_HYPOTHESIS_VERSION=6.130.12

# Print the path of a schemathesis binary of the pinned version, installing
# it first when missing (Debian's python3 and python3-venv, then pip).
ensure_schemathesis() {
  local venv=${XDG_CACHE_HOME:-$HOME/.cache}/kiln/schemathesis-$KILN_SCHEMATHESIS_VERSION-hypothesis-$KILN_HYPOTHESIS_VERSION
  if [ ! -f "$venv/.complete" ]; then
    local py=/usr/bin/python3
    [ -x "$py" ] || apt_install python3
    "$py" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    log "installing schemathesis $KILN_SCHEMATHESIS_VERSION from PyPI into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    { "$py" -m venv "$venv" \
      && "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$KILN_SCHEMATHESIS_VERSION" "hypothesis==$KILN_HYPOTHESIS_VERSION"; } >&2 \
      || { rm -rf "$venv"; die "installing schemathesis failed"; }
    touch "$venv/.complete"
  fi
  echo "$venv/bin/schemathesis"
}
