//! The dashboard's read model: what each page and `/api/...` route shows,
//! gathered from the tree. Reads only; every function here is synchronous
//! and runs on the blocking pool.
//!
//! Costs are kept to the page shown: counts and the task list come from the
//! cached directory listings ([`Index`]); task files, state files and
//! records are read only for the rows of the page being served.

use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::model::record::{Attempt, Cooldown, ResultRecord, TaskState, ts};
use crate::parse::config::Config;
use crate::parse::task::{self, Task};
use crate::tree::fsx;
use crate::tree::layout::{Layout, State};

use super::index::{Entry, Index, Listing};
use super::ledger::{DaySums, Ledger};

/// Largest task file, record or state file the dashboard reads.
const MAX_FILE: u64 = 1024 * 1024;
/// How much of a prompt or an output is shown.
pub const MAX_TEXT: u64 = 256 * 1024;
/// How much of a worktree run's diff is shown.
pub const MAX_DIFF: usize = 256 * 1024;
/// How much of the end of stdout.log and stderr.log is shown.
pub const MAX_TAIL: u64 = 32 * 1024;
/// Rows of the task list per page, at most.
pub const MAX_PER_PAGE: usize = 200;

/// Counts of task files by state directory.
#[derive(Debug, Serialize, Clone, Copy, Default)]
pub struct Counts {
    pub pending: usize,
    pub assigned: usize,
    pub completed: usize,
    pub failed: usize,
}

#[derive(Debug, Serialize)]
pub struct Running {
    pub name: String,
    pub agent: Option<String>,
    pub attempt: Option<u32>,
    pub host: Option<String>,
    pub started_at: Option<String>,
    /// The run has ended but its commit keeps failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AgentRow {
    pub name: String,
    /// Runs of this agent in `assigned/` now (all supervisors of the tree).
    pub running: usize,
    /// `max_instances` from the root's mailroom.yaml (per supervisor).
    pub max: Option<usize>,
    pub paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_until: Option<String>,
}

/// The pending task that has waited longest for a slot.
#[derive(Debug, Serialize)]
pub struct Oldest {
    pub name: String,
    pub submitted_at: String,
    /// When it started to wait: its submission, or the end of its own
    /// `delay`/`not_before` or of its retry backoff, whichever is last.
    pub waiting_since: String,
    /// Seconds since `waiting_since`.
    pub age_secs: u64,
}

/// A supervisor's heartbeat from `tasks/supervisors/`.
#[derive(Debug, Serialize)]
pub struct Supervisor {
    #[serde(flatten)]
    pub hb: crate::tree::registry::Heartbeat,
    /// Its process is there (this host) or its beat is recent (another host).
    pub alive: bool,
}

/// What the tasks finished today (UTC) used.
#[derive(Debug, Serialize)]
pub struct Today {
    pub day: String,
    #[serde(flatten)]
    pub sums: DaySums,
}

/// `/` and `/api/overview`.
#[derive(Debug, Serialize)]
pub struct Overview {
    pub counts: Counts,
    /// Every heartbeat file, dead ones included (marked).
    pub supervisors: Vec<Supervisor>,
    pub today: Today,
    pub running: Vec<Running>,
    pub agents: Vec<AgentRow>,
    pub cooldowns: Vec<Cooldown>,
    /// `tasks/control/pause` exists: nothing is claimed.
    pub paused: bool,
    pub paused_agents: Vec<String>,
    pub oldest_pending: Option<Oldest>,
    /// The last tasks to finish, newest first.
    pub recent: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    /// State directories that are missing or no directory (the counts then
    /// show 0 for them, which is not the truth).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tree_errors: Vec<String>,
    pub generated_at: String,
}

