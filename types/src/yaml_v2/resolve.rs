//! What a plain scalar means to yaml.v2 (its `resolve`, YAML 1.1 flavoured) when read into an
//! untyped value. One rule serves the loader (what `yes`, `0777` or `1_000` is) and the emitter
//! (whether a string must be quoted to read back as a string).

use serde_yaml::Value;

/// The value a plain, untagged scalar stands for: null, a bool (`yes`, `on`, `y` too), an int
/// (Go's base prefixes, a leading `0` as octal, `_` ignored), a float, or else the text.
pub(super) fn plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => return Value::Bool(true),
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        ".nan" | ".NaN" | ".NAN" => return Value::from(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Value::from(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::from(f64::NEG_INFINITY),
        _ => {}
    }
    let number = match s.as_bytes()[0] {
        b'.' => finite_float(s),
        b'0'..=b'9' | b'+' | b'-' => {
            let plain = s.replace('_', "");
            go_parse_int(&plain)
                .map(Value::from)
                .or_else(|| go_parse_uint(&plain).map(Value::from))
                .or_else(|| finite_float(&plain))
        }
        _ => None,
    };
    number.unwrap_or_else(|| Value::String(s.to_string()))
}

/// Whether a string written plain would read back as something else: as another value, or as a
/// YAML 1.1 timestamp or base-60 number (yaml.v2 quotes those for other readers' sake).
pub(super) fn needs_quotes(s: &str) -> bool {
    !matches!(plain(s), Value::String(_)) || is_timestamp(s) || is_base60_float(s)
}

/// Go's `strconv.ParseUint(s, 0, 64)` digits after its base prefix: `0x`, `0o`, `0b`, or a
/// leading `0` meaning octal (`0` alone is zero); no sign.
fn go_parse_uint(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let (digits, radix) = match b {
        [] => return None,
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'x') => (&s[2..], 16),
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'o') => (&s[2..], 8),
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'b') => (&s[2..], 2),
        [b'0'] => return Some(0),
        [b'0', ..] => (&s[1..], 8),
        _ => (s, 10),
    };
    // from_str_radix would take a sign; Go's digits may not carry one.
    if digits.starts_with(['+', '-']) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Go's `strconv.ParseInt(s, 0, 64)`: an optional sign, then [`go_parse_uint`], within i64.
fn go_parse_int(s: &str) -> Option<i64> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = go_parse_uint(body)? as i128;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// A float in yaml.v2's own form (`^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`) that
/// Go reads without overflow; an overflowing one stays text, as in yaml.v2.
fn finite_float(s: &str) -> Option<Value> {
    if !yaml_style_float(s) {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite()).map(Value::from)
}

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

/// A base-60 number (`1:20`, `-1:30:00.5`), which yaml.v2 reads as text but quotes on the way out.
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

/// A timestamp as yaml.v2 recognises one (`2006-1-2`, with an optional time after `T`, `t` or a
/// space); read into an untyped value it stays text, but it is quoted on the way out.
pub(super) fn is_timestamp(s: &str) -> bool {
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
    let time = &s[date_end + 1..];
    let hms: Vec<&str> = time.splitn(3, ':').collect();
    hms.len() == 3
        && hms[0].len() <= 2
        && hms[0].bytes().all(|c| c.is_ascii_digit())
        && hms[1].len() <= 2
        && hms[1].bytes().all(|c| c.is_ascii_digit())
        && hms[2].starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_as_yaml_v2_reads_them() {
        let int = |i: i64| Value::from(i);
        let float = |f: f64| Value::from(f);
        let text = |s: &str| Value::String(s.into());
        let cases: Vec<(&str, Value)> = vec![
            ("yes", Value::Bool(true)),
            ("Off", Value::Bool(false)),
            ("y", Value::Bool(true)),
            ("n", Value::Bool(false)),
            ("yES", text("yES")),
            ("~", Value::Null),
            ("0777", int(511)),
            ("0", int(0)),
            ("-0", int(0)),
            ("00", int(0)),
            ("0o17", int(15)),
            ("0x1F", int(31)),
            ("+0x1F", int(31)),
            ("-0x10", int(-16)),
            ("0b101", int(5)),
            ("-0b101", int(-5)),
            ("1_000", int(1000)),
            ("1_000.5", float(1000.5)),
            ("08", float(8.0)),
            ("09.5", float(9.5)),
            ("1e3", float(1000.0)),
            ("+.5", float(0.5)),
            (".5", float(0.5)),
            ("1.", float(1.0)),
            ("9223372036854775807", int(i64::MAX)),
            ("-9223372036854775808", int(i64::MIN)),
            ("18446744073709551615", Value::from(u64::MAX)),
            ("18446744073709551616", float(18446744073709551616.0)),
            ("1e999", text("1e999")),
            ("0x", text("0x")),
            ("0b", text("0b")),
            ("1:20", text("1:20")),
            ("2024-01-02", text("2024-01-02")),
            ("<<", text("<<")),
            ("-", text("-")),
            ("+", text("+")),
            (".", text(".")),
            ("1.2.3", text("1.2.3")),
            ("v1", text("v1")),
            ("0x+1", text("0x+1")),
        ];
        for (input, want) in cases {
            let got = plain(input);
            match (&got, &want) {
                (Value::Number(a), Value::Number(b)) => {
                    assert_eq!(a.is_f64(), b.is_f64(), "{input}: {got:?}");
                    assert_eq!(a.to_string(), b.to_string(), "{input}");
                }
                _ => assert_eq!(got, want, "{input}"),
            }
        }
        assert!(matches!(plain(".nan"), Value::Number(n) if n.as_f64().unwrap().is_nan()));
        assert_eq!(plain("-.Inf"), Value::from(f64::NEG_INFINITY));
    }

    #[test]
    fn strings_needing_quotes() {
        for s in ["yes", "", "0777", "1_000", "2024-01-02", "2001-12-14 21:59:43.10", "1:20", ".5", "null"] {
            assert!(needs_quotes(s), "{s}");
        }
        for s in ["<<", "hello", "1.2.3", "v1.20.2", "0x", "2024-01", "yES"] {
            assert!(!needs_quotes(s), "{s}");
        }
    }
}
