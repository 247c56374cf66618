//! The writer: yaml.v2's emitter for the values bosun handles.

use super::resolve;
use serde_yaml::Value;
use std::cmp::Ordering;
use std::fmt::Write;

/// The document as yaml.v2 marshals it.
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Mapping(m) if !m.is_empty() => mapping(&mut out, m, 0),
        Value::Sequence(s) if !s.is_empty() => sequence(&mut out, s, 0),
        other => {
            out.push_str(&inline(other, At { indent: 2, column: 0 }));
            out.push('\n');
        }
    }
    out
}

/// Where a scalar value is written: the column it starts at, and the indentation of the lines it
/// continues on (a folded line, a literal block's lines).
#[derive(Clone, Copy)]
struct At {
    indent: usize,
    column: usize,
}

/// yaml.v2's preferred line width: plain and quoted values are folded at a space past it.
const BEST_WIDTH: usize = 80;

/// A scalar or an empty collection as a value (a literal block or a folded string continues on
/// the next lines).
fn inline(v: &Value, at: At) -> String {
    match v {
        Value::String(s) => string(s, Some(at)),
        Value::Tagged(t) => inline(&t.value, at),
        other => key_text(other),
    }
}

/// A scalar or an empty collection as a map key: on one line, never folded.
fn key_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
            Some(f) => go_float(f),
            None => n.to_string(),
        },
        Value::String(s) => string(s, None),
        Value::Sequence(_) => "[]".into(),
        Value::Mapping(_) => "{}".into(),
        Value::Tagged(t) => key_text(&t.value),
    }
}

fn untagged(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untagged(&t.value),
        other => other,
    }
}

fn mapping(out: &mut String, m: &serde_yaml::Mapping, indent: usize) {
    let mut entries: Vec<(&Value, &Value)> = m.iter().collect();
    entries.sort_by(|a, b| key_order(a.0, b.0));
    let pad = " ".repeat(indent);
    for (k, v) in entries {
        let key = key_text(k);
        match untagged(v) {
            Value::Mapping(inner) if !inner.is_empty() => {
                let _ = writeln!(out, "{pad}{key}:");
                mapping(out, inner, indent + 2);
            }
            // yaml.v2 does not indent a sequence under its key.
            Value::Sequence(inner) if !inner.is_empty() => {
                let _ = writeln!(out, "{pad}{key}:");
                sequence(out, inner, indent);
            }
            other => {
                let at = At { indent: indent + 2, column: indent + key.chars().count() + 2 };
                let _ = writeln!(out, "{pad}{key}: {}", inline(other, at));
            }
        }
    }
}

fn sequence(out: &mut String, s: &[Value], indent: usize) {
    let pad = " ".repeat(indent);
    for item in s {
        match untagged(item) {
            Value::Mapping(inner) if !inner.is_empty() => {
                // The first entry on the dash's line, the rest under it.
                let mut body = String::new();
                mapping(&mut body, inner, indent + 2);
                let body = body.strip_prefix(&" ".repeat(indent + 2)).unwrap_or(&body).to_string();
                let _ = write!(out, "{pad}- {body}");
            }
            Value::Sequence(inner) if !inner.is_empty() => {
                let mut body = String::new();
                sequence(&mut body, inner, indent + 2);
                let body = body.strip_prefix(&" ".repeat(indent + 2)).unwrap_or(&body).to_string();
                let _ = write!(out, "{pad}- {body}");
            }
            other => {
                let at = At { indent: indent + 2, column: indent + 2 };
                let _ = writeln!(out, "{pad}- {}", inline(other, at));
            }
        }
    }
}