/// One row of the task list.
#[derive(Debug, Serialize, Clone)]
pub struct Row {
    pub name: String,
    pub state: State,
    pub agent: Option<String>,
    pub priority: Option<String>,
    pub submitted_at: String,
    pub age_secs: u64,
    pub attempts: u32,
    pub outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every attempt's usage, summed (None: the CLI reported none).
    pub usage: Option<crate::adapter::Usage>,
    /// The last attempt's session id, for resuming it in the agent's CLI.
    pub session_id: Option<String>,
    /// Why a pending task is not running yet, when the tree says (as on its
    /// page): a dependency, a retry backoff, its own `delay`/`not_before`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// What the task list is asked for.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Query {
    /// pending, assigned (running, active), completed, failed; empty: all.
    #[serde(default)]
    pub state: Option<String>,
    /// Only tasks on this agent (read from each candidate until the page is full).
    #[serde(default)]
    pub agent: Option<String>,
    /// A substring of the name or the description, any case.
    #[serde(default)]
    pub q: Option<String>,
    /// Only tasks with this label.
    #[serde(default)]
    pub label: Option<String>,
    /// From 1.
    #[serde(default)]
    pub page: Option<usize>,
    #[serde(default)]
    pub per_page: Option<usize>,
}

/// `/tasks` and `/api/tasks`.
#[derive(Debug, Serialize)]
pub struct TaskList {
    pub rows: Vec<Row>,
    pub page: usize,
    pub per_page: usize,
    /// Tasks that match, when known without reading files (no agent filter).
    pub total: Option<usize>,
    pub has_more: bool,
    pub state: Option<State>,
    pub agent: Option<String>,
    pub q: Option<String>,
    pub label: Option<String>,
    pub counts: Counts,
}

#[derive(Debug, Serialize)]
pub struct Link {
    pub name: String,
    /// None: no task of that name exists (yet).
    pub state: Option<State>,
}

impl Link {
    /// `name`, with the state directory that holds it now.
    fn to(layout: &Layout, name: &str) -> Link {
        Link {
            name: name.to_owned(),
            state: layout.locate(name).map(|(s, _, _)| s),
        }
    }
}

/// A text shown on the task page, cut to a size.
#[derive(Debug, Serialize)]
pub struct Text {
    pub text: String,
    pub truncated: bool,
}

/// `/tasks/NAME` and `/api/tasks/NAME`.
#[derive(Debug, Serialize)]
pub struct Detail {
    pub name: String,
    pub state: State,
    pub file: String,
    pub submitted_at: Option<String>,
    /// The task file as written (cut at 1 MiB).
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
    pub description: Option<String>,
    pub priority: Option<String>,
    pub agent: Option<String>,
    pub agent_reason: Option<String>,
    pub labels: Vec<String>,
    pub after: Vec<Link>,
    /// Why a pending task is not running yet, when the tree says.
    pub waiting: Option<String>,
    pub parent: Option<Link>,
    pub children: Vec<Link>,
    /// Tasks (among the newest) that run `after` this one.
    pub needed_by: Vec<Link>,
    /// Every finished attempt, oldest first (the record's or the state file's).
    pub attempts: Vec<Attempt>,
    /// The run under way, from the state file.
    pub run: Option<crate::model::record::RunInfo>,
    /// Whether the run's supervisor is alive, and who adopted the run when
    /// it is not (a run of this host only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_holder: Option<crate::tree::books::RunHolder>,
    pub record: Option<ResultRecord>,
    /// Records of the task's earlier rounds (before each `mailroom retry`).
    pub rounds: Vec<ResultRecord>,
    pub bookkeeping: Option<TaskState>,
    pub prompt: Option<Text>,
    pub output: Option<Text>,
    pub stdout_tail: Option<Text>,
    pub stderr_tail: Option<Text>,
    pub files_modified: Vec<String>,
    /// Why a finished task's record is not shown: its file exists but
    /// cannot be read or does not parse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_error: Option<String>,
    /// For a worktree run: its diff against the commit it started from.
    pub diff: Option<Text>,
    /// Why there is no diff for a worktree run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_error: Option<String>,
    /// For a running task: where its output streams (server-sent events).
    pub live_output: Option<String>,
}

/// The four listings at once, with their counts.
pub struct Snapshot {
    pub lists: [(State, std::sync::Arc<Listing>); 4],
}

