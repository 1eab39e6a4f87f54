//! `mailroom show`: one task, its record, route, dependencies, parent and children; `--prompt`.

use crate::model::record::ResultRecord;
use crate::parse::config::Config;
use crate::parse::task;
use crate::tree::books;
use crate::tree::fsx;
use crate::tree::layout::{Layout, State};
use anyhow::{Result, bail};
use std::path::Path;

use super::*;

/// The records of a task's earlier rounds (before each `mailroom retry`),
/// oldest first, without duplicates.
pub(super) fn read_rounds(layout: &Layout, name: &str) -> Vec<ResultRecord> {
    let text = std::fs::read_to_string(layout.history_file(name)).unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|l| serde_json::from_str::<ResultRecord>(l).ok())
        .filter(|r| seen.insert(r.run_id.clone()))
        .collect()
}

/// One line for a round: how it ended, on which agent, after how many attempts.
fn round_line(i: usize, r: &ResultRecord) -> String {
    let status = match r.status {
        crate::model::record::Status::Completed => "completed",
        crate::model::record::Status::Failed => "failed",
    };
    let mut s = format!(
        "round {}: {status} ({}) at {}, {} attempt{}",
        i,
        r.outcome.as_str(),
        r.finished_at,
        r.attempts,
        if r.attempts == 1 { "" } else { "s" }
    );
    if let Some(a) = &r.agent {
        s.push_str(&format!(" on {a}"));
    }
    if let Some(e) = &r.error {
        s.push_str(&format!(": {}", printable(e.lines().next().unwrap_or(""))));
    }
    s
}

pub(super) fn read_record(layout: &Layout, st: State, name: &str) -> Option<ResultRecord> {
    books::read_record(layout, st, name)
}

