//! Crash safety and several supervisors: kill -9 at random moments, then check
//! the protocol's invariants on disk; run several supervisors on one tree and
//! check from the agents' own logs that no two runs of a task overlap.

use crate::common::*;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Processes (other than zombies) whose environment names this root.
pub(crate) fn agents_of(root: &Root) -> Vec<i32> {
    processes_of(&root.path)
        .into_iter()
        .filter(|pid| alive(*pid))
        .collect()
}

/// Whether a run that started after byte `mark` of the span log is still
/// open (its task's last line since then is a start).
pub(crate) fn runs_open_after(runlog: &std::path::Path, mark: u64) -> bool {
    let Ok(log) = std::fs::read(runlog) else {
        return false;
    };
    let since = String::from_utf8_lossy(log.get(mark as usize..).unwrap_or_default());
    let mut open: HashMap<&str, bool> = HashMap::new();
    // A line still being written has no newline yet: leave it for the next look.
    for l in since.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let f: Vec<&str> = l.trim_end().split(' ').collect();
        if f.len() == 4 {
            open.insert(f[1], f[0] == "S");
        }
    }
    open.values().any(|o| *o)
}

/// From "S task attempt ns" / "E task attempt ns" lines: no two runs of one
/// task are ever open at the same time. Returns runs per task.
pub(crate) fn check_no_overlap(log: &str) -> HashMap<String, usize> {
    let mut events: Vec<(u128, bool, String)> = log
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() == 4).then(|| (f[3].parse().unwrap(), f[0] == "S", f[1].to_owned()))
        })
        .collect();
    // Ends before starts at the same instant.
    events.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut open: HashMap<String, i32> = HashMap::new();
    let mut runs: HashMap<String, usize> = HashMap::new();
    for (t, start, task) in events {
        let o = open.entry(task.clone()).or_default();
        if start {
            *o += 1;
            *runs.entry(task.clone()).or_default() += 1;
            assert!(*o <= 1, "two runs of {task} overlap at {t}:\n{log}");
        } else {
            *o -= 1;
        }
    }
    for (task, o) in open {
        assert_eq!(o, 0, "a run of {task} never ended:\n{log}");
    }
    runs
}

/// Every task in exactly one state, terminal, with a complete record; nothing
/// left behind in assigned/ or as temp files.
pub(crate) fn check_invariants(root: &Root, n: usize, terminal: &str) {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for st in ["pending", "assigned", "completed", "failed"] {
        for name in root.names(st) {
            if let Some(prev) = seen.insert(name.clone(), st) {
                panic!("{name} is in both {prev} and {st}");
            }
        }
    }
    assert_eq!(seen.len(), n, "tasks lost or invented: {seen:?}");
    for (name, st) in &seen {
        assert_eq!(*st, terminal, "{name} ended in {st}");
        let rec = root.record(st, name);
        assert_eq!(rec["task"], name.as_str());
        assert!(rec["attempts"].as_u64().unwrap() >= 1, "{rec}");
        assert!(rec["finished_at"].is_string());
    }
    assert!(
        root.entries("tasks/assigned").is_empty(),
        "left in assigned/: {:?}",
        root.entries("tasks/assigned")
    );
    let tmp = root.temp_files();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    // The context log: every line whole, exactly one per finished task (no
    // merge lost or made twice, however the supervisors raced or died).
    let log = root.read("context/completed_tasks.jsonl");
    let mut logged: Vec<String> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("torn log line {l:?}: {e}"));
            v["task"].as_str().unwrap().to_owned()
        })
        .collect();
    logged.sort();
    let lines = logged.len();
    logged.dedup();
    assert_eq!(logged.len(), n, "context log misses tasks");
    assert_eq!(lines, n, "context log has duplicate entries");
}

#[test]
fn kill_9_loop_loses_nothing_and_never_reruns_a_run_its_keeper_finished() {
    kill_9_loop(true, 30);
}

#[test]
fn kill_9_loop_without_keepers_loses_nothing_and_never_runs_a_task_twice_at_once() {
    kill_9_loop(false, 10);
}

