//! The cloud-config: AZs, VM types, disk types, networks and compilation, as in BOSH.

use crate::ip::{expand_ip_list, parse_ip_range};
use crate::DocumentError as E;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    #[serde(default)]
    pub azs: Vec<Az>,
    #[serde(default)]
    pub vm_types: Vec<VmType>,
    #[serde(default)]
    pub vm_extensions: Vec<VmExtension>,
    #[serde(default)]
    pub disk_types: Vec<DiskType>,
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compilation: Option<Compilation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Az {
    pub name: String,
    #[serde(default = "empty_object")]
    pub cloud_properties: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpi: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmType {
    pub name: String,
    #[serde(default = "empty_object")]
    pub cloud_properties: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmExtension {
    pub name: String,
    #[serde(default = "empty_object")]
    pub cloud_properties: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskType {
    pub name: String,
    /// MiB, > 0.
    pub disk_size: u64,
    #[serde(default = "empty_object")]
    pub cloud_properties: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    #[default]
    Manual,
    Dynamic,
    Vip,
}

impl NetworkType {
    /// The name manifests and the agent protocol use.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Manual => "manual",
            NetworkType::Dynamic => "dynamic",
            NetworkType::Vip => "vip",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: NetworkType,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default = "empty_object")]
    pub cloud_properties: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub reserved: Vec<String>,
    #[serde(default, rename = "static")]
    pub static_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub az: Option<String>,
    #[serde(default)]
    pub azs: Vec<String>,
    #[serde(default = "empty_object")]
    pub cloud_properties: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Compilation {
    pub workers: u32,
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub az: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_properties: Option<serde_json::Value>,
    #[serde(default)]
    pub reuse_compilation_vms: bool,
    #[serde(default)]
    pub orphan_workers: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<serde_json::Value>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A manual subnet with its addresses worked out.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSubnet {
    pub index: usize,
    pub network: ipnet::Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub azs: Vec<String>,
    pub reserved: BTreeSet<Ipv4Addr>,
    pub static_pool: BTreeSet<Ipv4Addr>,
    pub dns: Vec<String>,
    pub cloud_properties: serde_json::Value,
}

impl ResolvedSubnet {
    /// Addresses the director may hand out dynamically: inside the range, not the network or
    /// broadcast address, not the gateway, not reserved, not in the static pool.
    pub fn dynamic_pool(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let net = self.network.network();
        let bcast = self.network.broadcast();
        self.network.hosts().filter(move |ip| {
            *ip != net
                && *ip != bcast
                && Some(*ip) != self.gateway
                && !self.reserved.contains(ip)
                && !self.static_pool.contains(ip)
        })
    }
}

impl CloudConfig {
    pub fn parse(source_name: &str, value: serde_yaml::Value) -> Result<Self, E> {
        let c: CloudConfig = crate::yaml::from_value(source_name, value)?;
        c.validate(source_name)?;
        Ok(c)
    }

    fn validate(&self, src: &str) -> Result<(), E> {
        let az_names = unique_names(src, "azs", self.azs.iter().map(|a| &a.name))?;
        unique_names(src, "vm_types", self.vm_types.iter().map(|a| &a.name))?;
        unique_names(src, "vm_extensions", self.vm_extensions.iter().map(|a| &a.name))?;
        unique_names(src, "disk_types", self.disk_types.iter().map(|a| &a.name))?;
        unique_names(src, "networks", self.networks.iter().map(|a| &a.name))?;
        for (i, d) in self.disk_types.iter().enumerate() {
            if d.disk_size == 0 {
                return Err(E::invalid(src, format!("/disk_types/{i}/disk_size"), "must be greater than 0"));
            }
        }
        // Manual subnets seen so far (range, path): no two may share an address, within a network
        // or across networks, or two VMs could be given one address.
        let mut ranges: Vec<(ipnet::Ipv4Net, String)> = Vec::new();
        for (i, n) in self.networks.iter().enumerate() {
            for (j, s) in n.subnets.iter().enumerate() {
                let path = format!("/networks/{i}/subnets/{j}");
                for az in s.az.iter().chain(s.azs.iter()) {
                    if !az_names.contains(az.as_str()) {
                        return Err(E::invalid(src, format!("{path}/azs"), format!("unknown AZ `{az}`")));
                    }
                }
                if n.kind == NetworkType::Manual {
                    let resolved = resolve_subnet(src, &path, j, s)?;
                    if let Some((other, at)) = ranges.iter().find(|(r, _)| {
                        r.contains(&resolved.network.network()) || resolved.network.contains(&r.network())
                    }) {
                        return Err(E::invalid(
                            src,
                            format!("{path}/range"),
                            format!("{} overlaps {other} at {at}", resolved.network),
                        ));
                    }
                    ranges.push((resolved.network, format!("{path}/range")));
                }
            }
            if n.kind == NetworkType::Manual && n.subnets.is_empty() {
                return Err(E::invalid(
                    src,
                    format!("/networks/{i}/subnets"),
                    format!("manual network `{}` needs at least one subnet", n.name),
                ));
            }
        }
        if let Some(c) = &self.compilation {
            if c.workers == 0 {
                return Err(E::invalid(src, "/compilation/workers", "must be at least 1"));
            }
            if !self.networks.iter().any(|n| n.name == c.network) {
                return Err(E::invalid(src, "/compilation/network", format!("unknown network `{}`", c.network)));
            }
            if let Some(az) = &c.az {
                if !az_names.contains(az.as_str()) {
                    return Err(E::invalid(src, "/compilation/az", format!("unknown AZ `{az}`")));
                }
            }
            if let Some(vt) = &c.vm_type {
                if !self.vm_types.iter().any(|v| &v.name == vt) {
                    return Err(E::invalid(src, "/compilation/vm_type", format!("unknown vm_type `{vt}`")));
                }
            }
        }
        Ok(())
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The manual subnets of a network, resolved. The cloud-config was validated on the way in,
    /// so errors here mean a stored config from an older, looser version.
    pub fn resolved_subnets(&self, network: &str) -> Result<Vec<ResolvedSubnet>, E> {
        let (i, n) = self
            .networks
            .iter()
            .enumerate()
            .find(|(_, n)| n.name == network)
            .ok_or_else(|| E::invalid("cloud-config", "/networks", format!("unknown network `{network}`")))?;
        n.subnets
            .iter()
            .enumerate()
            .map(|(j, s)| resolve_subnet("cloud-config", &format!("/networks/{i}/subnets/{j}"), j, s))
            .collect()
    }
}

fn unique_names<'a>(src: &str, what: &str, names: impl Iterator<Item = &'a String>) -> Result<BTreeSet<&'a str>, E> {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        crate::yaml::check_name(src, format!("/{what}/{i}/name"), n)?;
        if !seen.insert(n.as_str()) {
            return Err(E::invalid(src, format!("/{what}/{i}/name"), format!("`{n}` is defined twice")));
        }
    }
    Ok(seen)
}

fn resolve_subnet(src: &str, path: &str, index: usize, s: &Subnet) -> Result<ResolvedSubnet, E> {
    let range = s.range.as_deref().ok_or_else(|| E::invalid(src, path, "a manual subnet needs a `range`"))?;
    let network: ipnet::Ipv4Net = range
        .parse()
        .map_err(|_| E::invalid(src, format!("{path}/range"), format!("`{range}` is not an IPv4 CIDR range")))?;
    let network = network.trunc();
    let gateway = match &s.gateway {
        Some(g) => {
            let ip: Ipv4Addr = g
                .parse()
                .map_err(|_| E::invalid(src, format!("{path}/gateway"), format!("`{g}` is not an IPv4 address")))?;
            if !network.contains(&ip) || ip == network.network() || ip == network.broadcast() {
                return Err(E::invalid(
                    src,
                    format!("{path}/gateway"),
                    format!("gateway {ip} is not a usable address of {network}"),
                ));
            }
            Some(ip)
        }
        None => None,
    };
    let in_range = |what: &str, list: &[String]| -> Result<BTreeSet<Ipv4Addr>, E> {
        for (k, e) in list.iter().enumerate() {
            let (a, b) = parse_ip_range(e).map_err(|m| E::invalid(src, format!("{path}/{what}/{k}"), m))?;
            if !network.contains(&a) || !network.contains(&b) {
                return Err(E::invalid(
                    src,
                    format!("{path}/{what}/{k}"),
                    format!("`{e}` is outside the subnet range {network}"),
                ));
            }
        }
        Ok(expand_ip_list(list).map_err(|m| E::invalid(src, format!("{path}/{what}"), m))?.into_iter().collect())
    };
    let reserved = in_range("reserved", &s.reserved)?;
    let static_pool = in_range("static", &s.static_ips)?;
    if let Some(ip) = static_pool.intersection(&reserved).next() {
        return Err(E::invalid(src, format!("{path}/static"), format!("{ip} is both static and reserved")));
    }
    if let Some(g) = gateway {
        if static_pool.contains(&g) {
            return Err(E::invalid(src, format!("{path}/static"), format!("{g} is the gateway")));
        }
    }
    let mut azs: Vec<String> = s.azs.clone();
    if let Some(az) = &s.az {
        azs.push(az.clone());
    }
    Ok(ResolvedSubnet {
        index,
        network,
        gateway,
        azs,
        reserved,
        static_pool,
        dns: s.dns.clone(),
        cloud_properties: s.cloud_properties.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CloudConfig, E> {
        CloudConfig::parse("cc.yml", crate::yaml::parse_value("cc.yml", text)?)
    }

    #[test]
    fn resolves_pools() {
        let c = parse(
            "azs: [{name: z1}]\nnetworks:\n- name: default\n  subnets:\n  - range: 127.0.10.0/29\n    gateway: 127.0.10.1\n    reserved: [127.0.10.2]\n    static: [127.0.10.3-127.0.10.4]\n    azs: [z1]\n",
        )
        .unwrap();
        let s = &c.resolved_subnets("default").unwrap()[0];
        let dynamic: Vec<_> = s.dynamic_pool().map(|ip| ip.to_string()).collect();
        assert_eq!(dynamic, ["127.0.10.5", "127.0.10.6"]);
    }

    #[test]
    fn overlapping_subnets_are_refused_naming_both() {
        let within = parse("networks:\n- name: net\n  subnets:\n  - range: 10.0.0.0/24\n  - range: 10.0.0.128/25\n")
            .unwrap_err();
        assert_eq!(
            within.to_string(),
            "cc.yml: /networks/0/subnets/1/range: 10.0.0.128/25 overlaps 10.0.0.0/24 at /networks/0/subnets/0/range"
        );
        let across = parse(
            "networks:\n- name: a\n  subnets:\n  - range: 10.0.1.0/24\n- name: b\n  subnets:\n  - range: 10.0.0.0/16\n",
        )
        .unwrap_err();
        assert!(
            across.to_string().contains(
                "/networks/1/subnets/0/range: 10.0.0.0/16 overlaps 10.0.1.0/24 at /networks/0/subnets/0/range"
            ),
            "{across}"
        );
        parse(
            "networks:\n- name: a\n  subnets:\n  - range: 10.0.1.0/24\n- name: b\n  subnets:\n  - range: 10.0.2.0/24\n",
        )
        .unwrap();
    }

    #[test]
    fn static_outside_range_is_an_error() {
        let e =
            parse("networks:\n- name: net\n  subnets:\n  - range: 10.0.0.0/24\n    static: [10.0.1.5]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cc.yml: /networks/0/subnets/0/static/0: `10.0.1.5` is outside the subnet range 10.0.0.0/24"
        );
    }

    #[test]
    fn unknown_az_is_named() {
        let e = parse("networks:\n- name: net\n  subnets:\n  - range: 10.0.0.0/24\n    azs: [z9]\n").unwrap_err();
        assert!(e.to_string().contains("unknown AZ `z9`"), "{e}");
    }
}
