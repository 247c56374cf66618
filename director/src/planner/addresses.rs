//! Addresses: static IPs, the next free address of a manual network's subnet in the instance's
//! AZ, dynamic networks (the cloud gives the address), and spare addresses for create-swap-delete.

use super::model::{perr, PlanError, Slot};
use bosun_types::cloud_config::{CloudConfig, NetworkType, ResolvedSubnet};
use bosun_types::manifest::InstanceGroup;
use bosun_types::protocol::NetworkSettings;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub(super) fn subnet_serves(s: &ResolvedSubnet, az: &Option<String>) -> bool {
    match az {
        None => true,
        Some(a) => s.azs.is_empty() || s.azs.contains(a),
    }
}

pub(super) fn settings(s: &ResolvedSubnet, ip: Ipv4Addr, default: Vec<String>) -> NetworkSettings {
    NetworkSettings {
        kind: bosun_types::cloud_config::NetworkType::Manual,
        ip: ip.to_string(),
        netmask: s.network.netmask().to_string(),
        gateway: s.gateway.map(|g| g.to_string()),
        default,
        dns: s.dns.clone(),
        cloud_properties: s.cloud_properties.clone(),
    }
}

/// Gives each instance an address on each of its networks: static IPs from the manifest when
/// given (their count must match), otherwise the lowest free address of a subnet serving its AZ.
/// Instances keep their addresses when they still fit.
pub(super) fn assign_addresses(
    gi: usize,
    g: &InstanceGroup,
    cc: &CloudConfig,
    slots: &mut [Slot],
    taken: &mut BTreeSet<Ipv4Addr>,
    elsewhere: &BTreeSet<Ipv4Addr>,
) -> Result<(), PlanError> {
    for (ni, nref) in g.networks.iter().enumerate() {
        let at = format!("/instance_groups/{gi}/networks/{ni}");
        let default = default_gateway_for(g, nref);
        if let Some(net) = cc.network(&nref.name).filter(|n| n.kind == NetworkType::Dynamic) {
            // The cloud assigns the address when the VM is made; a VM keeps the one it got.
            for slot in slots.iter_mut() {
                let kept = slot
                    .existing
                    .as_ref()
                    .and_then(|e| e.networks.get(&nref.name))
                    .filter(|n| n.kind == NetworkType::Dynamic && !n.ip.is_empty())
                    .cloned();
                let settings = kept.unwrap_or_else(|| dynamic_settings(net, &slot.az, default.clone()));
                slot.networks.insert(nref.name.clone(), settings);
            }
            continue;
        }
        let subnets = cc.resolved_subnets(&nref.name).map_err(|e| perr(&at, e.to_string()))?;
        let current = |s: &Slot| {
            s.existing.as_ref().and_then(|e| e.networks.get(&nref.name)).and_then(|n| n.ip.parse::<Ipv4Addr>().ok())
        };
        if !nref.static_ips.is_empty() {
            let statics =
                bosun_types::ip::expand_ip_list(&nref.static_ips).map_err(|m| perr(format!("{at}/static_ips"), m))?;
            if statics.len() != slots.len() {
                return Err(perr(
                    format!("{at}/static_ips"),
                    format!(
                        "instance group `{}` has {} instances but {} static IPs on network `{}`",
                        g.name,
                        slots.len(),
                        statics.len(),
                        nref.name
                    ),
                ));
            }
            for ip in &statics {
                let s = subnets.iter().find(|s| s.network.contains(ip)).ok_or_else(|| {
                    perr(
                        format!("{at}/static_ips"),
                        format!("static IP {ip} is in no subnet of network `{}`", nref.name),
                    )
                })?;
                if s.reserved.contains(ip) {
                    return Err(perr(
                        format!("{at}/static_ips"),
                        format!("static IP {ip} is in the reserved range of network `{}`", nref.name),
                    ));
                }
                if !s.static_pool.contains(ip) {
                    return Err(perr(
                        format!("{at}/static_ips"),
                        format!("static IP {ip} is not in the static range of network `{}`", nref.name),
                    ));
                }
            }
            let mut free: Vec<Ipv4Addr> = statics.clone();
            // Instances that already hold one of the listed addresses keep it.
            for slot in slots.iter_mut() {
                if let Some(ip) = current(slot).filter(|ip| free.contains(ip)) {
                    let s = subnets.iter().find(|s| s.network.contains(&ip)).expect("checked above");
                    if subnet_serves(s, &slot.az) {
                        free.retain(|x| *x != ip);
                        slot.networks.insert(nref.name.clone(), settings(s, ip, default.clone()));
                    }
                }
            }
            for slot in slots.iter_mut().filter(|s| !s.networks.contains_key(&nref.name)) {
                let pick = free
                    .iter()
                    .position(|ip| subnets.iter().any(|s| s.network.contains(ip) && subnet_serves(s, &slot.az)));
                let Some(k) = pick else {
                    return Err(perr(
                        format!("{at}/static_ips"),
                        format!(
                            "no static IP of network `{}` is left for an instance in AZ `{}`",
                            nref.name,
                            slot.az.as_deref().unwrap_or("-")
                        ),
                    ));
                };
                let ip = free.remove(k);
                if elsewhere.contains(&ip) {
                    return Err(perr(
                        format!("{at}/static_ips"),
                        format!("static IP {ip} is in use by another deployment"),
                    ));
                }
                let s = subnets.iter().find(|s| s.network.contains(&ip)).expect("checked above");
                slot.networks.insert(nref.name.clone(), settings(s, ip, default.clone()));
                taken.insert(ip);
            }
        } else {
            // Keep a current dynamic address when it is still in a serving subnet's pool.
            for slot in slots.iter_mut() {
                if let Some(ip) = current(slot) {
                    if let Some(s) =
                        subnets.iter().find(|s| subnet_serves(s, &slot.az) && s.dynamic_pool().any(|x| x == ip))
                    {
                        slot.networks.insert(nref.name.clone(), settings(s, ip, default.clone()));
                    }
                }
            }
            let mut needing = slots.iter().filter(|s| !s.networks.contains_key(&nref.name)).count();
            for slot in slots.iter_mut().filter(|s| !s.networks.contains_key(&nref.name)) {
                let Some((s, ip)) = pick_dynamic(&subnets, &slot.az, taken) else {
                    return Err(perr(
                        format!("{at}/name"),
                        format!(
                            "network `{}` has no free address left for instance group `{}` in AZ `{}` ({needing} more needed)",
                            nref.name,
                            g.name,
                            slot.az.as_deref().unwrap_or("-")
                        ),
                    ));
                };
                taken.insert(ip);
                needing -= 1;
                slot.networks.insert(nref.name.clone(), settings(s, ip, default.clone()));
            }
        }
    }
    Ok(())
}

