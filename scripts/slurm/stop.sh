#!/bin/bash
# Stops what scripts/slurm/start.sh started under SLURM_ROOT, by the PIDs in its pid files: jobs first, then
# slurmd, slurmctld and munged (munged only if start.sh started it). Idempotent. Config, state and logs stay
# (rm -rf "$SLURM_ROOT" to clean up).
#   SLURM_ROOT         as for start.sh (default /tmp/vitquant-slurm)
#   SLURM_STOP_GRACE   seconds left to running jobs before they are cancelled (default 10)
set -u
ROOT=${SLURM_ROOT:-/tmp/vitquant-slurm}
RUN=$ROOT/run
export SLURM_CONF=$ROOT/etc/slurm.conf
stop() {  # name pidfile
  local p
  p=$(cat "$2" 2>/dev/null) || { echo "$1: not started here"; return 0; }
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill "$p"
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then echo "$1 ($p) ignores SIGTERM after 10 s: SIGKILL"; kill -9 "$p"; fi
    echo "$1 ($p) stopped"
  else
    echo "$1: not running"
  fi
  rm -f "$2"
}
# Jobs first (their slurmstepd would outlive slurmd): a job whose result submitit has read can still be exiting.
if [ -f "$SLURM_CONF" ] && [ -f "$RUN/slurmctld.pid" ]; then
  queue() { squeue -h -o %i 2>/dev/null; }
  for _ in $(seq $(( ${SLURM_STOP_GRACE:-10} * 5 ))); do [ -z "$(queue)" ] && break; sleep 0.2; done
  if [ -n "$(queue)" ]; then
    echo "cancelling jobs: $(queue | tr '\n' ' ')"
    scancel --partition=debug 2>/dev/null
    for _ in $(seq 100); do [ -z "$(queue)" ] && break; sleep 0.2; done   # KillWait=5 s, then SIGKILL
  fi
fi
stop slurmd "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop munged "$RUN/munged.pid"
exit 0
