#!/usr/bin/env bash
# Installs the real SIP peers the tests use. Idempotent; apt-get only when something is missing.
# As root: installs. Not root: reports what is missing (those tests then skip, except under CI=true).
set -euo pipefail
PKGS=(sip-tester sipsak kamailio kamailio-tls-modules kamailio-websocket-modules openssl iproute2 iptables conntrack procps
      tshark hyperfine baresip-core chromium chromium-driver)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then echo "peers: all ${#PKGS[@]} packages installed"; exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "peers: missing ${missing[*]} (not root: real-peer tests will skip)" >&2
  [ "${CI:-}" = true ] && exit 1
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "peers: installing ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "peers: installed ${missing[*]}"
