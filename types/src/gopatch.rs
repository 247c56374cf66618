//! go-patch ops-files (`-o ops.yml`), with the semantics and messages of the BOSH CLI's go-patch:
//! operations `replace`, `remove` and `test` (an optional `error:` replaces the message of a
//! failing one); pointers of map keys, array indexes (negative from the end), `-` (after the last
//! element), `key=value` selectors (string values), `:prev` / `:next` (the neighbouring element)
//! and `:before` / `:after` (insertion) modifiers, `~0 ~1 ~2 ~3 ~7` escapes of `~ / ? = :`, and a
//! trailing `?` that makes that key or selector — and every one after it — optional. The empty
//! pointer is the whole document.

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

/// One operation as written in an ops-file. Fields go-patch does not know are ignored, as it
/// ignores them (a misspelt `vaule:` then reads as a missing value).
#[derive(Debug, Clone, Deserialize)]
pub struct Operation {
    #[serde(rename = "type")]
    pub kind: OpKind,
    pub path: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub value: Option<Value>,
    /// `test`: whether the path must not exist (given as false, the value tested is null).
    #[serde(default)]
    pub absent: Option<bool>,
    /// Replaces a failing operation's message (go-patch's descriptive operation).
    #[serde(default)]
    pub error: Option<String>,
}

/// `value: ~` is a value (null), not a missing one.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Replace,
    Remove,
    Test,
}

impl OpKind {
    fn as_str(self) -> &'static str {
        match self {
            OpKind::Replace => "replace",
            OpKind::Remove => "remove",
            OpKind::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modifier {
    Prev,
    Next,
    Before,
    After,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Index { index: i64, modifiers: Vec<Modifier> },
    AfterLast,
    Matching { key: String, value: String, optional: bool, modifiers: Vec<Modifier> },
    Key { key: String, optional: bool },
}

/// A parsed pointer: its tokens after the root.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointer {
    tokens: Vec<Token>,
}

fn decode(s: &str) -> String {
    // One pass, so `~01` is `~1`, not `/`.
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' {
            let decoded = match chars.peek() {
                Some('0') => Some('~'),
                Some('1') => Some('/'),
                Some('2') => Some('?'),
                Some('3') => Some('='),
                Some('7') => Some(':'),
                _ => None,
            };
            if let Some(d) = decoded {
                chars.next();
                out.push(d);
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn encode(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1").replace('?', "~2").replace('=', "~3").replace(':', "~7")
}

impl Pointer {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(Self { tokens: vec![] });
        }
        let rest = s.strip_prefix('/').ok_or_else(|| "Expected to start with '/'".to_string())?;
        let pieces: Vec<&str> = rest.split('/').collect();
        let mut tokens = Vec::new();
        let mut optional = false;
        for (i, piece) in pieces.iter().enumerate() {
            let last = i == pieces.len() - 1;
            let mut parts = piece.split(':');
            let mut tok = parts.next().unwrap_or_default().to_string();
            let mut modifiers = Vec::new();
            for m in parts {
                modifiers.push(match m {
                    "prev" => Modifier::Prev,
                    "next" => Modifier::Next,
                    "before" => Modifier::Before,
                    "after" => Modifier::After,
                    other => {
                        return Err(format!(
                            "Expected to find one of the following modifiers: 'prev', 'next', 'before', or 'after' but found '{other}'"
                        ))
                    }
                });
            }
            if last && tok == "-" {
                if !modifiers.is_empty() {
                    return Err("Expected not to find any modifiers with after last index token".into());
                }
                tokens.push(Token::AfterLast);
                continue;
            }
            if let Ok(index) = tok.parse::<i64>() {
                tokens.push(Token::Index { index, modifiers });
                continue;
            }
            if let Some(t) = tok.strip_suffix('?') {
                optional = true;
                tok = t.to_string();
            }
            if let Some((k, v)) = tok.split_once('=') {
                tokens.push(Token::Matching { key: decode(k), value: decode(v), optional, modifiers });
                continue;
            }
            if !modifiers.is_empty() {
                return Err("Expected not to find any modifiers with key token".into());
            }
            tokens.push(Token::Key { key: decode(&tok), optional });
        }
        Ok(Self { tokens })
    }

    /// The pointer of the first `n` tokens, written as go-patch writes it.
    fn prefix(&self, n: usize) -> String {
        let mut out = String::new();
        let mut optional = false;
        for t in &self.tokens[..n.min(self.tokens.len())] {
            out.push('/');
            let mods = |m: &[Modifier]| {
                m.iter()
                    .map(|m| match m {
                        Modifier::Prev => ":prev",
                        Modifier::Next => ":next",
                        Modifier::Before => ":before",
                        Modifier::After => ":after",
                    })
                    .collect::<String>()
            };
            match t {
                Token::Index { index, modifiers } => out.push_str(&format!("{index}{}", mods(modifiers))),
                Token::AfterLast => out.push('-'),
                Token::Matching { key, value, optional: o, modifiers } => {
                    let mut v = encode(value);
                    if *o && !optional {
                        v.push('?');
                        optional = true;
                    }
                    out.push_str(&format!("{}={v}{}", encode(key), mods(modifiers)));
                }
                Token::Key { key, optional: o } => {
                    out.push_str(&encode(key));
                    if *o && !optional {
                        out.push('?');
                        optional = true;
                    }
                }
            }
        }
        out
    }
}

/// Go's name for the type of a decoded YAML value, as go-patch's (and bosh's) messages print it.
pub(crate) fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Sequence(_) => "[]interface {}",
        Value::Mapping(_) => "map[interface {}]interface {}",
        Value::Tagged(_) => "interface {}",
    }
}

