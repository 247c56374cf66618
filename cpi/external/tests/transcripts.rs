//! Request/response transcripts of BOSH's external CPI protocol (`transcripts.json`), every
//! method and every error type, checked in both directions:
//!
//! - **serve** (a BOSH director calling a bosun CPI, `bosun cpi NAME`): the transcript's request
//!   is answered by a scripted CPI that returns the transcript's `bosun` outcome; the answer must
//!   be the transcript's response byte for byte in meaning, and the CPI must have been called
//!   with the request's arguments.
//! - **client** (bosun's director calling any BOSH CPI, `--cpi external`): the same call made
//!   through `ExternalCpi` reaches a real executable (a shell script) that records what it was
//!   sent and answers with the transcript's response; what it was sent must be the transcript's
//!   request, and what bosun's director sees must be the transcript's `bosun` outcome.
//!
//! A case marked `"only"` holds in one direction (BOSH's leniencies: v1 answers, legacy error
//! spellings, a stemcell already gone).

use bosun_cpi::{Cpi, CpiError, CpiInfo, CpiResult, CreateVmRequest, DiskListing, VmListing};
use bosun_cpi_external::protocol::Response;
use bosun_cpi_external::{serve::serve, ExternalCpi, ExternalCpiConfig};
use bosun_types::protocol::NetworkSettings;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

const DIRECTOR_UUID: &str = "d-7c1e";
/// The CPI config's properties, merged flat into every request's context.
const REGION: &str = "eu-central-1";

#[derive(serde::Deserialize)]
struct Case {
    case: String,
    #[serde(default)]
    only: Option<String>,
    request: Value,
    /// The arguments the bosun CPI receives, where serving reads them differently from how
    /// they were written (BOSH's extra keys dropped).
    #[serde(default)]
    bosun_arguments: Option<Value>,
    response: Value,
    /// What bosun's side sees: `{"result": …}`, `{"error": {Variant: …}}`, or null (no call).
    bosun: Option<Value>,
}

fn cases() -> Vec<Case> {
    let text = include_str!("transcripts.json");
    serde_json::from_str(text).expect("transcripts.json")
}

/// A CPI error as the transcripts write it: serde's externally tagged form.
fn error_json(e: &CpiError) -> Value {
    match e {
        CpiError::VmNotFound(c) => json!({"VmNotFound": c}),
        CpiError::DiskNotFound(c) => json!({"DiskNotFound": c}),
        CpiError::StemcellNotFound(c) => json!({"StemcellNotFound": c}),
        CpiError::DiskNotAttached { vm_cid, disk_cid } => {
            json!({"DiskNotAttached": {"vm_cid": vm_cid, "disk_cid": disk_cid}})
        }
        CpiError::VmCreationFailed { message, ok_to_retry } => {
            json!({"VmCreationFailed": {"message": message, "ok_to_retry": ok_to_retry}})
        }
        CpiError::NoDiskSpace { message, ok_to_retry } => {
            json!({"NoDiskSpace": {"message": message, "ok_to_retry": ok_to_retry}})
        }
        CpiError::NotImplemented(m) => json!({"NotImplemented": m}),
        CpiError::NotSupported(m) => json!({"NotSupported": m}),
        CpiError::InvalidArguments(m) => json!({"InvalidArguments": m}),
        CpiError::Cloud(m) => json!({"Cloud": m}),
        other => panic!("no transcript form for {other:?}"),
    }
}

fn error_from_json(v: &Value) -> CpiError {
    let (variant, body) = v.as_object().and_then(|m| m.iter().next()).expect("{Variant: …}");
    let text = || body.as_str().expect("a string").to_string();
    let message = || body["message"].as_str().expect("message").to_string();
    let ok_to_retry = || body["ok_to_retry"].as_bool().expect("ok_to_retry");
    match variant.as_str() {
        "VmNotFound" => CpiError::VmNotFound(text()),
        "DiskNotFound" => CpiError::DiskNotFound(text()),
        "StemcellNotFound" => CpiError::StemcellNotFound(text()),
        "DiskNotAttached" => CpiError::DiskNotAttached {
            vm_cid: body["vm_cid"].as_str().unwrap().into(),
            disk_cid: body["disk_cid"].as_str().unwrap().into(),
        },
        "VmCreationFailed" => CpiError::VmCreationFailed { message: message(), ok_to_retry: ok_to_retry() },
        "NoDiskSpace" => CpiError::NoDiskSpace { message: message(), ok_to_retry: ok_to_retry() },
        "NotImplemented" => {
            let name = bosun_cpi_external::protocol::method_name(&text()).expect("a method");
            CpiError::NotImplemented(name)
        }
        "NotSupported" => CpiError::NotSupported(text()),
        "InvalidArguments" => CpiError::InvalidArguments(text()),
        "Cloud" => CpiError::Cloud(text()),
        other => panic!("unknown error variant {other}"),
    }
}

