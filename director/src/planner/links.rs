//! Links: which group provides what, and what each job consumes, resolved to the providers'
//! instances and properties.

use super::model::{job_of, perr, PlanError, PlanningInput, Slot};
use crate::render::{lookup, set_nested, LinkData};
use std::collections::BTreeMap;

use super::addresses::default_address;

/// A link some job provides: (group index, job index, link name as provided, type, exposed properties).
#[derive(Debug, Clone)]
pub(super) struct Provider {
    pub(super) group: usize,
    pub(super) job: usize,
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) properties: Vec<String>,
}

pub(super) fn link_providers(input: &PlanningInput<'_>) -> Result<Vec<Provider>, PlanError> {
    let mut out = Vec::new();
    for (gi, g) in input.manifest.instance_groups.iter().enumerate() {
        for (ji, j) in g.jobs.iter().enumerate() {
            let spec = &job_of(input, &j.release, &j.name).expect("validated").spec;
            for name in j.provides.keys() {
                if !spec.provides.iter().any(|p| &p.name == name) {
                    return Err(perr(
                        format!("/instance_groups/{gi}/jobs/{ji}/provides/{name}"),
                        format!("job `{}` provides no link `{name}`", j.name),
                    ));
                }
            }
            for p in &spec.provides {
                match j.provides.get(&p.name) {
                    Some(None) => continue, // explicitly not provided
                    Some(Some(ps)) => out.push(Provider {
                        group: gi,
                        job: ji,
                        name: ps.alias.clone().unwrap_or(p.name.clone()),
                        kind: p.kind.clone(),
                        properties: p.properties.clone(),
                    }),
                    None => out.push(Provider {
                        group: gi,
                        job: ji,
                        name: p.name.clone(),
                        kind: p.kind.clone(),
                        properties: p.properties.clone(),
                    }),
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn consumed_links(
    input: &PlanningInput<'_>,
    providers: &[Provider],
    placed: &[(usize, Vec<Slot>)],
    props: &BTreeMap<(String, String), serde_json::Value>,
    gi: usize,
    ji: usize,
) -> Result<BTreeMap<String, LinkData>, PlanError> {
    let m = input.manifest;
    let g = &m.instance_groups[gi];
    let j = &g.jobs[ji];
    let spec = &job_of(input, &j.release, &j.name).expect("validated").spec;
    let at = format!("/instance_groups/{gi}/jobs/{ji}/consumes");
    for name in j.consumes.keys() {
        if !spec.consumes.iter().any(|c| &c.name == name) {
            return Err(perr(format!("{at}/{name}"), format!("job `{}` consumes no link `{name}`", j.name)));
        }
    }
    let mut out = BTreeMap::new();
    for c in &spec.consumes {
        let wiring = j.consumes.get(&c.name);
        let provider = match wiring {
            Some(None) => {
                if !c.optional {
                    return Err(perr(
                        format!("{at}/{}", c.name),
                        format!("link `{}` is not optional and cannot be set to nil", c.name),
                    ));
                }
                continue;
            }
            Some(Some(w)) if w.from.is_some() => {
                let from = w.from.as_deref().expect("checked");
                let found: Vec<&Provider> = providers.iter().filter(|p| p.name == from).collect();
                match found.as_slice() {
                    [p] if p.kind == c.kind => *p,
                    [p] => {
                        return Err(perr(
                            format!("{at}/{}/from", c.name),
                            format!("link `{from}` has type `{}`, job `{}` wants `{}`", p.kind, j.name, c.kind),
                        ))
                    }
                    [] => {
                        return Err(perr(
                            format!("{at}/{}/from", c.name),
                            format!("no job in the deployment provides a link named `{from}`"),
                        ))
                    }
                    _ => {
                        return Err(perr(
                            format!("{at}/{}/from", c.name),
                            format!("several jobs provide a link named `{from}`; give them distinct `as` names"),
                        ))
                    }
                }
            }
            _ => {
                let found: Vec<&Provider> = providers.iter().filter(|p| p.kind == c.kind).collect();
                match found.as_slice() {
                    [p] => *p,
                    [] if c.optional => continue,
                    [] => {
                        return Err(perr(
                            format!("{at}/{}", c.name),
                            format!(
                                "job `{}` consumes link `{}` of type `{}`, but no job in the deployment provides one",
                                j.name, c.name, c.kind
                            ),
                        ))
                    }
                    many => {
                        let who: Vec<String> = many
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}/{}",
                                    m.instance_groups[p.group].name, m.instance_groups[p.group].jobs[p.job].name
                                )
                            })
                            .collect();
                        return Err(perr(
                            format!("{at}/{}", c.name),
                            format!(
                                "several jobs provide a link of type `{}` ({}); choose one with `from`",
                                c.kind,
                                who.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        let pg = &m.instance_groups[provider.group];
        let slots = &placed.iter().find(|(i, _)| *i == provider.group).expect("placed").1;
        let bootstrap = slots.iter().map(|s| s.index).min();
        let instances = slots
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": pg.name, "id": s.uuid, "index": s.index, "az": s.az,
                    "address": default_address(&s.networks), "bootstrap": Some(s.index) == bootstrap,
                })
            })
            .collect();
        let provider_props = props.get(&(pg.name.clone(), pg.jobs[provider.job].name.clone())).expect("resolved");
        let mut exposed = serde_json::Value::Object(Default::default());
        for p in &provider.properties {
            if let Some(v) = lookup(provider_props, p) {
                set_nested(&mut exposed, p, v.clone());
            }
        }
        out.insert(c.name.clone(), LinkData { instances, properties: exposed });
    }
    Ok(out)
}