fn expected_array(p: &Pointer, n: usize, v: &Value) -> String {
    format!("Expected to find an array at path '{}' but found '{}'", p.prefix(n), go_type(v))
}

fn expected_map(p: &Pointer, n: usize, v: &Value) -> String {
    format!("Expected to find a map at path '{}' but found '{}'", p.prefix(n), go_type(v))
}

/// Why a pointer leads nowhere. `missing_at` names the path whose map key or array index is
/// missing (go-patch's `OpMissingMapKeyErr` / `OpMissingIndexErr`): `test … absent: true` passes
/// when that is the pointer itself, and fails on any other error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindError {
    pub message: String,
    pub missing_at: Option<String>,
}

impl std::fmt::Display for FindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FindError {}

impl From<String> for FindError {
    fn from(message: String) -> Self {
        FindError { message, missing_at: None }
    }
}

impl From<FindError> for String {
    fn from(e: FindError) -> Self {
        e.message
    }
}

fn missing_key(p: &Pointer, n: usize, key: &str, m: &Mapping) -> FindError {
    let mut keys: Vec<&str> = m.keys().filter_map(Value::as_str).collect();
    keys.sort();
    let siblings = if m.is_empty() {
        "found no other map keys".to_string()
    } else {
        format!("found map keys: '{}'", keys.join("', '"))
    };
    FindError {
        message: format!("Expected to find a map key '{key}' for path '{}' ({siblings})", p.prefix(n)),
        missing_at: Some(p.prefix(n)),
    }
}

fn missing_index(p: &Pointer, n: usize, index: i64, len: usize) -> FindError {
    FindError {
        message: format!(
            "Expected to find array index '{index}' but found array of length '{len}' for path '{}'",
            p.prefix(n)
        ),
        missing_at: Some(p.prefix(n)),
    }
}

/// The elements of `seq` that are maps whose `key` is the string `value` (go-patch compares the
/// decoded value with a string: a number or bool never matches).
fn matching(seq: &[Value], key: &str, value: &str) -> Vec<usize> {
    seq.iter()
        .enumerate()
        .filter(|(_, item)| item.as_mapping().and_then(|m| m.get(key)).and_then(Value::as_str) == Some(value))
        .map(|(i, _)| i)
        .collect()
}

fn several(p: &Pointer, n: usize, found: usize) -> String {
    format!("Expected to find exactly one matching array item for path '{}' but found {found}", p.prefix(n))
}

/// An array position after `:prev` / `:next` (negative from the end), checked.
fn concrete_index(p: &Pointer, n: usize, index: i64, modifiers: &[Modifier], len: usize) -> Result<usize, FindError> {
    let mut result = index;
    for m in modifiers {
        match m {
            Modifier::Prev => result -= 1,
            Modifier::Next => result += 1,
            other => {
                return Err(format!(
                    "Expected to find one of the following modifiers: 'prev', 'next', but found modifier '{}'",
                    match other {
                        Modifier::Before => "patch.BeforeModifier",
                        _ => "patch.AfterModifier",
                    }
                )
                .into())
            }
        }
    }
    let len_i = len as i64;
    if result >= len_i || -result > len_i {
        return Err(missing_index(p, n, result, len));
    }
    Ok(if result < 0 { (len_i + result) as usize } else { result as usize })
}

