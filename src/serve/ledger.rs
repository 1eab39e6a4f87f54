//! What finished tasks used and cost, by agent and by day, summed from
//! `context/completed_tasks.jsonl` for the agents page and the overview.
//!
//! The log is append-only, so the sums are kept between requests and only
//! the lines added since the last read are parsed: a request after one more
//! task finished reads one line, not the whole history. A log that shrank or
//! was replaced (another inode) is read again from its start. Only whole
//! lines count; a line still being written is read next time.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use serde::Serialize;

use crate::adapter::Usage;
use crate::tree::layout::Layout;

/// The log is read this much at a time (never held whole).
const CHUNK: u64 = 4 * 1024 * 1024;

/// One agent's finished tasks.
#[derive(Debug, Default, Clone)]
pub struct AgentSums {
    pub finished: u64,
    pub completed: u64,
    /// Finished tasks by their record's `outcome` (`success`, `exit`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Every finished task's `duration_ms`, in log order.
    pub durations_ms: Vec<u64>,
    pub usage: Usage,
    /// By UTC day (`2026-12-01`): tasks finished and their summed usage.
    pub days: BTreeMap<String, DaySums>,
}

/// The tasks finished on one day.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DaySums {
    pub tasks: u64,
    /// Tasks whose CLI reported any usage.
    pub reported: u64,
    #[serde(flatten)]
    pub usage: Usage,
}

impl DaySums {
    fn add(&mut self, u: Option<&Usage>) {
        self.tasks += 1;
        if let Some(u) = u {
            self.reported += 1;
            self.usage.add(u);
        }
    }
}

/// The sums over the whole log.
#[derive(Debug, Default, Clone)]
pub struct Sums {
    pub agents: BTreeMap<String, AgentSums>,
    pub days: BTreeMap<String, DaySums>,
    /// Lines that were not a task's JSON object (skipped).
    pub unreadable: u64,
}

impl Sums {
    /// Adds one line of the log.
    fn line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            self.unreadable += 1;
            return;
        };
        if !v.is_object() {
            self.unreadable += 1;
            return;
        }
        let day = v["finished_at"]
            .as_str()
            .and_then(|s| s.get(..10))
            .unwrap_or("unknown")
            .to_owned();
        let usage: Option<Usage> = serde_json::from_value(v["usage"].clone()).ok().flatten();
        let agent = v["agent"].as_str().unwrap_or("(none)").to_owned();
        let a = self.agents.entry(agent).or_default();
        a.finished += 1;
        if v["status"] == "completed" {
            a.completed += 1;
        }
        let outcome = v["outcome"].as_str().unwrap_or("unknown");
        *a.outcomes.entry(outcome.to_owned()).or_default() += 1;
        if let Some(d) = v["duration_ms"].as_u64() {
            a.durations_ms.push(d);
        }
        if let Some(u) = &usage {
            a.usage.add(u);
        }
        a.days.entry(day.clone()).or_default().add(usage.as_ref());
        self.days.entry(day).or_default().add(usage.as_ref());
    }
}

struct Read_ {
    dev: u64,
    ino: u64,
    /// Bytes consumed: up to the end of the last whole line.
    offset: u64,
    sums: Sums,
}

/// The cached sums of one tree's log. Synchronous, for the blocking pool.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<Option<Read_>>,
}

impl Ledger {
    /// Calls `f` with the sums up to the log's last whole line.
    pub fn with<T>(&self, layout: &Layout, f_: impl FnOnce(&Sums) -> T) -> T {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some((mut file, meta)) = crate::tree::context::open_log(layout) else {
            *guard = None;
            return f_(&Sums::default());
        };
        let fresh = match &*guard {
            Some(r) => r.dev != meta.dev() || r.ino != meta.ino() || meta.len() < r.offset,
            None => true,
        };
        if fresh {
            *guard = Some(Read_ {
                dev: meta.dev(),
                ino: meta.ino(),
                offset: 0,
                sums: Sums::default(),
            });
        }
        let r = guard.as_mut().expect("set above");
        // In pieces of CHUNK, up to the last whole line. A piece with no end
        // of line in it is part of a "line" no record makes: it is passed
        // over (its tail then counts as one unreadable line), or the sums
        // would stop there for good.
        let mut buf = Vec::new();
        while meta.len() > r.offset && file.seek(SeekFrom::Start(r.offset)).is_ok() {
            buf.clear();
            if (&mut file).take(CHUNK).read_to_end(&mut buf).is_err() || buf.is_empty() {
                break;
            }
            match buf.iter().rposition(|b| *b == b'\n') {
                Some(end) => {
                    for line in buf[..end].split(|b| *b == b'\n') {
                        r.sums.line(line);
                    }
                    r.offset += end as u64 + 1;
                }
                None if buf.len() as u64 == CHUNK => r.offset += CHUNK,
                None => break,
            }
        }
        f_(&r.sums)
    }
}

/// The median of some durations (the mean of the middle two for an even count).
pub fn median(v: &[u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5, 1, 3]), Some(3));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2));
    }

    /// A "line" longer than a read, with no end of line, does not stop the
    /// sums: the records after it count.
    #[test]
    fn a_line_longer_than_a_read_does_not_stop_the_sums() {
        let d = std::env::temp_dir().join(format!("mailroom-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let layout = Layout::new(&d);
        std::fs::create_dir_all(&layout.context).unwrap();
        let rec = |t: &str| {
            format!(
                r#"{{"task":"{t}","status":"completed","agent":"x","finished_at":"2026-12-01T10:00:00.000Z","duration_ms":1,"usage":{{"cost_usd":1.0}}}}"#
            ) + "\n"
        };
        let text = rec("a") + &"y".repeat(CHUNK as usize * 2 + 10) + "\n" + &rec("b");
        std::fs::write(layout.context.join("completed_tasks.jsonl"), text).unwrap();
        let l = Ledger::default();
        let (finished, cost) = l.with(&layout, |s| {
            (s.agents["x"].finished, s.agents["x"].usage.cost_usd)
        });
        assert_eq!((finished, cost), (2, Some(2.0)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn lines_sum_by_agent_and_day() {
        let mut s = Sums::default();
        s.line(br#"{"task":"a","status":"completed","agent":"x","finished_at":"2026-12-01T10:00:00.000Z","duration_ms":100,"usage":{"cost_usd":0.5,"input_tokens":10}}"#);
        s.line(br#"{"task":"b","status":"failed","agent":"x","finished_at":"2026-12-02T10:00:00.000Z","duration_ms":300,"usage":null}"#);
        s.line(b"not json");
        s.line(b"  ");
        let x = &s.agents["x"];
        assert_eq!((x.finished, x.completed), (2, 1));
        assert_eq!(median(&x.durations_ms), Some(200));
        assert_eq!(x.usage.cost_usd, Some(0.5));
        assert_eq!(s.days["2026-12-01"].usage.input_tokens, Some(10));
        assert_eq!(s.days["2026-12-02"].reported, 0);
        assert_eq!(s.unreadable, 1);
    }
}
