//! Live control from the command line, through files in the tree (so it
//! works for any tool and across supervisors): cancel, pause and resume, and
//! the commands that watch tasks: logs, wait, agents.

use crate::model::Outcome;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cli::{check_task_name, open_tree};
use crate::parse::config::Config;
use crate::tree::books;
use crate::tree::fsx;
use crate::tree::layout::State;
use crate::tree::lock::TaskLock;
use crate::tree::moves;

/// What a cancel did at once.
#[derive(Debug, PartialEq)]
pub enum Cancelled {
    /// A pending task, filed in `failed/` (under this name).
    Filed(String),
    /// A running task: a marker asks its supervisor to stop it.
    Requested,
}

/// Cancels a task: a pending one is filed as cancelled at once; for a
/// running one a marker in `tasks/control/cancel/` asks its supervisor to
/// stop the agent (the CLI's and the dashboard's cancel).
pub fn cancel_task(layout: &crate::tree::layout::Layout, name: &str) -> Result<Cancelled> {
    cancel_tree(layout, name).map(|(done, _)| done)
}

/// [`cancel_task`], and the unfinished subtasks of `name` cancelled with it.
pub fn cancel_tree(
    layout: &crate::tree::layout::Layout,
    name: &str,
) -> Result<(Cancelled, Vec<String>)> {
    check_task_name(name)?;
    let mut seen = std::collections::HashSet::new();
    cancel_with_children(layout, name, &mut seen)
}

/// A parent of expanded subtasks: its unfinished children go with it (read
/// before the parent is filed and its state file moves), each once.
fn cancel_with_children(
    layout: &crate::tree::layout::Layout,
    name: &str,
    seen: &mut std::collections::HashSet<String>,
) -> Result<(Cancelled, Vec<String>)> {
    seen.insert(name.to_owned());
    let children = unfinished_children(layout, name);
    let done = cancel_one(layout, name)?;
    for c in &children {
        if !seen.contains(c) {
            let _ = cancel_with_children(layout, c, seen);
        }
    }
    Ok((done, children))
}

/// The subtasks of `name` (expanded, per its state file) still in
/// `pending/` or `assigned/`.
fn unfinished_children(layout: &crate::tree::layout::Layout, name: &str) -> Vec<String> {
    let mut v = books::read_state(layout, name).children;
    v.retain(|c| {
        c != name
            && matches!(
                layout.locate(c),
                Some((State::Pending | State::Assigned, _, _))
            )
    });
    v
}

fn cancel_one(layout: &crate::tree::layout::Layout, name: &str) -> Result<Cancelled> {
    match layout.locate(name) {
        None => bail!("no task named `{name}`"),
        Some((s @ (State::Completed | State::Failed), _, _)) => {
            bail!("`{name}` already finished ({})", s.dir_name())
        }
        Some((State::Pending, _, ext)) => {
            if let Some(lock) = TaskLock::try_acquire(layout, name)? {
                let rec =
                    books::never_ran_record(Outcome::Cancelled, "cancelled before it ran".into());
                let res = moves::reject(layout, State::Pending, name, ext, rec, false);
                lock.release();
                if let Some(rec) = res? {
                    if crate::tree::context::merge(layout, &rec, None, None, None).is_err() {
                        // A running supervisor's recovery pass merges it.
                        crate::tree::context::note_unmerged(layout, State::Failed, &rec.task);
                    }
                    return Ok(Cancelled::Filed(rec.task));
                }
            }
            // Claimed meanwhile: fall through to the marker.
        }
        Some((State::Assigned, _, _)) => {}
    }
    put_marker(layout, &layout.cancel, &layout.cancel_file(name))?;
    Ok(Cancelled::Requested)
}

