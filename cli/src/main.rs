//! `bosun`: the operator's CLI, with BOSH's verbs, and `bosun director` to run the director.
//!
//! Exit codes: 0 success; 1 the operation failed (a task ended in error, the director could not be
//! reached); 2 the input is wrong (bad manifest, bad arguments, unknown deployment, refused
//! credentials) and nothing was changed.

mod client;
mod commands;
mod cpis;
mod manifest;
mod output;
mod progress;
mod release;

use anyhow::Result;
use bosun_types::api::*;
use clap::{Parser, Subcommand};
use client::{Client, Target};
use std::path::{Path, PathBuf};

/// Input that is wrong: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(String);

impl InputError {
    pub fn new(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

/// A command that ran on a VM (an errand, `bosun ssh -c`) and exited non-zero: bosun exits with
/// its code.
#[derive(Debug, thiserror::Error)]
#[error("{what} exited {code}")]
pub struct RemoteExit {
    pub what: String,
    pub code: i32,
}

/// A task that ended in error or was cancelled: exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("task {id} {}: {message}", if *cancelled { "was cancelled" } else { "failed" })]
pub struct TaskFailed {
    pub id: u64,
    pub cancelled: bool,
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
    Director(commands::director::DirectorArgs),
    /// Answer one request of BOSH's external CPI protocol (JSON on stdin, JSON on stdout) with
    /// one of bosun's CPIs: what a BOSH director's `bin/cpi` runs.
    #[command(
        after_help = "Example:\n  echo '{\"method\":\"info\",\"arguments\":[],\"context\":{}}' | bosun cpi local --dir /var/lib/bosun-cpi"
    )]
    Cpi {
        /// The CPI: local or docker.
        name: String,
        /// Its working directory (the local CPI's VMs, the Docker CPI's metadata).
        #[arg(long)]
        dir: PathBuf,
        /// Its configuration file (the Docker CPI's).
        #[arg(long)]
        config: Option<PathBuf>,
    },
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
    /// Write a compiled release: the release's jobs and its packages as compiled for a stemcell.
    #[command(after_help = "Example:\n  bosun export-release kubo/0+dev.1 local/1 --dir /tmp")]
    ExportRelease {
        /// NAME/VERSION of an uploaded release.
        release: String,
        /// OS/VERSION of the stemcell its packages were compiled for.
        stemcell: String,
        /// Where to write `NAME-VERSION-OS-VERSION.tgz`.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Only this job (repeatable) and the packages it needs.
        #[arg(long = "job", value_name = "NAME")]
        jobs: Vec<String>,
    },
    /// Show a release's jobs and packages, with the stemcells each package is compiled for.
    #[command(after_help = "Example:\n  bosun inspect-release kubo/0+dev.1")]
    InspectRelease {
        /// NAME/VERSION of an uploaded release.
        release: String,
    },
    /// Upload a stemcell tarball.
    #[command(after_help = "Example:\n  bosun upload-stemcell $(stemcells/local/build.sh 1 | tail -1)")]
    UploadStemcell { tarball: PathBuf },
    /// List uploaded stemcells.
    #[command(after_help = "Example:\n  bosun stemcells")]
    Stemcells,
    /// Delete an uploaded stemcell (and its image in the cloud); refused while a deployment uses
    /// it.
    #[command(after_help = "Example:\n  bosun delete-stemcell bosun-local/1")]
    DeleteStemcell {
        /// NAME/VERSION, as `bosun stemcells` lists it.
        stemcell: String,
    },
    /// Delete an uploaded release, one version or all; refused while a deployment needs it.
    #[command(after_help = "Example:\n  bosun delete-release kubo/1.0.0")]
    DeleteRelease {
        /// NAME or NAME/VERSION.
        release: String,
    },
    /// Delete what nothing needs: releases and stemcells but the newest two versions of each
    /// (with --all: every unused one, and the orphaned disks), compiled packages left over, blobs.
    #[command(after_help = "Example:\n  bosun clean-up --all")]
    CleanUp {
        #[arg(long)]
        all: bool,
    },
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
        /// Show property and env values in the manifest diff (they are redacted by default).
        #[arg(long)]
        no_redact: bool,
        #[command(flatten)]
        update: commands::deployments::UpdateArgs,
    },
    /// Recreate the VMs of a deployment, an instance group or instances (disks and addresses stay).
    #[command(after_help = "Example:\n  bosun -d quickstart recreate etcd/0 --max-in-flight 1")]
    Recreate(commands::deployments::InstanceCommandArgs),
    /// Restart the jobs of a deployment, an instance group or instances.
    #[command(after_help = "Example:\n  bosun -d quickstart restart etcd")]
    Restart(commands::deployments::InstanceCommandArgs),
    /// Stop the jobs (with --hard also delete the VMs, keeping persistent disks).
    #[command(after_help = "Example:\n  bosun -d quickstart stop etcd/2 --hard")]
    Stop {
        #[command(flatten)]
        args: commands::deployments::InstanceCommandArgs,
        /// Also delete the VM; the persistent disk and the instance's identity stay.
        #[arg(long)]
        hard: bool,
    },
    /// Start stopped instances (recreating the VMs of hard-stopped ones).
    #[command(after_help = "Example:\n  bosun -d quickstart start etcd/2")]
    Start(commands::deployments::InstanceCommandArgs),
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
        #[arg(long, value_parser = commands::tasks::parse_time_ms)]
        since: Option<u64>,
        /// Only older events: a duration ago or an RFC 3339 time.
        #[arg(long, value_parser = commands::tasks::parse_time_ms)]
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
        /// Add the agent id, disk CIDs and the applied generation.
        #[arg(long)]
        details: bool,
    },
    /// List a deployment's VMs; with --vitals, each one's load, CPU, memory, swap, disks and
    /// uptime from its latest heartbeat.
    #[command(after_help = "Example:\n  bosun -d quickstart vms --vitals")]
    Vms {
        #[arg(long)]
        vitals: bool,
    },
    /// Show a deployment's manifest.
    #[command(after_help = "Example:\n  bosun -d quickstart manifest")]
    Manifest,
    /// Run an errand job on the instances that have it; prints its output, exits with its code.
    #[command(after_help = "Example:\n  bosun -d kubernetes run-errand smoke-tests --instance master/0")]
    RunErrand {
        /// The errand's job name.
        name: String,
        /// Where to run it: `group`, `group/uuid` or `group/index` (repeatable; default: every
        /// instance with the job).
        #[arg(long = "instance")]
        instances: Vec<String>,
        /// Skip the run when the last one succeeded and nothing changed since.
        #[arg(long)]
        when_changed: bool,
        /// Keep an errand group's VMs after the run (they are deleted otherwise).
        #[arg(long)]
        keep_alive: bool,
        /// Seconds the errand may run.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
    },
    /// Print the deployment's admin kubeconfig (from its Kubernetes control plane).
    #[command(
        after_help = "Example:\n  bosun -d kubernetes kubeconfig > kubeconfig && kubectl --kubeconfig kubeconfig get nodes"
    )]
    Kubeconfig,
    /// List recent tasks.
    #[command(after_help = "Example:\n  bosun tasks --recent 10")]
    Tasks {
        #[arg(long, default_value_t = 30)]
        recent: usize,
    },
    /// Show a task's events (follows it while it runs).
    #[command(after_help = "Example:\n  bosun task 12")]
    Task { id: u64 },
    /// Cancel a running task: the instances in flight finish their update, the rest are left as
    /// they were, the task ends `cancelled` and its lock is released.
    #[command(after_help = "Example:\n  bosun cancel-task 12")]
    CancelTask { id: u64 },
    /// List a deployment's director-generated variables: name, type, id, when generated (never
    /// their values).
    #[command(after_help = "Example:\n  bosun -d kubo variables")]
    Variables,
    /// Download instances' job logs: one `.tgz` each (the newest 128 MiB of each instance's logs).
    #[command(after_help = "Example:\n  bosun -d quickstart logs etcd/0 --job etcd --dir /tmp")]
    Logs {
        /// GROUP/UUID or GROUP/INDEX; repeatable.
        #[arg(required = true)]
        instances: Vec<String>,
        /// Only this job's logs (repeatable); every job's when none.
        #[arg(long = "job", value_name = "NAME")]
        jobs: Vec<String>,
        /// Where to write `DEPLOYMENT.GROUP.ID.TIME.tgz`.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Print the last lines, then each new one as it is written, until Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
        /// With --follow: how many of the last lines of each log file to print first.
        #[arg(long, default_value_t = 10, requires = "follow")]
        num: u32,
    },
    /// Open a shell on an instance, or run a command on instances (in parallel, each line
    /// prefixed with its instance); the command's exit code becomes bosun's.
    #[command(
        after_help = "Examples:\n  bosun -d cluster ssh master/0\n  bosun -d cluster ssh etcd -c 'sudo du -sh /var/vcap/store'\n  \
                            bosun -d cluster ssh etcd/0 --print-config ./etcd-ssh && ssh -F ./etcd-ssh/config etcd/0"
    )]
    Ssh {
        /// GROUP, GROUP/INDEX or GROUP/UUID; repeatable (every instance when none).
        instances: Vec<String>,
        /// Run this command instead of a shell.
        #[arg(short = 'c', long = "command", value_name = "CMD")]
        command: Option<String>,
        /// Reach the VMs through the director (for VMs this machine cannot reach).
        #[arg(long)]
        gateway: bool,
        /// Write a session key, known-hosts file and ssh_config for OpenSSH into DIR, and stop.
        #[arg(long, value_name = "DIR")]
        print_config: Option<PathBuf>,
        /// How long the session key stays valid, in seconds.
        #[arg(long = "expires", value_name = "SECONDS", default_value_t = 1800)]
        expires_in_s: u64,
        /// Remove a session's key now (a --print-config session's, named by its user) and close
        /// its connections.
        #[arg(long, value_name = "USER", conflicts_with_all = ["command", "print_config", "gateway"])]
        revoke: Option<String>,
    },
    /// Copy files between this machine and instances (one side INSTANCE:PATH).
    #[command(after_help = "Examples:\n  bosun -d cluster scp ./etcd.conf etcd:/tmp/etcd.conf\n  \
                            bosun -d cluster scp -r master/0:/var/vcap/sys/log/kube-apiserver ./logs")]
    Scp {
        from: String,
        to: String,
        /// Copy directories.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Reach the VMs through the director.
        #[arg(long)]
        gateway: bool,
    },
    /// List the deployments locked by running tasks.
    #[command(after_help = "Example:\n  bosun locks")]
    Locks,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  bosun completion bash > /etc/bash_completion.d/bosun")]
    Completion { shell: clap_complete::Shell },
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
        /// Fail on variables given (-v, --var-file, -l, --vars-env, --vars-store) that the
        /// document never uses.
        #[arg(long)]
        var_errs_unused: bool,
        /// Print only the value at this path (e.g. /instance_groups/0/name).
        #[arg(long)]
        path: Option<String>,
    },
}

