//! Test harness: a real `bosun director` process with its own state directory and ports, the
//! real CLI binary, and real agents started by the local CPI. Everything a test starts is stopped
//! when the harness is dropped, failing or not.
#![allow(dead_code)]

use bosun_cpi_local::{kill_processes_with_env, processes_with_env, BASE_MARKER};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn bosun_bin() -> &'static str {
    env!("CARGO_BIN_EXE_bosun")
}

/// Polls `check` until it returns `Some` or the deadline passes (then panics with `what`): at
/// once, then after 50 ms, each pause a quarter longer than the last up to 500 ms. Most checks
/// start a process (the CLI, kubectl: tens of milliseconds of CPU each), so a long wait costs a
/// few dozen of them, not ten a second, while a quick condition is still seen quickly.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::park_timeout(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 5 / 4).min(Duration::from_millis(500));
    }
}

/// The `bosun-agent` binary under test.
pub fn agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("bosun-agent", "bosun-agent"))
}

/// A binary of another package of the workspace. Cargo gives this package no `CARGO_BIN_EXE_`
/// for it; it sits beside `bosun` in the same target directory (`cargo test --workspace` builds
/// it) and is built here when a narrower run did not.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_bosun")).with_file_name(bin);
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--locked", "-p", package, "--bin", bin])
            .current_dir(repo())
            .status()
            .unwrap_or_else(|e| panic!("running cargo build for {bin}: {e}"));
        assert!(status.success() && path.exists(), "building {bin} failed");
    }
    path
}

/// The compiled-package cache the test directors share: `BOSUN_TEST_COMPILED_PACKAGE_CACHE`, else
/// `/var/cache/bosun/compiled-packages` where it can be made, else under `target/`.
pub fn compiled_package_cache() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let wanted = std::env::var_os("BOSUN_TEST_COMPILED_PACKAGE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/bosun/compiled-packages"));
        if std::fs::create_dir_all(&wanted).is_ok() {
            return wanted;
        }
        let fallback = scratch().join("compiled-packages");
        std::fs::create_dir_all(&fallback).expect("compiled-package cache dir");
        fallback
    })
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = repo().join("target").join("test-fixtures");
        std::fs::create_dir_all(&d).expect("fixtures dir");
        d
    })
}

/// A local stemcell built by the real builder script around the agent binary under test, once
/// for every test process of a run.
pub fn stemcell(version: &str) -> PathBuf {
    let agent = agent_bin();
    let inputs = [agent.to_path_buf(), repo().join("stemcells/local/build.sh"), repo().join("stemcells/lib.sh")];
    shared_artifact(&format!("bosun-local-{version}"), files_key(&inputs, &[]), |dir| {
        let o = Command::new(repo().join("stemcells/local/build.sh"))
            .arg(version)
            .env("BOSUN_AGENT_BIN", agent)
            .env("BOSUN_STEMCELL_OUT", dir)
            .output()
            .expect("running stemcells/local/build.sh");
        assert!(o.status.success(), "stemcell build failed: {}", String::from_utf8_lossy(&o.stderr));
        let last = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default().to_string();
        let tarball = dir.join(format!("bosun-local-{version}.tgz"));
        assert_eq!(PathBuf::from(last), tarball, "the builder prints the tarball's path last");
        tarball
    })
}

/// Whether the Docker Engine answers. When it does not, a Docker test says so and is skipped —
/// unless `BOSUN_REQUIRE_DOCKER=1` (as `.ci/run` sets), when that is a failure.
pub fn docker_or_skip(test: &str) -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("BOSUN_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "{test}: the Docker Engine is not reachable and BOSUN_REQUIRE_DOCKER=1"
        );
        eprintln!("{test}: skipped: the Docker Engine is not reachable");
    }
    ok
}

