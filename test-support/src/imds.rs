//! EC2's instance metadata service for instances a test runs, on a loopback port: each
//! instance's under `/<instance id>/latest/…` (its user-data and instance id), answering only
//! requests with the token it issued (IMDSv2, as the AWS CPI makes its instances require).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct MetadataService {
    url: String,
    user_data: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MetadataService {
    pub fn start() -> MetadataService {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let user_data: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::default();
        let known = user_data.clone();
        // Ends with the test process (a blocked accept holds no resource worth stopping).
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &known);
            }
        });
        MetadataService { url, user_data }
    }

    /// Instance `id` is served, with this user-data.
    pub fn insert(&self, id: &str, user_data: Vec<u8>) {
        self.user_data.lock().unwrap().insert(id.to_string(), user_data);
    }

    /// Where instance `id`'s agent asks.
    pub fn url_for(&self, id: &str) -> String {
        format!("{}/{id}", self.url)
    }
}

fn answer(mut conn: std::net::TcpStream, known: &Mutex<BTreeMap<String, Vec<u8>>>) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = std::io::BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut token = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("x-aws-ec2-metadata-token") {
                token = Some(value.trim().to_string());
            }
        }
    }
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (id, rest) = path.trim_start_matches('/').split_once('/').unwrap_or(("", ""));
    let issued = format!("token-for-{id}");
    let data = known.lock().unwrap().get(id).cloned();
    let (status, body): (&str, Vec<u8>) = match (method, rest, data) {
        (_, _, None) => ("404 Not Found", vec![]),
        ("PUT", "latest/api/token", Some(_)) => ("200 OK", issued.clone().into_bytes()),
        ("GET", _, Some(_)) if token.as_deref() != Some(issued.as_str()) => ("401 Unauthorized", vec![]),
        ("GET", "latest/user-data", Some(d)) => ("200 OK", d),
        ("GET", "latest/meta-data/instance-id", Some(_)) => ("200 OK", id.as_bytes().to_vec()),
        _ => ("404 Not Found", vec![]),
    };
    write!(conn, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    conn.write_all(&body)
}