/// A reader that closes the pipe early (`bosun … | head -1`) ends bosun quietly, with the status
/// of a process SIGPIPE ended (128 + 13), as other Unix tools do: Rust ignores SIGPIPE, so printing
/// to a closed stdout panics instead, and restoring the signal's default needs `unsafe`.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

/// The command line; invoked as `bosun-cpi` (a link to this binary, the way a BOSH CPI job ships
/// its executable) it is `bosun cpi …`.
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args.first().and_then(|a| Path::new(a).file_name()).map(|n| n == "bosun-cpi");
    if invoked_as == Some(true) {
        args.insert(1, "cpi".into());
    }
    args
}

fn main() {
    quiet_on_closed_stdout();
    let cli = Cli::parse_from(arguments());
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
        // Colours only for a person at a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = match rt.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {}", chain(&e));
            if let Some(exit) = e.downcast_ref::<RemoteExit>() {
                exit.code.clamp(1, 255)
            } else if e.chain().any(|c| c.is::<InputError>()) {
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
    use commands::deployments::instance_command;
    let cli = &cli;
    match &cli.command {
        Command::Director(args) => commands::director::run_director(args).await,
        Command::Cpi { name, dir, config } => cpis::serve_one(name, config.as_deref(), dir).await,
        Command::Target => commands::director::target(cli).await,
        Command::UpdateCloudConfig { file, vars } => commands::config::update_cloud_config(cli, file, vars).await,
        Command::CloudConfig => commands::config::cloud_config(cli).await,
        Command::CreateRelease { dir, version, tarball } => {
            commands::artifacts::create_release(cli, dir, version, tarball).await
        }
        Command::SyncBlobs { dir } => commands::artifacts::sync_blobs(dir).await,
        Command::UploadRelease { path } => commands::artifacts::upload_release(cli, path).await,
        Command::Releases => commands::artifacts::releases(cli).await,
        Command::ExportRelease { release, stemcell, dir, jobs } => {
            commands::artifacts::export_release(cli, release, stemcell, dir, jobs).await
        }
        Command::InspectRelease { release } => commands::artifacts::inspect_release(cli, release).await,
        Command::UploadStemcell { tarball } => commands::artifacts::upload_stemcell(cli, tarball).await,
        Command::Stemcells => commands::artifacts::stemcells(cli).await,
        Command::Deploy { manifest: path, vars, dry_run, recreate, no_redact, update } => {
            commands::deployments::deploy(cli, path, vars, dry_run, recreate, *no_redact, update).await
        }
        Command::Deployments => commands::deployments::deployments(cli).await,
        Command::Instances { ps, details } => commands::deployments::instances(cli, *ps, *details).await,
        Command::Vms { vitals } => commands::deployments::vms(cli, *vitals).await,
        Command::Manifest => commands::deployments::manifest(cli).await,
        Command::RunErrand { name, instances, when_changed, keep_alive, timeout } => {
            let how = commands::deployments::ErrandRun {
                when_changed: *when_changed,
                keep_alive: *keep_alive,
                timeout: *timeout,
            };
            commands::deployments::run_errand(cli, name, instances, how).await
        }
        Command::Kubeconfig => commands::deployments::kubeconfig(cli).await,
        Command::Tasks { recent } => commands::tasks::tasks(cli, recent).await,
        Command::Task { id } => commands::tasks::task(cli, id).await,
        Command::CancelTask { id } => commands::tasks::cancel_task(cli, *id).await,
        Command::Locks => commands::tasks::locks(cli).await,
        Command::Ssh { instances, revoke: Some(user), .. } => commands::ssh::revoke(cli, instances, user).await,
        Command::Ssh { instances, command, gateway, print_config, expires_in_s, revoke: None } => {
            let options = commands::ssh::SshOptions {
                instances,
                command: command.as_deref(),
                print_config: print_config.as_deref(),
                gateway: *gateway,
                expires_in_s: *expires_in_s,
            };
            commands::ssh::ssh(cli, options).await
        }
        Command::Scp { from, to, recursive, gateway } => commands::ssh::scp(cli, from, to, *recursive, *gateway).await,
        Command::Logs { instances, jobs, follow: true, num, .. } => {
            commands::deployments::follow_logs(cli, instances, jobs, *num).await
        }
        Command::Logs { instances, jobs, dir, follow: false, .. } => {
            commands::deployments::logs(cli, instances, jobs, dir).await
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "bosun", &mut script);
            // Printed as every listing is, so a closed pipe ends it quietly.
            print!("{}", String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Variables => commands::deployments::variables(cli).await,
        Command::Events { instance, task, since, before, limit } => {
            commands::tasks::events(cli, instance, task, since, before, limit).await
        }
        Command::UpdateResurrection { state } => commands::health::update_resurrection(cli, state).await,
        Command::UpdateResurrectionConfig { file } => commands::health::update_resurrection_config(cli, file).await,
        Command::Cck { auto, report, resolution } => commands::health::cck(cli, *auto, *report, resolution).await,
        Command::Recreate(args) => instance_command(cli, InstanceCommand::Recreate, args, false).await,
        Command::Restart(args) => instance_command(cli, InstanceCommand::Restart, args, false).await,
        Command::Stop { args, hard } => instance_command(cli, InstanceCommand::Stop, args, *hard).await,
        Command::Start(args) => instance_command(cli, InstanceCommand::Start, args, false).await,
        Command::Disks { .. } => commands::disks::orphaned(cli).await,
        Command::DeleteDisk { disk_cid } => commands::disks::delete_disk(cli, disk_cid).await,
        Command::DeleteStemcell { stemcell } => commands::artifacts::delete_stemcell(cli, stemcell).await,
        Command::DeleteRelease { release } => commands::artifacts::delete_release(cli, release).await,
        Command::CleanUp { all } => commands::artifacts::clean_up(cli, *all).await,
        Command::DeleteDeployment => commands::deployments::delete_deployment(cli).await,
        Command::Interpolate { file, vars, var_errs, var_errs_unused, path } => {
            commands::interpolate::interpolate(file, vars, *var_errs, *var_errs_unused, path).await
        }
    }
}