/// Kills supervisors with SIGKILL while their agents run. With keepers
/// (protocol version 2) every run survives its supervisor and is adopted or
/// committed by the next: each task runs exactly once. Without (version 1) the
/// agent is stopped and run again, never beside itself.
fn kill_9_loop(keeper: bool, default_cycles: usize) {
    // CI runs the small fixed-seed version; a long run sets
    // MAILROOM_KILL_TASKS and MAILROOM_KILL_CYCLES (e.g. 2000 and 300).
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    // With keepers no kill loses work, so the tasks run out sooner.
    let n = env("MAILROOM_KILL_TASKS", if keeper { 300 } else { 40 });
    let root = Root::new();
    let runlog = root.p("runs.log");
    let mut root = root.config(&format!(
        "concurrency: 4\nretries: 100\nretry_delay: 10ms\nrescan_interval: 200ms\nsettle: 100ms\n\
         run_keeper: {keeper}\nagents:\n  a:\n    command: [{:?}]\n    grace: 2s\n    env:\n      RUNLOG: {:?}\n      SPAN_MS: \"20\"\n      SPAN_MS_MAX: \"300\"\n",
        agent("span.sh"),
        runlog.display().to_string()
    ));
    for i in 0..n {
        root = root.task(
            &format!("t{i:03}.yaml"),
            &format!("description: task {i}\n"),
        );
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let cycles = env("MAILROOM_KILL_CYCLES", default_cycles);
    let mut kills = 0;
    for cycle in 0..cycles {
        if root.names("completed").len() == n {
            break; // nothing left to interrupt
        }
        // Each kill lands at a random moment while one of this supervisor's
        // agents runs: a kill of an idle tree (still recovering, or between
        // runs) would test nothing. The delay counts from its first start.
        let mark = std::fs::metadata(&runlog).map_or(0, |m| m.len());
        let mut sup = root.spawn();
        let delay = Duration::from_millis(rng.range(0, 150));
        let mut first: Option<std::time::Instant> = None;
        let mut done = false;
        wait_for(
            Duration::from_secs(60),
            &format!("an agent to run in kill cycle {cycle}"),
            || {
                done = root.names("completed").len() == n;
                let running = runs_open_after(&runlog, mark);
                if running && first.is_none() {
                    first = Some(std::time::Instant::now());
                }
                done || (running && first.is_some_and(|t| t.elapsed() >= delay))
            },
        );
        sup.kill9();
        if done {
            break;
        }
        kills += 1;
    }
    eprintln!(
        "kill -9 loop: {kills} of {cycles} kills hit a running agent, {} of {n} tasks \
         completed meanwhile",
        root.names("completed").len()
    );
    assert_eq!(
        kills, cycles,
        "the work ran out before the last kill: give the loop more tasks or shorter waits"
    );
    root.run_until_idle_within(Duration::from_secs(60 + n as u64 / 4));
    check_invariants(&root, n, "completed");
    eprintln!("kill -9 loop: {cycles} kill cycles over {n} tasks, invariants hold");
    wait_for(
        Duration::from_secs(10),
        "no agent to outlive its run",
        || agents_of(&root).is_empty(),
    );
    let runs = check_no_overlap(&std::fs::read_to_string(&runlog).unwrap());
    assert_eq!(runs.len(), n);
    let total: usize = runs.values().sum();
    if keeper {
        // Every kill hit a running agent, and none of those runs ran again:
        // the agents' own log has one run per task.
        let again: Vec<_> = runs.iter().filter(|(_, r)| **r != 1).collect();
        assert!(again.is_empty(), "re-runs despite live keepers: {again:?}");
        eprintln!("kill -9 loop with keepers: {total} runs for {n} tasks, 0 re-runs");
    } else {
        eprintln!("kill -9 loop without keepers: {total} runs for {n} tasks");
        // The kills must actually have interrupted runs, or this proves nothing.
        assert!(
            total > n,
            "no run was interrupted ({total} runs for {n} tasks)"
        );
    }
}

fn several_supervisors(poll: bool) {
    let n = 2000;
    let root = Root::new();
    let runlog = root.p("runs.log");
    let watch = if poll { "poll" } else { "auto" };
    let mut root = root.config(&format!(
        "concurrency: 3\nretries: 0\nrescan_interval: 300ms\nwatch: {watch}\nsettle: 100ms\n\
         agents:\n  a:\n    command: [{:?}]\n    env:\n      RUNLOG: {:?}\n      SPAN_MS: \"5\"\n",
        agent("span.sh"),
        runlog.display().to_string()
    ));
    for i in 0..n {
        root = root.task(
            &format!("m{i:04}.yaml"),
            &format!("description: task {i}\n"),
        );
    }
    let sups: Vec<Sup> = (0..4).map(|_| root.spawn()).collect();
    wait_for(Duration::from_secs(300), "all tasks to complete", || {
        root.names("completed").len() == n
    });
    // Killing them mid-claim may leave a lock file: the next start recovers it.
    drop(sups);
    root.run_until_idle();
    check_invariants(&root, n, "completed");
    let runs = check_no_overlap(&std::fs::read_to_string(&runlog).unwrap());
    assert_eq!(runs.len(), n);
    let twice: Vec<_> = runs.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
}

#[test]
fn four_supervisors_share_one_tree_with_inotify() {
    several_supervisors(false);
}

#[test]
fn four_supervisors_share_one_tree_polling_only() {
    several_supervisors(true);
}

/// SIGKILLs a process group when dropped, so that an agent a failing test
/// left behind does not outlive it.
pub(crate) struct KillGroupOnDrop(pub(crate) i32);
impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if self.0 > 1 {
            unsafe { kill(-self.0, SIGKILL) };
        }
    }
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn a_restarted_supervisor_stops_the_orphaned_agent_before_running_its_task_again() {
    // Attempt 1 hangs (until stopped); attempt 2 succeeds. The agent logs
    // its start (with its pid: it leads its own process group) and a SIGTERM.
    let script = r#"log="$MAILROOM_ROOT/agent.log"
echo "start $MAILROOM_ATTEMPT $$" >> "$log"
if [ "$MAILROOM_ATTEMPT" = 1 ]; then
  trap 'echo "terminated $MAILROOM_ATTEMPT" >> "$log"; exit 143' TERM
  sleep 600 & wait
fi
echo done"#;
    // Protocol version 1: no keeper, the agent itself carries the lock.
    let root = Root::new()
        .agent_config(&["/bin/sh", "-c", script], "run_keeper: false")
        .task("o.yaml", "description: outlives its supervisor\n");
    let lines = || std::fs::read_to_string(root.p("agent.log")).unwrap_or_default();
    let mut sup = root.spawn();
    let mut pid = 0;
    wait_for(Duration::from_secs(60), "attempt 1 to start", || {
        pid = lines()
            .lines()
            .find_map(|l| l.strip_prefix("start 1 ")?.parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    let _cleanup = KillGroupOnDrop(pid);
    sup.kill9();
    // The agent outlives its supervisor and, through its stdin, holds the lock.
    assert!(alive(pid), "the agent died with its supervisor");
    let _sup = root.spawn();
    wait_for(
        Duration::from_secs(30),
        &format!("the restarted supervisor to stop the orphaned agent (pid {pid})"),
        || lines().contains("terminated 1\n") && !alive(pid),
    );
    wait_for(Duration::from_secs(60), "attempt 2 to complete o", || {
        root.names("completed") == ["o"]
    });
    let log = lines();
    let starts: Vec<&str> = log.lines().filter(|l| l.starts_with("start")).collect();
    assert_eq!(starts.len(), 2, "{log}");
    assert!(starts[1].starts_with("start 2 "), "{log}");
    // Attempt 2 started only after attempt 1 was stopped.
    let term = log.find("terminated 1").unwrap();
    let second = log.find("start 2 ").unwrap();
    assert!(term < second, "attempt 2 ran beside the orphan:\n{log}");
    let rec = root.record("completed", "o");
    assert_eq!(rec["attempts"], 2, "{rec}");
    assert_eq!(rec["history"][0]["outcome"], "interrupted", "{rec}");
}
