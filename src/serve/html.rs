//! The dashboard's HTML: one page shell and a body per page, written by hand.
//!
//! Every value from the tree (names, descriptions, errors, outputs) goes
//! through [`esc`] (or [`markdown`], which escapes raw HTML and drops unsafe
//! link targets); names in links go through [`url`]. Pages carry no inline
//! script or style, so the Content-Security-Policy can forbid both.

use std::fmt::Write as _;

use crate::model::record::{Attempt, parse_ts};
use crate::tree::layout::State;

use super::agents::Agents;
use super::graph::{EdgeKind, Graph, NODE_H, NODE_W};
use super::view::{Detail, Link, Overview, Row, TaskList, Text};

/// Text made safe for HTML text and quoted attributes. Control characters
/// other than newline and tab are shown as escapes (`\u{1b}`), as `mailroom
/// show` does for a terminal.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// A path segment or query value, percent-encoded (everything but RFC 3986's
/// unreserved characters).
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A link target from Markdown, kept only when it cannot run script:
/// http(s), mailto, fragments and relative paths.
fn safe_href(u: &str) -> bool {
    let t = u.trim().to_ascii_lowercase();
    if t.starts_with("http://")
        || t.starts_with("https://")
        || t.starts_with("mailto:")
        || t.starts_with('#')
    {
        return true;
    }
    // Relative: no scheme before the first '/', '?' or '#'.
    let head = t.split(['/', '?', '#']).next().unwrap_or("");
    !head.contains(':') && !t.chars().any(char::is_control)
}

/// Markdown rendered as HTML with raw HTML shown as text, images shown as
/// their alt text, and links only to safe targets.
pub fn markdown(src: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    let src: String = src
        .chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\n' | '\t' | '\r') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    let opts = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let events = Parser::new_ext(&src, opts).map(|ev| match ev {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: if safe_href(&dest_url) {
                dest_url
            } else {
                "#".into()
            },
            title,
            id,
        }),
        Event::Start(Tag::Image { .. }) => Event::Text("[image: ".into()),
        Event::End(TagEnd::Image) => Event::Text("]".into()),
        e => e,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// "3m 12s", "2h 5m", "4d 3h".
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// How people see a state: `assigned/` holds running tasks.
pub fn state_label(s: Option<State>) -> &'static str {
    match s {
        Some(State::Pending) => "pending",
        Some(State::Assigned) => "running",
        Some(State::Completed) => "completed",
        Some(State::Failed) => "failed",
        None => "not submitted",
    }
}

fn state_class(s: Option<State>) -> &'static str {
    match s {
        Some(State::Pending) => "st-pending",
        Some(State::Assigned) => "st-running",
        Some(State::Completed) => "st-completed",
        Some(State::Failed) => "st-failed",
        None => "st-missing",
    }
}

fn badge(s: Option<State>) -> String {
    format!(
        r#"<span class="badge {}">{}</span>"#,
        state_class(s),
        state_label(s)
    )
}

fn task_link(name: &str) -> String {
    format!(r#"<a href="/tasks/{}">{}</a>"#, url(name), esc(name))
}

fn link_with_state(l: &Link) -> String {
    format!("{} {}", task_link(&l.name), badge(l.state))
}

fn opt(s: Option<&str>) -> String {
    s.map(esc).unwrap_or_else(|| "–".into())
}

/// What a page offers: nothing to change (no token), a sign-in form (a
/// token exists), or action forms carrying this CSRF value.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    ReadOnly,
    Locked,
    Actions(String),
}

