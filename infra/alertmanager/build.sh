#!/usr/bin/env bash
# Builds Prometheus Alertmanager from its Go module into a cache outside the work tree, reused by every clone:
# ${KAUDIT_ALERTMANAGER_CACHE:-~/.cache/kaudit/alertmanager}/<version>/bin/alertmanager. A second run finds the
# binary and returns at once. Used by `kaudit notify`'s integration tests (tests/alertmanager.py) and by
# `make alertmanager`.
#
# Why not `go install github.com/prometheus/alertmanager/cmd/alertmanager@v0.35.0`: ui/web.go embeds
# ui/app/dist (the web UI, built by npm in the release pipeline), which the module zip does not ship, so the
# embed pattern matches nothing and the compile fails. We copy the module's source out of the read-only module
# cache, put a placeholder page where the UI would be (the API, which is all the tests use, does not need it)
# and build cmd/alertmanager from there with the module's own go.sum.
# Cold: module download ~10 s, compile 2-4 min on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
cache="${KAUDIT_ALERTMANAGER_CACHE:-$HOME/.cache/kaudit/alertmanager}"
out="$cache/$ALERTMANAGER_VERSION"
bin="$out/bin"
log() { echo "alertmanager-build: $*" >&2; }

[ -x "$bin/alertmanager" ] && exit 0
command -v go >/dev/null || { log "Go is required to build Alertmanager (install Go 1.26+: https://go.dev/doc/install)"; exit 2; }

mkdir -p "$out" "$bin"
# one build at a time per cache folder (two clones testing at once share it)
exec 9>"$out/.build.lock"
flock 9
[ -x "$bin/alertmanager" ] && exit 0

export GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
start=$(date +%s)
mod=github.com/prometheus/alertmanager
log "building Alertmanager $ALERTMANAGER_VERSION into $bin (first build takes a few minutes; later runs reuse it)"
tmpmod="$(mktemp -d)"
trap 'rm -rf "$tmpmod"' EXIT
dir="$(cd "$tmpmod" && go mod download -json "$mod@$ALERTMANAGER_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
[ -d "$dir" ] || { log "could not download $mod@$ALERTMANAGER_VERSION from the Go module proxy"; exit 2; }
rm -rf "$out/src"
cp -r "$dir" "$out/src"
chmod -R u+w "$out/src"
for ui in elm mantine; do
  mkdir -p "$out/src/ui/app/dist/$ui"
  echo "<html><body>Alertmanager UI not built (kaudit test build; the API is at /api/v2)</body></html>" \
    > "$out/src/ui/app/dist/$ui/index.html"
done
(cd "$out/src" && go build -trimpath \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=${ALERTMANAGER_VERSION#v} -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.Revision=module" \
  -o "$bin/alertmanager.tmp" ./cmd/alertmanager)
mv "$bin/alertmanager.tmp" "$bin/alertmanager"
"$bin/alertmanager" --version >&2
log "done in $(( $(date +%s) - start )) s: $bin/alertmanager"
