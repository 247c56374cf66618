//! The director's HTTP API, `/v1/...`, over TLS. Every request needs the bearer token (the web view
//! under `/ui` takes a session cookie it gave for the token instead); no endpoint is anonymous.
//! Mutating calls create tasks; errors are JSON with a stable code.

use crate::planner::{Requests, Selection};
use crate::records::{
    CloudConfigRecord, DeploymentRecord, DesiredState, InstanceRecord, OrphanedDiskRecord, ReleaseRecord,
    StemcellRecord,
};
use crate::store::tables;
use crate::tasks::{Locking, TaskError, OPERATOR_LOCK_WAIT};
use crate::update::{self, DeployError};
use crate::Director;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bosun_types::api::*;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// An error response: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", m)
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", m)
    }
    fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", m)
    }
    /// Storing something failed: a full disk says so (507), anything else is internal.
    fn storing(e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            tracing::error!(error = %e, "the state directory's disk is full");
            return Self::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", "the director's disk is full");
        }
        Self::internal(e)
    }
    fn internal(e: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error_chain(e), "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the director's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ApiErrorBody { code: self.code.to_string(), message: self.message })).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(&e)
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Locked { .. } => ApiError::new(StatusCode::CONFLICT, "locked", e.to_string()),
            TaskError::Store(s) => ApiError::internal(&s),
        }
    }
}

pub use bosun_types::error_chain;

type Shared = State<Arc<Director>>;

pub fn router(d: Arc<Director>) -> Router {
    let uploads = Router::new()
        .route("/v1/releases", post(upload_release))
        .route("/v1/stemcells", post(upload_stemcell))
        .layer(DefaultBodyLimit::max(8 << 30)); // UPLOAD_LIMIT
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/cloud-config", get(get_cloud_config).post(update_cloud_config))
        .route("/v1/releases", get(list_releases))
        .route("/v1/releases/{name}/{version}", get(inspect_release))
        .route("/v1/releases/{name}/{version}/export", get(export_release))
        .route("/v1/stemcells", get(list_stemcells))
        .route("/v1/deployments", get(list_deployments).post(deploy))
        .route("/v1/deployments/{name}", get(get_deployment).delete(delete_deployment))
        .route("/v1/deployments/{name}/manifest", get(get_manifest))
        .route("/v1/deployments/{name}/instances", get(list_instances))
        .route("/v1/deployments/{name}/variables", get(list_variables))
        .route("/v1/deployments/{name}/logs", get(fetch_logs))
        .route("/v1/deployments/{name}/ssh", post(ssh_setup))
        .route("/v1/deployments/{name}/ssh/cleanup", post(ssh_cleanup))
        .route("/v1/deployments/{name}/ssh/tunnel", get(ssh_tunnel))
        .route("/v1/deployments/{name}/plan", post(plan))
        .route("/v1/deployments/{name}/instance-commands", post(instance_command))
        .route("/v1/deployments/{name}/instance-commands/plan", post(instance_command_plan))
        .route("/v1/deployments/{name}/errands/{errand}/runs", post(run_errand))
        .route("/v1/deployments/{name}/kubeconfig", get(kubeconfig))
        .route("/v1/disks/orphaned", get(list_orphaned_disks))
        .route("/v1/events", get(list_events))
        .route("/v1/resurrection", get(get_resurrection).put(switch_resurrection))
        .route("/v1/resurrection/config", put(update_resurrection_config))
        .route("/v1/deployments/{name}/problems", get(list_problems))
        .route("/v1/deployments/{name}/problems/resolve", post(resolve_problems))
        .route("/v1/disks/{cid}", delete(delete_disk))
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/cancel", post(cancel_task))
        .route("/v1/locks", get(list_locks))
        .route("/v1/releases/{name}", delete(delete_release))
        .route("/v1/stemcells/{name}/{version}", delete(delete_stemcell))
        .route("/v1/clean-up", post(clean_up))
        .route("/v1/tasks/{id}/events", get(task_events))
        .merge(uploads)
        .merge(crate::ui::router(d.clone()))
        .layer(DefaultBodyLimit::max(16 << 20)) // BODY_LIMIT
        .layer(axum::middleware::from_fn_with_state(d.clone(), authenticate))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(d)
}

/// The request body limit of every route but uploads.
const BODY_LIMIT: &str = "16 MiB";
/// The body limit of release and stemcell uploads.
const UPLOAD_LIMIT: &str = "8 GiB";

/// Every error the API answers has the `{code, message}` shape, including those axum makes itself
/// (a body over its limit, a malformed JSON body, an unknown route or method).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let own = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| ["application/json", "text/html", "image/svg+xml"].iter().any(|t| v.starts_with(t)));
    // The web view's pages answer errors as pages.
    if own || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            format!(
                "the request body is over the limit of {BODY_LIMIT} ({UPLOAD_LIMIT} for release and stemcell uploads)"
            ),
        ),
        StatusCode::NOT_FOUND => ("not_found", "no such API route".to_string()),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this route does not take that method".to_string()),
        s if s.is_client_error() => ("invalid_input", text),
        _ => ("internal", text),
    };
    ApiError::new(status, code, message).into_response()
}

/// The token of an `Authorization: Bearer <token>` header; the scheme's name is matched without
/// regard to case (RFC 7235 §2.1), and spaces may separate it from the token.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' ')).filter(|t| !t.is_empty())
}