/// yaml.v2's order of map keys.
fn key_order(a: &Value, b: &Value) -> Ordering {
    let (a, b) = (untagged(a), untagged(b));
    let num = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(x) => Some(if *x { 1.0 } else { 0.0 }),
        _ => None,
    };
    // Go's reflect kinds, for keys of different types: bool < int < float < string.
    let kind = |v: &Value| match v {
        Value::Bool(_) => 1,
        Value::Number(n) if n.is_f64() => 14,
        Value::Number(_) => 2,
        Value::String(_) => 24,
        _ => 25,
    };
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal).then(kind(a).cmp(&kind(b)));
    }
    let (Value::String(x), Value::String(y)) = (a, b) else { return kind(a).cmp(&kind(b)) };
    let (ar, br): (Vec<char>, Vec<char>) = (x.chars().collect(), y.chars().collect());
    for i in 0..ar.len().min(br.len()) {
        if ar[i] == br[i] {
            continue;
        }
        let (al, bl) = (ar[i].is_alphabetic(), br[i].is_alphabetic());
        if al && bl {
            return ar[i].cmp(&br[i]);
        }
        if al || bl {
            return if bl { Ordering::Less } else { Ordering::Greater };
        }
        // Digit runs compare as numbers (a run after a non-zero digit counts from there).
        let (mut an, mut bn) = (0i128, 0i128);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an.saturating_mul(10).saturating_add(ar[ai] as i128 - '0' as i128);
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn.saturating_mul(10).saturating_add(br[bi] as i128 - '0' as i128);
            bi += 1;
        }
        if an != bn {
            return an.cmp(&bn);
        }
        if ai != bi {
            return ai.cmp(&bi);
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

/// A string's scalar style, chosen as yaml.v2 chooses it and libyaml's emitter corrects it.
#[derive(PartialEq)]
enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
}

/// Go yaml's `is_printable`: what may appear unescaped (tabs, C1 controls and characters beyond
/// the Basic Multilingual Plane may not).
fn printable(c: char) -> bool {
    matches!(c as u32, 0x0A | 0x20..=0x7E | 0xA0..=0xD7FF | 0xE000..=0xFFFD) && c != '\u{FEFF}'
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn blank_or_end(c: Option<char>) -> bool {
    c.is_none_or(|c| c == ' ' || c == '\t' || is_break(c) || c == '\0')
}

/// What libyaml's `yaml_emitter_analyze_scalar` allows for a string in block context.
struct Allowed {
    plain: bool,
    single_quoted: bool,
    literal: bool,
}

fn analyze(s: &str) -> Allowed {
    if s.is_empty() {
        return Allowed { plain: true, single_quoted: true, literal: false };
    }
    let chars: Vec<char> = s.chars().collect();
    let mut indicators = s.starts_with("---") || s.starts_with("...");
    let (mut special, mut line_breaks) = (false, false);
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) = (false, false, false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut previous_space, mut previous_break) = (false, false);
    let mut preceded_by_whitespace = true;
    for (i, &c) in chars.iter().enumerate() {
        let followed_by_whitespace = blank_or_end(chars.get(i + 1).copied());
        let last = i + 1 == chars.len();
        if i == 0 {
            indicators |= "#,[]{}&*!|>'\"%@`".contains(c) || (matches!(c, '?' | ':' | '-') && followed_by_whitespace);
        } else {
            indicators |= (c == ':' && followed_by_whitespace) || (c == '#' && preceded_by_whitespace);
        }
        special |= !printable(c);
        line_breaks |= is_break(c);
        if c == ' ' {
            leading_space |= i == 0;
            trailing_space |= last;
            break_space |= previous_break;
            (previous_space, previous_break) = (true, false);
        } else if is_break(c) {
            leading_break |= i == 0;
            trailing_break |= last;
            space_break |= previous_space;
            (previous_space, previous_break) = (false, true);
        } else {
            (previous_space, previous_break) = (false, false);
        }
        preceded_by_whitespace = blank_or_end(Some(c));
    }
    let mut allowed = Allowed { plain: true, single_quoted: true, literal: true };
    if leading_space || leading_break || trailing_space || trailing_break || line_breaks || indicators {
        allowed.plain = false;
    }
    if trailing_space {
        allowed.literal = false;
    }
    if break_space {
        allowed.plain = false;
        allowed.single_quoted = false;
    }
    if space_break || special {
        allowed = Allowed { plain: false, single_quoted: false, literal: false };
    }
    allowed
}

