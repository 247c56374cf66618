//! Director-side variables through the CLI: a certificate the director generates is usable as
//! `((name.ca))`, `((name.certificate))` and `((name.private_key))` without a vars-store — the CLI
//! leaves what it cannot answer to the director — and the stored manifest holds no secret.
//! Subnet 127.0.66.0/24.

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
    // Deploying again changes nothing: the generated values are kept.
    assert!(d.ok(&["-n", "-d", "vars", "deploy", m.to_str().unwrap()]).contains("No changes."));
}
