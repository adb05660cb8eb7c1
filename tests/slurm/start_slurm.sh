#!/usr/bin/env bash
# A single-node SLURM with two fake GPUs, for the tests (root, no systemd). Idempotent: a
# cluster that already answers is left alone. Recipe and pitfalls: docs/running.md, "The test cluster".
# Writes the pids it started to $STATE/pids so that stop_slurm.sh stops exactly those.
set -euo pipefail
STATE=${1:-/tmp/blockscope-slurm}
mkdir -p "$STATE"
if sinfo -h >/dev/null 2>&1 && srun -N1 -t 1 true >/dev/null 2>&1; then
  echo "slurm already up"; exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
H=$(hostname -s)
grep -q "$H" /etc/hosts || echo "127.0.0.1 $H" >> /etc/hosts
[ -s /etc/munge/munge.key ] || mungekey -c -f
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge /run/munge
if ! pgrep -u munge munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
  pgrep -u munge -n munged >> "$STATE/pids"
fi
install -d /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /etc/slurm
NODE=$(slurmd -C | head -1)
touch /tmp/fakegpu0 /tmp/fakegpu1
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=blockscope
SlurmctldHost=$H
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
GresTypes=gpu
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
$NODE Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=$H Name=gpu File=/tmp/fakegpu[0-1]" > /etc/slurm/gres.conf
slurmctld -i
slurmd
for _ in $(seq 30); do sinfo -h >/dev/null 2>&1 && break; sleep 1; done
cat /run/slurmctld.pid /run/slurmd.pid >> "$STATE/pids"
scontrol update NodeName="$H" State=RESUME >/dev/null 2>&1 || true
for _ in $(seq 30); do srun -N1 -t 1 true >/dev/null 2>&1 && break; sleep 1; done
sinfo
