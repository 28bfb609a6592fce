# shellcheck shell=bash
# Command-line tools the tests call, installed from Debian's packages when missing.
#
# Source lib/common.sh first (for apt_install), then this file, then call the
# ensure_* functions the run needs.

# minisign: the reference verifier that every Kiln signature must satisfy.
ensure_minisign() {
    if ! command -v minisign >/dev/null 2>&1; then
        apt_install minisign || return 1
    fi
    command -v minisign
}

# skopeo: reads the image archives Kiln writes (oci-archive:) and pulls from
# its registry (docker://), as containers/image does for podman too.
ensure_skopeo() {
    if ! command -v skopeo >/dev/null 2>&1; then
        apt_install skopeo || return 1
    fi
    command -v skopeo
}
