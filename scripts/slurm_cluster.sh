#!/usr/bin/env bash
# A private single-node SLURM cluster on this machine, for testing the SLURM profile.
#
#   scripts/slurm_cluster.sh start    write configs, start munged/slurmctld/slurmd (idempotent)
#   scripts/slurm_cluster.sh stop     stop only the daemons this script started (pid files)
#   scripts/slurm_cluster.sh status   daemons + sinfo; exit 0 only when the node accepts jobs
#   scripts/slurm_cluster.sh env      print `export SLURM_CONF=...` (eval it before sbatch/sinfo)
#
# Needs root (slurmd runs jobs as their user) and Debian's slurm-wlm + munge
# (`.ci/prepare-slurm.sh` installs them). Everything lives in the state directory (munged on a
# private socket) except one symlink, /etc/slurm/slurm.conf -> <state>/etc/slurm.conf: Snakemake's
# slurm-jobstep plugin drops SLURM_CONF before its `srun` inside the job, so the default path must
# lead to this cluster. It is only made where no real SLURM config is there, and `stop` removes it.
# Settings (environment): ATLIB_SLURM_DIR (state dir, default /tmp/atlib-slurm),
# ATLIB_SLURM_PORT (slurmctld port, default 6817; slurmd uses the next one),
# ATLIB_SLURM_CPUS (default: all CPUs slurmd detects).
set -euo pipefail

STATE=${ATLIB_SLURM_DIR:-/tmp/atlib-slurm}
PORT=${ATLIB_SLURM_PORT:-6817}
CONF=$STATE/etc/slurm.conf
MUNGE_DIR=$STATE/munge
SOCKET=$MUNGE_DIR/munge.socket
DEFAULT_CONF=/etc/slurm/slurm.conf
export SLURM_CONF=$CONF

die() { echo "slurm_cluster: $*" >&2; exit 1; }
log() { echo "slurm_cluster: $*" >&2; }

