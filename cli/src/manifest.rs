//! The CLI side of manifests: ops-files, `((variables))` from `-v`, `--vars-file` and
//! `--vars-store` (which generates declared variables it lacks and remembers them).

use crate::InputError;
use anyhow::Result;
use bosun_types::manifest::VariableDefinition;
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct VarArgs {
    /// An ops-file to apply (go-patch); repeatable, applied in order.
    #[arg(short = 'o', long = "ops-file", value_name = "PATH")]
    pub ops_files: Vec<PathBuf>,
    /// A variable, `name=value`; repeatable.
    #[arg(short = 'v', long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// A YAML file of variables; repeatable.
    #[arg(short = 'l', long = "vars-file", value_name = "PATH")]
    pub vars_files: Vec<PathBuf>,
    /// A YAML file to take variables from and to store generated ones in.
    #[arg(long = "vars-store", value_name = "PATH")]
    pub vars_store: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| InputError::new(format!("{what} {}: {e}", path.display())).into())
}

fn mapping(path: &Path, text: &str) -> Result<BTreeMap<String, Value>> {
    let v = bosun_types::yaml::parse_value(&path.display().to_string(), text)
        .map_err(|e| InputError::new(e.to_string()))?;
    if v.is_null() {
        return Ok(BTreeMap::new());
    }
    serde_yaml::from_value(v)
        .map_err(|_| InputError::new(format!("{}: a vars file is a map of names to values", path.display())).into())
}

/// Reads a document, applies ops-files and variables. With `strict`, every placeholder must be
/// answered; otherwise placeholders for variables the document declares are left for the
/// director, and only undeclared, unanswered ones are errors.
pub fn load(path: &Path, args: &VarArgs, strict: bool) -> Result<Value> {
    let name = path.display().to_string();
    let text = read(path, "manifest")?;
    let mut doc = bosun_types::yaml::parse_value(&name, &text).map_err(|e| InputError::new(e.to_string()))?;
    for ops_path in &args.ops_files {
        let ops_name = ops_path.display().to_string();
        let ops = bosun_types::gopatch::parse_ops(&ops_name, &read(ops_path, "ops-file")?)
            .map_err(|e| InputError::new(e.to_string()))?;
        bosun_types::gopatch::apply_ops(&ops_name, &mut doc, &ops).map_err(|e| InputError::new(e.to_string()))?;
    }
    let mut values: BTreeMap<String, Value> = BTreeMap::new();
    let mut store = BTreeMap::new();
    if let Some(p) = &args.vars_store {
        if p.exists() {
            store = mapping(p, &read(p, "vars store")?)?;
        }
        values.extend(store.clone());
    }
    for f in &args.vars_files {
        values.extend(mapping(f, &read(f, "vars file")?)?);
    }
    for kv in &args.vars {
        let (k, v) = kv.split_once('=').ok_or_else(|| InputError::new(format!("-v `{kv}`: write it as name=value")))?;
        // As bosh does: the value is YAML (`-v n=5` is the integer 5), a plain string otherwise.
        let value = match serde_yaml::from_str::<Value>(v) {
            Ok(parsed) if !v.is_empty() => parsed,
            _ => Value::String(v.to_string()),
        };
        values.insert(k.to_string(), value);
    }
    let declared: Vec<VariableDefinition> = match doc.get("variables") {
        Some(v) => {
            serde_yaml::from_value(v.clone()).map_err(|e| InputError::new(format!("{name}: /variables: {e}")))?
        }
        None => vec![],
    };
    if let Some(store_path) = &args.vars_store {
        let mut generated = false;
        for def in bosun_types::vars::generation_order(&declared) {
            if values.contains_key(&def.name) {
                continue;
            }
            let v = bosun_types::vars::generate(def, &|n| values.get(n).cloned())
                .map_err(|e| InputError::new(format!("{name}: {e}")))?;
            values.insert(def.name.clone(), v.clone());
            store.insert(def.name.clone(), v);
            generated = true;
        }
        if generated {
            write_private(store_path, serde_yaml::to_string(&store)?.as_bytes())?;
        }
    }
    // Declared variables nobody gave a value stay as they are, `((name.key))` included: the
    // director generates them. Anything else unanswered is an error here.
    let declared_names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
    let left = bosun_types::vars::interpolate_leaving(&mut doc, &|n| values.get(n).cloned())
        .map_err(|e| InputError::new(format!("{name}: {e}")))?;
    let missing: Vec<_> = left.into_iter().filter(|m| strict || !declared_names.contains(&m.name.as_str())).collect();
    if !missing.is_empty() {
        let e = bosun_types::vars::InterpolationError::Missing(missing);
        return Err(InputError::new(format!("{name}: {e}")).into());
    }
    Ok(doc)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    Ok(())
}
