//! `bosun`: the operator's CLI, with BOSH's verbs, and `bosun director` to run the director.
//!
//! Exit codes: 0 success; 1 the operation failed (a task ended in error, the director could not be
//! reached); 2 the input is wrong (bad manifest, bad arguments, unknown deployment, refused
//! credentials) and nothing was changed.

mod client;
mod cpis;
mod manifest;
mod output;
mod release;

use anyhow::Result;
use bosun_types::api::*;
use bosun_types::manifest::MaxInFlight;
use clap::{Parser, Subcommand};
use client::{Client, Target};
use std::path::PathBuf;
use std::time::Duration;

/// Input that is wrong: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(String);

impl InputError {
    pub fn new(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

/// A task that ended in error: exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("task {id} failed: {message}")]
pub struct TaskFailed {
    pub id: u64,
    pub message: String,
}

#[derive(Parser)]
#[command(
    name = "bosun",
    version,
    about = "BOSH-style VM cluster lifecycle manager",
    after_help = "Example:\n  eval \"$(cat state/env)\"   # or `bosun target` once\n  bosun -d quickstart deploy manifests/quickstart.yml\n  bosun -d quickstart instances --ps"
)]
struct Cli {
    /// The deployment to act on.
    #[arg(short = 'd', long, global = true, env = "BOSUN_DEPLOYMENT")]
    deployment: Option<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'n', long = "non-interactive", global = true)]
    non_interactive: bool,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The director's URL.
    #[arg(long, global = true, env = "BOSUN_DIRECTOR", hide_env_values = true)]
    director: Option<String>,
    /// The director's CA certificate: a path or the PEM.
    #[arg(long, global = true, env = "BOSUN_CA_CERT", hide_env_values = true)]
    ca_cert: Option<String>,
    /// The director's bearer token.
    #[arg(long, global = true, env = "BOSUN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a director in the foreground.
    #[command(
        after_help = "Example:\n  bosun director --state-dir ~/.bosun/director --listen 127.0.0.1:25555 --cpi local"
    )]
    Director(DirectorArgs),
    /// Remember the current target (from flags or BOSUN_* variables), or show it.
    #[command(after_help = "Example:\n  eval \"$(cat state/env)\" && bosun target")]
    Target,
    /// Upload a cloud-config.
    #[command(after_help = "Example:\n  bosun update-cloud-config manifests/cloud-config/local.yml")]
    UpdateCloudConfig {
        file: PathBuf,
        #[command(flatten)]
        vars: manifest::VarArgs,
    },
    /// Show the current cloud-config.
    #[command(after_help = "Example:\n  bosun cloud-config")]
    CloudConfig,
    /// Upload a release tarball, or a release directory (syncing blobs and creating it first).
    #[command(after_help = "Example:\n  bosun upload-release releases/kubo")]
    UploadRelease { path: PathBuf },
    /// Build a release tarball from a release directory.
    #[command(after_help = "Example:\n  bosun create-release releases/kubo --tarball /tmp/kubo.tgz")]
    CreateRelease {
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        tarball: Option<PathBuf>,
    },
    /// Fetch the blobs a release directory's config/blobs.yml lists, checking digests.
    #[command(after_help = "Example:\n  bosun sync-blobs releases/kubo")]
    SyncBlobs {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// List uploaded releases.
    #[command(after_help = "Example:\n  bosun releases --json")]
    Releases,
    /// Upload a stemcell tarball.
    #[command(after_help = "Example:\n  bosun upload-stemcell $(stemcells/local/build.sh 1 | tail -1)")]
    UploadStemcell { tarball: PathBuf },
    /// List uploaded stemcells.
    #[command(after_help = "Example:\n  bosun stemcells")]
    Stemcells,
    /// Deploy a manifest: shows the plan, asks, then converges.
    #[command(
        after_help = "Example:\n  bosun -d quickstart deploy manifests/quickstart.yml -o ops.yml -v etcd_port=2379 --dry-run"
    )]
    Deploy {
        manifest: PathBuf,
        #[command(flatten)]
        vars: manifest::VarArgs,
        /// Show the plan and stop.
        #[arg(long)]
        dry_run: bool,
        /// Recreate every VM.
        #[arg(long)]
        recreate: bool,
        #[command(flatten)]
        update: UpdateArgs,
    },
    /// Recreate the VMs of a deployment, an instance group or instances (disks and addresses stay).
    #[command(after_help = "Example:\n  bosun -d quickstart recreate etcd/0 --max-in-flight 1")]
    Recreate(InstanceCommandArgs),
    /// Restart the jobs of a deployment, an instance group or instances.
    #[command(after_help = "Example:\n  bosun -d quickstart restart etcd")]
    Restart(InstanceCommandArgs),
    /// Stop the jobs (with --hard also delete the VMs, keeping persistent disks).
    #[command(after_help = "Example:\n  bosun -d quickstart stop etcd/2 --hard")]
    Stop {
        #[command(flatten)]
        args: InstanceCommandArgs,
        /// Also delete the VM; the persistent disk and the instance's identity stay.
        #[arg(long)]
        hard: bool,
    },
    /// Start stopped instances (recreating the VMs of hard-stopped ones).
    #[command(after_help = "Example:\n  bosun -d quickstart start etcd/2")]
    Start(InstanceCommandArgs),
    /// List persistent disks no instance uses (kept for a while, then deleted).
    #[command(after_help = "Example:\n  bosun disks --orphaned")]
    Disks {
        /// Orphaned disks (the only kind listed for now).
        #[arg(long, required = true)]
        orphaned: bool,
    },
    /// Delete an orphaned persistent disk now.
    #[command(after_help = "Example:\n  bosun delete-disk disk-3f1c0e8a -n")]
    DeleteDisk { disk_cid: String },
    /// The event timeline: tasks, instance state changes, health findings, resurrections, cck.
    #[command(after_help = "Example:\n  bosun -d quickstart events --instance etcd/0c3e --since 1h")]
    Events {
        /// `group/uuid` or a prefix of it (`group`).
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        task: Option<u64>,
        /// Only newer events: a duration ago (`90s`, `1h`) or an RFC 3339 time.
        #[arg(long, value_parser = parse_time_ms)]
        since: Option<u64>,
        /// Only older events: a duration ago or an RFC 3339 time.
        #[arg(long, value_parser = parse_time_ms)]
        before: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Turn resurrection on or off, for the director or (with -d) one deployment.
    #[command(after_help = "Example:\n  bosun -d quickstart update-resurrection off")]
    UpdateResurrection {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Upload resurrection rules: `rules: [{enabled, include: {deployments, instance_groups}, exclude: …}]`.
    #[command(after_help = "Example:\n  bosun update-resurrection-config manifests/resurrection.yml")]
    UpdateResurrectionConfig { file: PathBuf },
    /// Cloud check: find what differs between the director's records and the cloud, and repair it.
    #[command(
        after_help = "Example:\n  bosun -d quickstart cck --report\n  bosun -d quickstart cck --resolution missing_vm=recreate_vm"
    )]
    Cck {
        /// Apply each problem's default resolution.
        #[arg(long)]
        auto: bool,
        /// Only list the problems (exit 1 when there are any).
        #[arg(long, conflicts_with = "auto")]
        report: bool,
        /// `KIND=RESOLUTION` for every problem of that kind (e.g. `orphan_vm=delete_vm`).
        #[arg(long, value_name = "KIND=RESOLUTION")]
        resolution: Vec<String>,
    },
    /// List deployments.
    #[command(after_help = "Example:\n  bosun deployments")]
    Deployments,
    /// List a deployment's instances.
    #[command(after_help = "Example:\n  bosun -d quickstart instances --ps")]
    Instances {
        /// Show each process.
        #[arg(long)]
        ps: bool,
    },
    /// Show a deployment's manifest.
    #[command(after_help = "Example:\n  bosun -d quickstart manifest")]
    Manifest,
    /// List recent tasks.
    #[command(after_help = "Example:\n  bosun tasks --recent 10")]
    Tasks {
        #[arg(long, default_value_t = 30)]
        recent: usize,
    },
    /// Show a task's events (follows it while it runs).
    #[command(after_help = "Example:\n  bosun task 12")]
    Task { id: u64 },
    /// Delete a deployment: its VMs, disks and variables.
    #[command(after_help = "Example:\n  bosun -d quickstart delete-deployment -n")]
    DeleteDeployment,
    /// Apply ops-files and variables to a document and print it.
    #[command(after_help = "Example:\n  bosun interpolate manifests/quickstart.yml -o ops.yml -v name=x --var-errs")]
    Interpolate {
        file: PathBuf,
        #[command(flatten)]
        vars: manifest::VarArgs,
        /// Fail on variables no source answers.
        #[arg(long)]
        var_errs: bool,
        /// Print only the value at this path (e.g. /instance_groups/0/name).
        #[arg(long)]
        path: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let is_director = matches!(cli.command, Command::Director { .. });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            if is_director {
                "info".into()
            } else {
                "warn".into()
            }
        }))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = match rt.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {}", chain(&e));
            if e.chain().any(|c| c.is::<InputError>()) {
                2
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}