async fn authenticate(State(d): Shared, headers: HeaderMap, request: Request, next: Next) -> Response {
    if crate::ui::is_ui_path(request.uri().path()) {
        return next.run(request).await; // the web view checks its own session cookie
    }
    let presented = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match presented {
        Some(t) if d.token_matches(t) => {
            if let Some(admission) = request.extensions().get::<Arc<crate::gate::Admission>>() {
                admission.prove();
            }
            next.run(request).await
        }
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the token is not valid for this director")
            .into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required (set BOSUN_TOKEN)")
            .into_response(),
    }
}

/// How long a client has to send a request's headers — and how long a connection may sit idle
/// between requests (the same timer: hyper starts it when it waits for a request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the API. A connection counts against `gate` until a request on it presents the token.
pub async fn serve(
    d: Arc<Director>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    gate: Arc<crate::gate::ConnectionGate>,
) {
    use tower::ServiceExt;
    let app = router(d);
    crate::serve_tls("api", listener, acceptor, gate, move |tls, _peer, admission| {
        // `authenticate` proves the admission when the token matches.
        let app = app.clone().map_request(move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(admission.clone());
            request
        });
        let service = hyper_util::service::TowerToHyperService::new(app);
        async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                // `bosun ssh --gateway` turns its request into a byte stream to a VM.
                .with_upgrades()
                .await;
        }
    })
    .await
}

async fn info(State(d): Shared) -> Json<DirectorInfo> {
    Json(DirectorInfo {
        name: d.config.name.clone(),
        uuid: d.uuid.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        cpi: d.cpi.name().into(),
        api_version: API_VERSION.into(),
    })
}

async fn get_cloud_config(State(d): Shared) -> Result<String, ApiError> {
    update::latest_cloud_config(&d.state)
        .await?
        .map(|c| c.yaml)
        .ok_or_else(|| ApiError::not_found("no cloud-config has been uploaded"))
}

#[derive(serde::Serialize)]
struct CloudConfigUpdated {
    version: u64,
    changed: bool,
}

async fn update_cloud_config(State(d): Shared, body: String) -> Result<Json<CloudConfigUpdated>, ApiError> {
    let value =
        bosun_types::yaml::parse_value("cloud-config", &body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    bosun_types::cloud_config::CloudConfig::parse("cloud-config", value)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(latest) = update::latest_cloud_config(&d.state).await? {
        if latest.yaml == body {
            return Ok(Json(CloudConfigUpdated { version: latest.version, changed: false }));
        }
    }
    let version = d.state.next_id("cloud-config").await?;
    d.state
        .put(
            tables::CLOUD_CONFIGS,
            &update::cloud_config_key(version),
            &CloudConfigRecord { version, yaml: body, created_at: d.clock.unix_secs() },
        )
        .await?;
    d.state.flush().await?;
    Ok(Json(CloudConfigUpdated { version, changed: true }))
}

async fn deployments_using(d: &Director) -> Result<Vec<(String, crate::records::ManifestRefs)>, ApiError> {
    Ok(d.state
        .list::<DeploymentRecord>(tables::DEPLOYMENTS, "")
        .await?
        .into_iter()
        .map(|rec| (rec.name.clone(), rec.refs()))
        .collect())
}

async fn inspect_release(
    State(d): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ReleaseInspectView>, ApiError> {
    crate::compiled_releases::inspect(&d, &name, &version)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("release `{name}/{version}` is not uploaded")))
}

#[derive(serde::Deserialize)]
struct ExportQuery {
    stemcell: String,
    /// Comma-separated job names: only these and the packages they need.
    #[serde(default)]
    jobs: Option<String>,
}

/// A compiled release tarball, streamed (the file is unlinked once open, so nothing is left).
async fn export_release(
    State(d): Shared,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    use crate::compiled_releases::ExportError;
    let jobs: Vec<String> =
        q.jobs.iter().flat_map(|j| j.split(',')).filter(|j| !j.is_empty()).map(str::to_string).collect();
    let path =
        crate::compiled_releases::export(&d, &name, &version, &q.stemcell, &jobs).await.map_err(|e| match e {
            ExportError::NoRelease(_) | ExportError::NoJob { .. } => ApiError::not_found(e.to_string()),
            ExportError::BadStemcell(_) => ApiError::bad_request(e.to_string()),
            ExportError::NotCompiled { .. } => ApiError::conflict(e.to_string()),
            ExportError::Store(e) => ApiError::from(e),
            ExportError::Io(ref io) => ApiError::internal(io),
        })?;
    streamed_once(&path).await
}

/// A `.tgz` made for one caller, streamed to it and unlinked at once (the open file still reads).
async fn streamed_once(path: &std::path::Path) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(path).await.map_err(|e| ApiError::internal(&e));
    let _ = tokio::fs::remove_file(path).await;
    let stream = tokio_util::io::ReaderStream::new(file?);
    Ok(Response::builder()
        .header("content-type", "application/gzip")
        .body(Body::from_stream(stream))
        .expect("a response builds"))
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    /// `GROUP/UUID` or `GROUP/INDEX`.
    instance: String,
    /// Comma-separated job names; every job's logs when absent.
    #[serde(default)]
    job: Option<String>,
    /// Stream the last `num` lines, then each new one, until the client hangs up.
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    num: Option<u32>,
}

/// How long one `logs --follow` streams at most (the client may ask again).
const FOLLOW_FOR: Duration = Duration::from_secs(12 * 3600);

/// Log text one `bosun logs` brings from one instance, at most (the newest is kept).
const MAX_LOG_BYTES: u64 = 128 << 20;

