# shellcheck shell=bash
# Command-line tools the tests call, installed from Debian's packages when missing.
#
# Source this file, then call the ensure_* functions the run needs.

_kiln_apt_updated=""

_kiln_apt_install() {
    local sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    if [[ -z "$_kiln_apt_updated" ]]; then
        $sudo apt-get update -qq >&2 || return 1
        _kiln_apt_updated=1
    fi
    # Others may be installing at the same time: wait for dpkg's lock.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >&2
}

# minisign: the reference verifier that every Kiln signature must satisfy.
ensure_minisign() {
    if ! command -v minisign >/dev/null 2>&1; then
        echo "installing minisign" >&2
        _kiln_apt_install minisign || return 1
    fi
    command -v minisign
}

# skopeo: reads the image archives Kiln writes (oci-archive:) and pulls from
# its registry (docker://), as containers/image does for podman too.
ensure_skopeo() {
    if ! command -v skopeo >/dev/null 2>&1; then
        echo "installing skopeo" >&2
        _kiln_apt_install skopeo || return 1
    fi
    command -v skopeo
}