/// A Docker stemcell built by the real builder around the agent under test. The builder keeps
/// the Debian root filesystem in its cache (`/var/cache/bosun/docker-rootfs`) across runs and
/// clones, so only the first build on a machine runs mmdebstrap.
pub fn docker_stemcell(version: &str) -> PathBuf {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch().join("docker-stemcells").join(format!("run-{}", std::process::id()));
    let tarball = out.join(format!("bosun-docker-{version}.tgz"));
    if !tarball.exists() {
        std::fs::create_dir_all(&out).expect("stemcell dir");
        let o = Command::new(repo().join("stemcells/docker/build.sh"))
            .arg(version)
            .env("BOSUN_AGENT_BIN", agent_bin())
            .env("BOSUN_STEMCELL_OUT", &out)
            .output()
            .expect("running stemcells/docker/build.sh");
        assert!(o.status.success(), "docker stemcell build failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    tarball
}

/// Removes the containers, volumes and networks that carry a label, when dropped (tests that
/// fail must not leave containers behind).
pub struct DockerLeftovers {
    pub label: String,
    pub networks: Vec<String>,
    /// The Docker CPI's state folders: the volumes it made are named in their metadata.
    pub cpi_state: Vec<PathBuf>,
    /// Stemcell images to remove.
    pub images: Vec<String>,
    /// The director that made them: killed first, so nothing it would do next (a resurrection,
    /// a retried create_vm) makes a container after the clean-up looked.
    pub director_pid: Option<u32>,
}

impl DockerLeftovers {
    pub fn containers(&self) -> Vec<String> {
        docker_lines(&["ps", "-aq", "--filter", &format!("label={}", self.label)])
    }
}

pub fn docker_lines(args: &[&str]) -> Vec<String> {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
        .unwrap_or_default()
}

impl Drop for DockerLeftovers {
    fn drop(&mut self) {
        if let Some(pid) = self.director_pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            // Gone, or a zombie its parent has yet to collect: either way it acts no more.
            let stat = format!("/proc/{pid}/stat");
            let stopped =
                |text: String| text.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && std::fs::read_to_string(&stat).map(stopped).map(|z| !z).unwrap_or(false)
            {
                std::thread::park_timeout(Duration::from_millis(50));
            }
        }
        let containers = self.containers();
        let names: Vec<String> = containers
            .iter()
            .flat_map(|c| docker_lines(&["inspect", "--format", "{{.Name}}", c]))
            .map(|n| n.trim_start_matches('/').to_string())
            .collect();
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            let _ = Command::new("docker").args(&args).output();
        }
        for n in names {
            let _ = Command::new("docker").args(["volume", "rm", "-f", &format!("{n}-root")]).output();
        }
        for state in &self.cpi_state {
            for e in std::fs::read_dir(state.join("metadata")).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().trim_end_matches(".json").to_string();
                if name.starts_with("bosun-disk-") {
                    let _ = Command::new("docker").args(["volume", "rm", "-f", &name]).output();
                }
            }
        }
        for n in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", i]).output();
        }
    }
}

/// The kubo release as a tarball, blobs synced through apt, once for every test process of a
/// run (173 MB: 8 s of CPU and 20 s on a loaded machine each time it is made).
pub fn kubo_release() -> PathBuf {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| shared_release(&repo().join("releases/kubo"), "kubo")).clone()
}

/// The update engine's test release (`cli/tests/fixtures/testbed`: a sleeper job).
pub fn testbed_release() -> PathBuf {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| shared_release(&repo().join("cli/tests/fixtures/testbed"), "testbed")).clone()
}

/// The release in `dir` as a shared tarball (blobs synced first), named by its files — its
/// `dev_releases`, which create-release writes, aside.
fn shared_release(dir: &Path, name: &str) -> PathBuf {
    let o = Command::new(bosun_bin()).arg("sync-blobs").arg(dir).output().expect("bosun sync-blobs");
    assert!(o.status.success(), "sync-blobs failed: {}", String::from_utf8_lossy(&o.stderr));
    let key = files_key(&[dir.to_path_buf()], &[dir.join("dev_releases")]);
    shared_artifact(name, key, |out| {
        let tarball = out.join(format!("{name}.tgz"));
        let o = Command::new(bosun_bin())
            .arg("create-release")
            .arg(dir)
            .arg("--tarball")
            .arg(&tarball)
            .output()
            .expect("bosun create-release");
        assert!(o.status.success(), "create-release failed: {}", String::from_utf8_lossy(&o.stderr));
        tarball
    })
}

