//! The deployment manifest (BOSH manifest v2).

pub use crate::yaml::check_name;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// A string that YAML may have written as a number (`version: 1`, `version: "1.2"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct Version(pub String);

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
        }
        Ok(Version(
            match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a version string or number"))? {
                Raw::S(s) => s,
                Raw::I(i) => i.to_string(),
                Raw::F(f) => f.to_string(),
            },
        ))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeploymentManifest {
    pub name: String,
    /// Ignored, as by BOSH CLI v2; accepted so old manifests load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub director_uuid: Option<String>,
    #[serde(default)]
    pub releases: Vec<ReleaseRef>,
    #[serde(default)]
    pub stemcells: Vec<StemcellRef>,
    pub update: UpdatePolicy,
    #[serde(default)]
    pub instance_groups: Vec<InstanceGroup>,
    #[serde(default)]
    pub variables: Vec<VariableDefinition>,
    /// Global properties (deprecated in BOSH, still honoured as the last fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<serde_json::Value>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    /// Where packages compile (BOSH v1's place for it; the cloud-config's is used when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compilation: Option<crate::cloud_config::Compilation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Features {
    #[serde(default)]
    pub use_dns_addresses: Option<bool>,
    #[serde(default)]
    pub randomize_az_placement: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRef {
    pub name: String,
    pub version: Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StemcellRef {
    pub alias: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub version: Version,
}

/// `max_in_flight`: a number or a percentage of the instances (per AZ), at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxInFlight {
    Count(u32),
    Percent(u32),
}

impl<'de> Deserialize<'de> for MaxInFlight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        match &v {
            serde_yaml::Value::Number(n) => match n.as_u64() {
                Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Ok(MaxInFlight::Count(n as u32)),
                _ => Err(serde::de::Error::custom(
                    "max_in_flight must be a whole number ≥ 1 or a percentage like \"25%\"",
                )),
            },
            serde_yaml::Value::String(s) => {
                let s = s.trim();
                if let Some(p) = s.strip_suffix('%') {
                    match p.trim().parse::<u32>() {
                        Ok(p) if (1..=100).contains(&p) => Ok(MaxInFlight::Percent(p)),
                        _ => Err(serde::de::Error::custom(format!(
                            "max_in_flight `{s}`: a percentage must be 1% to 100%"
                        ))),
                    }
                } else {
                    match s.parse::<u32>() {
                        Ok(n) if n >= 1 => Ok(MaxInFlight::Count(n)),
                        _ => Err(serde::de::Error::custom(format!(
                            "max_in_flight `{s}` is not a number ≥ 1 or a percentage"
                        ))),
                    }
                }
            }
            _ => Err(serde::de::Error::custom("max_in_flight must be a number or a percentage")),
        }
    }
}