/// A string as yaml.v2 writes it: as a value at `at` (folded past 80 columns, a literal block for
/// several lines), or as a map key (`None`: one line, never folded).
fn string(s: &str, at: Option<At>) -> String {
    let allowed = analyze(s);
    let mut style = if s.contains('\n') {
        Style::Literal
    } else if resolve::needs_quotes(s) {
        Style::DoubleQuoted
    } else {
        Style::Plain
    };
    if style == Style::Plain && (!allowed.plain || (s.is_empty() && at.is_none())) {
        style = Style::SingleQuoted;
    }
    if style == Style::SingleQuoted && !allowed.single_quoted {
        style = Style::DoubleQuoted;
    }
    if style == Style::Literal && (!allowed.literal || at.is_none()) {
        style = Style::DoubleQuoted;
    }
    let mut w = Writer { out: String::new(), at, column: at.map_or(0, |a| a.column) };
    match style {
        Style::Plain => w.plain(s),
        Style::SingleQuoted => w.single_quoted(s),
        Style::DoubleQuoted => w.double_quoted(s),
        Style::Literal => w.literal(s),
    }
    w.out
}

/// libyaml's scalar writers, counting columns to fold where it folds.
struct Writer {
    out: String,
    at: Option<At>,
    column: usize,
}

impl Writer {
    fn put(&mut self, c: char) {
        self.out.push(c);
        self.column += 1;
    }

