//! The run queue: which ready task runs next, and on which agent, in
//! O(log n) per pick. Pure data structure, no I/O: the supervisor inserts the
//! tasks that may run (dependencies met, file settled) and asks for the next.
//!
//! Order: priority as a head start in time. A task's virtual time is its
//! submission time plus `level × aging` (high = 0, normal = 1, low = 2), and
//! the smallest virtual time goes first; the name breaks ties. So tasks of one
//! level run FIFO, a high task goes ahead of a normal one submitted up to
//! `aging` earlier, and no task is overtaken by tasks submitted more than
//! `2 × aging` after it: waiting ages a task up one level per `aging`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::parse::task::Priority;

/// How a task's candidate agents are chosen between.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pick {
    /// The first that can run it; a busy one is waited for, a cooling one is
    /// skipped (its fallbacks come after it in the list).
    Ordered,
    /// The least loaded of those that can run it.
    LeastLoaded,
}

/// Candidate agents of a task, in order, and how to choose.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub agents: Vec<String>,
    pub pick: Pick,
}

/// What an agent can do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Avail {
    /// A free slot: `load` of `max` in use.
    Free { load: usize, max: usize },
    /// At its `max_instances`: wait for it.
    Busy,
    /// Cooling down after a usage limit (or not configured): fall back.
    Unavailable,
}

/// A task the supervisor hands to the queue.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: Arc<str>,
    pub priority: Priority,
    /// Submission time (the file's modification time), ns since the epoch.
    pub submitted_ns: i128,
    /// Not before this time (`not_before`, `delay`, retry backoff).
    pub not_before: Option<SystemTime>,
    pub route: Arc<Route>,
}

/// A task's place in the queue. Names are shared (`Arc<str>`) between the
/// map and the ordered sets: one allocation per task.
#[derive(Debug)]
struct Meta {
    key: (i128, Arc<str>),
    group: usize,
    timed: Option<SystemTime>,
}

/// The queue.
#[derive(Debug, Default)]
pub struct Queue {
    aging_ns: i128,
    entries: HashMap<Arc<str>, Meta>,
    groups: Vec<Arc<Route>>,
    group_of: HashMap<Arc<Route>, usize>,
    ready: Vec<BTreeSet<(i128, Arc<str>)>>,
    timed: BTreeSet<(SystemTime, Arc<str>)>,
}

impl Queue {
    pub fn new(aging: Duration) -> Queue {
        Queue {
            aging_ns: aging.as_nanos().max(1) as i128,
            ..Queue::default()
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Adds or replaces a task.
    pub fn insert(&mut self, item: Item) {
        self.remove(&item.name);
        let vtime = item.submitted_ns + item.priority as i128 * self.aging_ns;
        let group = match self.group_of.get(&item.route) {
            Some(g) => *g,
            None => {
                self.groups.push(item.route.clone());
                self.ready.push(BTreeSet::new());
                let g = self.groups.len() - 1;
                self.group_of.insert(item.route.clone(), g);
                g
            }
        };
        let key = (vtime, item.name.clone());
        match item.not_before {
            Some(t) => {
                self.timed.insert((t, item.name.clone()));
            }
            None => {
                self.ready[group].insert(key.clone());
            }
        }
        self.entries.insert(
            item.name,
            Meta {
                key,
                group,
                timed: item.not_before,
            },
        );
    }

    /// Removes a task (claimed elsewhere, deleted, rejected).
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(m) = self.entries.remove(name) else {
            return false;
        };
        match m.timed {
            Some(t) => {
                self.timed.remove(&(t, m.key.1.clone()));
            }
            None => {
                self.ready[m.group].remove(&m.key);
            }
        }
        true
    }

    /// Moves tasks whose time has come into their ready sets.
    fn promote(&mut self, now: SystemTime) {
        while let Some((t, name)) = self.timed.first().cloned() {
            if t > now {
                break;
            }
            self.timed.pop_first();
            if let Some(m) = self.entries.get_mut(&name) {
                m.timed = None;
                self.ready[m.group].insert(m.key.clone());
            }
        }
    }

    /// The earliest `not_before` still ahead.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.timed.first().map(|(t, _)| *t)
    }

    /// The tasks held by a time still ahead: how many, and the first of
    /// them with its time.
    pub fn held(&self) -> (usize, Option<(SystemTime, &str)>) {
        (
            self.timed.len(),
            self.timed.first().map(|(t, n)| (*t, n.as_ref())),
        )
    }

