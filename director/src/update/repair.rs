//! Recreating instances with fencing: the old VM is deleted before its replacement is made, so
//! two VMs never hold one identity. The one path resurrection and `bosun cck`'s `recreate_vm`
//! share; it is a deploy of the stored manifest with `Requests { recreate, fence, canaries: 0 }`.

use super::driver::execute;
use super::prepare::prepare;
use super::step::ExecOptions;
use crate::planner::{Requests, Selection};
use crate::records::DeploymentRecord;
use crate::store::tables;
use crate::Director;
use bosun_types::api::InstanceSelector;
use std::sync::Arc;

/// Recreates the named instances' VMs through the planner and executor, on the deployment's
/// stored manifest: old VM deleted first, no canaries, the groups' max_in_flight.
/// Their peers are told first that they were lost.
pub async fn resurrect(
    d: &Arc<Director>,
    task: &crate::tasks::Task,
    deployment: &str,
    instances: Vec<InstanceSelector>,
) -> Result<String, String> {
    recreate_with_fencing(d, task, deployment, Selection::Some(instances), true).await
}

/// The shared path of resurrection and `bosun cck`'s `recreate_vm`; `lost` tells the instances'
/// peers they were lost before anything is done.
pub async fn recreate_with_fencing(
    d: &Arc<Director>,
    task: &crate::tasks::Task,
    deployment: &str,
    selection: Selection,
    lost: bool,
) -> Result<String, String> {
    let chain = |e: &dyn std::error::Error| bosun_types::error_chain(e);
    let record = d
        .state
        .get::<DeploymentRecord>(tables::DEPLOYMENTS, deployment)
        .await
        .map_err(|e| chain(&e))?
        .ok_or_else(|| format!("deployment `{deployment}` no longer exists"))?;
    let requests = Requests { recreate: selection, canaries: Some(0), fence: true, ..Requests::default() };
    let prepared = prepare(d, &record.manifest, &requests).await.map_err(|e| chain(&e))?;
    if lost {
        let gone = prepared
            .plan
            .groups
            .iter()
            .flat_map(|g| &g.instances)
            .filter(|i| requests.recreate.matches(&i.group, &i.uuid, i.index));
        for i in gone {
            super::peers::tell(d, task, &prepared.plan, &super::peers::Peer::of_plan(i), super::peers::PeerEvent::Lost)
                .await;
        }
    }
    execute(d, task, &prepared, &record.manifest, ExecOptions::default()).await.map_err(|e| chain(&e))
}
