//! The CPIs this binary was built with. Each lives in a crate of its own and is compiled in only
//! when its cargo feature is on (`local` and `external` always; `docker` by default; `aws` when
//! asked for: `cargo build --features aws`), so a cloud SDK never lands in a build that does not
//! ask for it.

use crate::InputError;
use anyhow::{Context, Result};
use bosun_cpi::Cpi;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The names `bosun director --cpi` accepts in this build.
pub fn available() -> Vec<&'static str> {
    let mut names = vec!["local", "external"];
    if cfg!(feature = "docker") {
        names.push("docker");
    }
    if cfg!(feature = "aws") {
        names.push("aws");
    }
    names
}

/// Where the CPI named `name` keeps its own state (the local CPI: its VMs' filesystems) for the
/// director whose state is in `state_dir`: beside it, `STATE-cpi-NAME`, so the director's state
/// directory holds only the director's own (owner-only) files. A CPI directory inside the state
/// directory, where earlier directors kept it, is used while it exists: its VMs live there.
pub fn cpi_dir(name: &str, state_dir: &Path) -> PathBuf {
    let inside = state_dir.join(format!("cpi-{name}"));
    if inside.exists() {
        return inside;
    }
    // Without a trailing `/`, which would put it inside.
    let mut beside = state_dir.components().collect::<PathBuf>().into_os_string();
    beside.push(format!("-cpi-{name}"));
    PathBuf::from(beside)
}

/// Opens the CPI named `name`, its state in [`cpi_dir`], with its configuration file when one is
/// given.
pub async fn open(name: &str, config: Option<&Path>, state_dir: &Path) -> Result<Arc<dyn Cpi>> {
    open_in(name, config, cpi_dir(name, state_dir)).await
}

/// Opens the CPI named `name` with its own state in `dir`.
async fn open_in(name: &str, config: Option<&Path>, dir: PathBuf) -> Result<Arc<dyn Cpi>> {
    match name {
        "local" => Ok(Arc::new(
            bosun_cpi_local::LocalCpi::new(dir.clone())
                .with_context(|| format!("preparing the local CPI in {}", dir.display()))?,
        )),
        "external" => {
            let Some(f) = config else {
                return Err(InputError::new(
                    "--cpi external needs --cpi-config FILE (exec_path, args, properties, env, timeout_seconds)",
                )
                .into());
            };
            let config: bosun_cpi_external::ExternalCpiConfig = read_config(f)?;
            Ok(Arc::new(bosun_cpi_external::ExternalCpi::new(config).map_err(|e| InputError::new(e.to_string()))?))
        }
        #[cfg(feature = "docker")]
        "docker" => {
            let config: bosun_cpi_docker::DockerCpiConfig = match config {
                Some(f) => read_config(f)?,
                None => Default::default(),
            };
            Ok(Arc::new(bosun_cpi_docker::DockerCpi::connect(config, dir).await.context("starting the Docker CPI")?))
        }
        #[cfg(feature = "aws")]
        "aws" => {
            let Some(f) = config else {
                return Err(InputError::new("--cpi aws needs --cpi-config FILE (region, credentials, …)").into());
            };
            let config: bosun_cpi_aws::AwsCpiConfig = read_config(f)?;
            let _ = dir;
            Ok(Arc::new(bosun_cpi_aws::AwsCpi::connect(config).await.map_err(|e| InputError::new(e.to_string()))?))
        }
        // A CPI of bosun's that this build left out.
        other if ["aws", "docker"].contains(&other) => Err(InputError::new(format!(
            "this bosun was built without the {name} CPI (cargo build --features {name}); available: {}",
            available().join(", ")
        ))
        .into()),
        other => {
            let _ = config;
            Err(InputError::new(format!("unknown CPI `{other}` (available: {})", available().join(", "))).into())
        }
    }
}

fn read_config<T: serde::de::DeserializeOwned>(f: &Path) -> Result<T> {
    let text = std::fs::read_to_string(f).map_err(|e| InputError::new(format!("{}: {e}", f.display())))?;
    Ok(bosun_types::yaml::from_str(&f.display().to_string(), &text).map_err(|e| InputError::new(e.to_string()))?)
}

/// `bosun cpi NAME`: answers the one request on stdin with the CPI named, over BOSH's external
/// CPI protocol (a BOSH director's `bin/cpi` can run this). The response goes to stdout, logs to
/// stderr; the exit code is 0 whenever a response was written, as BOSH reads only the response.
pub async fn serve_one(name: &str, config: Option<&Path>, dir: &Path) -> Result<()> {
    bosun_cpi_external::serve::answer_stdin(async {
        match open_in(name, config, dir.to_path_buf()).await {
            Ok(cpi) => Ok(cpi),
            Err(e) => Err(bosun_cpi::CpiError::Cloud(format!("{e:#}"))),
        }
    })
    .await
    .context("answering the CPI request")
}
