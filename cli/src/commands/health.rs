//! Resurrection switches and rules, and the cloud check (`cck`).

use crate::{client, deployment, output, print_json, Cli, InputError};
use anyhow::Result;
use bosun_types::api::*;
use std::path::Path;

pub async fn update_resurrection(cli: &Cli, state: &str) -> Result<()> {
    let req = ResurrectionSwitch { deployment: cli.deployment.clone(), enabled: state == "on" };
    let _: serde_json::Value = client(cli)?.put_json("/v1/resurrection", &req).await?;
    eprintln!(
        "Resurrection {state} for {}",
        cli.deployment.as_deref().map(|d| format!("deployment '{d}'")).unwrap_or_else(|| "the director".into())
    );
    Ok(())
}

pub async fn update_resurrection_config(cli: &Cli, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| InputError::new(format!("{}: {e}", file.display())))?;
    bosun_types::yaml::parse_value(&file.display().to_string(), &text).map_err(|e| InputError::new(e.to_string()))?;
    let v: serde_json::Value = client(cli)?.put_text("/v1/resurrection/config", text).await?;
    if cli.json {
        return print_json(&v);
    }
    eprintln!("Resurrection config updated ({} rule(s))", v["rules"].as_array().map(Vec::len).unwrap_or(0));
    Ok(())
}

/// Lists a deployment's problems, then resolves them: `--report` stops after the list, `--auto`
/// takes the defaults, `--resolution KIND=RES` picks per kind, otherwise each is asked for.
pub async fn cck(cli: &Cli, auto: bool, report: bool, resolution: &[String]) -> Result<()> {
    let d = deployment(cli)?;
    let c = client(cli)?;
    let mut by_kind: std::collections::BTreeMap<ProblemKind, Resolution> = std::collections::BTreeMap::new();
    for r in resolution {
        let (k, v) =
            r.split_once('=').ok_or_else(|| InputError::new(format!("--resolution `{r}`: write KIND=RESOLUTION")))?;
        let kind = k.parse().map_err(|e| InputError::new(format!("--resolution `{r}`: problem type {e}")))?;
        let res = v.parse().map_err(|e| InputError::new(format!("--resolution `{r}`: resolution {e}")))?;
        by_kind.insert(kind, res);
    }
    let names = |rs: &[Resolution]| rs.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
    let problems: Vec<ProblemView> = c.get(&format!("/v1/deployments/{d}/problems")).await?;
    if cli.json && report {
        print_json(&problems)?;
    } else if cli.json {
        // As deploy --json prints its plan: the problems as one object, then (once resolved)
        // the task's events, one per line.
        println!("{}", serde_json::to_string(&problems)?);
    } else {
        let rows: Vec<Vec<String>> = problems
            .iter()
            .enumerate()
            .map(|(n, p)| vec![(n + 1).to_string(), p.kind.to_string(), p.description.clone(), names(&p.resolutions)])
            .collect();
        print!("{}", output::table(&["#", "Type", "Description", "Resolutions (first: default)"], &rows));
    }
    if report {
        if problems.is_empty() {
            return Ok(());
        }
        return Err(anyhow::anyhow!("{} problem(s) found", problems.len()));
    }
    if problems.is_empty() {
        if !cli.json {
            println!("No problems.");
        }
        return Ok(());
    }
    let mut picks = std::collections::BTreeMap::new();
    for p in &problems {
        let choice = if let Some(r) = by_kind.get(&p.kind) {
            if !p.resolutions.contains(r) {
                return Err(InputError::new(format!(
                    "--resolution {}={r}: choose from {}",
                    p.kind,
                    names(&p.resolutions)
                ))
                .into());
            }
            *r
        } else if auto || cli.non_interactive {
            p.resolutions[0]
        } else {
            ask_resolution(p)?
        };
        picks.insert(p.id.clone(), choice);
    }
    let t: TaskCreated =
        c.post_json(&format!("/v1/deployments/{d}/problems/resolve"), &ResolveRequest { resolutions: picks }).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}

pub fn ask_resolution(p: &ProblemView) -> Result<Resolution> {
    use std::io::{BufRead, Write};
    eprintln!("\n{}", p.description);
    for (n, r) in p.resolutions.iter().enumerate() {
        eprintln!("  {}: {r}", n + 1);
    }
    eprint!("Resolution [1]: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let line = line.trim();
    if line.is_empty() {
        return Ok(p.resolutions[0]);
    }
    line.parse::<usize>()
        .ok()
        .and_then(|n| p.resolutions.get(n.wrapping_sub(1)))
        .cloned()
        .ok_or_else(|| InputError::new(format!("`{line}` is not one of 1-{}", p.resolutions.len())).into())
}