/// One call a CPI received: its method, its arguments written as the protocol writes them, and
/// its outcome in the transcripts' form.
type Call = (String, Vec<Value>, Value);

/// A CPI that records every call and either answers from a script or passes the call on.
struct Recorder {
    inner: Option<ExternalCpi>,
    script: Option<Value>,
    calls: Mutex<Vec<Call>>,
}

impl Recorder {
    async fn call<T, F>(&self, method: &str, arguments: Vec<Value>, through: F) -> CpiResult<T>
    where
        T: Serialize + DeserializeOwned,
        F: std::future::Future<Output = CpiResult<T>>,
    {
        let outcome: CpiResult<T> = match &self.script {
            None => through.await,
            Some(script) => match script.get("error") {
                Some(e) => Err(error_from_json(e)),
                None => Ok(serde_json::from_value(script["result"].clone()).expect("the scripted result's type")),
            },
        };
        let recorded = match &outcome {
            Ok(v) => json!({"result": v}),
            Err(e) => json!({"error": error_json(e)}),
        };
        self.calls.lock().unwrap().push((method.to_string(), arguments, recorded));
        outcome
    }

    fn inner(&self) -> &ExternalCpi {
        self.inner.as_ref().expect("passing through")
    }
}

#[async_trait::async_trait]
impl Cpi for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    async fn info(&self) -> CpiResult<CpiInfo> {
        self.call("info", vec![], async { self.inner().info().await }).await
    }
    async fn create_stemcell(&self, image: &Path, cp: &Value) -> CpiResult<String> {
        let args = vec![json!(image), cp.clone()];
        self.call("create_stemcell", args, async { self.inner().create_stemcell(image, cp).await }).await
    }
    async fn delete_stemcell(&self, cid: &str) -> CpiResult<()> {
        self.call("delete_stemcell", vec![json!(cid)], async { self.inner().delete_stemcell(cid).await }).await
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
        self.call("create_vm", args, async { self.inner().create_vm(r).await }).await
    }
    async fn delete_vm(&self, cid: &str) -> CpiResult<()> {
        self.call("delete_vm", vec![json!(cid)], async { self.inner().delete_vm(cid).await }).await
    }
    async fn has_vm(&self, cid: &str) -> CpiResult<bool> {
        self.call("has_vm", vec![json!(cid)], async { self.inner().has_vm(cid).await }).await
    }
    async fn create_disk(&self, size_mb: u64, cp: &Value, vm: Option<&str>) -> CpiResult<String> {
        let args = vec![json!(size_mb), cp.clone(), json!(vm)];
        self.call("create_disk", args, async { self.inner().create_disk(size_mb, cp, vm).await }).await
    }
    async fn delete_disk(&self, cid: &str) -> CpiResult<()> {
        self.call("delete_disk", vec![json!(cid)], async { self.inner().delete_disk(cid).await }).await
    }
    async fn attach_disk(&self, vm: &str, disk: &str) -> CpiResult<Value> {
        let args = vec![json!(vm), json!(disk)];
        self.call("attach_disk", args, async { self.inner().attach_disk(vm, disk).await }).await
    }
    async fn detach_disk(&self, vm: &str, disk: &str) -> CpiResult<()> {
        let args = vec![json!(vm), json!(disk)];
        self.call("detach_disk", args, async { self.inner().detach_disk(vm, disk).await }).await
    }
    async fn reboot_vm(&self, cid: &str) -> CpiResult<()> {
        self.call("reboot_vm", vec![json!(cid)], async { self.inner().reboot_vm(cid).await }).await
    }
    async fn set_vm_metadata(&self, cid: &str, m: &BTreeMap<String, String>) -> CpiResult<()> {
        let args = vec![json!(cid), json!(m)];
        self.call("set_vm_metadata", args, async { self.inner().set_vm_metadata(cid, m).await }).await
    }
    async fn set_disk_metadata(&self, cid: &str, m: &BTreeMap<String, String>) -> CpiResult<()> {
        let args = vec![json!(cid), json!(m)];
        self.call("set_disk_metadata", args, async { self.inner().set_disk_metadata(cid, m).await }).await
    }
    async fn has_disk(&self, cid: &str) -> CpiResult<bool> {
        self.call("has_disk", vec![json!(cid)], async { self.inner().has_disk(cid).await }).await
    }
    async fn get_disks(&self, cid: &str) -> CpiResult<Vec<String>> {
        self.call("get_disks", vec![json!(cid)], async { self.inner().get_disks(cid).await }).await
    }
    async fn resize_disk(&self, cid: &str, size: u64) -> CpiResult<()> {
        let args = vec![json!(cid), json!(size)];
        self.call("resize_disk", args, async { self.inner().resize_disk(cid, size).await }).await
    }
    async fn snapshot_disk(&self, cid: &str, m: &BTreeMap<String, String>) -> CpiResult<String> {
        let args = vec![json!(cid), json!(m)];
        self.call("snapshot_disk", args, async { self.inner().snapshot_disk(cid, m).await }).await
    }
    async fn delete_snapshot(&self, cid: &str) -> CpiResult<()> {
        self.call("delete_snapshot", vec![json!(cid)], async { self.inner().delete_snapshot(cid).await }).await
    }
    async fn calculate_vm_cloud_properties(&self, cpu: u32, ram: u64, disk: u64) -> CpiResult<Value> {
        let args = vec![json!({"cpu": cpu, "ram": ram, "ephemeral_disk_size": disk})];
        let through = async { self.inner().calculate_vm_cloud_properties(cpu, ram, disk).await };
        self.call("calculate_vm_cloud_properties", args, through).await
    }
    async fn list_vms(&self) -> CpiResult<Vec<VmListing>> {
        self.call("list_vms", vec![], async { self.inner().list_vms().await }).await
    }
    async fn list_disks(&self) -> CpiResult<Vec<DiskListing>> {
        self.call("list_disks", vec![], async { self.inner().list_disks().await }).await
    }
}

