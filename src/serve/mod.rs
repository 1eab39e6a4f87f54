//! `mailroom serve`: a live web dashboard of a tree.
//!
//! An axum server on the caller's tokio runtime (its own with `mailroom
//! serve`, the supervisor's with `serve:` in the config). It reads the tree
//! the way the CLI does, so it needs no supervisor and works on any host that
//! sees the tree. Without a token it writes nothing; with one, the actions of
//! [`actions`] (POST only) change the tree through the CLI's own functions.
//! Pages are HTML rendered here ([`html`]), each with a JSON twin under
//! `/api/`; a small embedded script swaps in a fresh copy of the page when
//! `/events` (server-sent events from [`live`]) says the tree changed.
//!
//! Safety: names from URLs pass `check_name` before they touch a path, files
//! are opened without following symlinks and read up to a size, every value
//! is escaped, the Content-Security-Policy allows only this server's own
//! script and style, and while it listens on loopback a request must name a
//! loopback host (so a web page cannot reach it through DNS rebinding).

pub mod actions;
pub mod agents;
pub mod conn;
pub mod graph;
pub mod html;
pub mod index;
pub mod ledger;
pub mod live;
pub mod prom;
pub mod stream;
pub mod view;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, Request, State as Ext};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use tokio::sync::watch;

use crate::parse::config::{Config, WatchMode};
use crate::tree::layout::Layout;

/// The largest request body (an action's form).
const MAX_BODY: usize = 64 * 1024;

const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Pages may load this server's own script and style, nothing inline, and
/// may not be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct App {
    layout: Layout,
    index: Arc<index::Index>,
    ledger: ledger::Ledger,
    live: Arc<live::Live>,
    /// The root as shown in the footer.
    shown_root: String,
    /// Host headers accepted; None: any (listening beyond loopback).
    hosts: Option<Vec<String>>,
    stop: watch::Receiver<bool>,
    auth: actions::Auth,
    /// One permit per open event stream (`/events`, a task's output): at
    /// most half the connections, so that streams held open cannot take
    /// every connection from pages and actions.
    streams: Arc<tokio::sync::Semaphore>,
}

type Shared = Arc<App>;

/// How the dashboard is served.
#[derive(Default)]
pub struct Options {
    /// The actions' token; None: read-only.
    pub token: Option<String>,
}

/// The token from the config's `serve:` (a file is relative to the root).
pub fn config_token(
    root: &Path,
    src: Option<&crate::parse::config::TokenSource>,
) -> Result<Option<String>, String> {
    use crate::parse::config::TokenSource;
    match src {
        None => Ok(None),
        Some(TokenSource::Inline(t)) => Ok(Some(t.clone())),
        Some(TokenSource::File(f)) => actions::read_token_file(&root.join(f)).map(Some),
    }
}

