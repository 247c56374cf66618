//! The CPIs this binary was built with. Each lives in a crate of its own and is compiled in only
//! when its cargo feature is on (`local` always; `docker` by default), so a cloud SDK never lands
//! in a build that does not ask for it.

use crate::InputError;
use anyhow::{Context, Result};
use bosun_cpi::Cpi;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The names `bosun director --cpi` accepts in this build.
pub fn available() -> Vec<&'static str> {
    let mut names = vec!["local"];
    if cfg!(feature = "docker") {
        names.push("docker");
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
    let dir = cpi_dir(name, state_dir);
    match name {
        "local" => Ok(Arc::new(
            bosun_cpi_local::LocalCpi::new(dir.clone())
                .with_context(|| format!("preparing the local CPI in {}", dir.display()))?,
        )),
        #[cfg(feature = "docker")]
        "docker" => {
            let config: bosun_cpi_docker::DockerCpiConfig = match config {
                Some(f) => read_config(f)?,
                None => Default::default(),
            };
            Ok(Arc::new(bosun_cpi_docker::DockerCpi::connect(config, dir).await.context("starting the Docker CPI")?))
        }
        other => {
            let _ = config;
            Err(InputError::new(format!("unknown CPI `{other}` (available: {})", available().join(", "))).into())
        }
    }
}

#[cfg(feature = "docker")]
fn read_config<T: serde::de::DeserializeOwned>(f: &Path) -> Result<T> {
    let text = std::fs::read_to_string(f).map_err(|e| InputError::new(format!("{}: {e}", f.display())))?;
    Ok(bosun_types::yaml::from_str(&f.display().to_string(), &text).map_err(|e| InputError::new(e.to_string()))?)
}
