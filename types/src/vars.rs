//! `((variable))` interpolation and variable generation (`password`, `certificate`), as the BOSH
//! CLI and config server do it.

use crate::manifest::VariableDefinition;
use crate::pki::{CertAuthority, KeyKind, LeafUsage};
use rand::Rng;
use serde_yaml::Value;

/// A placeholder no source could fill, and where it stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVariable {
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    #[error("missing variable{} {}", if .0.len() == 1 { "" } else { "s" }, describe_missing(.0))]
    Missing(Vec<MissingVariable>),
    #[error("{path}: Invalid type '{kind}' for value '{value}' and variable '{name}'. Supported types for interpolation within a string are integers and strings.")]
    NotAScalar { name: String, path: String, kind: String, value: String },
    #[error("{path}: `(({name}))` has no key `{key}`")]
    NoSuchKey { name: String, key: String, path: String },
}

fn describe_missing(m: &[MissingVariable]) -> String {
    m.iter().map(|v| format!("(({})) at {}", v.name, v.path)).collect::<Vec<_>>().join(", ")
}

/// Splits `name.sub.key` into the variable's name and the keys to follow inside its value.
/// A leading `/` (absolute names) belongs to the name.
fn split_name(expr: &str) -> (&str, Vec<&str>) {
    let mut parts = expr.split('.');
    let name = parts.next().unwrap_or("");
    (name, parts.collect())
}

/// A character of a variable's name (bosh's `[-/.\w\pL]`: ASCII word characters and letters).
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c.is_alphabetic() || matches!(c, '_' | '-' | '.' | '/')
}

/// Finds `((name))` placeholders in a string (bosh's `\(\((!?[-/.\w\pL]+)\)\)`): (start, end,
/// name). A leading `!` is part of the placeholder, not of the name (bosh resolves `((!name))` as
/// `((name))`).
fn placeholders(s: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find("((") {
        let start = i + off;
        let inner_start = start + 2;
        let name_start = if s[inner_start..].starts_with('!') { inner_start + 1 } else { inner_start };
        let name_len = s[name_start..].find(|c: char| !is_name_char(c)).unwrap_or(s.len() - name_start);
        let name_end = name_start + name_len;
        if name_len > 0 && s[name_end..].starts_with("))") {
            out.push((start, name_end + 2, s[name_start..name_end].to_string()));
            i = name_end + 2;
        } else {
            i = start + 1;
        }
    }
    out
}

/// The names of all variables a document refers to (without sub-keys), in order of appearance.
pub fn referenced_variables(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_strings(doc, &mut |s| {
        for (_, _, expr) in placeholders(s) {
            let name = split_name(&expr).0.to_string();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    });
    out
}

fn walk_strings(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Sequence(s) => s.iter().for_each(|x| walk_strings(x, f)),
        Value::Mapping(m) => m.values().for_each(|x| walk_strings(x, f)),
        Value::Tagged(t) => walk_strings(&t.value, f),
        _ => {}
    }
}

fn lookup_expr(
    expr: &str,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<Value>,
) -> Result<Option<Value>, InterpolationError> {
    let (name, keys) = split_name(expr);
    let Some(mut v) = lookup(name) else { return Ok(None) };
    // Keys into maps only, as bosh follows them (a go-patch find of key tokens).
    for k in keys {
        v = match v.as_mapping().and_then(|m| m.get(k)) {
            Some(x) => x.clone(),
            None => return Err(InterpolationError::NoSuchKey { name: name.into(), key: k.into(), path: path.into() }),
        };
    }
    Ok(Some(v))
}

fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// What bosh lets stand inside a longer string: strings and integers; anything else is an error.
fn embeddable(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if !n.is_f64() => Some(n.to_string()),
        _ => None,
    }
}

/// Replaces every placeholder `lookup` can answer. With `strict`, an unanswered one is an error;
/// otherwise it is left in place (the director resolves the rest).
pub fn interpolate(
    doc: &mut Value,
    lookup: &dyn Fn(&str) -> Option<Value>,
    strict: bool,
) -> Result<(), InterpolationError> {
    let missing = interpolate_leaving(doc, lookup)?;
    if strict && !missing.is_empty() {
        return Err(InterpolationError::Missing(missing));
    }
    Ok(())
}

