//! `interpolate`: ops-files and variables applied to a document, printed.

use crate::{manifest, InputError};
use anyhow::Result;
use std::path::Path;

pub async fn interpolate(file: &Path, vars: &manifest::VarArgs, var_errs: &bool, path: &Option<String>) -> Result<()> {
    let doc = manifest::load(file, vars, *var_errs)?;
    let out = match path {
        None => doc,
        Some(p) => {
            let mut d = doc;
            let mut cur = &mut d;
            for seg in p.trim_start_matches('/').split('/').filter(|s| !s.is_empty()) {
                cur = match cur {
                    serde_yaml::Value::Mapping(m) => {
                        m.get_mut(seg).ok_or_else(|| InputError::new(format!("--path {p}: no key `{seg}`")))?
                    }
                    serde_yaml::Value::Sequence(s) => {
                        let i: usize =
                            seg.parse().map_err(|_| InputError::new(format!("--path {p}: `{seg}` is not an index")))?;
                        s.get_mut(i)
                            .ok_or_else(|| InputError::new(format!("--path {p}: index {i} is out of bounds")))?
                    }
                    _ => return Err(InputError::new(format!("--path {p}: `{seg}` goes below a scalar")).into()),
                };
            }
            cur.clone()
        }
    };
    print!("{}", serde_yaml::to_string(&out)?);
    Ok(())
}
