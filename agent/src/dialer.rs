//! Mutually authenticated TLS connections from the agent to the director.

use crate::AgentError;
use bosun_types::protocol::DirectorEndpoint;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens mutually authenticated TLS connections to the director.
#[derive(Clone)]
pub struct Dialer {
    config: Arc<rustls::ClientConfig>,
    pub(crate) address: String,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl Dialer {
    pub fn new(ep: &DirectorEndpoint) -> Result<Self, AgentError> {
        let bad = |m: &str| AgentError::Credentials(m.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ep.ca_cert.as_bytes()) {
            roots
                .add(c.map_err(|_| bad("director CA is not PEM"))?)
                .map_err(|_| bad("director CA is not a certificate"))?;
        }
        if roots.is_empty() {
            return Err(bad("no director CA"));
        }
        let certs: Vec<_> = rustls_pemfile::certs(&mut ep.client_cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("client certificate is not PEM"))?;
        if certs.is_empty() {
            return Err(bad("no client certificate"));
        }
        let key = rustls_pemfile::private_key(&mut ep.client_key.as_bytes())
            .map_err(|_| bad("client key is not PEM"))?
            .ok_or_else(|| bad("no client key"))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|_| bad("TLS setup"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|_| bad("client certificate and key do not match"))?;
        let server_name = rustls::pki_types::ServerName::try_from(ep.server_name.clone())
            .map_err(|_| bad("director server name is invalid"))?;
        Ok(Self { config: Arc::new(config), address: ep.address.clone(), server_name })
    }

    pub async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let fut = async {
            let tcp = tokio::net::TcpStream::connect(&self.address).await?;
            tcp.set_nodelay(true)?;
            connector.connect(self.server_name.clone(), tcp).await
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
}
