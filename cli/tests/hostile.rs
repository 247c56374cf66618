//! The hostile probe made permanent (issue 13): each test replays attacks and faults that once got
//! through — secrets left readable in the state directory, idle-connection floods, corrupted
//! blobs, links inside uploaded tarballs, a closed stdout, non-JSON error bodies — and shows they
//! no longer do. Injection through property values: `variables.rs`; impostor agents, YAML bombs
//! and huge documents: `bad_input.rs`. Subnets 127.0.72.0/24 – 127.0.74.0/24.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Every file and directory under `dir` (not following links).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.symlink_metadata().unwrap().is_dir() {
                pending.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// What `find DIR -perm /o+r` (and group or other bits generally) and `grep -r "PRIVATE KEY" DIR`
/// would find.
fn exposed(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut loose = Vec::new();
    let mut keys = Vec::new();
    for p in std::iter::once(dir.to_path_buf()).chain(walk(dir)) {
        let meta = p.symlink_metadata().unwrap();
        if meta.permissions().mode() & 0o077 != 0 && !meta.file_type().is_symlink() {
            loose.push(p.clone());
        }
        if meta.is_file() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            if bytes.windows(b"PRIVATE KEY".len()).any(|w| w == b"PRIVATE KEY") {
                keys.push(p);
            }
        }
    }
    (loose, keys)
}

#[test]
fn the_state_directory_is_owner_only_holds_no_plaintext_key_and_collects_unreferenced_blobs() {
    let mut d = TestDirector::start();
    let state = d.state_dir();
    // A state directory an older director left: loose modes, a plaintext CA key, an upload a
    // crash interrupted, and a blob nothing references (a rendered job, say), written long ago.
    d.stop_process();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in walk(&state) {
        let mode = if f.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::create_dir_all(state.join("tmp/0123/unpacked")).unwrap();
    std::fs::write(state.join("tmp/0123/upload"), b"half an upload").unwrap();
    let stale_blob = state.join("blobs/sha256").join("ab".repeat(32));
    std::fs::write(&stale_blob, b"-----BEGIN PRIVATE KEY----- from a rendered job").unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(86_400);
    std::fs::File::options().write(true).open(&stale_blob).unwrap().set_modified(long_ago).unwrap();
    d.relaunch_with(&[]);
    let (loose, keys) = exposed(&state);
    assert!(loose.is_empty(), "readable by others after a restart: {loose:?}");
    assert!(keys.is_empty(), "plaintext keys after a restart: {keys:?}");
    assert!(!state.join("tmp").exists(), "the interrupted upload's leftovers are removed");
    assert!(!stale_blob.exists(), "an unreferenced blob is collected");
    assert!(state.join("ca.key.sealed").exists() && !state.join("ca.key").exists());

    // A deploy with certificates the director generates.
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(72)), &testbed_release());
    let manifest = sleeper_manifest("secrets", 1, r#""key=((tls.private_key))""#, "", "", "")
        + r#"variables:
- name: tls_ca
  type: certificate
  options: {is_ca: true, common_name: hostile-ca}
- name: tls
  type: certificate
  options: {ca: tls_ca, common_name: sleeper}
"#;
    let m = d.write("secrets.yml", &manifest);
    d.ok(&["-n", "-d", "secrets", "deploy", m.to_str().unwrap()]);
    let i = d.running("secrets", 1);
    // The key did reach the VM (so there was one to leak) …
    let starts = d.cpi_base().join("vms").join(i[0]["vm_cid"].as_str().unwrap()).join("root/store/starts");
    eventually("the sleeper to write its key", Duration::from_secs(30), || {
        std::fs::read_to_string(&starts).ok().filter(|s| s.contains("PRIVATE KEY"))
    });
    // … and the director's state holds it nowhere in plaintext, readable by no one else.
    let (loose, keys) = exposed(&state);
    assert!(loose.is_empty(), "readable by others after a deploy: {loose:?}");
    assert!(keys.is_empty(), "plaintext keys after a deploy: {keys:?}");
    let log = std::fs::read_to_string(d.dir.path().join("director.log")).unwrap();
    assert!(!log.contains(&d.var("BOSUN_TOKEN")), "the director's output holds its token");

    d.ok(&["-n", "-d", "secrets", "delete-deployment"]);
    let (loose, keys) = exposed(&state);
    assert!(loose.is_empty() && keys.is_empty(), "after delete-deployment: {loose:?} {keys:?}");
    println!("state directory: {} entries, all owner-only, no plaintext key", walk(&state).len());
}