/// Replaces every placeholder `lookup` can answer and leaves the others in place, whole
/// (`((name.key))` included); returns those it left, for the caller to judge.
pub fn interpolate_leaving(
    doc: &mut Value,
    lookup: &dyn Fn(&str) -> Option<Value>,
) -> Result<Vec<MissingVariable>, InterpolationError> {
    let mut missing = Vec::new();
    interpolate_at(doc, "", lookup, &mut missing)?;
    Ok(missing)
}

fn interpolate_at(
    v: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<Value>,
    missing: &mut Vec<MissingVariable>,
) -> Result<(), InterpolationError> {
    match v {
        Value::String(s) => {
            let found = placeholders(s);
            if found.is_empty() {
                return Ok(());
            }
            let here = if path.is_empty() { "/".to_string() } else { path.to_string() };
            // A placeholder that is the whole string takes the variable's value, whatever its type.
            if found.len() == 1 && found[0].0 == 0 && found[0].1 == s.len() {
                let expr = found[0].2.clone();
                match lookup_expr(&expr, &here, lookup)? {
                    Some(val) => *v = val,
                    None => missing.push(MissingVariable { name: split_name(&expr).0.into(), path: here }),
                }
                return Ok(());
            }
            let mut out = String::new();
            let mut last = 0;
            for (start, end, expr) in found {
                out.push_str(&s[last..start]);
                match lookup_expr(&expr, &here, lookup)? {
                    Some(val) => {
                        let text = embeddable(&val).ok_or_else(|| InterpolationError::NotAScalar {
                            name: expr.clone(),
                            path: here.clone(),
                            kind: crate::gopatch::go_type(&val).into(),
                            value: serde_json::to_string(&val).unwrap_or_default(),
                        })?;
                        out.push_str(&text);
                    }
                    None => {
                        missing.push(MissingVariable { name: split_name(&expr).0.into(), path: here.clone() });
                        out.push_str(&s[start..end]);
                    }
                }
                last = end;
            }
            out.push_str(&s[last..]);
            *s = out;
        }
        Value::Sequence(seq) => {
            for (i, x) in seq.iter_mut().enumerate() {
                interpolate_at(x, &format!("{path}/{i}"), lookup, missing)?;
            }
        }
        Value::Mapping(m) => {
            // Keys are interpolated too (bosh does): the map is rebuilt in its order.
            if m.keys().any(|k| k.as_str().is_some_and(|k| !placeholders(k).is_empty())) {
                let mut rebuilt = serde_yaml::Mapping::new();
                for (mut k, x) in std::mem::take(m) {
                    interpolate_at(&mut k, path, lookup, missing)?;
                    rebuilt.insert(k, x);
                }
                *m = rebuilt;
            }
            for (k, x) in m.iter_mut() {
                let key = scalar_to_string(k).unwrap_or_default();
                interpolate_at(x, &format!("{path}/{key}"), lookup, missing)?;
            }
        }
        Value::Tagged(t) => interpolate_at(&mut t.value, path, lookup, missing)?,
        _ => {}
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("variable `{name}` ({kind}): {message}")]
pub struct GenerateError {
    pub name: String,
    pub kind: String,
    pub message: String,
}

/// Generates a value for a declared variable. `existing` answers for other variables (a
/// certificate's `ca`).
/// Who generates a variable: their defaults differ, as in BOSH (the CLI's vars-store, or the
/// director's config server, CredHub).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// `--vars-store`: passwords of 20 characters, certificates with RSA 3072 keys.
    Cli,
    /// The director: passwords of 30 characters, certificates with RSA 2048 keys.
    Director,
}

