//! Agents that tamper with their own task, and other programs that reuse a
//! task's name: the task is the supervisor's, not the agent's. Whatever an
//! agent does to its task file (move it back to `pending/`, delete it, write
//! a file of its name into `completed/`), the run is filed once, the task never
//! vanishes, loops or wedges in `assigned/`. A name in use is never filed
//! under again, and a task waiting for its retry keeps its bookkeeping.

use crate::common::*;
use std::time::Duration;

/// A root whose agent `a` is `tests/agents/tamper.sh` (the description says
/// what it does), logging its runs to `runs.log`, with `retries` as given.
fn tamper_root(retries: u32, extra: &str) -> Root {
    let root = Root::new();
    let runlog = root.p("runs.log");
    let release = root.p("release");
    root.config(&format!(
        "retry_delay: 50ms\nsettle: 300ms\nrescan_interval: 1s\nretries: {retries}\n{extra}\n\
         agents:\n  a:\n    command: [{:?}]\n    grace: 1s\n    prompt_template: \"{{description}}\"\n\
         \x20   env: {{RUNLOG: {:?}, RELEASE: {:?}}}\n",
        agent("tamper.sh"),
        runlog.to_string_lossy(),
        release.to_string_lossy(),
    ))
}

fn runs(root: &Root) -> Vec<String> {
    std::fs::read_to_string(root.p("runs.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every task file of the tree, as `state/name`.
fn everywhere(root: &Root) -> Vec<String> {
    ["pending", "assigned", "completed", "failed"]
        .iter()
        .flat_map(|s| root.names(s).into_iter().map(move |n| format!("{s}/{n}")))
        .collect()
}

#[test]
fn an_agent_that_moves_its_task_back_to_pending_does_not_loop() {
    let root = tamper_root(0, "").task("t.yaml", "description: move-back\n");
    root.run_until_idle_within(Duration::from_secs(30));
    assert_eq!(runs(&root).len(), 1, "ran again: {:?}", runs(&root));
    assert_eq!(everywhere(&root), ["failed/t"]);
    let rec = root.record("failed", "t");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("tasks/pending/t.yaml"), "{err}");
    assert!(!root.exists("tasks/completed/t.result.json"));
    assert_eq!(root.read("tasks/failed/t.yaml"), "description: move-back\n");
    assert!(
        root.entries("tasks/assigned").is_empty(),
        "{:?}",
        root.entries("tasks/assigned")
    );
}

#[test]
fn an_agent_that_deletes_its_task_file_does_not_make_it_vanish() {
    let root = tamper_root(2, "").task("t.yaml", "description: delete\n");
    root.run_until_idle_within(Duration::from_secs(30));
    assert_eq!(runs(&root).len(), 1, "{:?}", runs(&root));
    assert_eq!(everywhere(&root), ["failed/t"]);
    // Restored from the copy taken at the claim: the same file again.
    assert_eq!(root.read("tasks/failed/t.yaml"), "description: delete\n");
    assert!(!root.exists("tasks/failed/t.run/task-file.replaced"));
    // The run directory's copy is named so that not even a recursive scan
    // (`find tasks -name '*.yaml'`) takes it for a task.
    let out = std::process::Command::new("find")
        .args([
            root.p("tasks").to_str().unwrap(),
            "-name",
            "*.yaml",
            "-o",
            "-name",
            "*.yml",
        ])
        .output()
        .unwrap();
    let found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.trim_start_matches(root.p("tasks").to_str().unwrap())
                .to_owned()
        })
        .collect();
    assert_eq!(found, ["/failed/t.yaml"], "{found:?}");
    let rec = root.record("failed", "t");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    assert!(rec["error"].as_str().unwrap().contains("deleted"), "{rec}");
    assert!(root.entries("tasks/assigned").is_empty());
    // The log has it, once.
    let log = root.read("context/completed_tasks.jsonl");
    assert_eq!(log.matches("\"task\":\"t\"").count(), 1, "{log}");
}