impl Snapshot {
    pub fn take(index: &Index, layout: &Layout) -> Snapshot {
        Snapshot {
            lists: index.all(layout),
        }
    }
    pub fn get(&self, s: State) -> &Listing {
        &self.lists[State::ALL.iter().position(|x| *x == s).unwrap_or(0)].1
    }
    pub fn counts(&self) -> Counts {
        Counts {
            pending: self.get(State::Pending).entries.len(),
            assigned: self.get(State::Assigned).entries.len(),
            completed: self.get(State::Completed).entries.len(),
            failed: self.get(State::Failed).entries.len(),
        }
    }
}

fn age(t: SystemTime, now: SystemTime) -> u64 {
    now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0)
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Option<T> {
    json_or_why(p).ok().flatten()
}

/// The JSON file at `p`: None when there is none, else why it gives nothing
/// ("cannot be read: ...", "does not parse: ...").
fn json_or_why<T: serde::de::DeserializeOwned>(p: &Path) -> Result<Option<T>, String> {
    match fsx::read_task_file(p, MAX_FILE) {
        Ok((b, _)) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("does not parse: {e}")),
        Err(e) if e.is_gone() => Ok(None),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

fn read_state(layout: &Layout, name: &str) -> Option<TaskState> {
    read_json(&layout.state_file(name))
}

fn read_record(layout: &Layout, s: State, name: &str) -> Option<ResultRecord> {
    read_json(&layout.record_file(s, name))
}

/// A finished task's record, or why its file (which exists) gives none.
fn record_or_why(layout: &Layout, s: State, name: &str) -> (Option<ResultRecord>, Option<String>) {
    let p = layout.record_file(s, name);
    match json_or_why(&p) {
        Ok(r) => (r, None),
        Err(why) => (None, Some(format!("{}: {why}", layout.rel(&p)))),
    }
}

fn read_task(layout: &Layout, s: State, name: &str, ext: &str) -> Option<(String, SystemTime)> {
    let p = layout.task_file(s, name, ext);
    let (b, _) = fsx::read_task_file(&p, MAX_FILE).ok()?;
    let mtime = std::fs::symlink_metadata(&p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Some((String::from_utf8_lossy(&b).into_owned(), mtime))
}

/// Why a pending task is not running yet, when the tree says: a dependency
/// (`after`, with where each stands) not completed, a retry backoff (from
/// its state file `book`), or its own `delay`/`not_before` (`own`: the task
/// and its file's mtime).
fn waiting_because(
    layout: &Layout,
    after: &[Link],
    book: Option<&TaskState>,
    own: Option<(&Task, SystemTime)>,
) -> Option<String> {
    if let Some(d) = after.iter().find(|d| d.state != Some(State::Completed)) {
        return Some(match d.state {
            Some(State::Failed) => format!("dependency {} failed", d.name),
            Some(_) => format!("waiting for {}", d.name),
            None => match crate::tree::books::diverted_as(layout, &d.name) {
                Some(clash) => format!("dependency {} failed (filed as {clash})", d.name),
                None => format!("waiting for {} (not submitted)", d.name),
            },
        });
    }
    let now = SystemTime::now();
    let retry = book
        .and_then(|b| b.not_before.clone())
        .filter(|nb| crate::model::record::parse_ts(nb).is_some_and(|at| at > now));
    if let Some(nb) = retry {
        return Some(format!("waiting for a retry at {nb}"));
    }
    let (t, mtime) = own?;
    let (at, why) = t.own_hold(mtime, now)?;
    Some(format!("held by its {why} until {}", ts(at)))
}

/// How many pending task files [`oldest_waiting`] reads at most, and how
/// many bytes of them: past either, what it found so far is the answer (a
/// page and a scrape must not read a queue of large held files).
const OLDEST_READS: usize = 200;
const OLDEST_BYTES: u64 = 4 << 20;

/// When the pending task `e` started to wait for a slot (see
/// [`Oldest::waiting_since`]), and the bytes read for it. A file written
/// "in the future" (clock skew, `touch`) waits from now; one that cannot be
/// read or parsed, from its submission.
fn waiting_since(
    layout: &Layout,
    snap: &Snapshot,
    e: &Entry,
    now: SystemTime,
) -> (SystemTime, u64) {
    let mut since = e.mtime.min(now);
    let mut read = 0;
    if let Some((src, _)) = read_task(layout, State::Pending, &e.name, e.ext) {
        read = src.len() as u64;
        if let Some(at) = task::parse_as(&e.name, e.ext, src.as_bytes())
            .ok()
            .and_then(|t| t.starts_at(e.mtime))
        {
            since = since.max(at);
        }
    }
    // A task waiting for its retry has its state file in assigned/.
    if snap.get(State::Assigned).state_files.contains(&e.name)
        && let Some(at) = read_state(layout, &e.name)
            .and_then(|st| st.not_before)
            .and_then(|nb| crate::model::record::parse_ts(&nb))
    {
        since = since.max(at);
    }
    (since, read)
}

/// The pending task that has waited longest, leaving out those their own
/// `delay`/`not_before` or a retry backoff still holds (a task meant for
/// tomorrow is not late). Reads from the oldest submission on, and stops
/// once no later file can have waited longer, or at [`OLDEST_READS`] files
/// or [`OLDEST_BYTES`] (then what it found, if anything: never a file it
/// has not read).
fn oldest_waiting(layout: &Layout, snap: &Snapshot, now: SystemTime) -> Option<Oldest> {
    let mut best: Option<(&Entry, SystemTime)> = None;
    let mut bytes = 0;
    for (i, e) in snap.get(State::Pending).entries.iter().rev().enumerate() {
        if best.is_some_and(|(_, b)| e.mtime >= b) || i >= OLDEST_READS || bytes >= OLDEST_BYTES {
            break;
        }
        let (since, read) = waiting_since(layout, snap, e, now);
        bytes += read;
        if since <= now && best.is_none_or(|(_, b)| since < b) {
            best = Some((e, since));
        }
    }
    best.map(|(e, since)| Oldest {
        name: e.name.clone(),
        submitted_at: ts(e.mtime),
        waiting_since: ts(since),
        age_secs: age(since, now),
    })
}

fn first_line(s: &str, max: usize) -> String {
    let l = s.lines().next().unwrap_or("");
    match l.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &l[..i]),
        None => l.to_owned(),
    }
}

