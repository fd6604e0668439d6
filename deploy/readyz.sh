#!/usr/bin/env bash
# The container health check: healthy when GET /readyz on LEDGER_METRICS_ADDR answers 200 (database
# reachable, NATS connected, consumer running; for `ledger agent`: NATS connected). Installed in the image as
# `ledger-readyz`.
#
# Plain bash (its /dev/tcp redirection) instead of `ledger …` or curl: a check every 15 s should not start a
# Python interpreter (≈ 0.3 s of CPU and 30 MB each time), and python:3.11-slim has bash but no curl or wget.
set -u
addr="${LEDGER_METRICS_ADDR:-127.0.0.1:9464}"
port="${addr##*:}"
host="${addr%:*}"
host="${host#[}"
host="${host%]}"
case "$host" in
    "" | 0.0.0.0) host=127.0.0.1 ;;  # listening on every address: ask on loopback
    ::) host=::1 ;;
esac
exec 3<>"/dev/tcp/${host}/${port}" || exit 1
printf 'GET /readyz HTTP/1.0\r\nHost: %s\r\n\r\n' "$host" >&3
read -r -t 5 _ status _ <&3 || exit 1
[ "$status" = 200 ]
