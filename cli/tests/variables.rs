//! Director-side variables through the CLI: a certificate the director generates is usable as
//! `((name.ca))`, `((name.certificate))` and `((name.private_key))` without a vars-store — the CLI
//! leaves what it cannot answer to the director — and the stored manifest holds no secret.
//! Subnets 127.0.66.0/24 and 127.0.67.0/24.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn a_director_generated_certificate_is_usable_by_its_keys_and_never_stored_in_the_manifest() {
    let d = TestDirector::start();
    d.prepare_with(&d.write("cloud.yml", &local_cloud_config(66)), &testbed_release());
    let manifest =
        sleeper_manifest("vars", 1, r#""ca=((tls.ca)) cert=((tls.certificate)) key=((tls.private_key))""#, "", "", "")
            + r#"variables:
- name: tls_ca
  type: certificate
  options: {is_ca: true, common_name: vars-ca}
- name: tls
  type: certificate
  options: {ca: tls_ca, common_name: sleeper}
"#;
    let m = d.write("vars.yml", &manifest);
    // The CLI alone (no director) leaves the keys of a declared variable in place.
    let out = d.ok(&["interpolate", m.to_str().unwrap()]);
    assert!(out.contains("((tls.private_key))") && out.contains("((tls.ca))"), "{out}");
    d.ok(&["-n", "-d", "vars", "deploy", m.to_str().unwrap()]);
    let i = d.running("vars", 1);
    let starts = d.cpi_base().join("vms").join(i[0]["vm_cid"].as_str().unwrap()).join("root/store/starts");
    let written = eventually("the sleeper to write its message", Duration::from_secs(30), || {
        std::fs::read_to_string(&starts).ok().filter(|s| s.contains("key="))
    });
    assert_eq!(written.matches("BEGIN CERTIFICATE").count(), 2, "the CA and the certificate: {written}");
    assert!(written.contains("PRIVATE KEY"), "{written}");
    let stored = d.ok(&["-d", "vars", "manifest"]);
    assert!(stored.contains("((tls.private_key))"), "{stored}");
    assert!(!stored.contains("PRIVATE KEY") && !stored.contains("BEGIN CERTIFICATE"), "{stored}");
    // `variables` names them, their types, ids and generation times, never their values.
    let listed = d.json(&["-d", "vars", "variables"]);
    let names: Vec<(&str, &str)> =
        listed.as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap())).collect();
    assert_eq!(names, vec![("tls", "certificate"), ("tls_ca", "certificate")], "{listed}");
    assert!(listed.as_array().unwrap().iter().all(|v| v["id"].is_u64() && v["generated_at"].is_u64()), "{listed}");
    let table = d.ok(&["-d", "vars", "variables"]);
    assert!(table.contains("tls_ca") && !table.contains("BEGIN"), "{table}");
    let first_ids = listed.to_string();
    // Deploying again changes nothing: the generated values are kept.
    assert!(d.ok(&["-n", "-d", "vars", "deploy", m.to_str().unwrap()]).contains("No changes."));
    assert_eq!(d.json(&["-d", "vars", "variables"]).to_string(), first_ids, "kept values keep their ids");
    // New options: kept as they are by default (BOSH's no-overwrite) ...
    let renamed = manifest.replace("common_name: sleeper}", "common_name: renamed}");
    let m2 = d.write("vars2.yml", &renamed);
    assert!(d.ok(&["-n", "-d", "vars", "deploy", m2.to_str().unwrap()]).contains("No changes."));
    // ... and generated again with `update_mode: converge`, which the instance then gets.
    let converge = renamed.replace("common_name: renamed}", "common_name: renamed}\n  update_mode: converge");
    let m3 = d.write("vars3.yml", &converge);
    d.ok(&["-n", "-d", "vars", "deploy", m3.to_str().unwrap()]);
    let i = d.running("vars", 1);
    let starts = d.cpi_base().join("vms").join(i[0]["vm_cid"].as_str().unwrap()).join("root/store/starts");
    let cert_of = |text: &str| {
        text.split("cert=").last().unwrap_or_default().split(" key=").next().unwrap_or_default().to_string()
    };
    let before = cert_of(&written);
    let after = eventually("the sleeper to write the new certificate", Duration::from_secs(30), || {
        std::fs::read_to_string(&starts).ok().map(|t| cert_of(&t)).filter(|c| c.contains("BEGIN") && *c != before)
    });
    assert_ne!(after, before);
    // Converged: the next deploy with the same options changes nothing.
    assert!(d.ok(&["-n", "-d", "vars", "deploy", m3.to_str().unwrap()]).contains("No changes."));
}

