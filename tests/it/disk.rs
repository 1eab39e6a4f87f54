//! Full disks and broken directories: on a tiny tmpfs the supervisor keeps
//! tasks where they were, reports the error, goes on once space is back and
//! loses nothing; a removed context/ or tasks/pending/ is recreated.

use crate::common::*;
use std::io::Write;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs(std::path::PathBuf);
impl Tmpfs {
    fn new(size: &str) -> Option<Tmpfs> {
        if !require_root("mounting a tmpfs") {
            return None;
        }
        let dir = Root::new().path.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount -t tmpfs failed although running as root"
        );
        Some(Tmpfs(dir))
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_full_disk_keeps_tasks_reports_and_recovers_when_space_is_back() {
    let Some(fs) = Tmpfs::new("2m") else { return };
    let root = Root {
        path: fs.0.join("root"),
    };
    for d in ["tmp", "pending", "assigned", "completed", "failed"] {
        std::fs::create_dir_all(root.p(&format!("tasks/{d}"))).unwrap();
    }
    std::fs::create_dir_all(root.p("context/agent_outputs")).unwrap();
    let root = root.agent_config(&[&agent("ok.sh")], "concurrency: 2");
    for i in 0..20 {
        root.write(&format!("tasks/pending/t{i:02}.yaml"), "description: x\n");
    }
    // Fill the file system to the last byte.
    let filler = fs.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // Its log goes outside the full file system.
    let logs = Root::new();
    let log_path = logs.p("sup.log");
    let mut c = root.cmd(&["run"]);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let sup = Sup {
        child: Some(c.spawn().unwrap()),
    };
    let holds = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches("no new claims for a while")
            .count()
    };
    wait_for(MIN, "the supervisor to report the full disk", || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("No space left on device")
            && holds() >= 2
    });
    // It claims no further while runs cannot be prepared: a few tasks
    // per hold, not the whole queue into assigned/ (it took all 20).
    let claimed = root.names("assigned").len();
    assert!(claimed <= 6, "{claimed} tasks claimed on a full disk");
    let status = stdout(&root.mailroom(&["status"]));
    assert!(
        status.contains("the file system of this tree is full"),
        "{status}"
    );
    // Nothing lost, nothing failed for want of space. (Listed again when a
    // claim moved a task between the listings of two directories.)
    let want: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    wait_for(
        MIN,
        "every task in pending/, assigned/ or completed/",
        || {
            let mut all: Vec<String> = ["pending", "assigned", "completed"]
                .iter()
                .flat_map(|s| root.names(s))
                .collect();
            all.sort();
            all == want
        },
    );
    assert!(
        root.names("failed").is_empty(),
        "a full disk failed a task: {:?}",
        root.names("failed")
    );
    // Space is back: everything completes.
    std::fs::remove_file(&filler).unwrap();
    wait_for(MIN, "all tasks to complete once space is back", || {
        root.names("completed").len() == 20
    });
    drop(sup);
    root.run_until_idle();
    assert!(
        root.entries("tasks/assigned").is_empty(),
        "{:?}",
        root.entries("tasks/assigned")
    );
    let log = root.read("context/completed_tasks.jsonl");
    assert_eq!(log.lines().count(), 20, "{log}");
    std::mem::forget(root); // the tmpfs goes with `fs`
}

#[test]
fn removed_context_and_pending_directories_come_back() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let _sup = root.spawn();
    wait_for(MIN, "the supervisor to start", || {
        root.sup_logs().contains("supervisor ready")
    });
    std::fs::remove_dir_all(root.p("context")).unwrap();
    std::fs::remove_dir_all(root.p("tasks/pending")).unwrap();
    wait_for(MIN, "tasks/pending to be recreated", || {
        root.p("tasks/pending").is_dir()
    });
    root.write(
        "tasks/pending/after.yaml",
        "description: after the removal\n",
    );
    wait_for(MIN, "the new task to complete", || {
        root.names("completed") == ["after"]
    });
    assert!(
        root.read("context/agent_outputs/after.md")
            .contains("after the removal")
    );
    assert!(
        root.read("context/completed_tasks.jsonl")
            .contains("\"task\":\"after\"")
    );
}