pub fn generate(
    def: &VariableDefinition,
    existing: &dyn Fn(&str) -> Option<Value>,
    generator: Generator,
) -> Result<Value, GenerateError> {
    let err = |message: String| GenerateError { name: def.name.clone(), kind: def.kind.clone(), message };
    let opts = def.options.clone().unwrap_or(serde_json::Value::Null);
    let opt_str = |k: &str| opts.get(k).and_then(|v| v.as_str()).map(str::to_string);
    match def.kind.as_str() {
        "password" => {
            let default_length = match generator {
                Generator::Cli => 20,
                Generator::Director => 30,
            };
            let length = match opts.get("length") {
                None => default_length,
                Some(v) => v.as_u64().ok_or_else(|| err(format!("options.length `{v}` is not a whole number")))?,
            };
            if !(8..=512).contains(&length) {
                return Err(err(format!("length {length} is outside 8..=512")));
            }
            // bosh's characters (lower case and digits), narrowed or widened by CredHub's options.
            let flag = |k: &str| -> Result<bool, GenerateError> {
                match opts.get(k) {
                    None => Ok(false),
                    Some(v) => v.as_bool().ok_or_else(|| err(format!("options.{k} `{v}` is not true or false"))),
                }
            };
            let mut charset: Vec<u8> = Vec::new();
            if !flag("exclude_lower")? {
                charset.extend(b'a'..=b'z');
            }
            if flag("include_upper")? && !flag("exclude_upper")? {
                charset.extend(b'A'..=b'Z');
            }
            if !flag("exclude_number")? {
                charset.extend(b'0'..=b'9');
            }
            if flag("include_special")? {
                charset.extend(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
            }
            if charset.is_empty() {
                return Err(err("its options exclude every character".into()));
            }
            let mut rng = rand::thread_rng();
            let s: String = (0..length).map(|_| charset[rng.gen_range(0..charset.len())] as char).collect();
            Ok(Value::String(s))
        }
        "certificate" => {
            let is_ca = opts.get("is_ca").and_then(|v| v.as_bool()).unwrap_or(false);
            let cn = opt_str("common_name").ok_or_else(|| err("options.common_name is required".into()))?;
            // Days; what does not fit is refused rather than wrapped into a short-lived certificate.
            let days = opts.get("duration").and_then(|v| v.as_u64()).unwrap_or(365);
            let days = u32::try_from(days)
                .ok()
                .filter(|d| (1..=36_500).contains(d))
                .ok_or_else(|| err(format!("options.duration {days} is not between 1 and 36500 days")))?;
            let sans: Vec<String> = opts
                .get("alternative_names")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let usages: Vec<String> = opts
                .get("extended_key_usage")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            for u in &usages {
                if u != "client_auth" && u != "server_auth" {
                    return Err(err(format!("extended_key_usage `{u}` is not one of client_auth, server_auth")));
                }
            }
            let usage = LeafUsage {
                server: usages.is_empty() || usages.iter().any(|u| u == "server_auth"),
                client: usages.iter().any(|u| u == "client_auth"),
            };
            // RSA as BOSH makes them (3072 bits by the CLI, 2048 by the config server);
            // `key_algorithm` (bosun's) chooses another size or ECDSA P-256.
            let kind = match opt_str("key_algorithm").as_deref() {
                None => match generator {
                    Generator::Cli => KeyKind::Rsa(3072),
                    Generator::Director => KeyKind::Rsa(2048),
                },
                Some("rsa-3072") => KeyKind::Rsa(3072),
                Some("rsa-2048") => KeyKind::Rsa(2048),
                Some("rsa-4096") => KeyKind::Rsa(4096),
                Some("ecdsa-p256") => KeyKind::EcdsaP256,
                Some(other) => {
                    return Err(err(format!(
                        "options.key_algorithm `{other}` is not one of rsa-3072, rsa-2048, rsa-4096, ecdsa-p256"
                    )))
                }
            };
            // bosh's default organization.
            let organization = opt_str("organization").unwrap_or_else(|| "Cloud Foundry".to_string());
            let ca_name = opt_str("ca");
            let (signer, ca_pem) = match &ca_name {
                None if is_ca => {
                    let (ca, key_pem) = CertAuthority::generate_with(&cn, Some(&organization), days, kind)
                        .map_err(|e| err(e.to_string()))?;
                    let mut m = serde_yaml::Mapping::new();
                    m.insert("ca".into(), Value::String(ca.cert_pem().to_string()));
                    m.insert("certificate".into(), Value::String(ca.cert_pem().to_string()));
                    m.insert("private_key".into(), Value::String(key_pem));
                    return Ok(Value::Mapping(m));
                }
                None => return Err(err("options.ca names the signing CA variable (or set is_ca: true)".into())),
                Some(name) => {
                    let ca = existing(name).ok_or_else(|| err(format!("its CA `{name}` is not defined")))?;
                    let cert = ca
                        .get("certificate")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| err(format!("`{name}` has no certificate")))?;
                    let key = ca
                        .get("private_key")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| err(format!("`{name}` has no private_key")))?;
                    (CertAuthority::from_pem(cert, key).map_err(|e| err(e.to_string()))?, cert.to_string())
                }
            };
            let issued = signer
                .issue_with(&cn, Some(&organization), &sans, usage, days, is_ca, kind)
                .map_err(|e| err(e.to_string()))?;
            let mut m = serde_yaml::Mapping::new();
            m.insert("ca".into(), Value::String(ca_pem));
            m.insert("certificate".into(), Value::String(issued.cert_pem));
            m.insert("private_key".into(), Value::String(issued.key_pem));
            Ok(Value::Mapping(m))
        }
        "rsa" => {
            let bits = opts.get("key_length").and_then(|v| v.as_u64()).unwrap_or(2048);
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(err(format!("key_length {bits} is not one of 2048, 3072, 4096")));
            }
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::pkcs8::EncodePublicKey;
            let key =
                rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits as usize).map_err(|e| err(e.to_string()))?;
            let private = key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).map_err(|e| err(e.to_string()))?;
            let public =
                key.to_public_key().to_public_key_pem(rsa::pkcs8::LineEnding::LF).map_err(|e| err(e.to_string()))?;
            let mut m = serde_yaml::Mapping::new();
            m.insert("private_key".into(), Value::String(private.to_string()));
            m.insert("public_key".into(), Value::String(public));
            Ok(Value::Mapping(m))
        }
        "ssh" => {
            // As bosh: a 2048-bit RSA key, the public key in OpenSSH's form and its MD5
            // fingerprint (`aa:bb:…`, what `ssh-keygen -l -E md5` shows).
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| err(e.to_string()))?;
            let private = key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).map_err(|e| err(e.to_string()))?;
            let wire = ssh_rsa_wire(&key.e().to_bytes_be(), &key.n().to_bytes_be());
            use base64::Engine;
            let public = format!("ssh-rsa {}", base64::engine::general_purpose::STANDARD.encode(&wire));
            let fingerprint = {
                use md5::Digest;
                let digest = md5::Md5::digest(&wire);
                digest.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
            };
            let mut m = serde_yaml::Mapping::new();
            m.insert("private_key".into(), Value::String(private.to_string()));
            m.insert("public_key".into(), Value::String(public));
            m.insert("public_key_fingerprint".into(), Value::String(fingerprint));
            Ok(Value::Mapping(m))
        }
        "" => Err(err("has no type, so it cannot be generated: give it a value (-v, -l, --var-file)".into())),
        other => Err(err(format!("unknown variable type `{other}` (password, certificate, rsa, ssh)"))),
    }
}