/// The transcript's request as a director sends it: the context every request carries (the
/// director's uuid, a request id, the CPI config's properties) besides the case's own, and the
/// API version once agreed (never on `info`).
fn full_request(case: &Case, request_id: &str) -> Value {
    let mut r = case.request.clone();
    let versioned = r["method"] != "info";
    let context = r.as_object_mut().unwrap().entry("context").or_insert_with(|| json!({}));
    let context = context.as_object_mut().unwrap();
    context.insert("director_uuid".into(), json!(DIRECTOR_UUID));
    context.insert("request_id".into(), json!(request_id));
    context.insert("region".into(), json!(REGION));
    if versioned && r.get("api_version").is_none() {
        r["api_version"] = json!(2);
    }
    r
}

#[tokio::test]
async fn a_bosh_director_s_requests_are_answered_as_the_transcripts_say() {
    let mut checked = std::collections::BTreeSet::new();
    for case in cases().into_iter().filter(|c| c.only.as_deref() != Some("client")) {
        let mut request = full_request(&case, "cpi-123456");
        // A case written without `api_version` in a v1 shape is sent as BOSH's v1 directors do.
        if case.only.as_deref() == Some("serve") && case.request.get("api_version").is_none() {
            let v1 = matches!(case.request["method"].as_str(), Some("create_vm" | "attach_disk"));
            if v1 {
                request.as_object_mut().unwrap().remove("api_version");
            }
        }
        let cpi = Recorder { inner: None, script: case.bosun.clone(), calls: Mutex::default() };
        let response = serve(&cpi, &serde_json::to_vec(&request).unwrap()).await;
        assert_eq!(serde_json::to_value(&response).unwrap(), case.response, "{}: the answer", case.case);
        let calls = cpi.calls.into_inner().unwrap();
        match &case.bosun {
            None => assert!(calls.is_empty(), "{}: no call expected, got {calls:?}", case.case),
            Some(outcome) => {
                assert_eq!(calls.len(), 1, "{}: one call", case.case);
                let (method, arguments, got) = &calls[0];
                assert_eq!(method, case.request["method"].as_str().unwrap(), "{}", case.case);
                let expected = case.bosun_arguments.clone().unwrap_or_else(|| case.request["arguments"].clone());
                assert_eq!(&json!(arguments), &expected, "{}: the CPI's arguments", case.case);
                assert_eq!(got, outcome, "{}", case.case);
            }
        }
        checked.insert(case.request["method"].as_str().unwrap().to_string());
    }
    // Every method of the protocol was answered at least once.
    for m in bosun_cpi_external::protocol::METHODS {
        assert!(checked.contains(*m), "no transcript serves `{m}`");
    }
}

