//! Releases and stemcells: `create-release`, `sync-blobs`, `upload-release`, `releases`,
//! `upload-stemcell`, `stemcells`.

use crate::{client, output, print_json, release, Cli, InputError};
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
    let t = c.upload_file("/v1/releases", &tarball).await?;
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
    let t = c.upload_file("/v1/stemcells", tarball).await?;
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