/// `mailroom show --prompt`.
pub fn show_prompt(root: &Path, name: &str) -> Result<()> {
    let layout = open_tree(root)?;
    check_task_name(name)?;
    let Some((st, path, ext)) = layout.locate(name) else {
        bail!("no task named `{name}` in {}", layout.tasks.display());
    };
    let sent = layout
        .last_attempt(st, name)
        .map(|(_, d)| d.join("prompt.md"));
    if let Some(Ok(p)) = sent.map(std::fs::read_to_string) {
        print!("{p}");
        return Ok(());
    }
    let (b, _) = fsx::read_task_file(&path, task::DEFAULT_MAX_TASK_BYTES)
        .map_err(|e| anyhow::anyhow!("{}: {e}", layout.rel(&path)))?;
    let t = task::parse_as(name, ext, &b)
        .map_err(|e| anyhow::anyhow!("{}", e.display_at(&layout.rel(&path))))?;
    let config = Config::load(root).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (route, _) =
        crate::sched::routing::route(&config, &t, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent = &config.agents[&route.agents[0]];
    let root = root.canonicalize()?;
    let p = crate::run::prompt::render(&Layout::new(&root), &config, agent, &t, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "(not sent yet: this is the prompt `{name}` would get now, on agent {})",
        agent.name
    );
    print!("{p}");
    Ok(())
}

/// Tasks whose `parent` is `name`: its recorded follow-ups and children, the
/// files named `<name>.<suffix>` (subtasks), and the tasks whose own file
/// names it as `parent` (what its agent queued with `mailroom add`, which no
/// record lists).
fn children_of(
    layout: &Layout,
    name: &str,
    record: Option<&ResultRecord>,
    st: &crate::model::record::TaskState,
) -> Vec<String> {
    let mut v: Vec<String> = record
        .map(|r| r.followups.iter().chain(&r.children).cloned().collect())
        .unwrap_or_default();
    v.extend(st.children.iter().cloned());
    let prefix = format!("{name}.");
    for s in State::ALL {
        for (n, ext) in books::list(layout, s).unwrap_or_default() {
            if n.starts_with(&prefix) && !n[prefix.len()..].contains('.') && !n.contains(".clash-")
                || names_as_parent(&layout.task_file(s, &n, &ext), &n, &ext, name)
            {
                v.push(n);
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Whether the task file at `path` says `parent: <parent>`. Only a file
/// that mentions the name is parsed: on a long queue most do not.
fn names_as_parent(path: &Path, name: &str, ext: &str, parent: &str) -> bool {
    let Ok((b, _)) = fsx::read_task_file(path, task::DEFAULT_MAX_TASK_BYTES) else {
        return false;
    };
    b.windows(parent.len()).any(|w| w == parent.as_bytes())
        && task::parse_as(name, ext, &b).is_ok_and(|t| t.parent.as_deref() == Some(parent))
}

/// What the dependency `d` of a pending task means for it now ("waiting
/// for d", "... (not submitted)", "dependency d failed"); None once `d`
/// completed.
pub(super) fn dependency_note(layout: &Layout, d: &str) -> Option<String> {
    if books::is_completed(layout, d) {
        return None;
    }
    let active = [State::Pending, State::Assigned]
        .into_iter()
        .any(|s| layout.find(s, d).is_some());
    Some(if layout.find(State::Failed, d).is_some() {
        format!("dependency {d} failed")
    } else if active {
        format!("waiting for {d}")
    } else if let Some(clash) = books::diverted_as(layout, d) {
        format!("dependency {d} failed (filed as {clash})")
    } else if layout.locate(d).is_some() {
        format!("waiting for {d}")
    } else {
        format!("waiting for {d} (not submitted)")
    })
}

/// Text from a task file, a record or an agent's output, made safe for a
/// terminal: control characters other than newline and tab are shown as
/// escapes (`\u{1b}`), so a task cannot move the cursor, retitle the window
/// or hide lines.
pub(super) fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `mailroom show`.
pub fn show(root: &Path, name: &str, json: bool) -> Result<()> {
    let layout = open_tree(root)?;
    check_task_name(name)?;
    let Some((st, path, ext)) = layout.locate(name) else {
        bail!("no task named `{name}` in {}", layout.tasks.display());
    };
    let read = fsx::read_task_file(&path, task::DEFAULT_MAX_TASK_BYTES)
        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned());
    let unread = read.as_ref().err().map(|e| format!("cannot be read: {e}"));
    let content = read.unwrap_or_else(|e| format!("(cannot read: {e})"));
    let record = match st {
        State::Completed | State::Failed => read_record(&layout, st, name),
        _ => None,
    };
    let state_file = books::read_state(&layout, name);
    // A file that cannot be read is said to be so, not parsed (the
    // placeholder shown in its place is no task file).
    let parsed = match unread {
        Some(message) => Err(task::TaskError {
            line: None,
            column: None,
            message,
            key: None,
        }),
        None => task::parse_as(name, ext, content.as_bytes()),
    };
    let output_path = layout.output_file(name);
    let output = fsx::read_tail(&output_path, 4096)
        .ok()
        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
        .or_else(|| {
            // Not merged (yet): the last attempt's, as a merge would take
            // it (the adapter's answer before a CLI's raw JSON on stdout).
            let (_, d) = layout.last_attempt(st, name)?;
            crate::tree::context::OUTPUT_FILES.iter().find_map(|f| {
                fsx::read_tail(&d.join(f), 4096)
                    .ok()
                    .filter(|(b, _)| !b.iter().all(u8::is_ascii_whitespace))
                    .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
            })
        });
    let parent = parsed.as_ref().ok().and_then(|t| t.parent.clone());
    let starts_at = parsed
        .as_ref()
        .ok()
        .filter(|_| st == State::Pending)
        .and_then(|t| own_start(&path, t))
        .map(|(t, why)| (crate::model::record::ts(t), why));
    let rounds = read_rounds(&layout, name);
    let children = children_of(&layout, name, record.as_ref(), &state_file);
    // Who runs it: the run's supervisor (from the state file) and its keeper.
    let run = state_file.run.as_ref().filter(|_| st == State::Assigned);
    let keeper = run.and_then(|r| {
        let id = r.run_id.as_deref()?;
        crate::run::keeper::info(&books::current_run_dir(&layout, name, &state_file), id)
    });
    let running = run.map(|r| {
        let holder = books::run_holder(&layout, name, &state_file);
        let keeper_alive = keeper
            .as_ref()
            .map(|k| crate::run::keeper::alive(k, &books::hostname()));
        serde_json::json!({
            "attempt": r.attempt,
            "agent": r.agent,
            "host": r.host,
            "supervisor_pid": r.supervisor_pid,
            "supervisor_alive": holder.map(|h| h.supervisor_alive),
            "adopted_by": holder.and_then(|h| h.adopted_by),
            "keeper_pid": keeper.as_ref().map(|k| k.pid),
            "keeper_alive": keeper_alive,
            "started_at": r.started_at,
        })
    });
    if json {
        let v = serde_json::json!({
            "name": name,
            "state": st,
            "unfiled": books::unfiled_note(&layout, st, name),
            "parent": parent,
            "children": children,
            "file": layout.rel(&path),
            "starts_at": starts_at.as_ref().map(|(t, _)| t),
            "task": content,
            "valid": parsed.as_ref().err().map(|e| e.to_string()).is_none(),
            "record": record,
            "rounds": rounds,
            "bookkeeping": if state_file.attempts > 0 { Some(&state_file) } else { None },
            "running": running,
            "output_tail": output,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let unfiled = books::unfiled_note(&layout, st, name)
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    println!(
        "name:  {name}\nstate: {}{unfiled}\nfile:  {}",
        st.dir_name(),
        layout.rel(&path)
    );
    // How a finished task ended, at the top (the record follows in full).
    if let Some(r) = &record {
        println!(
            "outcome: {} after {} attempt{}",
            r.outcome.as_str(),
            r.attempts,
            if r.attempts == 1 { "" } else { "s" }
        );
        // A file that did not parse says so below, from its parse.
        if let (Some(e), Ok(_)) = (&r.error, &parsed) {
            println!("error: {}", printable(e.trim_end()));
        }
        if let Some(d) = &r.run_dir {
            println!("last run: {d}/ (prompt.md, stdout.log, stderr.log)");
        }
    }
    if let Some(r) = &running {
        let alive = |v: &serde_json::Value| match v.as_bool() {
            Some(true) => "alive",
            Some(false) => "gone",
            None => "on another host",
        };
        // A run without a keeper (`run_keeper: false`, a version-1 tool, or
        // one whose keeper has not yet said who it is) has no keeper pid.
        let keeper = match r["keeper_pid"].as_u64() {
            Some(pid) => format!("keeper pid {pid} ({})", alive(&r["keeper_alive"])),
            None => "no keeper".into(),
        };
        let adopted = match r["adopted_by"].as_u64() {
            Some(pid) => format!("; adopted by pid {pid}"),
            None => String::new(),
        };
        println!(
            "run:   attempt {} on {} (host {}), supervisor pid {} ({}{adopted}), {keeper}, since {}",
            r["attempt"],
            r["agent"].as_str().unwrap_or("?"),
            r["host"].as_str().unwrap_or("?"),
            r["supervisor_pid"],
            alive(&r["supervisor_alive"]),
            r["started_at"].as_str().unwrap_or("?")
        );
    }
    if let Some(p) = &parent {
        let at = layout
            .locate(p)
            .map(|(s, _, _)| s.dir_name())
            .unwrap_or("not submitted");
        println!("parent: {p} ({at})");
    }
    for c in &children {
        let at = layout
            .locate(c)
            .map(|(s, _, _)| s.dir_name())
            .unwrap_or("?");
        println!("child:  {c} ({at})");
    }
    if let Err(e) = &parsed {
        println!("error: {}", printable(&e.display_at(&layout.rel(&path))));
    }
    // The agent that ran it (its record's), else the one running it now,
    // whatever today's config says; with why each was chosen.
    let ran = record
        .as_ref()
        .and_then(|r| Some((r.agent.as_deref()?, r.agent_reason.as_deref())))
        .or_else(|| run.map(|r| (r.agent.as_str(), r.reason.as_deref())));
    let finished = matches!(st, State::Completed | State::Failed);
    match (ran, &parsed) {
        (Some((agent, Some(why))), _) => println!("agent: {agent} ({why})"),
        (Some((agent, None)), _) => println!("agent: {agent}"),
        (None, Ok(t)) if !t.subtasks.is_empty() => {
            println!("agent: none (a subtask parent runs no agent; its subtasks do)")
        }
        // Filed without a run (invalid, cancelled while pending, ...).
        (None, _) if finished && record.is_some() => println!("agent: none (it ran none)"),
        (None, _) if finished => {}
        (None, Ok(t)) => match Config::load(root) {
            Ok(c) => match crate::sched::routing::route(&c, t, &state_file.excluded_agents) {
                Ok((r, why)) => println!("agent: {} ({why})", r.agents.join(" or ")),
                Err(e) => println!("agent: none: {e}"),
            },
            Err(e) => println!("agent: unknown ({e})"),
        },
        _ => {}
    }
    if let Ok(t) = &parsed
        && st == State::Pending
    {
        for d in &t.after {
            if let Some(note) = dependency_note(&layout, d) {
                println!("{note}");
            }
        }
    }
    if st == State::Pending {
        if let Some((t, why)) = &starts_at {
            println!("held: its {why} holds it until {t}");
        }
        for why in held_because(root, &layout, &path, parsed.as_ref().ok(), &state_file) {
            println!("held: {why}");
        }
    }
    if !rounds.is_empty() {
        for (i, r) in rounds.iter().enumerate() {
            println!("{}", round_line(i + 1, r));
        }
        match &record {
            Some(r) => println!("{} (this one)", round_line(rounds.len() + 1, r)),
            None => println!("round {}: {} (this one)", rounds.len() + 1, st.dir_name()),
        }
    }
    if state_file.attempts > 0 {
        // Runs put back through no fault of the task (a shutdown, a usage
        // limit, a run that could not be prepared) do not count against
        // `retries`: say so, or free requeues read as retries used up.
        match state_file.free_attempts {
            0 => println!("attempts: {}", state_file.attempts),
            free => println!(
                "attempts: {} ({free} not counted against retries)",
                state_file.attempts
            ),
        }
        if let Some(nb) = &state_file.not_before {
            println!("next try: {nb}");
        }
        if let Some(e) = &state_file.last_error {
            println!("last error: {}", printable(e));
        }
    }
    println!("\n--- task ---\n{}", printable(content.trim_end()));
    if let Some(r) = &record {
        // JSON escapes C0 controls but not C1 ones (U+009B opens a
        // terminal sequence as ESC [ does) nor DEL: they are made visible.
        println!(
            "\n--- result ---\n{}",
            printable(&serde_json::to_string_pretty(r)?)
        );
    }
    if let Some(o) = output {
        println!("\n--- output (tail) ---\n{}", printable(o.trim_end()));
    }
    Ok(())
}

/// When a task's own `delay:` or `not_before:` lets it start, while that
/// time is still ahead, and which of the two it is ([`task::Task::own_hold`]).
pub(super) fn own_start(path: &Path, t: &task::Task) -> Option<(std::time::SystemTime, String)> {
    let modified = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()?;
    t.own_hold(modified, std::time::SystemTime::now())
}

/// Why a pending task may not start now, beyond its dependencies and its
/// retry time (shown apart): a pause of the tree or of every agent that
/// could take it, cooldowns, a writer that still has the file open, no
/// supervisor at all.
fn held_because(
    root: &Path,
    layout: &Layout,
    path: &Path,
    task: Option<&task::Task>,
    state: &crate::model::record::TaskState,
) -> Vec<String> {
    let mut why = Vec::new();
    if !crate::tree::registry::any_alive(layout) {
        why.push(
            "no supervisor is running on this tree (start one: mailroom run, or mailroom start)"
                .to_owned(),
        );
    }
    if books::exists(&layout.pause_file(None)) {
        why.push("claiming is paused on this tree (mailroom resume)".to_owned());
    }
    if fsx::open_for_writing_elsewhere(path) == Some(true) {
        why.push("a writer still has the file open; it is claimed once closed".to_owned());
    }
    let agents = task
        .and_then(|t| {
            let c = Config::load(root).ok()?;
            crate::sched::routing::route(&c, t, &state.excluded_agents).ok()
        })
        .map(|(r, _)| r.agents)
        .unwrap_or_default();
    let paused = books::paused_agents(layout);
    let cooling = books::cooldowns(layout, false);
    for a in &agents {
        if paused.contains(a) {
            why.push(format!("agent {a} is paused (mailroom resume --agent {a})"));
        }
        if let Some(c) = cooling.iter().find(|c| &c.agent == a) {
            why.push(format!(
                "agent {a} is cooling down until {} ({})",
                c.until,
                printable(&c.message)
            ));
        }
    }
    why
}
