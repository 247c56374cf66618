//! The envelope of BOSH's external CPI protocol and its error types, shared by both directions:
//! a request `{method, arguments, context, api_version}` on the CPI's stdin, a response
//! `{result, error: {type, message, ok_to_retry}, log}` on its stdout (BOSH's `cpi-api-rpc`,
//! `external_cpi.rb`; cpi-go's `rpc/json_dispatcher.go`).

use bosun_cpi::CpiError;
use bosun_types::cloud_config::NetworkType;
use bosun_types::protocol::NetworkSettings;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The CPI API version both sides speak (create_vm answers `[cid, networks]`, attach_disk a hint).
pub const API_VERSION: u32 = 2;

/// Every method of the protocol (BOSH's catalogue) plus bosun's two listing extensions.
pub const METHODS: &[&str] = &[
    "info",
    "create_stemcell",
    "delete_stemcell",
    "create_vm",
    "delete_vm",
    "has_vm",
    "reboot_vm",
    "set_vm_metadata",
    "calculate_vm_cloud_properties",
    "create_disk",
    "delete_disk",
    "has_disk",
    "attach_disk",
    "detach_disk",
    "get_disks",
    "resize_disk",
    "set_disk_metadata",
    "snapshot_disk",
    "delete_snapshot",
    "list_vms",
    "list_disks",
];

/// The static name of a known method (the error type carries a `&'static str`).
pub fn method_name(method: &str) -> Option<&'static str> {
    METHODS.iter().copied().find(|m| *m == method)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub method: String,
    #[serde(default)]
    pub arguments: Vec<Value>,
    #[serde(default)]
    pub context: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub result: Value,
    pub error: Option<ResponseError>,
    /// Appended to the task's CPI log by BOSH's director; mandatory in the schema.
    pub log: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResponseError {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub ok_to_retry: bool,
}

/// A `networks` hash as BOSH's directors and CPIs write it, read into bosun's settings: keys
/// bosun does not use (`mac`, `prefix`, `alias`, `resolved`, `use_dhcp`, …) are ignored rather
/// than refused (bosun's own protocol refuses them), and a dynamic network has no `ip` or
/// `netmask` until the cloud gives it one.
pub fn networks_from_wire(v: Value) -> Result<BTreeMap<String, NetworkSettings>, serde_json::Error> {
    #[derive(Deserialize)]
    struct WireNetwork {
        #[serde(rename = "type", default)]
        kind: NetworkType,
        #[serde(default)]
        ip: String,
        #[serde(default)]
        netmask: String,
        #[serde(default)]
        gateway: Option<String>,
        #[serde(default)]
        default: Vec<String>,
        #[serde(default)]
        dns: Vec<String>,
        #[serde(default)]
        cloud_properties: Value,
    }
    let wire: BTreeMap<String, WireNetwork> = serde_json::from_value(v)?;
    Ok(wire
        .into_iter()
        .map(|(name, n)| {
            let settings = NetworkSettings {
                kind: n.kind,
                ip: n.ip,
                netmask: n.netmask,
                gateway: n.gateway,
                default: n.default,
                dns: n.dns,
                cloud_properties: n.cloud_properties,
            };
            (name, settings)
        })
        .collect())
}

/// BOSH's error type strings (`bosh-director/lib/clouds/errors.rb`).
pub mod types {
    pub const CPI_ERROR: &str = "Bosh::Clouds::CpiError";
    pub const NOT_SUPPORTED: &str = "Bosh::Clouds::NotSupported";
    pub const NOT_IMPLEMENTED: &str = "Bosh::Clouds::NotImplemented";
    pub const CLOUD_ERROR: &str = "Bosh::Clouds::CloudError";
    pub const VM_NOT_FOUND: &str = "Bosh::Clouds::VMNotFound";
    pub const NO_DISK_SPACE: &str = "Bosh::Clouds::NoDiskSpace";
    pub const DISK_NOT_ATTACHED: &str = "Bosh::Clouds::DiskNotAttached";
    pub const DISK_NOT_FOUND: &str = "Bosh::Clouds::DiskNotFound";
    pub const VM_CREATION_FAILED: &str = "Bosh::Clouds::VMCreationFailed";
}

impl Response {
    pub fn ok(result: Value) -> Self {
        Response { result, error: None, log: String::new() }
    }

