//! Deployments and their instances: `deploy`, `deployments`, `instances`, `manifest`,
//! `variables`, `delete-deployment`, and the instance commands `recreate`, `restart`, `stop`,
//! `start`.

use crate::{client, confirm, deployment, manifest, output, print_json, Cli, InputError};
use anyhow::Result;
use bosun_types::api::*;
use bosun_types::manifest::MaxInFlight;
use std::path::Path;

pub async fn deploy(
    cli: &Cli,
    path: &Path,
    vars: &manifest::VarArgs,
    dry_run: &bool,
    recreate: &bool,
    no_redact: bool,
    update: &UpdateArgs,
) -> Result<()> {
    let doc = manifest::load(path, vars, manifest::Unanswered::LeaveDeclared)?;
    let name = doc
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| InputError::new(format!("{}: /name: missing", path.display())))?
        .to_string();
    if let Some(d) = &cli.deployment {
        if d != &name {
            return Err(InputError::new(format!(
                "{} is the manifest of deployment `{name}`, not `{d}`",
                path.display()
            ))
            .into());
        }
    }
    let request = DeployRequest {
        manifest: bosun_types::yaml_v2::to_string(&doc),
        recreate: *recreate,
        overrides: update.overrides(),
        no_redact,
    };
    let c = client(cli)?;
    let plan: PlanView = c.post_json(&format!("/v1/deployments/{name}/plan"), &request).await?;
    if cli.json && *dry_run {
        return print_json(&plan);
    }
    eprint!("{}", output::render_plan(&plan));
    if *dry_run {
        return Ok(());
    }
    if plan.changes && !confirm(cli)? {
        return Err(InputError::new("deploy cancelled").into());
    }
    let t: TaskCreated = c.post_json("/v1/deployments", &request).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}

pub async fn deployments(cli: &Cli) -> Result<()> {
    let v: Vec<DeploymentView> = client(cli)?.get("/v1/deployments").await?;
    if cli.json {
        return print_json(&v);
    }
    let rows = v
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.releases.join(", "),
                d.stemcells.join(", "),
                d.instances.to_string(),
                d.cloud_config.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print!("{}", output::table(&["Name", "Release(s)", "Stemcell(s)", "Instances", "Cloud Config"], &rows));
    Ok(())
}

pub async fn variables(cli: &Cli) -> Result<()> {
    let d = deployment(cli)?;
    let v: Vec<VariableView> = client(cli)?.get(&format!("/v1/deployments/{d}/variables")).await?;
    if cli.json {
        return print_json(&v);
    }
    let unknown = || "-".to_string();
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|x| {
            vec![
                x.id.map_or_else(unknown, |i| i.to_string()),
                x.name.clone(),
                x.kind.clone().filter(|k| !k.is_empty()).unwrap_or_else(unknown),
                x.generated_at.map_or_else(unknown, |t| {
                    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
                        .to_string()
                }),
            ]
        })
        .collect();
    print!("{}", output::table(&["ID", "Name", "Type", "Generated"], &rows));
    Ok(())
}

pub async fn instances(cli: &Cli, ps: bool, details: bool) -> Result<()> {
    let d = deployment(cli)?;
    let v: Vec<InstanceView> = client(cli)?.get(&format!("/v1/deployments/{d}/instances?ps={ps}")).await?;
    if cli.json {
        return print_json(&v);
    }
    let dash = || "-".to_string();
    let mut header = vec!["Instance", "Index", "State", "AZ", "IPs", "VM CID", "Stemcell"];
    if details {
        header.extend(["Agent ID", "Disk CIDs", "Generation"]);
    }
    let mut rows = Vec::new();
    for i in &v {
        let mut row = vec![
            format!("{}{}", i.instance, if i.bootstrap { "*" } else { "" }),
            i.index.to_string(),
            i.state.to_string(),
            i.az.clone().unwrap_or_else(dash),
            i.ips.join(", "),
            i.vm_cid.clone().unwrap_or_else(dash),
            i.stemcell.as_ref().map(|s| format!("{}/{}", s.name, s.version)).unwrap_or_else(dash),
        ];
        if details {
            row.push(i.agent_id.clone().unwrap_or_else(dash));
            row.push(if i.disk_cids.is_empty() { dash() } else { i.disk_cids.join(", ") });
            row.push(i.generation.to_string());
        }
        rows.push(row);
        for p in i.processes.iter().flatten() {
            let mut row = vec![String::new(); header.len()];
            row[0] = format!("~ {}/{}", p.job, p.name);
            row[2] = format!("{:?}", p.state).to_lowercase();
            rows.push(row);
        }
    }
    println!("Deployment '{d}'\n");
    print!("{}", output::table(&header, &rows));
    println!("(*) bootstrap");
    Ok(())
}

