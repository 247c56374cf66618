//! YAML read the way the BOSH CLI reads it (Go's `gopkg.in/yaml.v2` into untyped values): plain
//! scalars resolved by YAML 1.1's rules ([`super::resolve`]), quoted and block scalars always
//! text, `!!str`/`!!int`/`!!float`/`!!bool`/`!!null`/`!!binary` tags honoured, `<<` merge keys.
//! Unlike yaml.v2, a key given twice in one map and a second document are errors naming the line:
//! both silently drop something an operator wrote.

use super::resolve;
use base64::Engine;
use serde_yaml::{Mapping, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deeper nesting than any manifest has; bounds the loader's recursion on hostile input.
const MAX_DEPTH: usize = 256;
/// Nodes that aliases may copy in all (a "billion laughs" document is refused, not expanded).
const MAX_ALIASED_NODES: usize = 1_000_000;

/// Why a text is not a YAML document, and where (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at line {line} column {column}")]
pub struct LoadError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl LoadError {
    fn at(mark: Marker, message: impl Into<String>) -> Self {
        LoadError { line: mark.line(), column: mark.col() + 1, message: message.into() }
    }
}

/// Reads one YAML document (an empty text is null).
pub fn parse(text: &str) -> Result<Value, LoadError> {
    let mut loader = Loader { parser: Parser::new_from_str(text), anchors: HashMap::new(), aliased_nodes: 0 };
    loader.next()?; // the stream's start
    let (event, mark) = loader.next()?;
    match event {
        Event::StreamEnd => return Ok(Value::Null),
        Event::DocumentStart => {}
        _ => return Err(LoadError::at(mark, "expected a document")),
    }
    let (event, mark) = loader.next()?;
    let doc = loader.node(event, mark, 0)?;
    loader.next()?; // the document's end
    match loader.next()? {
        (Event::StreamEnd, _) => Ok(doc),
        (_, mark) => Err(LoadError::at(mark, "a second document (after `---`); give one document per file")),
    }
}

struct Loader<'a> {
    parser: Parser<std::str::Chars<'a>>,
    anchors: HashMap<usize, (Value, usize)>,
    aliased_nodes: usize,
}

impl Loader<'_> {
    fn next(&mut self) -> Result<(Event, Marker), LoadError> {
        self.parser.next_token().map_err(|e| LoadError::at(*e.marker(), e.info()))
    }

    fn node(&mut self, event: Event, mark: Marker, depth: usize) -> Result<Value, LoadError> {
        if depth > MAX_DEPTH {
            return Err(LoadError::at(mark, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => (scalar(text, style, tag.as_ref(), mark)?, anchor),
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, mark) = self.next()?;
                    if event == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(event, mark, depth + 1)?);
                }
                (Value::Sequence(items), anchor)
            }
            Event::MappingStart(anchor, _) => (self.mapping(depth)?, anchor),
            Event::Alias(id) => {
                let (value, nodes) = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| LoadError::at(mark, "an alias to an anchor not defined before it"))?;
                self.aliased_nodes += nodes;
                if self.aliased_nodes > MAX_ALIASED_NODES {
                    return Err(LoadError::at(mark, format!("aliases expand to more than {MAX_ALIASED_NODES} nodes")));
                }
                return Ok(value);
            }
            _ => return Err(LoadError::at(mark, "expected a value")),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, (value.clone(), count_nodes(&value)));
        }
        Ok(value)
    }

    fn mapping(&mut self, depth: usize) -> Result<Value, LoadError> {
        let mut map = Mapping::new();
        let mut explicit = Mapping::new();
        loop {
            let (event, key_mark) = self.next()?;
            if event == Event::MappingEnd {
                break;
            }
            let is_merge = matches!(&event, Event::Scalar(t, TScalarStyle::Plain, _, None) if t == "<<");
            let key = self.node(event, key_mark, depth + 1)?;
            let (event, mark) = self.next()?;
            let value = self.node(event, mark, depth + 1)?;
            if is_merge {
                merge(&mut map, value, key_mark)?;
                continue;
            }
            if explicit.insert(key.clone(), Value::Null).is_some() {
                let name = match &key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                };
                return Err(LoadError::at(key_mark, format!("the key `{name}` is given twice in this map")));
            }
            map.insert(key, value);
        }
        Ok(Value::Mapping(map))
    }
}

