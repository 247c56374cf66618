//! Releases and stemcells: `create-release`, `sync-blobs`, `upload-release`, `releases`,
//! `upload-stemcell`, `stemcells`, and removing them: `delete-release`, `delete-stemcell`,
//! `clean-up`.

use crate::{client, confirm, output, print_json, release, Cli, InputError};
use anyhow::Result;
use bosun_types::api::*;
use std::path::{Path, PathBuf};

pub async fn create_release(cli: &Cli, dir: &Path, version: &Option<String>, tarball: &Option<PathBuf>) -> Result<()> {
    let (path, version) = release::create_release(dir, version.as_deref(), tarball.as_deref())?;
    if cli.json {
        return print_json(&serde_json::json!({"tarball": path, "version": version}));
    }
    println!("Release version {version}\n{}", path.display());
    Ok(())
}

pub async fn sync_blobs(dir: &Path) -> Result<()> {
    let n = release::sync_blobs(dir)?;
    println!("{n} blob{} fetched", if n == 1 { "" } else { "s" });
    Ok(())
}

pub async fn upload_release(cli: &Cli, path: &Path) -> Result<()> {
    let c = client(cli)?;
    // A directory is made into a tarball first (kept until the upload is done).
    let work = tempfile::tempdir()?;
    let tarball = if path.is_dir() {
        release::sync_blobs(path)?;
        let (p, version) = release::create_release(path, None, Some(&work.path().join("release.tgz")))?;
        eprintln!("Created release {}/{version}", release::release_name(path)?);
        p
    } else {
        path.to_path_buf()
    };
    let t = c.upload_file("/v1/releases", &tarball, !cli.json).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}

pub async fn releases(cli: &Cli) -> Result<()> {
    let v: Vec<ReleaseView> = client(cli)?.get("/v1/releases").await?;
    if cli.json {
        return print_json(&v);
    }
    let rows = v
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                format!("{}{}", r.version, if r.deployments.is_empty() { "" } else { "*" }),
                r.commit_hash.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print!("{}", output::table(&["Name", "Version", "Commit Hash"], &rows));
    println!("(*) in use");
    Ok(())
}

pub async fn upload_stemcell(cli: &Cli, tarball: &Path) -> Result<()> {
    if !tarball.is_file() {
        return Err(InputError::new(format!("{}: no such stemcell tarball", tarball.display())).into());
    }
    let c = client(cli)?;
    let t = c.upload_file("/v1/stemcells", tarball, !cli.json).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}

pub async fn stemcells(cli: &Cli) -> Result<()> {
    let v: Vec<StemcellView> = client(cli)?.get("/v1/stemcells").await?;
    if cli.json {
        return print_json(&v);
    }
    let rows = v
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("{}{}", s.version, if s.deployments.is_empty() { "" } else { "*" }),
                s.operating_system.clone(),
                s.cid.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print!("{}", output::table(&["Name", "Version", "OS", "CID"], &rows));
    println!("(*) in use");
    Ok(())
}

/// `NAME/VERSION` (or `OS/VERSION`), each part a plain name.
fn split_pair<'a>(what: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    s.split_once('/')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
        .ok_or_else(|| InputError::new(format!("{what} `{s}`: write NAME/VERSION")).into())
}

pub async fn export_release(cli: &Cli, release: &str, stemcell: &str, dir: &Path, jobs: &[String]) -> Result<()> {
    let (name, version) = split_pair("release", release)?;
    let (os, stemcell_version) = split_pair("stemcell", stemcell)?;
    if !dir.is_dir() {
        return Err(InputError::new(format!("--dir {}: no such directory", dir.display())).into());
    }
    let out = dir.join(format!("{name}-{version}-{os}-{stemcell_version}.tgz"));
    let c = client(cli)?;
    for j in jobs {
        bosun_types::manifest::check_name("--job", "", j).map_err(|e| InputError::new(e.to_string()))?;
    }
    let mut path = format!(
        "/v1/releases/{}/{}/export?stemcell={}/{}",
        url_part(name),
        url_part(version),
        url_part(os),
        url_part(stemcell_version)
    );
    if !jobs.is_empty() {
        path.push_str(&format!("&jobs={}", jobs.join(",")));
    }
    let bytes = c.download(&path, &out).await?;
    if cli.json {
        return print_json(&serde_json::json!({"tarball": out, "bytes": bytes}));
    }
    println!("{}", out.display());
    Ok(())
}

