#!/bin/bash
# Does one more RoCE packet explain the bus's cost at 1 KiB? Path MTU here is 1024 B; a bus
# message is payload + 16 B (rkyv root of BenchMsg) + 32 B (slot header) on the wire.
# Raw ib_write_lat at 1024 B (1 packet) and 1072 B (2 packets, the bus's 1024 B wire size);
# bus ping-pong at 976 B (1024 on the wire, 1 packet), 984 B (1032, 2) and 1024 B (1072, 2).
# Run in the guest:
#   soft-roce-ci/run -- soft-roce-ci/results/2026-11-24-tcg-run2/mtu-boundary.sh target/release/rdmabus
set -u
r="$1"
printf '%-5s %-10s %8s %8s %8s\n' run what size wire p50_us
for i in 1 2 3; do
    for s in 1024 1072; do
        ib_write_lat -d rxe2 -x 1 -F -s "$s" -n 3000 > /dev/null 2>&1 &
        server=$!
        sleep 1
        timeout 300 ib_write_lat -d rxe1 -x 1 -F -s "$s" -n 3000 10.77.0.2 2>&1 |
            awk -v s="$s" -v i="$i" '$1 == s { printf "%-5s %-10s %8s %8s %8s\n", i, "raw", s, s, $5 }'
        wait "$server"
    done
    "$r" bench pingpong --transport verbs --a 10.77.0.1 --b 10.77.0.2 --sizes 976,984,1024 \
        --iters 3000 --warmup 300 |
        awk -v i="$i" '$1 ~ /^[0-9]+$/ { printf "%-5s %-10s %8s %8s %8s\n", i, "bus", $1, $1 + 48, $4 }'
done