/// `bosun logs`: the agent packs the instance's job logs (bounded) and uploads them; they are
/// streamed to the caller and not kept (logs may hold what should not linger on the director).
async fn fetch_logs(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    deployment_record(&d, &name).await?;
    let instances: Vec<InstanceRecord> = d.state.list(tables::INSTANCES, &format!("{name}/")).await?;
    let rec = instances
        .iter()
        .find(|r| r.name() == q.instance || format!("{}/{}", r.group, r.index) == q.instance)
        .ok_or_else(|| ApiError::not_found(format!("deployment `{name}` has no instance `{}`", q.instance)))?;
    let vm = rec.vm.as_ref().ok_or_else(|| ApiError::conflict(format!("{} has no VM", rec.name())))?;
    let jobs: Vec<String> =
        q.job.iter().flat_map(|j| j.split(',')).filter(|j| !j.is_empty()).map(str::to_string).collect();
    if let Some(bad) = jobs.iter().find(|j| !bosun_types::yaml::is_safe_name(j)) {
        return Err(ApiError::bad_request(format!("`{bad}` is not a job name")));
    }
    if q.follow {
        return Ok(follow_logs(&d, &vm.agent_id, jobs, q.num.unwrap_or(10).min(10_000)));
    }
    d.hub.allow_upload(&vm.agent_id, MAX_LOG_BYTES + (16 << 20));
    let reply = d
        .hub
        .call(
            &vm.agent_id,
            bosun_types::protocol::AgentCommand::FetchLogs { jobs, max_bytes: MAX_LOG_BYTES },
            Duration::from_secs(300),
        )
        .await;
    d.hub.forbid_upload(&vm.agent_id);
    let reply = reply.map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, "agent_failed", format!("{}: fetching logs: {e}", rec.name()))
    })?;
    let blob: bosun_types::protocol::BlobRef = serde_json::from_value(reply)
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "agent_failed", format!("a malformed answer: {e}")))?;
    let path = d.blobstore.path(&blob.digest).map_err(|e| ApiError::internal(&e))?;
    streamed_once(&path).await
}

impl From<crate::ssh::SshError> for ApiError {
    fn from(e: crate::ssh::SshError) -> Self {
        use crate::ssh::SshError as E;
        match e {
            E::Input(m) => ApiError::bad_request(m),
            E::NotFound(m) => ApiError::not_found(m),
            E::Unavailable(m) => ApiError::conflict(m),
            E::Agent(m) => ApiError::new(StatusCode::BAD_GATEWAY, "agent_failed", m),
            E::Store(s) => ApiError::internal(&s),
        }
    }
}

/// Who asked, for events: the token by a digest that does not reveal it.
fn requester(d: &Director) -> String {
    let digest = bosun_types::digest::sha256_digest(d.token.as_bytes());
    format!("token {}", &digest[..19])
}

async fn ssh_setup(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<SshSetupRequest>,
) -> Result<Json<SshSessionView>, ApiError> {
    deployment_record(&d, &name).await?;
    Ok(Json(crate::ssh::setup(&d, &name, &req, &requester(&d)).await?))
}

async fn ssh_cleanup(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<SshCleanupRequest>,
) -> Result<StatusCode, ApiError> {
    deployment_record(&d, &name).await?;
    crate::ssh::cleanup(&d, &name, &req, &requester(&d)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct TunnelQuery {
    instance: String,
}

/// `Upgrade: bosun-ssh`: the connection becomes a byte stream to the instance's SSH server, for
/// clients that cannot reach the VM. SSH runs end to end through it: the client still checks the
/// VM's host key, and the director sees only ciphertext.
async fn ssh_tunnel(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<TunnelQuery>,
    mut req: Request,
) -> Result<Response, ApiError> {
    deployment_record(&d, &name).await?;
    let wants = req.headers().get(axum::http::header::UPGRADE).and_then(|v| v.to_str().ok());
    if !wants.is_some_and(|u| u.eq_ignore_ascii_case("bosun-ssh")) {
        return Err(ApiError::bad_request("the tunnel needs `Upgrade: bosun-ssh`"));
    }
    let address = crate::ssh::address_of(&d, &name, &q.instance).await?;
    let vm = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&address))
        .await
        .map_err(|_| {
            ApiError::new(StatusCode::BAD_GATEWAY, "unreachable", format!("{address}: no answer within 10 s"))
        })?
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "unreachable", format!("{address}: {e}")))?;
    let upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded"))?;
    let instance = q.instance;
    tokio::spawn(async move {
        let mut vm = vm;
        match upgrade.await {
            Ok(client) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let copied = tokio::io::copy_bidirectional(&mut client, &mut vm).await;
                tracing::info!(deployment = %name, instance, ?copied, "SSH tunnel closed");
            }
            Err(e) => tracing::warn!(error = %e, "SSH tunnel upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, "bosun-ssh")
        .body(Body::empty())
        .map_err(|e| ApiError::internal(&e))
}

/// The agent's `follow_logs` lines as a streamed text body. When the client hangs up, the body is
/// dropped, and with it the command, which the hub then cancels on the agent.
fn follow_logs(d: &Arc<Director>, agent_id: &str, jobs: Vec<String>, lines: u32) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (d, agent) = (d.clone(), agent_id.to_string());
    let command =
        bosun_types::protocol::AgentCommand::FollowLogs { jobs, lines, timeout_ms: FOLLOW_FOR.as_millis() as u64 };
    let call = tokio::spawn(async move {
        let end = d.hub.call_reporting(&agent, command, FOLLOW_FOR + Duration::from_secs(60), Some(tx)).await;
        end.err().map(|e| format!("bosun: the stream ended: {e}\n"))
    });
    struct AbortOnDrop(tokio::task::JoinHandle<Option<String>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let lines = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|l| (l, rx)) })
        .map(|l| Ok::<_, std::io::Error>(l + "\n"));
    let guard = AbortOnDrop(call);
    // After the last line, why it ended, if not by the client.
    let ending = futures::stream::once(async move {
        let mut guard = guard;
        let why = (&mut guard.0).await.ok().flatten().unwrap_or_default();
        Ok(why)
    });
    let body = Body::from_stream(lines.chain(ending));
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body)
        .unwrap_or_else(|e| ApiError::internal(&e).into_response())
}

