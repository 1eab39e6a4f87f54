//! The dashboard's actions: add, cancel, retry, pause and resume, through
//! the same functions as the CLI (so the same tree protocol: markers, locks,
//! no-replace moves). Off unless the server has a token.
//!
//! A request is allowed when it carries the token (`Authorization: Bearer`,
//! for scripts), or the session cookie that `POST /login` with the token
//! sets, plus the page's CSRF value and, when the browser names one, an
//! `Origin` of this very server (pages are served with `Referrer-Policy:
//! same-origin`, so browsers name it for the dashboard's own forms). Tokens and session values are compared in
//! constant time. Only POST, with a small body (the router caps it).

use axum::http::{HeaderMap, StatusCode, header};

use crate::tree::layout::Layout;

/// The session cookie's name.
pub const COOKIE: &str = "mailroom_session";

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Access {
    /// The server has no token: nothing can be changed.
    ReadOnly,
    /// A token exists; this request has no valid session or token.
    Locked,
    /// A signed-in browser: forms carry the CSRF value.
    Session,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

/// The token, and the sessions signed in with it: each login gets its own
/// random session value and CSRF value, which a logout ends.
pub struct Auth {
    token: Option<String>,
    sessions: std::sync::Mutex<Sessions>,
}

/// Session value → its CSRF value, oldest first (at most [`MAX_SESSIONS`]:
/// a login past that ends the oldest session).
#[derive(Default)]
struct Sessions {
    csrf: std::collections::HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

/// How many sessions are kept at once.
const MAX_SESSIONS: usize = 256;

/// Equal, without an early exit on the first differing byte.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 24 random bytes as hex, from getrandom(2): no descriptor needed, so a
/// login works when the process is out of them.
fn random_hex() -> String {
    let mut b = [0u8; 24];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: getrandom writes at most the given length into `b[got..]`.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n > 0 {
            got += n as usize;
        } else {
            let e = std::io::Error::last_os_error();
            assert!(
                e.kind() == std::io::ErrorKind::Interrupted,
                "getrandom failed: {e}"
            );
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The values of this request's session cookies.
fn cookies(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

impl Auth {
    pub fn new(token: Option<String>) -> Auth {
        Auth {
            token,
            sessions: Default::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `t` is the token.
    pub fn is_token(&self, t: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|k| same(k.as_bytes(), t.trim().as_bytes()))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session (after the token was checked): its `Set-Cookie` value.
    pub fn sign_in(&self) -> String {
        let (id, csrf) = (random_hex(), random_hex());
        let mut s = self.sessions();
        if s.order.len() >= MAX_SESSIONS
            && let Some(old) = s.order.pop_front()
        {
            s.csrf.remove(&old);
        }
        s.order.push_back(id.clone());
        s.csrf.insert(id.clone(), csrf);
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/")
    }

    /// Ends the request's session, if it has one: its cookie is then worth
    /// nothing, wherever a copy of it went.
    pub fn sign_out(&self, h: &HeaderMap) {
        let mut s = self.sessions();
        let ended: Vec<String> = cookies(h)
            .filter(|c| s.csrf.contains_key(*c))
            .map(str::to_owned)
            .collect();
        for id in ended {
            s.csrf.remove(&id);
            s.order.retain(|o| *o != id);
        }
    }

    /// The CSRF value of the request's session, if it has a live one.
    /// (Looked up by the cookie's value; the values are random and long.)
    pub fn csrf_of(&self, h: &HeaderMap) -> Option<String> {
        let s = self.sessions();
        cookies(h).find_map(|c| s.csrf.get(c).cloned())
    }

    /// What the request's credentials allow.
    pub fn access(&self, h: &HeaderMap) -> Access {
        if !self.enabled() {
            return Access::ReadOnly;
        }
        // The scheme is case-insensitive (RFC 9110, 11.1).
        if let Some(t) = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t)
            && self.is_token(t)
        {
            return Access::Bearer;
        }
        if self.csrf_of(h).is_some() {
            Access::Session
        } else {
            Access::Locked
        }
    }

    /// Why a state-changing request is refused, if it is: no token, no
    /// credentials, a missing or wrong CSRF value, or another origin.
    pub fn check(&self, h: &HeaderMap, csrf: Option<&str>) -> Result<Access, (StatusCode, String)> {
        let denied = |m: &str| Err((StatusCode::FORBIDDEN, m.to_owned()));
        match self.access(h) {
            Access::ReadOnly => denied(
                "this dashboard is read-only: start it with a token (`serve.token`, `serve.token_file` or --token-file) to enable actions",
            ),
            Access::Locked => denied("sign in with the dashboard's token first"),
            Access::Bearer => Ok(Access::Bearer),
            Access::Session => {
                let want = self.csrf_of(h).unwrap_or_default();
                if !csrf.is_some_and(|c| !want.is_empty() && same(c.as_bytes(), want.as_bytes())) {
                    return denied("the form's CSRF value is missing or stale: reload the page");
                }
                let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
                // "null" is what a browser sends when it withholds the
                // origin; the CSRF value and the SameSite cookie still hold.
                if let Some(origin) = h
                    .get(header::ORIGIN)
                    .and_then(|v| v.to_str().ok())
                    .filter(|o| *o != "null")
                    && host.is_none_or(|host| {
                        origin
                            .strip_prefix("http://")
                            .or_else(|| origin.strip_prefix("https://"))
                            != Some(host)
                    })
                {
                    return denied("a request from another origin");
                }
                Ok(Access::Session)
            }
        }
    }
}

/// A form or JSON body of an action.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Form {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub csrf: Option<String>,
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Does `action` (blocking I/O); returns what happened, for people, and
/// the task it concerns, if any.
pub fn perform(
    layout: &Layout,
    action: &str,
    f: &Form,
) -> Result<(String, Option<String>), (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let conflict = |e: anyhow::Error| (StatusCode::CONFLICT, format!("{e:#}"));
    let name = || nonempty(&f.name).ok_or_else(|| bad("give the task's `name`".into()));
    match action {
        "cancel" => {
            let n = name()?;
            let what = match crate::cli::control::cancel_task(layout, n).map_err(conflict)? {
                crate::cli::control::Cancelled::Filed(t) => {
                    format!("{t}: cancelled (it had not started)")
                }
                crate::cli::control::Cancelled::Requested => {
                    format!("{n}: cancel requested; its supervisor stops the agent")
                }
            };
            Ok((what, Some(n.to_owned())))
        }
        "retry" => {
            let n = name()?;
            // Alone, a task whose dependency failed would fail again at once.
            let deps = crate::cli::failed_deps(layout, n);
            if !deps.is_empty() {
                let missing: Vec<&str> = deps.iter().map(String::as_str).collect();
                return Err(conflict(crate::cli::retried_alone(n, &missing)));
            }
            crate::cli::retry_task(layout, n).map_err(conflict)?;
            Ok((
                format!("{n}: moved back to pending with fresh attempts"),
                Some(n.to_owned()),
            ))
        }
        "pause" | "resume" => {
            let agent = nonempty(&f.agent);
            if let Some(a) = agent {
                crate::parse::task::check_name(a).map_err(|e| bad(format!("agent `{a}`: {e}")))?;
                // A pause of an agent the config does not have would hold
                // nothing and say it did (a resume clears any marker).
                if action == "pause"
                    && let Ok(c) = crate::parse::config::Config::load(&layout.root)
                    && !c.agents.contains_key(a)
                {
                    return Err(bad(format!("no agent `{a}` in mailroom.yaml")));
                }
            }
            crate::cli::control::set_pause(layout, agent, action == "pause").map_err(conflict)?;
            let what = agent.map_or("claiming".to_owned(), |a| format!("agent {a}"));
            Ok((format!("{action}d {what}"), None))
        }
        "add" => {
            let d = nonempty(&f.description).ok_or_else(|| bad("give a `description`".into()))?;
            let name = crate::cli::add(
                &layout.root,
                crate::cli::AddArgs {
                    description: Some(d),
                    agent: nonempty(&f.agent),
                    priority: nonempty(&f.priority),
                    name: nonempty(&f.name),
                    file: None,
                    after: &[],
                    timeout: None,
                    more: crate::cli::AddMore::default(),
                },
            )
            .map_err(|e| bad(format!("{e:#}")))?;
            Ok((format!("{name}: added to pending"), Some(name)))
        }
        other => Err((StatusCode::NOT_FOUND, format!("no action `{other}`"))),
    }
}

/// Reads the token from a file: its first line, at least 16 characters.
pub fn read_token_file(p: &std::path::Path) -> Result<String, String> {
    let (b, _) = crate::tree::fsx::read_head(p, 4096)
        .map_err(|e| format!("token file {}: {e}", p.display()))?;
    let t = String::from_utf8_lossy(&b)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    if t.len() < 16 {
        return Err(format!(
            "token file {}: the token must be at least 16 characters (a random string)",
            p.display()
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn credentials_and_csrf_decide_access() {
        let none = Auth::new(None);
        assert_eq!(none.access(&headers(&[])), Access::ReadOnly);
        let a = Auth::new(Some("0123456789abcdef".into()));
        assert_eq!(a.access(&headers(&[])), Access::Locked);
        assert_eq!(
            a.access(&headers(&[("authorization", "Bearer 0123456789abcdef")])),
            Access::Bearer
        );
        assert_eq!(
            a.access(&headers(&[("authorization", "Bearer 0123456789abcdeX")])),
            Access::Locked
        );
        assert_eq!(
            a.access(&headers(&[("authorization", "bearer 0123456789abcdef")])),
            Access::Bearer,
            "the scheme is case-insensitive"
        );
        let set = a.sign_in();
        let value = set.split(';').next().unwrap();
        let cookie = format!("x=1; {value}");
        let h = headers(&[("cookie", &cookie), ("host", "127.0.0.1:1")]);
        assert_eq!(a.access(&h), Access::Session);
        let csrf = a.csrf_of(&h).unwrap();
        assert!(a.check(&h, None).is_err(), "no CSRF value");
        assert!(a.check(&h, Some("wrong")).is_err());
        assert_eq!(a.check(&h, Some(&csrf)), Ok(Access::Session));
        // Another login: another session and CSRF value; neither's CSRF
        // value serves the other.
        let set2 = a.sign_in();
        assert_ne!(set, set2);
        let h2 = headers(&[
            ("cookie", set2.split(';').next().unwrap()),
            ("host", "127.0.0.1:1"),
        ]);
        let csrf2 = a.csrf_of(&h2).unwrap();
        assert_ne!(csrf, csrf2);
        assert!(a.check(&h2, Some(&csrf)).is_err());
        let other = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:1"),
            ("origin", "http://evil.example"),
        ]);
        assert!(a.check(&other, Some(&csrf)).is_err());
        let same_origin = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:1"),
            ("origin", "http://127.0.0.1:1"),
        ]);
        assert!(a.check(&same_origin, Some(&csrf)).is_ok());
        // A logout ends the session: its cookie is worth nothing after.
        a.sign_out(&h);
        assert_eq!(a.access(&h), Access::Locked);
        assert!(a.check(&h, Some(&csrf)).is_err());
        assert_eq!(a.access(&h2), Access::Session);
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
