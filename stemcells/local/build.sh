#!/usr/bin/env bash
# Builds the local CPI's stemcell: a tarball holding `stemcell.MF` and `image`, where the image is a
# .tgz of `bin/bosun-agent` and `etc/stemcell.json` (how the agent knows its stemcell version).
#
#   stemcells/local/build.sh VERSION        prints the tarball's path last
#
# BOSUN_AGENT_BIN=path uses an agent binary already built instead of building one;
# BOSUN_STEMCELL_OUT=dir puts the tarball there (default: target/stemcells).
set -euo pipefail
version="${1:?usage: stemcells/local/build.sh VERSION}"
if ! [[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$ ]]; then
  echo "build.sh: version '$version' must be letters, digits, '.', '+', '_' or '-'" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${BOSUN_STEMCELL_OUT:-$root/target/stemcells}"
agent="${BOSUN_AGENT_BIN:-}"
if [ -z "$agent" ]; then
  cargo build --release --quiet --bin bosun-agent --manifest-path "$root/Cargo.toml" >&2
  agent="$root/target/release/bosun-agent"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/image/bin" "$work/image/etc" "$work/out"
install -m 0755 "$agent" "$work/image/bin/bosun-agent"
printf '{"name":"bosun-local","version":"%s"}\n' "$version" > "$work/image/etc/stemcell.json"
# Reproducible: sorted entries, fixed times and owners, no gzip timestamp.
tar -C "$work/image" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - bin etc | gzip -n > "$work/out/image"
sha="$(sha256sum "$work/out/image" | cut -d' ' -f1)"
cat > "$work/out/stemcell.MF" <<MF
name: bosun-local
version: "$version"
operating_system: local
stemcell_formats: [local-tgz]
api_version: 2
sha1: sha256:$sha
cloud_properties: {}
MF
mkdir -p "$out"
tarball="$out/bosun-local-$version.tgz"
# Written beside the target and renamed into place, so a reader never sees half a tarball.
tar -C "$work/out" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - stemcell.MF image | gzip -n > "$tarball.$$.tmp"
mv "$tarball.$$.tmp" "$tarball"
echo "$tarball"