/// A digest of the paths, sizes and times of `paths`' files (a directory's recursively, those
/// under `skip` left out): what a shared artifact made from them is named by.
fn files_key(paths: &[PathBuf], skip: &[PathBuf]) -> String {
    use std::hash::{Hash, Hasher};
    let mut files = Vec::new();
    let mut pending = paths.to_vec();
    while let Some(p) = pending.pop() {
        let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()).filter(|p| !skip.contains(p)));
        } else {
            let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            files.push((p, meta.len(), modified));
        }
    }
    files.sort();
    let mut hasher = std::hash::DefaultHasher::new();
    files.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// An artifact every test process of a run shares (a release or stemcell tarball: seconds of
/// CPU to make): the first process to need it makes it under an exclusive lock — `make` writes
/// it into the directory it is given and returns its path — and the others wait and take it.
/// Kept in the scratch directory as `NAME-shared-KEY.tgz`; one of another key is removed.
fn shared_artifact(name: &str, key: String, make: impl FnOnce(&Path) -> PathBuf) -> PathBuf {
    let lock = std::fs::File::create(scratch().join(format!("{name}-shared.lock"))).expect("the artifact's lock file");
    lock.lock().expect("locking the artifact's lock file");
    let shared = scratch().join(format!("{name}-shared-{key}.tgz"));
    if !shared.exists() {
        let prefix = format!("{name}-shared-");
        for e in std::fs::read_dir(scratch()).into_iter().flatten().flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.starts_with(&prefix) && file.ends_with(".tgz") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let work = tempfile::Builder::new().prefix(&format!("{name}-making-")).tempdir_in(scratch()).unwrap();
        let made = make(work.path());
        std::fs::rename(&made, &shared).expect("moving the artifact into place");
    }
    shared
}

/// Instances (as `instances --json` lists them) in index order.
pub fn by_index(list: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut v = list.to_vec();
    v.sort_by_key(|i| i["index"].as_u64());
    v
}

/// A deployment of the testbed release's sleeper job across z1–z3 on the `default` network:
/// `update` lines join the update block (canaries 1, max_in_flight 1, watch 500–5000 ms), `group`
/// lines the instance group, `properties` lines the job's properties.
pub fn sleeper_manifest(
    name: &str,
    instances: u32,
    message: &str,
    update: &str,
    group: &str,
    properties: &str,
) -> String {
    format!(
        r#"name: {name}
releases: [{{name: testbed, version: latest}}]
stemcells: [{{alias: default, os: local, version: latest}}]
update:
  canaries: 1
  max_in_flight: 1
  canary_watch_time: 500-5000
  update_watch_time: 500-5000
{update}
instance_groups:
- name: sleeper
  azs: [z1, z2, z3]
  instances: {instances}
  vm_type: default
  stemcell: default
  networks: [{{name: default}}]
{group}
  jobs:
  - name: sleeper
    release: testbed
    properties:
      message: {message}
{properties}
"#
    )
}

/// The local cloud-config moved onto `127.0.<subnet>.0/24`, so each test has its own addresses.
pub fn local_cloud_config(subnet: u8) -> String {
    std::fs::read_to_string(repo().join("manifests/cloud-config/local.yml"))
        .expect("local cloud-config")
        .replace("127.0.10.", &format!("127.0.{subnet}."))
}

pub struct TestDirector {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub env: Vec<(String, String)>,
    /// Extra `bosun director` flags, and environment for the director process.
    flags: Vec<String>,
    director_env: Vec<(String, String)>,
}

impl TestDirector {
    pub fn start() -> Self {
        Self::start_with(&[], &[])
    }

    /// A director with extra flags (e.g. `--meltdown-window 30`; `--agent-listen HOST` binds the
    /// agent listener on HOST) and environment.
    pub fn start_with(flags: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(Self::state_home(), flags, env)
    }