async fn list_releases(State(d): Shared) -> Result<Json<Vec<ReleaseView>>, ApiError> {
    let used = deployments_using(&d).await?;
    let mut out: Vec<ReleaseView> = d
        .state
        .list::<ReleaseRecord>(tables::RELEASES, "")
        .await?
        .into_iter()
        .map(|r| ReleaseView {
            deployments: used
                .iter()
                .filter(|(_, m)| m.uses_release(&r.name, &r.version))
                .map(|(n, _)| n.clone())
                .collect(),
            jobs: r
                .jobs
                .iter()
                .map(|j| format!("{}/{}", j.name, &j.fingerprint[..12.min(j.fingerprint.len())]))
                .collect(),
            packages: r
                .packages
                .iter()
                .map(|p| format!("{}/{}", p.name, &p.fingerprint[..12.min(p.fingerprint.len())]))
                .collect(),
            name: r.name,
            version: r.version,
            commit_hash: r.commit_hash,
        })
        .collect();
    out.sort_by(|a, b| (a.name.as_str(), a.version.as_str()).cmp(&(b.name.as_str(), b.version.as_str())));
    Ok(Json(out))
}

async fn list_stemcells(State(d): Shared) -> Result<Json<Vec<StemcellView>>, ApiError> {
    let instances: Vec<crate::records::InstanceRecord> = d.state.list(tables::INSTANCES, "").await?;
    let out = d
        .state
        .list::<StemcellRecord>(tables::STEMCELLS, "")
        .await?
        .into_iter()
        .map(|s| {
            let mut deployments: Vec<String> = instances
                .iter()
                .filter(|i| i.vm.as_ref().is_some_and(|v| v.stemcell_cid == s.cid))
                .map(|i| i.deployment.clone())
                .collect();
            deployments.sort();
            deployments.dedup();
            StemcellView {
                name: s.name,
                version: s.version,
                operating_system: s.operating_system,
                cid: s.cid,
                deployments,
            }
        })
        .collect();
    Ok(Json(out))
}

/// Streams a request body to a file under the state directory (`tmp/<uuid>/upload`). On any
/// failure the directory is removed: a failed upload leaves nothing behind. A body that stalls
/// (nothing for [`BODY_IDLE`]) fails.
async fn save_body(d: &Director, body: Body) -> Result<(std::path::PathBuf, std::path::PathBuf), ApiError> {
    let work = d.config.state_dir.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
    let saved = async {
        tokio::fs::create_dir_all(&work).await.map_err(|e| ApiError::storing(&e))?;
        let path = work.join("upload");
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| ApiError::storing(&e))?;
        let mut stream = body.into_data_stream();
        loop {
            let chunk = match tokio::time::timeout(BODY_IDLE, stream.next()).await {
                Ok(Some(chunk)) => chunk.map_err(|e| {
                    if bosun_types::error_chain(&e).contains("length limit exceeded") {
                        ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too_large",
                            format!("the upload is over the limit of {UPLOAD_LIMIT}"),
                        )
                    } else {
                        ApiError::bad_request(format!("reading the upload: {e}"))
                    }
                })?,
                Ok(None) => break,
                Err(_) => {
                    return Err(ApiError::bad_request(format!(
                        "reading the upload: nothing arrived for {} s",
                        BODY_IDLE.as_secs()
                    )))
                }
            };
            file.write_all(&chunk).await.map_err(|e| ApiError::storing(&e))?;
        }
        file.flush().await.map_err(|e| ApiError::storing(&e))?;
        let unpack = work.join("unpacked");
        tokio::fs::create_dir_all(&unpack).await.map_err(|e| ApiError::storing(&e))?;
        Ok((path, unpack))
    }
    .await;
    if saved.is_err() {
        let _ = tokio::fs::remove_dir_all(&work).await;
    }
    saved
}

/// How long an upload's body may stall.
const BODY_IDLE: Duration = Duration::from_secs(60);

async fn upload_release(State(d): Shared, body: Body) -> Result<Json<TaskCreated>, ApiError> {
    let (path, unpack) = save_body(&d, body).await?;
    let task = d.tasks.create("upload release", None, Locking::None).await?;
    let id = task.id;
    task.clone().run(async move {
        task.info("upload", None, "verifying and storing the release").await;
        let result = crate::uploads::upload_release(&d, path.clone(), unpack).await;
        let _ = tokio::fs::remove_dir_all(path.parent().expect("work dir")).await;
        let _ = d.state.flush().await;
        match result {
            Ok(r) if r.already_present => Ok(format!("release {}/{} was already uploaded", r.name, r.version)),
            Ok(r) => Ok(format!("uploaded release {}/{}", r.name, r.version)),
            Err(e) => Err(error_chain(&e)),
        }
    });
    Ok(Json(TaskCreated { task_id: id }))
}

