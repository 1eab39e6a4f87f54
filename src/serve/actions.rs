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

/// The token and this process's session and CSRF values.
pub struct Auth {
    token: Option<String>,
    session: String,
    pub csrf: String,
}

/// Equal, without an early exit on the first differing byte.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex() -> String {
    use std::io::Read;
    let mut b = [0u8; 24];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    assert!(ok, "/dev/urandom cannot be read");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Auth {
    pub fn new(token: Option<String>) -> Auth {
        Auth {
            token,
            session: random_hex(),
            csrf: random_hex(),
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

    pub fn session_cookie(&self) -> String {
        format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            self.session
        )
    }

    /// What the request's credentials allow.
    pub fn access(&self, h: &HeaderMap) -> Access {
        if !self.enabled() {
            return Access::ReadOnly;
        }
        if let Some(t) = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            && self.is_token(t)
        {
            return Access::Bearer;
        }
        let session = h
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|v| same(v.as_bytes(), self.session.as_bytes()));
        if session {
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
                if !csrf.is_some_and(|c| same(c.as_bytes(), self.csrf.as_bytes())) {
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
        let cookie = format!("x=1; {COOKIE}={}", a.session);
        let h = headers(&[("cookie", &cookie), ("host", "127.0.0.1:1")]);
        assert_eq!(a.access(&h), Access::Session);
        assert!(a.check(&h, None).is_err(), "no CSRF value");
        assert!(a.check(&h, Some("wrong")).is_err());
        assert_eq!(a.check(&h, Some(&a.csrf.clone())), Ok(Access::Session));
        let other = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:1"),
            ("origin", "http://evil.example"),
        ]);
        assert!(a.check(&other, Some(&a.csrf.clone())).is_err());
        let same_origin = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:1"),
            ("origin", "http://127.0.0.1:1"),
        ]);
        assert!(a.check(&same_origin, Some(&a.csrf.clone())).is_ok());
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
