#!/bin/bash
# Low-latency setup experiment: rxe1 -> rxe1. Args: binaries to compare (label=path ...).
set -u
ulimit -l unlimited
lat() {
  ib_write_lat -d rxe1 -x 1 -F -s 64 -n 3000 >/tmp/srv.txt 2>&1 &
  sleep 1
  timeout 120 ib_write_lat -d rxe1 -x 1 -F -s 64 -n 3000 10.77.0.1 2>&1 | grep -E "^ *64 " 
  wait
}
for rep in 1 2 3; do
  echo "== rep $rep: ib_write_lat 64 (bytes iters t_min t_max t_typical t_avg t_stdev 99% 99.9%)"
  lat
  for lb in "$@"; do
    label="${lb%%=*}" bin="${lb#*=}"
    echo "== rep $rep: $label"
    extra=""
    case "$label" in *stages*) extra="--stages" ;; esac
    case "$label" in *s64*) extra="$extra --slots 64" ;; esac
    envs=""
    case "$label" in *tsc*) envs="RDMABUS_CLOCK=tsc" ;; esac
    timeout 300 env $envs "$bin" bench pingpong --transport verbs --a 10.77.0.1 --b 10.77.0.1 --sizes 64 --iters 3000 --warmup 300 $extra 2>&1 | grep -v "^pingpong\|^limit\|size  subs"
  done
done
