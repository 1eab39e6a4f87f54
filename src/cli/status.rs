//! `mailroom status`: counts, running tasks, agents, cooldowns.

use crate::tree::books;
use crate::tree::layout::{Layout, State};
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

use super::*;

#[derive(Serialize)]
struct RunningTask {
    name: String,
    agent: Option<String>,
    attempt: Option<u32>,
    pid: Option<u32>,
    host: Option<String>,
    /// The supervisor that started the run, on `host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    supervisor_pid: Option<u32>,
    /// The supervisor whose run it is now (pid, start time): the one that
    /// started it while it lives, else the one that adopted it.
    #[serde(skip)]
    owner: Option<(u32, u64)>,
    started_at: Option<String>,
    /// The run has ended but its commit keeps failing (being retried).
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_error: Option<String>,
    /// Its keeper wrote the run's outcome: it waits for a supervisor to
    /// file it (none runs, or the next one to look has not yet).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ended: bool,
}

#[derive(Serialize)]
struct StatusJson {
    root: String,
    pending: usize,
    running: usize,
    completed: usize,
    failed: usize,
    running_tasks: Vec<RunningTask>,
    /// Pending tasks that failed a run and wait for their next attempt.
    retry_waiting: Vec<String>,
    cooldowns: Vec<crate::model::record::Cooldown>,
    /// `tasks/control/pause` exists: no supervisor claims anything.
    paused: bool,
    /// Agents paused one by one (`tasks/control/pause.<agent>`).
    paused_agents: Vec<String>,
    /// Why the root's mailroom.yaml cannot be used (running supervisors keep
    /// the configuration they had).
    #[serde(skip_serializing_if = "Option::is_none")]
    config_error: Option<String>,
    /// Supervisors in `tasks/supervisors/`, each with whether it is alive.
    supervisors: Vec<SupervisorJson>,
    /// Files in `tasks/pending/` whose names no supervisor claims
    /// (`task.YAML`, `task.txt`): they wait there for ever.
    ignored_in_pending: Vec<String>,
    /// Budgets used up (`budget:` of an agent): the agent paused for the day,
    /// or a tree whose tasks for that agent wait.
    over_budget: Vec<OverBudget>,
    /// The tree's file system has no block (or inode) left for this user.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disk_full: bool,
}

#[derive(Serialize)]
struct OverBudget {
    agent: String,
    /// `daily` or `tree`.
    scope: &'static str,
    /// The first task of the tree (scope `tree`).
    #[serde(skip_serializing_if = "Option::is_none")]
    tree: Option<String>,
    /// Pending tasks of that tree (scope `tree`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    waiting: Vec<String>,
    /// When a daily budget renews: the next UTC midnight.
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
    reason: String,
}

/// The budgets that are used up, by the tree's log of finished tasks.
fn over_budget(layout: &Layout, config: Option<&crate::parse::config::Config>) -> Vec<OverBudget> {
    use crate::tree::budget;
    let Some(config) = config else {
        return Vec::new();
    };
    let mut v = Vec::new();
    let budgeted =
        |a: &crate::parse::config::Agent| a.budget != crate::parse::config::Budget::default();
    if !config.agents.values().any(budgeted) {
        return v;
    }
    let mut ledger = budget::Ledger::default();
    ledger.refresh(layout);
    let (day, midnight) = budget::today(std::time::SystemTime::now());
    let mut trees: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    if config
        .agents
        .values()
        .any(|a| a.budget.tree_usd.is_some() || a.budget.tree_tokens.is_some())
    {
        for (n, _) in books::list(layout, State::Pending).unwrap_or_default() {
            let (root, _) = crate::tree::outbox::tree_root(layout, &n, config.max_tree_depth);
            trees.entry(root).or_default().push(n);
        }
    }
    for (name, a) in &config.agents {
        if let Some(reason) = budget::daily_reason(name, &a.budget, ledger.on_day(name, &day)) {
            v.push(OverBudget {
                agent: name.clone(),
                scope: "daily",
                tree: None,
                waiting: Vec::new(),
                until: Some(crate::model::record::ts(midnight)),
                reason,
            });
        }
        for (tree, waiting) in &trees {
            let spent = ledger.on_tree(name, tree);
            if let Some(reason) = budget::tree_reason(name, tree, &a.budget, spent) {
                v.push(OverBudget {
                    agent: name.clone(),
                    scope: "tree",
                    tree: Some(tree.clone()),
                    waiting: waiting.clone(),
                    until: None,
                    reason,
                });
            }
        }
    }
    v
}

#[derive(Serialize)]
struct SupervisorJson {
    #[serde(flatten)]
    heartbeat: crate::tree::registry::Heartbeat,
    alive: bool,
    /// For a live one: how long since its last beat, when that is more
    /// than [`STALE_AFTER`](crate::tree::registry::STALE_AFTER): its
    /// process is there but does not beat (stopped with SIGSTOP, hung, or
    /// stalled on its disk), and its tasks wait. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    silent_for_secs: Option<u64>,
}