/// Where a replace at an array position writes: (position, insert rather than overwrite).
fn insertion(p: &Pointer, n: usize, index: i64, modifiers: &[Modifier], len: usize) -> Result<(usize, bool), String> {
    let (mut before, mut after) = (false, false);
    let mut moves = Vec::new();
    for m in modifiers {
        if before || after {
            return Err(format!(
                "Expected to not find any modifiers after '{}' modifier, but found modifier '{}'",
                if before { "before" } else { "after" },
                match m {
                    Modifier::Prev => "patch.PrevModifier",
                    Modifier::Next => "patch.NextModifier",
                    Modifier::Before => "patch.BeforeModifier",
                    Modifier::After => "patch.AfterModifier",
                }
            ));
        }
        match m {
            Modifier::Before => before = true,
            Modifier::After => after = true,
            other => moves.push(*other),
        }
    }
    let mut at = concrete_index(p, n, index, &moves, len)?;
    if after && at != len {
        at += 1;
    }
    Ok((at, before || after))
}

/// Writes `value` at an array position [`insertion`] worked out: inserted or in place of one.
fn put(seq: &mut Vec<Value>, (at, insert): (usize, bool), value: Value) -> Result<(), String> {
    if insert {
        seq.insert(at, value);
    } else {
        seq[at] = value;
    }
    Ok(())
}

fn replace(doc: &mut Value, p: &Pointer, value: Value) -> Result<(), String> {
    if p.tokens.is_empty() {
        *doc = value;
        return Ok(());
    }
    let mut cur = doc;
    let count = p.tokens.len();
    for (i, token) in p.tokens.iter().enumerate() {
        let n = i + 1;
        let last = n == count;
        cur = match token {
            Token::Index { index, modifiers } => {
                let shown = expected_array(p, n, cur);
                let seq = cur.as_sequence_mut().ok_or(shown)?;
                if last {
                    return put(seq, insertion(p, n, *index, modifiers, seq.len())?, value);
                }
                let at = concrete_index(p, n, *index, modifiers, seq.len())?;
                &mut seq[at]
            }
            Token::AfterLast => {
                let shown = expected_array(p, n, cur);
                let seq = cur.as_sequence_mut().ok_or(shown)?;
                if !last {
                    return Err(format!("Expected after last index token to be last in path '{}'", p.prefix(count)));
                }
                seq.push(value);
                return Ok(());
            }
            Token::Matching { key, value: wanted, optional, modifiers } => {
                let shown = expected_array(p, n, cur);
                let seq = cur.as_sequence_mut().ok_or(shown)?;
                let found = matching(seq, key, wanted);
                if *optional && found.is_empty() {
                    if last {
                        seq.push(value);
                        return Ok(());
                    }
                    let mut m = Mapping::new();
                    m.insert(Value::String(key.clone()), Value::String(wanted.clone()));
                    seq.push(Value::Mapping(m));
                    seq.last_mut().expect("just pushed")
                } else {
                    if found.len() != 1 {
                        return Err(several(p, n, found.len()));
                    }
                    if last {
                        return put(seq, insertion(p, n, found[0] as i64, modifiers, seq.len())?, value);
                    }
                    let at = concrete_index(p, n, found[0] as i64, modifiers, seq.len())?;
                    &mut seq[at]
                }
            }
            Token::Key { key, optional } => {
                let shown = expected_map(p, n, cur);
                let m = cur.as_mapping_mut().ok_or(shown)?;
                let k = Value::String(key.clone());
                if !m.contains_key(&k) && !optional {
                    return Err(missing_key(p, n, key, m).into());
                }
                if last {
                    m.insert(k, value);
                    return Ok(());
                }
                if !m.contains_key(&k) {
                    // What to make depends on what the next token reaches into.
                    let made = match &p.tokens[n] {
                        Token::AfterLast | Token::Matching { .. } => Value::Sequence(vec![]),
                        Token::Key { .. } => Value::Mapping(Mapping::new()),
                        Token::Index { .. } => {
                            return Err(format!(
                                "Expected to find key, matching index or after last index token at path '{}'",
                                p.prefix(n + 1)
                            ))
                        }
                    };
                    m.insert(k.clone(), made);
                }
                m.get_mut(&k).expect("present")
            }
        };
    }
    Ok(())
}