/// Property values reach the etcd job's scripts as one word each (the `sh_quote` filter): a
/// cluster token full of shell syntax arrives verbatim as etcd's argument, and none of it runs —
/// not in the start script, pre-start, post-start or drain.
#[test]
fn hostile_property_values_arrive_verbatim_and_run_nothing() {
    let d = TestDirector::start();
    d.prepare(&d.write("cloud.yml", &local_cloud_config(67)));
    let marker = d.dir.path().join("ran");
    let m = marker.display();
    let hostile = format!("$(touch {m}-1) `touch {m}-2` \"q\" 'single' ; touch {m}-3 \n touch {m}-4 & $HOME");
    let vars = d.write("hostile.yml", &format!("etcd_token: {}\n", serde_json::to_string(&hostile).unwrap()));
    let manifest = r#"name: hostile
releases: [{name: kubo, version: latest}]
stemcells: [{alias: default, os: local, version: latest}]
update: {canaries: 1, max_in_flight: 1, canary_watch_time: 1000-60000, update_watch_time: 1000-60000}
instance_groups:
- name: etcd
  azs: [z1]
  instances: 1
  vm_type: default
  stemcell: default
  networks: [{name: default}]
  jobs:
  - name: etcd
    release: kubo
    properties: {etcd: {cluster_token: ((etcd_token))}}
"#;
    let m = d.write("hostile-manifest.yml", manifest);
    d.ok(&["-n", "-d", "hostile", "deploy", m.to_str().unwrap(), "-l", vars.to_str().unwrap()]);
    let i = d.running("hostile", 1);
    let vm = i[0]["vm_cid"].as_str().unwrap().to_string();
    // etcd gets the token exactly, from its environment — not on its command line, which every
    // user of the machine can read — and no rendered file of the job is readable by others.
    let (argv, environ) = eventually("etcd's process", Duration::from_secs(30), || {
        bosun_cpi_local::vm_processes(&vm).into_iter().find_map(|pid| {
            let split = |raw: Vec<u8>| -> Vec<String> {
                raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
            };
            let args = split(std::fs::read(format!("/proc/{pid}/cmdline")).ok()?);
            let env = split(std::fs::read(format!("/proc/{pid}/environ")).ok()?);
            args.first().is_some_and(|a| a.ends_with("/etcd")).then_some((args, env))
        })
    });
    assert!(!argv.iter().any(|a| a.contains("touch")), "the token is not on etcd's command line: {argv:?}");
    assert!(environ.contains(&format!("ETCD_INITIAL_CLUSTER_TOKEN={hostile}")), "the token arrives verbatim");
    let job = d.cpi_base().join("vms").join(&vm).join("root/jobs/etcd");
    let mut loose = Vec::new();
    for dir in [job.join("bin"), job.join("config")] {
        for f in std::fs::read_dir(&dir).unwrap().flatten() {
            use std::os::unix::fs::PermissionsExt;
            if f.metadata().unwrap().permissions().mode() & 0o077 != 0 {
                loose.push(f.path());
            }
        }
    }
    assert!(loose.is_empty(), "rendered files readable by others: {loose:?}");
    d.ok(&["-n", "-d", "hostile", "delete-deployment"]);
    let ran: Vec<_> =
        (1..=4).map(|k| format!("{}-{k}", marker.display())).filter(|p| std::path::Path::new(p).exists()).collect();
    assert!(ran.is_empty(), "the value ran as code: {ran:?}");
}