fn running_tasks(layout: &Layout) -> Vec<RunningTask> {
    books::list(layout, State::Assigned)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| {
            let st = books::read_state(layout, &name);
            let holder = books::run_holder(layout, &name, &st);
            let commit_error = st.commit_error;
            let r = st.run;
            let owner = r.as_ref().and_then(|r| match &holder {
                Some(h) if h.supervisor_alive => Some((r.supervisor_pid, r.supervisor_start)),
                Some(h) => h
                    .adopted_by
                    .and_then(|p| Some((p, books::proc_start_time(p)?))),
                // Another host's: as its state names it.
                None => Some((r.supervisor_pid, r.supervisor_start)),
            });
            // The agent's process group, found by its MAILROOM_* environment
            // (its keeper, in a group of its own, carries it too: not that one).
            let attempt_dir = layout.last_attempt(State::Assigned, &name).map(|(_, d)| d);
            let keeper = attempt_dir
                .as_ref()
                .and_then(|dir| crate::run::keeper::info_any(dir))
                .map(|k| k.pid);
            let ended =
                attempt_dir.is_some_and(|d| d.join(crate::run::keeper::OUTCOME_FILE).is_file());
            let pid = layout.root.canonicalize().ok().and_then(|root| {
                crate::run::process::find_agent_groups(&root, &name)
                    .into_iter()
                    .map(|g| g.0)
                    .find(|pg| Some(*pg) != keeper)
            });
            RunningTask {
                name,
                agent: r.as_ref().map(|r| r.agent.clone()),
                attempt: r.as_ref().map(|r| r.attempt),
                pid,
                host: r.as_ref().map(|r| r.host.clone()),
                supervisor_pid: r.as_ref().map(|r| r.supervisor_pid),
                owner,
                started_at: r.map(|r| r.started_at),
                commit_error,
                ended,
            }
        })
        .collect()
}

/// Pending tasks in a retry backoff. Only tasks that ran have state files
/// (in `assigned/`), so this costs nothing for a long queue of fresh tasks.
fn retry_waiting(layout: &Layout) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&layout.assigned)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".state.json")
                        .map(str::to_owned)
                })
                .filter(|n| layout.find(State::Pending, n).is_some())
                .filter(|n| super::list::retry_at(layout, n).is_some())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `mailroom status`.