    pub fn failed(e: &CpiError) -> Self {
        Response { result: Value::Null, error: Some(ResponseError::from_cpi_error(e)), log: String::new() }
    }
}

impl ResponseError {
    /// How a bosun CPI's error travels: its BOSH type, its message, and whether the director
    /// may try again (only BOSH's retriable family carries it).
    pub fn from_cpi_error(e: &CpiError) -> Self {
        let (kind, ok_to_retry) = match e {
            CpiError::VmNotFound(_) => (types::VM_NOT_FOUND, false),
            CpiError::DiskNotFound(_) => (types::DISK_NOT_FOUND, false),
            CpiError::DiskNotAttached { .. } => (types::DISK_NOT_ATTACHED, false),
            CpiError::VmCreationFailed { ok_to_retry, .. } => (types::VM_CREATION_FAILED, *ok_to_retry),
            CpiError::NoDiskSpace { ok_to_retry, .. } => (types::NO_DISK_SPACE, *ok_to_retry),
            CpiError::NotImplemented(_) => (types::NOT_IMPLEMENTED, false),
            CpiError::NotSupported(_) => (types::NOT_SUPPORTED, false),
            CpiError::InvalidArguments(_) => (types::CPI_ERROR, false),
            // A missing stemcell has no type of its own in BOSH: a cloud error naming it.
            CpiError::StemcellNotFound(_) | CpiError::Cloud(_) => (types::CLOUD_ERROR, false),
            _ => (types::CLOUD_ERROR, false),
        };
        let message = match e {
            // The bare reason, as BOSH's CPIs give it (the type already says what it is).
            CpiError::VmCreationFailed { message, .. } | CpiError::NoDiskSpace { message, .. } => message.clone(),
            CpiError::NotSupported(m) | CpiError::InvalidArguments(m) | CpiError::Cloud(m) => m.clone(),
            other => other.to_string(),
        };
        ResponseError { kind: kind.to_string(), message, ok_to_retry }
    }