/// A POST form of one button (and hidden fields) to `/actions/ACTION`.
fn action_form(
    csrf: &str,
    action: &str,
    fields: &[(&str, &str)],
    label: &str,
    class: &str,
) -> String {
    let mut s = format!(
        r#"<form class="action" method="post" action="/actions/{action}"><input type="hidden" name="csrf" value="{}">"#,
        esc(csrf)
    );
    for (k, v) in fields {
        let _ = write!(s, r#"<input type="hidden" name="{k}" value="{}">"#, esc(v));
    }
    let _ = write!(
        s,
        r#"<button type="submit" class="{class}" id="do-{action}">{label}</button></form>"#
    );
    s
}

fn footer(root: &str, mode: &Mode) -> String {
    match mode {
        Mode::ReadOnly => format!("read-only view of <code>{}</code>", esc(root)),
        Mode::Locked => format!(
            r#"<code>{}</code> · <form class="login" method="post" action="/login"><input type="password" name="token" placeholder="token" autocomplete="current-password"><button type="submit" id="sign-in">Sign in for actions</button></form>"#,
            esc(root)
        ),
        Mode::Actions(_) => format!(
            r#"<code>{}</code> · actions enabled · <form class="login" method="post" action="/logout"><button type="submit">Sign out</button></form>"#,
            esc(root)
        ),
    }
}

/// The shell around every page: header, navigation, live indicator.
pub fn page(title: &str, active: &str, root: &str, mode: &Mode, body: &str) -> String {
    let nav = [
        ("overview", "/", "Overview"),
        ("tasks", "/tasks", "Tasks"),
        ("graph", "/graph", "Graph"),
        ("agents", "/agents", "Agents"),
    ]
    .iter()
    .map(|(id, href, label)| {
        let cls = if *id == active {
            r#" class="active""#
        } else {
            ""
        };
        format!(r#"<a href="{href}"{cls}>{label}</a>"#)
    })
    .collect::<String>();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · mailroom</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header><a class="brand" href="/">mailroom</a><nav>{nav}</nav><span id="live" class="live off" title="live updates">connecting…</span></header>
<main data-page="{active}">
{body}
</main>
<footer>{footer}</footer>
</body>
</html>
"#,
        title = esc(title),
        footer = footer(root, mode),
    )
}

fn rows_table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return r#"<p class="empty">No tasks.</p>"#.into();
    }
    let mut s = String::from(
        "<table class=\"tasks\"><thead><tr><th>Task</th><th>State</th><th>Agent</th><th>Priority</th>\
         <th>Age</th><th>Attempts</th><th>Outcome</th><th>Tokens in / out</th><th>Cost</th><th>Session</th></tr></thead><tbody>",
    );
    for r in rows {
        let outcome = match (&r.outcome, &r.error, &r.waiting) {
            (Some(o), Some(e), _) => format!(r#"<span title="{}">{}</span>"#, esc(e), esc(o)),
            (Some(o), None, _) => esc(o),
            (None, e, Some(w)) => format!(
                r#"<span class="muted waiting" title="{}">{}</span>"#,
                esc(e.as_deref().map_or("", |e| e)),
                esc(w)
            ),
            (None, Some(e), None) => format!(
                r#"<span class="muted" title="{}">last error</span>"#,
                esc(e)
            ),
            (None, None, None) => "–".into(),
        };
        let (tin, tout, cost) = match &r.usage {
            Some(u) => (
                tokens(u.input_tokens),
                tokens(u.output_tokens),
                u.cost_usd.map(usd).unwrap_or_else(|| "–".into()),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let session = match &r.session_id {
            Some(id) => format!(
                r#"<code title="{}">{}</code>"#,
                esc(id),
                esc(&id.chars().take(8).collect::<String>())
            ),
            None => "–".into(),
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{tin} / {tout}</td><td>{cost}</td><td>{session}</td></tr>",
            task_link(&r.name),
            badge(Some(r.state)),
            opt(r.agent.as_deref()),
            opt(r.priority.as_deref()),
            esc(&r.submitted_at),
            duration(r.age_secs),
            r.attempts,
            outcome
        );
    }
    s.push_str("</tbody></table>");
    s
}

/// The overview page's body.
pub fn overview(o: &Overview, mode: &Mode) -> String {
    let mut s = String::new();
    if let Mode::Actions(csrf) = mode {
        let _ = write!(
            s,
            r#"<section class="actions"><form class="add" method="post" action="/actions/add"><input type="hidden" name="csrf" value="{c}"><input name="description" placeholder="new task: describe it" size="50" required><input name="agent" placeholder="agent (optional)" size="12"><select name="priority"><option value="">normal</option><option>high</option><option>low</option></select><button type="submit" id="do-add">Add</button></form>{pause}</section>"#,
            c = esc(csrf),
            pause = if o.paused {
                action_form(csrf, "resume", &[], "Resume claiming", "")
            } else {
                action_form(csrf, "pause", &[], "Pause claiming", "")
            }
        );
    }
    if let Some(e) = &o.config_error {
        let _ = write!(
            s,
            r#"<p class="banner warn">mailroom.yaml cannot be used: {} (running supervisors keep their configuration)</p>"#,
            esc(e)
        );
    }
    for e in &o.tree_errors {
        let _ = write!(
            s,
            r#"<p class="banner warn tree-error">{} (its tasks are not counted)</p>"#,
            esc(e)
        );
    }
    if o.paused {
        s.push_str(r#"<p class="banner warn" id="paused">Paused: no new tasks are claimed (<code>mailroom resume</code> to go on).</p>"#);
    }
    s.push_str(r#"<section class="counts">"#);
    for (st, n) in [
        (State::Pending, o.counts.pending),
        (State::Assigned, o.counts.assigned),
        (State::Completed, o.counts.completed),
        (State::Failed, o.counts.failed),
    ] {
        let _ = write!(
            s,
            r#"<a class="count {cls}" id="count-{id}" href="/tasks?state={id}"><span class="n">{n}</span><span class="l">{label}</span></a>"#,
            cls = state_class(Some(st)),
            id = st.dir_name(),
            label = state_label(Some(st)),
        );
    }
    s.push_str("</section>");
    match &o.oldest_pending {
        Some(p) => {
            let _ = write!(
                s,
                r#"<p id="oldest">Longest waiting: {} for {} <span class="muted">(since {}; submitted {})</span></p>"#,
                task_link(&p.name),
                duration(p.age_secs),
                esc(&p.waiting_since),
                esc(&p.submitted_at)
            );
        }
        None if o.counts.pending > 0 => s.push_str(
            r#"<p id="oldest" class="muted">None of the oldest pending tasks waits for a slot: they are held by their own delay, <code>not_before</code> or a retry backoff.</p>"#,
        ),
        None => s.push_str(r#"<p id="oldest" class="muted">Nothing pending.</p>"#),
    }
    s.push_str(&today(o));
    s.push_str(&supervisors(o));
    s.push_str(r#"<div class="grid"><section><h2>Agents</h2>"#);
    if o.agents.is_empty() {
        s.push_str(r#"<p class="empty">No agents configured.</p>"#);
    } else {
        s.push_str("<table id=\"agents\"><thead><tr><th>Agent</th><th>Running</th><th>Status</th></tr></thead><tbody>");
        for a in &o.agents {
            let status = match (&a.cooldown_until, a.paused) {
                (Some(u), _) => format!(
                    r#"<span class="badge st-failed">cooling down</span> until {}"#,
                    esc(u)
                ),
                (None, true) => r#"<span class="badge st-pending">paused</span>"#.to_string(),
                (None, false) => r#"<span class="badge st-completed">ready</span>"#.to_string(),
            };
            let max = a.max.map(|m| m.to_string()).unwrap_or_else(|| "?".into());
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{} / {}</td><td>{}</td></tr>",
                esc(&a.name),
                a.running,
                max,
                status
            );
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("</section><section><h2>Cooldowns</h2>");
    if o.cooldowns.is_empty() {
        s.push_str(r#"<p class="empty">No agent is cooling down.</p>"#);
    } else {
        s.push_str("<table id=\"cooldowns\"><thead><tr><th>Agent</th><th>Until</th><th>Reason</th><th>Task</th></tr></thead><tbody>");
        for c in &o.cooldowns {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.agent),
                esc(&c.until),
                esc(&c.message),
                task_link(&c.task)
            );
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("<h2>Pauses</h2>");
    if !o.paused && o.paused_agents.is_empty() {
        s.push_str(r#"<p class="empty">Nothing is paused.</p>"#);
    } else {
        s.push_str("<ul id=\"pauses\">");
        if o.paused {
            s.push_str("<li>everything (<code>tasks/control/pause</code>)</li>");
        }
        for a in &o.paused_agents {
            let _ = write!(s, "<li>agent {}</li>", esc(a));
        }
        s.push_str("</ul>");
    }
    s.push_str("</section></div><section><h2>Running</h2>");
    if o.running.is_empty() {
        s.push_str(r#"<p class="empty">Nothing is running.</p>"#);
    } else {
        s.push_str("<table id=\"running\"><thead><tr><th>Task</th><th>Agent</th><th>Attempt</th><th>Started</th><th>Host</th></tr></thead><tbody>");
        for r in &o.running {
            let mut started = opt(r.started_at.as_deref());
            if let Some(e) = &r.commit_error {
                let _ = write!(
                    started,
                    r#" <span class="badge st-failed" title="{}">commit retrying</span>"#,
                    esc(e)
                );
            }
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                task_link(&r.name),
                opt(r.agent.as_deref()),
                r.attempt
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "–".into()),
                started,
                opt(r.host.as_deref())
            );
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("</section><section><h2>Recently finished</h2>");
    s.push_str(&rows_table(&o.recent));
    s.push_str("</section>");
    s
}

/// Dollars: cents for sums of a dollar or more, four places below; a
/// billion or more (a CLI's bogus figure) in scientific notation, not as
/// hundreds of digits.
pub fn usd(c: f64) -> String {
    if c.abs() >= 1e9 {
        format!("${c:.3e}")
    } else if c >= 1.0 {
        format!("${c:.2}")
    } else {
        format!("${c:.4}")
    }
}

/// A token count: 1234567 -> "1.2M".
pub fn tokens(n: Option<u64>) -> String {
    match n {
        None => "–".into(),
        Some(n) if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        Some(n) if n >= 10_000 => format!("{}k", n / 1000),
        Some(n) => n.to_string(),
    }
}

fn today(o: &Overview) -> String {
    let t = &o.today;
    let cost = t.sums.usage.cost_usd.map(usd).unwrap_or_else(|| "–".into());
    format!(
        r#"<p id="today">Today ({day} UTC): <b>{n}</b> task(s) finished, cost <b id="today-cost">{cost}</b>, tokens in {i} / out {out}{rep}</p>"#,
        day = esc(&t.day),
        n = t.sums.tasks,
        i = tokens(t.sums.usage.input_tokens),
        out = tokens(t.sums.usage.output_tokens),
        rep = if t.sums.tasks > t.sums.reported {
            format!(
                r#" <span class="muted">({} reported no usage)</span>"#,
                t.sums.tasks - t.sums.reported
            )
        } else {
            String::new()
        }
    )
}

fn supervisors(o: &Overview) -> String {
    let mut s = String::from("<section><h2>Supervisors</h2>");
    if o.supervisors.is_empty() {
        s.push_str(r#"<p class="empty" id="no-supervisors">No supervisor has announced itself on this tree (<code>tasks/supervisors/</code>).</p></section>"#);
        return s;
    }
    s.push_str("<table id=\"supervisors\"><thead><tr><th>Host</th><th>Pid</th><th>Version</th><th>Started</th><th>Last heartbeat</th><th>Running</th><th>State</th></tr></thead><tbody>");
    for x in &o.supervisors {
        let h = &x.hb;
        let state = if x.alive {
            r#"<span class="badge st-completed">alive</span>"#
        } else {
            r#"<span class="badge st-failed">gone</span>"#
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{} <span class=\"muted\">(protocol {})</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&h.host),
            h.pid,
            esc(&h.version),
            h.protocol,
            esc(&h.started_at),
            esc(&h.last_beat),
            h.running,
            state
        );
    }
    s.push_str("</tbody></table></section>");
    s
}

/// Bars of cost per day (tasks when no cost was reported), with a title per day.
fn day_bars(days: &[super::agents::Day]) -> String {
    const W: u32 = 10;
    const H: u32 = 28;
    let by_cost = days.iter().any(|d| d.cost_usd > 0.0);
    let value = |d: &super::agents::Day| if by_cost { d.cost_usd } else { d.tasks as f64 };
    let max = days.iter().map(value).fold(0.0_f64, f64::max);
    let mut s = format!(
        r#"<svg class="bars" width="{w}" height="{H}" viewBox="0 0 {w} {H}">"#,
        w = W * days.len() as u32
    );
    for (i, d) in days.iter().enumerate() {
        let h = if max > 0.0 {
            ((value(d) / max) * (H - 2) as f64).round() as u32
        } else {
            0
        }
        .max(1);
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{y}" width="{bw}" height="{h}"><title>{day}: {n} task(s), {c}</title></rect>"#,
            x = i as u32 * W,
            y = H - h,
            bw = W - 2,
            day = esc(&d.day),
            n = d.tasks,
            c = usd(d.cost_usd)
        );
    }
    s.push_str("</svg>");
    s
}

/// The agents page's body.
pub fn agents(a: &Agents) -> String {
    let mut s = String::from("<h1>Agents</h1>");
    if a.agents.is_empty() {
        s.push_str(r#"<p class="empty">No agents configured and none has finished a task.</p>"#);
        return s;
    }
    let _ = write!(
        s,
        r#"<p class="muted">From <code>context/completed_tasks.jsonl</code>: each finished task counts once, for the agent that ran it last. Per day: {} to {} (UTC); cost when the CLIs reported one, else tasks.</p>"#,
        esc(a.days.first().map(String::as_str).unwrap_or("")),
        esc(a.days.last().map(String::as_str).unwrap_or(""))
    );
    s.push_str("<table id=\"agent-stats\"><thead><tr><th>Agent</th><th>Running</th><th>Finished</th><th>Succeeded</th><th>Success rate</th><th>Median duration</th><th>Tokens in / out</th><th>Cost</th><th>Per day</th></tr></thead><tbody>");
    for x in &a.agents {
        let rate = x
            .success_rate
            .map(|r| format!("{:.0}%", r * 100.0))
            .unwrap_or_else(|| "–".into());
        let med = x
            .median_duration_ms
            .map(|m| {
                if m < 1000 {
                    format!("{m} ms")
                } else {
                    duration(m / 1000)
                }
            })
            .unwrap_or_else(|| "–".into());
        let max = x.max.map(|m| m.to_string()).unwrap_or_else(|| "?".into());
        let _ = write!(
            s,
            r#"<tr id="agent-{id}"><td>{name}{unconf}</td><td>{run} / {max}</td><td>{fin}</td><td>{ok}</td><td>{rate}</td><td>{med}</td><td>{ti} / {to}</td><td>{cost}</td><td>{bars}</td></tr>"#,
            id = url(&x.name),
            name = esc(&x.name),
            unconf = if x.configured {
                ""
            } else {
                r#" <span class="muted">(not configured)</span>"#
            },
            run = x.running,
            fin = x.finished,
            ok = x.completed,
            ti = tokens(x.usage.input_tokens),
            to = tokens(x.usage.output_tokens),
            cost = x.usage.cost_usd.map(usd).unwrap_or_else(|| "–".into()),
            bars = day_bars(&x.days),
        );
    }
    s.push_str("</tbody></table>");
    s
}

fn query_string(l: &TaskList, page: usize) -> String {
    let mut q = vec![format!("page={page}")];
    if let Some(s) = l.state {
        q.push(format!("state={}", s.dir_name()));
    }
    if let Some(a) = &l.agent {
        q.push(format!("agent={}", url(a)));
    }
    if let Some(n) = &l.q {
        q.push(format!("q={}", url(n)));
    }
    if let Some(n) = &l.label {
        q.push(format!("label={}", url(n)));
    }
    if l.per_page != 50 {
        q.push(format!("per_page={}", l.per_page));
    }
    q.join("&amp;")
}

/// The task list's body.
pub fn tasks(l: &TaskList) -> String {
    let mut s = String::from(
        r#"<h1>Tasks</h1><form class="filters" method="get" action="/tasks"><label>State <select name="state"><option value="">all</option>"#,
    );
    for st in State::ALL {
        let sel = if l.state == Some(st) { " selected" } else { "" };
        let n = match st {
            State::Pending => l.counts.pending,
            State::Assigned => l.counts.assigned,
            State::Completed => l.counts.completed,
            State::Failed => l.counts.failed,
        };
        let _ = write!(
            s,
            r#"<option value="{}"{sel}>{} ({n})</option>"#,
            st.dir_name(),
            state_label(Some(st))
        );
    }
    let _ = write!(
        s,
        r#"</select></label><label>Agent <input name="agent" value="{}" size="10"></label><label>Label <input name="label" value="{}" size="10"></label><label>Search <input name="q" type="search" value="{}" placeholder="name or description"></label><button type="submit">Filter</button></form>"#,
        esc(l.agent.as_deref().unwrap_or("")),
        esc(l.label.as_deref().unwrap_or("")),
        esc(l.q.as_deref().unwrap_or(""))
    );
    // Saturating: the page number is the query's, and may be anything.
    let first = l
        .page
        .saturating_sub(1)
        .saturating_mul(l.per_page)
        .saturating_add(1);
    let last = first.saturating_add(l.rows.len().saturating_sub(1));
    let of = l.total.map(|t| format!(" of {t}")).unwrap_or_default();
    if l.rows.is_empty() {
        s.push_str(r#"<p class="empty">No task matches.</p>"#);
    } else {
        let _ = write!(
            s,
            r#"<p class="muted" id="range">{first}–{last}{of}, newest first</p>"#
        );
        s.push_str(&rows_table(&l.rows));
    }
    s.push_str(r#"<nav class="pager">"#);
    if l.page > 1 {
        let _ = write!(
            s,
            r#"<a href="/tasks?{}" rel="prev">← newer</a>"#,
            query_string(l, l.page.saturating_sub(1))
        );
    }
    let _ = write!(s, r#"<span>page {}</span>"#, l.page);
    if l.has_more {
        let _ = write!(
            s,
            r#"<a href="/tasks?{}" rel="next">older →</a>"#,
            query_string(l, l.page.saturating_add(1))
        );
    }
    s.push_str("</nav>");
    s
}

fn text_block(id: &str, t: &Text, tail: bool) -> String {
    let note = match (t.truncated, tail) {
        (true, true) => r#"<p class="muted">(the end only)</p>"#,
        (true, false) => r#"<p class="muted">(the beginning only)</p>"#,
        _ => "",
    };
    format!(
        r#"{note}<pre class="text" id="{id}">{}</pre>"#,
        esc(&t.text)
    )
}

fn attempt_row(a: &Attempt) -> String {
    let took = match (parse_ts(&a.started_at), parse_ts(&a.finished_at)) {
        (Some(s), Some(f)) => f
            .duration_since(s)
            .map(|d| duration(d.as_secs()))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let end = match (a.exit_code, a.signal) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "–".into(),
    };
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
        a.attempt,
        esc(&a.agent),
        esc(a.outcome.as_str()),
        end,
        esc(&a.started_at),
        took,
        opt(a.error.as_deref())
    )
}

/// The task page's body.
pub fn task(d: &Detail, mode: &Mode) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<h1 class="task-name">{} {}</h1>"#,
        esc(&d.name),
        badge(Some(d.state))
    );
    if let Mode::Actions(csrf) = mode {
        let name = [("name", d.name.as_str())];
        match d.state {
            State::Pending | State::Assigned => {
                s.push_str(&action_form(csrf, "cancel", &name, "Cancel", "danger"));
            }
            State::Failed => s.push_str(&action_form(csrf, "retry", &name, "Retry", "")),
            State::Completed => {}
        }
    }
    if let Some(w) = &d.waiting {
        let _ = write!(s, r#"<p class="banner" id="waiting">{}</p>"#, esc(w));
    }
    if let Some(e) = &d.parse_error {
        let _ = write!(
            s,
            r#"<p class="banner warn">The task file cannot be used: {}</p>"#,
            esc(e)
        );
    }
    s.push_str("<dl class=\"meta\">");
    let mut dt = |k: &str, v: String| {
        let _ = write!(s, "<dt>{k}</dt><dd>{v}</dd>");
    };
    dt("File", format!("<code>{}</code>", esc(&d.file)));
    dt("Submitted", opt(d.submitted_at.as_deref()));
    let agent = match (&d.agent, &d.agent_reason) {
        (Some(a), Some(r)) => format!("{} <span class=\"muted\">({})</span>", esc(a), esc(r)),
        (Some(a), None) => esc(a),
        _ => "–".into(),
    };
    dt("Agent", agent);
    dt("Priority", opt(d.priority.as_deref()));
    if !d.labels.is_empty() {
        dt("Labels", esc(&d.labels.join(", ")));
    }
    if let Some(r) = &d.record {
        let mut v = format!(
            "{} after {} attempt(s)",
            esc(r.outcome.as_str()),
            r.attempts
        );
        if let Some(e) = &r.error {
            let _ = write!(v, r#"<div class="err">{}</div>"#, esc(e));
        }
        dt("Outcome", v);
    } else if let Some(e) = &d.record_error {
        dt(
            "Outcome",
            format!(r#"unknown: <div class="err">{}</div>"#, esc(e)),
        );
    }
    if let Some(r) = &d.run {
        let holder = match d.run_holder {
            Some(h) if h.supervisor_alive => " (alive)".to_owned(),
            Some(h) => match h.adopted_by {
                Some(pid) => format!(" (gone; adopted by pid {pid})"),
                None => " (gone)".to_owned(),
            },
            None => String::new(),
        };
        dt(
            "Running",
            format!(
                "attempt {} on {} since {} (deadline {}, host {}, supervisor pid {}{holder})",
                r.attempt,
                esc(&r.agent),
                esc(&r.started_at),
                esc(&r.deadline),
                esc(&r.host),
                r.supervisor_pid
            ),
        );
    }
    dt(
        "Parent",
        d.parent
            .as_ref()
            .map(link_with_state)
            .unwrap_or_else(|| "–".into()),
    );
    if !d.children.is_empty() {
        dt(
            "Children",
            d.children
                .iter()
                .map(link_with_state)
                .collect::<Vec<_>>()
                .join("<br>"),
        );
    }
    if !d.needed_by.is_empty() {
        dt(
            "Needed by",
            d.needed_by
                .iter()
                .map(link_with_state)
                .collect::<Vec<_>>()
                .join("<br>"),
        );
    }
    if !d.after.is_empty() {
        dt(
            "After",
            d.after
                .iter()
                .map(link_with_state)
                .collect::<Vec<_>>()
                .join("<br>"),
        );
    }
    dt(
        "Graph",
        format!(
            r#"<a href="/graph?focus={}">this task's tree</a>"#,
            url(&d.name)
        ),
    );
    s.push_str("</dl>");
    s.push_str("<h2>Description</h2>");
    match &d.description {
        Some(desc) => {
            let _ = write!(
                s,
                r#"<pre class="text" id="description">{}</pre>"#,
                esc(desc)
            );
        }
        None => {
            let _ = write!(
                s,
                r#"<pre class="text" id="source">{}</pre>"#,
                esc(&d.source)
            );
        }
    }
    if !d.attempts.is_empty() {
        s.push_str("<h2>Attempts</h2><table id=\"attempts\"><thead><tr><th>#</th><th>Agent</th><th>Outcome</th><th>Exit</th><th>Started</th><th>Took</th><th>Error</th></tr></thead><tbody>");
        for a in &d.attempts {
            s.push_str(&attempt_row(a));
        }
        s.push_str("</tbody></table>");
    }
    if !d.rounds.is_empty() {
        s.push_str("<h2>Earlier rounds</h2><ol id=\"rounds\">");
        for r in &d.rounds {
            let _ = write!(
                s,
                "<li>{} ({}) at {}, {} attempt(s){}</li>",
                if r.status == crate::model::record::Status::Completed {
                    "completed"
                } else {
                    "failed"
                },
                esc(r.outcome.as_str()),
                esc(&r.finished_at),
                r.attempts,
                r.error
                    .as_deref()
                    .map(|e| format!(": {}", esc(e)))
                    .unwrap_or_default()
            );
        }
        s.push_str("</ol>");
    }
    if let Some(o) = &d.output {
        let note = if o.truncated {
            r#"<p class="muted">(the beginning only)</p>"#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<h2>Output</h2>{note}<div class="md" id="output">{}</div><details><summary>as text</summary><pre class="text">{}</pre></details>"#,
            markdown(&o.text),
            esc(&o.text)
        );
    }
    if !d.files_modified.is_empty() {
        s.push_str("<h2>Files modified</h2><ul id=\"files\">");
        for f in &d.files_modified {
            let _ = write!(s, "<li><code>{}</code></li>", esc(f));
        }
        s.push_str("</ul>");
    }
    if let Some(d) = &d.diff {
        s.push_str("<h2>Diff against its base</h2>");
        if d.text.is_empty() {
            s.push_str(r#"<p class="empty" id="diff">No changes.</p>"#);
        } else {
            s.push_str(&text_block("diff", d, false));
        }
    } else if let Some(e) = &d.diff_error {
        let _ = write!(
            s,
            r#"<h2>Diff against its base</h2><p class="muted" id="diff-error">{}</p>"#,
            esc(e)
        );
    }
    match (&d.live_output, &d.stdout_tail) {
        (Some(src), tail) => {
            // Filled by app.js from the stream; the tail is the start.
            let _ = write!(
                s,
                r#"<h2>stdout <span class="badge st-running">live</span></h2><pre class="text" id="live-output" data-stream="{}">{}</pre>"#,
                esc(src),
                esc(tail.as_ref().map_or("", |t| t.text.as_str()))
            );
        }
        (None, Some(t)) => {
            s.push_str("<h2>stdout</h2>");
            s.push_str(&text_block("stdout", t, true));
        }
        (None, None) => {}
    }
    if let Some(t) = &d.stderr_tail {
        s.push_str("<h2>stderr</h2>");
        s.push_str(&text_block("stderr", t, true));
    }
    if let Some(p) = &d.prompt {
        let _ = write!(
            s,
            r#"<details id="prompt-details"><summary>Prompt as sent (<code>prompt.md</code>)</summary>{}</details>"#,
            text_block("prompt", p, false)
        );
    }
    let _ = write!(
        s,
        r#"<details id="source-details"><summary>Task file</summary><pre class="text">{}</pre></details>"#,
        esc(&d.source)
    );
    if let Some(r) = &d.record {
        let _ = write!(
            s,
            r#"<details id="record-details"><summary>Result record</summary><pre class="text">{}</pre></details>"#,
            esc(&serde_json::to_string_pretty(r).unwrap_or_default())
        );
    }
    s
}

/// A name cut to fit a node box.
fn short(name: &str) -> String {
    const MAX: usize = 22;
    match name.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_owned(),
    }
}

/// The graph page's body: a form, a legend and the SVG.
pub fn graph(g: &Graph) -> String {
    let mut s = String::from("<h1>Graph</h1>");
    let _ = write!(
        s,
        r#"<form class="filters" method="get" action="/graph"><label>Tree of <input name="focus" value="{}" placeholder="task name"></label><button type="submit">Show</button>{}</form>"#,
        esc(g.focus.as_deref().unwrap_or("")),
        if g.focus.is_some() {
            r#" <a href="/graph">newest tasks</a>"#
        } else {
            ""
        }
    );
    let what = match &g.focus {
        Some(f) => format!("the tree of {}", task_link(f)),
        None => "the newest tasks and what they link to".into(),
    };
    let _ = write!(
        s,
        r#"<p class="muted">{} nodes, {} links: {what}{}. Solid: parent → follow-up or subtask; dashed: runs after.</p>"#,
        g.nodes.len(),
        g.edges.len(),
        if g.truncated {
            " (cut at the node limit)"
        } else {
            ""
        }
    );
    s.push_str(r#"<p class="legend">"#);
    for st in [
        Some(State::Pending),
        Some(State::Assigned),
        Some(State::Completed),
        Some(State::Failed),
        None,
    ] {
        s.push_str(&badge(st));
        s.push(' ');
    }
    s.push_str("</p>");
    if g.nodes.is_empty() {
        s.push_str(r#"<p class="empty">No tasks.</p>"#);
        return s;
    }
    let pos: std::collections::HashMap<&str, (u32, u32)> = g
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), (n.x, n.y)))
        .collect();
    let _ = write!(
        s,
        r#"<div class="graph"><svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" class="arrow"/></marker></defs>"#,
        w = g.width,
        h = g.height
    );
    for e in &g.edges {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(e.from.as_str()), pos.get(e.to.as_str()))
        else {
            continue;
        };
        let (sx, sy) = (x1 + NODE_W / 2, y1 + NODE_H);
        let (tx, ty) = (x2 + NODE_W / 2, y2);
        let mid = (sy + ty) / 2;
        let cls = match e.kind {
            EdgeKind::Parent => "edge parent",
            EdgeKind::After => "edge after",
        };
        let _ = write!(
            s,
            r#"<path class="{cls}" d="M {sx} {sy} C {sx} {mid}, {tx} {mid}, {tx} {ty}" marker-end="url(#arrow)"/>"#
        );
    }
    for n in &g.nodes {
        let _ = write!(
            s,
            r#"<a href="/tasks/{u}" class="node"><title>{name} ({label})</title><rect class="{cls}" x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="5"/><text x="{tx}" y="{ty}">{text}</text></a>"#,
            u = url(&n.name),
            name = esc(&n.name),
            label = state_label(n.state),
            cls = state_class(n.state),
            x = n.x,
            y = n.y,
            tx = n.x + 8,
            ty = n.y + NODE_H / 2 + 4,
            text = esc(&short(&n.name)),
        );
    }
    s.push_str("</svg></div>");
    s
}

/// A page for an error (404, 400).
pub fn error(msg: &str) -> String {
    format!(
        r#"<h1>Not here</h1><p class="banner warn">{}</p><p><a href="/tasks">All tasks</a></p>"#,
        esc(msg)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_stay_short() {
        assert_eq!(usd(0.0421), "$0.0421");
        assert_eq!(usd(12.5), "$12.50");
        assert_eq!(usd(1e308), "$1.000e308");
        assert_eq!(usd(-2e12), "$-2.000e12");
    }

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("a\u{1b}[31mb"), "a\\u{1b}[31mb");
    }

    #[test]
    fn markdown_shows_raw_html_as_text_and_drops_script_links() {
        let h = markdown(
            "# Title\n\n<script>alert(1)</script>\n\nsee [x](javascript:alert(1)) and [y](https://example.com/a?b=1)\n\n![pic](http://e/x.png)\n\n<img src=x onerror=alert(1)>",
        );
        assert!(h.contains("<h1>Title</h1>"), "{h}");
        assert!(!h.contains("<script"), "{h}");
        assert!(!h.contains("<img"), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
        assert!(!h.contains("javascript:"), "{h}");
        assert!(h.contains(r#"href="https://example.com/a?b=1""#), "{h}");
        assert!(h.contains("[image: pic]"), "{h}");
    }

    #[test]
    fn names_in_links_are_percent_encoded() {
        assert_eq!(url("a b/../c?d#e"), "a%20b%2F..%2Fc%3Fd%23e");
        assert_eq!(url("fix-login_2.v1~"), "fix-login_2.v1~");
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(192), "3m 12s");
        assert_eq!(duration(7500), "2h 5m");
        assert_eq!(duration(4 * 86400 + 3 * 3600 + 5), "4d 3h");
    }
}
