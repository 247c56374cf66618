//! Placing a group's instances: which existing instances stay (by AZ, lowest index first), which
//! go, and the index, AZ and uuid of each new one.

use super::model::{new_uuid, Slot};
use crate::records::InstanceRecord;
use bosun_types::manifest::InstanceGroup;
use rand::RngCore;
use std::collections::{BTreeMap, BTreeSet};

/// Decides which instances a group keeps, creates and deletes, and their indexes and AZs.
/// Scale-down removes the highest indexes, from the fullest AZ first; the bootstrap instance (the
/// lowest index) stays; new instances go to the emptiest AZ.
pub(super) fn place_group(
    g: &InstanceGroup,
    existing: &[InstanceRecord],
    rng: &mut dyn RngCore,
) -> (Vec<Slot>, Vec<InstanceRecord>) {
    let azs: Vec<Option<String>> =
        if g.azs.is_empty() { vec![None] } else { g.azs.iter().cloned().map(Some).collect() };
    let mut mine: Vec<InstanceRecord> = existing.iter().filter(|i| i.group == g.name).cloned().collect();
    mine.sort_by_key(|i| i.index);
    let (mut keep, mut gone): (Vec<InstanceRecord>, Vec<InstanceRecord>) =
        mine.into_iter().partition(|i| azs.contains(&i.az));
    let desired = g.instances as usize;
    while keep.len() > desired {
        let mut count: BTreeMap<Option<String>, usize> = BTreeMap::new();
        for i in &keep {
            *count.entry(i.az.clone()).or_default() += 1;
        }
        let max = count.values().copied().max().unwrap_or(0);
        // Among instances in the fullest AZs, the highest index goes.
        let victim = keep
            .iter()
            .enumerate()
            .filter(|(_, i)| count[&i.az] == max)
            .max_by_key(|(_, i)| i.index)
            .map(|(k, _)| k)
            .expect("non-empty");
        gone.push(keep.remove(victim));
    }
    let mut slots: Vec<Slot> = keep
        .into_iter()
        .map(|e| Slot {
            uuid: e.uuid.clone(),
            index: e.index,
            az: e.az.clone(),
            networks: BTreeMap::new(),
            existing: Some(e),
            recreate: vec![],
            swap: false,
        })
        .collect();
    let mut used: BTreeSet<u32> = slots.iter().map(|s| s.index).collect();
    while slots.len() < desired {
        let mut count: BTreeMap<Option<String>, usize> = azs.iter().map(|a| (a.clone(), 0)).collect();
        for s in &slots {
            *count.entry(s.az.clone()).or_default() += 1;
        }
        let az = azs.iter().min_by_key(|a| count[*a]).cloned().expect("at least one AZ");
        let index = (0..).find(|i| !used.contains(i)).expect("a free index");
        used.insert(index);
        slots.push(Slot {
            uuid: new_uuid(rng),
            index,
            az,
            existing: None,
            networks: BTreeMap::new(),
            recreate: vec![],
            swap: false,
        });
    }
    slots.sort_by_key(|s| s.index);
    (slots, gone)
}
