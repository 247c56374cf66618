//! The director client: where the target comes from (environment, flags, or the remembered
//! target in the user's config directory) and authenticated JSON calls over TLS.

use crate::InputError;
use anyhow::{anyhow, Context, Result};
use bosun_types::api::{ApiErrorBody, TaskCreated, TaskEventsPage, TaskState};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// A director to talk to.
#[derive(Clone, Serialize, Deserialize)]
pub struct Target {
    pub director: String,
    /// The CA certificate, PEM.
    pub ca_cert: String,
    pub token: String,
}

pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("bosun").join("target.json"))
}

/// `BOSUN_CA_CERT` may be a path or the PEM itself, as BOSH_CA_CERT.
fn ca_from(value: &str) -> Result<String> {
    if value.contains("-----BEGIN") {
        return Ok(value.to_string());
    }
    std::fs::read_to_string(value)
        .map_err(|e| InputError::new(format!("BOSUN_CA_CERT: cannot read the CA certificate {value}: {e}")).into())
}

/// The director's address as an operator may write it, as bosh takes BOSH_ENVIRONMENT: a URL
/// (`https://10.0.0.6:25555`) or a bare `host[:port]` (HTTPS, port 25555). The director speaks
/// only HTTPS, so `http://` is refused with that said.
pub fn director_url(value: &str) -> Result<String, InputError> {
    let value = value.trim();
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest.trim_end_matches('/')),
        None => ("https".to_string(), value.trim_end_matches('/')),
    };
    match scheme.as_str() {
        "https" => {}
        "http" => {
            return Err(InputError::new(format!(
                "BOSUN_DIRECTOR `{value}`: the director speaks only HTTPS; write https://{rest}"
            )))
        }
        other => return Err(InputError::new(format!("BOSUN_DIRECTOR `{value}`: `{other}://` is not HTTPS"))),
    }
    let host_port = rest.split('/').next().unwrap_or_default();
    if host_port.is_empty() || host_port.contains(char::is_whitespace) {
        return Err(InputError::new(format!(
            "BOSUN_DIRECTOR `{value}`: name the director as https://HOST:PORT or HOST[:PORT]"
        )));
    }
    // A port is given unless the host alone is (an IPv6 literal's colons are inside brackets).
    let port = host_port.rsplit_once(':').map(|(_, p)| p).filter(|p| !p.contains(']'));
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(InputError::new(format!("BOSUN_DIRECTOR `{value}`: the port is not a number")));
    }
    let has_port = port.is_some();
    let url = if has_port { format!("https://{rest}") } else { format!("https://{host_port}:25555") };
    reqwest::Url::parse(&url).map_err(|e| InputError::new(format!("BOSUN_DIRECTOR `{value}`: {e}")))?;
    Ok(url)
}

impl Target {
    /// Flags and environment first (all three needed), else the remembered target.
    pub fn resolve(director: Option<&str>, ca_cert: Option<&str>, token: Option<&str>) -> Result<Target> {
        if let (Some(d), Some(c), Some(t)) = (director, ca_cert, token) {
            return Ok(Target { director: director_url(d)?, ca_cert: ca_from(c)?, token: t.to_string() });
        }
        if director.is_some() || ca_cert.is_some() || token.is_some() {
            return Err(InputError::new(
                "a target needs all of BOSUN_DIRECTOR, BOSUN_CA_CERT and BOSUN_TOKEN (or their flags)",
            )
            .into());
        }
        let path = config_path()
            .ok_or_else(|| InputError::new("no target: set BOSUN_DIRECTOR, BOSUN_CA_CERT and BOSUN_TOKEN"))?;
        let bytes = std::fs::read(&path).map_err(|_| {
            InputError::new(
                "no target: set BOSUN_DIRECTOR, BOSUN_CA_CERT and BOSUN_TOKEN, or remember one with `bosun target`",
            )
        })?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not a bosun target", path.display()))
    }

