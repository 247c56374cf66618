//! The `bosun-agent` binary's command line: what a stemcell's init runs. (Building this test also
//! makes `cargo test --workspace` build the binary the integration tests in `cli/` put into
//! stemcells.)

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bosun-agent"))
}

#[test]
fn version_prints_the_package_version() {
    let o = agent().arg("--version").output().expect("running bosun-agent");
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("bosun-agent {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn missing_or_unknown_arguments_exit_2_with_usage() {
    for args in [&[][..], &["--root", "/tmp"][..], &["--bogus"][..], &["--metadata", "--root"][..], &["--dev"][..]] {
        let o = agent().args(args).output().expect("running bosun-agent");
        assert_eq!(o.status.code(), Some(2), "args {args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("usage: bosun-agent --root DIR (--settings FILE | --metadata [URL"), "{err}");
    }
}

#[test]
fn a_root_that_cannot_be_made_fails_with_exit_1() {
    // Settings the CPI has not written yet are waited for; a root directory that cannot exist is
    // an error the agent reports and exits on.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let o = agent()
        .arg("--root")
        .arg(&file)
        .arg("--settings")
        .arg(dir.path().join("settings.json"))
        .output()
        .expect("running bosun-agent");
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("agent failed") && out.contains("a-file"), "{out}");
}