    /// Takes the next task that can run now, with the agent to run it on.
    /// `avail` says what each agent can do; the winner's agent is the caller's
    /// to mark as loaded before the next call.
    pub fn pop(
        &mut self,
        now: SystemTime,
        mut avail: impl FnMut(&str) -> Avail,
    ) -> Option<(String, String)> {
        self.promote(now);
        let mut best: Option<((i128, Arc<str>), usize, String)> = None;
        let mut cache: BTreeMap<String, Avail> = BTreeMap::new();
        for (g, set) in self.ready.iter().enumerate() {
            let Some(head) = set.first() else { continue };
            if best.as_ref().is_some_and(|(k, _, _)| k <= head) {
                continue;
            }
            let mut av = |a: &str| *cache.entry(a.to_owned()).or_insert_with(|| avail(a));
            let route = &self.groups[g];
            let agent = match route.pick {
                Pick::Ordered => {
                    let mut chosen = None;
                    for a in &route.agents {
                        match av(a) {
                            Avail::Free { .. } => {
                                chosen = Some(a.clone());
                                break;
                            }
                            Avail::Busy => break,
                            Avail::Unavailable => continue,
                        }
                    }
                    chosen
                }
                Pick::LeastLoaded => route
                    .agents
                    .iter()
                    .filter_map(|a| match av(a) {
                        Avail::Free { load, max } => Some((load * 1000 / max.max(1), a)),
                        _ => None,
                    })
                    .min_by_key(|(ratio, _)| *ratio)
                    .map(|(_, a)| a.clone()),
            };
            if let Some(a) = agent {
                best = Some((head.clone(), g, a));
            }
        }
        let (key, g, agent) = best?;
        self.ready[g].remove(&key);
        self.entries.remove(&key.1);
        Some((key.1.to_string(), agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Duration = Duration::from_secs(1800);

    fn item(name: &str, p: Priority, t_min: i64, agents: &[&str]) -> Item {
        Item {
            name: name.into(),
            priority: p,
            submitted_ns: t_min as i128 * 60_000_000_000,
            not_before: None,
            route: Arc::new(Route {
                agents: agents.iter().map(|s| s.to_string()).collect(),
                pick: Pick::Ordered,
            }),
        }
    }

    fn free(_: &str) -> Avail {
        Avail::Free { load: 0, max: 1 }
    }

    fn drain(q: &mut Queue) -> Vec<String> {
        let now = SystemTime::now();
        std::iter::from_fn(|| q.pop(now, free).map(|(n, _)| n)).collect()
    }

    #[test]
    fn fifo_within_a_level_and_priority_across() {
        let mut q = Queue::new(A);
        q.insert(item("n1", Priority::Normal, 0, &["a"]));
        q.insert(item("n2", Priority::Normal, 1, &["a"]));
        q.insert(item("h1", Priority::High, 5, &["a"]));
        q.insert(item("l1", Priority::Low, 2, &["a"]));
        assert_eq!(drain(&mut q), ["h1", "n1", "n2", "l1"]);
    }

    #[test]
    fn ties_break_by_name() {
        let mut q = Queue::new(A);
        q.insert(item("b", Priority::Normal, 0, &["a"]));
        q.insert(item("a", Priority::Normal, 0, &["a"]));
        assert_eq!(drain(&mut q), ["a", "b"]);
    }

    #[test]
    fn a_low_task_that_waited_ages_past_newer_work() {
        let mut q = Queue::new(A);
        // Low, submitted 61 minutes before a normal and 31 before a high task.
        q.insert(item("old-low", Priority::Low, 0, &["a"]));
        q.insert(item("new-normal", Priority::Normal, 61, &["a"]));
        q.insert(item("newer-high", Priority::High, 61, &["a"]));
        assert_eq!(drain(&mut q), ["old-low", "newer-high", "new-normal"]);
        // Within the aging window, priority still wins.
        q.insert(item("low", Priority::Low, 0, &["a"]));
        q.insert(item("normal", Priority::Normal, 29, &["a"]));
        assert_eq!(drain(&mut q), ["normal", "low"]);
    }

    #[test]
    fn not_before_holds_a_task_back_until_due() {
        let mut q = Queue::new(A);
        let now = SystemTime::now();
        let mut i = item("later", Priority::High, 0, &["a"]);
        i.not_before = Some(now + Duration::from_secs(60));
        q.insert(i);
        q.insert(item("now", Priority::Low, 10, &["a"]));
        assert_eq!(q.pop(now, free).unwrap().0, "now");
        assert!(q.pop(now, free).is_none());
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(60)));
        let later = now + Duration::from_secs(61);
        assert_eq!(q.pop(later, free).unwrap().0, "later");
    }

    #[test]
    fn busy_agent_is_waited_for_but_cooling_agent_falls_back() {
        let mut q = Queue::new(A);
        q.insert(item("t", Priority::Normal, 0, &["claude", "codex"]));
        let now = SystemTime::now();
        assert!(
            q.pop(now, |a| if a == "claude" { Avail::Busy } else { free(a) })
                .is_none()
        );
        let got = q.pop(now, |a| {
            if a == "claude" {
                Avail::Unavailable
            } else {
                free(a)
            }
        });
        assert_eq!(got, Some(("t".into(), "codex".into())));
    }

    #[test]
    fn a_blocked_head_does_not_block_other_agents() {
        let mut q = Queue::new(A);
        q.insert(item("first", Priority::High, 0, &["x"]));
        q.insert(item("second", Priority::Low, 9, &["y"]));
        let now = SystemTime::now();
        let got = q.pop(now, |a| if a == "x" { Avail::Busy } else { free(a) });
        assert_eq!(got.unwrap().0, "second");
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn least_loaded_picks_the_emptiest_agent() {
        let mut q = Queue::new(A);
        let mut i = item("t", Priority::Normal, 0, &["a", "b", "c"]);
        Arc::make_mut(&mut i.route).pick = Pick::LeastLoaded;
        q.insert(i);
        let got = q.pop(SystemTime::now(), |a| match a {
            "a" => Avail::Free { load: 1, max: 2 },
            "b" => Avail::Free { load: 0, max: 2 },
            _ => Avail::Busy,
        });
        assert_eq!(got.unwrap().1, "b");
    }

    #[test]
    fn remove_and_reinsert_keep_the_queue_consistent() {
        let mut q = Queue::new(A);
        for i in 0..100 {
            q.insert(item(&format!("t{i:03}"), Priority::Normal, i, &["a"]));
        }
        for i in (0..100).step_by(2) {
            assert!(q.remove(&format!("t{i:03}")));
        }
        q.insert(item("t001", Priority::High, 0, &["a"]));
        let order = drain(&mut q);
        assert_eq!(order.len(), 50);
        assert_eq!(order[0], "t001");
        assert!(q.is_empty());
    }
}
