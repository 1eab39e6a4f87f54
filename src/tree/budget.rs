//! Budgets: what agents spent, summed from `context/completed_tasks.jsonl`
//! (each line carries a finished task's usage, every attempt's summed, its
//! agent, the time it finished and the first task of its tree), and whether
//! an agent's `budget:` is used up for today (UTC) or for a tree of
//! follow-ups. A task's usage counts for the agent that finished it, on the
//! day it finished; tasks not finished yet count once they are.
//!
//! The [`Ledger`] reads the log incrementally: a supervisor refreshes it
//! before it schedules, and reads only the lines appended since.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use crate::adapter::Usage;
use crate::parse::config::Budget;
use crate::tree::context::MAX_LOG_LINE;
use crate::tree::layout::Layout;

/// Spent money and tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    pub usd: f64,
    pub tokens: u64,
}

impl Spent {
    fn add(&mut self, u: &Usage) {
        self.usd += u.cost_usd.unwrap_or(0.0);
        // The log is in `context/`, where agents write: a forged count near
        // `u64::MAX` must neither wrap the sum back under a budget nor panic.
        self.tokens = self.tokens.saturating_add(tokens(u));
    }
}

/// The tokens a budget counts: every token the CLI reported (input, output,
/// cache reads and cache writes).
pub fn tokens(u: &Usage) -> u64 {
    [
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
    ]
    .iter()
    .fold(0u64, |sum, t| sum.saturating_add(t.unwrap_or(0)))
}

/// How much of the log [`Ledger::refresh`] reads at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Spending by agent and UTC day, and by agent and tree.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Bytes of the log read so far (a shorter log was replaced: read again).
    offset: u64,
    /// A line not yet finished by its writer.
    partial: Vec<u8>,
    /// Inside a line longer than [`MAX_LOG_LINE`], skipped to its end.
    skipping: bool,
    day: HashMap<(String, String), Spent>,
    tree: HashMap<(String, String), Spent>,
}

