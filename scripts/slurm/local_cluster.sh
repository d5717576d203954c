#!/usr/bin/env bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# A throw-away single-node Slurm on this machine, for the tests of LAUNCHER=slurm
# (tests/test_slurm.py) and for trying a sweep's submission before using a cluster.
#
#   bash scripts/slurm/local_cluster.sh start DIR   # prints: export SLURM_CONF=DIR/slurm.conf
#   bash scripts/slurm/local_cluster.sh stop DIR
#
# Needs root and Debian's packages: apt-get install -y slurmctld slurmd slurm-client munge.
# Everything (config, munge key and socket, state, logs, pid files) lives in DIR and the
# daemons listen on free ports, so it touches no system Slurm or munge; clients find it
# through SLURM_CONF. The node has CPUS_PER_NODE CPUs (default: this machine's), so one
# task per CPU runs at a time. Plugins that need cgroups are off so that it runs in a
# container (proctrack/linuxproc, task/none, no accounting).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2
SBIN=${SLURM_SBIN:-/usr/sbin}

missing_tools() {
    local tool missing=()
    for tool in "$SBIN/munged" "$SBIN/slurmctld" "$SBIN/slurmd" sbatch squeue scancel scontrol; do
        command -v "$tool" >/dev/null || missing+=("$(basename "$tool")")
    done
    echo "${missing[*]}"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_conf() {
    local node cpus ctld_port slurmd_port
    node=$(hostname -s)
    cpus=${CPUS_PER_NODE:-$(nproc)}
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    cat > "$dir/slurm.conf" <<EOF
# Written by scripts/slurm/local_cluster.sh: a single-node test cluster.
ClusterName=softcptlocal
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=600
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

# wait_for WHAT SECONDS COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local what=$1 seconds=$2
    shift 2
    local end=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$end" ]; then
            echo "[local_cluster] $what did not come up in ${seconds}s; logs in $dir" >&2
            return 1
        fi
        sleep 0.2
    done
}

node_idle() {
    sinfo -h -o %t | grep -qE '^(idle|mix|alloc)'
}

start() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "[local_cluster] needs root (slurmd runs jobs as their user)" >&2
        exit 3
    fi
    local missing
    missing=$(missing_tools)
    if [ -n "$missing" ]; then
        echo "[local_cluster] missing: $missing (apt-get install -y slurmctld slurmd slurm-client munge)" >&2
        exit 3
    fi
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
    dir=$(cd "$dir" && pwd)
    chmod 700 "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    "$SBIN/munged" --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
        --log-file="$dir/munge/munged.log"
    write_conf
    export SLURM_CONF=$dir/slurm.conf
    "$SBIN/slurmctld" -f "$SLURM_CONF"
    "$SBIN/slurmd" -f "$SLURM_CONF" -N "$(hostname -s)"
    wait_for slurmctld 30 scontrol ping
    wait_for "the node" 30 node_idle
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # stop_pid PIDFILE: TERM, then KILL after 10 s.
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    if [ -f "$dir/slurm.conf" ] && command -v scancel >/dev/null; then
        SLURM_CONF=$dir/slurm.conf scancel --user="$(id -un)" 2>/dev/null || true
    fi
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munge/munged.pid"
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
