#!/bin/bash
cd "$(dirname "$0")"
A="bench fanout --transport verbs --publisher 10.77.0.1 --subscribers 1 --sizes 64 --iters 200000 --warmup 20000 --slots 1024"
for r in 1 2 3; do
  for v in base new new32; do
    case $v in base) c="./rdmabus-base-rel $A";; new) c="./rdmabus-new-rel $A";; new32) c="./rdmabus-new-rel $A --batch 32";; esac
    out=$(timeout 120 $c 2>&1)
    rate=$(echo "$out" | awk '$1=="64" && NF>=8 {print $8; exit}')
    send=$(echo "$out" | awk '$1=="64" && NF==6 {print $3; exit}')
    p50=$(echo "$out" | awk '$1=="64" && NF>=8 {print $4; exit}')
    echo "$r $v rate=$rate send_ns=$send p50_us=$p50"
    [ -z "$rate" ] && echo "$out" | tail -3
  done
done
