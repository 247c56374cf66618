//! Job template rendering, in the director, with BOSH's helpers under their names:
//! `p("a.b")`, `p("a.b", default)`, `if_p("a", "b")` (true when all are set), `link("name")` (with
//! `.instances`, `.address`, `.p()`, `.if_p()`), `if_link("name")` (the link, or none when an
//! optional link did not resolve) and `spec` (name, index, id, az, address, ip,
//! bootstrap, deployment, networks, job, persistent_disk, release). Templates are Jinja
//! (minijinja): sandboxed, no file or network access, bounded by fuel. The `sh_quote` filter
//! makes any value one shell word (`{{ p('token') | sh_quote }}`): values never become code;
//! `b64encode` gives a value's base64 (kubeconfigs embed certificates so).

use minijinja::value::{Object, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("job `{job}`, template `{template}`: {message}")]
pub struct RenderError {
    pub job: String,
    pub template: String,
    pub message: String,
}

/// What a consumed link offers a template.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkData {
    pub instances: Vec<serde_json::Value>,
    /// The provider's exposed properties, nested.
    pub properties: serde_json::Value,
}

/// Looks a dotted property up in a nested value; `null` counts as unset.
pub fn lookup<'v>(root: &'v serde_json::Value, dotted: &str) -> Option<&'v serde_json::Value> {
    let mut cur = root;
    for part in dotted.split('.') {
        cur = cur.get(part)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// Sets a dotted property in a nested object, creating the maps on the way.
pub fn set_nested(root: &mut serde_json::Value, dotted: &str, value: serde_json::Value) {
    let mut cur = root;
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = serde_json::Value::Object(Default::default());
        }
        let map = cur.as_object_mut().expect("made an object above");
        if i == parts.len() - 1 {
            map.insert(part.to_string(), value);
            return;
        }
        cur = map.entry(part.to_string()).or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
}

fn p_impl(props: &serde_json::Value, args: &[Value], what: &str) -> Result<Value, Error> {
    let name = args
        .first()
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, format!("{what}p() needs a property name")))?;
    match lookup(props, name) {
        Some(v) => Ok(Value::from_serialize(v)),
        None => match args.get(1) {
            Some(d) => Ok(d.clone()),
            None => Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{what}property `{name}` is not set and has no default"),
            )),
        },
    }
}

fn if_p_impl(props: &serde_json::Value, args: &[Value]) -> Result<Value, Error> {
    let mut all = true;
    for a in args {
        let name = a.as_str().ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "if_p() takes property names"))?;
        all &= lookup(props, name).is_some();
    }
    Ok(Value::from(all))
}

#[derive(Debug)]
struct LinkObject {
    name: String,
    instances: Value,
    address: Value,
    properties: serde_json::Value,
}

impl Object for LinkObject {
    // A link is there (`{% if if_link('x') %}`), whatever it holds.
    fn is_true(self: &Arc<Self>) -> bool {
        true
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "instances" => Some(self.instances.clone()),
            "address" => Some(self.address.clone()),
            "name" => Some(Value::from(self.name.clone())),
            _ => None,
        }
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, Error> {
        match method {
            "p" => p_impl(&self.properties, args, &format!("link `{}`: ", self.name)),
            "if_p" => if_p_impl(&self.properties, args),
            _ => Err(Error::new(ErrorKind::UnknownMethod, format!("links have p() and if_p(), not {method}()"))),
        }
    }
}

/// Renders one job's templates. Returns destination path → (mode, contents).
pub fn render_job(
    job: &str,
    templates: &BTreeMap<String, String>,
    destinations: &BTreeMap<String, String>,
    spec: &serde_json::Value,
    properties: &serde_json::Value,
    links: &BTreeMap<String, LinkData>,
) -> Result<BTreeMap<String, (u32, String)>, RenderError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    // BOSH templates are not escaped: minijinja would JSON-quote every value in `*.yml.j2` and
    // `*.json.j2` templates (its default by file name).
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // A template that loops forever must not hang a deploy.
    env.set_fuel(Some(5_000_000));
    let props = Arc::new(properties.clone());
    let p1 = props.clone();
    env.add_function("p", move |args: minijinja::value::Rest<Value>| p_impl(&p1, &args, ""));
    env.add_filter("sh_quote", sh_quote);
    env.add_filter("b64encode", |v: String| -> String {
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v.as_bytes())
    });
    let p2 = props.clone();
    env.add_function("if_p", move |args: minijinja::value::Rest<Value>| if_p_impl(&p2, &args));
    let links = Arc::new(links.clone());
    let link_object = |links: &BTreeMap<String, LinkData>, name: &str| {
        links.get(name).map(|l| {
            let address =
                l.instances.first().and_then(|i| i.get("address")).cloned().unwrap_or(serde_json::Value::Null);
            Value::from_object(LinkObject {
                name: name.to_string(),
                instances: Value::from_serialize(&l.instances),
                address: Value::from_serialize(&address),
                properties: l.properties.clone(),
            })
        })
    };
    let (l1, job_name) = (links.clone(), job.to_string());
    env.add_function("link", move |name: String| -> Result<Value, Error> {
        link_object(&l1, &name).ok_or_else(|| {
            Error::new(ErrorKind::InvalidOperation, format!("job `{job_name}` consumes no link `{name}`"))
        })
    });
    // BOSH's `if_link`: the link when an (optional) link resolved, none otherwise.
    env.add_function("if_link", move |name: String| link_object(&links, &name).unwrap_or(Value::from(())));
    let err = |template: &str, e: &Error| {
        let mut message = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            message.push_str(&format!(": {s}"));
            src = s.source();
        }
        RenderError { job: job.to_string(), template: template.to_string(), message }
    };
    for (src, text) in templates {
        env.add_template_owned(src.clone(), text.clone()).map_err(|e| err(src, &e))?;
    }
    let ctx =
        minijinja::context! { spec => Value::from_serialize(spec), properties => Value::from_serialize(properties) };
    let mut out = BTreeMap::new();
    for (src, dest) in destinations {
        let t = env.get_template(src).map_err(|e| err(src, &e))?;
        let text = t.render(&ctx).map_err(|e| err(src, &e))?;
        // Owner-only (jobs run as root): any rendered file may hold a property's secret value.
        // Scripts are executable.
        let mode = if dest.starts_with("bin/") { 0o700 } else { 0o600 };
        out.insert(dest.clone(), (mode, text));
    }
    Ok(out)
}

