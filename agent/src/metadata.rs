//! Settings from an EC2-style instance metadata service, as BOSH's agent reads them on AWS: a
//! session token first (IMDSv2: `PUT /latest/api/token`; the AWS CPI makes instances answer only
//! requests that carry one), then the instance's user-data (the settings the CPI wrote) and its
//! instance id (the VM cid), each asked with the token. Plain HTTP/1.1 to a link-local address:
//! the service speaks nothing else, and the agent needs no HTTP library for three requests.

use bosun_types::protocol::AgentSettings;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// EC2's instance metadata service.
pub const EC2_METADATA: &str = "http://169.254.169.254";

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a response may hold (EC2's user-data is at most 16 KiB).
const MAX_RESPONSE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("the metadata service's address `{0}` is not http://HOST[:PORT][/PATH]")]
    Address(String),
    #[error("{method} {url}")]
    Io {
        method: &'static str,
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {url}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout { method: &'static str, url: String },
    #[error("{method} {url}: {detail}")]
    Answer { method: &'static str, url: String, detail: String },
    #[error("the instance's user-data are not the agent's settings")]
    Settings(#[source] serde_json::Error),
}

/// `http://HOST[:PORT][/PATH]`, split.
struct Service {
    authority: String,
    prefix: String,
}

impl Service {
    fn parse(base: &str) -> Result<Service, MetadataError> {
        let rest = base.strip_prefix("http://").ok_or_else(|| MetadataError::Address(base.to_string()))?;
        let (authority, prefix) = match rest.find('/') {
            Some(k) => (&rest[..k], rest[k..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let plain = |c: char| c.is_ascii_alphanumeric() || ".-:[]_".contains(c);
        if authority.is_empty() || !authority.chars().all(plain) || prefix.chars().any(|c| c.is_whitespace()) {
            return Err(MetadataError::Address(base.to_string()));
        }
        Ok(Service { authority: authority.to_string(), prefix: prefix.to_string() })
    }

    fn address(&self) -> String {
        if self.authority.rsplit_once(':').is_some_and(|(_, port)| port.chars().all(|c| c.is_ascii_digit())) {
            self.authority.clone()
        } else {
            format!("{}:80", self.authority)
        }
    }

    /// One request on a connection of its own; the body of a 200 answer.
    async fn call(&self, method: &'static str, path: &str, header: (&str, &str)) -> Result<Vec<u8>, MetadataError> {
        let url = format!("http://{}{}{path}", self.authority, self.prefix);
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.address()).await?;
            let request = format!(
                "{method} {}{path} HTTP/1.1\r\nHost: {}\r\n{}: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.prefix, self.authority, header.0, header.1
            );
            stream.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            stream.take(MAX_RESPONSE).read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Err(_) => return Err(MetadataError::Timeout { method, url }),
            Ok(Err(source)) => return Err(MetadataError::Io { method, url, source }),
            Ok(Ok(a)) => a,
        };
        let failed = |detail: String| MetadataError::Answer { method, url: url.clone(), detail };
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| failed("no HTTP answer".into()))?;
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let body = answer[split + 4..].to_vec();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            let first = head.lines().next().unwrap_or("").to_string();
            return Err(failed(format!("answered `{first}`")));
        }
        let chunked = head.lines().any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
        if chunked {
            return dechunk(&body).ok_or_else(|| failed("a malformed chunked body".into()));
        }
        Ok(body)
    }
}

/// A chunked body's data.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The agent's settings from the metadata service at `base`: the user-data, with the instance id
/// as the VM cid.
pub async fn fetch_settings(base: &str) -> Result<AgentSettings, MetadataError> {
    let service = Service::parse(base)?;
    let token = service.call("PUT", "/latest/api/token", ("X-aws-ec2-metadata-token-ttl-seconds", "300")).await?;
    let token = String::from_utf8_lossy(&token).trim().to_string();
    let with_token = ("X-aws-ec2-metadata-token", token.as_str());
    let user_data = service.call("GET", "/latest/user-data", with_token).await?;
    let instance_id = service.call("GET", "/latest/meta-data/instance-id", with_token).await?;
    let mut settings: AgentSettings = serde_json::from_slice(&user_data).map_err(MetadataError::Settings)?;
    settings.vm_cid = String::from_utf8_lossy(&instance_id).trim().to_string();
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_plain_http() {
        for good in ["http://169.254.169.254", "http://127.0.0.1:8080/i-123", "http://[fd00:ec2::254]"] {
            assert!(Service::parse(good).is_ok(), "{good}");
        }
        for bad in ["https://169.254.169.254", "169.254.169.254", "http://a b", "http://x\r\nHost: y", "http://"] {
            assert!(Service::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Service::parse("http://169.254.169.254").unwrap().address(), "169.254.169.254:80");
        let s = Service::parse("http://127.0.0.1:8080/i-123/").unwrap();
        assert_eq!((s.address().as_str(), s.prefix.as_str()), ("127.0.0.1:8080", "/i-123"));
    }

    #[test]
    fn a_chunked_body_is_joined() {
        assert_eq!(dechunk(b"4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n").as_deref(), Some(&b"abcdef"[..]));
        assert_eq!(dechunk(b"9\r\nabc\r\n"), None);
    }

    #[tokio::test]
    async fn the_settings_are_the_user_data_with_the_instance_id_asked_with_a_token() {
        // The tests' metadata service answers nothing without the token it issued (IMDSv2).
        let service = bosun_test_support::imds::MetadataService::start();
        let settings = r#"{"agent_id":"a-1","vm_cid":"","director":{"address":"10.0.0.6:4222","server_name":"d","ca_cert":"c","client_cert":"c","client_key":"k"}}"#;
        service.insert("i-1", settings.as_bytes().to_vec());
        service.insert("i-3", b"not json".to_vec());
        let got = fetch_settings(&service.url_for("i-1")).await.unwrap();
        assert_eq!((got.agent_id.as_str(), got.vm_cid.as_str()), ("a-1", "i-1"));
        let err = fetch_settings(&service.url_for("i-2")).await.unwrap_err().to_string();
        assert!(err.contains("404"), "{err}");
        let err = fetch_settings(&service.url_for("i-3")).await.unwrap_err().to_string();
        assert!(err.contains("not the agent's settings"), "{err}");
    }
}
