#!/usr/bin/env bash
# Builds the Docker CPI's stemcell: a tarball holding `stemcell.MF` and `image`, where the image is
# a root filesystem tarball for `docker import`: a minimal Debian (mmdebstrap, from the mirror this
# machine's apt sources name) with the tools jobs need (iproute2, procps, ca-certificates,
# openssh-server), bosun-agent at /opt/bosun/bin, the stemcell's name and version in
# /opt/bosun/etc/stemcell.json, and a small init (/opt/bosun/bin/bosun-init) that starts the agent.
#
#   stemcells/docker/build.sh VERSION        prints the tarball's path last
#
# The Debian root filesystem is built once and cached (keyed by suite and package list) in
# BOSUN_ROOTFS_CACHE, else /var/cache/bosun/docker-rootfs where it can be written, else the output
# folder; a second version costs seconds. Root is not needed: as another user mmdebstrap builds in
# a user namespace (its subordinate ids from /etc/subuid, as useradd gives them). bosun's files
# are appended to the root filesystem's tarball, never extracted, so their owners stay root's.
# BOSUN_AGENT_BIN=path uses an agent binary already built instead of building one;
# BOSUN_STEMCELL_OUT=dir puts the tarball there (default: target/stemcells).
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
stemcell_args "$@"
command -v mmdebstrap >/dev/null || { echo "build.sh: mmdebstrap is missing (ci/setup installs it)" >&2; exit 1; }
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")"
packages="iproute2,procps,ca-certificates,openssh-server"

# The mirror this machine's apt uses for its own suite (deb822 .sources files or sources.list).
mirror="$(
  {
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true
  } | awk -v suite="$suite" '
      /^URIs:/ { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri != "") { print uri; exit } }
      /^$/ { uri = "" }'
)"
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v suite="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(http|https|file):/ && $(i + 1) == suite) { print $i; exit } }')"
fi
[ -n "$mirror" ] || { echo "build.sh: no apt source for suite '$suite' found in /etc/apt" >&2; exit 1; }

mkdir -p "$out"
cache="${BOSUN_ROOTFS_CACHE:-/var/cache/bosun/docker-rootfs}"
if ! { mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; }; then
  cache="$out"
fi
key="$(printf '%s %s' "$suite" "$packages" | sha256sum | cut -c1-12)"
rootfs="$cache/docker-rootfs-$suite-$key.tar"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ ! -f "$rootfs" ]; then
  echo "building the $suite root filesystem from $mirror (once; cached as $rootfs)" >&2
  # What a VM must not share or need: package lists and caches (mmdebstrap's clean-up), host
  # keys (made per VM at first boot).
  mmdebstrap --variant=minbase --include="$packages" --mode=auto --format=tar \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    "$suite" "$work/rootfs.tar" "$mirror" >"$work/mmdebstrap.log" 2>&1 || {
    tail -30 "$work/mmdebstrap.log" >&2
    exit 1
  }
  # Written beside the cache entry and renamed into place: a reader never sees half of it.
  mv "$work/rootfs.tar" "$rootfs.$$.tmp"
  mv "$rootfs.$$.tmp" "$rootfs"
fi

mkdir -p "$work/add" "$work/out"
install -d -m 0755 "$work/add/opt/bosun/bin" "$work/add/opt/bosun/etc" "$work/add/var/vcap"
install -m 0755 "$agent" "$work/add/opt/bosun/bin/bosun-agent"
printf '{"name":"bosun-docker","version":"%s"}\n' "$version" > "$work/add/opt/bosun/etc/stemcell.json"
cat > "$work/add/opt/bosun/bin/bosun-init" <<'INIT'
#!/bin/sh
# The container's init (under Docker's --init, which reaps orphans): per-VM ssh host keys (in the
# background), and the agent, which reads the settings the CPI put in /var/vcap/bosh/settings.json.
set -e
# Host keys are made beside the agent's start, not before it: the agent is what a deploy waits for.
[ -f /etc/ssh/ssh_host_ed25519_key ] || (ssh-keygen -A >/dev/null 2>&1 &)
mkdir -p /var/vcap/bosh
exec /opt/bosun/bin/bosun-agent --root /var/vcap --settings /var/vcap/bosh/settings.json
INIT
chmod 0755 "$work/add/opt/bosun/bin/bosun-init"
cp "$rootfs" "$work/image.tar"
tar -C "$work/add" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -rf "$work/image.tar" ./opt/bosun ./var/vcap
# Fast compression: the image is unpacked once, by `docker import`, on this machine.
gzip -n -1 < "$work/image.tar" > "$work/out/image"
stemcell_pack bosun-docker "debian-$suite" docker "$work/out"