fn remove(doc: &mut Value, p: &Pointer) -> Result<(), String> {
    if p.tokens.is_empty() {
        return Err("Cannot remove entire document".into());
    }
    let mut cur = doc;
    let count = p.tokens.len();
    for (i, token) in p.tokens.iter().enumerate() {
        let n = i + 1;
        let last = n == count;
        cur = match token {
            Token::Index { index, modifiers } => {
                let shown = expected_array(p, n, cur);
                let seq = cur.as_sequence_mut().ok_or(shown)?;
                let at = concrete_index(p, n, *index, modifiers, seq.len())?;
                if last {
                    seq.remove(at);
                    return Ok(());
                }
                &mut seq[at]
            }
            Token::Matching { key, value, optional, modifiers } => {
                let shown = expected_array(p, n, cur);
                let seq = cur.as_sequence_mut().ok_or(shown)?;
                let found = matching(seq, key, value);
                if *optional && found.is_empty() {
                    return Ok(());
                }
                if found.len() != 1 {
                    return Err(several(p, n, found.len()));
                }
                let at = concrete_index(p, n, found[0] as i64, modifiers, seq.len())?;
                if last {
                    seq.remove(at);
                    return Ok(());
                }
                &mut seq[at]
            }
            Token::Key { key, optional } => {
                let shown = expected_map(p, n, cur);
                let m = cur.as_mapping_mut().ok_or(shown)?;
                if !m.contains_key(key.as_str()) {
                    if *optional {
                        return Ok(());
                    }
                    return Err(missing_key(p, n, key, m).into());
                }
                if last {
                    m.shift_remove(key.as_str());
                    return Ok(());
                }
                m.get_mut(key.as_str()).expect("present")
            }
            Token::AfterLast => {
                return Err(format!("Expected to not find token 'patch.AfterLastIndexToken' at path '{}'", p.prefix(n)))
            }
        };
    }
    Ok(())
}

/// What a pointer points at (bosh's `interpolate --path`, and `test`). A missing optional key is
/// null; a missing optional selector is the element it would create.
pub fn find(doc: &Value, p: &Pointer) -> Result<Value, FindError> {
    let mut cur = doc.clone();
    for (i, token) in p.tokens.iter().enumerate() {
        let n = i + 1;
        cur = match token {
            Token::Index { index, modifiers } => {
                let seq = cur.as_sequence().ok_or_else(|| expected_array(p, n, &cur))?;
                let at = concrete_index(p, n, *index, modifiers, seq.len())?;
                seq[at].clone()
            }
            Token::AfterLast => {
                return Err(format!(
                    "Expected not to find after last index token in path '{}' (not supported in find operations)",
                    p.prefix(p.tokens.len())
                )
                .into())
            }
            Token::Matching { key, value, optional, modifiers } => {
                let seq = cur.as_sequence().ok_or_else(|| expected_array(p, n, &cur))?;
                let found = matching(seq, key, value);
                if *optional && found.is_empty() {
                    let mut m = Mapping::new();
                    m.insert(Value::String(key.clone()), Value::String(value.clone()));
                    Value::Mapping(m)
                } else {
                    if found.len() != 1 {
                        return Err(several(p, n, found.len()).into());
                    }
                    let at = concrete_index(p, n, found[0] as i64, modifiers, seq.len())?;
                    seq[at].clone()
                }
            }
            Token::Key { key, optional } => {
                let m = cur.as_mapping().ok_or_else(|| expected_map(p, n, &cur))?;
                match m.get(key.as_str()) {
                    Some(v) => v.clone(),
                    None if *optional => match p.tokens.get(n) {
                        None => Value::Null,
                        Some(Token::Matching { .. }) => Value::Sequence(vec![]),
                        Some(Token::Key { .. }) => Value::Mapping(Mapping::new()),
                        Some(_) => {
                            return Err(format!(
                                "Expected to find key or matching index token at path '{}'",
                                p.prefix(n + 1)
                            )
                            .into())
                        }
                    },
                    None => return Err(missing_key(p, n, key, m)),
                }
            }
        };
    }
    Ok(cur)
}

