#!/usr/bin/env bash
# Prepare a Docker engine for the container tests on a Debian/Ubuntu machine (CI runs this as root).
#
#   source .ci/docker-engine.sh     # prepares the engine at once (FEDAD_DOCKER_ENGINE_AUTOSTART=0: functions only)
#   ... run the tests ...
#   docker_engine_stop               # or: bash .ci/docker-engine-stop.sh
#   bash .ci/docker-engine.sh start | stop | status
#
# Idempotent, and it only does what is missing:
#   1. install Debian's engine, Compose 1.29 and debootstrap  (apt-get install docker.io docker-compose debootstrap)
#   2. start dockerd when no engine answers `docker info`; the pid of the dockerd *this script* started is written
#      to $FEDAD_DOCKERD_PIDFILE, and docker_engine_stop kills exactly that pid (nothing else, and only if we started it)
#   3. build the base image $FEDAD_BASE_IMAGE (default local/python-base) with debootstrap when it is missing,
#      because no container registry is reachable from these machines (see ../shared/notes/containers.md).
#      Debian bookworm's python3 is 3.11, so the host's cp311 wheels fit it.
#
# Environment (all optional):
#   FEDAD_BASE_IMAGE        image to create           (default local/python-base)
#   FEDAD_DOCKERD_PIDFILE   pid of the dockerd we ran (default /tmp/fedad-dockerd.pid)
#   FEDAD_DOCKERD_LOG       dockerd's log             (default /tmp/fedad-dockerd.log)
#   FEDAD_DEBIAN_MIRROR     debootstrap mirror        (default http://deb.debian.org/debian)
#   FEDAD_DEBIAN_SUITE      debootstrap suite         (default bookworm)
#
# The functions return non-zero on failure and never `set -e`/`exit` in a shell that sources them.

: "${FEDAD_BASE_IMAGE:=local/python-base}"
: "${FEDAD_DOCKERD_PIDFILE:=/tmp/fedad-dockerd.pid}"
: "${FEDAD_DOCKERD_LOG:=/tmp/fedad-dockerd.log}"
: "${FEDAD_DEBIAN_MIRROR:=http://deb.debian.org/debian}"
: "${FEDAD_DEBIAN_SUITE:=bookworm}"

_de_log() { echo "[docker-engine] $*" >&2; }

_de_as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else _de_log "need root for: $*"; return 1
    fi
}

docker_engine_install() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    _de_log "installing ${missing[*]}"
    _de_as_root apt-get update -qq || return 1
    _de_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null || return 1
}

docker_engine_running() { docker info >/dev/null 2>&1; }

docker_engine_start_daemon() {
    if docker_engine_running; then
        _de_log "an engine already answers; not starting another"
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 || { _de_log "dockerd not installed"; return 1; }
    _de_log "starting dockerd (log: $FEDAD_DOCKERD_LOG)"
    # setsid: the daemon must not die with the shell or get the test runner's signals; we stop it by pid.
    # dockerd writes its own pid to /var/run/docker.pid; that (not $!, which may be a wrapper) is what we record.
    local daemon_pidfile=/var/run/docker.pid
    if [ "$(id -u)" -eq 0 ]; then
        setsid dockerd --host=unix:///var/run/docker.sock --pidfile "$daemon_pidfile" \
            >"$FEDAD_DOCKERD_LOG" 2>&1 </dev/null &
    else
        sudo -n setsid dockerd --host=unix:///var/run/docker.sock --pidfile "$daemon_pidfile" \
            >"$FEDAD_DOCKERD_LOG" 2>&1 </dev/null &
    fi
    local pid=$! i
    for i in $(seq 1 60); do
        if docker_engine_running; then
            if [ -r "$daemon_pidfile" ]; then cat "$daemon_pidfile" >"$FEDAD_DOCKERD_PIDFILE"
            else echo "$pid" >"$FEDAD_DOCKERD_PIDFILE"; fi
            _de_log "engine up after ${i}x0.5 s (dockerd pid $(cat "$FEDAD_DOCKERD_PIDFILE"))"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            _de_log "dockerd exited; last log lines:"; tail -n 20 "$FEDAD_DOCKERD_LOG" >&2
            return 1
        fi
        sleep 0.5
    done
    _de_log "dockerd did not answer within 30 s"; tail -n 20 "$FEDAD_DOCKERD_LOG" >&2
    return 1
}

