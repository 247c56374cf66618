//! `/ui`: a read-only view of the director for people, on the API's listener. The deployments;
//! per deployment a grid of instances by group and AZ coloured by state, with vitals; and the last
//! day's event timeline drawn to scale (server-rendered SVG, no script).
//!
//! Signing in: the API's token, typed once into a form, is exchanged for a random session id in a
//! cookie (HttpOnly, Secure, SameSite=Strict, path `/ui`, 12 hours); the token itself never stays
//! in the browser. Sessions live in the director's memory: a restart signs everyone out.

mod escape;
mod page;
mod timeline;

pub use timeline::timeline_svg;

use crate::events::{EventFilter, EventSubject};
use crate::Director;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use bosun_types::api::{DeploymentView, EventView, InstanceView};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const COOKIE: &str = "bosun_ui";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest goes first (a flood of sign-ins cannot grow memory).
const MAX_SESSIONS: usize = 256;

/// Whether a request path is the web view's (authenticated by its session cookie, not a bearer
/// token).
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The signed-in browsers: session id → when it expires.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    fn open(&self, now: Instant) -> String {
        use rand::RngCore;
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = hex::encode(id);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, expires| *expires > now);
        while live.len() >= MAX_SESSIONS {
            let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) else { break };
            live.remove(&oldest);
        }
        live.insert(id.clone(), now + SESSION_TTL);
        id
    }

    fn valid(&self, id: &str, now: Instant) -> bool {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).get(id).is_some_and(|expires| *expires > now)
    }

    fn close(&self, id: &str) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// The routes of `/ui`, merged into the API's router (which leaves `/ui` paths to them).
pub fn router(d: Arc<Director>) -> Router<Arc<Director>> {
    let signed_in = Router::new()
        .route("/ui", get(overview))
        .route("/ui/deployments/{name}", get(deployment))
        .route("/ui/deployments/{name}/timeline.svg", get(timeline_image))
        .route_layer(middleware::from_fn_with_state(d, require_session));
    Router::new()
        .merge(signed_in)
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .layer(DefaultBodyLimit::max(8 << 10))
        .layer(middleware::map_response(page_headers))
}

/// What every page is sent with: no script, no framing, no caching, no referrer.
async fn page_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The session id a request's cookies carry.
fn session_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Where to go after signing in: a `/ui` path of plain characters, else `/ui` (never another
/// site: no open redirect).
fn safe_next(next: &str) -> &str {
    let plain = next.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~%".contains(&b));
    if is_ui_path(next) && plain && !next.contains("//") && !next.contains("..") {
        next
    } else {
        "/ui"
    }
}

async fn require_session(State(d): State<Arc<Director>>, request: Request, next: Next) -> Response {
    if session_of(request.headers()).is_some_and(|id| d.ui_sessions.valid(id, d.clock.now())) {
        if let Some(admission) = request.extensions().get::<Arc<crate::gate::Admission>>() {
            admission.prove();
        }
        return next.run(request).await;
    }
    let path = safe_next(request.uri().path()).to_string();
    (StatusCode::UNAUTHORIZED, Html(page::login(&path, None))).into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(d): State<Arc<Director>>,
    admission: Option<Extension<Arc<crate::gate::Admission>>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(&form.next).to_string();
    if !d.token_matches(&form.token) {
        // Anyone can provoke this line: a few a minute, then a count.
        static WRONG: crate::log_throttle::LogThrottle =
            crate::log_throttle::LogThrottle::new(5, Duration::from_secs(60));
        if let Some(held) = WRONG.allow() {
            tracing::warn!(left_out = held, "a /ui sign-in with a wrong token");
        }
        let page = page::login(&next, Some("That token is not this director's."));
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    }
    if let Some(Extension(a)) = admission {
        a.prove();
    }
    let id = d.ui_sessions.open(d.clock.now());
    let digest = bosun_types::digest::sha256_digest(id.as_bytes());
    let subject = EventSubject { object_type: "director", object_name: d.config.name.clone(), ..Default::default() };
    d.events
        .record(subject, "ui_sign_in", "a web browser", format!("signed in to /ui (session {})", &digest[..19]))
        .await;
    let cookie =
        format!("{COOKIE}={id}; Path=/ui; Max-Age={}; HttpOnly; Secure; SameSite=Strict", SESSION_TTL.as_secs());
    (StatusCode::SEE_OTHER, [(header::LOCATION, next), (header::SET_COOKIE, cookie)]).into_response()
}

async fn logout(State(d): State<Arc<Director>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_of(&headers) {
        d.ui_sessions.close(id);
    }
    let cookie = format!("{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; Secure; SameSite=Strict");
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui".to_string()), (header::SET_COOKIE, cookie)]).into_response()
}

/// A failure as a page.
fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    (status, Html(page::problem(title, message))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "a /ui page failed");
    problem(StatusCode::INTERNAL_SERVER_ERROR, "Something failed", "See the director's log.")
}

