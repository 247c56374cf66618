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
    for args in [&[][..], &["--root", "/tmp"][..], &["--bogus"][..]] {
        let o = agent().args(args).output().expect("running bosun-agent");
        assert_eq!(o.status.code(), Some(2), "args {args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("usage: bosun-agent --root DIR --settings FILE"));
    }
}

#[test]
fn an_unreadable_settings_file_fails_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let o = agent()
        .args(["--root"])
        .arg(dir.path())
        .args(["--settings"])
        .arg(dir.path().join("missing.json"))
        .env("RUST_LOG", "error")
        .output()
        .expect("running bosun-agent");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("agent failed"), "{}", String::from_utf8_lossy(&o.stdout));
}