fn sum_usage(h: &[Attempt]) -> Option<crate::adapter::Usage> {
    let mut total = crate::adapter::Usage::default();
    for u in h.iter().filter_map(|a| a.usage.as_ref()) {
        total.add(u);
    }
    (!total.is_empty()).then_some(total)
}

/// A row, reading only this task's own files.
fn row(layout: &Layout, snap: &Snapshot, s: State, e: &Entry, now: SystemTime) -> Row {
    let parsed = read_task(layout, s, &e.name, e.ext)
        .and_then(|(src, _)| task::parse_as(&e.name, e.ext, src.as_bytes()).ok());
    let mut r = Row {
        name: e.name.clone(),
        state: s,
        agent: parsed.as_ref().and_then(|t| t.agent.clone()),
        priority: parsed.as_ref().map(|t| t.priority.as_str().to_owned()),
        submitted_at: ts(e.mtime),
        age_secs: age(e.mtime, now),
        attempts: 0,
        outcome: None,
        error: None,
        usage: None,
        session_id: None,
        waiting: None,
    };
    match s {
        State::Pending | State::Assigned => {
            let has_state = snap.get(State::Assigned).state_files.contains(&e.name);
            let book = has_state.then(|| read_state(layout, &e.name)).flatten();
            if s == State::Pending {
                let after: Vec<Link> = parsed
                    .as_ref()
                    .map(|t| t.after.iter().map(|d| Link::to(layout, d)).collect())
                    .unwrap_or_default();
                r.waiting = waiting_because(
                    layout,
                    &after,
                    book.as_ref(),
                    parsed.as_ref().zip(Some(e.mtime)),
                );
            }
            if let Some(st) = book {
                r.attempts = st.attempts;
                if let Some(run) = &st.run {
                    r.agent = Some(run.agent.clone());
                } else if let Some(a) = st.history.last() {
                    r.agent.get_or_insert(a.agent.clone());
                }
                r.error = st.last_error.as_deref().map(|e| first_line(e, 200));
                r.usage = sum_usage(&st.history);
                r.session_id = st.history.iter().rev().find_map(|a| a.session_id.clone());
            }
        }
        State::Completed | State::Failed => {
            if let Some(rec) = read_record(layout, s, &e.name) {
                r.attempts = rec.attempts;
                r.agent = rec.agent.clone().or(r.agent);
                r.outcome = Some(rec.outcome.as_str().to_owned());
                r.error = rec.error.as_deref().map(|e| first_line(e, 200));
                r.usage = crate::tree::context::total_usage(&rec);
                r.session_id = rec
                    .session_id
                    .clone()
                    .or_else(|| rec.history.iter().rev().find_map(|a| a.session_id.clone()));
            }
        }
    }
    r
}