/// Opens `n` TCP connections to `addr` and holds them, sending nothing.
fn idle_connections(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    (0..n).map(|_| std::net::TcpStream::connect(addr).expect("connecting")).collect()
}

/// How many of `conns` the other side has closed.
fn closed(conns: &[std::net::TcpStream]) -> usize {
    conns
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            match (&**c).read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count()
}

#[test]
fn floods_of_idle_connections_leave_the_api_and_new_agents_working() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(73)), &testbed_release());
    let api = d.var("BOSUN_DIRECTOR").trim_start_matches("https://").to_string();
    // 500 idle connections on the API and 600 on the agent listener, held open throughout.
    let held_api = idle_connections(&api, 500);
    let held_agents = idle_connections(&d.agent_listen(), 600);
    let t = Instant::now();
    d.ok(&["deployments"]);
    println!("with 1100 idle connections: `bosun deployments` answered in {:.2} s", t.elapsed().as_secs_f64());
    // A new VM's agent connects and the deploy converges.
    let t = Instant::now();
    let m = d.write("flood.yml", &sleeper_manifest("flood", 1, "hello", "", "", ""));
    d.ok(&["-n", "-d", "flood", "deploy", m.to_str().unwrap()]);
    d.running("flood", 1);
    println!("with the connections held: a one-VM deploy took {:.1} s", t.elapsed().as_secs_f64());
    let (api_closed, agents_closed) = (closed(&held_api), closed(&held_agents));
    println!("the director closed {api_closed} of 500 idle API and {agents_closed} of 600 idle agent connections");
    assert!(api_closed >= 500 - 128, "the API's unauthenticated connections are bounded: {api_closed} closed");
    assert!(agents_closed >= 600 - 512, "unproven agent connections are bounded: {agents_closed} closed");
    drop((held_api, held_agents));

    // Half a request over TLS is dropped once the header-read time is out (30 s).
    let ca = std::fs::read_to_string(d.var("BOSUN_CA_CERT")).unwrap();
    let conn = rustls::ClientConnection::new(tls_client(&ca, None), "bosun-director".try_into().unwrap()).unwrap();
    let sock = std::net::TcpStream::connect(&api).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(tls, "GET /v1/deployments HTTP/1.1\r\nHost: {api}\r\n").unwrap();
    tls.flush().unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    let waited = t.elapsed();
    println!("a half-sent request was closed after {:.1} s", waited.as_secs_f64());
    assert!(waited < Duration::from_secs(45), "closed within the header-read timeout: {waited:?}");
    d.ok(&["-n", "-d", "flood", "delete-deployment"]);
}

#[test]
fn corrupt_blobs_are_reported_by_cck_and_repaired_by_an_upload_and_a_recompile() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(74)), &testbed_release());
    // The greeter job runs the compiled `greet` package (built against `libgreet`).
    let manifest = sleeper_manifest("blobs", 1, "hello", "", "", "").replace(
        "  jobs:\n  - name: sleeper\n",
        "  jobs:\n  - name: greeter\n    release: testbed\n  - name: sleeper\n",
    );
    assert!(manifest.contains("name: greeter"));
    let m = d.write("blobs.yml", &manifest);
    d.ok(&["-n", "-d", "blobs", "deploy", m.to_str().unwrap()]);
    d.running("blobs", 1);
    // Flip a byte in every blob: the releases' jobs and packages and the compiled packages.
    let blobs = d.state_dir().join("blobs/sha256");
    let mut n = 0;
    for f in std::fs::read_dir(&blobs).unwrap().flatten() {
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(f.path(), bytes).unwrap();
        n += 1;
    }
    assert!(n > 0);
    let report = d.run(&["-d", "blobs", "cck", "--report"]);
    let text = String::from_utf8_lossy(&report.stdout).into_owned() + &String::from_utf8_lossy(&report.stderr);
    assert_eq!(report.status.code(), Some(1), "cck reports problems: {text}");
    assert!(text.contains("corrupt_blob"), "{text}");
    assert!(text.contains("upload release testbed/") && text.contains("again"), "the repair is named: {text}");
    assert!(text.contains("compiled for"), "compiled packages are checked too: {text}");
    // The same release uploaded again brings its blobs back; a recreate compiles (or takes from
    // the compiled-package cache) the packages again, and serves only sound blobs.
    d.ok(&["upload-release", testbed_release().to_str().unwrap()]);
    let out = d.ok(&["-n", "-d", "blobs", "recreate"]);
    assert!(out.contains("its compiled blob is missing or corrupt"), "{out}");
    d.running("blobs", 1);
    // No corrupt blob from here on; anything else cck may see (an agent a loaded machine kept
    // from heartbeating for a moment) must clear by itself.
    eventually("cck to find nothing to repair", Duration::from_secs(60), || {
        let report = d.run(&["-d", "blobs", "cck", "--report"]);
        let text = String::from_utf8_lossy(&report.stdout).into_owned();
        assert!(!text.contains("corrupt_blob"), "repaired: {text}");
        report.status.success().then_some(())
    });
    d.ok(&["-n", "-d", "blobs", "delete-deployment"]);
}