/// Orders variable definitions so a certificate's CA comes before the certificate.
/// An RSA public key in SSH's wire format (RFC 4253 §6.6): `ssh-rsa`, e, n as strings and mpints.
fn ssh_rsa_wire(e: &[u8], n: &[u8]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend((bytes.len() as u32).to_be_bytes());
        out.extend(bytes);
    }
    fn mpint(out: &mut Vec<u8>, bytes: &[u8]) {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        // A leading 0 keeps a number with its top bit set positive.
        let mut v = if trimmed.first().is_some_and(|b| b & 0x80 != 0) { vec![0] } else { vec![] };
        v.extend(trimmed);
        string(out, &v);
    }
    let mut out = Vec::new();
    string(&mut out, b"ssh-rsa");
    mpint(&mut out, e);
    mpint(&mut out, n);
    out
}

/// A cycle among certificate definitions' `ca` options (`a → b → a`), if there is one: none of
/// its members could ever be generated.
pub fn ca_cycle(defs: &[VariableDefinition]) -> Option<Vec<String>> {
    let ca_of = |name: &str| -> Option<&str> {
        defs.iter()
            .find(|d| d.name == name)
            .and_then(|d| d.options.as_ref())
            .and_then(|o| o.get("ca"))
            .and_then(|v| v.as_str())
    };
    for start in defs {
        let mut path = vec![start.name.clone()];
        let mut at = start.name.as_str();
        while let Some(next) = ca_of(at) {
            if let Some(pos) = path.iter().position(|p| p == next) {
                let mut cycle = path[pos..].to_vec();
                cycle.push(next.to_string());
                return Some(cycle);
            }
            path.push(next.to_string());
            at = next;
        }
    }
    None
}