    /// A director whose CPI is the local CPI behind BOSH's external CPI protocol: every CPI call
    /// a `bosun-cpi local` process (a link named as a BOSH CPI job names its executable), its
    /// VMs where [`TestDirector::cpi_base`] says, so the harness finds and stops them as usual.
    pub fn start_external_local(flags: &[&str]) -> Self {
        let dir = Self::state_home();
        let base = dir.path().canonicalize().unwrap().join("state-cpi-local");
        std::fs::create_dir_all(&base).unwrap();
        let exec = dir.path().join("bosun-cpi");
        std::os::unix::fs::symlink(bosun_bin(), &exec).unwrap();
        let args = ["local".to_string(), "--dir".to_string(), base.display().to_string()];
        Self::start_external(dir, &exec, &args, flags)
    }

    /// A director driving the CPI executable `exec` (run with `args`) over BOSH's external CPI
    /// protocol, its state in `dir`.
    pub fn start_external(dir: tempfile::TempDir, exec: &Path, args: &[String], flags: &[&str]) -> Self {
        let config = dir.path().join("cpi.yml");
        let text = serde_json::json!({
            "exec_path": exec,
            "args": args,
            "properties": {},
            "env": {"RUST_LOG": "info"},
            "timeout_seconds": 300,
        });
        std::fs::write(&config, text.to_string()).unwrap();
        let config = config.display().to_string();
        let mut all = vec!["--cpi", "external", "--cpi-config", config.as_str()];
        all.extend_from_slice(flags);
        Self::start_in(dir, &all, &[])
    }

