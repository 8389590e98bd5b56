#!/bin/bash
# Low-latency setup, 64 B rates: ib_write_bw single posts and --post_list 32 beside
# bench fanout single sends and --batch 32. Arg: the rdmabus binary.
set -u
ulimit -l unlimited
export RDMABUS_CLOCK=tsc
bw() {
  ib_write_bw -d rxe1 -x 1 -F -s 64 -n 20000 "$@" >/tmp/srv.txt 2>&1 &
  sleep 1
  timeout 120 ib_write_bw -d rxe1 -x 1 -F -s 64 -n 20000 "$@" 10.77.0.1 2>&1 | grep -E "^ *64 "
  wait
}
for rep in 1 2 3; do
  echo "== rep $rep: ib_write_bw 64 (bytes iterations BW_peak BW_avg MsgRate)"; bw
  echo "== rep $rep: ib_write_bw 64 --post_list 32"; bw --post_list 32
  for b in 1 32; do
    echo "== rep $rep: bench fanout --batch $b"
    timeout 300 "$1" bench fanout --transport verbs --publisher 10.77.0.1 --sub-bind 10.77.0.1 \
      --subscribers 1 --sizes 64 --iters 20000 --warmup 1000 --idle yield --batch $b --slots 1024 2>&1 | grep -E "^ +64 +1 +20000"
  done
done
