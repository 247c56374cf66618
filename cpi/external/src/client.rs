//! The director's side: any executable speaking BOSH's protocol as a bosun CPI, one fresh process
//! per call as BOSH's director runs them.

use crate::protocol::{networks_from_wire, Request, Response, API_VERSION};
use bosun_cpi::{Cpi, CpiError, CpiInfo, CpiResult, CreateVmRequest, DiskListing, VmListing};
use bosun_types::protocol::NetworkSettings;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

/// `bosun director --cpi external --cpi-config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalCpiConfig {
    /// The executable (BOSH's `bin/cpi`).
    pub exec_path: PathBuf,
    /// Arguments it is started with (none for a BOSH CPI's `bin/cpi`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Merged flat into every request's `context`, as BOSH passes a CPI config's properties
    /// (credentials travel here: they are never logged).
    #[serde(default)]
    pub properties: serde_json::Map<String, Value>,
    /// Environment given to it; apart from these it gets only PATH, HOME and TMPDIR.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds one call may take before its process is killed.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    600
}

/// What one call's process may write to stdout.
const RESPONSE_LIMIT: u64 = 64 << 20;

pub struct ExternalCpi {
    config: ExternalCpiConfig,
    director_uuid: std::sync::OnceLock<String>,
    /// The version agreed with the CPI's `info` (0: not asked yet).
    api_version: AtomicU32,
}

impl ExternalCpi {
    pub fn new(config: ExternalCpiConfig) -> CpiResult<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&config.exec_path).map_err(|e| {
            CpiError::InvalidArguments(format!("the external CPI `{}`: {e}", config.exec_path.display()))
        })?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(CpiError::InvalidArguments(format!(
                "the external CPI `{}` is not an executable file",
                config.exec_path.display()
            )));
        }
        Ok(ExternalCpi { config, director_uuid: Default::default(), api_version: AtomicU32::new(0) })
    }

    /// The version both speak: `info` asked once; a CPI below 2 is refused, as BOSH refuses it.
    async fn version(&self) -> CpiResult<u32> {
        match self.api_version.load(Ordering::Relaxed) {
            0 => {
                let info = Cpi::info(self).await?;
                Ok(self.api_version.load(Ordering::Relaxed).max(info.api_version.min(API_VERSION)))
            }
            v => Ok(v),
        }
    }

    /// One call: a fresh process, the request on its stdin, the response from its stdout, its
    /// stderr to the log line by line.
    async fn call(&self, method: &'static str, arguments: Vec<Value>, versioned: bool) -> CpiResult<Value> {
        let api_version = if versioned { Some(self.version().await?) } else { None };
        let request_id = format!("cpi-{}", 100_000 + uuid::Uuid::new_v4().as_u128() % 900_000);
        let mut context = self.config.properties.clone();
        context.insert("director_uuid".into(), json!(self.director_uuid.get().map_or("", String::as_str)));
        context.insert("request_id".into(), json!(request_id));
        if method == "create_vm" {
            // bosun's stemcells declare api_version 2: the agent's settings go to the VM whole.
            context.insert("vm".into(), json!({"stemcell": {"api_version": 2}}));
        }
        let request = Request { method: method.into(), arguments: arguments.clone(), context, api_version };
        let span = tracing::info_span!("cpi", operation = method, request_id = %request_id, external = true);
        let body = serde_json::to_vec(&request).expect("a request serializes");
        let response = self.run(method, body).instrument(span).await?;
        if !response.log.is_empty() {
            tracing::debug!(log = %response.log, "the CPI's log");
        }
        match response.error {
            None => Ok(response.result),
            Some(e) => Err(e.to_cpi_error(method, &arguments)),
        }
    }

    async fn run(&self, method: &str, body: Vec<u8>) -> CpiResult<Response> {
        let exec = self.config.exec_path.display().to_string();
        let failed = |what: String| CpiError::Cloud(format!("the external CPI `{exec}` ({method}): {what}"));
        let mut child = tokio::process::Command::new(&self.config.exec_path)
            .args(&self.config.args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| "/".into()))
            .env("TMPDIR", std::env::temp_dir())
            .envs(&self.config.env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("cannot start it: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let talk = async {
            // Written and closed before the answer is read (a CPI reads its whole request first).
            let write = async {
                let r = stdin.write_all(&body).await;
                drop(stdin);
                r
            };
            let read = async {
                let mut out = Vec::new();
                stdout.take(RESPONSE_LIMIT + 1).read_to_end(&mut out).await.map(|_| out)
            };
            let log = async {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "bosun_cpi_external::stderr", "{line}");
                }
            };
            let (written, out, ()) = tokio::join!(write, read, log);
            let status = child.wait().await;
            (written, out, status)
        };
        let timeout = Duration::from_secs(self.config.timeout_seconds);
        let Ok((written, out, status)) = tokio::time::timeout(timeout, talk).await else {
            return Err(failed(format!("no answer within {} s; stopped", timeout.as_secs())));
        };
        // Its exit code does not count (BOSH's rule): only the answer does.
        let _ = status;
        written.map_err(|e| failed(format!("writing the request: {e}")))?;
        let out = out.map_err(|e| failed(format!("reading the answer: {e}")))?;
        if out.len() as u64 > RESPONSE_LIMIT {
            return Err(failed(format!("its answer is over {} MiB", RESPONSE_LIMIT >> 20)));
        }
        serde_json::from_slice(&out).map_err(|e| failed(format!("its answer is not a CPI response: {e}")))
    }
}

