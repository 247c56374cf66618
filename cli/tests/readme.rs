//! The README followed literally, as a newcomer would, in one shell on a fresh clone: its first
//! command (`ci/quickstart`), the commands after it, the Docker section, then the clean-up. What
//! the README says must work; what the clean-up says must leave nothing: no director, VM process,
//! container, stemcell image, `.bosun` or remembered target. Twice: as root, and as a user other
//! than root once the root-only set-up has run (`ci/setup`, and the user in the `docker` group, as
//! the README's Requirements say).
//!
//! It builds bosun in release mode and a Docker stemcell (minutes, even warm), so `ci/readme`
//! runs it rather than `ci/test`. The clone's `target/` is a link to a cache outside it
//! (`/var/cache/bosun/readme-target`, one per newcomer), so a second run builds only what changed.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The shell blocks of the README the newcomer types, in order: the first one of the top (the
/// quickstart), then those of the sections named.
fn readme_blocks(text: &str, sections: &[&str]) -> Vec<String> {
    let mut out = vec![];
    let mut section: Option<String> = None;
    let mut block: Option<String> = None;
    let mut top_taken = false;
    for line in text.lines() {
        if let Some(b) = block.as_mut() {
            if line.trim_start().starts_with("```") {
                let wanted = match &section {
                    None => !std::mem::replace(&mut top_taken, true),
                    Some(s) => sections.contains(&s.as_str()),
                };
                if wanted {
                    out.push(block.take().unwrap());
                }
                block = None;
            } else {
                b.push_str(line);
                b.push('\n');
            }
        } else if line.starts_with("```sh") {
            block = Some(String::new());
        } else if let Some(h) = line.strip_prefix("## ") {
            section = Some(h.trim().to_string());
        }
    }
    out
}

/// What a failed or finished run may have left: directors (their pid files), VM processes, the
/// Docker director's containers and volumes.
struct Leftovers {
    clone: PathBuf,
    docker_label: Option<String>,
}

impl Leftovers {
    fn pids(&self) -> Vec<i32> {
        [".bosun/director/director.pid", ".bosun/docker.pid"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(self.clone.join(p)).ok()?.trim().parse().ok())
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect()
    }

    fn vm_processes(&self) -> Vec<i32> {
        let base = self.clone.join(".bosun/director-cpi-local");
        bosun_cpi_local::processes_with_env(bosun_cpi_local::BASE_MARKER, &base.to_string_lossy())
    }

    fn containers(&self) -> Vec<String> {
        match &self.docker_label {
            Some(l) => docker_lines(&["ps", "-aq", "--filter", &format!("label={l}")]),
            None => vec![],
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let base = self.clone.join(".bosun/director-cpi-local");
        let _ = bosun_cpi_local::kill_processes_with_env(
            bosun_cpi_local::BASE_MARKER,
            &base.to_string_lossy(),
            Duration::from_secs(30),
        );
        bosun_cpi_local::tear_down_all(&base);
        if let Some(label) = &self.docker_label {
            drop(DockerLeftovers {
                label: label.clone(),
                networks: vec![],
                cpi_state: vec![self.clone.join(".bosun/docker-cpi-docker")],
                images: vec![],
                // Killed above, by its pid file.
                director_pid: None,
            });
        }
    }
}

#[test]
#[ignore = "minutes of release builds: ci/readme runs it"]
fn the_readme_works_as_written_from_a_fresh_clone_quickstart_docker_and_clean_up() {
    follow_the_readme(None);
}

#[test]
#[ignore = "minutes of release builds: ci/readme runs it"]
fn the_readme_works_for_a_user_other_than_root_once_the_root_only_set_up_has_run() {
    let work = work_dir();
    let user = Newcomer::create(&work.path().join("home"));
    follow_the_readme(Some((work, user)));
}

fn work_dir() -> tempfile::TempDir {
    let work = tempfile::Builder::new().prefix("bosun-readme-").tempdir_in("/var/tmp").expect("work dir");
    // Another user's clone and home are in it.
    std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    work
}

/// A user other than root, made for one run and removed with everything it owns afterwards: in
/// the `docker` group (the README's one root step besides `ci/setup`), with subordinate ids for
/// user namespaces (useradd gives them), and a Rust toolchain of its own as a newcomer would have
/// installed it (root's rustup toolchains, read-only, and a copy of root's cargo home).
struct Newcomer {
    name: &'static str,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl Newcomer {
    const NAME: &'static str = "bosun-newcomer";