# pid of a daemon we started, if it is still that daemon (a recycled pid is not ours).
our_pid() {  # name pidfile
  local pid
  [[ -s $2 ]] || return 1
  pid=$(<"$2")
  [[ -d /proc/$pid ]] && grep -q "$1" "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n1; }

healthy() {
  our_pid slurmctld "$STATE/run/slurmctld.pid" >/dev/null &&
    our_pid slurmd "$STATE/run/slurmd.pid" >/dev/null &&
    [[ $(node_state) =~ ^(idle|mix|alloc|comp)$ ]]
}

write_configs() {
  local host cpus hw mem
  host=$(hostname -s)
  command -v slurmd >/dev/null || die "slurmd not found: install slurm-wlm and munge (bash .ci/prepare-slurm.sh, as root)"
  # What slurmd detects is what it will register with: configuring more drains the node.
  hw=$(slurmd -C | head -n1)
  cpus=${ATLIB_SLURM_CPUS:-$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$hw")}
  mem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$hw")
  mem=$((mem * 9 / 10))  # headroom: slurmd drains a node whose memory shrinks below the config
  mkdir -p "$STATE"/{etc,run,log,ctld,slurmd}
  cat >"$CONF" <<EOF
# Written by scripts/slurm_cluster.sh: a single-node test cluster (no accounting, no cgroups).
ClusterName=atlib
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
PlugStackConfig=$STATE/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job that names no memory takes the whole node.
DefMemPerCPU=$((mem / cpus))
# Finished jobs stay visible to squeue for 5 minutes: the plugin's squeue status check needs it
# (there is no slurmdbd for sacct).
MinJobAge=300
# Seconds between SIGTERM and SIGKILL at a time limit or scancel: time to write a checkpoint.
KillWait=15
ReturnToService=2
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  # A fake GPU so GPU requests schedule; without File= slurmd drops the GRES and the node drains.
  echo "NodeName=$host Name=gpu File=/dev/null" >"$STATE/etc/gres.conf"
  echo "CgroupPlugin=autodetect" >"$STATE/etc/cgroup.conf"
  : >"$STATE/etc/plugstack.conf"
}

link_default_conf() {
  if [[ -L $DEFAULT_CONF && $(readlink "$DEFAULT_CONF") == "$CONF" ]]; then
    return 0
  elif [[ -e $DEFAULT_CONF || -L $DEFAULT_CONF ]]; then
    die "$DEFAULT_CONF exists and is not ours: this machine has its own SLURM; use it instead of a test cluster"
  fi
  mkdir -p "$(dirname "$DEFAULT_CONF")"
  ln -s "$CONF" "$DEFAULT_CONF"
}

start_munge() {
  if [[ -S $SOCKET ]] && munge -n -S "$SOCKET" 2>/dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1; then
    return 0
  fi
  command -v munged >/dev/null || die "munged not found: install munge (bash .ci/prepare-slurm.sh)"
  id munge >/dev/null 2>&1 || die "no 'munge' user: reinstall the munge package"
  mkdir -p "$MUNGE_DIR"
  chown munge: "$MUNGE_DIR"
  chmod 755 "$MUNGE_DIR"  # clients need to reach the socket; the key file itself is 0600
  local key=/etc/munge/munge.key
  if [[ ! -r $key ]]; then
    key=$MUNGE_DIR/munge.key
    [[ -s $key ]] || runuser -u munge -- mungekey --create --keyfile="$key"
  fi
  # munged refuses to run as root; its files live in our state dir, not /run or /var.
  runuser -u munge -- munged --socket="$SOCKET" --key-file="$key" --pid-file="$MUNGE_DIR/munged.pid" \
    --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" ||
    die "munged did not start: $(tail -n 5 "$MUNGE_DIR/munged.log" 2>/dev/null)"
  for _ in $(seq 50); do
    munge -n -S "$SOCKET" 2>/dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged is not answering on $SOCKET: $(tail -n 5 "$MUNGE_DIR/munged.log" 2>/dev/null)"
}

start_daemon() {  # name
  local name=$1
  our_pid "$name" "$STATE/run/$name.pid" >/dev/null && return 0
  "/usr/sbin/$name" -f "$CONF" || die "$name did not start: $(tail -n 5 "$STATE/log/$name.log" 2>/dev/null)"
}

cmd_start() {
  [[ $(id -u) -eq 0 ]] || die "needs root (slurmd starts jobs as their user)"
  link_default_conf
  if [[ -f $CONF ]] && healthy; then
    log "already running ($(node_state)); export SLURM_CONF=$CONF"
    return 0
  fi
  write_configs
  start_munge
  start_daemon slurmctld
  for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
  scontrol ping 2>/dev/null | grep -q UP ||
    die "slurmctld is not answering (port $PORT taken? set ATLIB_SLURM_PORT): $(tail -n 5 "$STATE/log/slurmctld.log" 2>/dev/null)"
  start_daemon slurmd
  local state=""
  for _ in $(seq 60); do
    state=$(node_state)
    [[ $state =~ ^(idle|mix|alloc|comp)$ ]] && break
    # A node left drained/down by an earlier run comes back once its slurmd answers.
    [[ $state =~ ^(down|drain|drng) ]] && scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
    sleep 0.5
  done
  healthy || die "node not ready (state '$state'): $(sinfo -h -R 2>/dev/null) $(tail -n 5 "$STATE/log/slurmd.log" 2>/dev/null)"
  log "running: partition debug, node $(hostname -s) ($state); export SLURM_CONF=$CONF"
}

stop_pid() {  # name pidfile
  local pid
  pid=$(our_pid "$1" "$2") || return 0
  kill "$pid"
  for _ in $(seq 50); do [[ -d /proc/$pid ]] || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
  stop_pid slurmd "$STATE/run/slurmd.pid"
  stop_pid slurmctld "$STATE/run/slurmctld.pid"
  stop_pid munged "$MUNGE_DIR/munged.pid"
  if [[ -L $DEFAULT_CONF && $(readlink "$DEFAULT_CONF") == "$CONF" ]]; then rm -f "$DEFAULT_CONF"; fi
  log "stopped (state kept in $STATE)"
}

cmd_status() {
  local name pidfile pid
  for name in munged slurmctld slurmd; do
    pidfile=$STATE/run/$name.pid
    [[ $name == munged ]] && pidfile=$MUNGE_DIR/munged.pid
    pid=$(our_pid "$name" "$pidfile") && echo "$name: running (pid $pid)" || echo "$name: not running"
  done
  if [[ -f $CONF ]] && healthy; then
    sinfo
    echo "export SLURM_CONF=$CONF"
  else
    echo "cluster: not ready" >&2
    return 1
  fi
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
