//! The director's web view (`/ui`) in a real browser: Debian's Chromium, headless, driven over
//! the DevTools protocol on a pipe. A 3-instance deployment on the local CPI (subnet
//! 127.0.78.0/24) loses a VM and is resurrected; the browser signs in with the token (a wrong one
//! first), sees every instance running in the grid, finds the timeline's death, detection,
//! resurrection and running again in that order left to right, and saves screenshots of the
//! page and of the timeline under `target/ui-screenshots/`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEPLOYMENT: &str = "web";

/// A headless Chromium and one page of it, spoken to over `--remote-debugging-pipe` (fd 3 in,
/// fd 4 out: NUL-terminated JSON messages).
struct Browser {
    child: Child,
    to_browser: ChildStdin,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    /// Events read while waiting for an answer.
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch(log: &std::path::Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        // The shell moves the pipes onto the descriptors Chromium reads and writes; nothing of the
        // browser resolves a name but loopback's, so no traffic leaves the machine.
        let script = r#"exec chromium --headless --no-sandbox --disable-gpu --remote-debugging-pipe \
            --user-data-dir="$1" --no-first-run --no-default-browser-check --disable-extensions \
            --disable-background-networking --disable-component-update --disable-sync \
            --disable-default-apps --no-pings --mute-audio --disable-features=Translate,MediaRouter,OptimizationHints \
            --host-resolver-rules='MAP * ~NOTFOUND, EXCLUDE 127.0.0.1' --ignore-certificate-errors \
            --window-size=1280,900 about:blank 3<&0 4>&1 </dev/null >/dev/null"#;
        let mut child = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(profile.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("browser log"))
            .spawn()
            .expect("starting chromium (ci/setup installs it)");
        let to_browser = child.stdin.take().expect("stdin");
        let mut out = child.stdout.take().expect("stdout");
        let (tx, from_browser) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut pending, mut chunk) = (Vec::new(), [0u8; 65536]);
            while let Ok(n) = out.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&chunk[..n]);
                while let Some(end) = pending.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&message[..end]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to_browser,
            from_browser,
            next_id: 0,
            session: String::new(),
            events: vec![],
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}));
        b.session = attached["sessionId"].as_str().expect("a session").to_string();
        b.call("Page.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Sends a command (to the page once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).expect("writing to the browser");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.from_browser.recv_timeout(left).unwrap_or_else(|e| panic!("{method}: no answer: {e}"));
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    /// Waits for an event of the page (one read earlier counts).
    fn wait_event(&mut self, method: &str) {
        if let Some(k) = self.events.iter().position(|e| e["method"] == method) {
            self.events.drain(..=k);
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.from_browser.recv_timeout(left).unwrap_or_else(|e| panic!("waiting for {method}: {e}"));
            if m["method"] == method {
                return;
            }
        }
    }

    /// Evaluates an expression in the page; its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}));
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Loads a page, or does what leads to one, and waits for it to have loaded.
    fn navigating(&mut self, act: impl FnOnce(&mut Browser)) {
        self.events.retain(|e| e["method"] != "Page.loadEventFired");
        act(self);
        self.wait_event("Page.loadEventFired");
    }

    fn goto(&mut self, url: &str) {
        let url = url.to_string();
        self.navigating(|b| {
            b.call("Page.navigate", json!({"url": url}));
        });
    }

    /// Types into the focused element as a keyboard would, then clicks a button.
    fn sign_in(&mut self, token: &str) {
        self.eval("document.getElementById('token').focus()");
        self.call("Input.insertText", json!({"text": token}));
        self.navigating(|b| {
            b.eval("document.getElementById('sign-in').click()");
        });
    }

    /// A PNG of the page (whole) or of one element's box.
    fn screenshot(&mut self, selector: Option<&str>) -> Vec<u8> {
        let mut params = json!({"format": "png", "captureBeyondViewport": true});
        if let Some(sel) = selector {
            let r = self.eval(&format!(
                "(() => {{ const r = document.querySelector({}).getBoundingClientRect(); \
                 return [r.x + scrollX, r.y + scrollY, r.width, r.height]; }})()",
                json!(sel)
            ));
            params["clip"] = json!({"x": r[0], "y": r[1], "width": r[2], "height": r[3], "scale": 1});
        }
        let shot = self.call("Page.captureScreenshot", params);
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("image data")).expect("base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked to close, Chromium ends its renderers itself; then anything left of it goes.
        let _ = self.to_browser.write_all(b"{\"id\":999999,\"method\":\"Browser.close\"}\0");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::park_timeout(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let profile = self._profile.path().display().to_string();
        for pid in processes_naming(&profile) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Processes whose command line holds `text`.
fn processes_naming(text: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(text).then_some(pid)
        })
        .collect()
}

/// Width and height of a PNG, from its header (and that it is one).
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn the_web_view_shows_the_instances_and_a_resurrection_to_scale_in_a_real_browser() {
    assert!(
        Command::new("chromium").arg("--version").output().is_ok_and(|o| o.status.success()),
        "chromium is not installed: run ci/setup"
    );
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(78)), &testbed_release());
    let m = d.write("m.yml", &sleeper_manifest(DEPLOYMENT, 3, "hello", "", "", ""));
    d.ok(&["-n", "-d", DEPLOYMENT, "deploy", m.to_str().unwrap()]);
    let before = by_index(&d.running(DEPLOYMENT, 3));
    let victim = before[1]["instance"].as_str().unwrap().to_string();
    let victim_vm = before[1]["vm_cid"].as_str().unwrap().to_string();
    assert!(kill_vm(&victim_vm) > 0, "the VM had processes to kill");
    eventually("the killed instance resurrected and running", Duration::from_secs(120), || {
        let list = d.instances(DEPLOYMENT);
        let back = list.iter().any(|i| i["instance"] == victim.as_str() && i["vm_cid"] != victim_vm.as_str());
        (back && list.iter().all(|i| i["state"] == "running")).then_some(())
    });

    let api = d.var("BOSUN_DIRECTOR");
    let base = format!("https://{}", api.trim_start_matches("https://"));
    let shots = repo().join("target").join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut b = Browser::launch(&d.dir.path().join("chromium.log"));

    // Not signed in: the page asked for is a sign-in form, and a wrong token is refused.
    b.goto(&format!("{base}/ui/deployments/{DEPLOYMENT}"));
    assert_eq!(b.eval("!!document.getElementById('token')"), json!(true), "a sign-in form");
    assert_eq!(b.eval("document.querySelectorAll('.inst').length"), json!(0), "nothing shown before signing in");
    b.sign_in("not-the-token");
    let error = b.eval("document.getElementById('login-error')?.textContent ?? ''");
    assert_eq!(error, json!("That token is not this director's."));
    b.sign_in(&d.var("BOSUN_TOKEN"));
    assert_eq!(b.eval("location.pathname"), json!(format!("/ui/deployments/{DEPLOYMENT}")), "back where it began");
    assert_eq!(b.eval("document.cookie"), json!(""), "the session cookie is out of scripts' reach");

    // The grid: every instance, running, under its group and AZ.
    let grid =
        b.eval("[...document.querySelectorAll('table.grid .inst')].map(e => [e.dataset.instance, e.dataset.state])");
    let mut shown: Vec<(String, String)> = grid
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect();
    shown.sort();
    let mut want: Vec<(String, String)> = d
        .instances(DEPLOYMENT)
        .iter()
        .map(|i| (i["instance"].as_str().unwrap().to_string(), "running".to_string()))
        .collect();
    want.sort();
    assert_eq!(shown, want, "the grid shows each instance's state");
    let azs = b.eval("[...document.querySelectorAll('table.grid tr:first-child th')].map(e => e.textContent)");
    assert_eq!(azs, json!(["Group", "z1", "z2", "z3"]));

    // The timeline: the victim's death, detection, resurrection and running again, in that order
    // in time and on screen.
    let marks = b.eval(&format!(
        "[...document.querySelectorAll('#timeline g.mark[data-instance={}]')].map(g => \
         [g.dataset.kind, Number(g.dataset.timeMs), g.getBoundingClientRect().x + g.getBoundingClientRect().width / 2])",
        json!(victim)
    ));
    let marks: Vec<(String, u64, f64)> = marks
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m[0].as_str().unwrap().to_string(), m[1].as_u64().unwrap(), m[2].as_f64().unwrap()))
        .collect();
    let mut order = vec![];
    for kind in ["death", "detection", "resurrection", "running"] {
        let after = order.last().map(|(_, t, _): &(String, u64, f64)| *t).unwrap_or(0);
        let found = marks
            .iter()
            .find(|(k, t, _)| k == kind && *t >= after)
            .unwrap_or_else(|| panic!("no {kind} mark after the previous one: {marks:?}"));
        order.push(found.clone());
    }
    // Centres on screen, left to right (marks 50 ms apart may share a pixel).
    assert!(order.windows(2).all(|w| w[0].2 <= w[1].2 + 0.5), "left to right on screen: {order:?}");
    assert!(order[3].2 > order[0].2 + 5.0, "the recovery takes visible width: {order:?}");
    let died_to_running = (order[3].1 - order[0].1) as f64 / 1000.0;
    println!(
        "timeline: death → detection {:.1} s → resurrection {:.1} s → running {:.1} s (total {died_to_running:.1} s)",
        (order[1].1 - order[0].1) as f64 / 1000.0,
        (order[2].1 - order[1].1) as f64 / 1000.0,
        (order[3].1 - order[2].1) as f64 / 1000.0,
    );
    let bars = b.eval("document.querySelectorAll('#timeline rect.update').length").as_u64().unwrap();
    assert!(bars >= 4, "three deploy updates and the resurrection's: {bars}");

    let page = b.screenshot(None);
    let (w, h) = png_size(&page);
    assert!(w >= 1100 && h >= 600, "{w}×{h}");
    std::fs::write(shots.join("deployment.png"), &page).unwrap();
    let timeline = b.screenshot(Some("#timeline svg"));
    let (w, h) = png_size(&timeline);
    assert!(w == 1100 && h > 100, "the timeline as drawn: {w}×{h}");
    std::fs::write(shots.join("timeline.png"), &timeline).unwrap();
    println!(
        "screenshots in {}: deployment.png ({} bytes), timeline.png ({} bytes)",
        shots.display(),
        page.len(),
        timeline.len()
    );

    // The overview lists the deployment with its states; signing out ends the session.
    b.goto(&format!("{base}/ui"));
    let row =
        b.eval(&format!("document.querySelector('tr[data-deployment={}]')?.textContent ?? ''", json!(DEPLOYMENT)));
    assert!(row.as_str().unwrap().contains("3 running"), "{row}");
    b.navigating(|b| {
        b.eval("document.querySelector('header form button').click()");
    });
    b.goto(&format!("{base}/ui/deployments/{DEPLOYMENT}"));
    assert_eq!(b.eval("!!document.getElementById('token')"), json!(true), "signed out");
    let profile = b._profile.path().display().to_string();
    drop(b);
    assert!(processes_naming(&profile).is_empty(), "the browser's processes are gone");
}
