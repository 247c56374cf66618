#!/usr/bin/env bash
# Builds the local CPI's stemcell: a tarball holding `stemcell.MF` and `image`, where the image is a
# .tgz of `bin/bosun-agent` and `etc/stemcell.json` (how the agent knows its stemcell version).
#
#   stemcells/local/build.sh VERSION        prints the tarball's path last
#
# BOSUN_AGENT_BIN=path uses an agent binary already built instead of building one;
# BOSUN_STEMCELL_OUT=dir puts the tarball there (default: target/stemcells).
set -euo pipefail
# shellcheck source=../lib.sh
. "$(dirname "$0")/../lib.sh"
stemcell_args "$@"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/image/bin" "$work/image/etc" "$work/out"
install -m 0755 "$agent" "$work/image/bin/bosun-agent"
printf '{"name":"bosun-local","version":"%s"}\n' "$version" > "$work/image/etc/stemcell.json"
# Reproducible: sorted entries, fixed times and owners, no gzip timestamp.
tar -C "$work/image" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - bin etc | gzip -n > "$work/out/image"
stemcell_pack bosun-local local local-tgz "$work/out"