/// A release tarball whose job is a symbolic link to a file of the director's machine.
fn release_with_a_link(dir: &Path) -> PathBuf {
    let out = dir.join("linked.tgz");
    let f = std::fs::File::create(&out).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
    let mf = b"name: linked\nversion: '1'\ncommit_hash: x\nuncommitted_changes: false\njobs:\n- {name: j, version: a, fingerprint: a, sha1: 'sha256:00'}\npackages: []\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(mf.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "release.MF", &mf[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "jobs/j.tgz", "/etc/hostname").unwrap();
    b.into_inner().unwrap().finish().unwrap();
    out
}

#[test]
fn uploads_refuse_links_name_a_full_disk_and_leave_nothing_behind() {
    let d = TestDirector::start();
    let tarball = release_with_a_link(d.dir.path());
    let err = d.fails(1, &["upload-release", tarball.to_str().unwrap()]);
    assert!(err.contains("`jobs/j.tgz` is a symbolic link"), "{err}");
    let host_file = bosun_types::digest::sha256_digest(&std::fs::read("/etc/hostname").unwrap());
    assert!(!err.contains(&host_file["sha256:".len()..]), "the error leaks the linked file's digest: {err}");
    let tmp = d.state_dir().join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a failed upload leaves {left:?}");
}

/// One HTTP/1.1 request (`head` with its blank line, and any body) over TLS to the API, the
/// connection closed after it; the answer's status and body.
fn raw_https(d: &TestDirector, request: &str) -> (u16, String) {
    let addr = d.var("BOSUN_DIRECTOR").trim_start_matches("https://").to_string();
    let ca = std::fs::read_to_string(d.var("BOSUN_CA_CERT")).unwrap();
    let conn = rustls::ClientConnection::new(tls_client(&ca, None), "bosun-director".try_into().unwrap()).unwrap();
    let sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let request = request.replacen("\r\n", &format!("\r\nHost: {addr}\r\nConnection: close\r\n"), 1);
    // The director may answer (and close) before a body over its limit is all sent.
    let _ = tls.write_all(request.as_bytes()).and_then(|()| tls.flush());
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[test]
fn every_api_error_is_json_with_a_code_and_a_closed_stdout_ends_the_cli_quietly() {
    let d = TestDirector::start();
    let token = d.var("BOSUN_TOKEN");
    let auth = format!("Authorization: Bearer {token}\r\n");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "a body over the limit",
            format!(
                "POST /v1/cloud-config HTTP/1.1\r\n{auth}Content-Length: {}\r\n\r\n{}",
                (16 << 20) + 1,
                "a".repeat((16 << 20) + 1)
            ),
            413,
            "too_large",
        ),
        (
            "a malformed JSON body",
            format!(
                "POST /v1/deployments/x/problems/resolve HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 9\r\n\r\n{{not json"
            ),
            400,
            "invalid_input",
        ),
        ("an unknown route", format!("GET /v1/nothing-here HTTP/1.1\r\n{auth}\r\n"), 404, "not_found"),
        ("a wrong method", format!("DELETE /v1/info HTTP/1.1\r\n{auth}\r\n"), 405, "method_not_allowed"),
        ("no token", "GET /v1/info HTTP/1.1\r\n\r\n".to_string(), 401, "unauthorized"),
    ];
    for (what, request, status, code) in cases {
        let (got, body) = raw_https(&d, &request);
        assert_eq!(got, status, "{what}: {body}");
        let body: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
        assert_eq!(body["code"], code, "{what}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
        if status == 413 {
            assert!(body["message"].as_str().unwrap().contains("16 MiB"), "the limit is named: {body}");
        }
    }

    // `bosun … | head -1`: the reader goes away after one line.
    let big = d.write("big.yml", &(0..20_000).map(|i| format!("k{i}: v{i}\n")).collect::<String>());
    let mut child = d
        .command()
        .args(["interpolate", big.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "ends as SIGPIPE would: {stderr}");
}