/// A percentage with the amount it stands for, as bosh prints memory: `41% (3.2 GB)`.
fn percent_of(percent: f64, kb: u64) -> String {
    format!("{percent:.0}% ({:.1} GB)", kb as f64 / 1024.0 / 1024.0)
}

/// Seconds as bosh prints an uptime: `3d 4h 5m 6s`.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

pub async fn vms(cli: &Cli, vitals: bool) -> Result<()> {
    let d = deployment(cli)?;
    let v: Vec<InstanceView> = client(cli)?.get(&format!("/v1/deployments/{d}/instances?ps={vitals}")).await?;
    let with_vm: Vec<&InstanceView> = v.iter().filter(|i| i.vm_cid.is_some()).collect();
    if cli.json {
        return print_json(&with_vm);
    }
    let dash = || "-".to_string();
    let mut header = vec!["Instance", "State", "AZ", "IPs", "VM CID", "Stemcell"];
    if vitals {
        header.extend([
            "Uptime",
            "Load (1m, 5m, 15m)",
            "CPU Total",
            "CPU User",
            "CPU Sys",
            "CPU Wait",
            "Memory Usage",
            "Swap Usage",
            "System Disk Usage",
            "Ephemeral Disk Usage",
            "Persistent Disk Usage",
        ]);
    }
    let rows: Vec<Vec<String>> = with_vm
        .iter()
        .map(|i| {
            let mut row = vec![
                i.instance.clone(),
                i.state.to_string(),
                i.az.clone().unwrap_or_else(dash),
                i.ips.join(", "),
                i.vm_cid.clone().unwrap_or_else(dash),
                i.stemcell.as_ref().map(|s| format!("{}/{}", s.name, s.version)).unwrap_or_else(dash),
            ];
            if vitals {
                match &i.vitals {
                    Some(x) => {
                        let disk = |k: &str| x.disk.get(k).map_or_else(dash, |p| format!("{p:.0}%"));
                        row.extend([
                            uptime(x.uptime_secs),
                            format!("{:.2}, {:.2}, {:.2}", x.load[0], x.load[1], x.load[2]),
                            format!("{:.1}%", x.cpu.user + x.cpu.sys + x.cpu.wait),
                            format!("{:.1}%", x.cpu.user),
                            format!("{:.1}%", x.cpu.sys),
                            format!("{:.1}%", x.cpu.wait),
                            percent_of(x.mem_percent, x.mem_kb),
                            percent_of(x.swap_percent, x.swap_kb),
                            disk("system"),
                            disk("ephemeral"),
                            disk("persistent"),
                        ]);
                    }
                    // No heartbeat yet (or the agent is silent).
                    None => row.extend(std::iter::repeat_n(dash(), 11)),
                }
            }
            row
        })
        .collect();
    println!("Deployment '{d}'\n");
    print!("{}", output::table(&header, &rows));
    Ok(())
}

pub async fn manifest(cli: &Cli) -> Result<()> {
    let d = deployment(cli)?;
    print!("{}", client(cli)?.get_text(&format!("/v1/deployments/{d}/manifest")).await?);
    Ok(())
}

/// How `run-errand` runs it.
pub struct ErrandRun {
    pub when_changed: bool,
    pub keep_alive: bool,
    pub timeout: u64,
}

