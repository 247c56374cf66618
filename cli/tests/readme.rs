//! The README followed literally, as a newcomer would, in one shell on a fresh clone: its first
//! command (`ci/quickstart`), the commands after it, the Docker section, then the clean-up. What
//! the README says must work; what the clean-up says must leave nothing: no director, VM process,
//! container, stemcell image, `.bosun` or remembered target.
//!
//! It builds bosun in release mode and a Docker stemcell (minutes, even warm), so `ci/readme`
//! runs it rather than `ci/test`. The clone's `target/` is a link to a cache outside it
//! (`/var/cache/bosun/readme-target`), so a second run builds only what changed.

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
                cpi_state: Some(self.clone.join(".bosun/docker-cpi-docker")),
                images: vec![],
            });
        }
    }
}

#[test]
#[ignore = "minutes of release builds: ci/readme runs it"]
fn the_readme_works_as_written_from_a_fresh_clone_quickstart_docker_and_clean_up() {
    let work = tempfile::Builder::new().prefix("bosun-readme-").tempdir_in("/var/tmp").expect("work dir");
    let clone = work.path().join("bosun");
    let status = Command::new("git").args(["clone", "-q"]).arg(repo()).arg(&clone).status().expect("git clone");
    assert!(status.success(), "git clone");
    let cache = PathBuf::from(std::env::var("BOSUN_README_TARGET").unwrap_or("/var/cache/bosun/readme-target".into()));
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

    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let real_home = std::env::var("HOME").unwrap_or("/root".into());
    let mut leftovers = Leftovers { clone: clone.clone(), docker_label: None };
    let log_path = work.path().join("readme.log");
    // One file description for both streams, so their lines interleave rather than overwrite.
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("bash")
        .arg(work.path().join("readme.sh"))
        .current_dir(&clone)
        .env("HOME", &home)
        // The toolchain stays where it is installed; only bosun's remembered target is new.
        .env("CARGO_HOME", std::env::var("CARGO_HOME").unwrap_or(format!("{real_home}/.cargo")))
        .env("RUSTUP_HOME", std::env::var("RUSTUP_HOME").unwrap_or(format!("{real_home}/.rustup")))
        .env_remove("BOSUN_DIRECTOR")
        .env_remove("BOSUN_CA_CERT")
        .env_remove("BOSUN_TOKEN")
        .env_remove("BOSUN_DEPLOYMENT")
        .env_remove("CARGO_TARGET_DIR")
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
    println!("the README took {:.0} s; its last lines:\n{}", started.elapsed().as_secs_f64(), tail(&log_path));
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