/// Binds `addr` and serves the dashboard in the background on the current
/// runtime (`serve:` inside `mailroom run`). Returns the address bound and
/// a sender that stops it; errors are the caller's to report.
pub async fn spawn(
    root: &Path,
    cfg: &crate::parse::config::Serve,
) -> Result<
    (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let token = config_token(root, cfg.token.as_ref())?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("serve.listen {}: {e}", cfg.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let root = root.to_path_buf();
    let task = tokio::spawn(async move {
        if let Err(e) = serve(listener, &root, Options { token }, async {
            let _ = rx.await;
        })
        .await
        {
            tracing::error!(error = %e, "the dashboard stopped");
        }
    });
    Ok((local, tx, task))
}

/// Serves the dashboard of the tree at `root` on `listener` until
/// `shutdown` resolves; open event streams are ended then.
pub async fn serve(
    listener: tokio::net::TcpListener,
    root: &Path,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let layout = Layout::new(root);
    let inotify = Config::load(root).map_or(true, |c| c.watch != WatchMode::Poll);
    let (stop_tx, stop) = watch::channel(false);
    let index = Arc::new(index::Index::default());
    let cap = conn::cap();
    let app = Arc::new(App {
        live: live::start(&layout, inotify, index.clone()),
        index,
        ledger: ledger::Ledger::default(),
        shown_root: std::fs::canonicalize(root)
            .unwrap_or_else(|_| PathBuf::from(root))
            .display()
            .to_string(),
        hosts: allowed_hosts(local),
        layout,
        stop,
        auth: actions::Auth::new(opts.token),
        streams: Arc::new(tokio::sync::Semaphore::new(conn::streams(cap))),
    });
    // The listings and the usage sums are read once now, in the background,
    // so that the first page shown does not pay for a big tree.
    let warm = app.clone();
    tokio::task::spawn_blocking(move || {
        warm.index.all(&warm.layout);
        warm.ledger.with(&warm.layout, |_| ());
    });
    let capped = conn::Capped::new(listener, cap, (conn::IDLE, conn::IN_FLIGHT));
    axum::serve(capped, router(app))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await
}

/// The Host headers a loopback listener answers: its own address and
/// `localhost`, with its port.
fn allowed_hosts(local: SocketAddr) -> Option<Vec<String>> {
    if !local.ip().is_loopback() {
        return None;
    }
    let p = local.port();
    Some(vec![
        format!("127.0.0.1:{p}"),
        format!("localhost:{p}"),
        format!("[::1]:{p}"),
        local.to_string(),
    ])
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/api/overview", get(overview_json))
        .route("/tasks", get(tasks_page))
        .route("/api/tasks", get(tasks_json))
        .route("/tasks/{name}", get(task_page))
        .route("/api/tasks/{name}", get(task_json))
        .route("/tasks/{name}/output", get(task_output))
        .route("/agents", get(agents_page))
        .route("/api/agents", get(agents_json))
        .route("/graph", get(graph_page))
        .route("/api/graph", get(graph_json))
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/actions/{action}", post(action))
        .route("/static/app.js", get(app_js))
        .route("/static/style.css", get(style_css))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Refuses requests for other host names (DNS rebinding) and adds the
/// security headers to every answer.
async fn guard(Ext(app): Ext<Shared>, req: Request, next: Next) -> Response {
    if let Some(hosts) = &app.hosts {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !hosts.contains(&host) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "mailroom serve answers only requests for its loopback address\n",
            )
                .into_response();
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Runs a read of the tree on the blocking pool.
async fn blocking<T: Send + 'static>(
    app: &Shared,
    f: impl FnOnce(&App) -> T + Send + 'static,
) -> Result<T, Response> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a dashboard read failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        })
}

/// A name from a URL, checked like a task file's before it meets a path.
fn checked(name: &str) -> Result<&str, String> {
    crate::parse::task::check_name(name)
        .map(|()| name)
        .map_err(|e| format!("`{name}` is not a task name: {e}"))
}

fn html_page(
    app: &App,
    h: &axum::http::HeaderMap,
    status: StatusCode,
    title: &str,
    active: &str,
    body: &str,
) -> Response {
    html_page_as(app, mode(app, h), status, title, active, body)
}

fn html_page_as(
    app: &App,
    mode: html::Mode,
    status: StatusCode,
    title: &str,
    active: &str,
    body: &str,
) -> Response {
    (
        status,
        Html(html::page(title, active, &app.shown_root, &mode, body)),
    )
        .into_response()
}

/// What the page offers this request: forms with the CSRF value to a
/// signed-in browser, a sign-in form when a token exists.
fn mode(app: &App, h: &axum::http::HeaderMap) -> html::Mode {
    match app.auth.access(h) {
        actions::Access::ReadOnly => html::Mode::ReadOnly,
        actions::Access::Locked => html::Mode::Locked,
        // A script with the token needs no CSRF value in its forms.
        actions::Access::Session | actions::Access::Bearer => {
            html::Mode::Actions(app.auth.csrf_of(h).unwrap_or_default())
        }
    }
}

