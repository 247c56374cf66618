//! `bosun-agent`: the thin binary around the agent library, baked into every stemcell.

use std::path::PathBuf;

fn usage() -> ! {
    eprintln!(
        "usage: bosun-agent --root DIR (--settings FILE | --metadata [URL (default {})]) [--dev DIR (default /dev)]",
        bosun_agent::metadata::EC2_METADATA
    );
    std::process::exit(2);
}

fn main() {
    let mut root = None;
    let mut settings = None;
    let mut dev = PathBuf::from("/dev");
    let mut args = std::env::args_os().skip(1).peekable();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--root") => root = args.next().map(PathBuf::from),
            Some("--settings") => settings = args.next().map(|p| bosun_agent::SettingsSource::File(PathBuf::from(p))),
            Some("--metadata") => {
                // The address is optional: EC2's own by default.
                let url = match args.peek().and_then(|a| a.to_str()).filter(|a| !a.starts_with("--")) {
                    Some(url) => {
                        let url = url.to_string();
                        args.next();
                        url
                    }
                    None => bosun_agent::metadata::EC2_METADATA.to_string(),
                };
                settings = Some(bosun_agent::SettingsSource::Metadata(url));
            }
            Some("--dev") => dev = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            Some("--version") => {
                println!("bosun-agent {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            _ => usage(),
        }
    }
    let (Some(root), Some(settings)) = (root, settings) else { usage() };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .init();
    // A VM's files get the usual modes whatever the agent inherited (the local CPI's agents are
    // started by a director whose own umask is 077); what must be private is made so explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // A small runtime: an agent's footprint matters on every VM.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(bosun_agent::run(bosun_agent::AgentOptions { root, settings, dev })) {
        tracing::error!(error = %bosun_agent::session::error_chain(&e), "agent failed");
        std::process::exit(1);
    }
}
