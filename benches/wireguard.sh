#!/usr/bin/env bash
# iperf3 pod -> pod between two nodes (network namespaces, veth underlay), then ping's round
# trip on the idle path, in one run:
#   plain   : routed over the veth underlay, no encryption (the ceiling);
#   nodemesh: `nodemesh wireguard up` on both nodes (userspace gotatun on TUN);
#   wg-go   : Debian's wireguard-go + wg on both nodes.
# Needs root, iperf3, wireguard-go, wireguard-tools (scripts/install-deps). Cleans up on exit.
# Usage: benches/wireguard.sh [seconds]   (NODEMESH_BIN overrides the binary; BENCH_VERBOSE=1
# prints iperf3's summary and the nodes' logs; BENCH_GRO=1 turns GRO on for the nodes' veths;
# BENCH_PERF=FILE records a system-wide `perf` profile during the nodemesh run)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
bin=${NODEMESH_BIN:-target/release/nodemesh}
[ -x "$bin" ] || bin=target/debug/nodemesh
[ -x "$bin" ] || { echo "build nodemesh first (cargo build --release)"; exit 2; }
id="b$$"
A="nmb-$id-a"; B="nmb-$id-b"; PA="nmb-$id-pa"; PB="nmb-$id-pb"
tmp=$(mktemp -d)
cleanup() {
  for ns in "$A" "$B" "$PA" "$PB"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for ns in "$A" "$B" "$PA" "$PB"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f "/var/run/wireguard/wg$id"a.sock "/var/run/wireguard/wg$id"b.sock
  rm -rf "$tmp"
}
trap cleanup EXIT
for ns in "$A" "$B" "$PA" "$PB"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
for ns in "$A" "$B"; do ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'; done
ip -n "$A" link add ul0 type veth peer name ul0 netns "$B"
ip -n "$A" addr add 10.250.0.1/24 dev ul0; ip -n "$A" link set ul0 up
ip -n "$B" addr add 10.250.0.2/24 dev ul0; ip -n "$B" link set ul0 up
pod() { # node pod ip gw
  ip -n "$1" link add p0 type veth peer name eth0 netns "$2"
  ip -n "$1" addr add "$4/32" dev p0; ip -n "$1" link set p0 up; ip -n "$1" route add "$3/32" dev p0
  ip -n "$2" addr add "$3/32" dev eth0; ip -n "$2" link set eth0 up
  ip -n "$2" route add "$4" dev eth0; ip -n "$2" route add default via "$4"
}
pod "$A" "$PA" 10.201.1.10 10.201.1.1
pod "$B" "$PB" 10.201.2.10 10.201.2.1
if [ -n "${BENCH_GRO:-}" ]; then
  for ns in "$A" "$B"; do ip netns exec "$ns" ethtool -K p0 gro on; ip netns exec "$ns" ethtool -K ul0 gro on; done
fi

port=5300
run_iperf() { # label
  port=$((port + 1))
  ip netns exec "$PB" iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
  sleep 0.5
  local out gbps
  if [ -n "${BENCH_PERF:-}" ] && [ "${1#nodemesh}" != "$1" ]; then
    (sleep 2; perf record -F 999 -a -g -o "$BENCH_PERF" -- sleep $((secs - 3)) >/dev/null 2>&1) &
  fi
  out=$(ip netns exec "$PA" iperf3 -c 10.201.2.10 -p "$port" -t "$secs" -f g 2>&1 || true)
  gbps=$(echo "$out" | awk '/receiver/{print $(NF-2)}')
  echo "$1: ${gbps:-FAILED} Gbit/s"
  [ -n "${BENCH_VERBOSE:-}" ] && echo "$out" | tail -4
  # Round trip on the idle path: 50 pings, 20 ms apart (min/avg/max/mdev in ms).
  local rtt
  rtt=$(ip netns exec "$PA" ping -q -c 50 -i 0.02 -W 2 10.201.2.10 2>&1 | awk -F' = ' '/rtt/{print $2}')
  echo "$1: ping rtt ${rtt:-FAILED}"
}

# 1. plain veth routing
ip -n "$A" route add 10.201.2.0/24 via 10.250.0.2
ip -n "$B" route add 10.201.1.0/24 via 10.250.0.1
run_iperf "plain veth"
ip -n "$A" route del 10.201.2.0/24; ip -n "$B" route del 10.201.1.0/24

# 2. nodemesh WireGuard
ka=$("$bin" wireguard pubkey --state-dir "$tmp/a"); kb=$("$bin" wireguard pubkey --state-dir "$tmp/b")
cat > "$tmp/c.yaml" <<YAML
nodes:
  - {name: node-a, address: 10.250.0.1, podCIDR: 10.201.1.0/24, wireguardPublicKey: "$ka"}
  - {name: node-b, address: 10.250.0.2, podCIDR: 10.201.2.0/24, wireguardPublicKey: "$kb"}
workloads: []
YAML
for n in a b; do
  ns=$A; [ $n = b ] && ns=$B
  ip netns exec "$ns" "$bin" wireguard up --config "$tmp/c.yaml" --node "node-$n" \
    --state-dir "$tmp/$n" --interface "wg$id$n" >"$tmp/up-$n.log" 2>&1 &
done
sleep 2
ip netns exec "$PA" ping -c 3 -i 0.3 -W 2 10.201.2.10 >/dev/null
run_iperf "nodemesh wireguard ($bin)"
[ -n "${BENCH_VERBOSE:-}" ] && tail -n 5 "$tmp/up-a.log" "$tmp/up-b.log"
for ns in "$A" "$B"; do
  for pid in $(ip netns pids "$ns"); do kill "$pid"; done
  sleep 1
  ip netns exec "$ns" "$bin" wireguard down --state-dir "$tmp/x" --interface "wg${id}x" >/dev/null
done

# 3. wireguard-go + wg
export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1
wg genkey > "$tmp/wa"; wg genkey > "$tmp/wb"
for n in a b; do
  ns=$A; other=b; cidr=10.201.2.0/24; ep=10.250.0.2; [ $n = b ] && { ns=$B; other=a; cidr=10.201.1.0/24; ep=10.250.0.1; }
  ip netns exec "$ns" wireguard-go -f "wg$id$n" >/dev/null 2>&1 &
  while [ ! -S "/var/run/wireguard/wg$id$n.sock" ]; do sleep 0.1; done
  ip netns exec "$ns" wg set "wg$id$n" listen-port 51820 private-key "$tmp/w$n" \
    peer "$(wg pubkey < "$tmp/w$other")" endpoint "$ep:51820" allowed-ips "$cidr"
  ip -n "$ns" link set "wg$id$n" mtu 1420 up
  ip -n "$ns" route add "$cidr" dev "wg$id$n"
done
ip netns exec "$PA" ping -c 3 -i 0.3 -W 2 10.201.2.10 >/dev/null
run_iperf "wireguard-go"
echo "machine: $(nproc) cores, $(uname -r); $secs s per run"
