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
    /// A variable, `name=value` (the value is YAML: `-v n=5` is a number); repeatable.
    #[arg(short = 'v', long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// A variable whose value is a file's contents, `name=path`; repeatable.
    #[arg(long = "var-file", value_name = "NAME=PATH")]
    pub var_files: Vec<String>,
    /// A YAML file of variables; repeatable (a later file wins).
    #[arg(short = 'l', long = "vars-file", value_name = "PATH")]
    pub vars_files: Vec<PathBuf>,
    /// Variables from the environment: `PREFIX_name=value` gives `name` (the value is YAML).
    #[arg(long = "vars-env", value_name = "PREFIX")]
    pub vars_env: Vec<String>,
    /// A YAML file to take variables from and to store generated ones in.
    #[arg(long = "vars-store", value_name = "PATH")]
    pub vars_store: Option<PathBuf>,
}

/// What becomes of a placeholder no variable source answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// An error listing every such variable (bosh's `--var-errs`).
    Error,
    /// Left for the director when the document declares the variable; an error otherwise (a
    /// deploy: caught here, naming where, rather than by the director).
    LeaveDeclared,
    /// Left as it is (bosh's `interpolate` without `--var-errs`).
    Leave,
}

/// A value given on the command line or in the environment: YAML, as bosh reads it (`5` is a
/// number, `yes` true, `"val"` the string val, `{}` a map); text that is not YAML stays a string.
fn yaml_value(text: &str) -> Value {
    match bosun_types::yaml_v2::parse(text) {
        Ok(parsed) if !text.is_empty() => parsed,
        _ => Value::String(text.to_string()),
    }
}

/// Every variable the command line gives, with bosh's precedence: `-v` over `--var-file` over
/// `-l` (a later file over an earlier one) over `--vars-env` over `--vars-store`.
fn given_values(args: &VarArgs, store: &BTreeMap<String, Value>) -> Result<BTreeMap<String, Value>> {
    let mut values = store.clone();
    for prefix in &args.vars_env {
        let lead = format!("{prefix}_");
        let mut env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with(&lead)).collect();
        env.sort();
        for (k, v) in env {
            values.insert(k[lead.len()..].to_string(), yaml_value(&v));
        }
    }
    for f in &args.vars_files {
        values.extend(mapping(f, &read(f, "vars file")?)?);
    }
    for kv in &args.var_files {
        let (k, path) =
            kv.split_once('=').ok_or_else(|| InputError::new(format!("--var-file `{kv}`: write it as name=path")))?;
        values.insert(k.to_string(), Value::String(read(Path::new(path), "--var-file")?));
    }
    for kv in &args.vars {
        let (k, v) = kv.split_once('=').ok_or_else(|| InputError::new(format!("-v `{kv}`: write it as name=value")))?;
        values.insert(k.to_string(), yaml_value(v));
    }
    Ok(values)
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

/// Reads a document, applies ops-files and variables; `unanswered` says what becomes of a
/// placeholder no source answers.
pub fn load(path: &Path, args: &VarArgs, unanswered: Unanswered) -> Result<Value> {
    load_checking_use(path, args, unanswered, false)
}