    /// A temporary directory for a director's state, under the test fixtures.
    pub fn state_home() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("bosun-test-").tempdir_in(scratch()).expect("temp dir")
    }

    fn start_in(dir: tempfile::TempDir, flags: &[&str], env: &[(&str, &str)]) -> Self {
        // Fixed ports for the director's life, so agents find it again after a restart.
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (api, agents) = (free_port(), free_port());
        let mut all_flags = vec!["--listen".to_string(), format!("127.0.0.1:{api}")];
        // A caller may bind the agent listener elsewhere (containers reach the host on 0.0.0.0).
        match flags.iter().position(|f| *f == "--agent-listen") {
            Some(k) => {
                let host = flags.get(k + 1).copied().unwrap_or("127.0.0.1");
                all_flags.extend(["--agent-listen".to_string(), format!("{host}:{agents}")]);
                all_flags.extend(flags[..k].iter().chain(flags.iter().skip(k + 2)).map(|s| s.to_string()));
            }
            None => {
                all_flags.extend(["--agent-listen".to_string(), format!("127.0.0.1:{agents}")]);
                all_flags.extend(flags.iter().map(|s| s.to_string()));
            }
        }
        // An agent is silent after six missed heartbeats (3 s), not the default three: on two
        // cores shared with the cluster tests, a loaded agent missed 1.5 s during an apply.
        if !flags.contains(&"--missed-heartbeats") {
            all_flags.extend(["--missed-heartbeats".to_string(), "6".to_string()]);
        }
        // Every test's director shares one compiled-package cache outside the clone, so what one
        // compiled the others (and the next run on this machine) take from it; a test that must
        // see compilation happen names a cache of its own.
        if !flags.contains(&"--compiled-package-cache") {
            all_flags.extend(["--compiled-package-cache".to_string(), compiled_package_cache().display().to_string()]);
        }
        // And one build cache for the compilers (Go's): a package built again with a small
        // change (the day-2 test's next Kubernetes version) recompiles only what changed.
        if !flags.contains(&"--build-cache") {
            let build_cache = compiled_package_cache().with_file_name("build-cache");
            all_flags.extend(["--build-cache".to_string(), build_cache.display().to_string()]);
        }
        let mut d = TestDirector {
            dir,
            child: None,
            env: vec![],
            flags: all_flags,
            director_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        d.launch();
        d
    }

    /// Waits for the director process to end by itself (a crash point); its exit status.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("a running director");
        eventually("the director to exit", timeout, || child.try_wait().ok().flatten())
    }

    /// Ends the director process (its state stays): nothing it would do next — a resurrection, a
    /// retried create_vm — can race the cleanup of what it made.
    /// The director process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop_process(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the director again on the same state, with this environment instead.
    pub fn relaunch_with(&mut self, env: &[(&str, &str)]) {
        self.stop_process();
        self.director_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.launch();
    }

    /// `host:port` of the director's agent listener.
    pub fn agent_listen(&self) -> String {
        let at = self.flags.iter().position(|f| f == "--agent-listen").expect("the harness sets --agent-listen");
        self.flags[at + 1].replace("0.0.0.0", "127.0.0.1")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The local CPI's base directory (where VMs live).
    pub fn cpi_base(&self) -> PathBuf {
        let dir = self.dir.path().join("state-cpi-local");
        dir.canonicalize().unwrap_or(dir)
    }

    fn launch(&mut self) {
        let env_file = self.state_dir().join("env");
        let _ = std::fs::remove_file(&env_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("director.log"))
            .expect("director log");
        let child = Command::new(bosun_bin())
            .args(["director", "--heartbeat-interval-ms", "500", "--agent-wait-timeout", "60", "--state-dir"])
            .arg(self.state_dir())
            .args(&self.flags)
            .envs(self.director_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting bosun director");
        self.child = Some(child);
        let text = eventually("the director's env file", Duration::from_secs(30), || {
            std::fs::read_to_string(&env_file).ok().filter(|t| t.contains("BOSUN_TOKEN"))
        });
        self.env = text
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    pub fn var(&self, k: &str) -> String {
        self.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(bosun_bin());
        c.env("HOME", self.dir.path().join("home")).env_remove("XDG_CONFIG_HOME").env_remove("BOSUN_DEPLOYMENT");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.current_dir(repo());
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running bosun")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "bosun {args:?} failed ({:?}):\n{}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    }

    /// Runs a command that must fail with `code`; returns its output, stdout (the plan, the task's
    /// progress) then stderr (the error).
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let o = self.run(args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "bosun {args:?}: want exit {code}; its output:\n{out}");
        out
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(&a);
        assert!(o.status.success(), "bosun {a:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("bosun {a:?}: not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
    }

    /// Uploads a cloud-config, the stemcell and the kubo release.
    pub fn prepare(&self, cloud_config: &Path) {
        self.prepare_with(cloud_config, &kubo_release());
    }

    /// Uploads a cloud-config, stemcell version 1 and a release.
    pub fn prepare_with(&self, cloud_config: &Path, release: &Path) {
        self.ok(&["update-cloud-config", cloud_config.to_str().expect("utf-8 path")]);
        self.ok(&["upload-stemcell", stemcell("1").to_str().expect("utf-8 path")]);
        self.ok(&["upload-release", release.to_str().expect("utf-8 path")]);
    }

    /// The instances of a deployment as `bosun instances --ps --json` shows them.
    pub fn instances(&self, deployment: &str) -> Vec<serde_json::Value> {
        self.json(&["-d", deployment, "instances", "--ps"]).as_array().expect("a list").clone()
    }

    /// Waits until the deployment has `n` instances, all running.
    pub fn running(&self, deployment: &str, n: usize) -> Vec<serde_json::Value> {
        eventually(&format!("{n} running instances of {deployment}"), Duration::from_secs(60), || {
            let list = self.instances(deployment);
            (list.len() == n && list.iter().all(|i| i["state"] == "running")).then_some(list)
        })
    }

    /// Processes of this director's VMs that are still alive.
    pub fn vm_processes(&self) -> Vec<i32> {
        processes_with_env(BASE_MARKER, &self.cpi_base().to_string_lossy())
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("writing a test file");
        p
    }
}

impl Drop for TestDirector {
    fn drop(&mut self) {
        let _ = kill_processes_with_env(BASE_MARKER, &self.cpi_base().to_string_lossy(), Duration::from_secs(30));
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() || std::env::var_os("BOSUN_KEEP_TEST_STATE").is_some() {
            // Keep the evidence: the director's and agents' logs.
            let kept = self.dir.path().to_path_buf();
            eprintln!("test failed; director state kept in {}", kept.display());
            std::mem::forget(std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")));
        }
    }
}

/// A POST to an HTTP/1.0 endpoint (etcd's JSON gateway); the body of the answer.
pub fn http_post(addr: &str, path: &str, body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// etcd's member list, through its HTTP gateway on one endpoint: (name, client URLs).
pub fn etcd_members(ip: &str) -> Option<Vec<(String, Vec<String>)>> {
    let v: serde_json::Value =
        serde_json::from_str(&http_post(&format!("{ip}:2379"), "/v3/cluster/member/list", "{}")?).ok()?;
    let members = v.get("members")?.as_array()?;
    Some(
        members
            .iter()
            .map(|m| {
                let name = m.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string();
                let urls = m
                    .get("clientURLs")
                    .and_then(|u| u.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                (name, urls)
            })
            .collect(),
    )
}

/// Kills every process of a local VM with SIGKILL (the agent and its jobs), as a crash would.
pub fn kill_vm(vm_cid: &str) -> usize {
    use bosun_cpi_local::VM_MARKER;
    let pids = processes_with_env(VM_MARKER, vm_cid);
    for pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }
    pids.len()
}

/// Every VM directory of a local CPI with the addresses its settings give it.
pub fn vm_addresses(base: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let Ok(rd) = std::fs::read_dir(base.join("vms")) else { return vec![] };
    rd.flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("settings.json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let ips =
                v["networks"].as_object()?.values().filter_map(|n| n["ip"].as_str().map(str::to_string)).collect();
            Some((e.path(), ips))
        })
        .collect()
}

/// Watches a local CPI's VMs on a thread until stopped: the most VMs seen at once, and every
/// moment an address was held by two VMs.
pub struct AddressWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl AddressWatch {
    pub fn start(base: PathBuf) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut most, mut clashes) = (0usize, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let vms = vm_addresses(&base);
                most = most.max(vms.len());
                let mut seen = std::collections::BTreeSet::new();
                for (vm, ips) in &vms {
                    for ip in ips {
                        if !seen.insert(ip.clone()) {
                            clashes.push(format!("{ip} held twice (one by {})", vm.display()));
                        }
                    }
                }
                std::thread::park_timeout(Duration::from_millis(10));
            }
            (most, clashes)
        });
        AddressWatch { stop, handle: Some(handle) }
    }

    /// (most VMs at once, address clashes).
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.take().expect("running").join().expect("the watch thread")
    }
}