/// The runs in `assigned/`, from their state files.
pub fn running(layout: &Layout, snap: &Snapshot) -> Vec<Running> {
    snap.get(State::Assigned)
        .entries
        .iter()
        .map(|e| {
            let st = read_state(layout, &e.name);
            let run = st.as_ref().and_then(|s| s.run.clone());
            Running {
                name: e.name.clone(),
                agent: run.as_ref().map(|r| r.agent.clone()),
                attempt: run.as_ref().map(|r| r.attempt),
                host: run.as_ref().map(|r| r.host.clone()),
                started_at: run.map(|r| r.started_at),
                commit_error: st.and_then(|s| s.commit_error),
            }
        })
        .collect()
}

/// The overview.
pub fn overview(index: &Index, ledger: &Ledger, layout: &Layout) -> Overview {
    let now = SystemTime::now();
    let snap = Snapshot::take(index, layout);
    let running = running(layout, &snap);
    let config = Config::load(&layout.root);
    let cooldowns = crate::tree::books::cooldowns(layout, false);
    let paused_agents = paused_agents(layout);
    let mut agents: std::collections::BTreeMap<String, AgentRow> = Default::default();
    fn agent<'a>(
        agents: &'a mut std::collections::BTreeMap<String, AgentRow>,
        name: &str,
    ) -> &'a mut AgentRow {
        agents.entry(name.to_owned()).or_insert_with(|| AgentRow {
            name: name.to_owned(),
            running: 0,
            max: None,
            paused: false,
            cooldown_until: None,
        })
    }
    if let Ok(c) = &config {
        for (n, a) in &c.agents {
            agent(&mut agents, n).max = Some(a.max_instances);
        }
    }
    for r in &running {
        if let Some(a) = &r.agent {
            agent(&mut agents, a).running += 1;
        }
    }
    for a in &paused_agents {
        agent(&mut agents, a).paused = true;
    }
    for c in &cooldowns {
        agent(&mut agents, &c.agent).cooldown_until = Some(c.until.clone());
    }
    let oldest_pending = oldest_waiting(layout, &snap, now);
    // The most recent finished tasks: merge the heads of two sorted lists.
    let mut recent: Vec<(State, &Entry)> = [State::Completed, State::Failed]
        .into_iter()
        .flat_map(|s| snap.get(s).entries.iter().take(10).map(move |e| (s, e)))
        .collect();
    recent.sort_by_key(|e| std::cmp::Reverse(e.1.mtime));
    let recent = recent
        .into_iter()
        .take(10)
        .map(|(s, e)| row(layout, &snap, s, e, now))
        .collect();
    let (day, today) = super::agents::today(ledger, layout);
    Overview {
        counts: snap.counts(),
        supervisors: crate::tree::registry::list(layout)
            .into_iter()
            .map(|(hb, alive)| Supervisor { hb, alive })
            .collect(),
        today: Today { day, sums: today },
        running,
        agents: agents.into_values().collect(),
        cooldowns,
        paused: std::fs::symlink_metadata(layout.pause_file(None)).is_ok(),
        paused_agents,
        oldest_pending,
        recent,
        config_error: config.err().map(|e| e.to_string()),
        tree_errors: State::ALL
            .iter()
            .filter_map(|s| {
                let d = layout.dir(*s);
                match std::fs::symlink_metadata(d) {
                    Ok(m) if m.is_dir() => None,
                    Ok(_) => Some(format!("{} is not a directory", layout.rel(d))),
                    Err(e) => Some(format!("{}: {e}", layout.rel(d))),
                }
            })
            .collect(),
        generated_at: ts(now),
    }
}

