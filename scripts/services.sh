#!/usr/bin/env bash
# Real services for the test suite: a one-node Slurm cluster (munged, slurmctld,
# slurmd on 127.0.0.1), a private PostgreSQL 15 cluster on 127.0.0.1:55432, and
# MPICH, from Debian packages.
#
#   scripts/services.sh install   apt packages (slurm, munge, mpich, openssh-server, iproute2,
#                                 postgresql-15, chromium for the browser tests); quick when present
#   scripts/services.sh start     install if needed, write the config, start the daemons,
#                                 wait until a job runs and PostgreSQL answers; idempotent
#   scripts/services.sh start postgres   only the PostgreSQL cluster
#   scripts/services.sh stop      cancel every job, wait for the queue to drain, stop the
#                                 daemons this script started (by pid); keeps config, logs
#   scripts/services.sh status    what is running (exit 0 when Slurm is up, 3 when not)
#
# Needs root (it installs packages and runs the daemons). Without root `start`
# says so and exits 0: the Slurm and MPI tests then skip, or fail when
# TIDEWATER_REQUIRE_SERVICES=1 (as scripts/test.sh and CI set).
#
# State, logs and pid files live under ${TIDEWATER_SERVICES_DIR:-/var/tmp/tidewater-services}.
# Slurm's clients read /etc/slurm/slurm.conf, so the config is written there, with a
# header marking it as ours; a slurm.conf this script did not write is never touched.
# Readiness is always a polled condition with a deadline, never a fixed sleep.
set -euo pipefail

DIR=${TIDEWATER_SERVICES_DIR:-/var/tmp/tidewater-services}
CONF=/etc/slurm/slurm.conf
MARK="# Written by tidewater scripts/services.sh -- removed or replaced only by it."
PARTITION=debug
CLUSTER=tidewater
CTLD_PORT=6817
SLURMD_PORT=6818
MUNGE_SOCKET=/run/munge/munge.socket.2
MUNGE_KEY=/etc/munge/munge.key
PACKAGES=(slurmctld slurmd slurm-client munge mpich openssh-server openssh-sftp-server postgresql-15 iproute2 chromium)
# The private PostgreSQL cluster the 'postgres' tests use (tests/integration/conftest.py):
# trust auth on loopback only, user postgres, its own data directory.
PG_BIN=/usr/lib/postgresql/15/bin
PG_PORT=${TIDEWATER_PG_PORT:-55432}

RUN=$DIR/run
LOG=$DIR/log
MUNGE_DIR=$DIR/munge   # owned by the munge user: munged's pid and log
MUNGE_PID=$MUNGE_DIR/munged.pid
CTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
PG_DIR=$DIR/postgres        # owned by the postgres user: data, socket, log
PG_DATA=$PG_DIR/data
PG_PID=$PG_DATA/postmaster.pid   # written by postgres itself; its first line is the pid

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

not_root_message() {
    say "not running as root: Slurm (slurmctld, slurmd, munged), PostgreSQL and MPICH were not set up."
    say "The tests marked 'slurm', 'postgres' and 'mpi' will skip (or fail under TIDEWATER_REQUIRE_SERVICES=1)."
    say "To run them: sudo $0 start   (or run scripts/test.sh as root)."
}

# --- processes ---------------------------------------------------------------

# pid_of NAME PIDFILE: print the pid if PIDFILE names a live process called NAME.
pid_of() {
    local name=$1 file=$2 pid comm
    [ -r "$file" ] || return 1
    pid=$(head -n1 "$file" | tr -dc '0-9')
    [ -n "$pid" ] || return 1
    alive "$pid" || return 1
    comm=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
    [ "${comm#"$name"}" != "$comm" ] || return 1   # comm starts with NAME (guards pid reuse)
    printf '%s\n' "$pid"
}

# PID 1 here is not an init and reaps orphans late: a zombie counts as dead.
alive() {
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $stat != Z* ]]
}
not_alive() { ! alive "$1"; }

# wait_until SECONDS WHAT COMMAND...: poll COMMAND until it succeeds or the deadline passes.
wait_until() {
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.1
    done
}