/// Runs an errand and follows it: its output lines come as the task's events.
pub async fn run_errand(cli: &Cli, name: &str, instances: &[String], how: ErrandRun) -> Result<()> {
    let ErrandRun { when_changed, keep_alive, timeout } = how;
    let d = deployment(cli)?;
    if timeout == 0 {
        return Err(InputError::new("--timeout must be at least 1 second").into());
    }
    for i in instances {
        i.parse::<bosun_types::api::InstanceSelector>().map_err(|e| InputError::new(format!("--instance: {e}")))?;
    }
    let c = client(cli)?;
    let req = bosun_types::api::ErrandRunRequest {
        instances: instances.to_vec(),
        when_changed,
        keep_alive,
        timeout_secs: Some(timeout),
    };
    let t: TaskCreated = c.post_json(&format!("/v1/deployments/{d}/errands/{name}/runs"), &req).await?;
    c.follow_task(t.task_id, cli.json).await?;
    let task: bosun_types::api::TaskView = c.get(&format!("/v1/tasks/{}", t.task_id)).await?;
    match task.exit_code {
        Some(0) => Ok(()),
        Some(code) => Err(crate::ErrandExit { errand: name.to_string(), code }.into()),
        None => Err(anyhow::anyhow!("task {} recorded no exit code for errand `{name}`", t.task_id)),
    }
}

/// Prints the deployment's admin kubeconfig on stdout.
pub async fn kubeconfig(cli: &Cli) -> Result<()> {
    let d = deployment(cli)?;
    print!("{}", client(cli)?.get_text(&format!("/v1/deployments/{d}/kubeconfig")).await?);
    Ok(())
}

pub async fn delete_deployment(cli: &Cli) -> Result<()> {
    let d = deployment(cli)?;
    let c = client(cli)?;
    let _: DeploymentView = c.get(&format!("/v1/deployments/{d}")).await?;
    eprintln!("Using deployment '{d}'; every VM and persistent disk of it will be deleted.");
    if !confirm(cli)? {
        return Err(InputError::new("delete cancelled").into());
    }
    let t: TaskCreated = c.delete(&format!("/v1/deployments/{d}")).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}

/// How an update runs: BOSH's command-line overrides.
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// Skip pre-stop and drain scripts.
    #[arg(long)]
    skip_drain: bool,
    /// Override every instance group's canaries.
    #[arg(long)]
    canaries: Option<u32>,
    /// Override every instance group's max_in_flight (a number or a percentage such as 25%).
    #[arg(long, value_parser = parse_max_in_flight)]
    max_in_flight: Option<MaxInFlight>,
}

impl UpdateArgs {
    fn overrides(&self) -> UpdateOverrides {
        UpdateOverrides { skip_drain: self.skip_drain, canaries: self.canaries, max_in_flight: self.max_in_flight }
    }
}

pub fn parse_max_in_flight(s: &str) -> Result<MaxInFlight, String> {
    s.parse()
}

#[derive(clap::Args, Debug)]
pub struct InstanceCommandArgs {
    /// `group`, `group/uuid` or `group/index`; none means every instance of the deployment.
    #[arg(value_parser = parse_selector)]
    instances: Vec<String>,
    /// Show the plan and stop.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    update: UpdateArgs,
}

pub fn parse_selector(s: &str) -> Result<String, String> {
    s.parse::<InstanceSelector>().map(|_| s.to_string())
}

/// recreate / restart / stop / start: show the plan, confirm, follow the task.
pub async fn instance_command(
    cli: &Cli,
    command: InstanceCommand,
    args: &InstanceCommandArgs,
    hard: bool,
) -> Result<()> {
    let d = deployment(cli)?;
    let c = client(cli)?;
    let request = InstanceCommandRequest {
        command,
        instances: args.instances.clone(),
        hard,
        overrides: args.update.overrides(),
        dry_run: args.dry_run,
    };
    let plan: PlanView = c.post_json(&format!("/v1/deployments/{d}/instance-commands/plan"), &request).await?;
    if cli.json && args.dry_run {
        return print_json(&plan);
    }
    eprint!("{}", output::render_plan(&plan));
    if args.dry_run || !plan.changes {
        return Ok(());
    }
    if !confirm(cli)? {
        return Err(InputError::new(format!("{command} cancelled")).into());
    }
    let t: TaskCreated = c.post_json(&format!("/v1/deployments/{d}/instance-commands"), &request).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}
