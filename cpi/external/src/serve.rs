//! The CPI's side: one request answered by one of bosun's CPIs, as a BOSH director expects.

use crate::protocol::{method_name, networks_from_wire, types, Request, Response, ResponseError, API_VERSION};
use bosun_cpi::{Cpi, CpiError, CreateVmRequest};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::path::PathBuf;
use tracing::Instrument;

/// What a CPI executable does: reads one request from stdin (at most 16 MiB), opens the CPI with
/// `open` (its configuration read), answers on stdout. A CPI that cannot be opened is answered as
/// a `CloudError` naming why; an error here is only one of stdin or stdout.
pub async fn answer_stdin<F>(open: F) -> std::io::Result<()>
where
    F: std::future::Future<Output = Result<std::sync::Arc<dyn Cpi>, CpiError>>,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut input = Vec::new();
    tokio::io::stdin().take(16 << 20).read_to_end(&mut input).await?;
    let response = match open.await {
        Ok(cpi) => serve(cpi.as_ref(), &input).await,
        Err(e) => Response::failed(&e),
    };
    let mut out = serde_json::to_vec(&response).expect("a response serializes");
    out.push(b'\n');
    let mut stdout = tokio::io::stdout();
    stdout.write_all(&out).await?;
    stdout.flush().await
}

/// Answers the request in `input` (the bytes a director wrote to the CPI's stdin) with `cpi`.
/// Never fails: a request that cannot be read or carries wrong arguments is a `CpiError`
/// response, an unknown method `NotImplemented` (as cpi-go answers them).
pub async fn serve(cpi: &dyn Cpi, input: &[u8]) -> Response {
    let request: Request = match serde_json::from_slice(input) {
        Ok(r) => r,
        Err(e) => return Response::failed(&CpiError::InvalidArguments(format!("Invalid request: {e}"))),
    };
    let span = tracing::info_span!(
        "cpi_request",
        method = %request.method,
        request_id = request.context.get("request_id").and_then(|v| v.as_str()).unwrap_or("")
    );
    async move {
        let Some(method) = method_name(&request.method) else {
            // As cpi-go answers a method it does not know.
            return Response {
                result: Value::Null,
                error: Some(ResponseError {
                    kind: types::NOT_IMPLEMENTED.into(),
                    message: format!("Must call implemented method: `{}` is not one", request.method),
                    ok_to_retry: false,
                }),
                log: String::new(),
            };
        };
        match dispatch(cpi, method, &request).await {
            Ok(result) => Response::ok(result),
            // BOSH has no type for a missing stemcell: its CPIs treat deleting one as done, and
            // creating a VM from one as a creation that failed for good.
            Err(CpiError::StemcellNotFound(_)) if method == "delete_stemcell" => Response::ok(Value::Null),
            Err(CpiError::StemcellNotFound(cid)) if method == "create_vm" => {
                Response::failed(&CpiError::VmCreationFailed {
                    message: format!("stemcell `{cid}` not found"),
                    ok_to_retry: false,
                })
            }
            Err(e) => {
                tracing::info!(error = %e, "answered with an error");
                Response::failed(&e)
            }
        }
    }
    .instrument(span)
    .await
}

/// The positional argument `i`, named `what` in errors.
fn arg<T: DeserializeOwned>(request: &Request, i: usize, what: &str) -> Result<T, CpiError> {
    let v = request.arguments.get(i).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v).map_err(|e| {
        CpiError::InvalidArguments(format!("{}: argument {} (`{what}`) is not valid: {e}", request.method, i + 1))
    })
}

/// A CPI's result as the response's `result`.
fn value<T: serde::Serialize>(v: Result<T, CpiError>) -> Result<Value, CpiError> {
    v.map(|x| serde_json::to_value(x).expect("CPI results serialize"))
}