/// `mailroom cancel NAME...`: every cancel is made first (pending tasks
/// filed at once, markers written for running ones, a parent's unfinished
/// subtasks with it), then the running ones are waited for together, up to
/// `within`. Exit 1 if any could not be cancelled or no supervisor acted in
/// time; with one name, its error is the command's.
pub fn cancel_all(root: &Path, names: &[String], within: Duration) -> Result<ExitCode> {
    let layout = open_tree(root)?;
    let mut ok = true;
    let mut asked = Vec::new();
    for n in names {
        // A pending task with attempts behind it waits for its retry.
        let ran = books::read_state(&layout, n).attempts > 0;
        match cancel_tree(&layout, n) {
            Ok((done, children)) => {
                if !children.is_empty() {
                    println!(
                        "{n}: its unfinished subtasks are cancelled too: {}",
                        children.join(", ")
                    );
                }
                // Running subtasks are waited for like the task itself.
                asked.extend(
                    children
                        .iter()
                        .filter(|c| layout.find(State::Assigned, c).is_some())
                        .cloned(),
                );
                match done {
                    Cancelled::Requested => asked.push(n.clone()),
                    Cancelled::Filed(_) if ran => {
                        println!("{n}: cancelled (while it waited for its next attempt)")
                    }
                    Cancelled::Filed(_) => println!("{n}: cancelled (it had not started)"),
                }
            }
            Err(e) if names.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("mailroom: {n}: {e:#}");
                ok = false;
            }
        }
    }
    let until = Instant::now() + within;
    // Gone from every state directory: nobody filed it, so nobody acted.
    let mut unacted = Vec::new();
    while !asked.is_empty() {
        asked.retain(|n| match layout.locate(n) {
            Some((State::Pending | State::Assigned, _, _)) => true,
            Some((s, _, _)) => {
                // It may have ended on its own just before the supervisor
                // acted: that is no cancel, and the command says so.
                match books::read_record(&layout, s, n).map(|r| r.outcome) {
                    Some(o) if o != Outcome::Cancelled => {
                        eprintln!(
                            "mailroom: `{n}` finished before the cancel took effect ({}, \
                             outcome `{o}`)",
                            s.dir_name()
                        );
                        ok = false;
                    }
                    _ => println!("{n}: cancelled ({})", s.dir_name()),
                }
                false
            }
            None => {
                unacted.push(n.clone());
                false
            }
        });
        if asked.is_empty() || Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unacted.append(&mut asked);
    for n in &unacted {
        eprintln!(
            "mailroom: cancel of `{n}` requested, but no supervisor acted on it within {} \
             (is one running on this tree?); the request stays in tasks/control/cancel/",
            humantime::format_duration(within)
        );
        ok = false;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `mailroom pause|resume [--agent A] [--force]`. A pause of an agent the
/// config does not define is refused without `force` (a typo would hold
/// nothing and say it did); a resume of one clears its marker, if any.
pub fn pause(root: &Path, agent: Option<&str>, on: bool, force: bool) -> Result<()> {
    let layout = open_tree(root)?;
    if let Some(a) = agent {
        check_task_name(a)?;
        if let Ok(c) = Config::load(root)
            && !c.agents.contains_key(a)
        {
            let known: Vec<&str> = c.agents.keys().map(String::as_str).collect();
            let marker = books::exists(&layout.pause_file(Some(a)));
            if on && !force {
                bail!(
                    "no agent `{a}` in mailroom.yaml (it has: {}); `pause --agent {a} --force` \
                     pauses it all the same, for a supervisor run with another config",
                    known.join(", ")
                );
            }
            if !on && !marker {
                bail!(
                    "no agent `{a}` in mailroom.yaml (it has: {}), and no pause of it to resume",
                    known.join(", ")
                );
            }
            eprintln!("mailroom: warning: no agent `{a}` in mailroom.yaml");
        }
    }
    let was = books::exists(&layout.pause_file(agent));
    set_pause(&layout, agent, on)?;
    let what = agent.map_or("claiming".to_owned(), |a| format!("agent {a}"));
    match (on, was) {
        (true, false) => println!("paused {what} (running agents carry on)"),
        (true, true) => println!("{what} was paused already (running agents carry on)"),
        (false, true) => println!("resumed {what}"),
        (false, false) => {
            // The whole tree's pause holds an agent too: say which is on.
            let tree = agent.is_some() && books::exists(&layout.pause_file(None));
            let also = if tree {
                "; the whole tree is paused (`mailroom resume`)"
            } else {
                ""
            };
            println!("{what} was not paused{also}")
        }
    }
    Ok(())
}

/// Puts the marker `f` into `dir`, made when missing. A marker already
/// there, of whatever kind (a directory someone made), is the same request.
/// An error names the file in the way.
fn put_marker(layout: &crate::tree::layout::Layout, dir: &Path, f: &Path) -> Result<()> {
    if std::fs::symlink_metadata(f).is_ok() {
        return Ok(());
    }
    fsx::create_dir_all(dir).with_context(|| format!("creating {}", layout.rel(dir)))?;
    fsx::write_atomic(f, b"").with_context(|| format!("writing {}", layout.rel(f)))
}

/// Writes or removes a pause marker (`agent` must be a checked name).
pub fn set_pause(
    layout: &crate::tree::layout::Layout,
    agent: Option<&str>,
    on: bool,
) -> Result<()> {
    let f = layout.pause_file(agent);
    if on {
        put_marker(layout, &layout.control, &f)?;
    } else {
        // Whatever it is: a supervisor pauses for any entry of that name.
        fsx::remove_any(&f).with_context(|| format!("removing {}", layout.rel(&f)))?;
    }
    Ok(())
}

/// `mailroom logs NAME [--follow] [--raw]`: the latest attempt's stdout and
/// stderr. The stdout of a CLI that writes JSON events (claude, codex,
/// gemini, cursor-agent) is shown as text, unless `raw`. With `follow`, a
/// task that has not started yet is waited for, and a task that fails an
/// attempt and waits for its retry is followed into the next attempt, until
/// it is filed (as `pueue follow` does).
/// `-f`: once the task is filed, a line on stderr says how it ended, and the
/// exit code is its outcome (0 completed, 1 failed), as `wait`'s is; and as
/// `wait`, it ends with [`NoSupervisor`] when no supervisor runs (for 3 s)
/// and with 1 when the task waits for a task nobody submitted.
pub fn logs(root: &Path, name: &str, follow: bool, raw: bool) -> Result<ExitCode> {
    let layout = open_tree(root)?;
    let st = logs_until_filed(root, &layout, name, follow, raw)?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    if st == State::Completed && books::is_completed(&layout, name) {
        eprintln!("mailroom: `{name}` completed");
        return Ok(ExitCode::SUCCESS);
    }
    let why = books::read_record(&layout, st, name)
        .and_then(|r| r.error)
        .map(|e| format!(": {}", e.lines().next().unwrap_or("")))
        .unwrap_or_default();
    eprintln!("mailroom: `{name}` failed{why}");
    Ok(ExitCode::FAILURE)
}

/// Shows the logs (following them with `follow`) and returns the state the
/// task was in at the end.
fn logs_until_filed(
    root: &Path,
    layout: &crate::tree::layout::Layout,
    name: &str,
    follow: bool,
    raw: bool,
) -> Result<State> {
    check_task_name(name)?;
    let Some((mut st, _, _)) = layout.locate(name) else {
        bail!("no task named `{name}`");
    };
    let mut out = std::io::stdout().lock();
    let mut shown: Option<u32> = None;
    let mut told_waiting = false;
    // As `wait`: with nobody to run it (for 3 s), or waiting for a task
    // nobody submitted, a follow would never end.
    let mut nobody = Nobody::default();
    let mut looks = 0u32;
    loop {
        // The latest attempt (earlier ones are beside it, in `<name>.run/`);
        // once following, every attempt after the one shown, in order.
        let latest = layout.last_attempt(st, name);
        let fresh = match (&latest, shown) {
            (Some((n, _)), Some(s)) if *n > s => Some((s + 1, layout.attempt_dir(st, name, s + 1))),
            (Some(_), Some(_)) => None,
            (Some((n, d)), None) if !told_waiting => Some((*n, d.clone())),
            (Some(_), None) => Some((1, layout.attempt_dir(st, name, 1))),
            (None, _) => None,
        };
        let Some((attempt, dir)) = fresh else {
            let open = st == State::Pending || st == State::Assigned;
            if !follow {
                if latest.is_none() && open {
                    bail!("`{name}` has not run yet");
                }
                return Ok(st);
            }
            if !open {
                // Filed without a run of its own, or after the one shown.
                if shown.is_none() {
                    eprintln!(
                        "mailroom: `{name}` was filed in {}/ without running",
                        st.dir_name()
                    );
                }
                return Ok(st);
            }
            if !told_waiting {
                told_waiting = true;
                match shown {
                    None => eprintln!("mailroom: waiting for `{name}` to start"),
                    Some(n) => eprintln!(
                        "mailroom: attempt {n} of `{name}` ended; waiting for attempt {}",
                        n + 1
                    ),
                }
            }
            nobody.check(crate::tree::registry::any_alive(layout))?;
            looks += 1;
            if st == State::Pending && looks % 10 == 1 {
                let pending = books::count(layout, State::Pending);
                if let Some(on) = waiting_forever(layout, pending)
                    .and_then(|left| left.into_iter().find(|(n, _)| n == name))
                    .map(|(_, on)| on)
                {
                    bail!(
                        "`{name}` waits for `{on}`, which nobody submitted: it will not start \
                         (submit `{on}`, or `mailroom cancel {name}`)"
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            match layout.locate(name) {
                Some((s, _, _)) => st = s,
                None => bail!("`{name}` is gone from the tree"),
            }
            continue;
        };
        told_waiting = false;
        if shown.is_some() {
            eprintln!("mailroom: attempt {attempt} of `{name}`:");
        }
        shown = Some(attempt);
        st = follow_attempt(root, layout, name, st, attempt, &dir, follow, raw, &mut out)?;
        let later = layout
            .last_attempt(st, name)
            .is_some_and(|(n, _)| n > attempt);
        if !follow || (matches!(st, State::Completed | State::Failed) && !later) {
            return Ok(st);
        }
    }
}

/// Shows one attempt's logs (with `follow`, until it stops running) and
/// returns the task's state after it.
#[allow(clippy::too_many_arguments)]
fn follow_attempt(
    root: &Path,
    layout: &crate::tree::layout::Layout,
    name: &str,
    st: State,
    attempt: u32,
    dir: &Path,
    follow: bool,
    raw: bool,
    out: &mut impl Write,
) -> Result<State> {
    let renderer = if raw {
        None
    } else {
        renderer_for(root, layout, st, name)
    };
    let mut sink = Sink {
        renderer,
        partial: Vec::new(),
    };
    let files = [dir.join("stdout.log"), dir.join("stderr.log")];
    let mut offsets = [0u64; 2];
    // Followed while a supervisor lives, or while the attempt's keeper
    // still runs it (it files nothing, but the output goes on); with
    // neither for 3 s, nothing will file the task: as `wait`, said so.
    let mut nobody = Nobody::default();
    let host = books::hostname();
    loop {
        for (i, f) in files.iter().enumerate() {
            if let Some(mut h) = open_log(f) {
                h.seek(SeekFrom::Start(offsets[i]))?;
                let mut buf = Vec::new();
                h.read_to_end(&mut buf)?;
                offsets[i] += buf.len() as u64;
                sink.write(i == 0, &buf, out)?;
            }
        }
        out.flush()?;
        // Still this attempt's run: the task in `assigned/`, its state
        // naming this attempt (or none: just claimed, or being filed).
        let running = layout.find(State::Assigned, name).is_some()
            && books::read_state(layout, name)
                .run
                .is_none_or(|r| r.attempt == attempt);
        if follow && running {
            let kept = || {
                !dir.join(crate::run::keeper::OUTCOME_FILE).exists()
                    && crate::run::keeper::info_any(dir)
                        // On another host it cannot be told: taken as alive.
                        .is_some_and(|k| k.host != host || crate::run::keeper::alive(&k, &host))
            };
            if let Err(e) = nobody.check(crate::tree::registry::any_alive(layout) || kept()) {
                sink.finish(out)?;
                out.flush()?;
                return Err(e.into());
            }
        }
        if !follow || !running {
            let now = layout.locate(name).map_or(st, |(s, _, _)| s);
            if follow && now != State::Assigned {
                // It ended: the files may have moved with it; show what came last.
                let d = layout.attempt_dir(now, name, attempt);
                for (i, f) in ["stdout.log", "stderr.log"].iter().enumerate() {
                    if let Some(mut h) = open_log(&d.join(f)) {
                        h.seek(SeekFrom::Start(offsets[i]))?;
                        let mut buf = Vec::new();
                        h.read_to_end(&mut buf)?;
                        sink.write(i == 0, &buf, out)?;
                    }
                }
            }
            sink.finish(out)?;
            out.flush()?;
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A run's log file, if it is a regular file: a FIFO or a link the agent
/// put in its place is neither waited on nor followed.
fn open_log(path: &Path) -> Option<std::fs::File> {
    let f = crate::tree::fsx::open_nofollow(path).ok()?;
    f.metadata().ok()?.is_file().then_some(f)
}

/// The renderer of the CLI kind of the agent that ran `name` last, if that
/// kind writes JSON events.
fn renderer_for(
    root: &Path,
    layout: &crate::tree::layout::Layout,
    st: State,
    name: &str,
) -> Option<crate::adapter::render::Renderer> {
    use crate::adapter::{Kind, render};
    let from_record = || {
        let b = std::fs::read(layout.record_file(st, name)).ok()?;
        serde_json::from_slice::<crate::model::record::ResultRecord>(&b)
            .ok()?
            .agent
    };
    let state = books::read_state(layout, name);
    let agent = state
        .run
        .map(|r| r.agent)
        .or_else(|| state.history.last().map(|a| a.agent.clone()))
        .or_else(from_record)?;
    let config = crate::parse::config::Config::load(root).ok()?;
    let a = config.agents.get(&agent)?;
    let kind = Kind::from_name(&a.kind, a.output.clone());
    render::renders(&kind).then(|| render::Renderer::new(kind))
}

/// Where `logs` writes: stdout through the renderer, line by line (a line
/// not finished yet waits for its end); stderr as it is.
struct Sink {
    renderer: Option<crate::adapter::render::Renderer>,
    partial: Vec<u8>,
}

impl Sink {
    fn write(&mut self, stdout: bool, buf: &[u8], out: &mut impl Write) -> std::io::Result<()> {
        let Some(r) = self.renderer.as_mut().filter(|_| stdout) else {
            return out.write_all(buf);
        };
        self.partial.extend_from_slice(buf);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            out.write_all(r.line(&text).as_bytes())?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let Some(r) = self.renderer.as_mut() else {
            return Ok(());
        };
        if !self.partial.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            out.write_all(r.line(&text).as_bytes())?;
        }
        out.write_all(r.finish().as_bytes())
    }
}

/// Outcome of `wait`: how many completed and failed.
#[derive(Debug, Default, serde::Serialize)]
struct Waited {
    completed: Vec<String>,
    failed: Vec<String>,
    timed_out: bool,
    /// Tasks left in `pending/` that wait for a task nobody submitted
    /// (a wait for the whole queue ends there; exit 1).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stranded: Vec<String>,
}

/// `wait` found nobody to finish the tasks: its own exit code
/// ([`NoSupervisor::EXIT`]), so that a script can tell it from a failed task.
#[derive(Debug, thiserror::Error)]
#[error(
    "no supervisor is running on this tree, so nothing will finish; \
     start one with `mailroom run` or `mailroom start` (see `mailroom status`)"
)]
pub struct NoSupervisor;

impl NoSupervisor {
    /// sysexits' EX_UNAVAILABLE: the service the command needs is not there.
    pub const EXIT: u8 = 69;
}

/// How long nobody may work on what a command waits for before it says so
/// ([`NoSupervisor`]): a supervisor just starting gets that long to write
/// its first heartbeat.
const NOBODY_GRACE: Duration = Duration::from_secs(3);

/// Since when nobody works on what `wait` or `logs -f` waits for.
#[derive(Default)]
struct Nobody(Option<Instant>);

impl Nobody {
    /// Notes whether somebody works on it now; [`NoSupervisor`] once
    /// nobody has for [`NOBODY_GRACE`] in a row.
    fn check(&mut self, somebody: bool) -> Result<(), NoSupervisor> {
        if somebody {
            self.0 = None;
        } else if self.0.get_or_insert_with(Instant::now).elapsed() >= NOBODY_GRACE {
            return Err(NoSupervisor);
        }
        Ok(())
    }
}

/// `mailroom wait [NAME...]`: until the named tasks (or the whole queue) are
/// finished. Exit 0 when all completed, 1 when any failed, 124 on timeout;
/// [`NoSupervisor`] when no supervisor runs on the tree (for 3 s).
pub fn wait(
    root: &Path,
    names: &[String],
    timeout: Option<Duration>,
    json: bool,
) -> Result<ExitCode> {
    let layout = open_tree(root)?;
    for n in names {
        check_task_name(n)?;
        if layout.locate(n).is_none() {
            bail!("no task named `{n}`");
        }
    }
    let start = Instant::now();
    let failed_before: std::collections::HashSet<String> = if names.is_empty() {
        books::list(&layout, State::Failed)?
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    } else {
        Default::default()
    };
    let tty = std::io::stderr().is_terminal() && !json;
    let mut res = Waited::default();
    // Nobody to do the work: say so rather than wait forever.
    let mut nobody = Nobody::default();
    // A pause makes a wait look hung: said once, when it holds.
    let mut told_paused = false;
    loop {
        // What is left waits, every one of them, for a task nobody
        // submitted, and nothing runs that could submit it: that will not
        // finish by itself (`run --exit-when-idle` does not wait for it
        // either). Those tasks, and what each waits for.
        let stranded = || {
            let (pending, assigned) = (
                books::count(&layout, State::Pending),
                books::count(&layout, State::Assigned),
            );
            let done = pending + assigned == 0;
            let left = (pending > 0 && assigned == 0)
                .then(|| waiting_forever(&layout, pending))
                .flatten();
            (done, left)
        };
        let line = |(n, on): (String, String)| format!("{n} (waiting for {on})");
        let (done, total) = if names.is_empty() {
            let (empty, left) = stranded();
            let done = empty || left.is_some();
            res.stranded = left.unwrap_or_default().into_iter().map(line).collect();
            (usize::from(done), 1)
        } else {
            let open: Vec<&String> = names
                .iter()
                .filter(|n| {
                    !matches!(
                        layout.locate(n),
                        Some((State::Completed | State::Failed, _, _))
                    )
                })
                .collect();
            // By the same rule: those of the named tasks left, when all are.
            let mine = (!open.is_empty())
                .then(|| stranded().1)
                .flatten()
                .map(|left| {
                    left.into_iter()
                        .filter(|(n, _)| open.contains(&n))
                        .collect::<Vec<_>>()
                })
                .filter(|mine| mine.len() == open.len());
            match mine {
                Some(mine) => {
                    res.stranded = mine.into_iter().map(line).collect();
                    (names.len(), names.len())
                }
                None => (names.len() - open.len(), names.len()),
            }
        };
        if done < total {
            nobody.check(crate::tree::registry::any_alive(&layout))?;
            if !told_paused {
                let agents = books::paused_agents(&layout);
                if books::exists(&layout.pause_file(None)) {
                    told_paused = true;
                    eprintln!(
                        "mailroom: claiming is paused on this tree (tasks/control/pause); \
                         pending tasks wait until `mailroom resume`"
                    );
                } else if !agents.is_empty() {
                    told_paused = true;
                    eprintln!(
                        "mailroom: paused agents: {} (their pending tasks wait until \
                         `mailroom resume --agent NAME`)",
                        agents.join(", ")
                    );
                }
            }
        }
        if tty && names.len() > 1 {
            let bar = 30 * done / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total} finished",
                "#".repeat(bar),
                ".".repeat(30 - bar)
            );
        }
        if done == total {
            break;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            res.timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if tty && names.len() > 1 {
        eprintln!();
    }
    if names.is_empty() {
        res.failed = books::list(&layout, State::Failed)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !failed_before.contains(n))
            .collect();
    } else {
        for n in names {
            // Completed as a commit leaves it (a file an agent planted in
            // completed/ completes nothing); anything else finished failed,
            // under a clash name when its place was taken.
            match layout.locate(n) {
                Some((State::Completed, _, _)) if books::is_completed(&layout, n) => {
                    res.completed.push(n.clone())
                }
                Some((State::Completed | State::Failed, _, _)) => {
                    res.failed.push(match books::diverted_as(&layout, n) {
                        Some(c) => format!("{n} (filed as {c})"),
                        None => n.clone(),
                    })
                }
                _ => {}
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&res)?);
    } else {
        for n in &res.failed {
            eprintln!("failed: {n}");
        }
        if !res.stranded.is_empty() {
            eprintln!(
                "mailroom: what is left waits for tasks nobody submitted: {}",
                res.stranded.join(", ")
            );
        }
        if res.timed_out {
            eprintln!("mailroom: wait timed out");
        }
    }
    Ok(if res.timed_out {
        ExitCode::from(124)
    } else if res.failed.is_empty() && res.stranded.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// When every task in `pending/` waits, directly or through other pending
/// tasks, for a name that is in no state at all (nobody submitted it):
/// those tasks, with the name each waits for, by name. None when one of
/// them could still run, or when there are too many to read at each look.
fn waiting_forever(
    layout: &crate::tree::layout::Layout,
    pending: usize,
) -> Option<Vec<(String, String)>> {
    use std::collections::HashMap;
    let files = books::list(layout, State::Pending).ok()?;
    // The same files as counted: none claimed (nor added) meanwhile.
    if files.is_empty() || files.len() > 10_000 || files.len() != pending {
        return None;
    }
    let mut after: HashMap<String, Vec<String>> = HashMap::new();
    for (name, ext) in &files {
        let path = layout.task_file(State::Pending, name, ext);
        let t = books::parsed_task(&path, name, ext, 1 << 20)?;
        after.insert(name.clone(), t.after);
    }
    // The first name each pending task is stuck on, through pending ones.
    fn stuck_on(
        n: &str,
        after: &HashMap<String, Vec<String>>,
        layout: &crate::tree::layout::Layout,
        seen: &mut Vec<String>,
    ) -> Option<String> {
        if seen.iter().any(|s| s == n) {
            return None; // a cycle: the supervisor files it
        }
        seen.push(n.to_owned());
        let deps = after.get(n)?;
        deps.iter().find_map(|d| {
            if books::is_completed(layout, d) {
                None
            } else if after.contains_key(d) {
                stuck_on(d, after, layout, seen)
            } else if layout.locate(d).is_none() && books::diverted_as(layout, d).is_none() {
                // (A dependency filed under a clash name failed: the
                // supervisor fails the task, it does not wait.)
                Some(d.clone())
            } else {
                None
            }
        })
    }
    let mut out = Vec::new();
    for name in after.keys() {
        let on = stuck_on(name, &after, layout, &mut Vec::new())?;
        out.push((name.clone(), on));
    }
    out.sort();
    // Still nothing running: a claim made while the files were read would
    // be work under way.
    (books::count(layout, State::Assigned) == 0).then_some(out)
}

/// After `add --wait`: the task's output on stdout, its error on stderr, and
/// its outcome as the exit code.
pub fn report(root: &Path, name: &str) -> Result<ExitCode> {
    let layout = open_tree(root)?;
    let Some((st, _, _)) = layout.locate(name) else {
        bail!("`{name}` vanished");
    };
    let (out, _) = layout
        .last_attempt(st, name)
        .map(|(_, d)| crate::tree::context::read_output(&d))
        .unwrap_or_default();
    print!("{out}");
    if st == State::Failed {
        let rec = std::fs::read(layout.record_file(State::Failed, name))
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::model::record::ResultRecord>(&b).ok());
        if let Some(e) = rec.and_then(|r| r.error) {
            eprintln!("mailroom: {name} failed: {e}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct AgentRow {
    name: String,
    running: usize,
    max_instances: usize,
    paused: bool,
    cooling_until: Option<String>,
    completed: u64,
    failed: u64,
}

/// `mailroom agents`: each agent's load, limit, pause, cooldown and record.
pub fn agents(root: &Path, json: bool) -> Result<()> {
    let layout = open_tree(root)?;
    let config = Config::load(root).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut running: std::collections::HashMap<String, usize> = Default::default();
    for (n, _) in books::list(&layout, State::Assigned)? {
        if let Some(r) = books::read_state(&layout, &n).run {
            *running.entry(r.agent).or_default() += 1;
        }
    }
    // Each task counts once, as its last run ended (a retried task ran twice).
    let mut last: std::collections::HashMap<String, (String, String)> = Default::default();
    crate::tree::context::each_log_line(&layout, |line| {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let (Some(t), Some(a), Some(s)) = (
                v["task"].as_str(),
                v["agent"].as_str(),
                v["status"].as_str(),
            )
        {
            last.insert(t.to_owned(), (a.to_owned(), s.to_owned()));
        }
    });
    let mut counts: std::collections::HashMap<(String, String), u64> = Default::default();
    for k in last.into_values() {
        *counts.entry(k).or_default() += 1;
    }
    let cooling = books::cooldowns(&layout, false);
    // A pause of the whole tree holds every agent.
    let tree_paused = books::exists(&layout.pause_file(None));
    let rows: Vec<AgentRow> = config
        .agents
        .values()
        .map(|a| {
            let cooling_until = cooling
                .iter()
                .find(|c| c.agent == a.name)
                .map(|c| c.until.clone());
            let n = |s: &str| {
                counts
                    .get(&(a.name.clone(), s.to_owned()))
                    .copied()
                    .unwrap_or(0)
            };
            AgentRow {
                name: a.name.clone(),
                running: running.get(&a.name).copied().unwrap_or(0),
                max_instances: a.max_instances,
                paused: tree_paused || books::exists(&layout.pause_file(Some(&a.name))),
                cooling_until,
                completed: n("completed"),
                failed: n("failed"),
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:>8} {:>10} {:>10}  state",
        "agent", "running", "completed", "failed"
    );
    for r in rows {
        let state = match (&r.cooling_until, r.paused) {
            (Some(u), _) => format!("cooling down until {u}"),
            (None, true) if tree_paused => "paused (the whole tree: `mailroom resume`)".into(),
            (None, true) => "paused".into(),
            _ => "ready".into(),
        };
        println!(
            "{:<16} {:>4}/{:<3} {:>10} {:>10}  {state}",
            r.name, r.running, r.max_instances, r.completed, r.failed
        );
    }
    Ok(())
}