/// Written back the way an operator writes it: `2` or `"25%"`.
impl Serialize for MaxInFlight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxInFlight::Count(n) => s.serialize_u32(*n),
            MaxInFlight::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl std::str::FromStr for MaxInFlight {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v = match s.trim().parse::<u64>() {
            Ok(n) => serde_yaml::Value::Number(n.into()),
            Err(_) => serde_yaml::Value::String(s.to_string()),
        };
        serde_yaml::from_value(v).map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for MaxInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxInFlight::Count(n) => write!(f, "{n}"),
            MaxInFlight::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl MaxInFlight {
    /// How many of `total` changing instances may be updated at once: a percentage is floored,
    /// at least 1 and at most `total` (BOSH's rule); a count is at least 1.
    pub fn resolve(self, total: usize) -> usize {
        match self {
            MaxInFlight::Count(n) => n as usize,
            MaxInFlight::Percent(p) => (total * p as usize / 100).min(total),
        }
        .max(1)
    }
}

/// A watch time: `30000` (ms) or `5000-60000` (a range: the instance must be running before the
/// upper bound; it is first checked at the lower bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WatchTime {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl<'de> Deserialize<'de> for WatchTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        let bad = || serde::de::Error::custom("a watch time is milliseconds (`30000`) or a range (`5000-60000`)");
        match &v {
            serde_yaml::Value::Number(n) => {
                let n = n.as_u64().ok_or_else(bad)?;
                Ok(WatchTime { min_ms: n, max_ms: n })
            }
            serde_yaml::Value::String(s) => {
                let (a, b) = match s.split_once('-') {
                    Some((a, b)) => (a.trim(), b.trim()),
                    None => (s.trim(), s.trim()),
                };
                let a: u64 = a.parse().map_err(|_| bad())?;
                let b: u64 = b.parse().map_err(|_| bad())?;
                if a > b {
                    return Err(serde::de::Error::custom(format!("watch time `{s}` ends before it starts")));
                }
                Ok(WatchTime { min_ms: a, max_ms: b })
            }
            _ => Err(bad()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VmStrategy {
    #[default]
    DeleteCreate,
    CreateSwapDelete,
}

/// The `update` block. At the top level `canaries`, `max_in_flight` and the watch times are
/// required (as in BOSH); in an instance group every key is an override.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    #[serde(default)]
    pub canaries: Option<u32>,
    #[serde(default)]
    pub max_in_flight: Option<MaxInFlight>,
    #[serde(default)]
    pub canary_watch_time: Option<WatchTime>,
    #[serde(default)]
    pub update_watch_time: Option<WatchTime>,
    #[serde(default)]
    pub serial: Option<bool>,
    #[serde(default)]
    pub vm_strategy: Option<VmStrategy>,
    /// bosun: timeout for each lifecycle script, in ms (BOSH has none).
    #[serde(default)]
    pub script_timeout: Option<u64>,
}

/// An `update` block with every value decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUpdatePolicy {
    pub canaries: u32,
    pub max_in_flight: MaxInFlight,
    pub canary_watch_time: (u64, u64),
    pub update_watch_time: (u64, u64),
    pub serial: bool,
    pub vm_strategy: VmStrategy,
    /// The manifest's script timeout, if it sets one (else the jobs' specs decide).
    pub script_timeout_ms: Option<u64>,
}

impl UpdatePolicy {
    /// Overlays a group's block on the deployment's. Missing required values take BOSH-like defaults.
    pub fn resolve(&self, group: Option<&UpdatePolicy>) -> ResolvedUpdatePolicy {
        let g = group.cloned().unwrap_or_default();
        let mif = g.max_in_flight.or(self.max_in_flight).unwrap_or(MaxInFlight::Count(1));
        let cw = g.canary_watch_time.or(self.canary_watch_time).unwrap_or(WatchTime { min_ms: 1000, max_ms: 60000 });
        let uw = g.update_watch_time.or(self.update_watch_time).unwrap_or(WatchTime { min_ms: 1000, max_ms: 60000 });
        ResolvedUpdatePolicy {
            canaries: g.canaries.or(self.canaries).unwrap_or(1),
            max_in_flight: mif,
            canary_watch_time: (cw.min_ms, cw.max_ms),
            update_watch_time: (uw.min_ms, uw.max_ms),
            serial: g.serial.or(self.serial).unwrap_or(true),
            vm_strategy: g.vm_strategy.or(self.vm_strategy).unwrap_or_default(),
            script_timeout_ms: g.script_timeout.or(self.script_timeout),
        }
    }
}

impl ResolvedUpdatePolicy {
    pub fn max_in_flight_for(&self, total: usize) -> usize {
        self.max_in_flight.resolve(total)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    #[default]
    Service,
    Errand,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceGroup {
    pub name: String,
    #[serde(default)]
    pub azs: Vec<String>,
    pub instances: u32,
    #[serde(default)]
    pub jobs: Vec<JobRef>,
    pub vm_type: String,
    #[serde(default)]
    pub vm_extensions: Vec<String>,
    pub stemcell: String,
    #[serde(default)]
    pub networks: Vec<NetworkRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_disk: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_disk_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdatePolicy>,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobRef {
    pub name: String,
    pub release: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<serde_json::Value>,
    /// `link name → wiring` (`nil` disables an optional link).
    #[serde(default, deserialize_with = "links")]
    pub consumes: BTreeMap<String, Option<ConsumeSpec>>,
    /// `link name → how it is provided` (`nil`: not provided).
    #[serde(default, deserialize_with = "links")]
    pub provides: BTreeMap<String, Option<ProvideSpec>>,
}

/// A job's `consumes` / `provides`: each link's wiring, or no link at all, written `nil` as in
/// BOSH's manifests (YAML reads that as the string "nil") or `~` / `null`.
fn links<'de, D, T>(d: D) -> Result<BTreeMap<String, Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let raw: BTreeMap<String, serde_yaml::Value> = BTreeMap::deserialize(d)?;
    raw.into_iter()
        .map(|(name, v)| match v {
            serde_yaml::Value::Null => Ok((name, None)),
            serde_yaml::Value::String(s) if s == "nil" => Ok((name, None)),
            other => serde_yaml::from_value(other)
                .map(|t| (name.clone(), Some(t)))
                .map_err(|e| serde::de::Error::custom(format!("link `{name}`: {e}"))),
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsumeSpec {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub deployment: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ip_addresses: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProvideSpec {
    #[serde(default, rename = "as")]
    pub alias: Option<String>,
    #[serde(default)]
    pub shared: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkRef {
    pub name: String,
    #[serde(default)]
    pub static_ips: Vec<String>,
    #[serde(default)]
    pub default: Vec<String>,
}

/// A `variables:` entry. Fields bosh knows but bosun does not use (`opsname`, `consumes`,
/// `update`) are accepted and ignored, as bosh ignores what it does not know here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VariableDefinition {
    pub name: String,
    /// Empty: the variable is never generated, only given (bosh allows a definition without a
    /// type).
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_mode: Option<String>,
}

impl DeploymentManifest {
    /// Parses and checks what can be checked without the cloud-config: names are unique, the top
    /// level `update` block is complete, instance counts are sane.
    pub fn parse(source_name: &str, value: serde_yaml::Value) -> Result<Self, crate::DocumentError> {
        let m: DeploymentManifest = crate::yaml::from_value(source_name, value)?;
        m.validate(source_name)?;
        Ok(m)
    }

    fn validate(&self, src: &str) -> Result<(), crate::DocumentError> {
        use crate::DocumentError as E;
        check_name(src, "/name", &self.name)?;
        for (key, v) in
            [("canaries", self.update.canaries.is_some()), ("max_in_flight", self.update.max_in_flight.is_some())]
        {
            if !v {
                return Err(E::invalid(src, "/update", format!("missing required key `{key}`")));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, g) in self.instance_groups.iter().enumerate() {
            check_name(src, format!("/instance_groups/{i}/name"), &g.name)?;
            if !seen.insert(&g.name) {
                return Err(E::invalid(
                    src,
                    format!("/instance_groups/{i}/name"),
                    format!("instance group `{}` is defined twice", g.name),
                ));
            }
            if g.instances > 1000 {
                return Err(E::invalid(
                    src,
                    format!("/instance_groups/{i}/instances"),
                    "more than 1000 instances in one group",
                ));
            }
            if g.persistent_disk.is_some() && g.persistent_disk_type.is_some() {
                return Err(E::invalid(
                    src,
                    format!("/instance_groups/{i}"),
                    "`persistent_disk` and `persistent_disk_type` exclude each other",
                ));
            }
            let mut jobs = std::collections::BTreeSet::new();
            for (j, job) in g.jobs.iter().enumerate() {
                if !jobs.insert(&job.name) {
                    return Err(E::invalid(
                        src,
                        format!("/instance_groups/{i}/jobs/{j}/name"),
                        format!("job `{}` appears twice in instance group `{}`", job.name, g.name),
                    ));
                }
            }
            if g.networks.is_empty() {
                return Err(E::invalid(
                    src,
                    format!("/instance_groups/{i}/networks"),
                    "an instance group needs at least one network",
                ));
            }
            if g.networks.len() > 1 && !g.networks.iter().any(|n| n.default.iter().any(|d| d == "gateway")) {
                return Err(E::invalid(
                    src,
                    format!("/instance_groups/{i}/networks"),
                    "with more than one network, one must be `default: [dns, gateway]`",
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.releases.iter().enumerate() {
            if !names.insert(&r.name) {
                return Err(E::invalid(
                    src,
                    format!("/releases/{i}/name"),
                    format!("release `{}` is listed twice", r.name),
                ));
            }
        }
        let mut aliases = std::collections::BTreeSet::new();
        for (i, s) in self.stemcells.iter().enumerate() {
            if !aliases.insert(&s.alias) {
                return Err(E::invalid(
                    src,
                    format!("/stemcells/{i}/alias"),
                    format!("stemcell alias `{}` is used twice", s.alias),
                ));
            }
            if s.os.is_none() == s.name.is_none() {
                return Err(E::invalid(src, format!("/stemcells/{i}"), "give exactly one of `os` and `name`"));
            }
        }
        Ok(())
    }
}
