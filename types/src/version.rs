//! Release and stemcell versions ordered as BOSH orders them (its "semi-semantic" versions): a
//! release segment, then an optional pre-release (`-rc.1`) and post-release (`+dev.3`) segment,
//! each a dot-separated list of components. Numeric components compare as numbers and sort before
//! alphanumeric ones, which compare as text; a segment that is a prefix of another sorts first.
//! So `1.0-rc.1 < 1.0 < 1.0+dev.1 < 1.0+dev.2 < 1.0+dev.10 < 1.0.1 < 1.1 < 2`.

use std::cmp::Ordering;

struct Parsed<'a> {
    release: Vec<&'a str>,
    pre: Option<Vec<&'a str>>,
    post: Option<Vec<&'a str>>,
}

fn parse(v: &str) -> Parsed<'_> {
    let (rest, post) = match v.split_once('+') {
        Some((r, p)) => (r, Some(p.split('.').collect())),
        None => (v, None),
    };
    let (release, pre) = match rest.split_once('-') {
        Some((r, p)) => (r, Some(p.split('.').collect())),
        None => (rest, None),
    };
    Parsed { release: release.split('.').collect(), pre, post }
}

fn component(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    match (numeric(a), numeric(b)) {
        // As numbers of any length: leading zeros aside, the longer is the larger.
        (true, true) => {
            let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
            a.len().cmp(&b.len()).then_with(|| a.cmp(b))
        }
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.cmp(b),
    }
}

fn segment(a: &[&str], b: &[&str]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match component(x, y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    a.len().cmp(&b.len())
}

/// BOSH's order of two versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (parse(a), parse(b));
    segment(&a.release, &b.release)
        // A pre-release comes before the release itself.
        .then_with(|| match (&a.pre, &b.pre) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => segment(x, y),
        })
        // A post-release (a dev build) comes after it.
        .then_with(|| match (&a.post, &b.post) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (Some(x), Some(y)) => segment(x, y),
        })
}

/// The sequence number of a dev version `N+dev.M` (what `create-release` makes), if it is one.
pub fn dev_sequence(v: &str) -> Option<u64> {
    v.split_once("+dev.")?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_bosh_sorts_them() {
        let ordered = [
            "0+dev.1",
            "0+dev.2",
            "0+dev.10",
            "0.1",
            "1-alpha",
            "1-alpha.2",
            "1-beta",
            "1-rc.1",
            "1",
            "1+dev.1",
            "1+dev.9",
            "1+dev.12",
            "1.0.1",
            "1.1",
            "1.1.0",
            "1.9",
            "1.10",
            "2",
            "2.0.0+dev.1",
            "10",
            "100.2",
            "621.5",
            "1000",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        // Numbers compare as numbers however long; leading zeros do not count.
        assert_eq!(compare("99999999999999999999999", "100000000000000000000000"), Ordering::Less);
        assert_eq!(compare("1.01", "1.1"), Ordering::Equal);
        // Alphanumeric components come after numeric ones and compare as text.
        assert_eq!(compare("1.a", "1.1"), Ordering::Greater);
        assert_eq!(compare("1.a", "1.b"), Ordering::Less);
    }

    #[test]
    fn dev_sequences() {
        assert_eq!(dev_sequence("0+dev.12"), Some(12));
        assert_eq!(dev_sequence("3.1+dev.2"), Some(2));
        assert_eq!(dev_sequence("1.2"), None);
        assert_eq!(dev_sequence("0+dev.abc"), None);
    }
}
