//! EC2's error codes as BOSH's CPI errors, so the director applies its tolerance rules (a VM or
//! disk that is gone, a creation worth retrying elsewhere).

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use bosun_cpi::CpiError;

/// What the failed call was about: the cids a not-found error names.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    Vm(&'a str),
    Disk(&'a str),
    Stemcell(&'a str),
    /// A disk attached to (or detached from) a VM: either may be the one missing.
    Attachment {
        vm: &'a str,
        disk: &'a str,
    },
    /// A new instance from this AMI.
    NewVm {
        stemcell: &'a str,
    },
    Other,
}

/// The EC2 error code of a failed call (`None` when it never got an answer).
pub(crate) fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    e.code()
}

pub(crate) fn classify<E, R>(e: &SdkError<E, R>, what: &str, subject: Subject<'_>) -> CpiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let Some(code) = e.code() else {
        // No answer from EC2 (a connection, timeout or parse failure after the SDK's retries).
        return CpiError::Cloud(format!("{what}: {}", DisplayErrorContext(e)));
    };
    let message = e.message().unwrap_or("");
    from_code(code, message, what, subject)
}

pub(crate) fn from_code(code: &str, message: &str, what: &str, subject: Subject<'_>) -> CpiError {
    let vm = match subject {
        Subject::Vm(v) | Subject::Attachment { vm: v, .. } => Some(v),
        _ => None,
    };
    let disk = match subject {
        Subject::Disk(d) | Subject::Attachment { disk: d, .. } => Some(d),
        _ => None,
    };
    let stemcell = match subject {
        Subject::Stemcell(s) | Subject::NewVm { stemcell: s } => Some(s),
        _ => None,
    };
    match (code, vm, disk, stemcell) {
        ("InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed", Some(vm), _, _) => {
            CpiError::VmNotFound(vm.into())
        }
        ("InvalidVolume.NotFound" | "InvalidVolumeID.Malformed" | "InvalidVolume.Malformed", _, Some(disk), _) => {
            CpiError::DiskNotFound(disk.into())
        }
        ("InvalidAMIID.NotFound" | "InvalidAMIID.Malformed" | "InvalidAMIID.Unavailable", _, _, Some(s)) => {
            CpiError::StemcellNotFound(s.into())
        }
        ("VolumeLimitExceeded" | "MaxIOPSLimitExceeded", _, _, _) => {
            CpiError::NoDiskSpace { message: format!("{what}: {code}: {message}"), ok_to_retry: false }
        }
        // Capacity that may be there on the next try (or in another zone), and an address whose
        // last holder's interface is still being deleted.
        (
            "InsufficientInstanceCapacity"
            | "InstanceLimitExceeded"
            | "InsufficientFreeAddressesInSubnet"
            | "InvalidIPAddress.InUse"
            | "Unavailable",
            _,
            _,
            _,
        ) if matches!(subject, Subject::NewVm { .. }) => {
            CpiError::VmCreationFailed { message: format!("{what}: {code}: {message}"), ok_to_retry: true }
        }
        (_, _, _, _) if matches!(subject, Subject::NewVm { .. }) => {
            CpiError::VmCreationFailed { message: format!("{what}: {code}: {message}"), ok_to_retry: false }
        }
        _ => CpiError::Cloud(format!("{what}: {code}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_codes_become_bosh_errors_naming_the_call_s_cids() {
        let attach = Subject::Attachment { vm: "i-1", disk: "vol-1" };
        assert_eq!(from_code("InvalidInstanceID.NotFound", "", "x", attach), CpiError::VmNotFound("i-1".into()));
        assert_eq!(from_code("InvalidVolume.NotFound", "", "x", attach), CpiError::DiskNotFound("vol-1".into()));
        assert_eq!(
            from_code("InvalidAMIID.Malformed", "", "x", Subject::NewVm { stemcell: "sc-1" }),
            CpiError::StemcellNotFound("sc-1".into())
        );
        let capacity =
            from_code("InsufficientInstanceCapacity", "none left", "starting", Subject::NewVm { stemcell: "ami-1" });
        assert_eq!(
            capacity,
            CpiError::VmCreationFailed {
                message: "starting: InsufficientInstanceCapacity: none left".into(),
                ok_to_retry: true
            }
        );
        assert!(matches!(
            from_code("InvalidParameterValue", "bad type", "starting", Subject::NewVm { stemcell: "ami-1" }),
            CpiError::VmCreationFailed { ok_to_retry: false, .. }
        ));
        assert!(matches!(
            from_code("VolumeLimitExceeded", "", "creating", Subject::Other),
            CpiError::NoDiskSpace { .. }
        ));
        // A not-found of something the call did not name is a cloud error, not a tolerated one.
        assert!(matches!(from_code("InvalidVolume.NotFound", "", "x", Subject::Vm("i-1")), CpiError::Cloud(_)));
        assert_eq!(
            from_code("UnauthorizedOperation", "no", "tagging", Subject::Vm("i-1")),
            CpiError::Cloud("tagging: UnauthorizedOperation: no".into())
        );
    }
}