    fn put_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.put(c));
    }

    /// A line break and the continuation indentation.
    fn indent(&mut self) {
        let indent = self.at.map_or(0, |a| a.indent);
        self.out.push('\n');
        self.out.push_str(&" ".repeat(indent));
        self.column = indent;
    }

    /// Whether a space here may become a line break: a value, past the width, not after another
    /// space.
    fn may_fold(&self, previous_space: bool) -> bool {
        self.at.is_some() && !previous_space && self.column > BEST_WIDTH
    }

    fn plain(&mut self, s: &str) {
        let chars: Vec<char> = s.chars().collect();
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                if self.may_fold(spaces) && chars.get(i + 1) != Some(&' ') {
                    self.indent();
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
        }
    }

    fn single_quoted(&mut self, s: &str) {
        let chars: Vec<char> = s.chars().collect();
        self.put('\'');
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                let inner = i != 0 && i + 1 != chars.len();
                if self.may_fold(spaces) && inner && chars.get(i + 1) != Some(&' ') {
                    self.indent();
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                if c == '\'' {
                    self.put('\'');
                }
                self.put(c);
                spaces = false;
            }
        }
        self.put('\'');
    }

    fn double_quoted(&mut self, s: &str) {
        let chars: Vec<char> = s.chars().collect();
        self.put('"');
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if !printable(c) || is_break(c) || c == '"' || c == '\\' {
                let escaped = match c {
                    '\0' => "\\0".to_string(),
                    '\u{7}' => "\\a".into(),
                    '\u{8}' => "\\b".into(),
                    '\t' => "\\t".into(),
                    '\n' => "\\n".into(),
                    '\u{b}' => "\\v".into(),
                    '\u{c}' => "\\f".into(),
                    '\r' => "\\r".into(),
                    '\u{1b}' => "\\e".into(),
                    '"' => "\\\"".into(),
                    '\\' => "\\\\".into(),
                    '\u{85}' => "\\N".into(),
                    '\u{a0}' => "\\_".into(),
                    '\u{2028}' => "\\L".into(),
                    '\u{2029}' => "\\P".into(),
                    c if (c as u32) <= 0xFF => format!("\\x{:02X}", c as u32),
                    c if (c as u32) <= 0xFFFF => format!("\\u{:04X}", c as u32),
                    c => format!("\\U{:08X}", c as u32),
                };
                self.put_str(&escaped);
                spaces = false;
            } else if c == ' ' {
                let inner = i != 0 && i + 1 != chars.len();
                if self.may_fold(spaces) && inner {
                    self.indent();
                    // A continuation line's leading space would be folded away: escape it.
                    if chars.get(i + 1) == Some(&' ') {
                        self.put('\\');
                    }
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
        }
        self.put('"');
    }

    /// `|` with libyaml's hints (an indentation indicator when the text starts with a space or
    /// a break; `-` without a final break, none with one, `+` with more), then the lines.
    fn literal(&mut self, s: &str) {
        let indent_hint = if s.starts_with([' ', '\n']) { "2" } else { "" };
        let chomp = if !s.ends_with('\n') {
            "-"
        } else if s == "\n" || s[..s.len() - 1].ends_with('\n') {
            "+"
        } else {
            ""
        };
        self.out.push('|');
        self.out.push_str(indent_hint);
        self.out.push_str(chomp);
        let pad = " ".repeat(self.at.map_or(0, |a| a.indent));
        let body = s.strip_suffix('\n').unwrap_or(s);
        for line in body.split('\n') {
            self.out.push('\n');
            if !line.is_empty() {
                self.out.push_str(&pad);
                self.out.push_str(line);
            }
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)`, as yaml.v2 writes floats.
fn go_float(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf".into() } else { "-.inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    // The shortest digits that read back as f, and the decimal exponent.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    // Go's 'g' with the shortest digits: an exponent below -4 or from 6 on is written as one.
    if !(-4..6).contains(&exp) {
        let rest = &digits[1..];
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{}{frac}e{esign}{:02}", &digits[..1], exp.abs());
    }
    if exp < 0 {
        return format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize));
    }
    let point = exp as usize + 1;
    if digits.len() <= point {
        format!("{sign}{digits}{}", "0".repeat(point - digits.len()))
    } else {
        format!("{sign}{}.{}", &digits[..point], &digits[point..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(yaml: &str) -> String {
        to_string(&super::super::parse(yaml).unwrap())
    }

    #[test]
    fn keys_sorted_sequences_unindented() {
        assert_eq!(emit("b: 1\na: [x, {z: 1, q: 2}]\nc: {}\nd: []\n"), "a:\n- x\n- q: 2\n  z: 1\nb: 1\nc: {}\nd: []\n");
        // A key YAML 1.1 reads as a bool is quoted, as yaml.v2 quotes it.
        assert_eq!(emit("'y': 1\n"), "\"y\": 1\n");
        // Read as YAML 1.1, a plain `y` is true.
        assert_eq!(emit("y: 1\n"), "true: 1\n");
        assert_eq!(emit("- [a, b]\n- c\n"), "- - a\n  - b\n- c\n");
        assert_eq!(emit("k10: 1\nk9: 2\nk1: 3\nK: 4\n_: 5\n"), "_: 5\nK: 4\nk1: 3\nk9: 2\nk10: 1\n");
        assert_eq!(emit("a:\n  b:\n    c: [1]\n"), "a:\n  b:\n    c:\n    - 1\n");
    }

    #[test]
    fn strings_are_quoted_as_yaml_v2_quotes_them() {
        let cases = [
            ("'yes'", "\"yes\""),
            ("'on'", "\"on\""),
            ("'0777'", "\"0777\""),
            ("'1_000'", "\"1_000\""),
            ("'0x1F'", "\"0x1F\""),
            ("'1e3'", "\"1e3\""),
            ("'2024-01-02'", "\"2024-01-02\""),
            ("'1:20'", "\"1:20\""),
            ("'~'", "\"~\""),
            ("''", "\"\""),
            ("'a: b'", "'a: b'"),
            ("'- x'", "'- x'"),
            ("' padded'", "' padded'"),
            ("'#no'", "'#no'"),
            ("'it''s'", "it's"),
            ("plain text", "plain text"),
            ("a-b:c", "a-b:c"),
            ("'1.2.3'", "1.2.3"),
            ("'0o17'", "\"0o17\""),
            ("v1.20.2", "v1.20.2"),
        ];
        for (input, want) in cases {
            assert_eq!(emit(&format!("k: {input}")), format!("k: {want}\n"), "{input}");
        }
    }

    #[test]
    fn literal_blocks_and_numbers() {
        assert_eq!(emit("k: \"a\\nb\\n\""), "k: |\n  a\n  b\n");
        assert_eq!(emit("k: \"a\\nb\""), "k: |-\n  a\n  b\n");
        assert_eq!(emit("- \"x\\n\\ny\\n\""), "- |\n  x\n\n  y\n");
        assert_eq!(emit("a: {k: \"l1\\nl2\\n\"}"), "a:\n  k: |\n    l1\n    l2\n");
        assert_eq!(
            emit("k: [1, 1.5, 1.0, 1000000.0, 0.00001, 123456.0, -2, true, ~]"),
            "k:\n- 1\n- 1.5\n- 1\n- 1e+06\n- 1e-05\n- 123456\n- -2\n- true\n- null\n"
        );
    }

    #[test]
    fn long_values_fold_at_80_columns_as_yaml_v2_folds_them() {
        let words: Vec<String> = (1..=30).map(|i| format!("word{i:02}")).collect();
        let text = words.join(" ");
        // "k: " then 7 columns a word: the space after the 12th word is the first past column 80;
        // continuation lines start at 2 and hold 12 words.
        let lines = [words[..12].join(" "), words[12..24].join(" "), words[24..].join(" ")];
        let folded = format!("k: {}\n", lines.join("\n  "));
        let value = Value::Mapping([(Value::from("k"), Value::from(text.clone()))].into_iter().collect());
        assert_eq!(to_string(&value), folded);
        assert_eq!(super::super::parse(&folded).unwrap()["k"], Value::from(text.clone()));
        // Deeper, in a list, single- and double-quoted: still text once read back.
        for t in [text.clone(), format!("{text}: colon"), format!("{text}\ttab"), format!("a  {text}  b")] {
            let doc = Value::Mapping(
                [(
                    Value::from("outer"),
                    Value::Sequence(vec![Value::Mapping(
                        [(Value::from("key"), Value::from(t.clone()))].into_iter().collect(),
                    )]),
                )]
                .into_iter()
                .collect(),
            );
            let out = to_string(&doc);
            assert!(out.lines().count() > 2, "{out}");
            assert_eq!(super::super::parse(&out).unwrap(), doc, "{out}");
        }
        // Keys never fold; a long word is never cut.
        let long_key = "x ".repeat(60);
        assert_eq!(emit(&format!("'{long_key}': 1")).lines().count(), 1);
        let word = "y".repeat(120);
        assert_eq!(emit(&format!("k: {word}")), format!("k: {word}\n"));
    }

    #[test]
    fn scalar_styles_follow_libyaml() {
        let cases = [
            ("k: \"a\\tb\"", "k: \"a\\tb\"\n"),
            ("k: \" a\\nb\"", "k: |2-\n   a\n  b\n"),
            ("k: \"a \\nb\"", "k: \"a \\nb\"\n"),
            ("k: \"\\u00e9t\u{e9}\"", "k: \u{e9}t\u{e9}\n"),
            ("k: \"\\U0001F600\"", "k: \"\\U0001F600\"\n"),
            ("k: \"\\x85\"", "k: \"\\N\"\n"),
            ("k: '<<'", "k: <<\n"),
            ("k: 'x #y'", "k: 'x #y'\n"),
            ("k: 'x#y'", "k: x#y\n"),
            ("k: '-x'", "k: -x\n"),
            ("k: ':x'", "k: :x\n"),
            ("k: '? x'", "k: '? x'\n"),
            ("k: 'trailing '", "k: 'trailing '\n"),
            ("'': 1", "\"\": 1\n"),
            ("\"a\\nb\": 1", "\"a\\nb\": 1\n"),
            ("- \"x\\n\\n\"", "- |+\n  x\n\n"),
        ];
        for (input, want) in cases {
            assert_eq!(emit(input), want, "{input}");
            assert_eq!(super::super::parse(want).unwrap(), super::super::parse(input).unwrap(), "{input}");
        }
    }
}
