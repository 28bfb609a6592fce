# shellcheck shell=bash
# The project's own Go module proxy for scripts/dev and the benchmarks:
# testdata/go/ laid out by scripts/go-proxy, served from the same files on
# loopback (for the API's version resolution, KILN_GO_PROXY) and as a busybox
# httpd container named `goproxy` on a build network (for the kilnd recipe's
# networked `go get` step, KILN_BUILD_NETWORK). Source common.sh first.

# goproxy_start NAME DIR: lay out the proxy in DIR and serve it. NAME names
# the build network (NAME), the proxy container (NAME-goproxy) and the module
# cache volume (NAME-gomod, kept between runs: it is a cache). Exports
# KILN_GO_PROXY, KILN_BUILD_NETWORK and KILN_GO_CACHE_VOLUME, and sets
# GOPROXY_HTTPD_PID.
goproxy_start() {
  local name=$1 dir=$2 port
  rm -rf "$dir"
  mkdir -p "$dir"
  chmod 755 "$dir"
  python3 scripts/go-proxy "$dir" || die "could not lay out the Go proxy in $dir"
  port=$(free_port)
  busybox httpd -f -p "127.0.0.1:$port" -h "$dir" &
  GOPROXY_HTTPD_PID=$!
  # The same options as the worker's own build networks (it checks them).
  if ! docker network inspect "$name" >/dev/null 2>&1; then
    docker network create --internal -o com.docker.network.bridge.inhibit_ipv4=true \
      -o com.docker.network.bridge.enable_ip_masquerade=false --label kiln.dev=1 "$name" >/dev/null
  fi
  docker rm -f "$name-goproxy" >/dev/null 2>&1 || true
  docker run -d --name "$name-goproxy" --label kiln.dev=1 --network "$name" --network-alias goproxy \
    --read-only --cap-drop ALL --user 65534:65534 -v "$dir:/srv:ro" \
    kiln-test/busybox:latest httpd -f -vv -p 8080 -h /srv >/dev/null
  export KILN_GO_PROXY="http://127.0.0.1:$port" KILN_BUILD_NETWORK=$name KILN_GO_CACHE_VOLUME=$name-gomod
  wait_for 30 curl -fsS "$KILN_GO_PROXY/example.com/kilnd/@v/list" || die "the Go proxy did not start on $KILN_GO_PROXY"
}

# goproxy_stop NAME: stop what goproxy_start started (the cache volume stays).
goproxy_stop() {
  local name=$1
  if [ -n "${GOPROXY_HTTPD_PID:-}" ]; then
    kill "$GOPROXY_HTTPD_PID" 2>/dev/null || true
    wait "$GOPROXY_HTTPD_PID" 2>/dev/null || true
  fi
  docker rm -f "$name-goproxy" >/dev/null 2>&1 || true
  docker network rm "$name" >/dev/null 2>&1 || true
}