    fn create(home: &Path) -> Self {
        // A run killed before its clean-up leaves the user: it goes first.
        remove_user(Self::NAME);
        let o = Command::new("useradd")
            .args(["--create-home", "--home-dir"])
            .arg(home)
            .args(["--user-group", "--groups", "docker", "--shell", "/bin/bash", Self::NAME])
            .output()
            .expect("useradd");
        assert!(o.status.success(), "useradd: {}", String::from_utf8_lossy(&o.stderr));
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").arg(flag).arg(Self::NAME).output().expect("id");
            String::from_utf8_lossy(&o.stdout).trim().parse().expect("a numeric id")
        };
        let user = Newcomer { name: Self::NAME, uid: id("-u"), gid: id("-g"), home: home.to_path_buf() };
        let (cargo_home, _) = toolchain_homes();
        let o = Command::new("cp").arg("-a").arg(&cargo_home).arg(home.join(".cargo")).output().expect("cp");
        assert!(o.status.success(), "copying cargo's home: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::create_dir_all(home.join(".rustup")).unwrap();
        user.chown(home);
        user
    }

    fn chown(&self, path: &Path) {
        let o = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .output()
            .expect("chown");
        assert!(o.status.success(), "chown {}: {}", path.display(), String::from_utf8_lossy(&o.stderr));
    }

    /// Its processes still running: an exited one not yet reaped (a zombie whose shell ended
    /// before collecting it, left to init) holds nothing and is not counted.
    fn processes(&self) -> Vec<String> {
        let o = Command::new("ps").args(["-U", &self.uid.to_string(), "-o", "pid=,stat=,args="]).output().expect("ps");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.split_whitespace().nth(1).is_some_and(|stat| !stat.starts_with('Z')))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Newcomer {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-KILL", "-U", &self.uid.to_string()]).status();
        remove_user(self.name);
    }
}

/// Where this process's Rust toolchain is: (CARGO_HOME, RUSTUP_HOME), rustup's defaults under HOME.
fn toolchain_homes() -> (String, String) {
    let home = std::env::var("HOME").unwrap_or("/root".into());
    (
        std::env::var("CARGO_HOME").unwrap_or(format!("{home}/.cargo")),
        std::env::var("RUSTUP_HOME").unwrap_or(format!("{home}/.rustup")),
    )
}

fn remove_user(name: &str) {
    if Command::new("id").arg(name).output().is_ok_and(|o| o.status.success()) {
        let _ = Command::new("pkill").args(["-KILL", "-u", name]).status();
        let _ = Command::new("userdel").args(["--remove", name]).output();
    }
}

/// The README's blocks in one bash on a fresh clone, as root (`None`) or as `user` (with the
/// work directory its home is in).
fn follow_the_readme(user: Option<(tempfile::TempDir, Newcomer)>) {
    let (work, newcomer) = match user {
        Some((work, user)) => (work, Some(user)),
        None => (work_dir(), None),
    };
    let clone = work.path().join("bosun");
    let status = Command::new("git").args(["clone", "-q"]).arg(repo()).arg(&clone).status().expect("git clone");
    assert!(status.success(), "git clone");
    let root_cache =
        PathBuf::from(std::env::var("BOSUN_README_TARGET").unwrap_or("/var/cache/bosun/readme-target".into()));
    let cache = match &newcomer {
        None => root_cache.clone(),
        Some(u) => PathBuf::from(format!("{}-{}", root_cache.display(), u.name)),
    };
    std::fs::create_dir_all(&cache).expect("the build cache");
    std::os::unix::fs::symlink(&cache, clone.join("target")).expect("target link");
    // `../shared` beside the clone, as CI has it (the kubo release's docs point there).
    let _ = std::os::unix::fs::symlink(repo().join("../shared"), work.path().join("shared"));

    let readme = std::fs::read_to_string(clone.join("README.md")).unwrap();
    let blocks = readme_blocks(&readme, &["After the quickstart", "On containers (the Docker CPI)", "Cleaning up"]);
    assert_eq!(blocks.len(), 4, "the quickstart, after it, Docker, clean-up: {blocks:#?}");
    assert_eq!(blocks[0].trim(), "ci/quickstart");
    let mut script = String::from("set -euo pipefail\n");
    for (k, b) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '=== README block {}'\n{b}", k + 1));
    }
    script.push_str("echo '=== README done'\n");
    std::fs::write(work.path().join("readme.sh"), &script).unwrap();

