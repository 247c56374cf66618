//! The CLI on its own: help texts, `interpolate` with ops-files and every variable source, and a
//! vars store that generates passwords and certificates once and keeps them.

mod common;

use common::*;
use std::process::Command;

fn bosun(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let o = Command::new(bosun_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("BOSUN_DIRECTOR")
        .env("HOME", dir)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn every_verb_documents_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let (code, top, _) = bosun(&["--help"], dir.path());
    assert_eq!(code, 0);
    assert!(top.contains("Example:"), "{top}");
    let verbs = [
        "director",
        "target",
        "update-cloud-config",
        "cloud-config",
        "upload-release",
        "create-release",
        "sync-blobs",
        "releases",
        "upload-stemcell",
        "stemcells",
        "deploy",
        "deployments",
        "instances",
        "manifest",
        "tasks",
        "task",
        "delete-deployment",
        "interpolate",
    ];
    for v in verbs {
        let (code, out, err) = bosun(&[v, "--help"], dir.path());
        assert_eq!(code, 0, "{v}: {err}");
        let example = out.split("Example:").nth(1).unwrap_or("");
        assert!(
            example.contains(&format!("bosun {v}")) || example.contains("bosun -d") || example.contains("bosun target"),
            "{v} --help has no example:\n{out}"
        );
    }
}

#[test]
fn interpolate_applies_ops_files_variables_and_a_vars_store() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    std::fs::write(
        dir.path().join("m.yml"),
        r#"
name: ((name))
instance_groups:
- name: db
  instances: 1
  jobs:
  - name: db
    properties:
      password: ((db_password))
      tls: ((db_tls))
      url: "postgres://admin:((db_password))@((host)):5432"
variables:
- name: db_password
  type: password
- name: db_ca
  type: certificate
  options: {is_ca: true, common_name: db-ca}
- name: db_tls
  type: certificate
  options: {ca: db_ca, common_name: db, alternative_names: [127.0.0.1]}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ops.yml"),
        "- type: replace\n  path: /instance_groups/name=db/instances\n  value: 3\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("vars.yml"), "host: db.internal\n").unwrap();
    std::fs::write(
        dir.path().join("typed.yml"),
        "num: ((n))\nb: ((b))\ns: ((s))\nm: ((m))\nf: ((f))\ne: ((e))\nhost: ((host))\n",
    )
    .unwrap();
    let store = p("creds.yml");
    let (code, out, err) = bosun(
        &[
            "interpolate",
            &p("m.yml"),
            "-o",
            &p("ops.yml"),
            "-v",
            "name=shop",
            "-l",
            &p("vars.yml"),
            "--vars-store",
            &store,
            "--var-errs",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(doc["name"], "shop");
    assert_eq!(doc["instance_groups"][0]["instances"], 3);
    let props = &doc["instance_groups"][0]["jobs"][0]["properties"];
    let password = props["password"].as_str().unwrap().to_string();
    assert_eq!(password.len(), 20);
    assert_eq!(props["url"].as_str().unwrap(), format!("postgres://admin:{password}@db.internal:5432"));
    assert!(props["tls"]["certificate"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(props["tls"]["ca"], doc_ca(&store));
    // The store keeps what it generated: the next run gives the same values.
    let (_, again, _) = bosun(
        &[
            "interpolate",
            &p("m.yml"),
            "-v",
            "name=shop",
            "-v",
            "host=h",
            "--vars-store",
            &store,
            "--path",
            "/instance_groups/0/jobs/0/properties/password",
        ],
        dir.path(),
    );
    assert_eq!(again.trim(), password);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&store).unwrap().permissions().mode() & 0o077, 0, "the vars store is private");

    // Without --var-errs whatever is unanswered stays as it is, as bosh leaves it: declared
    // variables for the director, undeclared ones too.
    let (code, out, _) = bosun(&["interpolate", &p("m.yml"), "-v", "name=x", "-v", "host=h"], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("((db_password))"), "{out}");
    let (code, out, err) = bosun(&["interpolate", &p("m.yml"), "-v", "name=x"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("postgres://admin:((db_password))@((host)):5432"), "{out}");
    // With --var-errs: every missing name once, sorted.
    let (code, _, err) = bosun(&["interpolate", &p("m.yml"), "--var-errs"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("Expected to find variables: db_password\ndb_tls\nhost\nname"), "{err}");
    // --path takes go-patch pointers and says what it did not find as go-patch does.
    let (code, _, err) =
        bosun(&["interpolate", &p("m.yml"), "--path", "/nope", "-v", "name=x", "-v", "host=h"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("--path /nope: Expected to find a map key 'nope' for path '/nope'"), "{err}");
    let (code, out, _) =
        bosun(&["interpolate", &p("m.yml"), "--path", "/instance_groups/name=db/instances"], dir.path());
    assert_eq!((code, out.trim()), (0, "1"));
    // -v values are YAML; --var-file a file's raw contents; --vars-env from the environment; -v
    // wins over -l.
    std::fs::write(dir.path().join("raw.txt"), "yes: no\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(["interpolate", &p("typed.yml")])
        .args([
            "-v",
            "n=5",
            "-v",
            "b=true",
            "-v",
            "s=\"val\"",
            "-v",
            "m={}",
            "--var-file",
            &format!("f={}", p("raw.txt")),
        ])
        .args(["-l", &p("vars.yml"), "-v", "host=from-v", "--vars-env", "BOSUN_TEST_VARS"])
        .env("BOSUN_TEST_VARS_e", "[1, 2]")
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .output()
        .map(|o| {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).into_owned()
        });
    let doc: serde_yaml::Value = serde_yaml::from_str(&out.unwrap()).unwrap();
    assert_eq!(doc["num"], serde_yaml::Value::from(5));
    assert_eq!(doc["b"], serde_yaml::Value::from(true));
    assert_eq!(doc["s"], serde_yaml::Value::from("val"));
    assert!(doc["m"].as_mapping().is_some_and(|m| m.is_empty()));
    assert_eq!(doc["f"], serde_yaml::Value::from("yes: no\n"));
    assert_eq!(doc["e"], serde_yaml::from_str::<serde_yaml::Value>("[1, 2]").unwrap());
    assert_eq!(doc["host"], serde_yaml::Value::from("from-v"));
    // --var-errs-unused names what was given and never used, one per line, sorted.
    let (code, _, err) = bosun(
        &[
            "interpolate",
            &p("m.yml"),
            "-v",
            "name=x",
            "-v",
            "host=h",
            "-v",
            "zzz=1",
            "-v",
            "aaa=2",
            "--var-errs-unused",
        ],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("Expected to use variables: aaa\nzzz"), "{err}");
}

fn doc_ca(store: &str) -> serde_yaml::Value {
    let s: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(store).unwrap()).unwrap();
    s["db_ca"]["certificate"].clone()
}

#[test]
fn dash_v_values_are_yaml_as_in_bosh() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.yml");
    // `n:` is YAML 1.1's false, as bosh reads it: the key prints as `false`.
    std::fs::write(&m, "n: ((n))\nb: ((b))\ns: ((s))\nq: ((q))\nm: ((m))\ne: ((e))\ny: ((y))\noct: ((oct))\n").unwrap();
    let (code, out, err) = bosun(
        &[
            "interpolate",
            m.to_str().unwrap(),
            "-v",
            "n=5",
            "-v",
            "b=true",
            "-v",
            "s=text",
            "-v",
            "q=\"5\"",
            "-v",
            "m={a: 1}",
            "-v",
            "e=",
            "-v",
            "y=yes",
            "-v",
            "oct=0777",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("false: 5\n"), "{out}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(doc[serde_yaml::Value::Bool(false)], serde_yaml::Value::from(5));
    assert_eq!(doc[serde_yaml::Value::Bool(true)], serde_yaml::Value::from(true));
    assert_eq!(doc["oct"], serde_yaml::Value::from(511));
    assert_eq!(doc["b"], serde_yaml::Value::from(true));
    assert_eq!(doc["s"], serde_yaml::Value::from("text"));
    assert_eq!(doc["q"], serde_yaml::Value::from("5"));
    assert_eq!(doc["m"]["a"], serde_yaml::Value::from(1));
    assert_eq!(doc["e"], serde_yaml::Value::from(""));
}

/// As bosh: a definition's options are interpolated before it is generated, a definition may have
/// no type (then only a given value answers it), and the `variables` section keeps only the
/// definitions nothing answered.
#[test]
fn variable_definitions_are_interpolated_generated_and_dropped_when_answered() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(
        dir.path().join("m.yml"),
        r#"ca: ((ca.certificate))
pw: ((pw))
given: ((given))
later: ((later))
variables:
- {name: ca, type: certificate, options: {is_ca: true, common_name: ((host)), duration: ((days))}}
- {name: pw, type: password}
- {name: given}
- {name: later, type: password, options: {length: ((unset))}}
"#,
    )
    .unwrap();
    let (code, out, err) = bosun(
        &[
            "interpolate",
            &p("m.yml"),
            "-v",
            "host=ca.example",
            "-v",
            "days=30",
            "-v",
            "given=g",
            "--vars-store",
            &p("s.yml"),
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert!(doc["ca"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(doc["given"], "g");
    assert_eq!(doc["later"], "((later))", "its options refer to a variable nothing answers");
    let left: Vec<&str> = doc["variables"].as_sequence().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(left, ["later"], "answered definitions leave the section: {out}");
    // The certificate was made for the interpolated common name.
    let store: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(p("s.yml")).unwrap()).unwrap();
    let pem = store["ca"]["certificate"].as_str().unwrap().to_string();
    let subject = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(pem.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&subject.stdout);
    assert!(text.contains("CN = ca.example") || text.contains("CN=ca.example"), "{text}");
}

/// `completion SHELL` prints a script the shell accepts, naming every verb.
#[test]
fn completion_scripts_name_every_verb_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let (code, script, err) = bosun(&["completion", "bash"], dir.path());
    assert_eq!(code, 0, "{err}");
    for verb in ["deploy", "cancel-task", "delete-stemcell", "clean-up", "vms", "interpolate"] {
        assert!(script.contains(verb), "{verb} missing");
    }
    let path = dir.path().join("bosun.bash");
    std::fs::write(&path, &script).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    let (code, _, err) = bosun(&["completion", "tcsh"], dir.path());
    assert_eq!(code, 2, "an unknown shell is a usage error: {err}");
}
