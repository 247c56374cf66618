//! `bosun-cpi-aws CONFIG`: the AWS CPI as an executable speaking BOSH's external CPI protocol
//! (one JSON request on stdin, one response on stdout, logs on stderr), as BOSH's AWS CPI job
//! ships its `bin/cpi`. A bosun director drives it with `--cpi external`, a BOSH director with a
//! CPI job whose `bin/cpi` runs it; `CONFIG` is the AWS CPI's configuration (YAML or JSON: region,
//! endpoint, credentials, defaults).

use bosun_cpi::{Cpi, CpiError};
use bosun_cpi_aws::{AwsCpi, AwsCpiConfig};
use std::sync::Arc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args_os().skip(1);
    let (Some(config), None) = (args.next(), args.next()) else {
        eprintln!("usage: bosun-cpi-aws CONFIG  (a request on stdin, the response on stdout)");
        return std::process::ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bosun-cpi-aws: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let answered = runtime.block_on(bosun_cpi_external::serve::answer_stdin(async {
        let path = std::path::Path::new(&config);
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| CpiError::InvalidArguments(format!("the AWS CPI's config {}: {e}", path.display())))?;
        let config: AwsCpiConfig = bosun_types::yaml::from_str(&path.display().to_string(), &text)
            .map_err(|e| CpiError::InvalidArguments(e.to_string()))?;
        Ok(Arc::new(AwsCpi::connect(config).await?) as Arc<dyn Cpi>)
    }));
    match answered {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bosun-cpi-aws: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