/// `POST /login` with the token: a session cookie for this browser.
async fn login(
    Ext(app): Ext<Shared>,
    headers: axum::http::HeaderMap,
    form: Result<
        axum::Form<std::collections::HashMap<String, String>>,
        axum::extract::rejection::FormRejection,
    >,
) -> Response {
    let f = match form_of(form, &headers) {
        Ok(f) => f,
        Err((st, e)) => {
            return html_page_as(
                &app,
                html::Mode::ReadOnly,
                st,
                "Sign in",
                "",
                &html::error(&e),
            );
        }
    };
    if !app.auth.enabled() {
        return html_page_as(
            &app,
            html::Mode::ReadOnly,
            StatusCode::FORBIDDEN,
            "Sign in",
            "",
            &html::error("This dashboard is read-only: it has no token."),
        );
    }
    if !f.get("token").is_some_and(|t| app.auth.is_token(t)) {
        return html_page_as(
            &app,
            html::Mode::Locked,
            StatusCode::FORBIDDEN,
            "Sign in",
            "",
            &html::error("Wrong token."),
        );
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_owned()),
            (header::SET_COOKIE, app.auth.sign_in()),
        ],
    )
        .into_response()
}

async fn logout(Ext(app): Ext<Shared>, headers: axum::http::HeaderMap) -> Response {
    app.auth.sign_out(&headers);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_owned()),
            (
                header::SET_COOKIE,
                format!(
                    "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
                    actions::COOKIE
                ),
            ),
        ],
    )
        .into_response()
}