fn test(doc: &Value, p: &Pointer, op: &Operation) -> Result<(), String> {
    if op.absent == Some(true) {
        return match find(doc, p) {
            Err(e) if e.missing_at.as_deref() == Some(p.prefix(p.tokens.len()).as_str()) => Ok(()),
            Err(e) => Err(e.message),
            Ok(_) => Err(format!("Expected to not find '{}'", p.prefix(p.tokens.len()))),
        };
    }
    let found = find(doc, p)?;
    if found != op.value.clone().unwrap_or(Value::Null) {
        return Err("Found value does not match expected value".into());
    }
    Ok(())
}

/// Parses an ops-file (a YAML list of operations).
pub fn parse_ops(source_name: &str, text: &str) -> Result<Vec<Operation>, crate::DocumentError> {
    let v = crate::yaml::parse_value(source_name, text)?;
    if v.is_null() {
        return Ok(vec![]);
    }
    crate::yaml::from_value(source_name, v)
}

/// Checks an operation's fields as go-patch does before anything is applied.
fn check(op: &Operation) -> Result<Pointer, String> {
    let path = op.path.as_deref().ok_or("Missing path")?;
    match op.kind {
        OpKind::Replace if op.value.is_none() => return Err("Missing value".into()),
        OpKind::Remove if op.value.is_some() => return Err("Cannot specify value".into()),
        OpKind::Test if op.value.is_none() && op.absent.is_none() => return Err("Missing value or absent".into()),
        _ => {}
    }
    Pointer::parse(path).map_err(|e| format!("Invalid path: {e}"))
}

