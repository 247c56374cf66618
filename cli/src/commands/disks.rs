//! Orphaned persistent disks: `disks --orphaned`, `delete-disk`.

use crate::{client, confirm, output, print_json, Cli, InputError};
use anyhow::Result;
use bosun_types::api::*;

pub async fn orphaned(cli: &Cli) -> Result<()> {
    let v: Vec<OrphanedDiskView> = client(cli)?.get("/v1/disks/orphaned").await?;
    if cli.json {
        return print_json(&v);
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|o| {
            vec![
                o.disk_cid.clone(),
                format!("{} MiB", o.size_mb),
                o.deployment.clone(),
                o.instance.clone(),
                o.az.clone().unwrap_or_else(|| "-".into()),
                output::unix_time(o.orphaned_at),
                output::unix_time(o.delete_after),
                o.reason.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["Disk CID", "Size", "Deployment", "Instance", "AZ", "Orphaned at", "Deleted after", "Why"],
            &rows
        )
    );
    Ok(())
}

pub async fn delete_disk(cli: &Cli, disk_cid: &str) -> Result<()> {
    let c = client(cli)?;
    eprintln!("Deleting orphaned disk '{disk_cid}'; its data cannot be brought back.");
    if !confirm(cli)? {
        return Err(InputError::new("delete cancelled").into());
    }
    let t: TaskCreated = c.delete(&format!("/v1/disks/{disk_cid}")).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}