/// `POST /actions/ACTION`: a form from a page (answered with a redirect to
/// the task or the overview) or a script's request with the bearer token
/// (answered with JSON).
async fn action(
    Ext(app): Ext<Shared>,
    act: Result<UrlPath<String>, PathRejection>,
    headers: axum::http::HeaderMap,
    form: Result<axum::Form<actions::Form>, axum::extract::rejection::FormRejection>,
) -> Response {
    let act = match path_segment(act) {
        Ok(a) => a,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    // A body that is no form (no or another Content-Type, too large) is
    // answered like the other refusals, not with axum's plain text.
    let f = match form_of(form, &headers) {
        Ok(f) => f,
        Err((st, e)) => return json_error(st, e),
    };
    let access = match app.auth.check(&headers, f.csrf.as_deref()) {
        Ok(a) => a,
        Err((st, e)) => return json_error(st, e),
    };
    let res = blocking(&app, move |a| actions::perform(&a.layout, &act, &f)).await;
    let res = match res {
        Ok(r) => r,
        Err(r) => return r,
    };
    match (res, access) {
        (Ok((msg, task)), actions::Access::Bearer) => {
            Json(serde_json::json!({ "ok": true, "message": msg, "task": task })).into_response()
        }
        (Ok((_, task)), _) => {
            let to = task.map_or("/".to_owned(), |t| format!("/tasks/{}", html::url(&t)));
            (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
        }
        (Err((st, e)), actions::Access::Bearer) => json_error(st, e),
        (Err((st, e)), _) => html_page_as(
            &app,
            mode(&app, &headers),
            st,
            "Not done",
            "",
            &html::error(&e),
        ),
    }
}

/// A form, or why not, said by the route in its own format, not as axum's
/// plain text. No body at all (`curl -X POST` of a pause) is the empty
/// form, not a 415 for the Content-Type it had no reason to send; a form
/// that does not fit (a field twice, a bad value) is bad input, 400, as the
/// README lists (axum says 422).
fn form_of<T: Default>(
    form: Result<axum::Form<T>, axum::extract::rejection::FormRejection>,
    headers: &axum::http::HeaderMap,
) -> Result<T, (StatusCode, String)> {
    use axum::extract::rejection::FormRejection;
    match form {
        Ok(axum::Form(f)) => Ok(f),
        Err(FormRejection::InvalidFormContentType(_)) if no_body(headers) => Ok(T::default()),
        Err(r) => Err((
            match r.status() {
                StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                st => st,
            },
            r.body_text(),
        )),
    }
}

/// A query, or why not (a page number that is no number, a key given
/// twice): said by the route in its own format, not as axum's plain text.
fn query_of<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, String> {
    q.map(|Query(q)| q).map_err(|r| r.body_text())
}

/// A path's one segment, or why not (a percent-escape that is no UTF-8):
/// said by the route in its own format, not as axum's plain text.
fn path_segment(p: Result<UrlPath<String>, PathRejection>) -> Result<String, String> {
    p.map(|UrlPath(s)| s).map_err(|r| r.body_text())
}

/// A request that announces no body: neither a Content-Type nor a
/// Transfer-Encoding, and no or a zero Content-Length.
fn no_body(h: &axum::http::HeaderMap) -> bool {
    !h.contains_key(header::CONTENT_TYPE)
        && !h.contains_key(header::TRANSFER_ENCODING)
        && h.get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

fn json_error(status: StatusCode, msg: String) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn overview_page(h: axum::http::HeaderMap, Ext(app): Ext<Shared>) -> Response {
    match blocking(&app, |a| view::overview(&a.index, &a.ledger, &a.layout)).await {
        Ok(o) => html_page(
            &app,
            &h,
            StatusCode::OK,
            "Overview",
            "overview",
            &html::overview(&o, &mode(&app, &h)),
        ),
        Err(r) => r,
    }
}

async fn overview_json(Ext(app): Ext<Shared>) -> Response {
    match blocking(&app, |a| view::overview(&a.index, &a.ledger, &a.layout)).await {
        Ok(o) => Json(o).into_response(),
        Err(r) => r,
    }
}

async fn agents_page(h: axum::http::HeaderMap, Ext(app): Ext<Shared>) -> Response {
    match blocking(&app, |a| agents::agents(&a.index, &a.ledger, &a.layout)).await {
        Ok(x) => html_page(
            &app,
            &h,
            StatusCode::OK,
            "Agents",
            "agents",
            &html::agents(&x),
        ),
        Err(r) => r,
    }
}

async fn agents_json(Ext(app): Ext<Shared>) -> Response {
    match blocking(&app, |a| agents::agents(&a.index, &a.ledger, &a.layout)).await {
        Ok(x) => Json(x).into_response(),
        Err(r) => r,
    }
}

async fn tasks_page(
    h: axum::http::HeaderMap,
    Ext(app): Ext<Shared>,
    q: Result<Query<view::Query>, QueryRejection>,
) -> Response {
    let q = match query_of(q) {
        Ok(q) => q,
        Err(e) => {
            return html_page(
                &app,
                &h,
                StatusCode::BAD_REQUEST,
                "Tasks",
                "tasks",
                &html::error(&e),
            );
        }
    };
    match blocking(&app, move |a| view::tasks(&a.index, &a.layout, &q)).await {
        Ok(Ok(l)) => html_page(&app, &h, StatusCode::OK, "Tasks", "tasks", &html::tasks(&l)),
        Ok(Err(e)) => html_page(
            &app,
            &h,
            StatusCode::BAD_REQUEST,
            "Tasks",
            "tasks",
            &html::error(&e),
        ),
        Err(r) => r,
    }
}

async fn tasks_json(
    Ext(app): Ext<Shared>,
    q: Result<Query<view::Query>, QueryRejection>,
) -> Response {
    let q = match query_of(q) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    match blocking(&app, move |a| view::tasks(&a.index, &a.layout, &q)).await {
        Ok(Ok(l)) => Json(l).into_response(),
        Ok(Err(e)) => json_error(StatusCode::BAD_REQUEST, e),
        Err(r) => r,
    }
}

/// One task, or why not: 400 for a name that cannot be one, 404 for none.
async fn load_detail(app: &Shared, name: String) -> Result<view::Detail, (StatusCode, String)> {
    let name = checked(&name)
        .map_err(|e| (StatusCode::BAD_REQUEST, e))?
        .to_owned();
    let n = name.clone();
    match blocking(app, move |a| view::detail(&a.index, &a.layout, &n)).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err((StatusCode::NOT_FOUND, format!("no task named `{name}`"))),
        Err(_) => Err((StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())),
    }
}

async fn task_page(
    h: axum::http::HeaderMap,
    Ext(app): Ext<Shared>,
    name: Result<UrlPath<String>, PathRejection>,
) -> Response {
    let name = match path_segment(name) {
        Ok(n) => n,
        Err(e) => {
            return html_page(
                &app,
                &h,
                StatusCode::BAD_REQUEST,
                "Bad request",
                "tasks",
                &html::error(&e),
            );
        }
    };
    match load_detail(&app, name).await {
        Ok(d) => {
            let title = d.name.clone();
            html_page(
                &app,
                &h,
                StatusCode::OK,
                &title,
                "tasks",
                &html::task(&d, &mode(&app, &h)),
            )
        }
        Err((st, e)) => html_page(&app, &h, st, "Not found", "tasks", &html::error(&e)),
    }
}

async fn task_json(
    Ext(app): Ext<Shared>,
    name: Result<UrlPath<String>, PathRejection>,
) -> Response {
    let name = match path_segment(name) {
        Ok(n) => n,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    match load_detail(&app, name).await {
        Ok(d) => Json(d).into_response(),
        Err((st, e)) => json_error(st, e),
    }
}

#[derive(serde::Deserialize)]
struct GraphQuery {
    #[serde(default)]
    focus: Option<String>,
}

async fn load_graph(app: &Shared, q: GraphQuery) -> Result<graph::Graph, (StatusCode, String)> {
    let focus = match q.focus.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(f) => Some(
            checked(f)
                .map_err(|e| (StatusCode::BAD_REQUEST, e))?
                .to_owned(),
        ),
        None => None,
    };
    blocking(app, move |a| {
        graph::graph(&a.index, &a.layout, focus.as_deref())
    })
    .await
    .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()))
}