/// A CPI executable that keeps every request it is sent and answers `info` with `info.json`
/// and anything else with `response.json`.
fn scripted_executable(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("cpi");
    std::fs::write(
        &script,
        "#!/bin/sh\nrequest=$(cat)\nprintf '%s\\n' \"$request\" >> \"$TRANSCRIPT_DIR/requests.jsonl\"\n\
         echo 'a line of the CPI log' >&2\n\
         case \"$request\" in\n  '{\"method\":\"info\",'*) cat \"$TRANSCRIPT_DIR/info.json\" ;;\n  *) cat \"$TRANSCRIPT_DIR/response.json\" ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[tokio::test]
async fn bosun_s_calls_to_a_bosh_cpi_are_the_transcripts_requests() {
    let dir = tempfile::tempdir().unwrap();
    let config = ExternalCpiConfig {
        exec_path: scripted_executable(dir.path()),
        args: vec![],
        properties: serde_json::from_value(json!({"region": REGION})).unwrap(),
        env: [("TRANSCRIPT_DIR".to_string(), dir.path().display().to_string())].into(),
        timeout_seconds: 30,
    };
    let info = json!({"result": {"api_version": 2, "stemcell_formats": ["aws-raw"]}, "error": null, "log": ""});
    let mut checked = std::collections::BTreeSet::new();
    for case in cases().into_iter().filter(|c| c.only.as_deref() != Some("serve")) {
        let is_info = case.request["method"] == "info";
        let info = if is_info { &case.response } else { &info };
        std::fs::write(dir.path().join("info.json"), serde_json::to_vec(info).unwrap()).unwrap();
        std::fs::write(dir.path().join("response.json"), serde_json::to_vec(&case.response).unwrap()).unwrap();
        let _ = std::fs::remove_file(dir.path().join("requests.jsonl"));
        let external = ExternalCpi::new(config.clone()).unwrap();
        external.set_director_uuid(DIRECTOR_UUID);
        // The call as bosun's director makes it: through the typed trait.
        let cpi = Recorder { inner: Some(external), script: None, calls: Mutex::default() };
        let _: Response = serve(&cpi, &serde_json::to_vec(&case.request).unwrap()).await;
        let sent: Vec<Value> = std::fs::read_to_string(dir.path().join("requests.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // `info` first (the version is agreed once per CPI), then the call itself.
        let last = sent.last().expect("a request").clone();
        if !is_info {
            assert_eq!(sent.len(), 2, "{}: info, then the call: {sent:?}", case.case);
            assert_eq!(sent[0]["method"], "info", "{}", case.case);
        }
        let request_id = last["context"]["request_id"].as_str().expect("a request id").to_string();
        assert!(
            request_id.len() == 10
                && request_id.starts_with("cpi-")
                && request_id[4..].bytes().all(|b| b.is_ascii_digit()),
            "{}: request id {request_id}",
            case.case
        );
        assert_eq!(last, full_request(&case, &request_id), "{}: what the CPI was sent", case.case);
        let calls = cpi.calls.into_inner().unwrap();
        let (_, _, got) = calls.last().expect("the call");
        assert_eq!(Some(got), case.bosun.as_ref(), "{}: what bosun sees", case.case);
        checked.insert(case.request["method"].as_str().unwrap().to_string());
    }
    for m in bosun_cpi_external::protocol::METHODS {
        assert!(checked.contains(*m), "no transcript calls `{m}`");
    }
}
