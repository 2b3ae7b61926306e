#!/usr/bin/env bash
# Installs the system tools the test suite uses (real kernel, real peers) when they are missing.
# Only as root, only from Debian's packages; a normal user is told what is missing and the tests
# that need it skip with that reason (under CI=true they fail instead).
set -uo pipefail
declare -A pkg_of=(
  [ip]=iproute2 [iptables]=iptables [ip6tables]=iptables [nft]=nftables [haproxy]=haproxy
  [nginx]=nginx [unbound]=unbound [conntrack]=conntrack [socat]=socat [iperf3]=iperf3
  [nsenter]=util-linux [setpriv]=util-linux [unshare]=util-linux
  [taskset]=util-linux [prlimit]=util-linux [cc]=gcc
  [podman]=podman [busybox]=busybox-static [rootlessctl]=rootlesskit
  # test/bench/rootless.test.ts: the rootless scenario's container, pasta and throwaway user
  [rootlesskit]=rootlesskit [slirp4netns]=slirp4netns [pasta]=passt [newuidmap]=uidmap [useradd]=passwd
)

want=()
for tool in "${!pkg_of[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || want+=("${pkg_of[$tool]}")
done
[ -x /usr/lib/cni/portmap ] || want+=(containernetworking-plugins)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || want+=(libnginx-mod-stream)
# test/docker: a real dockerd (only ever started inside the test's own namespaces), a static
# busybox for the offline image, Debian's python3 for the fake dockerd that passes fds 3 and 4.
for tool in dockerd containerd runc; do command -v "$tool" >/dev/null 2>&1 || want+=(docker.io); done
dpkg -s busybox-static >/dev/null 2>&1 || want+=(busybox-static)
[ -x /usr/bin/python3 ] || want+=(python3)
# the Prometheus text parser the metrics tests read /metrics with (Debian's python3, not a pyenv one)
/usr/bin/python3 -c 'import prometheus_client.parser' >/dev/null 2>&1 || want+=(python3-prometheus-client)
[ ${#want[@]} -eq 0 ] && exit 0
mapfile -t want < <(printf '%s\n' "${want[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "test/setup.sh: missing packages (tests needing them will skip): ${want[*]}" >&2
  echo "test/setup.sh: install them with: sudo apt-get install -y ${want[*]}" >&2
  exit 0
fi
echo "test/setup.sh: installing ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Packages must not start their services (docker.io would start dockerd in the host namespace):
# deny service starts for the duration of the install unless a policy is in place already.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null \
  || { echo "test/setup.sh: apt-get install failed for: ${want[*]}" >&2; exit 1; }
