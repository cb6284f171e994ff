#!/bin/bash
# Power on one simulated terminal. The supervisor runs this as PID 1 of fresh PID, mount and UTS
# namespaces, already inside the terminal's network namespace. It assembles the terminal's root
# (read-only shared layers under the terminal's own writable "flash"), gives it a fresh /run, /tmp
# and /dev, pivots into it and hands over to the terminal's init. Every mount made here lives and
# dies with this mount namespace, so a killed terminal leaves nothing in the host's mount table.
#
# usage: boot-terminal.sh SERIAL TERMINAL_DIR LOWERDIRS [PYTHON39_DIR]
set -euo pipefail
serial=$1 dir=$2 lower=$3 py39=${4:-}

mount --make-rprivate /
hostname "$serial"
root=$dir/root
mkdir -p "$root" "$dir/flash/upper" "$dir/flash/work"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/flash/upper,workdir=$dir/flash/work" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,nodev,mode=755,size=16m tmpfs "$root/run"
mount -t tmpfs -o nosuid,nodev,mode=1777,size=64m tmpfs "$root/tmp"
mount -t tmpfs -o nosuid,mode=755,size=1m tmpfs "$root/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<< "$node"
    mknod -m 666 "$root/dev/$name" c "$major" "$minor"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
mount -t tmpfs -o nosuid,nodev,size=8m tmpfs "$root/dev/shm"
if [ -n "$py39" ] && [ -d "$py39" ]; then
    # The older model's Python, read-only: it proves the modules on the oldest target Python.
    mkdir -p "$root/opt/python3.9"
    mount --bind -o ro "$py39" "$root/opt/python3.9"
    mount -o remount,bind,ro "$root/opt/python3.9"
fi
cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot 2>/dev/null || true
exec /sbin/posinit