impl Ledger {
    /// Reads what was appended to the log since the last refresh.
    pub fn refresh(&mut self, layout: &Layout) {
        let Some((mut f, meta)) = crate::tree::context::open_log(layout) else {
            return;
        };
        let len = meta.len();
        if len < self.offset {
            *self = Ledger::default();
        }
        if len == self.offset || f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        // In pieces: the log of a long-lived tree (or one an agent padded)
        // is never held whole, and a "line" longer than any record is
        // skipped up to its end rather than kept growing.
        let mut rest = f.take(len - self.offset);
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match rest.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.offset += n as u64;
            let mut piece = &buf[..n];
            while let Some(i) = piece.iter().position(|b| *b == b'\n') {
                if self.skipping {
                    self.skipping = false;
                } else {
                    self.partial.extend_from_slice(&piece[..i]);
                    let line = std::mem::take(&mut self.partial);
                    self.add_line(&String::from_utf8_lossy(&line));
                }
                piece = &piece[i + 1..];
            }
            if !self.skipping {
                self.partial.extend_from_slice(piece);
                if self.partial.len() > MAX_LOG_LINE {
                    self.partial = Vec::new();
                    self.skipping = true;
                }
            }
        }
    }

    fn add_line(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        let Some(u) = serde_json::from_value::<Option<Usage>>(v["usage"].clone())
            .ok()
            .flatten()
        else {
            return;
        };
        let agent = v["agent"].as_str().unwrap_or("").to_owned();
        let day = v["finished_at"]
            .as_str()
            .and_then(|s| s.get(..10))
            .unwrap_or("")
            .to_owned();
        let tree = v["tree"]
            .as_str()
            .or_else(|| v["task"].as_str())
            .unwrap_or("")
            .to_owned();
        self.day.entry((agent.clone(), day)).or_default().add(&u);
        self.tree.entry((agent, tree)).or_default().add(&u);
    }

    /// What `agent` spent on UTC day `day` (`2026-12-01`).
    pub fn on_day(&self, agent: &str, day: &str) -> Spent {
        self.day
            .get(&(agent.to_owned(), day.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// What `agent` spent on the tree whose first task is `tree`.
    pub fn on_tree(&self, agent: &str, tree: &str) -> Spent {
        self.tree
            .get(&(agent.to_owned(), tree.to_owned()))
            .copied()
            .unwrap_or_default()
    }
}

/// Why `agent`'s daily budget stops it, if it does.
pub fn daily_reason(agent: &str, b: &Budget, s: Spent) -> Option<String> {
    reason(
        agent,
        "daily",
        b.daily_usd,
        b.daily_tokens,
        s,
        "today (UTC)",
    )
}

/// Why the tree's budget on `agent` stops the tree's tasks, if it does.
pub fn tree_reason(agent: &str, tree: &str, b: &Budget, s: Spent) -> Option<String> {
    reason(
        agent,
        "tree",
        b.tree_usd,
        b.tree_tokens,
        s,
        &format!("on the tree of `{tree}`"),
    )
}

fn reason(
    agent: &str,
    kind: &str,
    usd: Option<f64>,
    tokens: Option<u64>,
    s: Spent,
    when: &str,
) -> Option<String> {
    if let Some(max) = usd
        && s.usd >= max
    {
        return Some(format!(
            "agent {agent} reached its budget {kind}_usd {max} (spent {:.4} USD {when})",
            s.usd
        ));
    }
    if let Some(max) = tokens
        && s.tokens >= max
    {
        return Some(format!(
            "agent {agent} reached its budget {kind}_tokens {max} (spent {} tokens {when})",
            s.tokens
        ));
    }
    None
}

/// Today as the log's times write it (`2026-12-01`), and the next UTC midnight.
pub fn today(now: std::time::SystemTime) -> (String, std::time::SystemTime) {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let midnight =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs((secs / 86400 + 1) * 86400);
    let day = crate::model::record::ts(now)
        .get(..10)
        .unwrap_or("")
        .to_owned();
    (day, midnight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(agent: &str, day: &str, tree: Option<&str>, usd: f64, tok: u64) -> String {
        let mut v = serde_json::json!({
            "task": "t", "agent": agent, "finished_at": format!("{day}T10:00:00.000Z"),
            "usage": {"cost_usd": usd, "input_tokens": tok, "output_tokens": 1},
        });
        if let Some(t) = tree {
            v["tree"] = t.into();
        }
        format!("{v}\n")
    }

    #[test]
    fn the_ledger_sums_by_day_and_tree_and_reads_only_what_was_appended() {
        let d = std::env::temp_dir().join(format!("mailroom-budget-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let layout = Layout::new(&d);
        std::fs::create_dir_all(&layout.context).unwrap();
        let log = layout.context.join(crate::tree::context::JSONL);
        let mut text = line("a", "2026-12-01", Some("r"), 0.5, 99)
            + &line("a", "2026-12-01", Some("r"), 0.25, 9)
            + &line("a", "2026-12-02", None, 1.0, 0)
            + &line("b", "2026-12-01", Some("r"), 7.0, 0);
        // Half a line: its writer has not finished it.
        let next = line("a", "2026-12-01", Some("q"), 2.0, 0);
        text.push_str(&next[..10]);
        std::fs::write(&log, &text).unwrap();
        let mut l = Ledger::default();
        l.refresh(&layout);
        assert_eq!(
            l.on_day("a", "2026-12-01"),
            Spent {
                usd: 0.75,
                tokens: 110
            }
        );
        assert_eq!(l.on_tree("a", "r").usd, 0.75);
        // A line without a tree counts for its own task's tree.
        assert_eq!(l.on_tree("a", "t").usd, 1.0);
        std::fs::write(&log, text + &next[10..]).unwrap();
        l.refresh(&layout);
        assert_eq!(l.on_day("a", "2026-12-01").usd, 2.75);
        assert_eq!(l.on_tree("a", "q").usd, 2.0);
        // A "line" of 3 MiB, written by anything but a supervisor, is
        // skipped whole; the lines after it count.
        let big = "x".repeat(3 * MAX_LOG_LINE);
        let grown = std::fs::read_to_string(&log).unwrap() + &big + "\n";
        std::fs::write(
            &log,
            grown.clone() + &line("a", "2026-12-01", Some("q"), 1.0, 0),
        )
        .unwrap();
        l.refresh(&layout);
        assert!(l.partial.is_empty() && !l.skipping);
        assert_eq!(l.on_tree("a", "q").usd, 3.0);
        // A log replaced by a shorter one is read again.
        std::fs::write(&log, line("a", "2026-12-01", None, 0.1, 0)).unwrap();
        l.refresh(&layout);
        assert_eq!(l.on_day("a", "2026-12-01").usd, 0.1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_budget_stops_at_its_limit_and_says_why() {
        let b = Budget {
            daily_usd: Some(1.0),
            tree_tokens: Some(100),
            ..Budget::default()
        };
        let s = |usd, tokens| Spent { usd, tokens };
        assert_eq!(daily_reason("a", &b, s(0.99, 10_000)), None);
        let r = daily_reason("a", &b, s(1.0, 0)).unwrap();
        assert!(
            r.contains("daily_usd 1") && r.contains("today (UTC)"),
            "{r}"
        );
        assert_eq!(tree_reason("a", "r", &b, s(50.0, 99)), None);
        let r = tree_reason("a", "r", &b, s(0.0, 100)).unwrap();
        assert!(r.contains("tree_tokens 100") && r.contains("`r`"), "{r}");
        assert_eq!(
            daily_reason("a", &Budget::default(), s(1e9, u64::MAX)),
            None
        );
    }

    #[test]
    fn today_is_the_utc_date_and_midnight_the_next() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86400 * 3 + 5);
        let (d, m) = today(t);
        assert_eq!(d, "1970-01-04");
        assert_eq!(
            m,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(86400 * 4)
        );
    }
}
