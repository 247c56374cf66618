#!/usr/bin/env bash
# Builds the Docker CPI's stemcell: a tarball holding `stemcell.MF` and `image`, where the image is
# a root filesystem tarball for `docker import`: a minimal Debian (debootstrap, from the mirror this
# machine's apt sources name) with the tools jobs need (iproute2, procps, ca-certificates,
# openssh-server), bosun-agent at /opt/bosun/bin, the stemcell's name and version in
# /opt/bosun/etc/stemcell.json, and a small init (/opt/bosun/bin/bosun-init) that starts the agent.
#
#   stemcells/docker/build.sh VERSION        prints the tarball's path last
#
# The Debian root filesystem is built once and cached in the output folder (keyed by suite and
# package list), so a second version costs seconds. Needs root (debootstrap).
# BOSUN_AGENT_BIN=path uses an agent binary already built instead of building one;
# BOSUN_STEMCELL_OUT=dir puts the tarball there (default: target/stemcells).
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
stemcell_args "$@"
command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is missing (ci/setup installs it)" >&2; exit 1; }
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
key="$(printf '%s %s' "$suite" "$packages" | sha256sum | cut -c1-12)"
rootfs="$out/docker-rootfs-$suite-$key.tar"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ ! -f "$rootfs" ]; then
  echo "building the $suite root filesystem from $mirror (once; cached as $rootfs)" >&2
  debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -30 "$work/debootstrap.log" >&2
    exit 1
  }
  # What a VM must not share or need: package lists, caches, host keys (made per VM at first boot).
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/etc/ssh/ssh_host_"*
  tar -C "$work/rootfs" --sort=name --numeric-owner -cf "$rootfs.$$.tmp" .
  mv "$rootfs.$$.tmp" "$rootfs"
  rm -rf "$work/rootfs"
fi

mkdir -p "$work/image" "$work/out"
tar -C "$work/image" --numeric-owner -xf "$rootfs"
install -d -m 0755 "$work/image/opt/bosun/bin" "$work/image/opt/bosun/etc" "$work/image/var/vcap"
install -m 0755 "$agent" "$work/image/opt/bosun/bin/bosun-agent"
printf '{"name":"bosun-docker","version":"%s"}\n' "$version" > "$work/image/opt/bosun/etc/stemcell.json"
cat > "$work/image/opt/bosun/bin/bosun-init" <<'INIT'
#!/bin/sh
# The container's init (under Docker's --init, which reaps orphans): per-VM ssh host keys (in the
# background), and the agent, which reads the settings the CPI put in /var/vcap/bosh/settings.json.
set -e
# Host keys are made beside the agent's start, not before it: the agent is what a deploy waits for.
[ -f /etc/ssh/ssh_host_ed25519_key ] || (ssh-keygen -A >/dev/null 2>&1 &)
mkdir -p /var/vcap/bosh
exec /opt/bosun/bin/bosun-agent --root /var/vcap --settings /var/vcap/bosh/settings.json
INIT
chmod 0755 "$work/image/opt/bosun/bin/bosun-init"
tar -C "$work/image" --sort=name --mtime=@0 --numeric-owner -cf - . | gzip -n > "$work/out/image"
stemcell_pack bosun-docker "debian-$suite" docker "$work/out"
