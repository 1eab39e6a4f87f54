//! `mailroom usage`: what the agents' CLIs reported they used (tokens, cost),
//! summed from `context/completed_tasks.jsonl`, by agent, day or task.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::adapter::Usage;

use super::open_tree;

/// How `usage` groups the finished tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Agent,
    Day,
    Task,
}

#[derive(Debug, Default, Serialize)]
struct Row {
    key: String,
    /// Distinct tasks (a task retried or run again counts once).
    tasks: u64,
    /// Times they were filed: each round of a task (`retry` starts a new
    /// one) is a line of the log, with its own usage.
    rounds: u64,
    /// Rounds whose CLI reported any usage at all.
    reported: u64,
    #[serde(skip)]
    seen: std::collections::HashSet<String>,
    #[serde(flatten)]
    usage: Usage,
}

/// Sums the usage of finished tasks, optionally only those finished since
/// `since` (an RFC 3339 time or a date such as 2026-12-01).
pub fn usage(root: &Path, by: By, since: Option<&str>, json: bool) -> Result<()> {
    let layout = open_tree(root)?;
    let since = match since {
        None => None,
        Some(s) => Some(parse_since(s)?),
    };
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut total = Row {
        key: "total".into(),
        ..Row::default()
    };
    crate::tree::context::each_log_line(&layout, |line| {
        if line.trim().is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        let finished = v["finished_at"].as_str().unwrap_or("");
        if since.as_deref().is_some_and(|s| finished < s) {
            return;
        }
        let key = match by {
            By::Agent => v["agent"].as_str().unwrap_or("(none)").to_owned(),
            By::Day => finished.get(..10).unwrap_or("?").to_owned(),
            By::Task => v["task"].as_str().unwrap_or("?").to_owned(),
        };
        let u: Option<Usage> = serde_json::from_value(v["usage"].clone()).ok().flatten();
        let row = rows.entry(key.clone()).or_insert_with(|| Row {
            key,
            ..Row::default()
        });
        let task = v["task"].as_str().unwrap_or("?");
        for row in [row, &mut total] {
            row.rounds += 1;
            if row.seen.insert(task.to_owned()) {
                row.tasks += 1;
            }
            if let Some(u) = &u {
                row.reported += 1;
                row.usage.add(u);
            }
        }
    });
    let mut out: Vec<Row> = rows.into_values().collect();
    out.push(total);
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>6} {:>6} {:>12} {:>12} {:>12} {:>10}",
        match by {
            By::Agent => "agent",
            By::Day => "day",
            By::Task => "task",
        },
        "tasks",
        "rounds",
        "input",
        "output",
        "cache read",
        "cost USD"
    );
    for r in &out {
        let n = |x: Option<u64>| x.map_or("-".into(), |v| v.to_string());
        println!(
            "{:<24} {:>6} {:>6} {:>12} {:>12} {:>12} {:>10}",
            r.key,
            r.tasks,
            r.rounds,
            n(r.usage.input_tokens),
            n(r.usage.output_tokens),
            n(r.usage.cache_read_tokens),
            r.usage.cost_usd.map_or("-".into(), |c| if c.abs() >= 1e9 {
                format!("{c:.3e}")
            } else {
                format!("{c:.4}")
            })
        );
    }
    Ok(())
}

/// `--since` checked while the arguments are parsed (a bad one is a usage error).
pub(crate) fn since_arg(s: &str) -> std::result::Result<String, String> {
    parse_since(s)
        .map(|_| s.to_owned())
        .map_err(|_| "give a date (2026-12-01) or a time (2026-12-01T10:00:00Z)".into())
}

/// `--since` as the RFC 3339 prefix records compare with.
fn parse_since(s: &str) -> Result<String> {
    if let Some(t) = crate::model::record::parse_ts(s) {
        return Ok(crate::model::record::ts(t));
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return Ok(format!("{d}T00:00:00.000Z"));
    }
    bail!("`--since {s}`: give a date (2026-12-01) or a time (2026-12-01T10:00:00Z)")
}
