#!/bin/bash
# boot-systemd.sh - boot a throw-away REAL systemd as PID 1 on a host whose PID 1
# is not systemd, without docker and without systemd-nspawn.
#
# Root filesystem = overlayfs(lower=host "/", upper=tmpfs), so nothing on the host
# is written. Namespaces: pid, mount (private propagation), uts, ipc, net, cgroup.
# Needs only util-linux (unshare, nsenter, setpriv, pivot_root) + systemd package.
#
#   boot-systemd.sh start NAME         boot; returns once `is-system-running --wait` is done
#   boot-systemd.sh exec  NAME CMD...  run CMD inside (systemctl, journalctl, cp, ...)
#   boot-systemd.sh stop  NAME         clean poweroff (SIGKILL of the namespace as fallback)
#
# Env: SDPROBE_DIR (state dir, default /tmp/sdprobe), SDPROBE_BIND="hostpath ..." (bound rw
# into the container at the same path), SDPROBE_MAX_LIFETIME (seconds, default 1800 -
# hard cap after which the whole namespace is SIGKILLed even if `stop` is never called),
# SDPROBE_NET=host (share the host network namespace, e.g. to reach package registries
# from inside; the default is a private namespace with loopback only).
#
# dropline's own copy, used by tests/e2e (conftest.py boots one container per test session).
# Changed from the script it was adapted from: `start` exits 1 when the
# system did not come up "running" or "degraded" (the container is left up: `stop` it).
set -euo pipefail
SELF=$(readlink -f "$0")
BASE=${SDPROBE_DIR:-/tmp/sdprobe}
cmd=${1:?usage: $0 start|exec|stop|__init NAME ...}; name=${2:?name}; shift 2
S=$BASE/$name; R=$S/root
# cgroup layout: this host is "hybrid" (v1 controllers + name=systemd v1 + empty cgroup2 at
# /sys/fs/cgroup/unified). On a pure-v2 host, or with SDPROBE_CGROUP=unified, the container
# gets only a cgroup2 tree (systemd then runs in unified mode).
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  CGMODE=unified; CG_V1=; CG_V2=/sys/fs/cgroup/sdprobe-$name
else
  CGMODE=${SDPROBE_CGROUP:-hybrid}
  CG_V1=/sys/fs/cgroup/systemd/sdprobe-$name; CG_V2=/sys/fs/cgroup/unified/sdprobe-$name
  [ "$CGMODE" = unified ] && CG_V1=
fi
NETNS=--net; [ "${SDPROBE_NET:-}" = host ] && NETNS=
pid1() { cat "$S/pid1"; }
nsrun() { nsenter --target "$(pid1)" --mount --uts --ipc ${NETNS:+--net} --pid --cgroup --root --wd -- "$@"; }

case $cmd in
start)
  [ "$(id -u)" = 0 ] || { echo "must be root" >&2; exit 1; }
  [ -e "$S/pid1" ] && { echo "$name already running" >&2; exit 1; }
  mkdir -p "$S/root" "$S/ovl"
  for cg in $CG_V1 $CG_V2; do mkdir -p "$cg"; done
  t0=$(date +%s%N)
  rm -f "$S/pid1"
  # subshell: enter the dedicated cgroups, then `script` (gives the container a pty as
  # /dev/console, logged to console.log), then new namespaces; unshare's child is PID 1.
  ( for cg in $CG_V1 $CG_V2; do echo $BASHPID > "$cg/cgroup.procs"; done
    exec setsid script -qfec "trap '' HUP; exec setsid -w timeout -s KILL ${SDPROBE_MAX_LIFETIME:-1800} \
      unshare --pid --fork --kill-child --mount --propagation private \
              --uts --ipc $NETNS --cgroup -- $SELF __init $name" "$S/console.log"
  ) </dev/null >"$S/outer.log" 2>&1 &
  o=$!; echo $o > "$S/outer.pid"
  for _ in $(seq 100); do [ -s "$S/pid1" ] && break; sleep 0.1; done   # written by __init
  c=$(cat "$S/pid1" 2>/dev/null || true)
  # wait until systemd is PID 1 in there and its private bus socket exists
  for _ in $(seq 300); do
    kill -0 "$o" 2>/dev/null || { echo "container died during boot:" >&2; cat "$S/console.log" >&2
                                   rm -f "$S/pid1"; rmdir $CG_V1 $CG_V2 2>/dev/null; exit 1; }
    [ "$(cat /proc/$c/comm 2>/dev/null)" = systemd ] && nsrun test -S /run/systemd/private 2>/dev/null && break; sleep 0.1
  done
  state=$(timeout 120 "$SELF" exec "$name" systemctl is-system-running --wait 2>&1 || true)
  echo "booted $name: host pid of its PID 1 = $c, state=$state, $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  case $state in running|degraded) ;; *) echo "$name did not boot (state=$state): stop it" >&2; exit 1 ;; esac
  ;;