async fn upload_stemcell(State(d): Shared, body: Body) -> Result<Json<TaskCreated>, ApiError> {
    let (path, unpack) = save_body(&d, body).await?;
    let task = d.tasks.create("upload stemcell", None, Locking::None).await?;
    let id = task.id;
    task.clone().run(async move {
        task.info("upload", None, "verifying the stemcell and handing it to the CPI").await;
        let result = crate::uploads::upload_stemcell(&d, path.clone(), unpack).await;
        let _ = tokio::fs::remove_dir_all(path.parent().expect("work dir")).await;
        let _ = d.state.flush().await;
        match result {
            Ok(r) if r.already_present => Ok(format!("stemcell {}/{} was already uploaded", r.name, r.version)),
            Ok(r) => Ok(format!("uploaded stemcell {}/{}", r.name, r.version)),
            Err(e) => Err(error_chain(&e)),
        }
    });
    Ok(Json(TaskCreated { task_id: id }))
}

async fn list_deployments(State(d): Shared) -> Result<Json<Vec<DeploymentView>>, ApiError> {
    Ok(Json(crate::views::deployment_views(&d).await?))
}

async fn deployment_record(d: &Director, name: &str) -> Result<DeploymentRecord, ApiError> {
    d.state
        .get::<DeploymentRecord>(tables::DEPLOYMENTS, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("deployment `{name}` does not exist")))
}

async fn get_deployment(State(d): Shared, Path(name): Path<String>) -> Result<Json<DeploymentView>, ApiError> {
    deployment_record(&d, &name).await?;
    let Json(all) = list_deployments(State(d)).await?;
    all.into_iter()
        .find(|x| x.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("deployment `{name}` does not exist")))
}

async fn get_manifest(State(d): Shared, Path(name): Path<String>) -> Result<String, ApiError> {
    Ok(deployment_record(&d, &name).await?.manifest)
}

#[derive(serde::Deserialize)]
struct InstancesQuery {
    #[serde(default)]
    ps: bool,
}

async fn list_instances(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<InstancesQuery>,
) -> Result<Json<Vec<InstanceView>>, ApiError> {
    deployment_record(&d, &name).await?;
    Ok(Json(crate::views::instance_views(&d, &name, q.ps).await?))
}

/// The deployment's director-stored variables: names, types, ids, generation times; never values.
async fn list_variables(
    State(d): Shared,
    Path(name): Path<String>,
) -> Result<Json<Vec<bosun_types::api::VariableView>>, ApiError> {
    deployment_record(&d, &name).await?;
    Ok(Json(crate::update::list_variables(&d, &name).await.map_err(deploy_error)?))
}

fn deploy_error(e: DeployError) -> ApiError {
    match e {
        DeployError::Input(m) => ApiError::bad_request(m),
        other => ApiError::internal(&other),
    }
}