# stop_daemon NAME PIDFILE: SIGTERM the process from PIDFILE, wait (bounded), SIGKILL if needed.
stop_daemon() {
    local name=$1 file=$2 pid
    if ! pid=$(pid_of "$name" "$file"); then
        rm -f "$file"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until 30 "$name (pid $pid) to exit" not_alive "$pid"; then
        say "$name (pid $pid) ignored SIGTERM: sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 10 "$name (pid $pid) to die" not_alive "$pid" || true
    fi
    rm -f "$file"
    say "stopped $name (pid $pid)"
}

# listener PORT: print what listens on TCP PORT (empty when the port is free).
listener() {
    if command -v ss >/dev/null; then
        ss -Hltnp "sport = :$1" 2>/dev/null || true
    elif (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        echo "something accepts connections on 127.0.0.1:$1"
    fi
}

# --- install -----------------------------------------------------------------

# installed [PACKAGE...]: are these (default: all of PACKAGES) installed?
installed() {
    local p
    for p in "${@:-${PACKAGES[@]}}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
}

# cmd_install [PACKAGE...]: install these (default: all of PACKAGES) when missing.
cmd_install() {
    local wanted=("${@:-${PACKAGES[@]}}") ours_policy=0
    if [ "$(id -u)" != 0 ]; then
        not_root_message
        return 1
    fi
    if installed "${wanted[@]}"; then
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found: install ${PACKAGES[*]} by hand"
    export DEBIAN_FRONTEND=noninteractive
    # postgresql-15 must not start Debian's own cluster on 5432 behind our back.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        ours_policy=1
    fi
    local apt=(apt-get install -y -q --no-install-recommends "${wanted[@]}")
    # Package lists are refreshed only when they lack the packages or are stale.
    if ! apt-cache show slurmctld munge mpich >/dev/null 2>&1; then
        apt-get update -q >/dev/null
    fi
    say "installing ${wanted[*]}"
    if ! "${apt[@]}" >"$LOG/apt.log" 2>&1; then
        apt-get update -q >/dev/null
        "${apt[@]}" >"$LOG/apt.log" 2>&1 || {
            [ "$ours_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
            die "apt-get install failed; see $LOG/apt.log"
        }
    fi
    [ "$ours_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
    installed "${wanted[@]}" || die "packages still missing after apt-get install; see $LOG/apt.log"
}

# --- config ------------------------------------------------------------------

# The node line comes from `slurmd -C`, with RealMemory lowered a little: a node
# reporting less memory than configured is drained.
node_line() {
    local line name cpus boards sockets cores threads mem
    line=$(slurmd -C 2>/dev/null | head -n1)
    [[ $line == NodeName=* ]] || die "slurmd -C gave no node line: $line"
    name=$(sed -n 's/.*NodeName=\([^ ]*\).*/\1/p' <<<"$line")
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$line")
    boards=$(sed -n 's/.*Boards=\([0-9]*\).*/\1/p' <<<"$line")
    sockets=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$line")
    cores=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$line")
    threads=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$line")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
    mem=$((mem * 95 / 100))
    printf 'NodeName=%s NodeAddr=127.0.0.1 CPUs=%s Boards=%s SocketsPerBoard=%s CoresPerSocket=%s ThreadsPerCore=%s RealMemory=%s State=UNKNOWN\n' \
        "$name" "$cpus" "$boards" "$sockets" "$cores" "$threads" "$mem"
}

node_name() { slurmd -C 2>/dev/null | sed -n '1s/.*NodeName=\([^ ]*\).*/\1/p'; }

render_config() {
    cat <<EOF
$MARK
# One-node test cluster on 127.0.0.1 for Tidewater's test suite.
# State, spool and logs: $DIR
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/slurm/state
SlurmdSpoolDir=$DIR/slurm/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MpiDefault=pmi2
MailProg=/bin/true
ReturnToService=2
# Short kill grace so a wall-time or scancel kill finishes quickly; finished
# jobs stay visible to squeue/scontrol for 5 minutes (there is no slurmdbd).
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
$(node_line)
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

ours() { [ -f "$CONF" ] && [ "$(head -n1 "$CONF")" = "$MARK" ]; }

# --- munge -------------------------------------------------------------------

munge_works() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munge() {
    if pid_of munged "$MUNGE_PID" >/dev/null; then
        wait_until 10 "munged to answer" munge_works || die "munged is running but does not answer; see $MUNGE_DIR/munged.log"
        return 0
    fi
    if munge_works; then
        say "using a munged that this script did not start (socket $MUNGE_SOCKET); it will be left running"
        return 0
    fi
    if [ ! -s "$MUNGE_KEY" ]; then
        install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY" >/dev/null
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
        chown munge:munge "$MUNGE_KEY"
        chmod 0400 "$MUNGE_KEY"
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 "$MUNGE_DIR"
    rm -f "$MUNGE_PID"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
        --pid-file="$MUNGE_PID" --log-file="$MUNGE_DIR/munged.log" 9>&- \
        || die "munged failed to start; see $MUNGE_DIR/munged.log"
    wait_until 10 "munged to answer" munge_works || die "munged does not answer; see $MUNGE_DIR/munged.log"
}

# --- slurm -------------------------------------------------------------------

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -n1; }

node_ready() {
    case "$(node_state "$1")" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

# The node comes up "unknown", then "idle" once slurmd registers. A node left
# drained or down by an earlier run (state is kept in $DIR/slurm/state) is resumed.
wait_node() {
    local node=$1 deadline state resumed=0
    deadline=$((SECONDS + 60))
    while ! node_ready "$node"; do
        state=$(node_state "$node")
        if [ "$resumed" = 0 ] && [[ $state == drain* || $state == down || $state == drained ]]; then
            scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
            resumed=1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "node $node did not become idle within 60s (state: ${state:-none}); see $LOG/slurmd.log"
            sinfo -R >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.1
    done
}

smoke_test() {
    local out
    if ! out=$(timeout 60 srun -N1 -n1 -t 1 -J tidewater-smoke -p "$PARTITION" \
        -D "$DIR" -o none true 2>&1 </dev/null); then
        say "a one-node job (srun -N1 true) failed: $out"
        say "see $LOG/slurmctld.log and $LOG/slurmd.log"
        return 1
    fi
}

mpich_summary() {
    local v
    if v=$(mpiexec --version 2>/dev/null) && grep -qiE 'hydra|mpich' <<<"$v"; then
        printf 'MPICH %s (mpiexec HYDRA)' "$(sed -n 's/^ *Version: *//p' <<<"$v" | head -n1)"
    else
        printf 'mpiexec is not MPICH: the mpi tests will skip'
    fi
}

summary() {
    local node=$1 how=$2
    printf 'services up (%s): Slurm %s one-node cluster '%s': node %s, partition %s, %s CPUs, ports %s/%s (munged %s, slurmctld %s, slurmd %s); %s; %s; state and logs in %s\n' \
        "$how" "$(sinfo -V | awk '{print $2}')" "$CLUSTER" "$node" "$PARTITION" \
        "$(sinfo -h -n "$node" -o %c | head -n1)" "$CTLD_PORT" "$SLURMD_PORT" \
        "$(pid_of munged "$MUNGE_PID" || echo external)" "$(pid_of slurmctld "$CTLD_PID")" \
        "$(pid_of slurmd "$SLURMD_PID")" "$(pg_summary)" "$(mpich_summary)" "$DIR"
}

# --- postgresql ----------------------------------------------------------------

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres; }

pg_summary() {
    local pid
    if pid=$(pid_of postgres "$PG_PID"); then
        printf 'PostgreSQL %s on 127.0.0.1:%s (pid %s, data %s)' \
            "$("$PG_BIN/postgres" -V | awk '{print $3}')" "$PG_PORT" "$pid" "$PG_DATA"
    else
        printf 'PostgreSQL not running (from this script)'
    fi
}

# A private cluster from the installed binaries: initdb once, then pg_ctl start.
# initdb refuses root, so both run as the postgres system user.
start_postgres() {
    local busy
    [ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 is not installed ($PG_BIN/initdb): run $0 install"
    if pid_of postgres "$PG_PID" >/dev/null; then
        wait_until 30 "PostgreSQL to accept connections" pg_ready \
            || die "PostgreSQL (pid $(pid_of postgres "$PG_PID")) does not answer; see $LOG/postgres.log"
        say "$(pg_summary) already running"
        return 0
    fi
    busy=$(listener "$PG_PORT")
    [ -z "$busy" ] || die "TCP port $PG_PORT is in use by a process this script did not start; set TIDEWATER_PG_PORT to another port. Listener: $busy"
    install -d -o postgres -g postgres -m 0700 "$PG_DIR"
    touch "$LOG/postgres.log" && chown postgres:postgres "$LOG/postgres.log"
    if [ ! -s "$PG_DATA/PG_VERSION" ]; then
        rm -rf "$PG_DATA"
        runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust \
            -E UTF8 --locale=C.UTF-8 >"$LOG/initdb.log" 2>&1 \
            || die "initdb failed; see $LOG/initdb.log"
        {
            echo "# Written by tidewater scripts/services.sh: loopback only, trust."
            echo "local all all trust"
            echo "host all all 127.0.0.1/32 trust"
            echo "host all all ::1/128 trust"
        } >"$PG_DATA/pg_hba.conf"
        chown postgres:postgres "$PG_DATA/pg_hba.conf"
    fi
    rm -f "$PG_PID"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$LOG/postgres.log" -W \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c max_connections=200" \
        start 9>&- >/dev/null || die "pg_ctl start failed; see $LOG/postgres.log"
    wait_until 30 "PostgreSQL to accept connections on 127.0.0.1:$PG_PORT" pg_ready \
        || die "see $LOG/postgres.log"
    say "started $(pg_summary)"
}

stop_postgres() {
    local pid
    if ! pid=$(pid_of postgres "$PG_PID"); then
        return 0
    fi
    # Fast shutdown by signal to the postmaster's pid (what pg_ctl stop -m fast sends).
    kill -INT "$pid" 2>/dev/null || true
    if ! wait_until 30 "postgres (pid $pid) to exit" not_alive "$pid"; then
        say "postgres (pid $pid) ignored SIGINT: sending SIGQUIT"
        kill -QUIT "$pid" 2>/dev/null || true
        wait_until 10 "postgres (pid $pid) to die" not_alive "$pid" || true
    fi
    say "stopped postgres (pid $pid)"
}

cmd_start() {
    if [ "$(id -u)" != 0 ]; then
        not_root_message
        return 0
    fi
    if [ "${1:-}" = postgres ]; then
        cmd_install postgresql-15
        start_postgres
        return 0
    fi
    local t0=$SECONDS node wanted port busy
    cmd_install
    start_postgres
    node=$(node_name)
    [ -n "$node" ] || die "slurmd -C printed no NodeName"

    if [ -e "$CONF" ] && ! ours; then
        die "$CONF exists and was not written by this script (no '$MARK' header): not overwriting it. Move it aside to let this script run a test cluster, or run the tests against that cluster."
    fi
    wanted=$(render_config)

    if pid_of slurmctld "$CTLD_PID" >/dev/null && pid_of slurmd "$SLURMD_PID" >/dev/null; then
        if [ "$(cat "$CONF")" = "$wanted" ] && start_munge \
            && wait_until 15 "slurmctld to answer" ctld_up && wait_node "$node"; then
            summary "$node" "already running"
            return 0
        fi
        say "the running Slurm has a different config or is unhealthy: restarting it"
    fi
    # Anything of ours still running is from a partial start: stop it first.
    if pid_of slurmctld "$CTLD_PID" >/dev/null || pid_of slurmd "$SLURMD_PID" >/dev/null; then
        stop_slurm
    fi

    for port in "$CTLD_PORT" "$SLURMD_PORT"; do
        busy=$(listener "$port")
        if [ -n "$busy" ]; then
            die "TCP port $port (Slurm's default) is already in use by a process this script did not start — another Slurm on this machine? Not starting. Listener: $busy"
        fi
    done

    install -d -m 0755 "$DIR" "$RUN" "$LOG" "$DIR/slurm"
    install -d -m 0700 "$DIR/slurm/state" "$DIR/slurm/spool"
    install -d -m 0755 /etc/slurm
    printf '%s\n' "$wanted" >"$CONF.tidewater.tmp"
    chmod 0644 "$CONF.tidewater.tmp"
    mv -f "$CONF.tidewater.tmp" "$CONF"

    # A start that fails half way stops what it started (logs stay for diagnosis).
    trap 'say "start failed: stopping what it started; logs in $LOG"; stop_slurm' EXIT
    start_munge
    rm -f "$CTLD_PID" "$SLURMD_PID"
    slurmctld 9>&- || die "slurmctld failed to start; see $LOG/slurmctld.log"
    wait_until 30 "slurmctld to answer 'scontrol ping'" ctld_up || die "see $LOG/slurmctld.log"
    slurmd 9>&- || die "slurmd failed to start; see $LOG/slurmd.log"
    wait_until 10 "slurmd's pid file" pid_of slurmd "$SLURMD_PID" || die "see $LOG/slurmd.log"
    wait_node "$node" || exit 1
    smoke_test || exit 1
    trap - EXIT
    summary "$node" "started in $((SECONDS - t0))s"
}

# Jobs outlive slurmd, so every job is cancelled and the queue drained first.
drain_jobs() {
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null) || return 0
    [ -n "$jobs" ] || return 0
    say "cancelling $(wc -w <<<"$jobs") job(s)"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    queue_empty() { [ -z "$(squeue -h -o %A 2>/dev/null)" ]; }
    if ! wait_until 60 "the Slurm queue to empty" queue_empty; then
        say "jobs still in the queue; stopping the daemons anyway:"
        squeue >&2 2>/dev/null || true
    fi
}

stop_slurm() {
    if pid_of slurmctld "$CTLD_PID" >/dev/null && ours; then
        drain_jobs
    fi
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
}

cmd_stop() {
    if [ "$(id -u)" != 0 ]; then
        say "not running as root: nothing to stop (this script starts services only as root)"
        return 0
    fi
    stop_slurm
    stop_postgres
}

cmd_status() {
    local name file pid up=0
    for name in munged slurmctld slurmd; do
        case $name in
            munged) file=$MUNGE_PID ;;
            slurmctld) file=$CTLD_PID ;;
            slurmd) file=$SLURMD_PID ;;
        esac
        if pid=$(pid_of "$name" "$file"); then
            printf '%-10s running (pid %s)\n' "$name" "$pid"
        else
            printf '%-10s not running (from this script)\n' "$name"
        fi
    done
    if ours; then
        printf '%-10s %s (ours)\n' config "$CONF"
    elif [ -e "$CONF" ]; then
        printf '%-10s %s (NOT written by this script)\n' config "$CONF"
    else
        printf '%-10s none\n' config
    fi
    if command -v sinfo >/dev/null && ctld_up; then
        sinfo
        squeue
        up=1
    fi
    if pid_of postgres "$PG_PID" >/dev/null && pg_ready; then
        printf '%-10s %s, accepting connections\n' postgres "$(pg_summary)"
    else
        printf '%-10s %s\n' postgres "$(pg_summary)"
    fi
    printf '%-10s %s\n' mpi "$(mpich_summary)"
    printf '%-10s %s\n' state "$DIR"
    [ "$up" = 1 ] || return 3
}

# --- main --------------------------------------------------------------------

usage() { echo "usage: $0 install|start [postgres]|stop|status" >&2; exit 2; }
[ $# -eq 1 ] || { [ $# -eq 2 ] && [ "$1" = start ] && [ "$2" = postgres ]; } || usage
case $1 in
    install | start | stop)
        if [ "$(id -u)" = 0 ]; then
            install -d -m 0755 "$DIR" "$LOG"
            # One of start/stop/install at a time (two test runs on one machine).
            # The daemons are started with fd 9 closed, or they would hold the lock.
            exec 9>"$DIR/.lock"
            flock -w 300 9 || die "another scripts/services.sh holds $DIR/.lock"
        fi
        "cmd_$1" "${@:2}"
        ;;
    status) cmd_status ;;
    *) usage ;;
esac
