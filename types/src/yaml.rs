//! Parsing YAML documents into typed values with errors that say where: the file, the line for
//! syntax errors, and the path inside the document (`/instance_groups/0/instances`) for shape errors.

use serde::de::DeserializeOwned;
use std::fmt;

/// A path inside a YAML document in go-patch/JSON-pointer form, e.g. `/instance_groups/0/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YamlPath(pub Vec<String>);

impl YamlPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }
    pub fn push(&self, segment: impl fmt::Display) -> Self {
        let mut v = self.0.clone();
        v.push(segment.to_string());
        Self(v)
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for s in &self.0 {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// An error in a document an operator wrote (manifest, cloud-config, ops-file, vars file, job spec).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    #[error("{source_name}: YAML syntax error{}: {message}", line_suffix(*line, *column))]
    Syntax { source_name: String, line: Option<usize>, column: Option<usize>, message: String },
    #[error("{source_name}: {path}: {message}")]
    Shape { source_name: String, path: String, message: String },
    #[error("{source_name}: {path}: {message}")]
    Invalid { source_name: String, path: String, message: String },
}

fn line_suffix(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l} column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

impl DocumentError {
    pub fn invalid(source_name: &str, path: impl fmt::Display, message: impl Into<String>) -> Self {
        DocumentError::Invalid { source_name: source_name.to_string(), path: path.to_string(), message: message.into() }
    }
}

/// Parses YAML text into an untyped value as the BOSH CLI reads it (YAML 1.1's plain scalars:
/// `yes` is true, `0777` is 511), reporting syntax errors with their line.
pub fn parse_value(source_name: &str, text: &str) -> Result<serde_yaml::Value, DocumentError> {
    crate::yaml_v2::parse(text).map_err(|e| DocumentError::Syntax {
        source_name: source_name.to_string(),
        line: Some(e.line),
        column: Some(e.column),
        message: e.message,
    })
}

/// Converts an untyped value into a typed document, reporting the path of the offending node.
pub fn from_value<T: DeserializeOwned>(source_name: &str, value: serde_yaml::Value) -> Result<T, DocumentError> {
    let result: Result<T, serde_path_to_error::Error<serde_yaml::Error>> = serde_path_to_error::deserialize(value);
    result.map_err(|e| {
        let path = pointer(e.path());
        let mut message = e.inner().to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        if message.starts_with("invalid type: boolean") {
            // The commonest surprise of YAML 1.1, which bosh and bosun read: `name: no`.
            message.push_str(
                " (a plain y, yes, on or true reads as true and n, no, off or false as false: quote it to keep it text)",
            );
        }
        DocumentError::Shape { source_name: source_name.to_string(), path, message }
    })
}

/// Parses YAML text straight into a typed document.
pub fn from_str<T: DeserializeOwned>(source_name: &str, text: &str) -> Result<T, DocumentError> {
    from_value(source_name, parse_value(source_name, text)?)
}

/// The path as a pointer: `/instance_groups/0/jobs/1/name`. Map keys may hold dots or slashes
/// (`etcd/etcd-server_3.4.deb`); they are written as they are.
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => out.push_str(&format!("/{key}")),
            Segment::Enum { variant } => out.push_str(&format!("/{variant}")),
            Segment::Unknown => out.push_str("/?"),
        }
    }
    if out.is_empty() {
        "/".into()
    } else {
        out
    }
}

/// A name safe as one path component, tag or environment value: 1–128 of `A-Za-z0-9-_.`, not
/// starting with a dot.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

/// Names end up in paths, tags and process environments: keep them to a safe alphabet.
pub fn check_name(src: &str, path: impl std::fmt::Display, name: &str) -> Result<(), DocumentError> {
    if is_safe_name(name) {
        Ok(())
    } else {
        Err(DocumentError::invalid(
            src,
            path,
            format!("`{name}` is not a valid name (letters, digits, `-`, `_`, `.`; at most 128)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        groups: Vec<Group>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Group {
        name: String,
        instances: u32,
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let e = from_str::<Doc>("m.yml", "groups:\n  - name: a\n   instances: [").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("m.yml: YAML syntax error at line 3"), "{s}");
    }

    #[test]
    fn shape_error_names_path() {
        let e = from_str::<Doc>("m.yml", "groups:\n- name: a\n  instances: lots\n").unwrap_err();
        assert_eq!(e.to_string(), "m.yml: /groups/0/instances: invalid type: string \"lots\", expected u32");
    }

    #[test]
    fn a_yaml_1_1_bool_where_text_belongs_says_to_quote_it() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Named {
            name: String,
        }
        let e = from_str::<Named>("m.yml", "name: no\n").unwrap_err().to_string();
        assert!(e.starts_with("m.yml: /name: invalid type: boolean `false`, expected a string (a plain"), "{e}");
        assert_eq!(from_str::<Named>("m.yml", "name: 'no'\n").unwrap().name, "no");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = from_str::<Doc>("m.yml", "groups:\n- name: a\n  instances: 1\n  colour: red\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("/groups/0") && s.contains("unknown field `colour`"), "{s}");
    }
}