impl Drop for AddressWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reads a key through etcd's gateway: its value (base64) if it exists.
pub fn etcd_get(ip: &str, key_b64: &str) -> Option<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_str(&http_post(&format!("{ip}:2379"), "/v3/kv/range", &format!("{{\"key\":\"{key_b64}\"}}"))?)
            .ok()?;
    Some(v.get("kvs").and_then(|k| k.get(0)).and_then(|kv| kv.get("value")).and_then(|x| x.as_str()).map(String::from))
}

/// A client writing a new key every 50 ms for as long as it runs, trying each endpoint in turn
/// until one accepts the write. A write is lost only when every endpoint refused it.
pub struct EtcdWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(Vec<String>, Vec<String>)>>,
}

pub struct WriterReport {
    /// Keys (base64) whose write some endpoint accepted.
    pub written: Vec<String>,
    /// Keys no endpoint accepted.
    pub failed: Vec<String>,
}

impl WriterReport {
    /// Prints the figures and checks the client lost nothing: no write refused by every
    /// endpoint, and every accepted key readable through `read_from`.
    pub fn assert_nothing_lost(&self, read_from: &str) {
        println!(
            "client writes every 50 ms: {} accepted, {} refused by every endpoint",
            self.written.len(),
            self.failed.len()
        );
        assert!(self.failed.is_empty(), "writes no endpoint accepted: {:?}", self.failed);
        for key in &self.written {
            let got = etcd_get(read_from, key).unwrap_or_else(|| panic!("etcd answers a read of {key}"));
            assert!(got.is_some(), "key {key} was written and is gone");
        }
    }
}

