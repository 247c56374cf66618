//! IPv4 address lists as BOSH writes them: single addresses and `a - b` ranges.

use std::net::Ipv4Addr;

/// Parses one entry of a `reserved`, `static` or `static_ips` list: `10.0.0.5`, `10.0.0.5-10.0.0.9`
/// or `10.0.0.5 - 10.0.0.9`. Returns the inclusive range.
pub fn parse_ip_range(entry: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let entry = entry.trim();
    let (a, b) = match entry.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (entry, entry),
    };
    let first: Ipv4Addr = a.parse().map_err(|_| format!("`{entry}` is not an IPv4 address or range"))?;
    let last: Ipv4Addr = b.parse().map_err(|_| format!("`{entry}` is not an IPv4 address or range"))?;
    if u32::from(first) > u32::from(last) {
        return Err(format!("range `{entry}` ends before it starts"));
    }
    Ok((first, last))
}

/// Expands a list of entries into every address they name, in order, without duplicates.
/// Refuses to expand absurdly large ranges (a hostile manifest must not exhaust memory).
pub fn expand_ip_list(entries: &[String]) -> Result<Vec<Ipv4Addr>, String> {
    const LIMIT: u64 = 1 << 20;
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut total: u64 = 0;
    for e in entries {
        let (a, b) = parse_ip_range(e)?;
        total += u64::from(u32::from(b) - u32::from(a)) + 1;
        if total > LIMIT {
            return Err(format!("address list is larger than {LIMIT} addresses"));
        }
        for n in u32::from(a)..=u32::from(b) {
            if seen.insert(n) {
                out.push(Ipv4Addr::from(n));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ranges() {
        assert_eq!(expand_ip_list(&["10.0.0.1 - 10.0.0.3".into(), "10.0.0.2".into()]).unwrap().len(), 3);
        assert!(parse_ip_range("10.0.0.9-10.0.0.1").is_err());
        assert!(parse_ip_range("banana").is_err());
        assert!(expand_ip_list(&["0.0.0.0-255.255.255.255".into()]).is_err());
    }
}