fn manifest_name(text: &str) -> Result<String, ApiError> {
    let v = bosun_types::yaml::parse_value("manifest", text).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let name =
        v.get("name").and_then(|n| n.as_str()).ok_or_else(|| ApiError::bad_request("manifest: /name: missing"))?;
    bosun_types::manifest::check_name("manifest", "/name", name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(name.to_string())
}

fn deploy_requests(req: &DeployRequest) -> Requests {
    Requests {
        recreate: if req.recreate { Selection::All } else { Selection::None },
        canaries: req.overrides.canaries,
        max_in_flight: req.overrides.max_in_flight,
        ..Requests::default()
    }
}

/// `bosun recreate | restart | stop | start`: what they ask of the planner.
fn command_requests(req: &InstanceCommandRequest) -> Result<Requests, ApiError> {
    let selection = if req.instances.is_empty() {
        Selection::All
    } else {
        Selection::Some(
            req.instances
                .iter()
                .map(|s| s.parse::<InstanceSelector>().map_err(|e| ApiError::bad_request(format!("instances: {e}"))))
                .collect::<Result<_, _>>()?,
        )
    };
    if req.hard && req.command != InstanceCommand::Stop {
        return Err(ApiError::bad_request("`hard` goes with `stop` only"));
    }
    let mut r = Requests {
        canaries: req.overrides.canaries,
        max_in_flight: req.overrides.max_in_flight,
        ..Requests::default()
    };
    match req.command {
        InstanceCommand::Recreate => r.recreate = selection,
        InstanceCommand::Restart => r.restart = selection,
        InstanceCommand::Stop => {
            r.state = Some((selection, if req.hard { DesiredState::Detached } else { DesiredState::Stopped }))
        }
        InstanceCommand::Start => r.state = Some((selection, DesiredState::Started)),
    }
    Ok(r)
}

async fn prepare(d: &Director, text: &str, requests: &Requests) -> Result<update::Prepared, ApiError> {
    update::prepare(d, text, requests).await.map_err(deploy_error)
}

/// Starts an update task: the plan is checked first (bad input fails the request and changes
/// nothing), then made again under the deployment's lock, as the state may have moved.
async fn start_update(
    d: Arc<Director>,
    name: &str,
    description: String,
    manifest: String,
    requests: Requests,
    opts: update::ExecOptions,
) -> Result<Json<TaskCreated>, ApiError> {
    prepare(&d, &manifest, &requests).await?;
    let task = d.tasks.create(&description, Some(name), OPERATOR_LOCK_WAIT).await?;
    let id = task.id;
    task.clone().run(async move {
        match prepare(&d, &manifest, &requests).await {
            Ok(prepared) => update::execute(&d, &task, &prepared, &manifest, opts).await.map_err(|e| error_chain(&e)),
            Err(e) => Err(e.message),
        }
    });
    Ok(Json(TaskCreated { task_id: id }))
}

async fn plan(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<DeployRequest>,
) -> Result<Json<PlanView>, ApiError> {
    if manifest_name(&req.manifest)? != name {
        return Err(ApiError::bad_request(format!("the manifest is for another deployment than `{name}`")));
    }
    let prepared = prepare(&d, &req.manifest, &deploy_requests(&req)).await?;
    let old = d.state.get(tables::DEPLOYMENTS, &name).await?.map(|r| r.manifest);
    Ok(Json(update::plan_view(&prepared.plan, old.as_deref(), &req.manifest, !req.no_redact)))
}

async fn deploy(State(d): Shared, Json(req): Json<DeployRequest>) -> Result<Json<TaskCreated>, ApiError> {
    let name = manifest_name(&req.manifest)?;
    let requests = deploy_requests(&req);
    let opts = update::ExecOptions { skip_drain: req.overrides.skip_drain };
    start_update(d, &name, format!("deploy {name}"), req.manifest, requests, opts).await
}

async fn instance_command_plan(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<InstanceCommandRequest>,
) -> Result<Json<PlanView>, ApiError> {
    let manifest = deployment_record(&d, &name).await?.manifest;
    let prepared = prepare(&d, &manifest, &command_requests(&req)?).await?;
    Ok(Json(update::plan_view(&prepared.plan, Some(&manifest), &manifest, true)))
}

async fn instance_command(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<InstanceCommandRequest>,
) -> Result<Json<TaskCreated>, ApiError> {
    let manifest = deployment_record(&d, &name).await?.manifest;
    let requests = command_requests(&req)?;
    let what = if req.instances.is_empty() { name.clone() } else { format!("{name} {}", req.instances.join(" ")) };
    let description = format!("{}{} {what}", req.command, if req.hard { " --hard" } else { "" });
    let opts = update::ExecOptions { skip_drain: req.overrides.skip_drain };
    start_update(d, &name, description, manifest, requests, opts).await
}

async fn run_errand(
    State(d): Shared,
    Path((name, errand)): Path<(String, String)>,
    Json(req): Json<bosun_types::api::ErrandRunRequest>,
) -> Result<Json<TaskCreated>, ApiError> {
    deployment_record(&d, &name).await?;
    let selectors: Vec<InstanceSelector> = req
        .instances
        .iter()
        .map(|s| s.parse::<InstanceSelector>().map_err(|e| ApiError::bad_request(format!("instances: {e}"))))
        .collect::<Result<_, _>>()?;
    if req.timeout_secs == Some(0) {
        return Err(ApiError::bad_request("timeout_secs must be at least 1"));
    }
    // Bad input fails the request and starts nothing.
    crate::errands::targets(&d, &name, &errand, &selectors).await.map_err(ApiError::bad_request)?;
    let task = d.tasks.create(&format!("run errand {errand}"), Some(&name), OPERATOR_LOCK_WAIT).await?;
    let id = task.id;
    task.clone().run(async move { crate::errands::run(&d, &task, &name, &errand, &req).await });
    Ok(Json(TaskCreated { task_id: id }))
}

/// The admin kubeconfig of a deployment that runs Kubernetes: the file a job's spec names as its
/// `kubeconfig`, as the director renders it for the deployment's current state (the bootstrap
/// instance's first). Handing it out is an event.
async fn kubeconfig(State(d): Shared, Path(name): Path<String>) -> Result<String, ApiError> {
    let manifest = deployment_record(&d, &name).await?.manifest;
    let prepared = prepare(&d, &manifest, &Requests::default()).await?;
    let releases: Vec<ReleaseRecord> = d.state.list(tables::RELEASES, "").await?;
    let declared = |release: &str, job: &str| {
        prepared.manifest.releases.iter().find(|r| r.name == release).and_then(|r| {
            releases
                .iter()
                .filter(|x| x.name == r.name)
                .flat_map(|x| &x.jobs)
                .find(|j| j.name == job)
                .and_then(|j| j.spec.kubeconfig.clone())
        })
    };
    let mut instances: Vec<&crate::planner::InstancePlan> =
        prepared.plan.groups.iter().flat_map(|g| &g.instances).collect();
    instances.sort_by_key(|i| !i.bootstrap);
    for i in instances {
        for job in &i.jobs {
            let Some(path) = declared(&job.release, &job.name) else { continue };
            let (_, text) = job.files.get(&path).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_release",
                    format!("job `{}` names {path} as its kubeconfig and renders no such file", job.name),
                )
            })?;
            d.events
                .record(
                    crate::events::EventSubject::deployment(&name),
                    "kubeconfig",
                    "operator",
                    format!("admin kubeconfig of job `{}` handed out", job.name),
                )
                .await;
            return Ok(text.clone());
        }
    }
    Err(ApiError::not_found(format!(
        "no job of deployment `{name}` offers a kubeconfig (is Kubernetes deployed there?)"
    )))
}

async fn list_events(
    State(d): Shared,
    Query(f): Query<crate::events::EventFilter>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    Ok(Json(d.events.list(&f).await?))
}

async fn get_resurrection(State(d): Shared) -> Result<Json<crate::health::ResurrectionConfig>, ApiError> {
    Ok(Json(crate::health::ResurrectionConfig::load(&d).await?))
}