async fn overview(State(d): State<Arc<Director>>) -> Response {
    let views = match crate::views::deployment_views(&d).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let mut rows = vec![];
    for v in views {
        let counts = match crate::views::instance_views(&d, &v.name, false).await {
            Ok(list) => page::state_counts(&list),
            Err(e) => return internal(e),
        };
        rows.push((v, counts));
    }
    Html(page::overview(&d.config.name, &rows)).into_response()
}

/// What a deployment's page shows.
type DeploymentData = (DeploymentView, Vec<InstanceView>, Vec<EventView>);

/// A deployment's view, its instances with vitals, and its events of the last day (newest first).
async fn deployment_data(d: &Director, name: &str) -> Result<DeploymentData, Response> {
    let views = crate::views::deployment_views(d).await.map_err(internal)?;
    let Some(view) = views.into_iter().find(|v| v.name == name) else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "No such deployment",
            &format!("Deployment `{name}` does not exist."),
        ));
    };
    let instances = crate::views::instance_views(d, name, true).await.map_err(internal)?;
    let filter = EventFilter {
        deployment: Some(name.to_string()),
        since_ms: Some(d.clock.unix_ms().saturating_sub(timeline::DAY_MS)),
        limit: Some(10_000),
        ..Default::default()
    };
    let events = d.events.list(&filter).await.map_err(internal)?;
    Ok((view, instances, events))
}

async fn deployment(State(d): State<Arc<Director>>, Path(name): Path<String>) -> Response {
    match deployment_data(&d, &name).await {
        Ok((view, instances, events)) => {
            Html(page::deployment(&view, &instances, &events, d.clock.unix_ms())).into_response()
        }
        Err(r) => r,
    }
}

async fn timeline_image(State(d): State<Arc<Director>>, Path(name): Path<String>) -> Response {
    match deployment_data(&d, &name).await {
        Ok((_, instances, events)) => {
            let labels: BTreeMap<String, String> =
                instances.iter().map(|i| (i.instance.clone(), format!("{}/{}", i.group, i.index))).collect();
            let svg = timeline_svg(&events, d.clock.unix_ms(), &labels);
            ([(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")], svg).into_response()
        }
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ui_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next("/ui/deployments/k8s"), "/ui/deployments/k8s");
        for hostile in
            ["https://evil.example/", "//evil.example/ui", "/ui//evil", "/v1/info", "/ui/../v1", "/ui\r\nX: y", ""]
        {
            assert_eq!(safe_next(hostile), "/ui", "{hostile:?}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; bosun_uix=2"));
        h.append(header::COOKIE, HeaderValue::from_static("b=3; bosun_ui=abc"));
        assert_eq!(session_of(&h), Some("abc"));
    }

    #[test]
    fn sessions_expire_are_closed_and_are_bounded() {
        let s = Sessions::default();
        let now = Instant::now();
        let id = s.open(now);
        assert_eq!(id.len(), 64);
        assert!(s.valid(&id, now + Duration::from_secs(3600)));
        assert!(!s.valid(&id, now + SESSION_TTL + Duration::from_secs(1)));
        s.close(&id);
        assert!(!s.valid(&id, now));
        let first = s.open(now);
        for k in 0..MAX_SESSIONS {
            s.open(now + Duration::from_millis(k as u64 + 1));
        }
        assert!(!s.valid(&first, now), "the oldest session made room");
        assert_eq!(s.live.lock().unwrap().len(), MAX_SESSIONS);
    }
}