/// With no rescans to fall back on, only inotify can see a task: the
/// watch on a removed and recreated `tasks/pending/` is made anew, and the
/// supervisor's own reads in the watched directories wake nothing.
#[test]
fn without_rescans_a_recreated_pending_directory_is_watched_again() {
    let root = Root::new().config(&format!(
        "settle: 300ms\nrescan_interval: 1h\nagents:\n  a:\n    command: [{:?}]\n",
        agent("ok.sh")
    ));
    let _sup = root.spawn();
    wait_for(MIN, "the supervisor to start", || {
        root.sup_logs().contains("supervisor ready")
    });
    root.write("tasks/pending/before.yaml", "description: before\n");
    wait_for(MIN, "the first task to complete", || {
        root.names("completed") == ["before"]
    });
    std::fs::remove_dir_all(root.p("tasks/pending")).unwrap();
    wait_for(MIN, "tasks/pending to be recreated", || {
        root.p("tasks/pending").is_dir()
    });
    root.write("tasks/pending/after.yaml", "description: after\n");
    wait_for(
        MIN,
        "the task written after the removal to complete",
        || root.names("completed") == ["after", "before"],
    );
}

/// `chattr +i` on a directory: not even root may create entries in it. The
/// flag is lifted again on drop, so the root can be removed.
struct Immutable(std::path::PathBuf);
impl Immutable {
    fn new(dir: std::path::PathBuf) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !require(
            ok,
            "`chattr +i` on the temp directory (root, e2fsprogs, ext4 or xfs)",
        ) {
            return None;
        }
        Some(Immutable(dir))
    }
}
impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// A `pending/` that refuses the claim's move (immutable): the error names
/// the file and the directory, is said once (it was logged every 250 ms,
/// about 14,000 lines an hour), and the task runs once the move works.
#[test]
fn a_claim_refused_by_pending_is_said_once_with_its_place() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("imm.yaml", "description: x\n");
    let Some(lock) = Immutable::new(root.p("tasks/pending")) else {
        return;
    };
    let _sup = root.spawn();
    wait_for(MIN, "the claim to fail twice", || {
        root.sup_logs().contains("again: claim failed")
    });
    let logs = root.sup_logs();
    assert_eq!(logs.matches("ERROR claim failed:").count(), 1, "{logs}");
    assert!(
        logs.contains(
            "claim failed: cannot move tasks/pending/imm.yaml into tasks/assigned: Operation not permitted"
        ),
        "{logs}"
    );
    drop(lock);
    wait_for(MIN, "the task to complete", || {
        root.names("completed") == ["imm"]
    });
}

/// A task file that cannot be read for the system's reasons (out of file
/// descriptors: a flood of connections to the dashboard did it) is read
/// again later, never filed as `invalid` (it was, for good, after `settle`).
#[test]
fn a_task_file_unreadable_for_want_of_descriptors_is_read_again_not_failed() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("t.yaml", "description: x\n");
    let mut c = root.cmd(&["run", "--exit-when-idle"]);
    c.env("MAILROOM_TEST_EMFILE_READS", "2");
    let out = run_bounded(c, MIN);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(root.names("completed"), ["t"], "{log}");
    assert!(root.names("failed").is_empty(), "{log}");
    assert_eq!(
        log.matches("cannot read tasks/pending/t.yaml: Too many open files")
            .count(),
        2,
        "said once at error level, once again at debug level: {log}"
    );
    // The same right after the claim, reading the file in assigned/: it
    // goes back to pending/ and is claimed again.
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("u.yaml", "description: x\n");
    let mut c = root.cmd(&["run", "--exit-when-idle"]);
    c.env("MAILROOM_TEST_EMFILE_READS", "1")
        .env("MAILROOM_TEST_EMFILE_DIR", "assigned");
    let out = run_bounded(c, MIN);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(root.names("completed"), ["u"], "{log}");
    assert!(
        log.contains("cannot read tasks/assigned/u.yaml: Too many open files"),
        "{log}"
    );
}

/// A root whose agent `a` is `tests/agents/tamper.sh`, logging its runs to
/// `runs.log`.
fn logged_root(retries: u32) -> Root {
    let root = Root::new();
    let (runlog, release) = (root.p("runs.log"), root.p("release"));
    root.config(&format!(
        "retry_delay: 50ms\nsettle: 300ms\nrescan_interval: 1s\nretries: {retries}\n\
         agents:\n  a:\n    command: [{:?}]\n    grace: 1s\n    prompt_template: \"{{description}}\"\n\
         \x20   env: {{RUNLOG: {:?}, RELEASE: {:?}}}\n",
        agent("tamper.sh"),
        runlog.to_string_lossy(),
        release.to_string_lossy(),
    ))
}

