//! YAML written the way the BOSH CLI writes it (Go's `gopkg.in/yaml.v2`), for `bosun interpolate`:
//! map keys sorted in yaml.v2's order (numbers first, then strings compared with digit runs as
//! numbers), sequences inside maps not indented, a string that YAML 1.1 would read as something
//! else (`yes`, `on`, `0777`, `1_000`, `2024-01-02`, `1:20`, `~`) double-quoted, one the emitter
//! cannot write plain (`a: b`, `- x`, ` padded`) single-quoted, a string with line breaks as a
//! literal block, floats as Go formats them. Long plain strings are not folded (yaml.v2 folds at
//! 80 columns; the value is the same).

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
            out.push_str(&inline(other, 0));
            out.push('\n');
        }
    }
    out
}

/// A scalar or an empty collection on one line (a literal block continues on the next lines,
/// indented by `indent` + 2).
fn inline(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
            Some(f) => go_float(f),
            None => n.to_string(),
        },
        Value::String(s) => string(s, indent),
        Value::Sequence(_) => "[]".into(),
        Value::Mapping(_) => "{}".into(),
        Value::Tagged(t) => inline(&t.value, indent),
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
        let key = inline(k, indent);
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
                let _ = writeln!(out, "{pad}{key}: {}", inline(other, indent));
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
                let _ = writeln!(out, "{pad}- {}", inline(other, indent));
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

/// Whether yaml.v2 would read this text, written plain, as something other than a string.
fn resolves_to_non_string(s: &str) -> bool {
    const SPECIAL: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE", "n",
        "N", "no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE", ".nan", ".NaN", ".NAN", ".inf", ".Inf",
        ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", "<<",
    ];
    if SPECIAL.contains(&s) {
        return true;
    }
    let first = s.chars().next().unwrap_or(' ');
    if first == '.' {
        return s.parse::<f64>().is_ok() && !s.contains(|c: char| c.is_alphabetic());
    }
    if !(first.is_ascii_digit() || first == '+' || first == '-') {
        return false;
    }
    if is_timestamp(s) {
        return true;
    }
    let plain = s.replace('_', "");
    go_parse_int(&plain) || yaml_style_float(&plain) || is_base60_float(s)
}

/// Go's `strconv.ParseInt(s, 0, 64)` (or ParseUint) accepting it: decimal, `0x`, `0o`, `0b` or a
/// leading `0` (octal), with an optional sign.
fn go_parse_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = body.to_ascii_lowercase();
    let (digits, radix) = if let Some(d) = lower.strip_prefix("0x") {
        (d, 16)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (d, 8)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (d, 2)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8)
    } else {
        (lower.as_str(), 10)
    };
    !digits.is_empty() && u128::from_str_radix(digits, radix).is_ok_and(|v| v <= u64::MAX as u128)
}

/// yaml.v2's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_style_float(s: &str) -> bool {
    let b = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match b.find(['e', 'E']) {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// yaml.v2's base-60 float (`1:20`, `-1:30:00.5`), which it quotes for YAML 1.1 readers.
fn is_base60_float(s: &str) -> bool {
    let b = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = match b.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (b, None),
    };
    let mut parts = int.split(':');
    let head = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    let head_ok =
        head.starts_with(|c: char| c.is_ascii_digit()) && head.bytes().all(|c| c.is_ascii_digit() || c == b'_');
    let rest_ok = !rest.is_empty()
        && rest.iter().all(|p| {
            (1..=2).contains(&p.len())
                && p.bytes().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || p.as_bytes()[0] <= b'5')
        });
    head_ok && rest_ok && frac.is_none_or(|f| f.bytes().all(|c| c.is_ascii_digit() || c == b'_'))
}

/// yaml.v2's timestamps: `2006-1-2`, with an optional time (`T`, `t` or a space).
fn is_timestamp(s: &str) -> bool {
    let date_end = s.find(['T', 't', ' ']).unwrap_or(s.len());
    let date: Vec<&str> = s[..date_end].split('-').collect();
    let ok_date = date.len() == 3
        && date[0].len() == 4
        && date.iter().all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|c| c.is_ascii_digit()))
        && date[1].len() <= 2
        && date[2].len() <= 2;
    if !ok_date {
        return false;
    }
    if date_end == s.len() {
        return true;
    }
    // A time: H:M:S with optional fraction and zone; accepted when shaped like one.
    let time = &s[date_end + 1..];
    let hms: Vec<&str> = time.splitn(3, ':').collect();
    hms.len() == 3
        && hms[0].len() <= 2
        && hms[0].bytes().all(|c| c.is_ascii_digit())
        && hms[1].len() <= 2
        && hms[1].bytes().all(|c| c.is_ascii_digit())
        && hms[2].starts_with(|c: char| c.is_ascii_digit())
}

/// Whether libyaml's emitter may write it plain in block context.
fn plain_allowed(s: &str) -> bool {
    if s.is_empty() || s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    let chars: Vec<char> = s.chars().collect();
    let blank = |c: Option<&char>| c.is_none_or(|c| *c == ' ' || *c == '\t');
    if chars[0] == ' ' || chars[chars.len() - 1] == ' ' {
        return false;
    }
    for (i, c) in chars.iter().enumerate() {
        if c.is_control() || *c == '\u{feff}' {
            return false;
        }
        if i == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(*c) {
                return false;
            }
            if matches!(c, '?' | ':' | '-') && blank(chars.get(1)) {
                return false;
            }
        } else {
            if *c == ':' && blank(chars.get(i + 1)) {
                return false;
            }
            if *c == '#' && chars[i - 1] == ' ' {
                return false;
            }
        }
    }
    true
}

fn double_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn string(s: &str, indent: usize) -> String {
    if s.contains('\n') {
        // A literal block, unless a line could not survive one (trailing blanks, control
        // characters, a first line starting with a blank).
        let representable = !s.lines().any(|l| l.ends_with(' ') || l.ends_with('\t'))
            && !s.chars().any(|c| c.is_control() && c != '\n');
        if representable && !s.starts_with(' ') {
            let trailing = s.len() - s.trim_end_matches('\n').len();
            let chomp = match trailing {
                0 => "-",
                1 => "",
                _ => "+",
            };
            let pad = " ".repeat(indent + 2);
            let mut out = format!("|{chomp}");
            for line in s.trim_end_matches('\n').split('\n') {
                out.push('\n');
                if !line.is_empty() {
                    out.push_str(&pad);
                    out.push_str(line);
                }
            }
            for _ in 1..trailing {
                out.push('\n');
            }
            return out;
        }
        return double_quoted(s);
    }
    if resolves_to_non_string(s) {
        return double_quoted(s);
    }
    if plain_allowed(s) {
        return s.to_string();
    }
    if s.chars().any(|c| c.is_control()) {
        return double_quoted(s);
    }
    format!("'{}'", s.replace('\'', "''"))
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
        to_string(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn keys_sorted_sequences_unindented() {
        assert_eq!(emit("b: 1\na: [x, {z: 1, q: 2}]\nc: {}\nd: []\n"), "a:\n- x\n- q: 2\n  z: 1\nb: 1\nc: {}\nd: []\n");
        // A key YAML 1.1 reads as a bool is quoted, as yaml.v2 quotes it.
        assert_eq!(emit("y: 1\n"), "\"y\": 1\n");
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
}
