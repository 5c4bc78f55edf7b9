#!/bin/sh
# Make sure the real tools the suite drives are on this machine: promtool (Debian `prometheus`),
# redis-server (Debian `redis-server`), redis-cli (Debian `redis-tools`: creates the test Redis Cluster)
# and redis-sentinel (Debian `redis-sentinel`: the test Sentinel setup). Installs them with apt-get when
# missing and running as root; otherwise says what to install (the tests that need them then fail with
# that message).
set -eu
missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
command -v redis-sentinel >/dev/null 2>&1 || missing="$missing redis-sentinel"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "warning: missing system tools:$missing (install them: apt-get install$missing)" >&2
fi
