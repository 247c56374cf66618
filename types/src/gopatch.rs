//! go-patch ops-files (`-o ops.yml`), as the BOSH CLI applies them: `replace` and `remove`
//! operations with paths of map keys, array indexes, `-` (append) and `key=value` selectors, where a
//! trailing `?` makes that segment and all that follow optional.

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: operation {index} ({kind} {path}): {message}")]
pub struct OpError {
    pub source_name: String,
    pub index: usize,
    pub kind: String,
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    #[serde(rename = "type")]
    pub kind: OpKind,
    pub path: String,
    #[serde(default)]
    pub value: Option<Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Replace,
    Remove,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Key { key: String, optional: bool },
    Index { index: i64, optional: bool },
    Append,
    Matching { key: String, value: String, optional: bool },
}

fn parse_path(path: &str) -> Result<Vec<Token>, String> {
    if path == "/" {
        return Ok(vec![]);
    }
    let rest = path.strip_prefix('/').ok_or_else(|| "a path starts with `/`".to_string())?;
    let mut tokens = Vec::new();
    let mut optional = false;
    for raw in rest.split('/') {
        // `~1` and `~0` escape `/` and `~` as in JSON pointers.
        let mut seg = raw.replace("~1", "/").replace("~0", "~");
        if let Some(s) = seg.strip_suffix('?') {
            seg = s.to_string();
            optional = true;
        }
        if seg == "-" {
            tokens.push(Token::Append);
        } else if let Ok(i) = seg.parse::<i64>() {
            tokens.push(Token::Index { index: i, optional });
        } else if let Some((k, v)) = seg.split_once('=') {
            tokens.push(Token::Matching { key: k.to_string(), value: v.to_string(), optional });
        } else if seg.is_empty() {
            return Err("empty path segment".into());
        } else {
            tokens.push(Token::Key { key: seg, optional });
        }
    }
    Ok(tokens)
}

/// Parses an ops-file (a YAML list of operations).
pub fn parse_ops(source_name: &str, text: &str) -> Result<Vec<Operation>, crate::DocumentError> {
    let v = crate::yaml::parse_value(source_name, text)?;
    if v.is_null() {
        return Ok(vec![]);
    }
    crate::yaml::from_value(source_name, v)
}

/// Applies operations in order to a document.
pub fn apply_ops(source_name: &str, doc: &mut Value, ops: &[Operation]) -> Result<(), OpError> {
    for (i, op) in ops.iter().enumerate() {
        let err = |message: String| OpError {
            source_name: source_name.to_string(),
            index: i,
            kind: match op.kind {
                OpKind::Replace => "replace".into(),
                OpKind::Remove => "remove".into(),
            },
            path: op.path.clone(),
            message,
        };
        let tokens = parse_path(&op.path).map_err(err)?;
        match op.kind {
            OpKind::Replace => {
                let value = op.value.clone().ok_or_else(|| err("a replace needs a `value`".into()))?;
                replace(doc, &tokens, value).map_err(err)?;
            }
            OpKind::Remove => {
                if op.value.is_some() {
                    return Err(err("a remove takes no `value`".into()));
                }
                remove(doc, &tokens).map_err(err)?;
            }
        }
    }
    Ok(())
}

fn find_matching(seq: &[Value], key: &str, value: &str) -> Result<Option<usize>, String> {
    let hits: Vec<usize> = seq
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            v.as_mapping().and_then(|m| m.get(key)).is_some_and(|x| match x {
                Value::String(s) => s == value,
                Value::Number(n) => n.to_string() == value,
                Value::Bool(b) => b.to_string() == value,
                _ => false,
            })
        })
        .map(|(i, _)| i)
        .collect();
    match hits.len() {
        0 => Ok(None),
        1 => Ok(Some(hits[0])),
        n => Err(format!("{n} array elements match `{key}={value}`; a selector must match exactly one")),
    }
}

fn resolve_index(index: i64, len: usize) -> Option<usize> {
    let i = if index < 0 { len as i64 + index } else { index };
    (i >= 0 && (i as usize) < len).then_some(i as usize)
}