    /// The error a response names, for the call `method(arguments)` that got it: the cids the
    /// not-found and not-attached types speak of are the call's own.
    pub fn to_cpi_error(&self, method: &str, arguments: &[Value]) -> CpiError {
        let arg = |i: usize| arguments.get(i).and_then(Value::as_str).unwrap_or_default().to_string();
        let (vm, disk) = match method {
            "attach_disk" | "detach_disk" => (arg(0), arg(1)),
            "delete_disk" | "has_disk" | "resize_disk" | "set_disk_metadata" | "snapshot_disk" => {
                (String::new(), arg(0))
            }
            _ => (arg(0), String::new()),
        };
        let not_implemented = || CpiError::NotImplemented(method_name(method).unwrap_or("an unknown method"));
        match self.kind.as_str() {
            types::VM_NOT_FOUND => CpiError::VmNotFound(if vm.is_empty() { self.message.clone() } else { vm }),
            types::DISK_NOT_FOUND => CpiError::DiskNotFound(if disk.is_empty() { self.message.clone() } else { disk }),
            types::DISK_NOT_ATTACHED => CpiError::DiskNotAttached { vm_cid: vm, disk_cid: disk },
            types::VM_CREATION_FAILED => {
                CpiError::VmCreationFailed { message: self.message.clone(), ok_to_retry: self.ok_to_retry }
            }
            types::NO_DISK_SPACE => {
                CpiError::NoDiskSpace { message: self.message.clone(), ok_to_retry: self.ok_to_retry }
            }
            types::NOT_IMPLEMENTED => not_implemented(),
            types::NOT_SUPPORTED => CpiError::NotSupported(self.message.clone()),
            types::CPI_ERROR => CpiError::InvalidArguments(self.message.clone()),
            // BOSH's legacy spellings of "no such method" (`external_cpi.rb`).
            "InvalidCall" if self.message.starts_with("Method is not known, got") => not_implemented(),
            types::CLOUD_ERROR if self.message.starts_with("Invalid Method:") => not_implemented(),
            types::CLOUD_ERROR => CpiError::Cloud(self.message.clone()),
            other => CpiError::Cloud(format!("{other}: {}", self.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_type_goes_both_ways() {
        let vm_call = ("delete_vm", vec![Value::from("vm-1")]);
        let attach = ("attach_disk", vec![Value::from("vm-1"), Value::from("disk-1")]);
        let delete_disk = ("delete_disk", vec![Value::from("disk-1")]);
        let create = ("create_vm", vec![]);
        // (error, its BOSH type, ok_to_retry, the call that got it)
        type Case<'a> = (CpiError, &'a str, bool, (&'a str, Vec<Value>));
        let cases: Vec<Case> = vec![
            (CpiError::VmNotFound("vm-1".into()), types::VM_NOT_FOUND, false, vm_call.clone()),
            (CpiError::DiskNotFound("disk-1".into()), types::DISK_NOT_FOUND, false, delete_disk.clone()),
            (
                CpiError::DiskNotAttached { vm_cid: "vm-1".into(), disk_cid: "disk-1".into() },
                types::DISK_NOT_ATTACHED,
                false,
                attach.clone(),
            ),
            (
                CpiError::VmCreationFailed { message: "quota".into(), ok_to_retry: true },
                types::VM_CREATION_FAILED,
                true,
                create.clone(),
            ),
            (
                CpiError::NoDiskSpace { message: "volume full".into(), ok_to_retry: true },
                types::NO_DISK_SPACE,
                true,
                create.clone(),
            ),
            (CpiError::NotImplemented("delete_vm"), types::NOT_IMPLEMENTED, false, vm_call.clone()),
            (CpiError::NotSupported("shrinking".into()), types::NOT_SUPPORTED, false, vm_call.clone()),
            (CpiError::InvalidArguments("bad size".into()), types::CPI_ERROR, false, vm_call.clone()),
            (CpiError::Cloud("503".into()), types::CLOUD_ERROR, false, vm_call.clone()),
        ];
        for (error, kind, retry, (method, args)) in cases {
            let wire = ResponseError::from_cpi_error(&error);
            assert_eq!((wire.kind.as_str(), wire.ok_to_retry), (kind, retry), "{error:?}");
            let json =
                serde_json::to_value(Response { result: Value::Null, error: Some(wire), log: String::new() }).unwrap();
            assert_eq!(json["error"]["type"], kind);
            let back: Response = serde_json::from_value(json).unwrap();
            assert_eq!(back.error.unwrap().to_cpi_error(method, &args), error);
        }
    }

    #[test]
    fn legacy_and_unknown_error_types() {
        let e = |kind: &str, message: &str| ResponseError {
            kind: kind.into(),
            message: message.into(),
            ok_to_retry: false,
        };
        assert_eq!(
            e("InvalidCall", "Method is not known, got `resize_disk'").to_cpi_error("resize_disk", &[]),
            CpiError::NotImplemented("resize_disk")
        );
        assert_eq!(
            e(types::CLOUD_ERROR, "Invalid Method: snapshot_disk").to_cpi_error("snapshot_disk", &[]),
            CpiError::NotImplemented("snapshot_disk")
        );
        assert_eq!(
            e("Bosh::Clouds::Surprise", "what").to_cpi_error("has_vm", &[]),
            CpiError::Cloud("Bosh::Clouds::Surprise: what".into())
        );
        // A stemcell that is gone is a cloud error naming it.
        let wire = ResponseError::from_cpi_error(&CpiError::StemcellNotFound("ami-1".into()));
        assert_eq!((wire.kind.as_str(), wire.message.as_str()), (types::CLOUD_ERROR, "stemcell `ami-1` not found"));
    }

    #[test]
    fn the_envelope_has_bosh_s_keys() {
        let r: Request = serde_json::from_str(
            r#"{"method":"has_vm","arguments":["vm-1"],"context":{"director_uuid":"d","request_id":"cpi-123456"},"api_version":2}"#,
        )
        .unwrap();
        assert_eq!(
            (r.method.as_str(), r.api_version, r.context["request_id"].as_str()),
            ("has_vm", Some(2), Some("cpi-123456"))
        );
        // `info` is sent before a version is agreed: no api_version key at all.
        let info = Request { method: "info".into(), arguments: vec![], context: Default::default(), api_version: None };
        assert_eq!(serde_json::to_string(&info).unwrap(), r#"{"method":"info","arguments":[],"context":{}}"#);
        let ok = serde_json::to_string(&Response::ok(Value::Bool(true))).unwrap();
        assert_eq!(ok, r#"{"result":true,"error":null,"log":""}"#);
    }
}