__init)   # runs as PID 1 of the new pid namespace, inside the new (private) mount namespace
  read -r hostpid _ < /proc/self/stat      # host /proc still mounted: our PID as seen by the host
  echo "$hostpid" > "$S/pid1"
  console=$(tty || true)
  mount -n -t tmpfs -o mode=755 sdprobe-upper "$S/ovl"
  mkdir "$S/ovl/upper" "$S/ovl/work"
  mount -n -t overlay sdprobe-root -o "lowerdir=/,upperdir=$S/ovl/upper,workdir=$S/ovl/work" "$R"
  for b in ${SDPROBE_BIND:-}; do mkdir -p "$R$b"; mount -n --rbind "$b" "$R$b"; done
  mount -n -t proc -o nosuid,nodev,noexec proc "$R/proc"
  for p in sys sysrq-trigger; do [ -e "$R/proc/$p" ] || continue; mount -n --bind "$R/proc/$p" "$R/proc/$p"; mount -n -o remount,bind,ro "$R/proc/$p"; done
  mount -n -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"   # ro /sys => udevd etc. are skipped
  if [ "$CGMODE" = unified ]; then   # cgroup fs mounted inside the new cgroupns shows only our subtree
    mount -n -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
  else
    mount -n -t tmpfs -o nosuid,nodev,noexec,mode=755 cgroup-root "$R/sys/fs/cgroup"
    mkdir "$R/sys/fs/cgroup/systemd" "$R/sys/fs/cgroup/unified"
    mount -n -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
    mount -n -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup/unified"
  fi
  mount -n -t tmpfs -o nosuid,mode=755 sdprobe-dev "$R/dev"     # minimal /dev, no host disks
  for d in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    set -- $d; mknod -m 666 "$R/dev/$1" c "$2" "$3"; done
  mkdir "$R/dev/pts" "$R/dev/shm"
  mount -n -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
  ln -s pts/ptmx "$R/dev/ptmx"; ln -s /proc/self/fd "$R/dev/fd"
  if [ -c "$console" ]; then touch "$R/dev/console"; mount -n --bind "$console" "$R/dev/console"; fi
  ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
  # container-local config (goes to the tmpfs upper layer only): drop the host's enabled
  # units (postgres, timers, getty...), own hostname + machine-id, plain multi-user target
  find "$R/etc/systemd/system" -mindepth 2 -path '*.wants/*' -delete
  echo "sdprobe-$name" > "$R/etc/hostname"
  tr -d - < /proc/sys/kernel/random/uuid > "$R/etc/machine-id"
  ln -sfn /lib/systemd/system/multi-user.target "$R/etc/systemd/system/default.target"
  for u in console-getty.service container-getty@.service getty.target; do   # agetty would vhangup the console
    ln -sfn /dev/null "$R/etc/systemd/system/$u"; done
  cd "$R"; mkdir -p .oldroot; pivot_root . .oldroot; cd /; umount -n -l /.oldroot; rmdir /.oldroot
  # drop capabilities that could touch the shared kernel (modules, clock, raw io, ...)
  exec setpriv --bounding-set -sys_module,-sys_rawio,-sys_time,-sys_pacct,-syslog,-wake_alarm,-block_suspend,-mac_admin,-mac_override,-audit_read,-bpf,-perfmon \
       env -i container=sdprobe PATH=/usr/sbin:/usr/bin:/sbin:/bin \
       /lib/systemd/systemd --log-target=journal-or-kmsg --show-status=yes
  ;;

exec) nsrun "$@" ;;

stop)
  [ -e "$S/pid1" ] || { echo "$name not running" >&2; exit 1; }
  o=$(cat "$S/outer.pid"); t0=$(date +%s%N)
  timeout 10 "$SELF" exec "$name" systemctl poweroff --no-block >/dev/null 2>&1 || kill -s RTMIN+4 "$(pid1)" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$o" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$o" 2>/dev/null; then echo "clean shutdown timed out, SIGKILL" >&2; kill -KILL "$(pid1)" 2>/dev/null || true; sleep 1; fi
  for cg in $CG_V1 $CG_V2; do [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
  rm -f "$S/pid1" "$S/outer.pid"
  echo "stopped $name in $(( ($(date +%s%N) - t0) / 1000000 )) ms; console log: $S/console.log"
  ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