/// The error and its causes, each once.
fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn deployment(cli: &Cli) -> Result<&str> {
    cli.deployment
        .as_deref()
        .ok_or_else(|| InputError::new("this command needs a deployment: -d NAME (or BOSUN_DEPLOYMENT)").into())
}

fn client(cli: &Cli) -> Result<Client> {
    Client::new(Target::resolve(cli.director.as_deref(), cli.ca_cert.as_deref(), cli.token.as_deref())?)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn confirm(cli: &Cli) -> Result<bool> {
    use std::io::{BufRead, IsTerminal};
    if cli.non_interactive {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            InputError::new("refusing to continue without confirmation: stdin is not a terminal (pass -n)").into()
        );
    }
    eprint!("Continue? [yN]: ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Director(args) => run_director(args).await,
        Command::Target => {
            let t = Target::resolve(cli.director.as_deref(), cli.ca_cert.as_deref(), cli.token.as_deref())?;
            let c = Client::new(t.clone())?;
            let info: DirectorInfo = c.get("/v1/info").await?;
            if cli.director.is_some() {
                let path = t.save()?;
                eprintln!("Target saved in {}", path.display());
            }
            if cli.json {
                return print_json(&info);
            }
            println!(
                "Director  {} ({})\nName      {}\nUUID      {}\nVersion   {}\nCPI       {}",
                t.director, info.api_version, info.name, info.uuid, info.version, info.cpi
            );
            Ok(())
        }
        Command::UpdateCloudConfig { file, vars } => {
            let doc = manifest::load(file, vars, true)?;
            let text = serde_yaml::to_string(&doc)?;
            // Check it here too, so the error names the file.
            bosun_types::cloud_config::CloudConfig::parse(&file.display().to_string(), doc)
                .map_err(|e| InputError::new(e.to_string()))?;
            #[derive(serde::Deserialize, serde::Serialize)]
            struct Updated {
                version: u64,
                changed: bool,
            }
            let u: Updated = client(&cli)?.post_text("/v1/cloud-config", text).await?;
            if cli.json {
                return print_json(&u);
            }
            println!(
                "{}",
                if u.changed {
                    format!("Cloud-config updated (version {})", u.version)
                } else {
                    format!("Cloud-config unchanged (version {})", u.version)
                }
            );
            Ok(())
        }
        Command::CloudConfig => {
            print!("{}", client(&cli)?.get_text("/v1/cloud-config").await?);
            Ok(())
        }
        Command::CreateRelease { dir, version, tarball } => {
            let (path, version) = release::create_release(dir, version.as_deref(), tarball.as_deref())?;
            if cli.json {
                return print_json(&serde_json::json!({"tarball": path, "version": version}));
            }
            println!("Release version {version}\n{}", path.display());
            Ok(())
        }
        Command::SyncBlobs { dir } => {
            let n = release::sync_blobs(dir)?;
            println!("{n} blob{} fetched", if n == 1 { "" } else { "s" });
            Ok(())
        }
        Command::UploadRelease { path } => {
            let c = client(&cli)?;
            let tarball = if path.is_dir() {
                release::sync_blobs(path)?;
                let work = tempfile::tempdir()?;
                let out = work.path().join("release.tgz");
                let (p, version) = release::create_release(path, None, Some(&out))?;
                eprintln!("Created release {}/{version}", release::release_name(path)?);
                let t = c.upload_file("/v1/releases", &p).await?;
                return c.follow_task(t.task_id, cli.json).await.map(|_| ());
            } else {
                path.clone()
            };
            let t = c.upload_file("/v1/releases", &tarball).await?;
            c.follow_task(t.task_id, cli.json).await.map(|_| ())
        }
        Command::Releases => {
            let v: Vec<ReleaseView> = client(&cli)?.get("/v1/releases").await?;
            if cli.json {
                return print_json(&v);
            }
            let rows = v
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        format!("{}{}", r.version, if r.deployments.is_empty() { "" } else { "*" }),
                        r.commit_hash.clone(),
                    ]
                })
                .collect::<Vec<_>>();
            print!("{}", output::table(&["Name", "Version", "Commit Hash"], &rows));
            println!("(*) in use");
            Ok(())
        }
        Command::UploadStemcell { tarball } => {
            if !tarball.is_file() {
                return Err(InputError::new(format!("{}: no such stemcell tarball", tarball.display())).into());
            }
            let c = client(&cli)?;
            let t = c.upload_file("/v1/stemcells", tarball).await?;
            c.follow_task(t.task_id, cli.json).await.map(|_| ())
        }
        Command::Stemcells => {
            let v: Vec<StemcellView> = client(&cli)?.get("/v1/stemcells").await?;
            if cli.json {
                return print_json(&v);
            }
            let rows = v
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        format!("{}{}", s.version, if s.deployments.is_empty() { "" } else { "*" }),
                        s.operating_system.clone(),
                        s.cid.clone(),
                    ]
                })
                .collect::<Vec<_>>();
            print!("{}", output::table(&["Name", "Version", "OS", "CID"], &rows));
            println!("(*) in use");
            Ok(())
        }
        Command::Deploy { manifest: path, vars, dry_run, recreate, update } => {
            let doc = manifest::load(path, vars, false)?;
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
                manifest: serde_yaml::to_string(&doc)?,
                recreate: *recreate,
                overrides: update.overrides(),
            };
            let c = client(&cli)?;
            let plan: PlanView = c.post_json(&format!("/v1/deployments/{name}/plan"), &request).await?;
            if cli.json && *dry_run {
                return print_json(&plan);
            }
            eprint!("{}", output::render_plan(&plan));
            if *dry_run {
                return Ok(());
            }
            if plan.changes && !confirm(&cli)? {
                return Err(InputError::new("deploy cancelled").into());
            }
            let t: TaskCreated = c.post_json("/v1/deployments", &request).await?;
            c.follow_task(t.task_id, cli.json).await.map(|_| ())
        }
        Command::Deployments => {
            let v: Vec<DeploymentView> = client(&cli)?.get("/v1/deployments").await?;
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
        Command::Instances { ps } => {
            let d = deployment(&cli)?;
            let v: Vec<InstanceView> = client(&cli)?.get(&format!("/v1/deployments/{d}/instances?ps={ps}")).await?;
            if cli.json {
                return print_json(&v);
            }
            let mut rows = Vec::new();
            for i in &v {
                rows.push(vec![
                    format!("{}{}", i.instance, if i.bootstrap { "*" } else { "" }),
                    i.index.to_string(),
                    i.state.to_string(),
                    i.az.clone().unwrap_or_else(|| "-".into()),
                    i.ips.join(", "),
                    i.vm_cid.clone().unwrap_or_else(|| "-".into()),
                    i.stemcell.as_ref().map(|s| format!("{}/{}", s.name, s.version)).unwrap_or_else(|| "-".into()),
                ]);
                for p in i.processes.iter().flatten() {
                    rows.push(vec![
                        format!("~ {}/{}", p.job, p.name),
                        String::new(),
                        format!("{:?}", p.state).to_lowercase(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ]);
                }
            }
            println!("Deployment '{d}'\n");
            print!("{}", output::table(&["Instance", "Index", "State", "AZ", "IPs", "VM CID", "Stemcell"], &rows));
            println!("(*) bootstrap");
            Ok(())
        }
        Command::Manifest => {
            let d = deployment(&cli)?;
            print!("{}", client(&cli)?.get_text(&format!("/v1/deployments/{d}/manifest")).await?);
            Ok(())
        }
        Command::Tasks { recent } => {
            let mut path = format!("/v1/tasks?limit={recent}");
            if let Some(d) = &cli.deployment {
                path.push_str(&format!("&deployment={d}"));
            }
            let v: Vec<TaskView> = client(&cli)?.get(&path).await?;
            if cli.json {
                return print_json(&v);
            }
            let rows = v
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.state.to_string(),
                        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t.started_at))
                            .to_string(),
                        t.deployment.clone().unwrap_or_else(|| "-".into()),
                        t.description.clone(),
                        t.result.clone().unwrap_or_default().lines().next().unwrap_or("").to_string(),
                    ]
                })
                .collect::<Vec<_>>();
            print!("{}", output::table(&["ID", "State", "Started", "Deployment", "Description", "Result"], &rows));
            Ok(())
        }
        Command::Task { id } => {
            let c = client(&cli)?;
            if cli.json {
                let page: TaskEventsPage = c.get(&format!("/v1/tasks/{id}/events")).await?;
                return print_json(&page);
            }
            c.follow_task(*id, false).await.map(|_| ())
        }
        Command::Events { instance, task, since, before, limit } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(d) = &cli.deployment {
                q.push(format!("deployment={d}"));
            }
            if let Some(i) = instance {
                q.push(format!("instance={i}"));
            }
            if let Some(t) = task {
                q.push(format!("task={t}"));
            }
            if let Some(s) = since {
                q.push(format!("since_ms={s}"));
            }
            if let Some(b) = before {
                q.push(format!("before_ms={b}"));
            }
            let v: Vec<EventView> = client(&cli)?.get(&format!("/v1/events?{}", q.join("&"))).await?;
            if cli.json {
                return print_json(&v);
            }
            let rows: Vec<Vec<String>> = v
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        output::unix_time(e.time_ms / 1000),
                        e.action.clone(),
                        format!("{} {}", e.object_type, e.object_name),
                        e.deployment.clone().unwrap_or_else(|| "-".into()),
                        e.task.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                        e.cause.clone(),
                        e.message.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["ID", "Time", "Action", "Object", "Deployment", "Task", "Cause", "Message"], &rows)
            );
            Ok(())
        }
        Command::UpdateResurrection { state } => {
            let req = ResurrectionSwitch { deployment: cli.deployment.clone(), enabled: state == "on" };
            let _: serde_json::Value = client(&cli)?.put_json("/v1/resurrection", &req).await?;
            eprintln!(
                "Resurrection {state} for {}",
                cli.deployment.as_deref().map(|d| format!("deployment '{d}'")).unwrap_or_else(|| "the director".into())
            );
            Ok(())
        }
        Command::UpdateResurrectionConfig { file } => {
            let text =
                std::fs::read_to_string(file).map_err(|e| InputError::new(format!("{}: {e}", file.display())))?;
            bosun_types::yaml::parse_value(&file.display().to_string(), &text)
                .map_err(|e| InputError::new(e.to_string()))?;
            let v: serde_json::Value = client(&cli)?.put_text("/v1/resurrection/config", text).await?;
            if cli.json {
                return print_json(&v);
            }
            eprintln!("Resurrection config updated ({} rule(s))", v["rules"].as_array().map(Vec::len).unwrap_or(0));
            Ok(())
        }
        Command::Cck { auto, report, resolution } => cck(&cli, *auto, *report, resolution).await,
        Command::Recreate(args) => instance_command(&cli, InstanceCommand::Recreate, args, false).await,
        Command::Restart(args) => instance_command(&cli, InstanceCommand::Restart, args, false).await,
        Command::Stop { args, hard } => instance_command(&cli, InstanceCommand::Stop, args, *hard).await,
        Command::Start(args) => instance_command(&cli, InstanceCommand::Start, args, false).await,
        Command::Disks { .. } => {
            let v: Vec<OrphanedDiskView> = client(&cli)?.get("/v1/disks/orphaned").await?;
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
        Command::DeleteDisk { disk_cid } => {
            let c = client(&cli)?;
            eprintln!("Deleting orphaned disk '{disk_cid}'; its data cannot be brought back.");
            if !confirm(&cli)? {
                return Err(InputError::new("delete cancelled").into());
            }
            let t: TaskCreated = c.delete(&format!("/v1/disks/{disk_cid}")).await?;
            c.follow_task(t.task_id, cli.json).await.map(|_| ())
        }
        Command::DeleteDeployment => {
            let d = deployment(&cli)?;
            let c = client(&cli)?;
            let _: DeploymentView = c.get(&format!("/v1/deployments/{d}")).await?;
            eprintln!("Using deployment '{d}'; every VM and persistent disk of it will be deleted.");
            if !confirm(&cli)? {
                return Err(InputError::new("delete cancelled").into());
            }
            let t: TaskCreated = c.delete(&format!("/v1/deployments/{d}")).await?;
            c.follow_task(t.task_id, cli.json).await.map(|_| ())
        }
        Command::Interpolate { file, vars, var_errs, path } => {
            let doc = manifest::load(file, vars, *var_errs)?;
            let out = match path {
                None => doc,
                Some(p) => {
                    let mut d = doc;
                    let mut cur = &mut d;
                    for seg in p.trim_start_matches('/').split('/').filter(|s| !s.is_empty()) {
                        cur = match cur {
                            serde_yaml::Value::Mapping(m) => {
                                m.get_mut(seg).ok_or_else(|| InputError::new(format!("--path {p}: no key `{seg}`")))?
                            }
                            serde_yaml::Value::Sequence(s) => {
                                let i: usize = seg
                                    .parse()
                                    .map_err(|_| InputError::new(format!("--path {p}: `{seg}` is not an index")))?;
                                s.get_mut(i)
                                    .ok_or_else(|| InputError::new(format!("--path {p}: index {i} is out of bounds")))?
                            }
                            _ => return Err(InputError::new(format!("--path {p}: `{seg}` goes below a scalar")).into()),
                        };
                    }
                    cur.clone()
                }
            };
            print!("{}", serde_yaml::to_string(&out)?);
            Ok(())
        }
    }
}

