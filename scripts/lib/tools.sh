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

# podman: a second containers/image client of the registry. Optional: its
# test prints a SKIPPED line when podman is missing or does not run.
ensure_podman() {
    if ! command -v podman >/dev/null 2>&1; then
        apt_install podman || return 1
    fi
    command -v podman
}

# chromium and chromedriver: the real browser the download page is tested
# in (headless, driven over WebDriver). Exports KILN_TEST_CHROMIUM and
# KILN_TEST_CHROMEDRIVER for the tests.
ensure_chromium() {
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        echo "installing chromium and chromium-driver" >&2
        apt_install chromium chromium-driver fonts-dejavu-core || return 1
    fi
    KILN_TEST_CHROMIUM=$(command -v chromium)
    KILN_TEST_CHROMEDRIVER=$(command -v chromedriver)
    export KILN_TEST_CHROMIUM KILN_TEST_CHROMEDRIVER
}

# nginx: the pull-through cache in front of the APIs in the multi-host tests
# (deploy/nginx/), and the baseline of scripts/bench-api.
ensure_nginx() {
    if ! [ -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null 2>&1; then
        echo "installing nginx" >&2
        apt_install nginx || return 1
    fi
}