docker_engine_base_image() {
    if docker image inspect "$FEDAD_BASE_IMAGE" >/dev/null 2>&1; then
        _de_log "base image $FEDAD_BASE_IMAGE present"
        return 0
    fi
    command -v debootstrap >/dev/null 2>&1 || { _de_log "debootstrap not installed"; return 1; }
    local rootfs rc
    rootfs=$(mktemp -d /tmp/fedad-rootfs.XXXXXX) || return 1
    _de_log "debootstrap $FEDAD_DEBIAN_SUITE into $rootfs (about a minute)"
    # python3-venv brings ensurepip's wheels: the Dockerfiles create a venv, like on python:3.11-slim
    _de_as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$FEDAD_DEBIAN_SUITE" "$rootfs" "$FEDAD_DEBIAN_MIRROR" >"$rootfs.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        _de_log "debootstrap failed:"; tail -n 20 "$rootfs.log" >&2
        _de_as_root rm -rf "$rootfs" "$rootfs.log"; return 1
    fi
    _de_as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/man "$rootfs"/usr/share/info
    _de_as_root tar -C "$rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --message "debootstrap $FEDAD_DEBIAN_SUITE minbase + python3 (fedad CI base)" \
        - "$FEDAD_BASE_IMAGE" >/dev/null
    rc=$?
    _de_as_root rm -rf "$rootfs" "$rootfs.log"
    [ $rc -eq 0 ] || { _de_log "docker import failed"; return 1; }
    _de_log "built $FEDAD_BASE_IMAGE: $(docker run --rm "$FEDAD_BASE_IMAGE" python3 --version 2>&1)"
}

docker_engine_start() {
    docker_engine_install || return 1
    docker_engine_start_daemon || return 1
    docker_engine_base_image || return 1
    # `make images` and tests/containers build FROM this image when it is set (no registry to pull from here)
    export FEDAD_BASE_IMAGE
}

# Stop the dockerd this script started (by its recorded pid); leave any other engine alone.
docker_engine_stop() {
    [ -f "$FEDAD_DOCKERD_PIDFILE" ] || { _de_log "no dockerd started by us; nothing to stop"; return 0; }
    local pid i
    pid=$(cat "$FEDAD_DOCKERD_PIDFILE")
    rm -f "$FEDAD_DOCKERD_PIDFILE"
    case "$pid" in ''|*[!0-9]*) _de_log "bad pid file"; return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || { _de_log "dockerd $pid already gone"; return 0; }
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]; then
        _de_log "pid $pid is not a dockerd (stale pid file?); not killing it"; return 1
    fi
    _de_log "stopping dockerd pid $pid"
    _de_as_root kill -TERM "$pid" || return 1
    for i in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { _de_log "dockerd stopped"; return 0; }
        sleep 0.5
    done
    _de_log "dockerd $pid still alive after 30 s; sending KILL"
    _de_as_root kill -KILL "$pid"
}

docker_engine_status() {
    if docker_engine_running; then
        echo "engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
    else
        echo "engine: not reachable"
    fi
    if [ -f "$FEDAD_DOCKERD_PIDFILE" ]; then echo "started by us: pid $(cat "$FEDAD_DOCKERD_PIDFILE")"; fi
    docker image inspect "$FEDAD_BASE_IMAGE" >/dev/null 2>&1 && echo "base image: $FEDAD_BASE_IMAGE" \
        || echo "base image: missing"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Executed: dispatch on the first argument.
    case "${1:-start}" in
        start) docker_engine_start ;;
        stop) docker_engine_stop ;;
        status) docker_engine_status ;;
        *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
    esac
elif [ "${FEDAD_DOCKER_ENGINE_AUTOSTART:-1}" != 0 ]; then
    # Sourced (as .ci/run does): prepare the engine now, never aborting the caller (even under `set -e`); if it
    # cannot be prepared, the container tests say so (and fail under CI). Call docker_engine_stop at the end.
    docker_engine_start || _de_log "no engine prepared; the container tests will skip, or fail under CI"
fi