fn paused_agents(layout: &Layout) -> Vec<String> {
    crate::tree::books::paused_agents(layout)
}

/// The task list: filtered by state and name from the listings alone, by
/// agent by reading each candidate's files until the page is full.
pub fn tasks(index: &Index, layout: &Layout, q: &Query) -> Result<TaskList, String> {
    let now = SystemTime::now();
    let state = match q.state.as_deref().filter(|s| !s.is_empty() && *s != "all") {
        Some(s) => Some(State::parse(s).ok_or_else(|| {
            format!("unknown state `{s}`: use pending, assigned (running), completed or failed")
        })?),
        None => None,
    };
    let per_page = q.per_page.unwrap_or(50).clamp(1, MAX_PER_PAGE);
    let page = q.page.unwrap_or(1).max(1);
    let needle =
        q.q.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase);
    let agent = q
        .agent
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let label = q
        .label
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let snap = Snapshot::take(index, layout);
    // Name first (from the listing); the description and the labels from
    // each candidate's file, read once and then cached by the index.
    let matches = |s: State, e: &Entry| {
        let by_name = needle
            .as_deref()
            .is_none_or(|n| e.name.to_lowercase().contains(n));
        if by_name && label.is_none() {
            return true;
        }
        let m = index.meta(layout, s, e);
        (by_name || needle.as_deref().is_some_and(|n| m.description.contains(n)))
            && label
                .as_deref()
                .is_none_or(|l| m.labels.iter().any(|x| x == l))
    };
    let mut cands: Vec<(State, &Entry)> = State::ALL
        .into_iter()
        .filter(|s| state.is_none_or(|x| x == *s))
        .flat_map(|s| snap.get(s).entries.iter().map(move |e| (s, e)))
        .filter(|(s, e)| matches(*s, e))
        .collect();
    if state.is_none() {
        cands.sort_by(|a, b| {
            b.1.mtime
                .cmp(&a.1.mtime)
                .then_with(|| a.1.name.cmp(&b.1.name))
        });
    }
    let skip = (page - 1).saturating_mul(per_page);
    let (rows, total, has_more) = match &agent {
        None => {
            let rows: Vec<Row> = cands
                .iter()
                .skip(skip)
                .take(per_page)
                .map(|(s, e)| row(layout, &snap, *s, e, now))
                .collect();
            let has_more = cands.len() > skip + rows.len();
            (rows, Some(cands.len()), has_more)
        }
        Some(a) => {
            let mut matched = 0usize;
            let mut rows = Vec::new();
            let mut has_more = false;
            for (s, e) in &cands {
                let r = row(layout, &snap, *s, e, now);
                if r.agent.as_deref() != Some(a.as_str()) {
                    continue;
                }
                matched += 1;
                if matched <= skip {
                    continue;
                }
                if rows.len() == per_page {
                    has_more = true;
                    break;
                }
                rows.push(r);
            }
            (rows, None, has_more)
        }
    };
    Ok(TaskList {
        rows,
        page,
        per_page,
        total,
        has_more,
        state,
        agent,
        q: needle,
        label,
        counts: snap.counts(),
    })
}