async fn dispatch(cpi: &dyn Cpi, method: &'static str, r: &Request) -> Result<Value, CpiError> {
    // Before a version is agreed BOSH's directors speak v1: a bare cid from create_vm, nothing
    // from attach_disk.
    let v2 = r.api_version.unwrap_or(1) >= 2;
    match method {
        "info" => {
            let info = cpi.info().await?;
            Ok(json!({"api_version": info.api_version.min(API_VERSION), "stemcell_formats": info.stemcell_formats}))
        }
        "create_stemcell" => {
            let path: PathBuf = arg(r, 0, "image_path")?;
            value(cpi.create_stemcell(&path, &arg::<Value>(r, 1, "cloud_properties")?).await)
        }
        "delete_stemcell" => value(cpi.delete_stemcell(&arg::<String>(r, 0, "stemcell_cid")?).await),
        "create_vm" => {
            let request = CreateVmRequest {
                agent_id: arg(r, 0, "agent_id")?,
                stemcell_cid: arg(r, 1, "stemcell_cid")?,
                cloud_properties: arg(r, 2, "cloud_properties")?,
                networks: arg::<Value>(r, 3, "networks").and_then(|v| {
                    networks_from_wire(v).map_err(|e| {
                        CpiError::InvalidArguments(format!("create_vm: argument 4 (`networks`) is not valid: {e}"))
                    })
                })?,
                disk_cids: arg::<Option<Vec<String>>>(r, 4, "disk_cids")?.unwrap_or_default(),
                env: arg::<Option<Value>>(r, 5, "env")?.unwrap_or(Value::Null),
            };
            let (cid, networks) = cpi.create_vm(&request).await?;
            Ok(if v2 { json!([cid, networks]) } else { json!(cid) })
        }
        "delete_vm" => value(cpi.delete_vm(&arg::<String>(r, 0, "vm_cid")?).await),
        "has_vm" => value(cpi.has_vm(&arg::<String>(r, 0, "vm_cid")?).await),
        "reboot_vm" => value(cpi.reboot_vm(&arg::<String>(r, 0, "vm_cid")?).await),
        "set_vm_metadata" => value(cpi.set_vm_metadata(&arg::<String>(r, 0, "vm_cid")?, &arg(r, 1, "metadata")?).await),
        "calculate_vm_cloud_properties" => {
            #[derive(serde::Deserialize)]
            struct Resources {
                cpu: u32,
                ram: u64,
                ephemeral_disk_size: u64,
            }
            let res: Resources = arg(r, 0, "vm_resources")?;
            value(cpi.calculate_vm_cloud_properties(res.cpu, res.ram, res.ephemeral_disk_size).await)
        }
        "create_disk" => {
            let vm: Option<String> = arg(r, 2, "vm_locality")?;
            value(cpi.create_disk(arg(r, 0, "size")?, &arg::<Value>(r, 1, "cloud_properties")?, vm.as_deref()).await)
        }
        "delete_disk" => value(cpi.delete_disk(&arg::<String>(r, 0, "disk_cid")?).await),
        "has_disk" => value(cpi.has_disk(&arg::<String>(r, 0, "disk_cid")?).await),
        "attach_disk" => {
            let hint = cpi.attach_disk(&arg::<String>(r, 0, "vm_cid")?, &arg::<String>(r, 1, "disk_cid")?).await?;
            Ok(if v2 { hint } else { Value::Null })
        }
        "detach_disk" => {
            value(cpi.detach_disk(&arg::<String>(r, 0, "vm_cid")?, &arg::<String>(r, 1, "disk_cid")?).await)
        }
        "get_disks" => value(cpi.get_disks(&arg::<String>(r, 0, "vm_cid")?).await),
        "resize_disk" => value(cpi.resize_disk(&arg::<String>(r, 0, "disk_cid")?, arg(r, 1, "new_size")?).await),
        "set_disk_metadata" => {
            value(cpi.set_disk_metadata(&arg::<String>(r, 0, "disk_cid")?, &arg(r, 1, "metadata")?).await)
        }
        "snapshot_disk" => value(cpi.snapshot_disk(&arg::<String>(r, 0, "disk_cid")?, &arg(r, 1, "metadata")?).await),
        "delete_snapshot" => value(cpi.delete_snapshot(&arg::<String>(r, 0, "snapshot_cid")?).await),
        "list_vms" => value(cpi.list_vms().await),
        "list_disks" => value(cpi.list_disks().await),
        other => unreachable!("method_name knows `{other}`"),
    }
}
