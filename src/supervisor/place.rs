//! Where a known pending task belongs: the run queue, the dependency waits, the unsettled files or the rejects.

use super::*;

pub(super) enum Deps {
    Ready,
    Wait(String),
    Failed(String),
}

impl Supervisor {
    /// Puts a known pending task where it belongs: the run queue, the tasks
    /// waiting for dependencies, the unsettled files, or the rejects.
    pub(super) fn place(&mut self, name: &str) {
        enum To {
            Unsettled,
            Queue(Item),
            Wait(String),
            Reject(Box<ResultRecord>),
        }
        let Some(p) = self.pending.get(name) else {
            return;
        };
        let to = match &p.parsed {
            Err(_) => To::Unsettled,
            Ok(b) => match self.deps_state(&b.after) {
                Deps::Failed(why) => {
                    To::Reject(Box::new(books::never_ran_record(Outcome::Dependency, why)))
                }
                Deps::Wait(why) => To::Wait(why),
                Deps::Ready => match &b.route {
                    // A route is the config's verdict: while the tree is
                    // paused (as for a config being changed), nothing is
                    // filed for it; the task is placed again at the resume.
                    Err(why) if self.paused => {
                        To::Wait(format!("cannot be routed (held while paused): {why}"))
                    }
                    Err(why) => To::Reject(Box::new(books::never_ran_record(
                        Outcome::Invalid,
                        why.clone(),
                    ))),
                    Ok(route) => To::Queue(Item {
                        name: name.into(),
                        priority: b.priority,
                        submitted_ns: p.id.mtime_ns,
                        not_before: b
                            .not_before
                            .into_iter()
                            .chain(p.retry_at)
                            .chain(p.hold)
                            .max(),
                        route: route.clone(),
                    }),
                },
            },
        };
        self.queue.remove(name);
        self.waiting.remove(name);
        self.unsettled.remove(name);
        match to {
            To::Unsettled => {
                self.unsettled.insert(name.to_owned());
            }
            To::Queue(item) => {
                self.logged_waits.remove(name);
                self.queue.insert(item);
            }
            To::Reject(rec) => {
                self.rejects.insert(name.to_owned(), *rec);
            }
            To::Wait(why) => {
                if let Some(cycle) = self.cycle_through(name) {
                    let text = cycle.join(" -> ");
                    for n in &cycle[..cycle.len() - 1] {
                        self.queue.remove(n);
                        self.waiting.remove(n);
                        self.rejects.insert(
                            n.clone(),
                            books::never_ran_record(
                                Outcome::Dependency,
                                format!("dependency cycle: {text}"),
                            ),
                        );
                    }
                    return;
                }
                // During a scan, dependencies may simply not be read yet.
                if !self.scanning && self.logged_waits.insert(name.to_owned()) {
                    info!(task = %name, "{why}");
                }
                self.waiting.insert(name.to_owned());
            }
        }
    }

    /// A cycle of `after` links among pending tasks that passes through
    /// `start`, as the names along it (first name repeated at the end).
    pub(super) fn cycle_through(&self, start: &str) -> Option<Vec<String>> {
        fn deps<'a>(s: &'a Supervisor, n: &str) -> &'a [String] {
            match s.pending.get(n).map(|p| &p.parsed) {
                Some(Ok(b)) => &b.after,
                _ => &[],
            }
        }
        // Depth-first search over pending tasks, with the path kept.
        let mut path: Vec<(String, usize)> = vec![(start.to_owned(), 0)];
        let mut done: HashSet<String> = HashSet::new();
        while let Some((node, i)) = path.last().cloned() {
            let ds = deps(self, &node);
            if i >= ds.len() {
                done.insert(node);
                path.pop();
                continue;
            }
            path.last_mut().expect("path is not empty").1 += 1;
            let d = &ds[i];
            if d == start {
                let mut c: Vec<String> = path.iter().map(|(n, _)| n.clone()).collect();
                c.push(start.to_owned());
                return Some(c);
            }
            if self.pending.contains_key(d)
                && !done.contains(d)
                && !path.iter().any(|(n, _)| n == d)
            {
                path.push((d.clone(), 0));
            }
        }
        None
    }

    /// Places again every task that waits for a dependency.
    pub(super) fn replace_waiting(&mut self) {
        let names: Vec<String> = self.waiting.iter().cloned().collect();
        for n in names {
            self.place(&n);
        }
    }

    pub(super) fn deps_state(&self, after: &[String]) -> Deps {
        // Completed: the task file with its record, as a commit leaves it.
        // A file put in `completed/` by hand or by an agent is no success.
        // Looked up once per dependency: a record is read for each.
        let open: Vec<&String> = after
            .iter()
            .filter(|d| !books::is_completed(self.layout(), d))
            .collect();
        // A failed dependency anywhere decides, before any wait.
        if let Some(d) = open
            .iter()
            .find(|d| self.layout().find(State::Failed, d).is_some())
        {
            return Deps::Failed(format!("dependency {d} failed"));
        }
        // The first that is not completed, in the order written, is waited for.
        let Some(&d) = open.first() else {
            return Deps::Ready;
        };
        // A file of the name in `pending/` that the books do not hold
        // yet (still settling, or not scanned) is waited for too.
        if self.pending.contains_key(d)
            || self.running.contains_key(d)
            || self.layout().find(State::Assigned, d).is_some()
            || self.layout().find(State::Pending, d).is_some()
        {
            return Deps::Wait(format!("waiting for {d}"));
        }
        // Filed under a clash name (an agent took its place in the
        // tree): it failed, and nothing of its name will ever complete.
        if let Some(clash) = books::diverted_as(self.layout(), d) {
            return Deps::Failed(format!("dependency {d} failed (filed as {clash})"));
        }
        if self.layout().find(State::Completed, d).is_some() {
            return Deps::Wait(format!(
                "waiting for {d} (tasks/completed/ has a file of that name, but no record \
                 of its completion: mailroom did not file it)"
            ));
        }
        Deps::Wait(format!("waiting for {d} (not submitted)"))
    }
}