#[derive(clap::Args, Debug)]
struct DirectorArgs {
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:25555")]
    listen: std::net::SocketAddr,
    /// Where agents connect (mutual TLS). Defaults to the API's address, port + 1.
    #[arg(long)]
    agent_listen: Option<std::net::SocketAddr>,
    /// The CPI: `local` (processes on this machine) or `docker` (containers on the Docker Engine).
    #[arg(long, default_value = "local")]
    cpi: String,
    /// The CPI's options, YAML (docker: `socket`, `agent_director_address`).
    #[arg(long, value_name = "FILE")]
    cpi_config: Option<PathBuf>,
    #[arg(long, default_value = "bosun")]
    name: String,
    /// Agent heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    heartbeat_interval_ms: u64,
    /// How long a new VM's agent has to connect, in seconds.
    #[arg(long, default_value_t = 120)]
    agent_wait_timeout: u64,
    /// How long an orphaned persistent disk is kept before it is deleted, in seconds (BOSH: 5 days).
    #[arg(long, default_value_t = 5 * 24 * 3600)]
    orphaned_disk_retention: u64,
    /// Grow persistent disks through the CPI's resize_disk where it can, instead of copying.
    #[arg(long)]
    enable_cpi_resize_disk: bool,
    /// Heartbeats an agent may miss before it is unresponsive.
    #[arg(long, default_value_t = 3)]
    missed_heartbeats: u32,
    /// Meltdown: at least this many instances of a deployment turned unhealthy ...
    #[arg(long, default_value_t = 5)]
    meltdown_min_instances: usize,
    /// ... and at least this percentage of them ...
    #[arg(long, default_value_t = 20)]
    meltdown_percent: u32,
    /// ... within this many seconds stops resurrection for the deployment.
    #[arg(long, default_value_t = 600)]
    meltdown_window: u64,
}