/// Applies operations in order to a document. Every operation is checked first: a malformed one
/// fails the whole file before any is applied.
pub fn apply_ops(source_name: &str, doc: &mut Value, ops: &[Operation]) -> Result<(), OpError> {
    let err = |i: usize, op: &Operation, message: String| OpError {
        source_name: source_name.to_string(),
        index: i,
        kind: op.kind.as_str().to_string(),
        path: op.path.clone().unwrap_or_default(),
        message,
    };
    let mut pointers = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        pointers.push(check(op).map_err(|m| err(i, op, m))?);
    }
    for (i, (op, p)) in ops.iter().zip(&pointers).enumerate() {
        let applied = match op.kind {
            OpKind::Replace => replace(doc, p, op.value.clone().expect("checked")),
            OpKind::Remove => remove(doc, p),
            OpKind::Test => test(doc, p, op),
        };
        applied.map_err(|m| match &op.error {
            Some(custom) => err(i, op, format!("Error '{custom}': {m}")),
            None => err(i, op, m),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies `ops` to `doc`; the result as compact JSON, or the error's message.
    fn run(doc: &str, ops: &str) -> Result<String, String> {
        let mut d: Value = serde_yaml::from_str(doc).unwrap();
        let ops = parse_ops("ops.yml", ops).map_err(|e| e.to_string())?;
        apply_ops("ops.yml", &mut d, &ops).map_err(|e| e.message)?;
        Ok(serde_json::to_string(&d).unwrap())
    }

    const DOC: &str = "key: 1\nkey2: {nested: {super_nested: 2}, other: 3}\narray: [4, 5, 6]\nitems:\n- name: item7\n- name: item8\n- name: item8\n";

    /// (what, ops, expected JSON or `Err:` + message) — the cases go-patch's documentation
    /// describes, and its edges.
    const CASES: &[(&str, &str, &str)] = &[
        ("set a key", "[{type: replace, path: /key, value: 10}]", r#"{"key":10,"key2":{"nested":{"super_nested":2},"other":3},"array":[4,5,6],"items":[{"name":"item7"},{"name":"item8"},{"name":"item8"}]}"#),
        ("a missing key without ?", "[{type: replace, path: /abc, value: 10}]", "Err:Expected to find a map key 'abc' for path '/abc' (found map keys: 'array', 'items', 'key', 'key2')"),
        ("a missing key with ?", "[{type: replace, path: /new_key?, value: 10}]", r#""new_key":10"#),
        ("? carries over", "[{type: replace, path: /key2/nested?/another_nested/super_nested, value: 10}]", r#""nested":{"super_nested":2,"another_nested":{"super_nested":10}}"#),
        ("an index", "[{type: replace, path: /array/0, value: 10}]", r#""array":[10,5,6]"#),
        ("a negative index", "[{type: replace, path: /array/-1, value: 10}]", r#""array":[4,5,10]"#),
        ("an index past the end", "[{type: replace, path: /array/3, value: 10}]", "Err:Expected to find array index '3' but found array of length '3' for path '/array/3'"),
        ("a negative index past the start", "[{type: replace, path: /array/-4, value: 10}]", "Err:Expected to find array index '-4' but found array of length '3' for path '/array/-4'"),
        ("append", "[{type: replace, path: /array/-, value: 10}]", r#""array":[4,5,6,10]"#),
        ("append to a new array", "[{type: replace, path: /array2?/-, value: 10}]", r#""array2":[10]"#),
        (":prev", "[{type: replace, path: /array/1:prev, value: 10}]", r#""array":[10,5,6]"#),
        (":next", "[{type: replace, path: /array/0:next, value: 10}]", r#""array":[4,10,6]"#),
        (":after", "[{type: replace, path: /array/0:after, value: 10}]", r#""array":[4,10,5,6]"#),
        (":before", "[{type: replace, path: /array/0:before, value: 10}]", r#""array":[10,4,5,6]"#),
        (":after the last", "[{type: replace, path: /array/2:after, value: 10}]", r#""array":[4,5,6,10]"#),
        ("a selector", "[{type: replace, path: /items/name=item7/name, value: item70}]", r#"{"name":"item70"}"#),
        ("a new key under a selector needs ?", "[{type: replace, path: /items/name=item7/count, value: 10}]", "Err:Expected to find a map key 'count' for path '/items/name=item7/count' (found map keys: 'name')"),
        ("a new key under a selector", "[{type: replace, path: /items/name=item7/count?, value: 10}]", r#"{"name":"item7","count":10}"#),
        ("a selector matching two", "[{type: replace, path: /items/name=item8/count, value: 10}]", "Err:Expected to find exactly one matching array item for path '/items/name=item8' but found 2"),
        ("a selector matching none", "[{type: replace, path: /items/name=item9/count, value: 10}]", "Err:Expected to find exactly one matching array item for path '/items/name=item9' but found 0"),
        ("an optional selector creates", "[{type: replace, path: /items/name=item9?/count, value: 10}]", r#"{"name":"item9","count":10}"#),
        ("an optional selector as the last token appends the value", "[{type: replace, path: /items/name=item9?, value: {name: x}}]", r#"{"name":"item8"},{"name":"x"}]"#),
        ("a selector with :after", "[{type: replace, path: /items/name=item7:after, value: {name: new}}]", r#"[{"name":"item7"},{"name":"new"},{"name":"item8"}"#),
        ("a key on an array", "[{type: replace, path: /array/x, value: 1}]", "Err:Expected to find a map at path '/array/x' but found '[]interface {}'"),
        ("an index on a map", "[{type: replace, path: /key2/0, value: 1}]", "Err:Expected to find an array at path '/key2/0' but found 'map[interface {}]interface {}'"),
        ("a selector only matches strings", "[{type: replace, path: /nums/n=1/x, value: 1}]", "Err:Expected to find a map key 'nums' for path '/nums' (found map keys: 'array', 'items', 'key', 'key2')"),
        ("escapes", "[{type: replace, path: /a~1b?, value: 1}, {type: replace, path: /c~0d~2~3~7?, value: 2}]", r#""a/b":1,"c~d?=:":2"#),
        ("the whole document", "[{type: replace, path: '', value: {x: 1}}]", r#"{"x":1}"#),
        ("`/` is the empty key", "[{type: replace, path: /, value: 1}]", "Err:Expected to find a map key '' for path '/' (found map keys: 'array', 'items', 'key', 'key2')"),
        ("`/?` makes it", "[{type: replace, path: /?, value: 1}]", r#""":1"#),
        ("`/-/key` is the key `-`", "[{type: replace, path: /-?/key, value: 1}]", r#""-":{"key":1}"#),
        ("a missing key before an index", "[{type: replace, path: /new?/0, value: 1}]", "Err:Expected to find key, matching index or after last index token at path '/new?/0'"),
        ("remove a key", "[{type: remove, path: /key}]", r#"{"key2""#),
        ("remove a missing key", "[{type: remove, path: /abc}]", "Err:Expected to find a map key 'abc' for path '/abc' (found map keys: 'array', 'items', 'key', 'key2')"),
        ("remove an absent optional path", "[{type: remove, path: /abc?/def}]", r#"{"key":1"#),
        ("remove an absent optional selector", "[{type: remove, path: /items/name=nope?}]", r#"{"name":"item8"}]"#),
        ("remove by index", "[{type: remove, path: /array/-1}]", r#""array":[4,5]"#),
        ("remove with :next", "[{type: remove, path: /array/0:next}]", r#""array":[4,6]"#),
        ("remove the whole document", "[{type: remove, path: ''}]", "Err:Cannot remove entire document"),
        ("test a value", "[{type: test, path: /key, value: 1}]", r#"{"key":1"#),
        ("test a different value", "[{type: test, path: /key, value: 2}]", "Err:Found value does not match expected value"),
        ("test absent", "[{type: test, path: /nope, absent: true}]", r#"{"key":1"#),
        ("test absent past an array's end", "[{type: test, path: /array/7, absent: true}]", r#"{"key":1"#),
        ("test absent of an unmatched selector", "[{type: test, path: /items/name=nope, absent: true}]", "Err:Expected to find exactly one matching array item for path '/items/name=nope' but found 0"),
        ("test absent, present", "[{type: test, path: /key, absent: true}]", "Err:Expected to not find '/key'"),
        ("test absent above a missing parent", "[{type: test, path: /nope/deeper, absent: true}]", "Err:Expected to find a map key 'nope' for path '/nope' (found map keys: 'array', 'items', 'key', 'key2')"),
        ("a custom error", "[{type: test, path: /key, value: 2, error: key must be 2}]", "Err:Error 'key must be 2': Found value does not match expected value"),
        ("absent wins over a value", "[{type: test, path: /nope, value: 1, absent: true}]", r#"{"key":1"#),
        ("absent: false tests for null", "[{type: test, path: /nope?, absent: false}]", r#"{"key":1"#),
        ("a test without value or absent", "[{type: test, path: /key}]", "Err:Missing value or absent"),
        ("unknown fields are ignored", "[{type: replace, path: /key, value: 3, note: why}]", r#"{"key":3"#),
        ("a replace without a value", "[{type: replace, path: /key}]", "Err:Missing value"),
        ("a remove with a value", "[{type: remove, path: /key, value: 1}]", "Err:Cannot specify value"),
        ("a path without /", "[{type: replace, path: key, value: 1}]", "Err:Invalid path: Expected to start with '/'"),
        ("an unknown modifier", "[{type: replace, path: /array/0:sideways, value: 1}]", "Err:Invalid path: Expected to find one of the following modifiers: 'prev', 'next', 'before', or 'after' but found 'sideways'"),
        ("a null value is a value", "[{type: replace, path: /key, value: ~}]", r#"{"key":null"#),
    ];

    #[test]
    fn go_patch_semantics() {
        for (what, ops, want) in CASES {
            match (run(DOC, ops), want.strip_prefix("Err:")) {
                (Ok(got), None) => assert!(got.contains(want), "{what}: {got} lacks {want}"),
                (Err(got), Some(msg)) => assert_eq!(&got, msg, "{what}"),
                (got, _) => panic!("{what}: got {got:?}, want {want}"),
            }
        }
    }

    #[test]
    fn a_malformed_operation_fails_the_file_before_any_applies() {
        let mut d: Value = serde_yaml::from_str(DOC).unwrap();
        let ops = parse_ops("ops.yml", "[{type: replace, path: /key, value: 9}, {type: remove, path: /x, value: 1}]")
            .unwrap();
        let e = apply_ops("ops.yml", &mut d, &ops).unwrap_err();
        assert_eq!(e.to_string(), "ops.yml: operation 1 (remove /x): Cannot specify value");
        assert_eq!(d["key"], Value::from(1), "nothing applied");
    }

    #[test]
    fn find_follows_the_same_pointers() {
        let d: Value = serde_yaml::from_str(DOC).unwrap();
        let f = |p: &str| find(&d, &Pointer::parse(p).unwrap());
        assert_eq!(f("/items/name=item7").unwrap(), serde_yaml::from_str::<Value>("{name: item7}").unwrap());
        assert_eq!(f("/array/-1").unwrap(), Value::from(6));
        assert_eq!(f("/array/1:prev").unwrap(), Value::from(4));
        assert_eq!(f("/nope?").unwrap(), Value::Null);
        assert_eq!(f("").unwrap(), d);
        assert!(f("/array/-").unwrap_err().message.contains("not supported in find operations"));
    }
}
