//! Input resolution: director-side variables (generated, stored encrypted), strict interpolation,
//! the typed manifest, the latest cloud-config, releases and stemcells — then the pure planner.

use super::step::DeployError;
use crate::planner::{plan, Plan, PlanningInput, Requests};
use crate::records::{CloudConfigRecord, InstanceRecord, ReleaseRecord, StemcellRecord};
use crate::store::{tables, State, StoreError, Tree};
use crate::Director;
use bosun_types::api::VariableView;
use bosun_types::cloud_config::CloudConfig;
use bosun_types::manifest::{DeploymentManifest, VariableDefinition};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// A prepared deploy: everything decided, nothing done.
pub struct Prepared {
    pub manifest: DeploymentManifest,
    pub cloud_config: CloudConfigRecord,
    pub plan: Plan,
    /// Variables generated for this deploy, to store when it
    /// goes ahead.
    pub generated: Vec<GeneratedVariable>,
}

#[derive(serde::Deserialize)]
pub(crate) struct VariablesOnly {
    #[serde(default)]
    variables: Vec<VariableDefinition>,
}

pub(crate) fn variable_key(deployment: &str, name: &str) -> String {
    format!("{deployment}/{name}")
}

/// A variable the director generated for a deploy.
pub struct GeneratedVariable {
    pub name: String,
    pub kind: String,
    pub value: serde_yaml::Value,
    /// [`definition_digest`] of what it was generated from.
    pub definition: String,
}

/// A stored variable: its value and a digest of the definition it was generated from (absent in
/// what older directors stored), which `update_mode: converge` compares; its type, id and when it
/// was generated, which `bosun variables` shows (absent in what older directors stored).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum StoredVariable {
    Generated {
        value: serde_yaml::Value,
        definition: String,
        #[serde(default)]
        kind: Option<String>,
        #[serde(default)]
        id: Option<u64>,
        #[serde(default)]
        generated_at: Option<u64>,
    },
    Value(serde_yaml::Value),
}

/// A digest of what a variable is generated from: its type and options.
pub(crate) fn definition_digest(def: &VariableDefinition) -> String {
    bosun_types::digest::sha256_digest(
        serde_json::to_string(&(&def.kind, &def.options)).expect("serializable").as_bytes(),
    )
}

async fn load_variables(
    d: &Director,
    deployment: &str,
) -> Result<BTreeMap<String, (serde_yaml::Value, Option<String>)>, DeployError> {
    let prefix = variable_key(deployment, "");
    let mut out = BTreeMap::new();
    for (key, sealed) in d.state.kv().scan_prefix(Tree::Variables, &prefix).await? {
        let name = key[prefix.len()..].to_string();
        let plain = d.secrets.open(&sealed).map_err(|e| DeployError::Input(format!("variable `{name}`: {e}")))?;
        match serde_json::from_slice(&plain) {
            Ok(StoredVariable::Generated { value, definition, .. }) => out.insert(name, (value, Some(definition))),
            Ok(StoredVariable::Value(value)) => out.insert(name, (value, None)),
            Err(_) => None,
        };
    }
    Ok(out)
}

/// Stores generated variables (value, definition digest, type, a new id, the time), sealed.
pub async fn store_variables(d: &Director, deployment: &str, vars: &[GeneratedVariable]) -> Result<(), StoreError> {
    for v in vars {
        let stored = StoredVariable::Generated {
            value: v.value.clone(),
            definition: v.definition.clone(),
            kind: Some(v.kind.clone()),
            id: Some(d.state.next_id("variable").await?),
            generated_at: Some(d.clock.unix_secs()),
        };
        let sealed = d.secrets.seal(&serde_json::to_vec(&stored).expect("serializable"));
        d.state.kv().put(Tree::Variables, &variable_key(deployment, &v.name), &sealed).await?;
    }
    Ok(())
}

/// A deployment's stored variables without their values (`bosun variables`): name, type, id and
/// generation time, as far as the director that stored each recorded them.
pub async fn list_variables(d: &Director, deployment: &str) -> Result<Vec<VariableView>, DeployError> {
    let prefix = variable_key(deployment, "");
    let mut out = Vec::new();
    for (key, sealed) in d.state.kv().scan_prefix(Tree::Variables, &prefix).await? {
        let name = key[prefix.len()..].to_string();
        let plain = d.secrets.open(&sealed).map_err(|e| DeployError::Input(format!("variable `{name}`: {e}")))?;
        let (kind, id, generated_at) = match serde_json::from_slice(&plain) {
            Ok(StoredVariable::Generated { kind, id, generated_at, .. }) => (kind, id, generated_at),
            _ => (None, None, None),
        };
        out.push(VariableView { name, kind, id, generated_at });
    }
    Ok(out)
}