fn parse<T: DeserializeOwned>(method: &str, v: Value) -> CpiResult<T> {
    serde_json::from_value(v)
        .map_err(|e| CpiError::Cloud(format!("the external CPI's result of {method} is malformed: {e}")))
}

#[async_trait::async_trait]
impl Cpi for ExternalCpi {
    fn name(&self) -> &str {
        "external"
    }

    fn set_director_uuid(&self, uuid: &str) {
        let _ = self.director_uuid.set(uuid.to_string());
    }

    async fn info(&self) -> CpiResult<CpiInfo> {
        let info: CpiInfo = parse("info", self.call("info", vec![], false).await?)?;
        if info.api_version < 2 {
            return Err(CpiError::NotSupported(format!(
                "the external CPI reports api_version {}; the minimum is 2",
                info.api_version
            )));
        }
        self.api_version.store(info.api_version.min(API_VERSION), Ordering::Relaxed);
        Ok(info)
    }

    async fn create_stemcell(&self, image_path: &Path, cloud_properties: &Value) -> CpiResult<String> {
        let args = vec![json!(image_path), cloud_properties.clone()];
        parse("create_stemcell", self.call("create_stemcell", args, true).await?)
    }

    async fn delete_stemcell(&self, stemcell_cid: &str) -> CpiResult<()> {
        self.call("delete_stemcell", vec![json!(stemcell_cid)], true).await.map(drop)
    }

    async fn create_vm(&self, r: &CreateVmRequest) -> CpiResult<(String, BTreeMap<String, NetworkSettings>)> {
        let args = vec![
            json!(r.agent_id),
            json!(r.stemcell_cid),
            r.cloud_properties.clone(),
            json!(r.networks),
            json!(r.disk_cids),
            r.env.clone(),
        ];
        match self.call("create_vm", args, true).await? {
            // v2: the cid and the networks as the cloud made them.
            Value::Array(mut pair) if pair.len() == 2 => {
                let networks = networks_from_wire(pair.pop().expect("two")).map_err(|e| {
                    CpiError::Cloud(format!("the external CPI's result of create_vm is malformed: {e}"))
                })?;
                Ok((parse("create_vm", pair.pop().expect("two"))?, networks))
            }
            // A v1 answer: the networks were as asked.
            Value::String(cid) => Ok((cid, r.networks.clone())),
            other => Err(CpiError::Cloud(format!("the external CPI's result of create_vm is malformed: {other}"))),
        }
    }