    // The user's home is made with the user; root's newcomer gets one of its own.
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut leftovers = Leftovers { clone: clone.clone(), docker_label: None };
    let log_path = work.path().join("readme.log");
    // One file description for both streams, so their lines interleave rather than overwrite.
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut command = match &newcomer {
        None => {
            let (cargo_home, rustup_home) = toolchain_homes();
            let mut c = Command::new("bash");
            c.arg(work.path().join("readme.sh"))
                .env("HOME", &home)
                // The toolchain stays where it is installed; only bosun's remembered target is new.
                .env("CARGO_HOME", cargo_home)
                .env("RUSTUP_HOME", rustup_home)
                .env_remove("BOSUN_DIRECTOR")
                .env_remove("BOSUN_CA_CERT")
                .env_remove("BOSUN_TOKEN")
                .env_remove("BOSUN_DEPLOYMENT")
                .env_remove("CARGO_TARGET_DIR");
            c
        }
        Some(user) => {
            user.chown(&clone);
            // The user's first run starts from root's build output where there is one (the
            // dependencies built there are the same; the clone's own crates build again anyway).
            if std::fs::read_dir(&cache).map(|mut d| d.next().is_none()).unwrap_or(true)
                && root_cache.join("release").is_dir()
            {
                let o = Command::new("cp").arg("-a").arg(root_cache.join("release")).arg(&cache).output().expect("cp");
                assert!(o.status.success(), "seeding the build cache: {}", String::from_utf8_lossy(&o.stderr));
            }
            if std::fs::metadata(&cache).map(|m| std::os::unix::fs::MetadataExt::uid(&m) != user.uid).unwrap_or(true)
                || std::fs::metadata(cache.join("release"))
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) != user.uid)
            {
                user.chown(&cache);
            }
            std::fs::set_permissions(
                work.path().join("readme.sh"),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
            .unwrap();
            let (_, rustup) = toolchain_homes();
            // The toolchain appears in the user's home, read-only, in a mount namespace of this
            // run's own (gone with its last process); then the user's shell, with a user's
            // environment and nothing of root's.
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(r#"mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@""#)
                .arg("sh")
                .arg(&rustup)
                .arg(user.home.join(".rustup"))
                .args(["setpriv", &format!("--reuid={}", user.uid), &format!("--regid={}", user.gid), "--init-groups"])
                .arg("bash")
                .arg(work.path().join("readme.sh"))
                .env_clear()
                .env("HOME", &user.home)
                .env("USER", user.name)
                .env("LOGNAME", user.name)
                .env("SHELL", "/bin/bash")
                .env("LANG", "C.UTF-8")
                .env("PATH", format!("{}/.cargo/bin:/usr/local/bin:/usr/bin:/bin", user.home.display()));
            c
        }
    };
    let mut child = command
        .current_dir(&clone)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("bash");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60 * 60);
    let status = loop {
        // The Docker director's label, read while it runs (its uuid names its containers).
        if leftovers.docker_label.is_none() {
            leftovers.docker_label = docker_director_label(&clone, &work.path().join("probe-home"));
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the README took over an hour:\n{}", tail(&log_path));
        }
        std::thread::park_timeout(Duration::from_secs(1));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let who = newcomer.as_ref().map_or("root".to_string(), |u| format!("{} (uid {})", u.name, u.uid));
    println!("the README as {who} took {:.0} s; its last lines:\n{}", started.elapsed().as_secs_f64(), tail(&log_path));
    assert!(status.success() && log.contains("=== README done"), "the README failed ({status}):\n{}", tail(&log_path));

    // Both deployments ran: three etcd members each, listed running.
    let running = log.lines().filter(|l| l.contains("etcd/") && l.contains("running")).count();
    assert!(running >= 6, "three running etcd members on each director:\n{log}");
    // The clean-up left nothing.
    assert!(leftovers.pids().is_empty(), "a director still runs");
    assert!(leftovers.vm_processes().is_empty(), "local VM processes still run");
    assert!(leftovers.docker_label.is_some(), "the Docker director was seen");
    assert!(leftovers.containers().is_empty(), "containers are left: {:?}", leftovers.containers());
    assert!(!clone.join(".bosun").exists(), ".bosun is gone");
    assert!(!home.join(".config/bosun/target.json").exists(), "the remembered target is gone");
    if let Some(user) = &newcomer {
        assert_eq!(user.processes(), Vec::<String>::new(), "no process of {} is left", user.name);
    }
    // The user (and its processes) go before the work directory its home is in.
    drop(leftovers);
    drop(newcomer);
    drop(work);
}

/// `bosun.tag.director_uuid=<uuid>` of the Docker section's director, once it answers. `home` is
/// the probe's own: `bosun target` with a director named remembers it, and the newcomer's shell
/// must not see that.
fn docker_director_label(clone: &Path, home: &Path) -> Option<String> {
    let env = std::fs::read_to_string(clone.join(".bosun/docker/env")).ok()?;
    let mut cmd = Command::new(clone.join("target/release/bosun"));
    cmd.args(["target", "--json"]).env("HOME", home);
    for (k, v) in env.lines().filter_map(|l| l.strip_prefix("export ")?.split_once('=')) {
        cmd.env(k, v.trim_matches('\''));
    }
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(format!("bosun.tag.director_uuid={}", v["uuid"].as_str()?))
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[test]
fn the_readme_blocks_are_found_in_order() {
    let text = "# t\n```sh\nci/quickstart\n```\n```sh\nci/test\n```\n## A\n```sh\na1\n```\n## B\n```sh\nb\n```\n## C\n```sh\nc\n```\n";
    assert_eq!(readme_blocks(text, &["A", "C"]), ["ci/quickstart\n", "a1\n", "c\n"]);
}