#[test]
fn an_agent_that_writes_its_name_into_completed_does_not_wedge_its_task() {
    let root = tamper_root(0, "")
        .task("t.yaml", "description: shadow\n")
        .task("next.yaml", "description: move-back\nafter: [t]\n");
    root.run_until_idle_within(Duration::from_secs(30));
    // Its dependent never ran: the task of its name failed, under a clash
    // name, and the planted file completes nothing.
    assert_eq!(runs(&root).len(), 1, "{:?}", runs(&root));
    let rec = root.record("failed", "next");
    assert_eq!(rec["outcome"], "dependency", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("dependency t failed (filed as t.clash-1)"),
        "{rec}"
    );
    assert!(
        root.entries("tasks/assigned").is_empty(),
        "wedged in assigned/: {:?}",
        root.entries("tasks/assigned")
    );
    // The planted file is left alone; the task is filed once, under a clash name.
    assert_eq!(
        root.read("tasks/completed/t.yaml"),
        "description: not the real one\n"
    );
    assert!(!root.exists("tasks/completed/t.result.json"));
    assert_eq!(root.names("failed"), ["next", "t.clash-1"]);
    let rec = root.record("failed", "t.clash-1");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("tasks/completed/t.yaml"),
        "{rec}"
    );
    assert_eq!(
        root.read("tasks/failed/t.clash-1.yaml"),
        "description: shadow\n"
    );
    // `show` of a task that waits for it says so too.
    let root = root.task("later.yaml", "description: x\nafter: [t]\n");
    let out = root.mailroom(&["show", "later"]);
    assert!(
        stdout(&out).contains("dependency t failed (filed as t.clash-1)"),
        "{}",
        stdout(&out)
    );
    // `retry` reaches it.
    let out = root.mailroom(&["retry", "t.clash-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An agent that plants a file of its name in the *other* terminal directory
/// (in `completed/` before it fails, in `failed/` before it succeeds): the
/// run is tampered, filed once under a clash name, and `wait`, `show` and
/// `list` never call the task completed.
#[test]
fn a_file_planted_in_the_other_terminal_directory_never_passes_for_the_task() {
    // With retries left too: the failed run is not retried (its retry would
    // be refused as a clash of the planted file), and nothing is left behind.
    for (act, planted, retries) in [
        ("shadow-fail", "completed", 0),
        ("shadow-fail", "completed", 2),
        ("shadow-failed", "failed", 0),
    ] {
        let root = tamper_root(retries, "").task("t.yaml", &format!("description: {act}\n"));
        root.run_until_idle_within(Duration::from_secs(30));
        assert_eq!(runs(&root).len(), 1, "{act}: {:?}", runs(&root));
        assert!(root.entries("tasks/assigned").is_empty(), "{act}");
        assert_eq!(
            root.read(&format!("tasks/{planted}/t.yaml")),
            "description: not the real one\n",
            "{act}: the planted file is left alone"
        );
        let rec = root.record("failed", "t.clash-1");
        assert_eq!(rec["outcome"], "tampered", "{act}: {rec}");
        assert_eq!(rec["attempts"], 1, "{act}: {rec}");
        let err = rec["error"].as_str().unwrap();
        assert!(
            err.contains(&format!("tasks/{planted}/t.yaml")),
            "{act}: {err}"
        );
        assert!(root.names("pending").is_empty(), "{act}");
        let out = root.mailroom(&["wait", "t", "--timeout", "5s"]);
        assert_eq!(out.status.code(), Some(1), "{act}: {}", stderr(&out));
        let shown = stdout(&root.mailroom(&["show", "t"]));
        assert!(
            shown.contains("t.clash-1") && !shown.contains("completed\n"),
            "{act}: {shown}"
        );
        let listed = stdout(&root.mailroom(&["list", "--state", planted]));
        assert!(
            listed.contains("no record: mailroom did not file") && listed.contains("t.clash-1"),
            "{act}: {listed}"
        );
    }
}

#[test]
fn a_broken_file_named_like_a_completed_task_is_filed_as_a_clash() {
    let root = tamper_root(0, "").task("done.yaml", "description: fine\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["done"]);
    // A broken file of that name, then a cancelled one.
    root.write("tasks/pending/done.yaml", "description: [unclosed\n");
    root.run_until_idle();
    root.write("tasks/pending/done.yaml", "description: later\ndelay: 1h\n");
    root.write("tasks/control/cancel/done", "");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["done"]);
    assert_eq!(
        root.names("failed"),
        ["done.clash-1", "done.clash-2"],
        "the name ended up in two states"
    );
    assert!(!root.exists("tasks/failed/done.result.json"));
    assert_eq!(root.record("failed", "done.clash-1")["outcome"], "invalid");
    assert_eq!(
        root.record("failed", "done.clash-2")["outcome"],
        "cancelled"
    );
    assert_eq!(root.record("completed", "done")["outcome"], "success");
}

#[test]
fn a_newer_file_while_a_task_waits_for_its_retry_keeps_its_state_file() {
    // Attempt 1 submits a newer file of its own name, then fails; the task
    // is requeued (retries: 1), the newer file is set aside as a clash.
    let root = tamper_root(1, "").task("t.yaml", "description: newer\n");
    root.run_until_idle_within(Duration::from_secs(30));
    assert_eq!(
        runs(&root).len(),
        2,
        "attempts were lost: {:?}",
        runs(&root)
    );
    let rec = root.record("failed", "t");
    assert_eq!(rec["outcome"], "exit", "{rec}");
    assert_eq!(rec["attempts"], 2, "{rec}");
    assert_eq!(rec["history"].as_array().unwrap().len(), 2, "{rec}");
    assert_eq!(root.names("failed"), ["t", "t.clash-1"]);
    assert_eq!(root.record("failed", "t.clash-1")["outcome"], "clash");
}

#[test]
fn an_agent_that_kills_its_keeper_is_stopped_and_its_run_is_no_spawn_failure() {
    // A keeper killed from outside (the OOM killer, or its own agent) leaves
    // the agent running: it is stopped before the task can run again, and the
    // run is neither a success nor a free spawn failure that hands the task
    // to a fallback agent while the first one still works on it.
    let root = tamper_root(0, "").task("t.yaml", "description: kill-keeper\n");
    root.run_until_idle_within(Duration::from_secs(60));
    assert_eq!(everywhere(&root), ["failed/t"]);
    let rec = root.record("failed", "t");
    assert_eq!(rec["outcome"], "signal", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("was killed by signal SIGKILL") && err.contains("was stopped"),
        "{err}"
    );
    assert!(processes_of(&root.path).is_empty(), "the agent still runs");
    assert!(
        !runs(&root).iter().any(|l| l.starts_with("late")),
        "{:?}",
        runs(&root)
    );
}

#[test]
fn an_agent_that_removes_its_run_directory_is_filed_as_tampered() {
    let root = tamper_root(2, "").task("t.yaml", "description: rm-run-dir\n");
    root.run_until_idle_within(Duration::from_secs(60));
    assert_eq!(runs(&root).len(), 1, "ran again: {:?}", runs(&root));
    assert_eq!(everywhere(&root), ["failed/t"]);
    let rec = root.record("failed", "t");
    assert_eq!(rec["outcome"], "tampered", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("tasks/assigned/t.run/1") && err.contains("removed or moved"),
        "{err}"
    );
    assert!(root.entries("tasks/assigned").is_empty());
}

#[test]
fn a_task_file_replaced_during_its_run_is_put_back_and_the_run_is_tampered() {
    // A directory, a link to a file outside the tree, another file of the
    // task's name: never filed as the task. The claimed file goes back, what
    // replaced it is kept in the run directory, the run is tampered.
    for (mode, what) in [
        ("as-dir", "a directory"),
        ("as-link", "a symbolic link"),
        // Deleted and written again: a new inode, or the same number
        // reused, which reads as an edit.
        ("rewrite", "another file|was changed"),
    ] {
        let root = tamper_root(2, "").task("t.yaml", &format!("description: {mode}\n"));
        root.run_until_idle_within(Duration::from_secs(30));
        assert_eq!(runs(&root).len(), 1, "{mode}: ran again: {:?}", runs(&root));
        assert_eq!(everywhere(&root), ["failed/t"], "{mode}");
        let rec = root.record("failed", "t");
        assert_eq!(rec["outcome"], "tampered", "{mode}: {rec}");
        let err = rec["error"].as_str().unwrap();
        assert!(
            what.split('|')
                .any(|w| err.contains(&format!("was replaced by {w}")) || err.contains(w))
                && err.contains("task-file.replaced"),
            "{mode}: {err}"
        );
        let filed = root.p("tasks/failed/t.yaml");
        let meta = std::fs::symlink_metadata(&filed).unwrap();
        assert!(meta.is_file(), "{mode}: filed as {meta:?}");
        assert_eq!(
            root.read("tasks/failed/t.yaml"),
            format!("description: {mode}\n"),
            "{mode}"
        );
        assert!(
            std::fs::symlink_metadata(root.p("tasks/failed/t.run/task-file.replaced")).is_ok(),
            "{mode}: what replaced it was not kept"
        );
        // The commit's own check finds the file put back intact: it sets
        // nothing more aside.
        assert!(
            !root.exists("tasks/failed/t.run/task-file.replaced-2"),
            "{mode}: mailroom's own restore was set aside"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode_of = |p: &str| std::fs::metadata(root.p(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode_of("tasks/failed/t.yaml"), 0o644, "{mode}");
        assert!(root.entries("tasks/assigned").is_empty(), "{mode}");
    }
}

#[test]
fn an_agent_that_signals_its_keeper_uses_up_its_attempts() {
    // A stop this supervisor did not ask for is no shutdown: each such run
    // counts, so the task ends instead of being requeued for free forever.
    let root = tamper_root(1, "").task("t.yaml", "description: term-keeper\n");
    root.run_until_idle_within(Duration::from_secs(60));
    assert_eq!(runs(&root).len(), 2, "{:?}", runs(&root));
    assert_eq!(everywhere(&root), ["failed/t"]);
    let rec = root.record("failed", "t");
    assert_eq!(rec["outcome"], "signal", "{rec}");
    assert_eq!(rec["attempts"], 2, "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("by another process than mailroom"),
        "{rec}"
    );
    assert!(processes_of(&root.path).is_empty());
}

#[test]
fn a_keeper_ignores_sighup() {
    // `pkill -HUP mailroom` (a reload of the supervisors) reaches keepers
    // too: it must not end their runs.
    let root = tamper_root(0, "").task("t.yaml", "description: hup-keeper\n");
    root.run_until_idle_within(Duration::from_secs(60));
    assert_eq!(everywhere(&root), ["completed/t"]);
    assert_eq!(runs(&root).len(), 1, "{:?}", runs(&root));
}

#[test]
fn an_agent_that_links_the_outputs_directory_elsewhere_gets_nothing_written_there() {
    let outside = tempfile_dir("mailroom-outside");
    let script = format!(
        r#"rm -rf "$MAILROOM_ROOT/context/agent_outputs"
ln -s {:?} "$MAILROOM_ROOT/context/agent_outputs"
echo answered"#,
        outside.display().to_string()
    );
    let root = Root::new()
        .agent_config(&["/bin/sh", "-c", &script], "retries: 0")
        .task("t.yaml", "description: x\n");
    root.run_until_idle();
    let written: Vec<_> = std::fs::read_dir(&outside).unwrap().flatten().collect();
    let _ = std::fs::remove_dir_all(&outside);
    assert!(
        written.is_empty(),
        "the supervisor wrote outside the tree: {written:?}"
    );
    let meta = std::fs::symlink_metadata(root.p("context/agent_outputs")).unwrap();
    assert!(meta.is_dir(), "{meta:?}");
    assert!(root.read("context/agent_outputs/t.md").contains("answered"));
    assert!(
        root.entries("context")
            .iter()
            .any(|e| e.starts_with("agent_outputs.set-aside-")),
        "{:?}",
        root.entries("context")
    );
}

fn tempfile_dir(prefix: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_stopped_keeper_is_continued_so_the_timeout_holds() {
    // A keeper stopped with SIGSTOP cannot enforce its run's timeout: the
    // supervisor continues it once the run is overdue, and the run ends as
    // a timeout instead of running on for ever.
    let root = tamper_root(0, "").task("t.yaml", "description: stop-keeper\ntimeout: 1s\n");
    let started = std::time::Instant::now();
    root.run_until_idle_within(Duration::from_secs(60));
    assert_eq!(everywhere(&root), ["failed/t"]);
    let rec = root.record("failed", "t");
    assert_eq!(rec["outcome"], "timeout", "{rec}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(processes_of(&root.path).is_empty());
}

#[test]
fn a_task_file_saved_again_unchanged_is_no_tampering() {
    // An editor's save that changed nothing makes a new file with the same
    // content: the same task, filed as the run ended.
    let root = tamper_root(0, "").task("t.yaml", "description: resave\n");
    root.run_until_idle_within(Duration::from_secs(30));
    assert_eq!(everywhere(&root), ["completed/t"]);
    assert!(!root.exists("tasks/completed/t.run/task-file.replaced"));
}

#[test]
fn a_cancel_of_a_run_whose_keeper_is_stopped_does_not_wait_for_the_timeout() {
    // Its agent SIGSTOPs the keeper; the run's timeout is far off. A cancel
    // continues the keeper, which stops the agent at once.
    let root = tamper_root(0, "").task("t.yaml", "description: stop-keeper\ntimeout: 10m\n");
    let _sup = root.spawn();
    wait_for(Duration::from_secs(30), "the keeper to be stopped", || {
        root.exists("runs.log")
            && processes_of(&root.path).iter().any(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T')))
            })
    });
    let started = std::time::Instant::now();
    let out = root.mailroom(&["cancel", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        Duration::from_secs(30),
        "the cancelled run to be filed",
        || everywhere(&root) == ["failed/t"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the cancel took {:?}",
        started.elapsed()
    );
    assert_eq!(root.record("failed", "t")["outcome"], "cancelled");
}

/// What an agent puts where its task's record or run directory must go (a
/// directory named like the record, a file named like the run directory)
/// does not wedge the commit: the task is filed once under a clash name,
/// `tampered`, naming the path, and the next task runs.
#[test]
fn an_obstacle_where_the_commit_goes_is_left_alone_and_named() {
    let script = r#"T="$MAILROOM_ROOT/tasks"
case "$MAILROOM_TASK" in
  dir-record-failed) mkdir -p "$T/failed/$MAILROOM_TASK.result.json/x"; exit 1 ;;
  dir-record-completed) mkdir "$T/completed/$MAILROOM_TASK.result.json"
    echo x > "$T/failed/$MAILROOM_TASK.clash-1.run" ;;
  file-run) echo x > "$T/completed/$MAILROOM_TASK.run" ;;
esac
exit 0"#;
    let root = Root::new()
        .agent_config(&["sh", "-c", script], "retries: 0")
        .task("dir-record-failed.yaml", "description: x\n")
        .task("dir-record-completed.yaml", "description: x\n")
        .task("file-run.yaml", "description: x\n")
        .task("fine.yaml", "description: x\n");
    root.run_until_idle_within(Duration::from_secs(60));
    // The first clash name of `dir-record-completed` has the place of its
    // run directory taken too: the next name is used.
    for (name, path) in [
        (
            "dir-record-failed.clash-1",
            "tasks/failed/dir-record-failed.result.json",
        ),
        (
            "dir-record-completed.clash-2",
            "tasks/completed/dir-record-completed.result.json",
        ),
        ("file-run.clash-1", "tasks/completed/file-run.run"),
    ] {
        let rec = root.record("failed", name);
        assert_eq!(rec["outcome"], "tampered", "{rec}");
        let err = rec["error"].as_str().unwrap();
        assert!(err.contains(path), "{name}: {err}");
        assert!(root.exists(path), "{path} was removed");
    }
    assert_eq!(root.record("completed", "fine")["outcome"], "success");
}

/// An agent that appends a forged line to `context/completed_tasks.jsonl`
/// with totals at `u64::MAX`: the next merge added 1 to them, which wrapped
/// them to 0 (counters that must never go down) or, with overflow checks,
/// panicked the commit and the supervisor with it, leaving the task in
/// `assigned/`.
#[test]
fn a_forged_log_line_with_huge_totals_neither_wraps_nor_panics_the_merge() {
    use std::os::unix::fs::PermissionsExt;
    let root = Root::new();
    root.write(
        "forge.sh",
        "#!/bin/sh\nprintf '{\"totals\":{\"completed\":18446744073709551615,\"failed\":18446744073709551615},\"task\":\"forged\"}\\n' >> \"$MAILROOM_CONTEXT/completed_tasks.jsonl\"\necho ok\n",
    );
    std::fs::set_permissions(root.p("forge.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let forge = root.p("forge.sh").to_string_lossy().into_owned();
    let root = root
        .agent_config(&[&forge], "")
        .task("t.yaml", "description: forge\n");
    let out = root.run_until_idle_within(Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.record("completed", "t")["status"], "completed");
    assert!(
        root.names("assigned").is_empty(),
        "{:?}",
        root.names("assigned")
    );
    let log = root.read("context/completed_tasks.jsonl");
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["task"], "t", "{log}");
    assert_eq!(last["totals"]["completed"], u64::MAX, "{log}");
}

/// An agent that renames its run directory to another task's
/// (`assigned/victim.run`): the next recovery took it for an interrupted run
/// of `victim` whose state file was deleted, rebuilt one from the moved
/// directory's spec, put the mover's claimed file back as
/// `assigned/victim.yaml` and filed it as `failed/victim` (tampered); the
/// real `victim`, waiting in `pending/`, was then rejected as a clash and
/// never ran.
#[test]
fn a_run_directory_renamed_to_another_tasks_name_does_not_fail_that_task() {
    use std::os::unix::fs::PermissionsExt;
    let root = Root::new();
    root.write(
        "mover.sh",
        "#!/bin/sh\n[ \"$MAILROOM_TASK\" = mover ] && mv \"$MAILROOM_ROOT/tasks/assigned/mover.run\" \"$MAILROOM_ROOT/tasks/assigned/victim.run\"\necho done\n",
    );
    std::fs::set_permissions(root.p("mover.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mover = root.p("mover.sh").to_string_lossy().into_owned();
    let root = root
        .agent_config(&[&mover], "retries: 0")
        .task("mover.yaml", "description: mover\n")
        .task("victim.yaml", "description: victim\nafter: [gate]\n");
    let out = root.run_until_idle_within(Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.record("failed", "mover")["outcome"], "tampered");
    assert!(root.exists("tasks/assigned/victim.run"));
    // The next start recovers `assigned/`; `victim` then runs once `gate` is done.
    root.write("tasks/pending/gate.yaml", "description: gate\n");
    let out = root.run_until_idle_within(Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.names("failed"), ["mover"]);
    assert_eq!(root.names("completed"), ["gate", "victim"]);
    let v = root.read("tasks/completed/victim.yaml");
    assert!(v.contains("description: victim"), "{v}");
}

/// An agent that plants a link or a FIFO at its tree's count,
/// `tasks/trees/<first task>`, then writes a follow-up: the count was opened
/// following links and written (an outside file was overwritten with it), and
/// a FIFO held the commit, and with it the supervisor's shutdown, for good.
/// Either is set aside now, and the count starts afresh.
#[test]
fn a_link_or_a_fifo_at_a_tree_count_is_set_aside_not_written_through() {
    use std::os::unix::fs::PermissionsExt;
    let root = Root::new();
    let outside = root.p("outside.txt");
    std::fs::write(&outside, "precious\n").unwrap();
    root.write(
        "plant.sh",
        &format!(
            "#!/bin/sh\nT=\"$MAILROOM_ROOT/tasks/trees\"; mkdir -p \"$T\"\ncase \"$MAILROOM_TASK\" in\n\
             viafifo) mkfifo \"$T/viafifo\" ;;\nvialink) ln -s {:?} \"$T/vialink\" ;;\n*) exit 0 ;;\nesac\n\
             echo 'description: f' > \"$MAILROOM_OUTBOX/f-$MAILROOM_TASK.yaml\"\n",
            outside.to_string_lossy()
        ),
    );
    std::fs::set_permissions(root.p("plant.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let plant = root.p("plant.sh").to_string_lossy().into_owned();
    let root = root
        .agent_config(&[&plant], "")
        .task("vialink.yaml", "description: link\n")
        .task("viafifo.yaml", "description: fifo\n");
    root.run_until_idle_within(Duration::from_secs(30));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious\n");
    assert_eq!(
        root.names("completed"),
        ["f-viafifo", "f-vialink", "viafifo", "vialink"]
    );
    for t in ["vialink", "viafifo"] {
        assert_eq!(root.read(&format!("tasks/trees/{t}")).trim(), "2");
        assert!(root.exists(&format!("tasks/trees/{t}.set-aside-1")));
    }
}

/// An agent that appends a forged line with `input_tokens` at `u64::MAX` to
/// `context/completed_tasks.jsonl` while a budget is set: summing the
/// ledger overflowed, which wrapped the spend back under the budget or, with
/// overflow checks, panicked the supervisor's main loop.
#[test]
fn a_forged_log_line_with_huge_token_counts_saturates_the_ledger() {
    use std::os::unix::fs::PermissionsExt;
    let root = Root::new();
    root.write(
        "tokens.sh",
        "#!/bin/sh\n[ \"$MAILROOM_TASK\" = one ] && printf '{\"agent\":\"a\",\"finished_at\":\"%sT00:00:00Z\",\"tree\":\"x\",\"usage\":{\"input_tokens\":18446744073709551615,\"output_tokens\":5}}\\n' \"$(date -u +%Y-%m-%d)\" >> \"$MAILROOM_CONTEXT/completed_tasks.jsonl\"\necho ok\n",
    );
    std::fs::set_permissions(root.p("tokens.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = root.p("tokens.sh").to_string_lossy().into_owned();
    root.write(
        "mailroom.yaml",
        &format!(
            "retry_delay: 50ms\nsettle: 300ms\nrescan_interval: 1s\nagents:\n  a:\n    command: [{a:?}]\n    grace: 1s\n    budget: {{daily_tokens: 1000000000}}\n"
        ),
    );
    let root = root
        .task("one.yaml", "description: one\n")
        .task("two.yaml", "description: two\nafter: [one]\n");
    // Over its daily budget once `one` is done: `two` waits for the next
    // day, and so would `run --exit-when-idle`.
    let mut sup = root.spawn();
    wait_for(Duration::from_secs(30), "the budget to be reached", || {
        root.sup_logs().contains("reached its budget daily_tokens")
    });
    // The loop went on (a panic would have ended the process, exit 101).
    assert!(alive(sup.pid()), "{}", root.sup_logs());
    sup.signal(15);
    assert!(
        sup.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        root.sup_logs()
    );
    assert_eq!(root.names("completed"), ["one"]);
    assert_eq!(root.names("pending"), ["two"]);
}

/// A FIFO at `context/completed_tasks.jsonl` (an agent's doing, while other
/// runs go on): the prompt of the next run read the log's recent lines
/// through a plain open, which waited for a writer for good; the spawn, and
/// the supervisor's shutdown behind it, never came. The ledger of budgets
/// opened it the same way. Only a regular file is read now.
#[test]
fn a_fifo_in_the_place_of_the_context_log_holds_no_prompt() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("t1.yaml", "description: one\n");
    let log = std::ffi::CString::new(
        root.p("context/completed_tasks.jsonl")
            .to_string_lossy()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(unsafe { mkfifo(log.as_ptr(), 0o644) }, 0);
    root.run_until_idle_within(Duration::from_secs(30));
    assert_eq!(root.record("completed", "t1")["status"], "completed");
    assert!(root.exists("context/completed_tasks.jsonl.set-aside-1"));
}

unsafe extern "C" {
    fn mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}
