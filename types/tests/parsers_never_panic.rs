//! Property tests: whatever text arrives as a manifest, a cloud-config or an ops-file — random
//! characters, or YAML shaped like the real thing with wrong types, huge numbers and odd keys —
//! the parsers answer with a value or an error naming the file, and never panic.

use bosun_types::cloud_config::CloudConfig;
use bosun_types::gopatch::{apply_ops, parse_ops};
use bosun_types::manifest::DeploymentManifest;
use bosun_types::yaml::parse_value;
use proptest::prelude::*;

/// A YAML scalar of the kinds operators (and attackers) write.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("~".to_string()),
        Just("true".to_string()),
        Just("''".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n}{n}")),
        "[a-z0-9_./:=?~-]{0,12}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,2})?",
        "\\(\\([a-z._!]{0,8}\\)\\)",
    ]
}

/// A YAML document (flow style) of nested maps and lists, with keys drawn from `keys`.
fn document(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let leaf = scalar().prop_map(|s| format!("{s:?}"));
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec((prop::sample::select(keys), inner), 0..6).prop_map(|pairs| {
                let body: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    })
}

const MANIFEST_KEYS: &[&str] = &[
    "name",
    "releases",
    "stemcells",
    "update",
    "instance_groups",
    "jobs",
    "instances",
    "azs",
    "networks",
    "static_ips",
    "vm_type",
    "stemcell",
    "persistent_disk",
    "properties",
    "variables",
    "type",
    "options",
    "canaries",
    "max_in_flight",
    "canary_watch_time",
    "version",
    "os",
    "alias",
    "release",
    "lifecycle",
];
const CLOUD_KEYS: &[&str] = &[
    "azs",
    "networks",
    "subnets",
    "range",
    "gateway",
    "reserved",
    "static",
    "dns",
    "vm_types",
    "disk_types",
    "disk_size",
    "compilation",
    "workers",
    "network",
    "name",
    "type",
    "cloud_properties",
    "az",
];
const OPS_KEYS: &[&str] = &["type", "path", "value", "error", "absent"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_text_parses_or_fails_cleanly(text in "\\PC{0,200}") {
        if let Ok(v) = parse_value("m.yml", &text) {
            let _ = DeploymentManifest::parse("m.yml", v.clone());
            let _ = CloudConfig::parse("cc.yml", v);
        }
        let _ = parse_ops("ops.yml", &text);
    }

    #[test]
    fn manifest_shaped_documents_never_panic(doc in document(MANIFEST_KEYS)) {
        if let Ok(v) = parse_value("m.yml", &doc) {
            if let Err(e) = DeploymentManifest::parse("m.yml", v) {
                prop_assert!(e.to_string().starts_with("m.yml"), "the error names the file: {}", e);
            }
        }
    }

    #[test]
    fn cloud_config_shaped_documents_never_panic(doc in document(CLOUD_KEYS)) {
        if let Ok(v) = parse_value("cc.yml", &doc) {
            if let Err(e) = CloudConfig::parse("cc.yml", v) {
                prop_assert!(e.to_string().starts_with("cc.yml"), "the error names the file: {}", e);
            }
        }
    }

    #[test]
    fn ops_files_never_panic_whatever_they_patch(
        ops in prop::collection::vec(document(OPS_KEYS), 0..4),
        target in document(MANIFEST_KEYS),
        paths in prop::collection::vec("(/[a-z0-9=?:~_-]{0,8}){0,4}", 0..4),
    ) {
        // Operations with random fields; and well-formed ones with random pointers.
        for text in [
            format!("[{}]", ops.join(", ")),
            format!(
                "[{}]",
                paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| match i % 3 {
                        0 => format!("{{type: replace, path: {p:?}, value: {{a: 1}}}}"),
                        1 => format!("{{type: remove, path: {p:?}}}"),
                        _ => format!("{{type: test, path: {p:?}, absent: true}}"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ] {
            if let (Ok(parsed), Ok(mut doc)) = (parse_ops("ops.yml", &text), parse_value("m.yml", &target)) {
                let _ = apply_ops("ops.yml", &mut doc, &parsed);
            }
        }
    }
}

proptest! {
    /// What `bosun interpolate` prints reads back as the same document: quoting, escapes, folding
    /// and block scalars never change a value.
    #[test]
    fn written_yaml_reads_back_the_same(
        texts in prop::collection::vec("(\\PC|[ \t\n'\"#:\\-]){0,120}", 1..6),
        numbers in prop::collection::vec(any::<i64>(), 0..3),
    ) {
        use serde_yaml::Value;
        let mut map = serde_yaml::Mapping::new();
        for (i, t) in texts.iter().enumerate() {
            map.insert(Value::from(format!("k{i}")), Value::from(t.clone()));
            map.insert(Value::from(t.clone()), Value::Sequence(vec![Value::from(t.clone())]));
        }
        for n in &numbers {
            map.insert(Value::from(n.to_string()), Value::from(*n));
        }
        let doc = Value::Mapping(map);
        let out = bosun_types::yaml_v2::to_string(&doc);
        let back = bosun_types::yaml_v2::parse(&out).map_err(|e| TestCaseError::fail(format!("{e}\n{out}")))?;
        prop_assert_eq!(back, doc, "{}", out);
    }
}