pub fn status(root: &Path, json: bool) -> Result<()> {
    let layout = open_tree(root)?;
    let config = crate::parse::config::Config::load(root);
    let (pending, ignored_in_pending) = books::count_pending(&layout);
    let now = std::time::SystemTime::now();
    let s = StatusJson {
        root: root
            .canonicalize()
            .unwrap_or_else(|_| root.to_path_buf())
            .display()
            .to_string(),
        pending,
        ignored_in_pending,
        running: books::count(&layout, State::Assigned),
        completed: books::count(&layout, State::Completed),
        failed: books::count(&layout, State::Failed),
        running_tasks: running_tasks(&layout),
        retry_waiting: retry_waiting(&layout),
        cooldowns: books::cooldowns(&layout, false),
        paused: books::exists(&layout.pause_file(None)),
        paused_agents: books::paused_agents(&layout),
        over_budget: over_budget(&layout, config.as_ref().ok()),
        config_error: config.as_ref().err().map(|e| e.to_string()),
        supervisors: crate::tree::registry::list(&layout)
            .into_iter()
            .map(|(heartbeat, alive)| {
                let silent_for_secs = crate::tree::registry::beat_age(&heartbeat, now)
                    .filter(|age| alive && *age > crate::tree::registry::STALE_AFTER)
                    .map(|age| age.as_secs());
                SupervisorJson {
                    heartbeat,
                    alive,
                    silent_for_secs,
                }
            })
            .collect(),
        disk_full: crate::tree::fsx::no_space_left(&layout.tasks),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{} pending, {} running, {} completed, {} failed",
        s.pending, s.running, s.completed, s.failed
    );
    if !s.retry_waiting.is_empty() {
        println!(
            "  {} waiting for a retry: {}",
            s.retry_waiting.len(),
            s.retry_waiting.join(", ")
        );
    }
    if let Some(e) = &s.config_error {
        println!("  config invalid: {e} (supervisors keep their previous configuration)");
    }
    if !s.ignored_in_pending.is_empty() {
        let n = s.ignored_in_pending.len();
        let shown: Vec<String> = s
            .ignored_in_pending
            .iter()
            .take(5)
            .map(|f| f.escape_debug().to_string())
            .collect();
        println!(
            "  {n} file{} in tasks/pending/ never claimed (task files end in .yaml, .yml or .md): {}{}",
            if n == 1 { "" } else { "s" },
            shown.join(", "),
            if n > 5 { ", …" } else { "" }
        );
    }
    if s.disk_full {
        println!(
            "  the file system of this tree is full: runs cannot be prepared nor tasks filed \
             until space is freed (nothing is lost; they go on then)"
        );
    }
    let live = s.supervisors.iter().filter(|v| v.alive).count();
    if live == 0 {
        println!("  no supervisor is running on this tree (`mailroom run` or `mailroom start`)");
    }
    // The live ones first; the gone ones after, a few by name (a supervisor
    // restarted many times leaves one entry each, pruned after an hour).
    const GONE_SHOWN: usize = 3;
    let gone = s.supervisors.len() - live;
    let ordered = s
        .supervisors
        .iter()
        .filter(|v| v.alive)
        .chain(s.supervisors.iter().filter(|v| !v.alive).take(GONE_SHOWN));
    for v in ordered {
        let h = &v.heartbeat;
        if v.alive {
            // Another tool's heartbeat names itself in `version`.
            let tool = if h.version.starts_with(|c: char| c.is_ascii_digit()) {
                format!("mailroom {}", h.version)
            } else {
                h.version.clone()
            };
            // Counted in the list below, read now (the heartbeat's count
            // is up to 5 s old, and said otherwise while a task starts).
            let running = s
                .running_tasks
                .iter()
                .filter(|r| {
                    r.host.as_deref() == Some(h.host.as_str()) && r.owner == Some((h.pid, h.start))
                })
                .count();
            println!(
                "  supervisor {}:{} ({tool}) since {}, {running} running, last beat {}",
                h.host, h.pid, h.started_at, h.last_beat
            );
            if let Some(secs) = v.silent_for_secs {
                println!(
                    "    not responding: no beat for {} (its process is there: stopped, as by \
                     SIGSTOP or a debugger, hung, or stalled on its disk); its tasks wait",
                    humantime::format_duration(std::time::Duration::from_secs(secs))
                );
            }
            if let Some(url) = &h.dashboard {
                println!("    dashboard on {url}");
            }
            // Up to a beat old: one that has ended is not said.
            if let Some(held) = h.claims_held.as_ref().filter(|held| {
                crate::model::record::parse_ts(&held.until)
                    .is_none_or(|t| t > std::time::SystemTime::now())
            }) {
                println!("    no new claims until {}: {}", held.until, held.why);
            }
        } else {
            println!(
                "  supervisor {}:{} is gone (last beat {}); its runs are adopted or recovered by the next one",
                h.host, h.pid, h.last_beat
            );
        }
    }
    if gone > GONE_SHOWN {
        println!(
            "  and {} more supervisors gone (`mailroom status --json` lists them; each is \
             forgotten an hour after its last beat)",
            gone - GONE_SHOWN
        );
    }
    if s.paused {
        println!("  paused: no new tasks are claimed (`mailroom resume` to go on)");
    }
    for a in &s.paused_agents {
        println!("  agent {a} paused (`mailroom resume --agent {a}`)");
    }
    for r in &s.running_tasks {
        if r.attempt.is_none() && r.commit_error.is_none() && !r.ended {
            // In `assigned/` with no run in its state file: being set up,
            // or a run that could not be prepared nor put back.
            println!(
                "  claimed {}  no run recorded: being prepared, or waiting for recovery to put \
                 it back",
                r.name
            );
            continue;
        }
        println!(
            "  running {}  agent={} attempt={} pid={} since {}",
            r.name,
            r.agent.as_deref().unwrap_or("?"),
            r.attempt.map(|a| a.to_string()).unwrap_or("?".into()),
            r.pid.map(|a| a.to_string()).unwrap_or("?".into()),
            r.started_at.as_deref().unwrap_or("?")
        );
        if let Some(e) = &r.commit_error {
            println!("    finished, but its commit keeps failing (retrying): {e}");
        } else if r.ended {
            println!(
                "    finished: its keeper wrote the outcome, which a supervisor files when it \
                 next looks (at its start, or its next rescan)"
            );
        }
    }
    for c in &s.cooldowns {
        println!(
            "  {} cooling down until {} ({})",
            c.agent, c.until, c.message
        );
    }
    for b in &s.over_budget {
        match b.scope {
            "daily" => println!(
                "  {} over budget until {} or a raised budget: {}",
                b.agent,
                b.until.as_deref().unwrap_or("?"),
                b.reason
            ),
            _ => println!(
                "  tree of {} over budget: {}; its tasks for {} wait (raise the budget, or cancel them): {}",
                b.tree.as_deref().unwrap_or("?"),
                b.reason,
                b.agent,
                b.waiting.join(", ")
            ),
        }
    }
    Ok(())
}
