//! Clients that measure a cluster from outside, the way its users meet it: an HTTPS client for the
//! Kubernetes API (the admin's certificate, one fresh connection per request), the masters behind
//! a balancer that follows their /readyz, a writer that writes a ConfigMap every 200 ms, and
//! Service requests every 100 ms through the workers an external load balancer would use.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why a request got no answer: before it was sent (the next master may take it) or after.
#[derive(Debug)]
pub enum ApiError {
    Connect(String),
    Exchange(String),
}

/// The Kubernetes API over HTTPS with the admin's client certificate from a kubeconfig.
pub struct ApiClient {
    config: Arc<rustls::ClientConfig>,
}

impl ApiClient {
    pub fn from_kubeconfig(text: &str) -> Self {
        use base64::Engine;
        let v: serde_yaml::Value = serde_yaml::from_str(text).expect("a kubeconfig");
        let field = |v: &serde_yaml::Value, key: &str| -> Vec<u8> {
            let b64 = v[key].as_str().unwrap_or_else(|| panic!("kubeconfig has no {key}"));
            base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")
        };
        let ca = field(&v["clusters"][0]["cluster"], "certificate-authority-data");
        let cert = field(&v["users"][0]["user"], "client-certificate-data");
        let key = field(&v["users"][0]["user"], "client-key-data");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(c.expect("CA PEM")).expect("CA certificate");
        }
        let chain: Vec<_> = rustls_pemfile::certs(&mut &cert[..]).map(|c| c.expect("certificate PEM")).collect();
        let key = rustls_pemfile::private_key(&mut &key[..]).expect("key PEM").expect("a private key");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client certificate");
        ApiClient { config: Arc::new(config) }
    }

    /// One request to the apiserver at `ip`:6443 on a fresh connection: (status, body).
    pub fn request(&self, ip: &str, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), ApiError> {
        let addr: SocketAddr = format!("{ip}:6443").parse().expect("an address");
        let tcp =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| ApiError::Connect(e.to_string()))?;
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(10)));
        let name = rustls::pki_types::ServerName::try_from(ip.to_string()).expect("an IP server name");
        let conn =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(|e| ApiError::Connect(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // The handshake happens here: a master that stopped listening has not seen the request.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(|e| ApiError::Connect(format!("TLS handshake: {e}")))?;
        }
        let body = body.unwrap_or("");
        // HTTP/1.0: one answer, not chunked, then the server closes.
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {ip}:6443\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let exchange =
            |tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>| -> std::io::Result<Vec<u8>> {
                tls.write_all(head.as_bytes())?;
                tls.write_all(body.as_bytes())?;
                tls.flush()?;
                let mut out = Vec::new();
                match tls.read_to_end(&mut out) {
                    Ok(_) => Ok(out),
                    // A server that closes without TLS's close_notify: what came is the answer.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(out),
                    Err(e) => Err(e),
                }
            };
        let raw = exchange(&mut tls).map_err(|e| ApiError::Exchange(e.to_string()))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| ApiError::Exchange("no HTTP answer".into()))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::Exchange(format!("bad status line {:?}", head.lines().next())))?;
        Ok((status, body.to_string()))
    }
}

/// The masters behind a balancer: each one's /readyz polled every 200 ms; requests go to ready
/// masters round-robin, and a master that refuses a connection is skipped for the next one.
pub struct Masters {
    pub api: Arc<ApiClient>,
    ips: Vec<String>,
    ready: Arc<Mutex<Vec<bool>>>,
    next: AtomicUsize,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl Masters {
    pub fn start(api: ApiClient, ips: Vec<String>) -> Arc<Self> {
        let api = Arc::new(api);
        let ready = Arc::new(Mutex::new(vec![true; ips.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (api, ips, ready, stop) = (api.clone(), ips.clone(), ready.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let next = Instant::now() + Duration::from_millis(200);
                    let checks: Vec<JoinHandle<bool>> = ips
                        .iter()
                        .map(|ip| {
                            let (api, ip) = (api.clone(), ip.clone());
                            std::thread::spawn(move || matches!(api.request(&ip, "GET", "/readyz", None), Ok((200, _))))
                        })
                        .collect();
                    let now: Vec<bool> = checks.into_iter().map(|c| c.join().unwrap_or(false)).collect();
                    *ready.lock().unwrap() = now;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::park_timeout(wait);
                    }
                }
            })
        };
        Arc::new(Masters { api, ips, ready, next: AtomicUsize::new(0), stop, poller: Some(poller) })
    }

