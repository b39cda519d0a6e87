#!/usr/bin/env bash
# The Debian base of the stand-in images (scripts/standins): `debootstrap --variant=minbase bookworm` plus
# wget (the health checks of the official images call it) and busybox (the Prometheus images are busybox
# images: their stand-ins run busybox's wget), as a root filesystem tarball for `docker import`.
# Built once per machine and package list from the Debian mirror (no container registry is needed), cached.
set -euo pipefail

cache=${OLLAMA_FLEET_CACHE:-$HOME/.cache/ollama-fleet}/docker-base
suite=bookworm
packages=wget,ca-certificates,busybox
tarball=$cache/debian-$suite-minbase-$(printf '%s' "$packages" | sha256sum | cut -c1-8).tar
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ -s "$tarball" ]; then
  echo "$tarball"
  exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
[ -s "$tarball" ] && { echo "$tarball"; exit 0; }

rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
  || { tail -n 20 "$cache/debootstrap.log" >&2; echo "debootstrap of $suite failed" >&2; exit 1; }
# Keep the image lean: no apt lists or caches, no docs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$tarball"