async fn run_director(args: &DirectorArgs) -> Result<()> {
    let DirectorArgs { state_dir, listen, agent_listen, cpi, name, heartbeat_interval_ms, agent_wait_timeout, .. } =
        args;
    let (listen, agent_listen, heartbeat_interval_ms, agent_wait_timeout) =
        (*listen, *agent_listen, *heartbeat_interval_ms, *agent_wait_timeout);
    let cpi = cpis::open(cpi, args.cpi_config.as_deref(), state_dir).await?;
    let agent_listen = agent_listen.unwrap_or_else(|| {
        let port = if listen.port() == 0 { 0 } else { listen.port().wrapping_add(1) };
        std::net::SocketAddr::new(listen.ip(), port)
    });
    if heartbeat_interval_ms < 100 {
        return Err(InputError::new("--heartbeat-interval-ms must be at least 100").into());
    }
    let config = bosun_director::DirectorConfig {
        name: name.to_string(),
        state_dir: state_dir.to_path_buf(),
        listen,
        agent_listen,
        agent_advertise: None,
        heartbeat_interval: Duration::from_millis(heartbeat_interval_ms),
        agent_wait_timeout: Duration::from_secs(agent_wait_timeout),
        orphaned_disk_retention: Duration::from_secs(args.orphaned_disk_retention),
        cpi_resize_disk: args.enable_cpi_resize_disk,
        missed_heartbeats: args.missed_heartbeats,
        meltdown: bosun_director::health::MeltdownConfig {
            min_instances: args.meltdown_min_instances,
            percent: args.meltdown_percent,
            window: Duration::from_secs(args.meltdown_window),
        },
    };
    let running = bosun_director::start(config, cpi).await?;
    print!("{}", std::fs::read_to_string(&running.env_file)?);
    println!("# written to {}", running.env_file.display());
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("director stopping; VMs keep running");
    running.director.state.flush().await?;
    Ok(())
}

