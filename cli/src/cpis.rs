//! The CPIs this binary was built with. Each lives in a crate of its own and is compiled in only
//! when its cargo feature is on (`local` always; `docker` by default), so a cloud SDK never lands
//! in a build that does not ask for it.

use crate::InputError;
use anyhow::{Context, Result};
use bosun_cpi::Cpi;
use std::path::Path;
use std::sync::Arc;

/// The names `bosun director --cpi` accepts in this build.
pub fn available() -> Vec<&'static str> {
    let mut names = vec!["local"];
    if cfg!(feature = "docker") {
        names.push("docker");
    }
    names
}

/// Opens the CPI named `name`, its state under `state_dir/cpi-NAME`, with its configuration file
/// when one is given.
pub async fn open(name: &str, config: Option<&Path>, state_dir: &Path) -> Result<Arc<dyn Cpi>> {
    match name {
        "local" => Ok(Arc::new(
            bosun_cpi_local::LocalCpi::new(state_dir.join("cpi-local"))
                .with_context(|| format!("preparing the local CPI under {}", state_dir.display()))?,
        )),
        #[cfg(feature = "docker")]
        "docker" => {
            let config: bosun_cpi_docker::DockerCpiConfig = match config {
                Some(f) => read_config(f)?,
                None => Default::default(),
            };
            Ok(Arc::new(
                bosun_cpi_docker::DockerCpi::connect(config, state_dir.join("cpi-docker"))
                    .await
                    .context("starting the Docker CPI")?,
            ))
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
