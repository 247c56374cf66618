//! moto's EC2 server (Python, from `target/moto-venv`, which `ci/moto-venv` makes) on a free
//! loopback port: one per test, so no test sees another's cloud; killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The region the tests' clouds are in.
pub const REGION: &str = "us-east-1";

pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

/// The workspace's root (this crate is one level below it).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

impl Moto {
    /// Starts a server and waits (60 s at most) until it listens.
    pub fn start() -> Moto {
        let python = repo().join("target/moto-venv/bin/python");
        assert!(python.exists(), "{} is missing: run ci/moto-venv (ci/test does)", python.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto");
        let moto = Moto { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen on port {port} within 60 s");
            // The poll interval of the deadline loop above.
            std::thread::park_timeout(Duration::from_millis(100));
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