fn run_lines(root: &Root) -> usize {
    std::fs::read_to_string(root.p("runs.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// With `tasks/completed/` unwritable a successful run was filed failed as
/// "the supervisor (pid N) stopped", N being the live supervisor itself. The
/// commit is retried by the supervisor that holds the task, with the real
/// error in the log, in `status` and in the record once it lands.
#[test]
fn an_unwritable_completed_dir_is_retried_and_never_blamed_on_a_dead_supervisor() {
    let root = logged_root(0).task("a.yaml", "description: fine\n");
    let Some(lock) = Immutable::new(root.p("tasks/completed")) else {
        return;
    };
    let _sup = root.spawn();
    wait_for(MIN, "two failed commits, or a misfiled task", || {
        !root.names("failed").is_empty()
            || root.sup_logs().matches("Operation not permitted").count() >= 2
    });
    assert!(
        root.names("failed").is_empty(),
        "misfiled: {}",
        root.read("tasks/failed/a.result.json")
    );
    assert_eq!(root.names("assigned"), ["a"]);
    let status = root.mailroom(&["status"]);
    assert!(
        stdout(&status).contains("Operation not permitted"),
        "status does not say why: {}",
        stdout(&status)
    );
    drop(lock);
    wait_for(MIN, "the commit to land", || {
        root.names("completed") == ["a"]
    });
    let rec = root.record("completed", "a");
    assert!(
        rec["warnings"]
            .to_string()
            .contains("Operation not permitted"),
        "{rec}"
    );
    assert_eq!(run_lines(&root), 1, "the run was repeated");
    assert!(root.names("failed").is_empty());
}

/// A deleted `tasks/assigned/` was never recreated: every claim failed (four
/// errors a second), nothing ran, and the running task was lost.
#[test]
fn a_removed_assigned_dir_is_recreated_and_its_running_task_kept() {
    let root = logged_root(0).task("t.yaml", "description: wait\n");
    let _sup = root.spawn();
    wait_for(MIN, "the agent to start", || run_lines(&root) == 1);
    std::fs::remove_dir_all(root.p("tasks/assigned")).unwrap();
    root.write("release", "");
    wait_for(MIN, "the task to be filed", || {
        !root.names("failed").is_empty() || !root.names("completed").is_empty()
    });
    assert!(root.p("tasks/assigned").is_dir());
    assert_eq!(root.names("failed"), ["t"], "{}", root.sup_logs());
    assert_eq!(root.read("tasks/failed/t.yaml"), "description: wait\n");
    assert_eq!(root.record("failed", "t")["outcome"], "tampered");
    root.write("tasks/pending/after.yaml", "description: after\n");
    wait_for(MIN, "a new task to run", || {
        root.names("completed") == ["after"]
    });
}

/// An outbox its agent made immutable: its follow-up could be queued but
/// not removed, and every retry of the commit (here `tasks/completed/` is
/// unwritable for a while) queued it again, as `next-2`, `next-3`, ... It is
/// queued once, and the record says it stayed in the outbox.
#[test]
fn a_follow_up_that_cannot_be_removed_from_its_outbox_is_queued_once() {
    const AGENT: &str = r#"if [ "$MAILROOM_TASK" = o ]; then
  printf 'description: the follow-up\n' > "$MAILROOM_OUTBOX/next.yaml"
  chattr +i "$MAILROOM_OUTBOX" || exit 9
fi
echo done"#;
    let root = Root::new()
        .agent_config(&["/bin/sh", "-c", AGENT], "retries: 0")
        .task("o.yaml", "description: writes a follow-up\n");
    let Some(lock) = Immutable::new(root.p("tasks/completed")) else {
        return;
    };
    // Lifts the outbox's flag wherever it ends up, so the root can go.
    struct Lift(Vec<std::path::PathBuf>);
    impl Drop for Lift {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(p)
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
    let _lift = Lift(
        ["assigned", "completed", "failed"]
            .iter()
            .map(|s| root.p(&format!("tasks/{s}/o.run/1/outbox")))
            .collect(),
    );
    let _sup = root.spawn();
    wait_for(MIN, "three failed tries of the commit", || {
        root.sup_logs().matches("Operation not permitted").count() >= 3
    });
    drop(lock);
    wait_for(MIN, "the task and its follow-up to complete", || {
        root.names("completed") == ["next", "o"]
    });
    let rec = root.record("completed", "o");
    assert_eq!(rec["followups"], serde_json::json!(["next"]), "{rec}");
    let w = rec["warnings"].to_string();
    assert!(w.contains("cannot be removed from the outbox"), "{rec}");
    assert!(
        root.names("pending").is_empty() && root.names("failed").is_empty(),
        "queued again: {:?} {:?}",
        root.names("pending"),
        root.names("failed")
    );
}

/// A run that cannot be prepared for its own task's reason (its agent made
/// the task's run directory immutable) was requeued every `retry_delay`
/// for ever. It waits longer each time, as a retry's backoff, and runs once
/// the cause is gone; none of those tries counts against `retries`.
#[test]
fn a_run_that_cannot_be_prepared_backs_off_and_runs_once_it_can() {
    const AGENT: &str = r#"if [ ! -e "$MAILROOM_ROOT/locked" ]; then
  touch "$MAILROOM_ROOT/locked"
  chattr +i "$MAILROOM_ROOT/tasks/assigned/$MAILROOM_TASK.run" || exit 9
  exit 1
fi
echo done"#;
    let root = Root::new()
        .config(&format!(
            "retries: 1\nretry_delay: 100ms\nretry_delay_max: 10m\nrescan_interval: 1s\nagents:\n  a:\n    command: [\"/bin/sh\", \"-c\", {AGENT:?}]\n"
        ))
        .task("p.yaml", "description: x\n");
    // Probes that the flag can be set here (root, e2fsprogs, ext4 or xfs).
    let Some(probe) = Immutable::new(root.p("tasks/tmp")) else {
        return;
    };
    drop(probe);
    let run = root.p("tasks/assigned/p.run");
    let _lift = Immutable(run.clone()); // lifts the agent's flag on drop
    let _sup = root.spawn();
    let state = || {
        std::fs::read(root.p("tasks/assigned/p.state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default()
    };
    wait_for(MIN, "six runs in a row that could not be prepared", || {
        state()["unprepared"] == 6
    });
    let st = state();
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("cannot prepare the run (6 times in a row)"),
        "{st}"
    );
    // The sixth wait is 1.6 to 3.2 s (100 ms doubled five times, jittered).
    let next = humantime::parse_rfc3339_weak(st["not_before"].as_str().unwrap()).unwrap();
    assert!(
        next > std::time::SystemTime::now() + Duration::from_millis(800),
        "{st}"
    );
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&run)
        .status();
    wait_for(MIN, "the task to complete", || {
        root.names("completed") == ["p"]
    });
    let rec = root.record("completed", "p");
    assert_eq!(rec["outcome"], "success", "{rec}");
}

/// Notes of commits made without their merge (`context/.unmerged/`) whose
/// merge fails for their own reason (an agent left an immutable directory
/// where the task's `agent_outputs/` file goes) do not starve the notes
/// behind them: a pass stopped at the first failure, and read the same
/// first notes each time.
#[test]
fn an_unmergeable_note_does_not_starve_the_notes_behind_it() {
    let bad: Vec<String> = (0..9).map(|i| format!("bad{i}")).collect();
    let mut root = Root::new().agent_config(&["sh", "-c", "echo answer"], "");
    for n in bad.iter().map(String::as_str).chain(["good"]) {
        root = root.task(&format!("{n}.yaml"), "description: x\n");
    }
    root.run_until_idle();
    assert_eq!(root.names("completed").len(), 10);
    let old = std::time::SystemTime::now() - Duration::from_secs(100);
    let mut locks = Vec::new();
    for n in &bad {
        let out = root.p(&format!("context/agent_outputs/{n}.md"));
        std::fs::remove_file(&out).unwrap();
        std::fs::create_dir(&out).unwrap();
        let Some(lock) = Immutable::new(out) else {
            return;
        };
        locks.push(lock);
        root.write(&format!("context/.unmerged/{n}"), "completed");
        let f = std::fs::File::options()
            .write(true)
            .open(root.p(&format!("context/.unmerged/{n}")))
            .unwrap();
        f.set_modified(old).unwrap();
    }
    std::fs::remove_file(root.p("context/agent_outputs/good.md")).unwrap();
    root.write("context/.unmerged/good", "completed");
    let _sup = root.spawn();
    wait_for(MIN, "the note behind the unmergeable ones to merge", || {
        root.exists("context/agent_outputs/good.md") && !root.exists("context/.unmerged/good")
    });
    assert!(
        root.read("context/agent_outputs/good.md")
            .contains("answer")
    );
    // The others stay noted, to be tried again.
    assert_eq!(root.entries("context/.unmerged").len(), 9);
}