pub(super) fn default_address(networks: &BTreeMap<String, NetworkSettings>) -> Option<String> {
    networks
        .values()
        .find(|n| n.default.iter().any(|d| d == "gateway"))
        .or_else(|| networks.values().next())
        .map(|n| n.ip.clone())
}

/// Addresses for a create-swap-delete replacement VM: a free dynamic address on each network.
pub(super) fn spare_addresses(
    g: &InstanceGroup,
    cc: &CloudConfig,
    az: &Option<String>,
    taken: &mut BTreeSet<Ipv4Addr>,
) -> Option<BTreeMap<String, NetworkSettings>> {
    let mut out = BTreeMap::new();
    let mut picked = Vec::new();
    for nref in &g.networks {
        let default = default_gateway_for(g, nref);
        if let Some(net) = cc.network(&nref.name).filter(|n| n.kind == NetworkType::Dynamic) {
            out.insert(nref.name.clone(), dynamic_settings(net, az, default));
            continue;
        }
        let subnets = cc.resolved_subnets(&nref.name).ok()?;
        let Some((s, ip)) = pick_dynamic(&subnets, az, taken) else {
            for ip in picked {
                taken.remove(&ip);
            }
            return None;
        };
        taken.insert(ip);
        picked.push(ip);
        out.insert(nref.name.clone(), settings(s, ip, default));
    }
    Some(out)
}

/// The lowest free dynamic address of a subnet serving the AZ.
pub(super) fn pick_dynamic<'s>(
    subnets: &'s [ResolvedSubnet],
    az: &Option<String>,
    taken: &BTreeSet<Ipv4Addr>,
) -> Option<(&'s ResolvedSubnet, Ipv4Addr)> {
    subnets
        .iter()
        .filter(|s| subnet_serves(s, az))
        .find_map(|s| s.dynamic_pool().find(|ip| !taken.contains(ip)).map(|ip| (s, ip)))
}

/// Settings on a dynamic network before the cloud has given the VM an address: its DNS and cloud
/// properties (those of the subnet serving the AZ, else the network's).
pub(super) fn dynamic_settings(
    net: &bosun_types::cloud_config::Network,
    az: &Option<String>,
    default: Vec<String>,
) -> NetworkSettings {
    let subnet = net.subnets.iter().find(|s| match az {
        None => true,
        Some(a) => s.azs.is_empty() && s.az.is_none() || s.azs.contains(a) || s.az.as_ref() == Some(a),
    });
    NetworkSettings {
        kind: NetworkType::Dynamic,
        ip: String::new(),
        netmask: String::new(),
        gateway: None,
        default,
        dns: subnet.map(|s| s.dns.clone()).filter(|d| !d.is_empty()).unwrap_or_else(|| net.dns.clone()),
        cloud_properties: subnet.map(|s| s.cloud_properties.clone()).unwrap_or_else(|| net.cloud_properties.clone()),
    }
}

/// An address for people: an empty one is the cloud's to give.
pub fn show_ip(ip: &str) -> &str {
    if ip.is_empty() {
        "(assigned by the cloud)"
    } else {
        ip
    }
}

/// Whether any of an instance's addresses is not known yet (a new VM on a dynamic network).
pub fn address_pending(networks: &BTreeMap<String, NetworkSettings>) -> bool {
    networks.values().any(|n| n.ip.is_empty())
}

pub(super) fn default_gateway_for(g: &InstanceGroup, nref: &bosun_types::manifest::NetworkRef) -> Vec<String> {
    if g.networks.len() == 1 {
        vec!["dns".to_string(), "gateway".to_string()]
    } else {
        nref.default.clone()
    }
}
