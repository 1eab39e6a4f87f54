//! Metrics in the Prometheus text format, for node_exporter's textfile
//! collector (`metrics_file`): tasks by state, runs by agent and outcome, a
//! run-duration histogram, tokens and cost the CLIs reported, cooldowns, the
//! age of the oldest pending task.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

/// Upper bounds of the run-duration histogram, in seconds.
const BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];

/// What this supervisor counted since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    runs: BTreeMap<(String, String), u64>,
    /// Every attempt that ended (retried and requeued ones too), by agent
    /// and the attempt's own outcome.
    attempts: BTreeMap<(String, String), u64>,
    /// Per agent: bucket counts, sum, count.
    durations: BTreeMap<String, ([u64; BUCKETS.len()], f64, u64)>,
    /// Something changed since the file was last written.
    pub dirty: bool,
}

/// The state of the tree when the file is written.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub pending: usize,
    pub running: usize,
    pub completed: u64,
    pub failed: u64,
    pub running_by_agent: BTreeMap<String, usize>,
    pub cooldowns: BTreeMap<String, SystemTime>,
    pub oldest_pending_age: Option<f64>,
    pub paused: bool,
    /// What this supervisor's runs used, by agent, as their CLIs reported it.
    pub usage: BTreeMap<String, crate::adapter::Usage>,
}

/// One sample per (agent, outcome) of a counter.
fn by_agent_and_outcome(o: &mut String, name: &str, counts: &BTreeMap<(String, String), u64>) {
    for ((a, out), n) in counts {
        let _ = writeln!(
            o,
            "{name}{{agent=\"{}\",outcome=\"{}\"}} {n}",
            esc(a),
            esc(out)
        );
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// A task's last run ended, on `agent`, with `outcome`, after `secs`
    /// seconds: an attempt too.
    pub fn finished(&mut self, agent: &str, outcome: &str, secs: Option<f64>) {
        self.attempt(agent, outcome);
        self.add_runs(agent, outcome, 1);
        if let Some(s) = secs {
            self.observe(agent, s);
        }
    }

    /// An attempt on `agent` ended with `outcome`: the task's last, or one
    /// retried, requeued or cooled down after.
    pub fn attempt(&mut self, agent: &str, outcome: &str) {
        *self
            .attempts
            .entry((agent.to_owned(), outcome.to_owned()))
            .or_default() += 1;
        self.dirty = true;
    }

    /// `n` tasks that ended with `outcome` on `agent`, without durations
    /// (totals read back from the context log, for `mailroom serve`).
    pub fn add_runs(&mut self, agent: &str, outcome: &str, n: u64) {
        if n > 0 {
            *self
                .runs
                .entry((agent.to_owned(), outcome.to_owned()))
                .or_default() += n;
            self.dirty = true;
        }
    }

    /// One run's duration, into `agent`'s histogram.
    pub fn observe(&mut self, agent: &str, secs: f64) {
        let h = self.durations.entry(agent.to_owned()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += secs;
        h.2 += 1;
        self.dirty = true;
    }

    /// The whole file.
    pub fn render(&self, s: &Snapshot) -> String {
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "mailroom_tasks",
            "gauge",
            "Tasks by state (completed and failed: all time, from the context log).",
        );
        for (state, n) in [
            ("pending", s.pending as u64),
            ("running", s.running as u64),
            ("completed", s.completed),
            ("failed", s.failed),
        ] {
            let _ = writeln!(o, "mailroom_tasks{{state=\"{state}\"}} {n}");
        }
        head(
            &mut o,
            "mailroom_agent_running",
            "gauge",
            "Agents running on this supervisor.",
        );
        for (a, n) in &s.running_by_agent {
            let _ = writeln!(o, "mailroom_agent_running{{agent=\"{}\"}} {n}", esc(a));
        }
        head(
            &mut o,
            "mailroom_runs_total",
            "counter",
            "Tasks finished here (their last run), by agent and outcome, since this supervisor started.",
        );
        by_agent_and_outcome(&mut o, "mailroom_runs_total", &self.runs);
        head(
            &mut o,
            "mailroom_attempts_total",
            "counter",
            "Attempts that ended here (retried and requeued ones too), by agent and the attempt's outcome, since this supervisor started.",
        );
        by_agent_and_outcome(&mut o, "mailroom_attempts_total", &self.attempts);
        head(
            &mut o,
            "mailroom_run_duration_seconds",
            "histogram",
            "How long finished runs took.",
        );
        for (a, (counts, sum, count)) in &self.durations {
            for (b, c) in BUCKETS.iter().zip(counts) {
                let _ = writeln!(
                    o,
                    "mailroom_run_duration_seconds_bucket{{agent=\"{}\",le=\"{b}\"}} {c}",
                    esc(a)
                );
            }
            let _ = writeln!(
                o,
                "mailroom_run_duration_seconds_bucket{{agent=\"{}\",le=\"+Inf\"}} {count}",
                esc(a)
            );
            let _ = writeln!(
                o,
                "mailroom_run_duration_seconds_sum{{agent=\"{}\"}} {sum}",
                esc(a)
            );
            let _ = writeln!(
                o,
                "mailroom_run_duration_seconds_count{{agent=\"{}\"}} {count}",
                esc(a)
            );
        }
        head(
            &mut o,
            "mailroom_tokens_total",
            "counter",
            "Tokens the agents' CLIs reported for this supervisor's runs (every attempt), by agent and kind (input, output, cache_read, cache_write).",
        );
        for (a, u) in &s.usage {
            for (kind, n) in [
                ("input", u.input_tokens),
                ("output", u.output_tokens),
                ("cache_read", u.cache_read_tokens),
                ("cache_write", u.cache_write_tokens),
            ] {
                let _ = writeln!(
                    o,
                    "mailroom_tokens_total{{agent=\"{}\",kind=\"{kind}\"}} {}",
                    esc(a),
                    n.unwrap_or(0)
                );
            }
        }
        head(
            &mut o,
            "mailroom_cost_usd_total",
            "counter",
            "Cost in USD the agents' CLIs reported for this supervisor's runs (every attempt), by agent.",
        );
        for (a, u) in &s.usage {
            let _ = writeln!(
                o,
                "mailroom_cost_usd_total{{agent=\"{}\"}} {}",
                esc(a),
                u.cost_usd.unwrap_or(0.0)
            );
        }
        head(
            &mut o,
            "mailroom_agent_cooldown_until_seconds",
            "gauge",
            "End of an agent's usage-limit cooldown (Unix time).",
        );
        for (a, t) in &s.cooldowns {
            let secs = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let _ = writeln!(
                o,
                "mailroom_agent_cooldown_until_seconds{{agent=\"{}\"}} {secs}",
                esc(a)
            );
        }
        head(
            &mut o,
            "mailroom_oldest_pending_age_seconds",
            "gauge",
            "How long the longest-waiting pending task has waited for a slot: since its submission, or since its own delay, not_before or retry backoff let it go (tasks still held are left out; 0 when none).",
        );
        let _ = writeln!(
            o,
            "mailroom_oldest_pending_age_seconds {}",
            s.oldest_pending_age.unwrap_or(0.0)
        );
        head(
            &mut o,
            "mailroom_paused",
            "gauge",
            "1 while claiming is paused.",
        );
        let _ = writeln!(o, "mailroom_paused {}", u8::from(s.paused));
        o
    }
}