fn describe(tokens: &[Token]) -> String {
    let mut s = String::new();
    for t in tokens {
        s.push('/');
        match t {
            Token::Key { key, .. } => s.push_str(key),
            Token::Index { index, .. } => s.push_str(&index.to_string()),
            Token::Append => s.push('-'),
            Token::Matching { key, value, .. } => s.push_str(&format!("{key}={value}")),
        }
    }
    s
}

fn replace(doc: &mut Value, tokens: &[Token], value: Value) -> Result<(), String> {
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    let mut cur = doc;
    for (depth, t) in parents.iter().enumerate() {
        let here = describe(&tokens[..=depth]);
        let next_is_seq = matches!(tokens[depth + 1], Token::Append | Token::Index { .. } | Token::Matching { .. });
        cur = match t {
            Token::Key { key, optional } => {
                if cur.is_null() && *optional {
                    *cur = Value::Mapping(Mapping::new());
                }
                let m = cur.as_mapping_mut().ok_or_else(|| format!("expected a map at `{here}`"))?;
                let k = Value::String(key.clone());
                if !m.contains_key(&k) {
                    if !optional {
                        return Err(format!("no key `{key}` at `{here}`"));
                    }
                    m.insert(
                        k.clone(),
                        if next_is_seq { Value::Sequence(vec![]) } else { Value::Mapping(Mapping::new()) },
                    );
                }
                m.get_mut(&k).expect("inserted above")
            }
            Token::Index { index, .. } => {
                let s = cur.as_sequence_mut().ok_or_else(|| format!("expected an array at `{here}`"))?;
                let len = s.len();
                let i = resolve_index(*index, len)
                    .ok_or_else(|| format!("index {index} is out of bounds at `{here}` (length {len})"))?;
                &mut s[i]
            }
            Token::Append => return Err(format!("`-` can only end a path (at `{here}`)")),
            Token::Matching { key, value, optional } => {
                let s = cur.as_sequence_mut().ok_or_else(|| format!("expected an array at `{here}`"))?;
                match find_matching(s, key, value)? {
                    Some(i) => &mut s[i],
                    None if *optional => {
                        let mut m = Mapping::new();
                        m.insert(Value::String(key.clone()), Value::String(value.clone()));
                        s.push(Value::Mapping(m));
                        s.last_mut().expect("pushed above")
                    }
                    None => return Err(format!("no array element has `{key}={value}` at `{here}`")),
                }
            }
        };
    }
    let here = describe(tokens);
    match last {
        Token::Key { key, .. } => {
            if cur.is_null() {
                *cur = Value::Mapping(Mapping::new());
            }
            let m = cur.as_mapping_mut().ok_or_else(|| format!("expected a map to hold `{here}`"))?;
            m.insert(Value::String(key.clone()), value);
        }
        Token::Index { index, .. } => {
            let s = cur.as_sequence_mut().ok_or_else(|| format!("expected an array at `{here}`"))?;
            let len = s.len();
            let i = resolve_index(*index, len)
                .ok_or_else(|| format!("index {index} is out of bounds at `{here}` (length {len})"))?;
            s[i] = value;
        }
        Token::Append => {
            if cur.is_null() {
                *cur = Value::Sequence(vec![]);
            }
            cur.as_sequence_mut().ok_or_else(|| format!("expected an array to append to at `{here}`"))?.push(value);
        }
        Token::Matching { key, value: v, optional } => {
            let s = cur.as_sequence_mut().ok_or_else(|| format!("expected an array at `{here}`"))?;
            match find_matching(s, key, v)? {
                Some(i) => s[i] = value,
                None if *optional => s.push(value),
                None => return Err(format!("no array element has `{key}={v}`")),
            }
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, tokens: &[Token]) -> Result<(), String> {
    let Some((last, parents)) = tokens.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    let mut cur = doc;
    for (depth, t) in parents.iter().enumerate() {
        let here = describe(&tokens[..=depth]);
        let next = match t {
            Token::Key { key, optional } => match cur.as_mapping_mut().and_then(|m| m.get_mut(key.as_str())) {
                Some(v) => v,
                None if *optional => return Ok(()),
                None => return Err(format!("no key `{key}` at `{here}`")),
            },
            Token::Index { index, optional } => {
                let s = cur.as_sequence_mut().ok_or_else(|| format!("expected an array at `{here}`"))?;
                let len = s.len();
                match resolve_index(*index, len) {
                    Some(i) => &mut s[i],
                    None if *optional => return Ok(()),
                    None => return Err(format!("index {index} is out of bounds at `{here}` (length {len})")),
                }
            }
            Token::Append => return Err("`-` cannot be removed".into()),
            Token::Matching { key, value, optional } => {
                let s = cur.as_sequence_mut().ok_or_else(|| format!("expected an array at `{here}`"))?;
                match find_matching(s, key, value)? {
                    Some(i) => &mut s[i],
                    None if *optional => return Ok(()),
                    None => return Err(format!("no array element has `{key}={value}` at `{here}`")),
                }
            }
        };
        cur = next;
    }
    match last {
        Token::Key { key, optional } => {
            let m = cur.as_mapping_mut().ok_or_else(|| "expected a map".to_string())?;
            if m.remove(key.as_str()).is_none() && !optional {
                return Err(format!("no key `{key}` to remove"));
            }
        }
        Token::Index { index, optional } => {
            let s = cur.as_sequence_mut().ok_or_else(|| "expected an array".to_string())?;
            match resolve_index(*index, s.len()) {
                Some(i) => {
                    s.remove(i);
                }
                None if *optional => {}
                None => return Err(format!("index {index} is out of bounds")),
            }
        }
        Token::Append => return Err("`-` cannot be removed".into()),
        Token::Matching { key, value, optional } => {
            let s = cur.as_sequence_mut().ok_or_else(|| "expected an array".to_string())?;
            match find_matching(s, key, value)? {
                Some(i) => {
                    s.remove(i);
                }
                None if *optional => {}
                None => return Err(format!("no array element has `{key}={value}`")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(doc: &str, ops: &str) -> Result<String, String> {
        let mut d: Value = serde_yaml::from_str(doc).unwrap();
        let ops = parse_ops("ops.yml", ops).map_err(|e| e.to_string())?;
        apply_ops("ops.yml", &mut d, &ops).map_err(|e| e.to_string())?;
        Ok(serde_json::to_string(&d).unwrap())
    }

    const DOC: &str =
        "instance_groups:\n- name: etcd\n  instances: 3\n  jobs: [{name: etcd}]\n- name: worker\n  instances: 1\n";

    #[test]
    fn replace_by_selector() {
        let out = run(DOC, "- type: replace\n  path: /instance_groups/name=etcd/instances\n  value: 5\n").unwrap();
        assert!(out.contains(r#""name":"etcd","instances":5"#), "{out}");
    }

    #[test]
    fn append_and_optional_creation() {
        let out = run(DOC, "- type: replace\n  path: /instance_groups/name=etcd/jobs/-\n  value: {name: x}\n- type: replace\n  path: /instance_groups/name=worker/env?/bosh/keep\n  value: true\n").unwrap();
        assert!(out.contains(r#"[{"name":"etcd"},{"name":"x"}]"#), "{out}");
        assert!(out.contains(r#""env":{"bosh":{"keep":true}}"#), "{out}");
    }

    #[test]
    fn remove_and_optional_remove() {
        let out =
            run(DOC, "- type: remove\n  path: /instance_groups/name=worker\n- type: remove\n  path: /nothing?/here\n")
                .unwrap();
        assert!(!out.contains("worker"), "{out}");
    }

    #[test]
    fn missing_path_is_an_error_naming_the_operation() {
        let e = run(DOC, "- type: replace\n  path: /instance_groups/name=db/instances\n  value: 1\n").unwrap_err();
        assert_eq!(e, "ops.yml: operation 0 (replace /instance_groups/name=db/instances): no array element has `name=db` at `/instance_groups/name=db`");
        let e = run(DOC, "- type: remove\n  path: /releases\n").unwrap_err();
        assert!(e.contains("no key `releases` to remove"), "{e}");
    }

    #[test]
    fn negative_index_and_root_replace() {
        let out = run(DOC, "- type: replace\n  path: /instance_groups/-1/instances\n  value: 2\n").unwrap();
        assert!(out.contains(r#""name":"worker","instances":2"#), "{out}");
    }
}