    /// The masters to try for one request: ready ones first (round-robin), then the rest.
    pub fn order(&self) -> Vec<String> {
        let ready = self.ready.lock().unwrap().clone();
        let start = self.next.fetch_add(1, Ordering::SeqCst);
        let n = self.ips.len();
        let rotated: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        let mut out: Vec<String> = rotated.iter().filter(|i| ready[**i]).map(|i| self.ips[*i].clone()).collect();
        out.extend(rotated.iter().filter(|i| !ready[**i]).map(|i| self.ips[*i].clone()));
        out
    }

    /// One request through the balancer: a connection refused moves it to the next master; an
    /// error after the request was sent is an answer (a write is never sent twice).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
        let mut refused = Vec::new();
        for ip in self.order() {
            match self.api.request(&ip, method, path, body) {
                Ok(answer) => return Ok(answer),
                Err(ApiError::Connect(e)) => refused.push(format!("{ip}: {e}")),
                Err(ApiError::Exchange(e)) => return Err(format!("{ip}: {e}")),
            }
        }
        Err(format!("no master took the connection: {}", refused.join("; ")))
    }

    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        match self.request("GET", path, None) {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }
}

impl Drop for Masters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
    }
}

/// What a load-measuring client saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub total: usize,
    pub failed: Vec<String>,
    /// Requests that succeeded only when tried again after a retriable error (what it was).
    pub retried: Vec<String>,
    /// The longest time between two successful requests.
    pub longest_gap: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} total, {} failed, {} succeeded on a retry, longest gap between successes {:.1} s",
            self.total,
            self.failed.len(),
            self.retried.len(),
            self.longest_gap.as_secs_f64()
        )
    }
}

/// Runs `attempt` every `every` on a thread until finished; `attempt` says Ok or what failed.
struct Ticker {
    stop: Arc<AtomicBool>,
    /// Successful attempts so far, for callers waiting on progress.
    succeeded: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Report>>,
}

impl Ticker {
    /// `attempt` answers Ok(None), Ok(Some(what was retried)) or Err(why it failed).
    fn start(
        every: Duration,
        mut attempt: impl FnMut(usize) -> Result<Option<String>, String> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let succeeded = Arc::new(AtomicUsize::new(0));
        let counter = succeeded.clone();
        let handle = std::thread::spawn(move || {
            let mut report = Report::default();
            let mut last_success = Instant::now();
            while !flag.load(Ordering::SeqCst) {
                let next = Instant::now() + every;
                match attempt(report.total) {
                    Ok(retried) => {
                        report.longest_gap = report.longest_gap.max(last_success.elapsed());
                        last_success = Instant::now();
                        report.retried.extend(retried);
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => report.failed.push(e),
                }
                report.total += 1;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::park_timeout(wait);
                }
            }
            report
        });
        Ticker { stop, succeeded, handle: Some(handle) }
    }

    fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().expect("running").join().expect("the load thread")
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Writes ConfigMap `w-<n>` into `namespace` every 200 ms through the masters' balancer.
pub struct ApiWriter {
    ticker: Ticker,
    pub namespace: String,
}

impl ApiWriter {
    /// Creates `namespace` and starts writing into it.
    pub fn start(masters: Arc<Masters>, namespace: &str) -> Self {
        let created =
            masters.request("POST", "/api/v1/namespaces", Some(&format!(r#"{{"metadata":{{"name":"{namespace}"}}}}"#)));
        assert!(matches!(created, Ok((201, _))), "creating namespace {namespace}: {created:?}");
        let ns = namespace.to_string();
        // As Kubernetes' own clients do, a write that met a retriable error (a 5xx or 429 — etcd
        // drops the proposals in flight when its leader changes and answers "request timed out"
        // after 7 s — or a connection lost after sending) is tried again, up to 20 s; the create
        // is idempotent: AlreadyExists with what was written counts as written.
        let ticker = Ticker::start(Duration::from_millis(200), move |n| {
            let name = format!("w-{n}");
            let body = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": n.to_string()}
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut retried: Option<String> = None;
            loop {
                let why = match masters.request(
                    "POST",
                    &format!("/api/v1/namespaces/{ns}/configmaps"),
                    Some(&body.to_string()),
                ) {
                    Ok((201, _)) => return Ok(retried),
                    Ok((409, _)) if retried.is_some() => {
                        let stored = masters.get_json(&format!("/api/v1/namespaces/{ns}/configmaps/{name}"));
                        if stored
                            .as_ref()
                            .is_some_and(|c| c["data"]["n"].as_str().and_then(|v| v.parse().ok()) == Some(n))
                        {
                            return Ok(retried);
                        }
                        return Err(format!("write {n}: AlreadyExists with other content: {stored:?}"));
                    }
                    Ok((status, body)) if status >= 500 || status == 429 => {
                        format!("HTTP {status}: {}", body.chars().take(200).collect::<String>())
                    }
                    Ok((status, body)) => {
                        return Err(format!("write {n}: HTTP {status}: {}", body.chars().take(200).collect::<String>()))
                    }
                    Err(e) => e,
                };
                if Instant::now() > deadline {
                    return Err(format!("write {n}: {why} (retried until 20 s)"));
                }
                retried.get_or_insert_with(|| format!("write {n}: {}", why.trim()));
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        ApiWriter { ticker, namespace: namespace.to_string() }
    }

    /// How many writes were acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.ticker.succeeded.load(Ordering::SeqCst)
    }

    /// Stops writing; checks every acknowledged write is readable with what was written.
    pub fn finish(self, masters: &Masters) -> Report {
        let report = self.ticker.finish();
        let list = masters
            .get_json(&format!("/api/v1/namespaces/{}/configmaps", self.namespace))
            .expect("listing the written ConfigMaps");
        let stored: std::collections::BTreeMap<String, String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some((c["metadata"]["name"].as_str()?.to_string(), c["data"]["n"].as_str()?.to_string())))
            .collect();
        let failed: std::collections::BTreeSet<usize> =
            report.failed.iter().filter_map(|f| f.strip_prefix("write ")?.split(':').next()?.parse().ok()).collect();
        for n in (0..report.total).filter(|n| !failed.contains(n)) {
            assert_eq!(stored.get(&format!("w-{n}")), Some(&n.to_string()), "acknowledged write {n} is readable");
        }
        report
    }
}

/// An external load balancer in front of the workers' NodePort, kept up to date the way
/// Kubernetes' service controller keeps cloud balancers: nodes that are Ready and not labelled
/// node.kubernetes.io/exclude-from-external-load-balancers (re-read every 200 ms); a request
/// every 100 ms to the next of them.
pub struct ServiceClient {
    ticker: Ticker,
    watcher: Ticker,
}

impl ServiceClient {
    pub fn start(masters: Arc<Masters>, node_port: u16) -> Self {
        let pool: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(Vec::new()));
        let refresh = {
            let pool = pool.clone();
            move || -> Result<(), String> {
                let nodes = masters.get_json("/api/v1/nodes").ok_or("listing nodes failed")?;
                let mut now = Vec::new();
                for n in nodes["items"].as_array().into_iter().flatten() {
                    let ready = n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True");
                    let excluded =
                        !n["metadata"]["labels"]["node.kubernetes.io/exclude-from-external-load-balancers"].is_null();
                    let ip = n["status"]["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["type"] == "InternalIP")
                        .and_then(|a| a["address"].as_str()?.parse::<std::net::IpAddr>().ok());
                    if let (true, false, Some(ip)) = (ready, excluded, ip) {
                        now.push(SocketAddr::new(ip, node_port));
                    }
                }
                *pool.lock().unwrap() = now;
                Ok(())
            }
        };
        refresh().expect("the nodes");
        let watcher = Ticker::start(Duration::from_millis(200), move |_| refresh().map(|()| None));
        let ticker = Ticker::start(Duration::from_millis(100), move |n| {
            let targets = pool.lock().unwrap().clone();
            if targets.is_empty() {
                return Err(format!("request {n}: no node in the balancer"));
            }
            let target = targets[n % targets.len()];
            http_get(target).map(|()| None).map_err(|e| format!("request {n} to {target}: {e}"))
        });
        ServiceClient { ticker, watcher }
    }

    pub fn finish(self) -> Report {
        let _ = self.watcher.finish();
        self.ticker.finish()
    }
}

/// `GET /` on a fresh connection; Ok on a 200.
pub fn http_get(target: SocketAddr) -> Result<(), String> {
    let answer = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match answer {
        Ok(a) if a.starts_with("HTTP/1.") && a.contains(" 200 ") => Ok(()),
        Ok(a) => Err(format!("{:?}", a.lines().next().unwrap_or(""))),
        Err(e) => Err(e.to_string()),
    }
}

/// Requests `target` every 100 ms (one node's NodePort, no balancer).
pub struct Prober(Ticker);

impl Prober {
    pub fn start(target: SocketAddr) -> Self {
        Prober(Ticker::start(Duration::from_millis(100), move |n| {
            http_get(target).map(|()| None).map_err(|e| format!("request {n}: {e}"))
        }))
    }

    pub fn finish(self) -> Report {
        self.0.finish()
    }
}