async fn switch_resurrection(
    State(d): Shared,
    Json(req): Json<ResurrectionSwitch>,
) -> Result<Json<crate::health::ResurrectionConfig>, ApiError> {
    let mut c = crate::health::ResurrectionConfig::load(&d).await?;
    match &req.deployment {
        Some(dep) => {
            deployment_record(&d, dep).await?;
            c.deployments.insert(dep.clone(), req.enabled);
        }
        None => c.enabled = Some(req.enabled),
    }
    c.save(&d).await?;
    d.state.flush().await?;
    let subject = match &req.deployment {
        Some(dep) => crate::events::EventSubject::deployment(dep),
        None => crate::events::EventSubject {
            object_type: "director",
            object_name: d.config.name.clone(),
            ..Default::default()
        },
    };
    d.events
        .record(
            subject,
            "update_resurrection",
            "operator",
            format!("resurrection {}", if req.enabled { "on" } else { "off" }),
        )
        .await;
    Ok(Json(c))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResurrectionRules {
    #[serde(default)]
    rules: Vec<crate::health::ResurrectionRule>,
}

async fn update_resurrection_config(
    State(d): Shared,
    body: String,
) -> Result<Json<crate::health::ResurrectionConfig>, ApiError> {
    let parsed: ResurrectionRules =
        bosun_types::yaml::from_str("resurrection config", &body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut c = crate::health::ResurrectionConfig::load(&d).await?;
    c.rules = parsed.rules;
    c.save(&d).await?;
    d.state.flush().await?;
    d.events
        .record(
            crate::events::EventSubject {
                object_type: "director",
                object_name: d.config.name.clone(),
                ..Default::default()
            },
            "update_resurrection_config",
            "operator",
            format!("{} resurrection rule(s)", c.rules.len()),
        )
        .await;
    Ok(Json(c))
}

async fn list_problems(State(d): Shared, Path(name): Path<String>) -> Result<Json<Vec<ProblemView>>, ApiError> {
    deployment_record(&d, &name).await?;
    let problems = crate::cck::scan(&d, &name).await.map_err(|e| ApiError::internal(&e))?;
    Ok(Json(problems.into_iter().map(|p| p.view).collect()))
}

async fn resolve_problems(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<ResolveRequest>,
) -> Result<Json<TaskCreated>, ApiError> {
    deployment_record(&d, &name).await?;
    let task = d.tasks.create(&format!("cck {name}"), Some(&name), OPERATOR_LOCK_WAIT).await?;
    let id = task.id;
    task.clone().run(async move { crate::cck::resolve(&d, &task, &name, &req.resolutions).await });
    Ok(Json(TaskCreated { task_id: id }))
}

async fn list_orphaned_disks(State(d): Shared) -> Result<Json<Vec<OrphanedDiskView>>, ApiError> {
    let retention = d.config.orphaned_disk_retention.as_secs();
    let mut out: Vec<OrphanedDiskView> = d
        .state
        .list::<OrphanedDiskRecord>(tables::ORPHANED_DISKS, "")
        .await?
        .into_iter()
        .map(|r| OrphanedDiskView {
            delete_after: r.orphaned_at + retention,
            disk_cid: r.disk_cid,
            size_mb: r.size_mb,
            deployment: r.deployment,
            instance: r.instance,
            az: r.az,
            orphaned_at: r.orphaned_at,
            reason: r.reason,
        })
        .collect();
    out.sort_by_key(|o| std::cmp::Reverse(o.orphaned_at));
    Ok(Json(out))
}

/// Deletes an orphaned disk now. A disk an instance uses is refused, naming the instance.
async fn delete_disk(State(d): Shared, Path(cid): Path<String>) -> Result<Json<TaskCreated>, ApiError> {
    if d.state.get(tables::ORPHANED_DISKS, &cid).await?.is_none() {
        let user = d
            .state
            .list::<InstanceRecord>(tables::INSTANCES, "")
            .await?
            .into_iter()
            .find(|i| i.disk_cids.contains(&cid) || i.migrating_disk.as_deref() == Some(cid.as_str()));
        return Err(match user {
            Some(i) => ApiError::conflict(format!(
                "disk `{cid}` is the persistent disk of {} in deployment `{}`; only orphaned disks can be deleted",
                i.name(),
                i.deployment
            )),
            None => ApiError::not_found(format!("no orphaned disk `{cid}` (see `bosun disks --orphaned`)")),
        });
    }
    let task = d.tasks.create(&format!("delete disk {cid}"), None, Locking::None).await?;
    let id = task.id;
    task.run(async move {
        crate::disks::delete_orphan(&d, &cid).await.map(|()| format!("deleted disk {cid}")).map_err(|e| error_chain(&e))
    });
    Ok(Json(TaskCreated { task_id: id }))
}

async fn delete_deployment(State(d): Shared, Path(name): Path<String>) -> Result<Json<TaskCreated>, ApiError> {
    deployment_record(&d, &name).await?;
    let task = d.tasks.create(&format!("delete deployment {name}"), Some(&name), OPERATOR_LOCK_WAIT).await?;
    let id = task.id;
    task.clone().run(async move {
        let deleted = update::delete_deployment(&d, &task, &name).await.map_err(|e| error_chain(&e))?;
        match crate::blob_gc::collect(&d).await {
            Ok(c) if c.deleted > 0 => {
                task.info("cleanup", None, format!("{} unreferenced blob(s) deleted ({} bytes)", c.deleted, c.bytes))
                    .await
            }
            Ok(_) => {}
            Err(e) => task.warn("cleanup", None, format!("collecting unreferenced blobs failed: {e}")).await,
        }
        Ok(deleted)
    });
    Ok(Json(TaskCreated { task_id: id }))
}

#[derive(serde::Deserialize)]
struct TasksQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    deployment: Option<String>,
}

async fn list_tasks(State(d): Shared, Query(q): Query<TasksQuery>) -> Result<Json<Vec<TaskView>>, ApiError> {
    Ok(Json(d.tasks.list(q.limit.unwrap_or(30).min(1000), q.deployment.as_deref()).await?))
}

async fn get_task(State(d): Shared, Path(id): Path<u64>) -> Result<Json<TaskView>, ApiError> {
    d.tasks.get(id).await?.map(Json).ok_or_else(|| ApiError::not_found(format!("task {id} does not exist")))
}

/// Asks a running task to stop at its next checkpoint (202; the task shows `cancelling`).
async fn cancel_task(State(d): Shared, Path(id): Path<u64>) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    match d.tasks.cancel(id, "operator").await {
        Ok(view) => Ok((StatusCode::ACCEPTED, Json(view))),
        Err(e @ crate::tasks::CancelError::NotFound(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ crate::tasks::CancelError::Finished { .. }) => Err(ApiError::conflict(e.to_string())),
        Err(crate::tasks::CancelError::Store(e)) => Err(e.into()),
    }
}

#[derive(serde::Deserialize)]
struct DeleteReleaseQuery {
    /// One version; all versions when absent.
    version: Option<String>,
}

/// `delete-release NAME[/VERSION]`: refused (409) naming the deployments that need it.
async fn delete_release(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<DeleteReleaseQuery>,
) -> Result<Json<TaskCreated>, ApiError> {
    let inventory = crate::cleanup::Inventory::load(&d).await?;
    let releases: Vec<ReleaseRecord> = inventory
        .releases
        .iter()
        .filter(|r| r.name == name && q.version.as_ref().is_none_or(|v| *v == r.version))
        .cloned()
        .collect();
    let what = match &q.version {
        Some(v) => format!("{name}/{v}"),
        None => name.clone(),
    };
    if releases.is_empty() {
        return Err(ApiError::not_found(format!("release {what} is not uploaded (see `bosun releases`)")));
    }
    let refused = crate::cleanup::refusals(&inventory, &releases, &[]);
    if !refused.is_empty() {
        return Err(ApiError::conflict(refused.join("; ")));
    }
    let task = d.tasks.create(&format!("delete release {what}"), None, Locking::None).await?;
    let id = task.id;
    task.clone()
        .run(async move { crate::cleanup::remove(&d, &task, releases, vec![], false).await.map(|r| r.to_string()) });
    Ok(Json(TaskCreated { task_id: id }))
}

/// `delete-stemcell NAME/VERSION`: refused (409) naming the deployments that need it.
async fn delete_stemcell(
    State(d): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<TaskCreated>, ApiError> {
    let inventory = crate::cleanup::Inventory::load(&d).await?;
    let Some(stemcell) = inventory.stemcells.iter().find(|s| s.name == name && s.version == version).cloned() else {
        return Err(ApiError::not_found(format!("stemcell {name}/{version} is not uploaded (see `bosun stemcells`)")));
    };
    let refused = crate::cleanup::refusals(&inventory, &[], std::slice::from_ref(&stemcell));
    if !refused.is_empty() {
        return Err(ApiError::conflict(refused.join("; ")));
    }
    let task = d.tasks.create(&format!("delete stemcell {name}/{version}"), None, Locking::None).await?;
    let id = task.id;
    task.clone().run(async move {
        crate::cleanup::remove(&d, &task, vec![], vec![stemcell], false).await.map(|r| r.to_string())
    });
    Ok(Json(TaskCreated { task_id: id }))
}

#[derive(serde::Deserialize)]
struct CleanUpRequest {
    #[serde(default)]
    all: bool,
}

/// `clean-up [--all]`: releases and stemcells nothing needs (all but the newest two versions of
/// each, or all of them), compiled packages left over, with `all` the orphaned disks too.
async fn clean_up(State(d): Shared, Json(req): Json<CleanUpRequest>) -> Result<Json<TaskCreated>, ApiError> {
    let description = if req.all { "clean up (all)" } else { "clean up" };
    let task = d.tasks.create(description, None, Locking::None).await?;
    let id = task.id;
    task.clone().run(async move {
        let inventory = crate::cleanup::Inventory::load(&d).await.map_err(|e| e.to_string())?;
        let (releases, stemcells) = inventory.unused(req.all);
        crate::cleanup::remove(&d, &task, releases, stemcells, req.all).await.map(|r| r.to_string())
    });
    Ok(Json(TaskCreated { task_id: id }))
}

async fn list_locks(State(d): Shared) -> Result<Json<Vec<bosun_types::api::LockView>>, ApiError> {
    let locks = d.tasks.locks().await?;
    Ok(Json(
        locks
            .into_iter()
            .map(|(deployment, task_id)| bosun_types::api::LockView {
                kind: "deployment".into(),
                resource: deployment,
                task_id,
            })
            .collect(),
    ))
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    /// Seconds to wait for a new event (long poll), at most 30.
    #[serde(default)]
    wait: u64,
}

async fn task_events(
    State(d): Shared,
    Path(id): Path<u64>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<TaskEventsPage>, ApiError> {
    d.tasks
        .wait_events(id, q.after, Duration::from_secs(q.wait.min(30)))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("task {id} does not exist")))
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        for h in ["Bearer abc", "bearer abc", "BEARER abc", "Bearer   abc"] {
            assert_eq!(bearer_token(h), Some("abc"), "{h}");
        }
        for h in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "Token abc"] {
            assert_eq!(bearer_token(h), None, "{h}");
        }
    }
}
