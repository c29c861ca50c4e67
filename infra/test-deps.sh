#!/usr/bin/env bash
# Installs what the test suite needs beyond the virtualenv: Java + Maven for the Kafka broker (the test
# fixture fetches and starts it) and Debian's chromium for the dashboard browser tests.
set -euo pipefail
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-deps: installing ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test-deps: missing ${need[*]}; install them (e.g. sudo apt-get install ${need[*]})" >&2
    # chromium is optional: the browser tests skip without it; Java and Maven are not.
    for n in "${need[@]}"; do [ "$n" = chromium ] || exit 2; done
  fi
fi