    async fn delete_vm(&self, vm_cid: &str) -> CpiResult<()> {
        self.call("delete_vm", vec![json!(vm_cid)], true).await.map(drop)
    }

    async fn has_vm(&self, vm_cid: &str) -> CpiResult<bool> {
        parse("has_vm", self.call("has_vm", vec![json!(vm_cid)], true).await?)
    }

    async fn create_disk(
        &self,
        size_mb: u64,
        cloud_properties: &Value,
        vm_locality: Option<&str>,
    ) -> CpiResult<String> {
        let args = vec![json!(size_mb), cloud_properties.clone(), json!(vm_locality)];
        parse("create_disk", self.call("create_disk", args, true).await?)
    }

    async fn delete_disk(&self, disk_cid: &str) -> CpiResult<()> {
        self.call("delete_disk", vec![json!(disk_cid)], true).await.map(drop)
    }

    async fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<Value> {
        let hint = self.call("attach_disk", vec![json!(vm_cid), json!(disk_cid)], true).await?;
        if hint.is_null() || hint.as_str() == Some("") {
            // BOSH's AttachDiskResponseError: a v2 CPI must say where the disk is.
            return Err(CpiError::Cloud("the external CPI's attach_disk gave no disk hint".into()));
        }
        Ok(hint)
    }

    async fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> CpiResult<()> {
        self.call("detach_disk", vec![json!(vm_cid), json!(disk_cid)], true).await.map(drop)
    }

    async fn reboot_vm(&self, vm_cid: &str) -> CpiResult<()> {
        self.call("reboot_vm", vec![json!(vm_cid)], true).await.map(drop)
    }

    async fn set_vm_metadata(&self, vm_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        self.call("set_vm_metadata", vec![json!(vm_cid), json!(metadata)], true).await.map(drop)
    }

    async fn set_disk_metadata(&self, disk_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<()> {
        self.call("set_disk_metadata", vec![json!(disk_cid), json!(metadata)], true).await.map(drop)
    }

    async fn has_disk(&self, disk_cid: &str) -> CpiResult<bool> {
        parse("has_disk", self.call("has_disk", vec![json!(disk_cid)], true).await?)
    }

    async fn get_disks(&self, vm_cid: &str) -> CpiResult<Vec<String>> {
        parse("get_disks", self.call("get_disks", vec![json!(vm_cid)], true).await?)
    }

    async fn resize_disk(&self, disk_cid: &str, new_size_mb: u64) -> CpiResult<()> {
        self.call("resize_disk", vec![json!(disk_cid), json!(new_size_mb)], true).await.map(drop)
    }

    async fn snapshot_disk(&self, disk_cid: &str, metadata: &BTreeMap<String, String>) -> CpiResult<String> {
        parse("snapshot_disk", self.call("snapshot_disk", vec![json!(disk_cid), json!(metadata)], true).await?)
    }

    async fn delete_snapshot(&self, snapshot_cid: &str) -> CpiResult<()> {
        self.call("delete_snapshot", vec![json!(snapshot_cid)], true).await.map(drop)
    }

    async fn calculate_vm_cloud_properties(&self, cpu: u32, ram_mb: u64, ephemeral_disk_mb: u64) -> CpiResult<Value> {
        let resources = json!({"cpu": cpu, "ram": ram_mb, "ephemeral_disk_size": ephemeral_disk_mb});
        self.call("calculate_vm_cloud_properties", vec![resources], true).await
    }

    async fn list_vms(&self) -> CpiResult<Vec<VmListing>> {
        parse("list_vms", self.call("list_vms", vec![], true).await?)
    }

    async fn list_disks(&self) -> CpiResult<Vec<DiskListing>> {
        parse("list_disks", self.call("list_disks", vec![], true).await?)
    }
}
