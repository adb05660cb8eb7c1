#!/usr/bin/env bash
# Stop the daemons start_slurm.sh started, by the pids it recorded (never by name).
STATE=${1:-/tmp/blockscope-slurm}
[ -f "$STATE/pids" ] || exit 0
while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$STATE/pids"
rm -f "$STATE/pids"
