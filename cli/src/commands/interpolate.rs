//! `interpolate`: ops-files and variables applied to a document, printed.

use crate::{manifest, InputError};
use anyhow::Result;
use bosun_types::gopatch::{find, Pointer};
use std::path::Path;

pub async fn interpolate(
    file: &Path,
    vars: &manifest::VarArgs,
    var_errs: bool,
    var_errs_unused: bool,
    path: &Option<String>,
) -> Result<()> {
    let unanswered = if var_errs { manifest::Unanswered::Error } else { manifest::Unanswered::Leave };
    let doc = manifest::load_checking_use(file, vars, unanswered, var_errs_unused)?;
    let out = match path {
        None => doc,
        // Any go-patch pointer, as bosh takes it (`/instance_groups/name=etcd/jobs/0`, `-1`, `?`).
        Some(p) => {
            let pointer = Pointer::parse(p).map_err(|e| InputError::new(format!("--path {p}: {e}")))?;
            find(&doc, &pointer).map_err(|e| InputError::new(format!("--path {p}: {e}")))?
        }
    };
    match out {
        // A string is printed as it is (bosh prints a certificate or password ready to use).
        serde_yaml::Value::String(s) if path.is_some() => println!("{s}"),
        // Written as the BOSH CLI writes it (sorted keys, YAML 1.1-safe quoting).
        other => print!("{}", bosun_types::yaml_v2::to_string(&other)),
    }
    Ok(())
}
