#!/bin/sh
# PID 1 of one emulated instance, run by the netns runtime as
#   ip netns exec NS unshare --pid --fork --mount-proc --uts --ipc --mount sh init.sh DIR HOSTNAME SSHD [KEEP...]
# It is already in the instance's own network, PID, UTS, IPC and (private) mount namespaces, so every mount below is
# seen by the instance only. It gives the instance its container-like view of the host's file system, then becomes
# the instance's sshd: sshd reaps orphans (nohup'd Ray daemons, onstart), and when it dies the kernel ends every
# process of the PID namespace, which is how stop and destroy end an instance.
#   DIR       the instance's state directory (home/, hosts, sshd_config, keep/), outside /root, /tmp and /dev/shm
#   HOSTNAME  the container's hostname
#   SSHD      absolute path of sshd (it re-executes itself, so it needs one)
#   KEEP...   host paths under /root, /tmp or /dev/shm that must stay visible (the Python environment running the
#             emulator: the image stand-in), re-bound after those are covered
set -eu
dir=$1
host=$2
sshd=$3
shift 3

printf '%s' "$host" > /proc/sys/kernel/hostname

# Hold each KEEP path at keep/N before covering its parent, then put it back at its own path.
i=0
for path in "$@"; do
    mkdir -p "$dir/keep/$i"
    mount --bind "$path" "$dir/keep/$i"
    i=$((i + 1))
done

mount --bind "$dir/home" /root
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount --bind "$dir/hosts" /etc/hosts

i=0
for path in "$@"; do
    mkdir -p "$path"
    mount --bind "$dir/keep/$i" "$path"
    i=$((i + 1))
done

cd /root
exec "$sshd" -D -e -f "$dir/sshd_config"