/// One POSIX shell word holding exactly the value: single quotes, each `'` as `'\''`.
fn sh_quote(v: Value) -> String {
    let text = match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    };
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(template: &str, props: serde_json::Value, links: BTreeMap<String, LinkData>) -> Result<String, RenderError> {
        let mut t = BTreeMap::new();
        t.insert("t.j2".to_string(), template.to_string());
        let mut d = BTreeMap::new();
        d.insert("t.j2".to_string(), "config/t".to_string());
        let spec = json!({"name": "etcd", "index": 0, "id": "u-1", "address": "127.0.10.2", "bootstrap": true});
        render_job("etcd", &t, &d, &spec, &props, &links).map(|m| m["config/t"].1.clone())
    }

    #[test]
    fn p_spec_and_defaults() {
        let out = one(
            "{{ spec.name }}/{{ spec.index }} {{ p('a.b') }} {{ p('x.y', 7) }}",
            json!({"a": {"b": "v"}}),
            BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(out, "etcd/0 v 7");
    }

    #[test]
    fn missing_property_is_an_error_naming_it() {
        let e = one("{{ p('a.c') }}", json!({"a": {"b": 1}}), BTreeMap::new()).unwrap_err();
        assert!(e.message.contains("property `a.c` is not set"), "{e}");
        assert_eq!(e.job, "etcd");
    }

    #[test]
    fn if_p_and_links() {
        let mut links = BTreeMap::new();
        links.insert(
            "peers".to_string(),
            LinkData {
                instances: vec![
                    json!({"address": "127.0.10.2", "id": "a"}),
                    json!({"address": "127.0.10.3", "id": "b"}),
                ],
                properties: json!({"port": 2380}),
            },
        );
        let out = one(
            "{% if if_p('tls') %}tls{% else %}plain{% endif %} {% for i in link('peers').instances %}{{ i.id }}=http://{{ i.address }}:{{ link('peers').p('port') }}{% if not loop.last %},{% endif %}{% endfor %}",
            json!({}),
            links.clone(),
        )
        .unwrap();
        assert_eq!(out, "plain a=http://127.0.10.2:2380,b=http://127.0.10.3:2380");
        assert!(one("{{ link('nope') }}", json!({}), BTreeMap::new())
            .unwrap_err()
            .message
            .contains("consumes no link `nope`"));
        let t = "{% set l = if_link('peers') %}{% if l %}{{ l.p('port') }}{% else %}none{% endif %}";
        assert_eq!(one(t, json!({}), links.clone()).unwrap(), "2380");
        assert_eq!(one(t, json!({}), BTreeMap::new()).unwrap(), "none");
    }

    #[test]
    fn yaml_and_json_templates_are_not_escaped() {
        let mut t = BTreeMap::new();
        t.insert("config/a.yml.j2".to_string(), "address: \"{{ spec.address }}\"".to_string());
        let mut d = BTreeMap::new();
        d.insert("config/a.yml.j2".to_string(), "config/a.yml".to_string());
        let spec = json!({"address": "10.0.0.5"});
        let out = render_job("j", &t, &d, &spec, &json!({}), &BTreeMap::new()).unwrap();
        assert_eq!(out["config/a.yml"].1, "address: \"10.0.0.5\"");
    }

    #[test]
    fn sh_quote_makes_one_word_that_runs_nothing() {
        let hostile = "$(touch /tmp/x) `id` \"q\" 'single' ; rm -rf /\nnext line";
        let out = one("printf '%s' {{ p('v') | sh_quote }}", json!({"v": hostile}), BTreeMap::new()).unwrap();
        let o = std::process::Command::new("bash").arg("-c").arg(&out).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), hostile);
        assert_eq!(one("{{ p('n') | sh_quote }}", json!({"n": 5}), BTreeMap::new()).unwrap(), "'5'");
        assert_eq!(one("{{ p('v') | b64encode }}", json!({"v": "ca\n"}), BTreeMap::new()).unwrap(), "Y2EK");
    }

    #[test]
    fn runaway_template_is_stopped() {
        let e = one(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            json!({}),
            BTreeMap::new(),
        )
        .unwrap_err();
        assert!(e.message.contains("fuel"), "{e}");
    }
}