/// `<<: *base` or `<<: [*a, *b]`: the merged maps' entries, in order (an earlier map in a list
/// wins, a later explicit key wins), as yaml.v2 merges them.
fn merge(map: &mut Mapping, value: Value, mark: Marker) -> Result<(), LoadError> {
    let want = || LoadError::at(mark, "a merge (`<<`) takes a map or a list of maps");
    match value {
        Value::Mapping(m) => map.extend(m),
        Value::Sequence(items) => {
            for item in items.into_iter().rev() {
                match item {
                    Value::Mapping(m) => map.extend(m),
                    _ => return Err(want()),
                }
            }
        }
        _ => return Err(want()),
    }
    Ok(())
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Sequence(s) => s.iter().map(count_nodes).sum(),
        Value::Mapping(m) => m.iter().map(|(k, v)| count_nodes(k) + count_nodes(v)).sum(),
        Value::Tagged(t) => count_nodes(&t.value),
        _ => 0,
    }
}

fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>, mark: Marker) -> Result<Value, LoadError> {
    let Some(tag) = tag else {
        return Ok(if style == TScalarStyle::Plain { resolve::plain(&text) } else { Value::String(text) });
    };
    if tag.handle != "tag:yaml.org,2002:" {
        // An application's own tag (`!secret x`): yaml.v2 keeps the text.
        return Ok(Value::String(text));
    }
    let cannot = |what: &str| LoadError::at(mark, format!("cannot read `{text}` as !!{what}"));
    let resolved = resolve::plain(&text);
    Ok(match tag.suffix.as_str() {
        "str" | "timestamp" => Value::String(text),
        "binary" => {
            let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD.decode(compact).map_err(|_| cannot("binary"))?;
            Value::String(String::from_utf8(bytes).map_err(|_| cannot("binary (it is not UTF-8 text)"))?)
        }
        "null" if resolved.is_null() => Value::Null,
        "bool" if resolved.is_bool() => resolved,
        "int" if resolved.is_i64() || resolved.is_u64() => resolved,
        "float" if resolved.is_number() => Value::from(resolved.as_f64().unwrap_or_default()),
        "null" | "bool" | "int" | "float" => return Err(cannot(&tag.suffix)),
        _ => Value::String(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Value {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn yaml_1_1_plain_scalars_and_quoted_text() {
        let v = load("a: yes\nb: 'yes'\nc: \"0777\"\nd: 0777\ne: |\n  on\nf: !!str 12\ng: !!int \"12\"\nh: !!float 1\ni: ~\nj:\n");
        let want =
            load("a: true\nb: 'yes'\nc: '0777'\nd: 511\ne: \"on\\n\"\nf: '12'\ng: 12\nh: 1.0\ni: null\nj: null\n");
        assert_eq!(v, want);
        assert_eq!(load("yes: 1"), load("true: 1"));
        assert_eq!(load("k: !!binary aGVsbG8="), load("k: hello"));
        assert_eq!(load("k: !custom 5"), load("k: '5'"));
        assert_eq!(load(""), Value::Null);
        assert_eq!(load("# only a comment\n"), Value::Null);
        assert_eq!(load("---\nk: v\n"), load("k: v"));
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let v = load("base: &b {x: 1, y: 2}\nuse: *b\nm:\n  <<: *b\n  y: 3\nl:\n  <<: [{x: 1}, {x: 2, z: 2}]\n");
        assert_eq!(v["use"], load("{x: 1, y: 2}"));
        assert_eq!(v["m"], load("{x: 1, y: 3}"));
        assert_eq!(v["l"], load("{x: 1, z: 2}"));
        // A quoted `<<` is an ordinary key.
        assert_eq!(load("'<<': 1")["<<"], Value::from(1));
    }

    #[test]
    fn bad_documents_name_the_line() {
        let e = parse("a: 1\nb: [\n").unwrap_err();
        assert!(e.line >= 2, "{e}");
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (3, "the key `a` is given twice in this map"));
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = parse("k: !!int abc\n").unwrap_err();
        assert_eq!(e.to_string(), "cannot read `abc` as !!int at line 1 column 10");
        let e = parse("m:\n  <<: 5\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse("k: *nowhere\n").is_err());
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse(&doc).unwrap_err();
        assert!(e.message.contains("aliases expand"), "{e}");
    }
}