pub async fn latest_cloud_config(state: &State) -> Result<Option<CloudConfigRecord>, StoreError> {
    Ok(state.list(tables::CLOUD_CONFIGS, "").await?.into_iter().max_by_key(|c| c.version))
}

pub fn cloud_config_key(version: u64) -> String {
    format!("{version:020}")
}

/// What a deploy is decided from, read from the store before anything is decided.
struct StoredInputs {
    variables: BTreeMap<String, (serde_yaml::Value, Option<String>)>,
    cloud_config: Option<CloudConfigRecord>,
    releases: Vec<ReleaseRecord>,
    stemcells: Vec<StemcellRecord>,
    instances: Vec<InstanceRecord>,
    /// Keys of the packages compiled already.
    compiled: BTreeSet<String>,
}

/// Resolves variables, parses the manifest, resolves releases and stemcells and plans: the store
/// is read first, then the deciding (variable generation makes keys; planning is CPU work) runs
/// off the async threads.
pub async fn prepare(d: &Director, manifest_text: &str, requests: &Requests) -> Result<Prepared, DeployError> {
    let input = |m: String| DeployError::Input(m);
    let raw = bosun_types::yaml::parse_value("manifest", manifest_text).map_err(|e| input(e.to_string()))?;
    let name =
        raw.get("name").and_then(|v| v.as_str()).ok_or_else(|| input("manifest: /name: missing".into()))?.to_string();
    bosun_types::manifest::check_name("manifest", "/name", &name).map_err(|e| input(e.to_string()))?;
    let stored = StoredInputs {
        variables: load_variables(d, &name).await?,
        cloud_config: latest_cloud_config(&d.state).await?,
        releases: d.state.list(tables::RELEASES, "").await?,
        stemcells: d.state.list(tables::STEMCELLS, "").await?,
        instances: d.state.list(tables::INSTANCES, "").await?,
        compiled: sound_compiled_packages(d).await?,
    };
    let requests = requests.clone();
    match tokio::task::spawn_blocking(move || decide(raw, name, &requests, stored)).await {
        Ok(prepared) => prepared,
        // A panic while deciding is the task's panic: its supervisor reports it.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Keys of the compiled packages whose blobs are sound: one missing or corrupt in the blobstore
/// counts as not compiled, so this deploy compiles it (or takes it from the cache) again.
async fn sound_compiled_packages(d: &Director) -> Result<BTreeSet<String>, DeployError> {
    let records = d.state.list(tables::COMPILED_PACKAGES, "").await?;
    let blobstore = d.blobstore.clone();
    let sound = tokio::task::spawn_blocking(move || {
        records.into_iter().filter(|r| blobstore.has_sound(&r.blob.digest)).map(|r| r.key).collect()
    })
    .await;
    Ok(sound.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
}

fn decide(
    mut raw: serde_yaml::Value,
    name: String,
    requests: &Requests,
    stored: StoredInputs,
) -> Result<Prepared, DeployError> {
    let input = |m: String| DeployError::Input(m);
    let defs: VariablesOnly =
        bosun_types::yaml::from_value("manifest", raw.clone()).map_err(|e| input(e.to_string()))?;
    let mut values: BTreeMap<String, serde_yaml::Value> = BTreeMap::new();
    let mut generated = Vec::new();
    let referenced = bosun_types::vars::referenced_variables(&raw);
    if let Some(cycle) = bosun_types::vars::ca_cycle(&defs.variables) {
        return Err(input(format!("manifest: /variables: certificate CAs form a cycle: {}", cycle.join(" → "))));
    }
    for def in bosun_types::vars::generation_order(&defs.variables) {
        let digest = definition_digest(def);
        if let Some((v, stored_digest)) = stored.variables.get(&def.name) {
            // BOSH's update modes: kept (`no-overwrite`, the default) unless `converge` sees a
            // changed type or options, or `overwrite` asks for a new value every deploy.
            let regenerate = match def.update_mode.as_deref() {
                Some("converge") => stored_digest.as_ref().is_some_and(|s| *s != digest),
                Some("overwrite") => true,
                _ => false,
            };
            // A certificate whose CA was just made again is signed anew too.
            let ca_changed = def
                .options
                .as_ref()
                .and_then(|o| o.get("ca"))
                .and_then(|c| c.as_str())
                .is_some_and(|ca| generated.iter().any(|g: &GeneratedVariable| g.name == ca));
            if !regenerate && !ca_changed {
                values.insert(def.name.clone(), v.clone());
                continue;
            }
        }
        if !referenced.contains(&def.name)
            && !defs
                .variables
                .iter()
                .any(|x| x.options.as_ref().and_then(|o| o.get("ca")).and_then(|c| c.as_str()) == Some(&def.name))
        {
            continue; // declared but unused: generate when first needed
        }
        let v = bosun_types::vars::generate(def, &|n| values.get(n).cloned(), bosun_types::vars::Generator::Director)
            .map_err(|e| input(format!("manifest: /variables: {e}")))?;
        values.insert(def.name.clone(), v.clone());
        generated.push(GeneratedVariable {
            name: def.name.clone(),
            kind: def.kind.clone(),
            value: v,
            definition: digest,
        });
    }
    bosun_types::vars::interpolate(&mut raw, &|n| values.get(n).cloned(), true)
        .map_err(|e| input(format!("manifest: {e}")))?;
    let manifest = DeploymentManifest::parse("manifest", raw).map_err(|e| input(e.to_string()))?;

    let cc_record = stored
        .cloud_config
        .ok_or_else(|| input("no cloud-config has been uploaded; run `bosun update-cloud-config` first".into()))?;
    let cloud_config = CloudConfig::parse(
        "cloud-config",
        bosun_types::yaml::parse_value("cloud-config", &cc_record.yaml).map_err(|e| input(e.to_string()))?,
    )
    .map_err(|e| input(e.to_string()))?;

    let all_releases = stored.releases;
    let mut releases = BTreeMap::new();
    for (i, r) in manifest.releases.iter().enumerate() {
        let mut candidates: Vec<&ReleaseRecord> = all_releases.iter().filter(|x| x.name == r.name).collect();
        candidates.sort_by(|a, b| {
            bosun_types::version::compare(&a.version, &b.version).then(a.uploaded_at.cmp(&b.uploaded_at))
        });
        let chosen = if r.version.0 == "latest" {
            candidates.last().copied()
        } else {
            candidates.iter().find(|x| x.version == r.version.0).copied()
        };
        let chosen = chosen.ok_or_else(|| {
            let have: Vec<&str> = candidates.iter().map(|x| x.version.as_str()).collect();
            input(format!(
                "manifest: /releases/{i}: release `{}/{}` is not uploaded (uploaded versions: {})",
                r.name,
                r.version,
                if have.is_empty() { "none".into() } else { have.join(", ") }
            ))
        })?;
        releases.insert(r.name.clone(), chosen.clone());
    }
    let all_stemcells = stored.stemcells;
    let mut stemcells = BTreeMap::new();
    for (i, s) in manifest.stemcells.iter().enumerate() {
        let mut candidates: Vec<&StemcellRecord> = all_stemcells
            .iter()
            .filter(|x| {
                s.os.as_ref().map(|o| &x.operating_system == o).unwrap_or(true)
                    && s.name.as_ref().map(|n| &x.name == n).unwrap_or(true)
            })
            .collect();
        candidates.sort_by(|a, b| {
            bosun_types::version::compare(&a.version, &b.version).then(a.uploaded_at.cmp(&b.uploaded_at))
        });
        let chosen = if s.version.0 == "latest" {
            candidates.last().copied()
        } else {
            candidates.iter().find(|x| x.version == s.version.0).copied()
        };
        let what =
            s.os.as_ref()
                .map(|o| format!("os `{o}`"))
                .or(s.name.as_ref().map(|n| format!("`{n}`")))
                .unwrap_or_default();
        let chosen = chosen.ok_or_else(|| {
            input(format!("manifest: /stemcells/{i}: no uploaded stemcell matches {what} version `{}`", s.version))
        })?;
        stemcells.insert(s.alias.clone(), chosen.clone());
    }
    let everyone = stored.instances;
    let existing: Vec<InstanceRecord> = everyone.iter().filter(|i| i.deployment == name).cloned().collect();
    let elsewhere: BTreeSet<Ipv4Addr> =
        everyone.iter().filter(|i| i.deployment != name).flat_map(|i| i.held_addresses()).collect();
    let planning = PlanningInput {
        manifest: &manifest,
        cloud_config: &cloud_config,
        releases: &releases,
        stemcells: &stemcells,
        existing: &existing,
        addresses_in_use_elsewhere: &elsewhere,
        requests,
        compiled: &stored.compiled,
    };
    let plan = plan(&planning, &mut rand::thread_rng()).map_err(|e| input(format!("manifest: {e}")))?;
    Ok(Prepared { manifest, cloud_config: cc_record, plan, generated })
}
