//! The agents page's read model: per agent, the tasks it finished, how many
//! of them succeeded, their median duration and what they cost, in all and
//! per day, from the sums of `context/completed_tasks.jsonl` ([`Ledger`]).
//!
//! A finished task counts for the agent its record names (the last one that
//! ran it), once, however many attempts it took. Days are UTC days, as the
//! log's `finished_at` stamps are.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::adapter::Usage;
use crate::model::record::ts;
use crate::parse::config::Config;
use crate::tree::layout::Layout;

use super::index::Index;
use super::ledger::{DaySums, Ledger, median};

/// Days shown in the per-day series, today included.
pub const DAYS: u64 = 14;

/// One day of one agent's series.
#[derive(Debug, Serialize)]
pub struct Day {
    pub day: String,
    pub tasks: u64,
    pub cost_usd: f64,
}

/// One agent's row.
#[derive(Debug, Serialize)]
pub struct AgentStats {
    pub name: String,
    /// Named in the root's mailroom.yaml (else only seen in the log).
    pub configured: bool,
    pub running: usize,
    pub max: Option<usize>,
    /// Tasks this agent finished (completed or failed).
    pub finished: u64,
    pub completed: u64,
    pub failed: u64,
    /// completed / finished, from 0 to 1.
    pub success_rate: Option<f64>,
    pub median_duration_ms: Option<u64>,
    /// Summed over every finished task.
    pub usage: Usage,
    /// The last [`DAYS`] days, oldest first, days without tasks included.
    pub days: Vec<Day>,
}

/// `/agents` and `/api/agents`.
#[derive(Debug, Serialize)]
pub struct Agents {
    pub agents: Vec<AgentStats>,
    /// The days of each series, oldest first.
    pub days: Vec<String>,
    pub generated_at: String,
}

/// The UTC day of a time: `2026-12-01`.
pub fn day_of(t: SystemTime) -> String {
    ts(t)[..10].to_owned()
}

/// The page.
pub fn agents(index: &Index, ledger: &Ledger, layout: &Layout) -> Agents {
    let now = SystemTime::now();
    let days: Vec<String> = (0..DAYS)
        .rev()
        .map(|k| day_of(now - Duration::from_secs(k * 86_400)))
        .collect();
    let snap = super::view::Snapshot::take(index, layout);
    let running = super::view::running(layout, &snap);
    let config = Config::load(&layout.root).ok();
    ledger.with(layout, |sums| {
        let mut names: std::collections::BTreeSet<String> = sums.agents.keys().cloned().collect();
        if let Some(c) = &config {
            names.extend(c.agents.keys().cloned());
        }
        names.extend(running.iter().filter_map(|r| r.agent.clone()));
        let empty = super::ledger::AgentSums::default();
        let agents = names
            .into_iter()
            .map(|name| {
                let s = sums.agents.get(&name).unwrap_or(&empty);
                let cfg = config.as_ref().and_then(|c| c.agents.get(&name));
                AgentStats {
                    configured: cfg.is_some(),
                    max: cfg.map(|a| a.max_instances),
                    running: running
                        .iter()
                        .filter(|r| r.agent.as_deref() == Some(&name))
                        .count(),
                    finished: s.finished,
                    completed: s.completed,
                    failed: s.finished - s.completed,
                    success_rate: (s.finished > 0).then(|| s.completed as f64 / s.finished as f64),
                    median_duration_ms: median(&s.durations_ms),
                    usage: s.usage.clone(),
                    days: days
                        .iter()
                        .map(|d| {
                            let x = s.days.get(d).cloned().unwrap_or_default();
                            Day {
                                day: d.clone(),
                                tasks: x.tasks,
                                cost_usd: x.usage.cost_usd.unwrap_or(0.0),
                            }
                        })
                        .collect(),
                    name,
                }
            })
            .collect();
        Agents {
            agents,
            days,
            generated_at: ts(now),
        }
    })
}

/// The usage of the tasks finished today (UTC), for the overview.
pub fn today(ledger: &Ledger, layout: &Layout) -> (String, DaySums) {
    let day = day_of(SystemTime::now());
    let d = ledger.with(layout, |s| s.days.get(&day).cloned().unwrap_or_default());
    (day, d)
}
