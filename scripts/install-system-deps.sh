#!/usr/bin/env bash
# Debian packages the test suite uses as real third-party peers (root only).
#   perl + Net::SMTP: a real client's ETRN; fetchmail: its "proto ETRN" mode;
#   sudo: the unprivileged bridge's command_prefix; groff-base: renders the man page;
#   iproute2: ss shows the listen backlog; util-linux, mount: prlimit and a small tmpfs
#   (fd exhaustion, a full disk), setpriv;
#   systemd: systemd-analyze verify and systemd-socket-activate (neither needs systemd
#   as PID 1); logrotate: rotates the audit file in its test;
#   patchelf: a setgid postqueue for the lab (setgid programs ignore LD_LIBRARY_PATH);
#   redis-server: the cluster tests start their own instance (never the system service).
#   libmilter-dev, gcc, python3-dev: pymilter (the [milter] extra) builds against them.
set -euo pipefail
PACKAGES=(perl fetchmail sudo groff-base iproute2 util-linux mount systemd logrotate patchelf redis-server libmilter-dev gcc python3-dev)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