/// [`load`]; with `expect_all_used`, also an error naming every variable given that the document
/// neither refers to nor defines with a type (bosh's `--var-errs-unused`).
pub fn load_checking_use(path: &Path, args: &VarArgs, unanswered: Unanswered, expect_all_used: bool) -> Result<Value> {
    let name = path.display().to_string();
    let text = read(path, "manifest")?;
    let mut doc = bosun_types::yaml::parse_value(&name, &text).map_err(|e| InputError::new(e.to_string()))?;
    for ops_path in &args.ops_files {
        let ops_name = ops_path.display().to_string();
        let ops = bosun_types::gopatch::parse_ops(&ops_name, &read(ops_path, "ops-file")?)
            .map_err(|e| InputError::new(e.to_string()))?;
        bosun_types::gopatch::apply_ops(&ops_name, &mut doc, &ops).map_err(|e| InputError::new(e.to_string()))?;
    }
    let mut store = BTreeMap::new();
    if let Some(p) = &args.vars_store {
        if p.exists() {
            store = mapping(p, &read(p, "vars store")?)?;
        }
    }
    let mut values = given_values(args, &store)?;
    let declared: Vec<VariableDefinition> = match doc.get("variables") {
        Some(v) => {
            serde_yaml::from_value(v.clone()).map_err(|e| InputError::new(format!("{name}: /variables: {e}")))?
        }
        None => vec![],
    };
    if let Some(cycle) = bosun_types::vars::ca_cycle(&declared) {
        return Err(InputError::new(format!(
            "{name}: /variables: certificate CAs form a cycle: {}",
            cycle.join(" → ")
        ))
        .into());
    }
    if let Some(store_path) = &args.vars_store {
        let mut generated = false;
        for def in bosun_types::vars::generation_order(&declared) {
            if values.contains_key(&def.name) || def.kind.is_empty() {
                continue;
            }
            // As bosh does: the definition's options are interpolated first; one that refers
            // to a variable nothing answers is not generated (it is missing).
            let mut def = def.clone();
            if let Some(options) = &def.options {
                let mut v: Value = serde_yaml::to_value(options)?;
                let left = bosun_types::vars::interpolate_leaving(&mut v, &|n| values.get(n).cloned())
                    .map_err(|e| InputError::new(format!("{name}: /variables/name={}/options: {e}", def.name)))?;
                if !left.is_empty() {
                    continue;
                }
                def.options = Some(serde_json::to_value(v)?);
            }
            let v = bosun_types::vars::generate(&def, &|n| values.get(n).cloned(), bosun_types::vars::Generator::Cli)
                .map_err(|e| InputError::new(format!("{name}: {e}")))?;
            values.insert(def.name.clone(), v.clone());
            store.insert(def.name.clone(), v);
            generated = true;
        }
        if generated {
            write_private(store_path, bosun_types::yaml_v2::to_string(&serde_yaml::to_value(&store)?).as_bytes())?;
        }
    }
    let declared_names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
    if expect_all_used {
        let referenced = bosun_types::vars::referenced_variables(&doc);
        let mut unused: Vec<&str> = values
            .keys()
            .map(String::as_str)
            .filter(|v| {
                !referenced.iter().any(|r| r == v) && !declared.iter().any(|d| d.name == *v && !d.kind.is_empty())
            })
            .collect();
        unused.sort();
        if !unused.is_empty() {
            return Err(InputError::new(format!("{name}: Expected to use variables: {}", unused.join("\n"))).into());
        }
    }
    let left = bosun_types::vars::interpolate_leaving(&mut doc, &|n| values.get(n).cloned())
        .map_err(|e| InputError::new(format!("{name}: {e}")))?;
    // Definitions of variables that have their values now leave the `variables` section, as
    // bosh drops them: only those left for the director stay.
    if let Some(Value::Sequence(defs)) = doc.get_mut("variables") {
        defs.retain(|d| !d.get("name").and_then(Value::as_str).is_some_and(|n| values.contains_key(n)));
    }
    match unanswered {
        Unanswered::Leave => {}
        Unanswered::Error if !left.is_empty() => {
            // As bosh says it: each name once, sorted, one per line.
            let mut names: Vec<&str> = left.iter().map(|m| m.name.as_str()).collect();
            names.sort();
            names.dedup();
            return Err(InputError::new(format!("{name}: Expected to find variables: {}", names.join("\n"))).into());
        }
        Unanswered::Error => {}
        Unanswered::LeaveDeclared => {
            let missing: Vec<_> = left.into_iter().filter(|m| !declared_names.contains(&m.name.as_str())).collect();
            if !missing.is_empty() {
                let e = bosun_types::vars::InterpolationError::Missing(missing);
                return Err(InputError::new(format!("{name}: {e}")).into());
            }
        }
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