async fn graph_page(
    h: axum::http::HeaderMap,
    Ext(app): Ext<Shared>,
    q: Result<Query<GraphQuery>, QueryRejection>,
) -> Response {
    let q = match query_of(q) {
        Ok(q) => q,
        Err(e) => {
            return html_page(
                &app,
                &h,
                StatusCode::BAD_REQUEST,
                "Graph",
                "graph",
                &html::error(&e),
            );
        }
    };
    match load_graph(&app, q).await {
        Ok(g) => html_page(&app, &h, StatusCode::OK, "Graph", "graph", &html::graph(&g)),
        Err((st, e)) => html_page(&app, &h, st, "Graph", "graph", &html::error(&e)),
    }
}

async fn graph_json(
    Ext(app): Ext<Shared>,
    q: Result<Query<GraphQuery>, QueryRejection>,
) -> Response {
    let q = match query_of(q) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    match load_graph(&app, q).await {
        Ok(g) => Json(g).into_response(),
        Err((st, e)) => json_error(st, e),
    }
}

/// Server-sent events: `hello` at once (with `inotify` or `poll`), then
/// `change` (with a generation number) whenever the tree changed.
async fn events(Ext(app): Ext<Shared>) -> Response {
    let Some(permit) = stream_permit(&app) else {
        return too_many_streams();
    };
    let rx = app.live.subscribe();
    let stop = app.stop.clone();
    let hello =
        Event::default()
            .event("hello")
            .data(if app.live.inotify { "inotify" } else { "poll" });
    let stream = futures_util::stream::unfold(
        (Some(hello), rx, stop),
        |(first, mut rx, mut stop)| async move {
            if let Some(h) = first {
                return Some((Ok::<_, Infallible>(h), (None, rx, stop)));
            }
            if *stop.borrow() {
                return None;
            }
            let ev = tokio::select! {
                r = rx.recv() => match r {
                    Ok(g) => Event::default().event("change").data(g.to_string()),
                    // Missed some: one notice covers them all.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        Event::default().event("change").data("lagged")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
                _ = stop.changed() => return None,
            };
            Some((Ok(ev), (None, rx, stop)))
        },
    );
    sse_holding(stream, permit)
}

/// `events` as server-sent events, with `permit` held for as long as the
/// stream lives (it goes when the stream ends or its client goes away).
fn sse_holding(
    events: impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    use futures_util::StreamExt;
    let held = events.map(move |e| {
        let _ = &permit;
        e
    });
    Sse::new(held)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A permit for one more event stream, or None when as many are open as
/// [`conn::streams`] allows.
fn stream_permit(app: &App) -> Option<tokio::sync::OwnedSemaphorePermit> {
    app.streams.clone().try_acquire_owned().ok()
}

/// 503 with `Retry-After`: no permit for another event stream.
fn too_many_streams() -> Response {
    let mut r = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many event streams are open; try again later".to_owned(),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    r
}

/// A running task's stdout as server-sent events ([`stream`]).
async fn task_output(
    Ext(app): Ext<Shared>,
    name: Result<UrlPath<String>, PathRejection>,
) -> Response {
    let name = match path_segment(name) {
        Ok(n) => n,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let name = match checked(&name) {
        Ok(n) => n.to_owned(),
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let n = name.clone();
    match blocking(&app, move |a| a.layout.locate(&n).is_some()).await {
        Ok(true) => {}
        Ok(false) => return json_error(StatusCode::NOT_FOUND, format!("no task named `{name}`")),
        Err(r) => return r,
    }
    let Some(permit) = stream_permit(&app) else {
        return too_many_streams();
    };
    let follower = stream::Follower::new(app.layout.clone(), name);
    let stop = app.stop.clone();
    let events =
        futures_util::stream::unfold((Some(follower), stop), |(follower, mut stop)| async move {
            let mut follower = follower?;
            loop {
                if *stop.borrow() {
                    return None;
                }
                let (f, step) = tokio::task::spawn_blocking(move || {
                    let s = follower.step();
                    (follower, s)
                })
                .await
                .ok()?;
                follower = f;
                let (kind, text) = match step {
                    stream::Step::Nothing => {
                        tokio::select! {
                            _ = tokio::time::sleep(stream::POLL) => {}
                            _ = stop.changed() => return None,
                        }
                        continue;
                    }
                    stream::Step::Reset(t) => ("reset", t),
                    stream::Step::Append(t) => ("append", t),
                    stream::Step::End(why) => {
                        let ev = Event::default()
                            .event("end")
                            .data(serde_json::Value::from(why).to_string());
                        return Some((Ok::<_, Infallible>(ev), (None, stop)));
                    }
                };
                let ev = Event::default()
                    .event(kind)
                    .data(serde_json::Value::from(text).to_string());
                return Some((Ok(ev), (Some(follower), stop)));
            }
        });
    sse_holding(events, permit)
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

/// `/metrics`: the Prometheus text format, from the tree (see `prom.rs`).
async fn metrics(Ext(app): Ext<Shared>) -> Response {
    match blocking(&app, |a| prom::render(&a.index, &a.ledger, &a.layout)).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
        .into_response()
}

async fn not_found(Ext(app): Ext<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/api/") {
        return json_error(StatusCode::NOT_FOUND, format!("no such route: {path}"));
    }
    let h = req.headers().clone();
    html_page(
        &app,
        &h,
        StatusCode::NOT_FOUND,
        "Not found",
        "",
        &html::error(&format!("Nothing at {path}.")),
    )
}
