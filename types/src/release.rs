//! Release, job, package and stemcell manifests.

use crate::manifest::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `jobs/<job>/spec` in a release directory; `job.MF` inside a job tarball.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Template source (under `templates/`) → destination relative to the job's directory.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyDefinition>,
    #[serde(default)]
    pub consumes: Vec<LinkDefinition>,
    #[serde(default)]
    pub provides: Vec<LinkDefinition>,
    /// The processes the agent supervises (bosun's replacement for a monit file).
    #[serde(default)]
    pub processes: Vec<ProcessDefinition>,
    /// Default timeout of each lifecycle script, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_timeout: Option<u64>,
    /// A rendered file (its destination) holding a self-contained admin kubeconfig: what
    /// `bosun -d DEPLOYMENT kubeconfig` hands the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PropertyDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<serde_json::Value>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkDefinition {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub optional: bool,
    /// For `provides`: the job properties the link exposes to consumers.
    #[serde(default)]
    pub properties: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessDefinition {
    pub name: String,
    /// Relative to the job's directory (e.g. `bin/etcd`), or absolute.
    pub executable: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds between SIGTERM and SIGKILL when stopping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<u64>,
}

/// `packages/<pkg>/spec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    pub name: String,
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Globs, relative to `src/` or `blobs/` of the release directory.
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub excluded_files: Vec<String>,
}

/// `release.MF` at the top of a release tarball.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub name: String,
    pub version: Version,
    #[serde(default)]
    pub commit_hash: String,
    #[serde(default)]
    pub uncommitted_changes: bool,
    #[serde(default)]
    pub jobs: Vec<ReleaseArtifact>,
    #[serde(default)]
    pub packages: Vec<ReleaseArtifact>,
    /// A compiled release's packages (`compiled_packages/<name>.tgz`), compiled for one stemcell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compiled_packages: Vec<CompiledArtifact>,
}

/// A package of a compiled release: its install target as built for `stemcell`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompiledArtifact {
    pub name: String,
    pub version: String,
    /// The fingerprint of the source it was compiled from.
    pub fingerprint: String,
    /// The compiled tarball's digest, `sha256:<hex>`.
    pub sha1: String,
    /// `os/version` (BOSH writes `ubuntu-jammy/1.200`).
    pub stemcell: String,
    #[serde(default)]
    pub dependencies: Vec<String>,
}

/// A job or package inside a release tarball (`jobs/<name>.tgz`, `packages/<name>.tgz`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseArtifact {
    pub name: String,
    pub version: String,
    pub fingerprint: String,
    /// The tarball's digest, `sha256:<hex>` (the key keeps BOSH's name).
    pub sha1: String,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
}

/// `stemcell.MF` at the top of a stemcell tarball.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StemcellManifest {
    pub name: String,
    pub version: Version,
    pub operating_system: String,
    #[serde(default)]
    pub stemcell_formats: Vec<String>,
    #[serde(default = "empty_object")]
    pub cloud_properties: serde_json::Value,
    /// Digest of `image`, `sha256:<hex>`.
    pub sha1: String,
    #[serde(default = "one")]
    pub api_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bosh_protocol: Option<serde_json::Value>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn one() -> u32 {
    1
}

/// `config/blobs.yml`: blob path (under `blobs/`) → where it comes from and its digest.
pub type BlobsYml = BTreeMap<String, BlobEntry>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlobEntry {
    pub size: u64,
    /// `sha256:<hex>`.
    pub sha: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<BlobSource>,
}

/// Where a blob comes from: exactly one of the two.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BlobSource {
    /// Fetched with `apt-get download <package>=<version>` through the machine's apt sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian: Option<DebianPackage>,
    /// One file of a Debian source package, fetched with `apt-get source --download-only
    /// <package>=<version>` (needs a `deb-src` source, which `ci/setup` adds beside the `deb` ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian_source: Option<DebianSourceFile>,
    /// Fetched from a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DebianPackage {
    pub package: String,
    pub version: String,
    /// Another Debian suite than the machine's own (e.g. the next release, `trixie`), fetched
    /// through the machine's Debian mirrors with a private apt configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DebianSourceFile {
    pub package: String,
    pub version: String,
    /// The file of the source package to keep (e.g. its `.orig.tar.gz`).
    pub file: String,
}