pub async fn inspect_release(cli: &Cli, release: &str) -> Result<()> {
    let (name, version) = split_pair("release", release)?;
    let v: ReleaseInspectView =
        client(cli)?.get(&format!("/v1/releases/{}/{}", url_part(name), url_part(version))).await?;
    if cli.json {
        return print_json(&v);
    }
    let jobs: Vec<Vec<String>> =
        v.jobs.iter().map(|j| vec![j.name.clone(), j.fingerprint.clone(), j.packages.join(", ")]).collect();
    println!("Release {}/{} ({})\n", v.name, v.version, v.commit_hash);
    print!("{}", output::table(&["Job", "Fingerprint", "Packages"], &jobs));
    println!();
    let packages: Vec<Vec<String>> = v
        .packages
        .iter()
        .map(|p| {
            let compiled =
                if p.compiled_for.is_empty() { "(source only)".to_string() } else { p.compiled_for.join(", ") };
            vec![
                p.name.clone(),
                p.fingerprint.clone(),
                p.dependencies.join(", "),
                format!("{compiled}{}", if p.compiled_only { " (no source)" } else { "" }),
            ]
        })
        .collect();
    print!("{}", output::table(&["Package", "Fingerprint", "Dependencies", "Compiled for"], &packages));
    Ok(())
}

/// Path segments an operator typed, checked before they go into a URL.
fn name_and_version(what: &str, text: &str, version_required: bool) -> Result<(String, Option<String>)> {
    let (name, version) = match text.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (text, None),
    };
    let ok = super::is_path_segment;
    if !ok(name) || version.is_some_and(|v| !ok(v)) || (version_required && version.is_none()) {
        let form = if version_required { "NAME/VERSION" } else { "NAME or NAME/VERSION" };
        return Err(InputError::new(format!("{what} `{text}`: write it as {form}")).into());
    }
    Ok((name.to_string(), version.map(str::to_string)))
}

pub async fn delete_stemcell(cli: &Cli, stemcell: &str) -> Result<()> {
    let (name, version) = name_and_version("stemcell", stemcell, true)?;
    let version = version.expect("required above");
    eprintln!("Deleting stemcell {name}/{version} and its image in the cloud.");
    if !confirm(cli)? {
        return Err(InputError::new("delete cancelled").into());
    }
    let c = client(cli)?;
    let t: TaskCreated = c.delete(&format!("/v1/stemcells/{name}/{version}")).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}

pub async fn delete_release(cli: &Cli, release: &str) -> Result<()> {
    let (name, version) = name_and_version("release", release, false)?;
    let path = match &version {
        Some(v) => format!("/v1/releases/{name}?version={}", v.replace('+', "%2B")),
        None => format!("/v1/releases/{name}"),
    };
    eprintln!("Deleting release {release}{}.", if version.is_none() { " (every version)" } else { "" });
    if !confirm(cli)? {
        return Err(InputError::new("delete cancelled").into());
    }
    let c = client(cli)?;
    let t: TaskCreated = c.delete(&path).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}

pub async fn clean_up(cli: &Cli, all: bool) -> Result<()> {
    eprintln!(
        "Deleting releases and stemcells no deployment needs{}.",
        if all { ", and every orphaned disk" } else { " (the newest two versions of each stay)" }
    );
    if !confirm(cli)? {
        return Err(InputError::new("clean-up cancelled").into());
    }
    let c = client(cli)?;
    let t: TaskCreated = c.post_json("/v1/clean-up", &serde_json::json!({ "all": all })).await?;
    c.follow_task(t.task_id, cli.json).await.map(|_| ())
}
