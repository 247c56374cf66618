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
    if cli.json {
        // The plan as one object, then (after the question) the task's events, one per line.
        println!("{}", serde_json::to_string(&plan)?);
    } else {
        print!("{}", output::render_plan(&plan));
    }
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

/// `logs`: each instance's job logs into `DIR/DEPLOYMENT.GROUP.ID.TIME.tgz`, owner-only (logs may
/// hold what others should not read).
fn check_logs_args(instances: &[String], jobs: &[String]) -> Result<()> {
    let safe = super::is_path_segment;
    for i in instances {
        if !i.split_once('/').is_some_and(|(g, id)| safe(g) && safe(id)) {
            return Err(InputError::new(format!("instance `{i}`: write it as GROUP/UUID or GROUP/INDEX")).into());
        }
    }
    if let Some(j) = jobs.iter().find(|j| !safe(j)) {
        return Err(InputError::new(format!("`{j}` is not a job name")).into());
    }
    Ok(())
}

fn logs_path(d: &str, instance: &str, jobs: &[String]) -> String {
    let mut path = format!("/v1/deployments/{d}/logs?instance={instance}");
    if !jobs.is_empty() {
        path.push_str(&format!("&job={}", jobs.join(",")));
    }
    path
}

/// `logs --follow`: each instance's lines as they come (behind the instance when there are
/// several), until Ctrl-C or every stream ends.
pub async fn follow_logs(cli: &Cli, instances: &[String], jobs: &[String], num: u32) -> Result<()> {
    let d = deployment(cli)?;
    check_logs_args(instances, jobs)?;
    let c = client(cli)?;
    let prefixed = instances.len() > 1;
    let streams = instances.iter().map(|i| {
        let path = format!("{}&follow=true&num={num}", logs_path(d, i, jobs));
        let c = &c;
        async move {
            let prefix = if prefixed { format!("{i}: ") } else { String::new() };
            c.stream_lines(&path, |line| println!("{prefix}{line}")).await
        }
    });
    tokio::select! {
        results = futures::future::join_all(streams) => results.into_iter().collect::<Result<Vec<()>>>().map(drop),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

pub async fn logs(cli: &Cli, instances: &[String], jobs: &[String], dir: &Path) -> Result<()> {
    let d = deployment(cli)?;
    check_logs_args(instances, jobs)?;
    let c = client(cli)?;
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
    let mut written = Vec::new();
    for i in instances {
        let path = logs_path(d, i, jobs);
        let to = dir.join(format!("{d}.{}.{stamp}.tgz", i.replace('/', ".")));
        let bytes = c.download(&path, &to).await?;
        if !cli.json {
            println!("{i}: {} ({bytes} bytes)", to.display());
        }
        written.push(serde_json::json!({"instance": i, "path": to, "bytes": bytes}));
    }
    if cli.json {
        return print_json(&written);
    }
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
    println!("Deployment '{d}'\n");
    print!("{}", output::instances_table(&v, details));
    println!("(*) bootstrap");
    Ok(())
}

pub async fn vms(cli: &Cli, vitals: bool) -> Result<()> {
    let d = deployment(cli)?;
    let v: Vec<InstanceView> = client(cli)?.get(&format!("/v1/deployments/{d}/instances?ps={vitals}")).await?;
    let with_vm: Vec<&InstanceView> = v.iter().filter(|i| i.vm_cid.is_some()).collect();
    if cli.json {
        return print_json(&with_vm);
    }
    println!("Deployment '{d}'\n");
    print!("{}", output::vms_table(&with_vm, vitals));
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
        Some(code) => Err(crate::RemoteExit { what: format!("errand `{name}`"), code }.into()),
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
    print!("{}", output::render_plan(&plan));
    if args.dry_run || !plan.changes {
        return Ok(());
    }
    if !confirm(cli)? {
        return Err(InputError::new(format!("{command} cancelled")).into());
    }
    let t: TaskCreated = c.post_json(&format!("/v1/deployments/{d}/instance-commands"), &request).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}