fn text_file(p: &Path, limit: u64, tail: bool) -> Option<Text> {
    let (b, truncated) = if tail {
        fsx::read_tail(p, limit).ok()?
    } else {
        fsx::read_head(p, limit).ok()?
    };
    Some(Text {
        text: String::from_utf8_lossy(&b).into_owned(),
        truncated,
    })
}

/// The latest attempt's directory of a task in state `s`, if it is a real
/// directory (a symlink planted there is not followed). The one place the
/// dashboard finds a run's files (prompt, output, logs).
pub fn run_dir(layout: &Layout, s: State, name: &str) -> Option<std::path::PathBuf> {
    let (_, d) = layout.last_attempt(s, name)?;
    std::fs::symlink_metadata(&d)
        .ok()
        .filter(|m| m.is_dir())
        .map(|_| d)
}

/// Tasks named `<name>.<suffix>` with no further dot: a parent's subtasks.
fn subtask_children(snap: &Snapshot, name: &str) -> Vec<String> {
    let prefix = format!("{name}.");
    let mut v = Vec::new();
    for (_, l) in &snap.lists {
        for e in &l.entries {
            if let Some(rest) = e.name.strip_prefix(&prefix)
                && !rest.contains('.')
            {
                v.push(e.name.clone());
            }
        }
    }
    v
}

/// The records of earlier rounds, oldest first, without duplicates.
fn rounds(layout: &Layout, name: &str) -> Vec<ResultRecord> {
    let Ok((b, _)) = fsx::read_tail(&layout.history_file(name), 4 * MAX_FILE) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&b);
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|l| serde_json::from_str::<ResultRecord>(l).ok())
        .filter(|r| seen.insert(r.run_id.clone()))
        .collect()
}

