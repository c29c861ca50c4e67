#!/usr/bin/env bash
# Checks Prometheus rule files with Prometheus's own parser (model/rulefmt: YAML shape, PromQL expressions,
# annotation templates), the core of `promtool check rules`, without building all of promtool (its service
# discovery pulls every cloud SDK). The checker is built once from the Go module github.com/prometheus/prometheus
# into ${KAUDIT_PROMCHECK_CACHE:-~/.cache/kaudit/promcheck}/<version>/bin/check-rules (a few minutes cold).
#   infra/prometheus/check-rules.sh [FILE...]      (default: infra/prometheus/alerts.yaml)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PROMETHEUS_VERSION=v0.316.0   # Prometheus 3.x's Go module version
cache="${KAUDIT_PROMCHECK_CACHE:-$HOME/.cache/kaudit/promcheck}"
out="$cache/$PROMETHEUS_VERSION"
bin="$out/bin/check-rules"
log() { echo "check-rules: $*" >&2; }

if [ ! -x "$bin" ]; then
  command -v go >/dev/null || { log "Go is required to build the rule checker (https://go.dev/doc/install)"; exit 2; }
  mkdir -p "$out/src" "$out/bin"
  exec 9>"$out/.build.lock"
  flock 9
  if [ ! -x "$bin" ]; then
    export GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
    log "building the rule checker from github.com/prometheus/prometheus@$PROMETHEUS_VERSION (once)"
    cat > "$out/src/main.go" <<'GO'
// check-rules: parse Prometheus rule files with rulefmt (what promtool check rules does first).
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	failed := false
	for _, f := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(f, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.Default())
		if len(errs) > 0 {
			failed = true
			for _, e := range errs {
				fmt.Fprintln(os.Stderr, e)
			}
			continue
		}
		n := 0
		for _, g := range groups.Groups {
			n += len(g.Rules)
		}
		fmt.Printf("%s: %d groups, %d rules: SUCCESS\n", f, len(groups.Groups), n)
	}
	if failed {
		os.Exit(1)
	}
}
GO
    printf 'module kaudit.local/promcheck\n\ngo 1.26\n\nrequire github.com/prometheus/prometheus %s\n' "$PROMETHEUS_VERSION" > "$out/src/go.mod"
    (cd "$out/src" && go mod tidy >/dev/null 2>&1 || true; go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .)
    mv "$bin.tmp" "$bin"
  fi
fi
if [ $# -eq 0 ]; then set -- "$here/alerts.yaml"; fi
exec "$bin" "$@"
