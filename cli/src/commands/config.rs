//! `update-cloud-config` and `cloud-config`.

use crate::{client, manifest, print_json, Cli, InputError};
use anyhow::Result;
use std::path::Path;

pub async fn update_cloud_config(cli: &Cli, file: &Path, vars: &manifest::VarArgs) -> Result<()> {
    let doc = manifest::load(file, vars, manifest::Unanswered::Error)?;
    // Written as bosh writes it, so the director reads exactly these values back.
    let text = bosun_types::yaml_v2::to_string(&doc);
    // Check it here too, so the error names the file.
    bosun_types::cloud_config::CloudConfig::parse(&file.display().to_string(), doc)
        .map_err(|e| InputError::new(e.to_string()))?;
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Updated {
        version: u64,
        changed: bool,
    }
    let u: Updated = client(cli)?.post_text("/v1/cloud-config", text).await?;
    if cli.json {
        return print_json(&u);
    }
    println!(
        "{}",
        if u.changed {
            format!("Cloud-config updated (version {})", u.version)
        } else {
            format!("Cloud-config unchanged (version {})", u.version)
        }
    );
    Ok(())
}

pub async fn cloud_config(cli: &Cli) -> Result<()> {
    print!("{}", client(cli)?.get_text("/v1/cloud-config").await?);
    Ok(())
}
