//! What an instance is made of besides its jobs: its packages (with their dependencies), its VM's
//! cloud properties and env, and the hash of its rendered configuration.

use super::model::{merge, perr, PlanError, PlanningInput};
use crate::records::{ReleasePackage, RenderedJob};
use bosun_types::cloud_config::CloudConfig;
use bosun_types::manifest::InstanceGroup;
use std::collections::{BTreeMap, BTreeSet};

/// Every package the jobs need, with their dependencies, from the jobs' releases; each with its
/// release's `name/version`.
pub(super) fn package_closure(
    input: &PlanningInput<'_>,
    wanted: &BTreeSet<(String, String)>,
    gi: &usize,
) -> Result<Vec<(String, ReleasePackage)>, PlanError> {
    let mut out: BTreeMap<String, (String, ReleasePackage)> = BTreeMap::new();
    let mut todo: Vec<(String, String)> = wanted.iter().cloned().collect();
    while let Some((release, name)) = todo.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let r = input.releases.get(&release).expect("validated");
        let p = r.packages.iter().find(|p| p.name == name).ok_or_else(|| {
            perr(
                format!("/instance_groups/{gi}/jobs"),
                format!("release `{}/{}` lacks package `{name}` that its jobs need", r.name, r.version),
            )
        })?;
        for d in &p.dependencies {
            todo.push((release.clone(), d.clone()));
        }
        out.insert(name, (format!("{}/{}", r.name, r.version), p.clone()));
    }
    Ok(out.into_values().collect())
}

/// A digest over every rendered file of every job: a change means the jobs must be restarted.
pub fn configuration_hash(jobs: &[RenderedJob]) -> String {
    let mut h = bosun_types::digest::Sha256Writer::default();
    let mut sorted: Vec<&RenderedJob> = jobs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for j in sorted {
        h.update(j.name.as_bytes());
        h.update(&[0]);
        for (path, (mode, text)) in &j.files {
            h.update(path.as_bytes());
            h.update(&mode.to_be_bytes());
            h.update(&(text.len() as u64).to_be_bytes());
            h.update(text.as_bytes());
        }
        h.update(serde_json::to_string(&j.processes).expect("serializable").as_bytes());
    }
    h.finish()
}

/// The VM-level facts of an instance group in an AZ: cloud properties (vm_type, extensions, AZ
/// merged) and env.
pub(super) fn vm_cloud_properties(cc: &CloudConfig, g: &InstanceGroup, az: &Option<String>) -> serde_json::Value {
    let vm_type = cc.vm_types.iter().find(|v| v.name == g.vm_type).expect("validated");
    let mut cloud_properties = vm_type.cloud_properties.clone();
    for ext in &g.vm_extensions {
        let e = cc.vm_extensions.iter().find(|x| &x.name == ext).expect("validated");
        merge(&mut cloud_properties, &e.cloud_properties);
    }
    if let Some(az) = az.as_ref().and_then(|a| cc.azs.iter().find(|x| &x.name == a)) {
        merge(&mut cloud_properties, &az.cloud_properties);
    }
    cloud_properties
}

pub(super) fn vm_env(g: &InstanceGroup) -> serde_json::Value {
    g.env.clone().unwrap_or(serde_json::Value::Object(Default::default()))
}
