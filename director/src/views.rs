//! Deployments and their instances as `bosun deployments` and `bosun instances` show them (and
//! the web view).

use crate::records::{DeploymentRecord, InstanceRecord, StemcellRecord};
use crate::store::{tables, StoreError};
use crate::Director;
use bosun_types::api::{DeploymentView, InstanceView};

/// The instances of a deployment as the director sees them: the store's records joined with what
/// the agents last reported.
pub async fn instance_views(
    d: &Director,
    deployment: &str,
    with_processes: bool,
) -> Result<Vec<InstanceView>, StoreError> {
    let stemcells: Vec<StemcellRecord> = d.state.list(tables::STEMCELLS, "").await?;
    let mut out: Vec<InstanceView> = d
        .state
        .list::<InstanceRecord>(tables::INSTANCES, &format!("{deployment}/"))
        .await?
        .into_iter()
        .map(|r| {
            let status = r.vm.as_ref().and_then(|v| d.hub.status(&v.agent_id));
            let state = crate::health::classify(&crate::health::observe(d, &r, status.as_ref()));
            let stemcell = status.as_ref().and_then(|s| s.stemcell.clone()).or_else(|| {
                r.vm.as_ref()
                    .and_then(|v| stemcells.iter().find(|s| s.cid == v.stemcell_cid))
                    .map(|s| bosun_types::protocol::StemcellInfo { name: s.name.clone(), version: s.version.clone() })
            });
            InstanceView {
                instance: r.name(),
                group: r.group.clone(),
                id: r.uuid.clone(),
                index: r.index,
                az: r.az.clone(),
                ips: r.ips(),
                vm_cid: r.vm.as_ref().map(|v| v.cid.clone()),
                agent_id: r.vm.as_ref().map(|v| v.agent_id.clone()),
                state,
                bootstrap: r.bootstrap,
                stemcell,
                processes: if with_processes {
                    Some(
                        status
                            .as_ref()
                            .and_then(|s| s.heartbeat.as_ref())
                            .map(|h| h.processes.clone())
                            .unwrap_or_default(),
                    )
                } else {
                    None
                },
                vitals: if with_processes {
                    status.as_ref().and_then(|s| s.heartbeat.as_ref()).map(|h| h.vitals.clone())
                } else {
                    None
                },
                disk_cids: r.disk_cids.clone(),
                generation: r.generation,
            }
        })
        .collect();
    out.sort_by(|a, b| (a.group.as_str(), a.index).cmp(&(b.group.as_str(), b.index)));
    Ok(out)
}

/// Every deployment as `bosun deployments` lists it.
pub async fn deployment_views(d: &Director) -> Result<Vec<DeploymentView>, StoreError> {
    let deployments: Vec<DeploymentRecord> = d.state.list(tables::DEPLOYMENTS, "").await?;
    let latest = crate::update::latest_cloud_config(&d.state).await?.map(|c| c.version).unwrap_or(0);
    let instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, "").await?;
    let out = deployments
        .into_iter()
        .map(|r| {
            let m = r.refs();
            DeploymentView {
                releases: m.releases.iter().map(|x| format!("{}/{}", x.name, x.version)).collect(),
                stemcells: m
                    .stemcells
                    .iter()
                    .map(|x| format!("{}/{}", x.os.clone().or(x.name.clone()).unwrap_or_default(), x.version))
                    .collect(),
                instances: instances.iter().filter(|i| i.deployment == r.name).count(),
                cloud_config: if r.cloud_config_version == latest { "latest".into() } else { "outdated".into() },
                name: r.name,
            }
        })
        .collect();
    Ok(out)
}