/// One task. `None` when no state directory holds `name` (checked by the caller).
pub fn detail(index: &Index, layout: &Layout, name: &str) -> Option<Detail> {
    let (state, path, ext) = layout.locate(name)?;
    let snap = Snapshot::take(index, layout);
    let (source, mtime, unread) = match read_task(layout, state, name, ext) {
        Some((s, m)) => (s, Some(m), None),
        None => match fsx::read_task_file(&path, MAX_FILE) {
            Err(e) => (
                format!("(cannot read the task file: {e})"),
                None,
                Some(format!("{}: cannot be read: {e}", layout.rel(&path))),
            ),
            Ok(_) => (String::new(), None, None),
        },
    };
    // A file that cannot be read is said to be so, not parsed (the
    // placeholder shown in its place is no task file).
    let parsed: Result<Task, String> = match unread {
        Some(why) => Err(why),
        None => task::parse_as(name, ext, source.as_bytes())
            .map_err(|e| e.display_at(&layout.rel(&path))),
    };
    let (record, record_error) = if matches!(state, State::Completed | State::Failed) {
        record_or_why(layout, state, name)
    } else {
        (None, None)
    };
    let book = read_state(layout, name);
    let t = parsed.as_ref().ok();
    let link = |n: &str| Link::to(layout, n);
    let after: Vec<Link> = t
        .map(|t| t.after.iter().map(|d| link(d)).collect())
        .unwrap_or_default();
    let waiting = (state == State::Pending)
        .then(|| waiting_because(layout, &after, book.as_ref(), t.zip(mtime)))
        .flatten();
    let mut children: Vec<String> = record
        .as_ref()
        .map(|r| r.followups.iter().chain(&r.children).cloned().collect())
        .unwrap_or_default();
    if let Some(b) = &book {
        children.extend(b.children.iter().cloned());
    }
    children.extend(subtask_children(&snap, name));
    let mut needed_by = Vec::new();
    for e in super::graph::referrers(&snap, layout, name) {
        match e.kind {
            super::graph::EdgeKind::Parent => children.push(e.to),
            super::graph::EdgeKind::After => needed_by.push(e.to),
        }
    }
    needed_by.sort();
    needed_by.dedup();
    children.sort();
    children.dedup();
    let run = run_dir(layout, state, name);
    let in_run = |f: &str, limit: u64, tail: bool| {
        run.as_ref()
            .and_then(|d| text_file(&d.join(f), limit, tail))
            .filter(|t| !t.text.trim().is_empty())
    };
    let mut attempts = match (&record, &book) {
        (Some(r), _) => r.history.clone(),
        (None, Some(b)) => b.history.clone(),
        _ => Vec::new(),
    };
    attempts.sort_by_key(|a| a.attempt);
    let files_modified = record
        .as_ref()
        .and_then(|r| r.workspace.as_ref())
        .map(|w| w.files_modified.clone())
        .unwrap_or_default();
    let (diff, diff_error) = match record.as_ref().and_then(|r| r.workspace.as_ref()) {
        Some(w) if w.kind == "worktree" => match worktree_diff(layout, name, t, w) {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e)),
        },
        _ => (None, None),
    };
    let live_output =
        (state == State::Assigned).then(|| format!("/tasks/{}/output", super::html::url(name)));
    Some(Detail {
        diff,
        diff_error,
        live_output,
        name: name.to_owned(),
        state,
        file: layout.rel(&path),
        submitted_at: mtime.map(ts),
        parse_error: parsed.as_ref().err().cloned(),
        description: t.map(|t| t.description.clone()),
        priority: t.map(|t| t.priority.as_str().to_owned()),
        agent: record
            .as_ref()
            .and_then(|r| r.agent.clone())
            .or_else(|| {
                book.as_ref()
                    .and_then(|b| b.run.as_ref())
                    .map(|r| r.agent.clone())
            })
            .or_else(|| t.and_then(|t| t.agent.clone())),
        agent_reason: record
            .as_ref()
            .and_then(|r| r.agent_reason.clone())
            .or_else(|| book.as_ref().and_then(|b| b.run.as_ref()?.reason.clone())),
        labels: t.map(|t| t.labels.clone()).unwrap_or_default(),
        after,
        waiting,
        parent: t.and_then(|t| t.parent.as_deref()).map(link),
        children: children.iter().map(|c| link(c)).collect(),
        needed_by: needed_by.iter().map(|c| link(c)).collect(),
        attempts,
        run: book.as_ref().and_then(|b| b.run.clone()),
        run_holder: book
            .as_ref()
            .filter(|_| state == State::Assigned)
            .and_then(|b| crate::tree::books::run_holder(layout, name, b)),
        rounds: rounds(layout, name),
        bookkeeping: book,
        prompt: in_run("prompt.md", MAX_TEXT, false),
        output: in_run("output.md", MAX_TEXT, false),
        stdout_tail: in_run("stdout.log", MAX_TAIL, true),
        stderr_tail: in_run("stderr.log", MAX_TAIL, true),
        files_modified,
        record,
        record_error,
        source,
    })
}

/// A worktree run's diff. The worktree is looked for where this tree's
/// configuration puts it (`worktrees_dir/<name>`), never at a path taken
/// from the record; once removed, the branch is diffed in the task's workdir.
fn worktree_diff(
    layout: &Layout,
    name: &str,
    t: Option<&Task>,
    w: &crate::run::workspace::Report,
) -> Result<Text, String> {
    let base = w.base.as_deref().ok_or("the record names no base commit")?;
    let branch = crate::run::workspace::branch_for(name);
    let config = Config::load(&layout.root).map_err(|e| e.to_string())?;
    let wt = layout.root.join(&config.worktrees_dir).join(name);
    let wt = std::fs::symlink_metadata(&wt)
        .ok()
        .filter(|m| m.is_dir())
        .map(|_| wt);
    let repo = match t.and_then(|t| t.workdir.as_deref()) {
        Some(w) => {
            task::check_relative_path(w).map_err(|e| format!("workdir: {e}"))?;
            layout.root.join(w)
        }
        None => layout.root.clone(),
    };
    let (text, truncated) =
        crate::run::workspace::diff_against_base(wt.as_deref(), &repo, base, &branch, MAX_DIFF)?;
    Ok(Text { text, truncated })
}