pub fn generation_order(defs: &[VariableDefinition]) -> Vec<&VariableDefinition> {
    let mut out: Vec<&VariableDefinition> = Vec::new();
    let mut pending: Vec<&VariableDefinition> = defs.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|d| {
            let ca = d.options.as_ref().and_then(|o| o.get("ca")).and_then(|v| v.as_str());
            let ready = match ca {
                Some(ca) => !defs.iter().any(|x| x.name == ca) || out.iter().any(|x| x.name == ca),
                None => true,
            };
            if ready {
                out.push(d);
            }
            !ready
        });
        if pending.len() == before {
            out.append(&mut pending); // a cycle: let generation report it
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, Value)]) -> impl Fn(&str) -> Option<Value> + 'a {
        move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone())
    }

    /// (document, expected document or `Err:` + message) with `n: 5`, `s: text`, `list: [a, b]`,
    /// `m: {k: v}`, `b: true`, `ü: unicode`; unanswered ones stay.
    #[test]
    fn bosh_placeholder_syntax() {
        let given: &[(&str, Value)] = &[
            ("n", Value::from(5)),
            ("s", Value::from("text")),
            ("list", serde_yaml::from_str("[a, b]").unwrap()),
            ("m", serde_yaml::from_str("{k: v}").unwrap()),
            ("b", Value::from(true)),
            ("ü", Value::from("unicode")),
        ];
        let cases: &[(&str, &str)] = &[
            ("a: ((n))", "a: 5"),
            ("a: (( n ))", "a: (( n ))"),
            ("a: ((!n))", "a: 5"),
            ("a: x-((!s))", "a: x-text"),
            ("a: ((m.k))", "a: v"),
            ("a: ((m))", "a:\n  k: v"),
            ("a: ((ü))", "a: unicode"),
            ("a: x-((n))-((s))", "a: x-5-text"),
            ("a: x-((missing))", "a: x-((missing))"),
            ("a: ((a:b))", "a: ((a:b))"),
            ("((s)): 1", "text: 1"),
            (
                "a: x-((m))",
                "Err:/a: Invalid type 'map[interface {}]interface {}' for value '{\"k\":\"v\"}' and variable 'm'",
            ),
            ("a: x-((b))", "Err:/a: Invalid type 'bool' for value 'true' and variable 'b'"),
            ("a: ((list.1))", "Err:/a: `((list))` has no key `1`"),
            ("a: ((m.nope))", "Err:/a: `((m))` has no key `nope`"),
        ];
        for (doc, want) in cases {
            let mut d: Value = serde_yaml::from_str(doc).unwrap();
            match (interpolate_leaving(&mut d, &vars(given)), want.strip_prefix("Err:")) {
                (Ok(_), None) => assert_eq!(serde_yaml::to_string(&d).unwrap().trim(), *want, "{doc}"),
                (Err(e), Some(msg)) => assert!(e.to_string().starts_with(msg), "{doc}: {e}"),
                (got, _) => panic!("{doc}: {got:?}, want {want}"),
            }
        }
    }

    #[test]
    fn ssh_keys_in_openssh_form_with_their_fingerprint() {
        let def: VariableDefinition = serde_yaml::from_str("{name: k, type: ssh}").unwrap();
        let v = generate(&def, &|_| None, Generator::Cli).unwrap();
        assert!(v["private_key"].as_str().unwrap().starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let public = v["public_key"].as_str().unwrap();
        assert!(public.starts_with("ssh-rsa AAAAB3NzaC1yc2E"), "{public}");
        let fp = v["public_key_fingerprint"].as_str().unwrap();
        assert_eq!((fp.len(), fp.matches(':').count()), (47, 15), "{fp}");
        // The key reads back with OpenSSH's own tool when it is there.
        if let Ok(out) = std::process::Command::new("ssh-keygen")
            .args(["-l", "-E", "md5", "-f", "/dev/stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(public.as_bytes())?;
                c.wait_with_output()
            })
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("MD5:{fp}")), "{text}");
        }
    }

    #[test]
    fn password_options() {
        let gen = |opts: &str| {
            let def: VariableDefinition =
                serde_yaml::from_str(&format!("{{name: p, type: password, options: {opts}}}")).unwrap();
            generate(&def, &|_| None, Generator::Cli)
        };
        let plain = gen("{}").unwrap();
        let plain = plain.as_str().unwrap();
        assert_eq!(plain.len(), 20);
        assert!(plain.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{plain}");
        let digits = gen("{length: 40, exclude_lower: true}").unwrap();
        assert!(digits.as_str().unwrap().bytes().all(|c| c.is_ascii_digit()) && digits.as_str().unwrap().len() == 40);
        assert!(gen("{exclude_lower: true, exclude_number: true}")
            .unwrap_err()
            .to_string()
            .contains("exclude every character"));
        assert!(gen("{length: twelve}").unwrap_err().to_string().contains("not a whole number"));
        assert!(gen("{length: 4}").unwrap_err().to_string().contains("outside 8..=512"));
        assert!(gen("{exclude_lower: yes please}").unwrap_err().to_string().contains("not true or false"));
    }

    #[test]
    fn ca_cycles_are_named() {
        let defs: Vec<VariableDefinition> = serde_yaml::from_str(
            "[{name: a, type: certificate, options: {ca: b}}, {name: b, type: certificate, options: {ca: c}}, {name: c, type: certificate, options: {ca: a}}, {name: d, type: certificate, options: {ca: a}}]",
        )
        .unwrap();
        assert_eq!(ca_cycle(&defs), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
        let fine: Vec<VariableDefinition> =
            serde_yaml::from_str("[{name: ca, type: certificate, options: {is_ca: true}}, {name: leaf, type: certificate, options: {ca: ca}}]").unwrap();
        assert_eq!(ca_cycle(&fine), None);
    }

    #[test]
    fn whole_and_embedded_placeholders() {
        let mut doc: Value = serde_yaml::from_str("a: ((n))\nb: \"x-((s))-((n))\"\nc: ((m.k))\n").unwrap();
        let m: Value = serde_yaml::from_str("k: v").unwrap();
        let src = [("n", Value::from(3)), ("s", Value::from("str")), ("m", m)];
        interpolate(&mut doc, &vars(&src), true).unwrap();
        assert_eq!(serde_json::to_string(&doc).unwrap(), r#"{"a":3,"b":"x-str-3","c":"v"}"#);
    }

    #[test]
    fn missing_variables_name_their_paths() {
        let mut doc: Value = serde_yaml::from_str("groups:\n- pw: ((db_password))\n").unwrap();
        let e = interpolate(&mut doc, &|_| None, true).unwrap_err();
        assert_eq!(e.to_string(), "missing variable ((db_password)) at /groups/0/pw");
        let mut doc2 = doc.clone();
        interpolate(&mut doc2, &|_| None, false).unwrap();
        assert_eq!(doc, doc2);
    }

    #[test]
    fn generates_password_and_certificates() {
        let p = generate(
            &VariableDefinition { name: "p".into(), kind: "password".into(), options: None, update_mode: None },
            &|_| None,
            Generator::Cli,
        )
        .unwrap();
        assert_eq!(p.as_str().unwrap().len(), 20);
        let ca_def: VariableDefinition =
            serde_yaml::from_str("{name: ca, type: certificate, options: {is_ca: true, common_name: ca}}").unwrap();
        let ca = generate(&ca_def, &|_| None, Generator::Cli).unwrap();
        let leaf_def: VariableDefinition = serde_yaml::from_str(
            "{name: tls, type: certificate, options: {ca: ca, common_name: etcd, alternative_names: [127.0.0.1]}}",
        )
        .unwrap();
        let leaf = generate(&leaf_def, &|n| (n == "ca").then(|| ca.clone()), Generator::Director).unwrap();
        assert_eq!(leaf.get("ca"), ca.get("certificate"));
        let defs = [leaf_def.clone(), ca_def.clone()];
        let order = generation_order(&defs);
        assert_eq!(order[0].name, "ca");
    }

    #[test]
    fn rsa_keys_and_certificates_with_an_organization() {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePublicKey;
        let def: VariableDefinition = serde_yaml::from_str("{name: sa, type: rsa}").unwrap();
        let v = generate(&def, &|_| None, Generator::Cli).unwrap();
        let private = rsa::RsaPrivateKey::from_pkcs1_pem(v["private_key"].as_str().unwrap()).unwrap();
        let public = rsa::RsaPublicKey::from_public_key_pem(v["public_key"].as_str().unwrap()).unwrap();
        assert_eq!(private.to_public_key(), public);
        assert_eq!(rsa::traits::PublicKeyParts::size(&public), 256, "2048 bits by default");
        let bad: VariableDefinition =
            serde_yaml::from_str("{name: sa, type: rsa, options: {key_length: 1024}}").unwrap();
        assert!(generate(&bad, &|_| None, Generator::Cli).unwrap_err().to_string().contains("key_length 1024"));

        let ca_def: VariableDefinition =
            serde_yaml::from_str("{name: ca, type: certificate, options: {is_ca: true, common_name: ca}}").unwrap();
        let ca = generate(&ca_def, &|_| None, Generator::Cli).unwrap();
        let node: VariableDefinition = serde_yaml::from_str(
            "{name: n, type: certificate, options: {ca: ca, common_name: 'system:node:a', organization: 'system:nodes', extended_key_usage: [client_auth]}}",
        )
        .unwrap();
        let cert = generate(&node, &|n| (n == "ca").then(|| ca.clone()), Generator::Director).unwrap();
        let der = rcgen::CertificateParams::from_ca_cert_pem(cert["certificate"].as_str().unwrap()).unwrap();
        let subject: Vec<_> =
            der.distinguished_name.iter().map(|(t, v)| (format!("{t:?}"), format!("{v:?}"))).collect();
        assert!(
            subject.iter().any(|(t, v)| t.contains("OrganizationName") && v.contains("system:nodes")),
            "{subject:?}"
        );
        assert!(subject.iter().any(|(t, v)| t.contains("CommonName") && v.contains("system:node:a")), "{subject:?}");
    }

    #[test]
    fn a_certificate_duration_out_of_range_is_refused_not_wrapped() {
        for days in ["0", "36501", "4294967297"] {
            let def: VariableDefinition = serde_yaml::from_str(&format!(
                "{{name: ca, type: certificate, options: {{is_ca: true, common_name: ca, duration: {days}}}}}"
            ))
            .unwrap();
            let e = generate(&def, &|_| None, Generator::Cli).unwrap_err();
            assert!(e.to_string().contains(&format!("options.duration {days} is not between 1 and 36500 days")), "{e}");
        }
    }
}
