# Shared by the stemcell builders (sourced): the version check, the agent binary, and the
# stemcell tarball (stemcell.MF + image), written reproducibly and atomically.
#
#   stemcell_args VERSION              checks VERSION; sets root, out, agent
#   stemcell_pack NAME OS FORMAT DIR   DIR/image → $out/NAME-VERSION.tgz; prints its path

stemcell_args() {
  version="${1:?usage: build.sh VERSION}"
  if ! [[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$ ]]; then
    echo "build.sh: version '$version' must be letters, digits, '.', '+', '_' or '-'" >&2
    exit 2
  fi
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  out="${BOSUN_STEMCELL_OUT:-$root/target/stemcells}"
  agent="${BOSUN_AGENT_BIN:-}"
  if [ -z "$agent" ]; then
    cargo build --release --quiet --bin bosun-agent --manifest-path "$root/Cargo.toml" >&2
    agent="$root/target/release/bosun-agent"
  fi
}

stemcell_pack() {
  local name="$1" os="$2" format="$3" dir="$4"
  local sha
  sha="$(sha256sum "$dir/image" | cut -d' ' -f1)"
  cat > "$dir/stemcell.MF" <<MF
name: $name
version: "$version"
operating_system: $os
stemcell_formats: [$format]
api_version: 2
sha1: sha256:$sha
cloud_properties: {}
MF
  mkdir -p "$out"
  local tarball="$out/$name-$version.tgz"
  # Written beside the target and renamed into place, so a reader never sees half a tarball.
  tar -C "$dir" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - stemcell.MF image | gzip -n > "$tarball.$$.tmp"
  mv "$tarball.$$.tmp" "$tarball"
  echo "$tarball"
}