/// How an update runs: BOSH's command-line overrides.
#[derive(clap::Args, Debug)]
struct UpdateArgs {
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

fn parse_max_in_flight(s: &str) -> Result<MaxInFlight, String> {
    s.parse()
}

#[derive(clap::Args, Debug)]
struct InstanceCommandArgs {
    /// `group`, `group/uuid` or `group/index`; none means every instance of the deployment.
    #[arg(value_parser = parse_selector)]
    instances: Vec<String>,
    /// Show the plan and stop.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    update: UpdateArgs,
}

fn parse_selector(s: &str) -> Result<String, String> {
    s.parse::<InstanceSelector>().map(|_| s.to_string())
}

/// recreate / restart / stop / start: show the plan, confirm, follow the task.
async fn instance_command(cli: &Cli, command: InstanceCommand, args: &InstanceCommandArgs, hard: bool) -> Result<()> {
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

/// `--since 1h`, `--since 90s` or `--since 2026-11-21T10:00:00Z`, as Unix milliseconds.
fn parse_time_ms(s: &str) -> Result<u64, String> {
    let now = std::time::SystemTime::now();
    let t = match humantime::parse_duration(s) {
        Ok(ago) => now.checked_sub(ago).ok_or("too long ago")?,
        Err(_) => humantime::parse_rfc3339_weak(s)
            .map_err(|_| format!("`{s}` is neither a duration (`90s`, `1h`) nor an RFC 3339 time"))?,
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis() as u64)
}

/// Lists a deployment's problems, then resolves them: `--report` stops after the list, `--auto`
/// takes the defaults, `--resolution KIND=RES` picks per kind, otherwise each is asked for.
async fn cck(cli: &Cli, auto: bool, report: bool, resolution: &[String]) -> Result<()> {
    let d = deployment(cli)?;
    let c = client(cli)?;
    let mut by_kind: std::collections::BTreeMap<ProblemKind, Resolution> = std::collections::BTreeMap::new();
    for r in resolution {
        let (k, v) =
            r.split_once('=').ok_or_else(|| InputError::new(format!("--resolution `{r}`: write KIND=RESOLUTION")))?;
        let kind = k.parse().map_err(|e| InputError::new(format!("--resolution `{r}`: problem type {e}")))?;
        let res = v.parse().map_err(|e| InputError::new(format!("--resolution `{r}`: resolution {e}")))?;
        by_kind.insert(kind, res);
    }
    let names = |rs: &[Resolution]| rs.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
    let problems: Vec<ProblemView> = c.get(&format!("/v1/deployments/{d}/problems")).await?;
    if cli.json && report {
        print_json(&problems)?;
    } else {
        let rows: Vec<Vec<String>> = problems
            .iter()
            .enumerate()
            .map(|(n, p)| vec![(n + 1).to_string(), p.kind.to_string(), p.description.clone(), names(&p.resolutions)])
            .collect();
        eprint!("{}", output::table(&["#", "Type", "Description", "Resolutions (first: default)"], &rows));
    }
    if report {
        if problems.is_empty() {
            return Ok(());
        }
        return Err(anyhow::anyhow!("{} problem(s) found", problems.len()));
    }
    if problems.is_empty() {
        eprintln!("No problems.");
        return Ok(());
    }
    let mut picks = std::collections::BTreeMap::new();
    for p in &problems {
        let choice = if let Some(r) = by_kind.get(&p.kind) {
            if !p.resolutions.contains(r) {
                return Err(InputError::new(format!(
                    "--resolution {}={r}: choose from {}",
                    p.kind,
                    names(&p.resolutions)
                ))
                .into());
            }
            *r
        } else if auto || cli.non_interactive {
            p.resolutions[0]
        } else {
            ask_resolution(p)?
        };
        picks.insert(p.id.clone(), choice);
    }
    let t: TaskCreated =
        c.post_json(&format!("/v1/deployments/{d}/problems/resolve"), &ResolveRequest { resolutions: picks }).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}

fn ask_resolution(p: &ProblemView) -> Result<Resolution> {
    use std::io::{BufRead, Write};
    eprintln!("\n{}", p.description);
    for (n, r) in p.resolutions.iter().enumerate() {
        eprintln!("  {}: {r}", n + 1);
    }
    eprint!("Resolution [1]: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let line = line.trim();
    if line.is_empty() {
        return Ok(p.resolutions[0]);
    }
    line.parse::<usize>()
        .ok()
        .and_then(|n| p.resolutions.get(n.wrapping_sub(1)))
        .cloned()
        .ok_or_else(|| InputError::new(format!("`{line}` is not one of 1-{}", p.resolutions.len())).into())
}