impl EtcdWriter {
    pub fn start(endpoints: &[&str]) -> Self {
        use base64::Engine;
        let endpoints: Vec<String> = endpoints.iter().map(|s| s.to_string()).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut written, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0usize;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let next = Instant::now() + Duration::from_millis(50);
                let key = base64::engine::general_purpose::STANDARD.encode(format!("load/{n:06}"));
                let value = base64::engine::general_purpose::STANDARD.encode(format!("v{n}"));
                let ok = (0..endpoints.len()).any(|k| etcd_put(&endpoints[(n + k) % endpoints.len()], &key, &value));
                if ok {
                    written.push(key)
                } else {
                    failed.push(key)
                }
                n += 1;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::park_timeout(wait);
                }
            }
            (written, failed)
        });
        EtcdWriter { stop, handle: Some(handle) }
    }

    pub fn finish(mut self) -> WriterReport {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (written, failed) = self.handle.take().expect("running").join().expect("the writer thread");
        WriterReport { written, failed }
    }
}

impl Drop for EtcdWriter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Writes a key through etcd's gateway (base64 key and value, as the v3 JSON API wants).
pub fn etcd_put(ip: &str, key_b64: &str, value_b64: &str) -> bool {
    http_post(&format!("{ip}:2379"), "/v3/kv/put", &format!("{{\"key\":\"{key_b64}\",\"value\":\"{value_b64}\"}}"))
        .is_some()
}

/// A TLS client trusting `roots_pem`, with a client certificate when `identity` is given.
pub fn tls_client(roots_pem: &str, identity: Option<(&str, &str)>) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut roots_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    std::sync::Arc::new(match identity {
        Some((cert, key)) => {
            let certs = rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            let key = rustls_pemfile::private_key(&mut key.as_bytes()).unwrap().unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

/// A terminal (tmux, 100×30) running a command with the director's environment: what is on its
/// screen, keys typed into it. When the command ends, `bosun exited N` shows its status.
pub struct Terminal {
    pub name: String,
}

impl Terminal {
    pub fn start(d: &TestDirector, tag: &str, command: &str) -> Self {
        let name = format!("bosun-{tag}-{}", std::process::id());
        let script = d.dir.path().join(format!("{tag}.sh"));
        let mut text = String::from("#!/bin/sh\n");
        for (k, v) in &d.env {
            text.push_str(&format!("export {k}='{v}'\n"));
        }
        text.push_str(&format!("export HOME='{}'\ncd '{}'\n", d.dir.path().join("home").display(), repo().display()));
        text.push_str(&format!("{command}\necho \"bosun exited $?\"\nsleep 600\n"));
        std::fs::write(&script, text).unwrap();
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "100", "-y", "30", "sh"])
            .arg(&script)
            .status()
            .unwrap();
        assert!(status.success(), "tmux new-session");
        Terminal { name }
    }

    pub fn screen(&self) -> String {
        let o = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.name]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Everything the terminal printed, scrolled off or not (what was redrawn in place shows
    /// only as it was last drawn).
    pub fn history(&self) -> String {
        let o = Command::new("tmux").args(["capture-pane", "-p", "-S", "-", "-t", &self.name]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux").args(["send-keys", "-t", &self.name]).args(keys).status().unwrap();
        assert!(status.success());
    }

    /// Waits (20 s at most) until the screen shows `text`; the screen then.
    pub fn shows(&self, what: &str, text: &str) -> String {
        self.shows_where(what, |s| s.contains(text))
    }

    /// Waits until a shell prompt (a line ending in `#` or `$`) follows the last line that
    /// contains `marker`.
    pub fn prompt_after(&self, marker: &str) {
        self.shows_where(&format!("a prompt after `{marker}`"), |s| {
            let lines: Vec<&str> = s.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
            let at = lines.iter().rposition(|l| l.contains(marker));
            at.is_some_and(|k| lines[k + 1..].iter().any(|l| l.ends_with('#') || l.ends_with('$')))
        });
    }

    /// Waits (20 s at most) until the screen is as `check` wants it; the screen then.
    pub fn shows_where(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if check(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the screen:\n{s}");
            std::thread::park_timeout(Duration::from_millis(100));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.name]).status();
    }
}