    pub fn save(&self) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = config_path().ok_or_else(|| anyhow!("no HOME or XDG_CONFIG_HOME to keep the target in"))?;
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

pub struct Client {
    http: reqwest::Client,
    pub target: Target,
}

/// A failed API call: the director's code and message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Client {
    pub fn new(target: Target) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .connect_timeout(Duration::from_secs(10))
            // Before the director closes an idle connection (`HEADER_READ_TIMEOUT`, 30 s), so a
            // request never goes out on one it is closing.
            .pool_idle_timeout(Duration::from_secs(20));
        let certs = reqwest::Certificate::from_pem_bundle(target.ca_cert.as_bytes())
            .context("the CA certificate is not PEM")?;
        if certs.is_empty() {
            return Err(InputError::new("the CA certificate holds no certificate").into());
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
        Ok(Self { http: builder.build()?, target })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.director)
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body: ApiErrorBody = serde_json::from_str(&text)
            .unwrap_or(ApiErrorBody { code: "http".into(), message: format!("HTTP {status}: {text}") });
        let failure = ApiFailure { status, code: body.code, message: body.message };
        if status == 400 || status == 401 || status == 404 || status == 409 {
            return Err(anyhow::Error::new(InputError::new(failure.message.clone())).context(failure));
        }
        Err(failure.into())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.target.token)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = rb.send().await.with_context(|| format!("cannot reach the director at {}", self.target.director))?;
        Self::check(resp).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.send(self.request(reqwest::Method::GET, path)).await?.json().await?)
    }

    /// Streams a response body into `to` (written beside it, then renamed, so a failed download
    /// leaves nothing). Returns the bytes written.
    pub async fn download(&self, path: &str, to: &std::path::Path) -> Result<u64> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        let tmp = to.with_extension("partial");
        // Owner-only from the start: a download may be logs or a compiled release.
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut body = resp.bytes_stream();
        let mut n = 0u64;
        let written: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.context("downloading")?;
                file.write_all(&chunk).await?;
                n += chunk.len() as u64;
            }
            file.sync_all().await?;
            Ok(())
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, to).await.with_context(|| format!("writing {}", to.display()))?;
        Ok(n)
    }

    /// A streamed text answer, line by line as the lines arrive.
    pub async fn stream_lines(&self, path: &str, mut each: impl FnMut(&str)) -> Result<()> {
        use futures::StreamExt;
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        let mut body = resp.bytes_stream();
        let mut partial: Vec<u8> = Vec::new();
        while let Some(chunk) = body.next().await {
            partial.extend_from_slice(&chunk.context("reading the director's stream")?);
            while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                each(&String::from_utf8_lossy(&line[..line.len() - 1]));
            }
        }
        if !partial.is_empty() {
            each(&String::from_utf8_lossy(&partial));
        }
        Ok(())
    }

    /// A byte stream to an instance's SSH server through the director (`Upgrade: bosun-ssh`).
    pub async fn ssh_tunnel(&self, deployment: &str, instance: &str) -> Result<reqwest::Upgraded> {
        let path = format!("/v1/deployments/{deployment}/ssh/tunnel?instance={instance}");
        let rb = self
            .request(reqwest::Method::GET, &path)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, "bosun-ssh");
        let resp = rb.send().await.with_context(|| format!("cannot reach the director at {}", self.target.director))?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            Self::check(resp).await?;
            anyhow::bail!("the director did not open a tunnel to {instance}");
        }
        resp.upgrade().await.context("opening the tunnel through the director")
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        Ok(self.send(self.request(reqwest::Method::GET, path)).await?.text().await?)
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        Ok(self.send(self.request(reqwest::Method::POST, path).json(body)).await?.json().await?)
    }

    /// A POST whose answer has no body worth reading.
    pub async fn post_json_unit<B: Serialize>(&self, path: &str, body: &B) -> Result<()> {
        self.send(self.request(reqwest::Method::POST, path).json(body)).await.map(drop)
    }

    pub async fn post_text<T: DeserializeOwned>(&self, path: &str, body: String) -> Result<T> {
        self.text_body(reqwest::Method::POST, path, body).await
    }

    pub async fn put_text<T: DeserializeOwned>(&self, path: &str, body: String) -> Result<T> {
        self.text_body(reqwest::Method::PUT, path, body).await
    }

    async fn text_body<T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, body: String) -> Result<T> {
        Ok(self
            .send(self.request(method, path).header("content-type", "application/yaml").body(body))
            .await?
            .json()
            .await?)
    }

    pub async fn put_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        Ok(self.send(self.request(reqwest::Method::PUT, path).json(body)).await?.json().await?)
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.send(self.request(reqwest::Method::DELETE, path)).await?.json().await?)
    }

    /// Uploads a file, streamed (a release tarball is never held whole in memory); with `bar`, its
    /// bytes and rate on a terminal.
    pub async fn upload_file(&self, path: &str, file: &std::path::Path, bar: bool) -> Result<TaskCreated> {
        use futures::StreamExt;
        let f = tokio::fs::File::open(file).await.map_err(|e| InputError::new(format!("{}: {e}", file.display())))?;
        let len = f.metadata().await?.len();
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let bar = if bar { crate::progress::upload_bar(&format!("uploading {name}"), len) } else { None };
        let counted = bar.clone();
        let stream = tokio_util::io::ReaderStream::new(f).inspect(move |chunk| {
            if let (Some(bar), Ok(bytes)) = (&counted, chunk) {
                bar.inc(bytes.len() as u64);
            }
        });
        let sent = self
            .send(
                self.request(reqwest::Method::POST, path)
                    .header("content-length", len)
                    .body(reqwest::Body::wrap_stream(stream)),
            )
            .await;
        if let Some(bar) = bar {
            bar.finish();
        }
        Ok(sent?.json().await?)
    }

    /// Follows a task's events until it ends and prints them on stdout, as bosh does (bars on a
    /// terminal, lines otherwise, one JSON object each with `json`), then each instance's update
    /// time and the task's. Errors if it failed.
    pub async fn follow_task(&self, id: u64, json: bool) -> Result<String> {
        let mut display = crate::progress::Display::for_stdout(json);
        let mut tally = crate::progress::Tally::default();
        let mut after = 0;
        if !json {
            println!("Task {id}");
        }
        loop {
            let page: TaskEventsPage = self.get(&format!("/v1/tasks/{id}/events?after={after}&wait=10")).await?;
            for e in &page.events {
                after = after.max(e.seq);
                tally.observe(e);
                display.show(e, &tally);
            }
            if page.task.state.is_finished() && page.events.is_empty() {
                display.finish();
                if json {
                    println!("{}", serde_json::to_string(&page.task)?);
                } else {
                    print!("{}", tally.summary(&page.task));
                }
                let result = page.task.result.unwrap_or_default();
                return match page.task.state {
                    TaskState::Done => {
                        if !json {
                            let took =
                                page.task.ended_at.unwrap_or(page.task.started_at).saturating_sub(page.task.started_at);
                            println!(
                                "Task {id} done: {result} (in {})",
                                humantime::format_duration(Duration::from_secs(took))
                            );
                        }
                        Ok(result)
                    }
                    state => {
                        Err(crate::TaskFailed { id, cancelled: state == TaskState::Cancelled, message: result }.into())
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::director_url;

    #[test]
    fn director_addresses_as_bosh_takes_them() {
        assert_eq!(director_url("https://10.0.0.6:25555/").unwrap(), "https://10.0.0.6:25555");
        assert_eq!(director_url("10.0.0.6").unwrap(), "https://10.0.0.6:25555");
        assert_eq!(director_url("10.0.0.6:8443").unwrap(), "https://10.0.0.6:8443");
        assert_eq!(director_url("HTTPS://director.example").unwrap(), "https://director.example:25555");
        assert_eq!(director_url("[::1]").unwrap(), "https://[::1]:25555");
        assert_eq!(director_url("[::1]:9").unwrap(), "https://[::1]:9");
        let http = director_url("http://127.0.0.1:25555").unwrap_err().to_string();
        assert!(http.contains("only HTTPS; write https://127.0.0.1:25555"), "{http}");
        assert!(director_url("ftp://x").unwrap_err().to_string().contains("`ftp://` is not HTTPS"));
        assert!(director_url("").is_err());
        assert!(director_url("https://").is_err());
        assert!(director_url("a b").is_err());
    }
}
