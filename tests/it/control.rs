//! Live control through the tree: cancel, pause and resume, reload, wait and
//! add --wait exit codes, and that every --json output parses.

use crate::common::*;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

#[test]
fn cancel_stops_a_running_agent_and_its_grandchildren() {
    let root = Root::new();
    let pidfile = root.p("pid");
    let root = root
        .config(&format!(
            "agents:\n  a:\n    command: [{:?}]\n    grace: 300ms\n    env:\n      PIDFILE: {:?}\n",
            agent("hang.sh"),
            pidfile.display().to_string()
        ))
        .task("long.yaml", "description: hang around\n");
    let sup = root.spawn();
    let ag: i32 = root.pid("pid.agent");
    let gc: i32 = root.pid("pid.grandchild");
    // `status` counts the supervisor's runs from the tree, as it lists
    // them, not from a heartbeat written before the run began.
    let out = root.mailroom(&["status"]);
    let text = stdout(&out);
    assert!(text.contains("running long "), "{text}");
    assert!(
        text.contains(&format!(":{}", sup.pid())) && text.contains(", 1 running, last beat"),
        "{text}"
    );
    // `show` names the agent of the run under way.
    let show = stdout(&root.mailroom(&["show", "long"]));
    assert!(show.contains("\nagent: a"), "{show}");
    let out = root.mailroom(&["cancel", "long"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("long: cancelled (failed)"),
        "{}",
        stdout(&out)
    );
    let rec = root.record("failed", "long");
    assert_eq!(rec["outcome"], "cancelled");
    wait_for(
        Duration::from_secs(5),
        "agent and grandchild to be gone",
        || !alive(ag) && !alive(gc),
    );
    assert!(root.entries("tasks/control/cancel").is_empty());
}

/// A cancel marker made with `mkdir` instead of `touch` cancels as a file
/// does, and goes with the commit like one: it does not cancel the next
/// task of that name (it did, at every retry, for ever).
#[test]
fn a_cancel_marker_that_is_a_directory_cancels_once() {
    let root = Root::new();
    let pidfile = root.p("pid");
    let root = root.config(&format!(
        "retries: 0\nagents:\n  slow:\n    command: [{:?}]\n    grace: 300ms\n    env:\n      PIDFILE: {:?}\n  ok:\n    command: [{:?}]\n",
        agent("hang.sh"),
        pidfile.display().to_string(),
        agent("ok.sh"),
    ))
    .task("long.yaml", "description: hang around\nagent: slow\n");
    let _sup = root.spawn();
    root.pid("pid.agent");
    std::fs::create_dir_all(root.p("tasks/control/cancel/long")).unwrap();
    wait_for(MIN, "the cancelled task in failed/", || {
        root.names("failed") == ["long"]
    });
    assert_eq!(root.record("failed", "long")["outcome"], "cancelled");
    // The commit's last step removes the marker, right after the move.
    wait_for(MIN, "the marker to go with the commit", || {
        root.entries("tasks/control/cancel").is_empty()
    });
    // The same name again, with an agent that finishes: it completes.
    std::fs::remove_file(root.p("tasks/failed/long.yaml")).unwrap();
    std::fs::remove_file(root.p("tasks/failed/long.result.json")).unwrap();
    std::fs::remove_dir_all(root.p("tasks/failed/long.run")).unwrap();
    root.write("tasks/pending/long.yaml", "description: again\nagent: ok\n");
    wait_for(MIN, "the new task of that name to complete", || {
        root.exists("tasks/completed/long.result.json")
    });
}

/// A running task that ends on its own while its cancel is on the way is
/// no cancel: `mailroom cancel` says it finished first, and fails.
#[test]
fn a_cancel_that_lost_the_race_to_the_finish_says_so() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("x.yaml", "description: x\n");
    root.run_until_idle();
    assert_eq!(root.record("completed", "x")["outcome"], "success");
    // Seen running (no supervisor here to act on the marker), the cancel is
    // requested; then the task is filed, completed, as its commit would.
    std::fs::rename(
        root.p("tasks/completed/x.yaml"),
        root.p("tasks/assigned/x.yaml"),
    )
    .unwrap();
    let mut c = root.cmd(&["cancel", "x", "--timeout", "60s"]);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    wait_for(MIN, "the cancel marker", || {
        root.exists("tasks/control/cancel/x")
    });
    std::fs::rename(
        root.p("tasks/assigned/x.yaml"),
        root.p("tasks/completed/x.yaml"),
    )
    .unwrap();
    let out = wait_bounded(child, MIN);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out)
            .contains("`x` finished before the cancel took effect (completed, outcome `success`)"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("cancelled"), "{}", stdout(&out));
}

/// Markers in the way (a directory where the pause file goes, a file where
/// the cancel directory goes) are named in the command's error.
#[test]
fn control_commands_name_the_file_in_their_way() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("p.yaml", "description: x\n");
    std::fs::create_dir_all(root.p("tasks/control/pause")).unwrap();
    // A directory there pauses as a file does; resume removes it.
    let out = root.mailroom(&["pause"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = root.mailroom(&["resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.exists("tasks/control/pause"));
    // Claimed by nobody: the pending task is filed at once, no marker.
    // A running one needs the marker: cancel/ is a file here.
    std::fs::rename(
        root.p("tasks/pending/p.yaml"),
        root.p("tasks/assigned/p.yaml"),
    )
    .unwrap();
    root.write("tasks/control/cancel", "not a directory");
    let out = root.mailroom(&["cancel", "p", "--timeout", "1s"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("tasks/control/cancel"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cancel_of_a_pending_task_needs_no_supervisor() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("p.yaml", "description: x\n");
    let out = root.mailroom(&["cancel", "p"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.record("failed", "p")["outcome"], "cancelled");
    let again = root.mailroom(&["cancel", "p"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already finished"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn pause_holds_claims_and_resume_releases_them() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("t.yaml", "description: x\n");
    assert_eq!(
        stdout(&root.mailroom(&["pause"])),
        "paused claiming (running agents carry on)\n"
    );
    assert_eq!(
        stdout(&root.mailroom(&["pause"])),
        "claiming was paused already (running agents carry on)\n"
    );
    assert_eq!(
        stdout(&root.mailroom(&["resume", "--agent", "a"])),
        "agent a was not paused; the whole tree is paused (`mailroom resume`)\n"
    );
    // Paused, an idle-exiting supervisor finds nothing it may start.
    root.run_until_idle();
    assert_eq!(root.names("pending"), ["t"]);
    let st = root.mailroom(&["status"]);
    assert!(stdout(&st).contains("1 pending"), "{}", stdout(&st));
    // A wait on a paused tree says why nothing moves.
    let _sup = root.spawn();
    let w = root.mailroom(&["wait", "t", "--timeout", "1s"]);
    assert_eq!(w.status.code(), Some(124), "{}", stderr(&w));
    assert!(
        stderr(&w).contains("claiming is paused on this tree"),
        "{}",
        stderr(&w)
    );
    drop(_sup);
    assert_eq!(stdout(&root.mailroom(&["resume"])), "resumed claiming\n");
    assert_eq!(
        stdout(&root.mailroom(&["resume"])),
        "claiming was not paused\n"
    );
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["t"]);
}

#[test]
fn pausing_one_agent_holds_only_its_tasks() {
    let ok = agent("ok.sh");
    let root = Root::new()
        .config(&format!(
            "concurrency: 2\nagents:\n  a:\n    command: [{ok:?}]\n  b:\n    command: [{ok:?}]\n"
        ))
        .task("for-a.yaml", "description: x\nagent: a\n")
        .task("for-b.yaml", "description: x\nagent: b\n");
    assert!(root.mailroom(&["pause", "--agent", "a"]).status.success());
    let _sup = root.spawn();
    // Both were read in the first scan and would be claimed in one pass.
    wait_for(MIN, "b's task to complete", || {
        root.names("completed") == ["for-b"]
    });
    assert_eq!(root.names("pending"), ["for-a"]);
    let ag = root.mailroom(&["agents", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ag.stdout).unwrap();
    let a = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "a")
        .unwrap();
    assert_eq!(a["paused"], true);
    assert!(root.mailroom(&["resume", "--agent", "a"]).status.success());
    wait_for(MIN, "a's task to complete", || {
        root.names("completed").len() == 2
    });
}

/// A pause of an agent the config does not define (a typo) is refused, and
/// leaves no marker; `--force` pauses it all the same, and its resume works.
#[test]
fn pausing_an_agent_the_config_does_not_define_needs_force() {
    let root = Root::new().agent_config(&["true"], "");
    let out = root.mailroom(&["pause", "--agent", "nosuch"]);
    fails_saying(&out, "no agent `nosuch` in mailroom.yaml (it has: a)");
    fails_saying(
        &out,
        "`pause --agent nosuch --force` pauses it all the same",
    );
    assert!(!root.p("tasks/control/pause.nosuch").exists());
    let out = root.mailroom(&["resume", "--agent", "nosuch"]);
    fails_saying(&out, "no pause of it to resume");
    let out = root.mailroom(&["pause", "--agent", "nosuch", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: no agent `nosuch`"));
    assert!(root.p("tasks/control/pause.nosuch").exists());
    assert!(
        root.mailroom(&["resume", "--agent", "nosuch"])
            .status
            .success()
    );
    assert!(!root.p("tasks/control/pause.nosuch").exists());
    // --force means nothing without --agent.
    assert!(!root.mailroom(&["pause", "--force"]).status.success());
}

#[test]
fn a_reload_applies_new_limits_and_refuses_a_bad_config() {
    let root = Root::new();
    let log = root.p("spans.log");
    let cfg = |n: u32| {
        format!(
            "concurrency: 4\nagents:\n  a:\n    command: [{:?}]\n    max_instances: {n}\n    env: {{RUNLOG: {:?}, SPAN_MS: \"1500\"}}\n",
            agent("span.sh"),
            log.display().to_string()
        )
    };
    let root = root
        .config(&cfg(1))
        .task("one.yaml", "description: x\n")
        .task("two.yaml", "description: x\n");
    let sup = root.spawn();
    let starts = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("S "))
            .count()
    };
    wait_for(MIN, "the first agent to start", || starts() == 1);
    // Configs are replaced the safe way (temp file, rename), as an editor would.
    let replace = |text: &str| {
        root.write("mailroom.yaml.new", text);
        std::fs::rename(root.p("mailroom.yaml.new"), root.p("mailroom.yaml")).unwrap();
    };
    let logs = || -> String {
        root.entries(".")
            .iter()
            .filter(|e| e.starts_with("sup-"))
            .map(|e| root.read(e))
            .collect()
    };
    // A broken config is refused and changes nothing.
    replace("concurency: 9\n");
    sup.signal(SIGHUP);
    wait_for(MIN, "the bad config to be refused", || {
        logs().contains("new configuration refused")
    });
    // One with no settings (a save in progress, or a mistake) is refused
    // too, and status says so; it is not taken for the defaults.
    replace("# all commented out\n# agents: {}\n");
    sup.signal(SIGHUP);
    wait_for(MIN, "the empty config to be refused", || {
        logs().contains("it has no settings")
    });
    let status = stdout(&root.mailroom(&["status"]));
    assert!(
        status.contains("config invalid") && status.contains("no settings"),
        "{status}"
    );
    // A config moved away (to edit it, `git stash`) is not taken for the
    // defaults either: the demo agent would take the tasks.
    std::fs::remove_file(root.p("mailroom.yaml")).unwrap();
    sup.signal(SIGHUP);
    wait_for(MIN, "the missing config to be refused", || {
        logs().contains("mailroom.yaml is gone; this supervisor keeps the configuration it had")
    });
    assert!(!logs().contains("configuration reloaded"), "{}", logs());
    // A valid one with room for two: the second task starts while the first runs.
    replace(&cfg(2));
    sup.signal(SIGHUP);
    wait_for(MIN, "the second agent to start", || starts() == 2);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.lines().any(|l| l.starts_with("E ")),
        "the first run was disturbed or finished before the reload took effect:\n{text}"
    );
    wait_for(MIN, "both to complete", || {
        root.names("completed").len() == 2
    });
    assert!(logs().contains("configuration reloaded"));
    drop(sup);
}

#[test]
fn wait_and_add_wait_exit_with_the_outcome() {
    let ok = agent("ok.sh");
    let fail = agent("fail.sh");
    let root = Root::new().config(&format!(
        "retries: 0\nagents:\n  good:\n    command: [{ok:?}]\n    prompt_template: \"{{description}}\"\n  bad:\n    command: [{fail:?}]\n"
    ));
    let _sup = root.spawn();
    let out = root.mailroom(&[
        "add",
        "hello there",
        "--agent",
        "good",
        "--name",
        "g",
        "--wait",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello there", "add --wait prints the output");
    let out = root.mailroom(&["add", "doomed", "--agent", "bad", "--name", "b", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("b failed: agent exited with code 3"),
        "{}",
        stderr(&out)
    );
    // `show` says how it ended at the top, and where its run is.
    let shown = stdout(&root.mailroom(&["show", "b"]));
    for line in [
        "\noutcome: exit after 1 attempt\n",
        "\nerror: agent exited with code 3",
        "\nlast run: tasks/failed/b.run/1/ (",
    ] {
        assert!(shown.contains(line), "{line:?} in {shown}");
    }
    // `logs -f` ends with how the task ended, in its words and exit code.
    let out = root.mailroom(&["logs", "-f", "b"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("mailroom: `b` failed: agent exited with code 3"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.mailroom(&["logs", "b"]).status.code(), Some(0));
    assert_eq!(root.mailroom(&["wait", "g"]).status.code(), Some(0));
    assert_eq!(root.mailroom(&["wait", "g", "b"]).status.code(), Some(1));
    let w = root.mailroom(&["wait", "g", "b", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(v["failed"], serde_json::json!(["b"]));
    assert_eq!(
        root.mailroom(&["wait"]).status.code(),
        Some(0),
        "the queue is empty"
    );
    assert!(root.mailroom(&["wait", "nope"]).status.code() != Some(0));
    // What is left waits for a task nobody submitted (directly, or through
    // another pending task): a wait for the whole queue ends, says so, and
    // does not claim that everything completed.
    for (name, after) in [("orphan", "ghost"), ("orphan2", "orphan")] {
        let out = root.mailroom(&[
            "add", "x", "--agent", "good", "--name", name, "--after", after,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        // `add` says when a dependency does not exist (yet).
        assert_eq!(
            stderr(&out).contains("no task `ghost` exists yet"),
            after == "ghost",
            "{}",
            stderr(&out)
        );
    }
    // A dependency that failed is refused: the task would fail at once.
    fails_saying(
        &root.mailroom(&["add", "x", "--agent", "good", "--after", "g,b"]),
        "which failed (tasks/failed/b.yaml)",
    );
    // `--after a,b` is two dependencies.
    let out = root.mailroom(&[
        "add",
        "x",
        "--agent",
        "good",
        "--name",
        "two",
        "--after",
        "g, orphan",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let two = root.read("tasks/pending/two.yaml");
    assert!(two.contains("- g\n") && two.contains("- orphan\n"), "{two}");
    // A wait for named tasks that are stranded ends too (it hung until its
    // timeout).
    let out = root.mailroom(&["wait", "orphan2", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("waits for tasks nobody submitted: orphan2 (waiting for ghost)"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(root.p("tasks/pending/two.yaml")).unwrap();
    let out = root.mailroom(&["wait", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "waits for tasks nobody submitted: orphan (waiting for ghost), orphan2 (waiting for ghost)"
        ),
        "{}",
        stderr(&out)
    );
    let w = root.mailroom(&["wait", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(v["stranded"].as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn wait_times_out_with_124() {
    let root = Root::new().task("t.yaml", "description: x\n");
    let out = root.mailroom(&["wait", "t", "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(124));
}

#[test]
fn bad_option_values_are_usage_errors_and_submit_nothing() {
    let root = Root::new();
    for (args, hint) in [
        (
            &["add", "x", "--priority", "urgent"][..],
            "use high, normal or low",
        ),
        (&["add", "x", "--timeout", "90"], "`90` has no unit"),
        (
            &["add", "--file", "t.yaml", "--agent", "a"],
            "cannot be used with",
        ),
        (&["wait", "--timeout", "5"], "`5` has no unit"),
        (&["cancel", "x", "--timeout", "5"], "`5` has no unit"),
        (&["stop", "--timeout", "5"], "`5` has no unit"),
        (&["list", "--state", "bogus"], "use pending, assigned"),
        (&["usage", "--since", "yesterday"], "give a date"),
        (&["run", "--agents", "demo"], "`demo` is not AGENT:COUNT"),
        (&["start", "--agents", "demo:0"], "whole number from 1"),
    ] {
        let out = root.mailroom(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(hint), "{args:?}: {}", stderr(&out));
    }
    assert!(root.names("pending").is_empty(), "nothing was submitted");
    assert!(
        !root.p("logs/mailroom.log").exists(),
        "no supervisor was started"
    );
}

#[test]
fn waiting_with_no_supervisor_has_its_own_exit_code() {
    // 69 (EX_UNAVAILABLE), not 1: a script can tell "nobody runs the tree"
    // from "the task failed". The task stays pending, nothing is lost.
    let root = Root::new().task("t.yaml", "description: x\n");
    let out = root.mailroom(&["wait", "t"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no supervisor is running"),
        "{}",
        stderr(&out)
    );
    // `logs -f` says the same, rather than wait forever for the start.
    let out = root.mailroom(&["logs", "-f", "t"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no supervisor is running"),
        "{}",
        stderr(&out)
    );
    let out = root.mailroom(&["add", "later", "--name", "later", "--wait"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert_eq!(root.names("pending"), ["later", "t"]);
    // It says the task is queued all the same (a script must not add it again).
    assert!(
        stderr(&out).contains("`later` is queued in tasks/pending/ and runs when a supervisor")
            && stderr(&out).contains("no supervisor is running"),
        "{}",
        stderr(&out)
    );
}

/// `show` of a subtask parent says it ran no agent, rather than the
/// route today's config would give it; so does a task filed without a run.
#[test]
fn show_names_no_agent_for_a_task_that_ran_none() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task(
            "p.yaml",
            "description: parent\nsubtasks:\n  - one\n  - two\n",
        )
        .task("bad.yaml", "description: x\nbogus: 1\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["p", "p.1", "p.2"]);
    let show = stdout(&root.mailroom(&["show", "p"]));
    assert!(
        show.contains("agent: none (a subtask parent runs no agent; its subtasks do)"),
        "{show}"
    );
    let show = stdout(&root.mailroom(&["show", "bad"]));
    assert!(show.contains("agent: none (it ran none)"), "{show}");
}

/// A file in `completed/` with a record an agent wrote (not one mailroom
/// filed) is listed as `show` shows it: no record, not a completed task.
#[test]
fn list_does_not_pass_a_forged_record_for_a_completed_task() {
    let root = Root::new();
    root.write("tasks/completed/forged.yaml", "description: x\n");
    root.write(
        "tasks/completed/forged.result.json",
        "{\"status\": \"completed\"}\n",
    );
    let list = stdout(&root.mailroom(&["list", "--state", "completed"]));
    assert!(
        list.contains("forged  (no record: mailroom did not file tasks/completed/forged.yaml"),
        "{list}"
    );
}

/// `show` of a task waiting for its retry shows its last attempt's output
/// as a merge would take it (the answer before the CLI's raw stdout).
#[test]
fn show_of_a_task_waiting_for_a_retry_prefers_its_answer_to_stdout() {
    let root = Root::new()
        .config(
            "retries: 1\nretry_delay: 1h\nagents:\n  a:\n    command: [\"sh\", \"-c\", \
             \"echo '{\\\"raw\\\": \\\"envelope\\\"}'; echo the answer so far > \\\"$MAILROOM_OUTPUT\\\"; exit 1\"]\n",
        )
        .task("r.yaml", "description: x\n");
    let mut sup = root.spawn();
    wait_for(Duration::from_secs(60), "attempt 1 to fail", || {
        root.exists("tasks/pending/r.yaml") && root.exists("tasks/assigned/r.state.json")
    });
    sup.kill9();
    let show = stdout(&root.mailroom(&["show", "r"]));
    let tail = show
        .split("--- output (tail) ---")
        .nth(1)
        .unwrap_or_default();
    assert!(tail.contains("the answer so far"), "{show}");
    assert!(!tail.contains("envelope"), "{show}");
}

/// `list` says what a pending task waits for, as `show` does.
#[test]
fn list_says_what_a_pending_task_waits_for() {
    let root = Root::new()
        .task("s.yaml", "description: x\nafter: [ghost]\n")
        .task("p.yaml", "description: x\ndelay: 1h\n")
        .task("w.md", "---\nafter: [p]\n---\nruns after p\n");
    let list = stdout(&root.mailroom(&["list", "--state", "pending"]));
    assert!(
        list.contains("s  (waiting for ghost (not submitted))"),
        "{list}"
    );
    assert!(list.contains("w  (waiting for p)"), "{list}");
    assert!(list.contains("p  (held by its `delay: 1h` until"), "{list}");
    let json: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["list", "--json"]).stdout).unwrap();
    let w = json
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "w")
        .unwrap();
    assert_eq!(w["waiting"], "waiting for p", "{json}");
}

/// `logs -f` of a task that waits for a task nobody submitted ends, as
/// `wait` does, and names what it waits for; the task stays pending.
#[test]
fn following_a_task_that_waits_for_nobody_ends() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("s.yaml", "description: x\nafter: [ghost]\n");
    let _sup = root.spawn();
    let out = root.mailroom(&["logs", "-f", "s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`s` waits for `ghost`, which nobody submitted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.names("pending"), ["s"]);
}

#[test]
fn every_json_output_parses_and_logs_show_the_run() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("a.yaml", "description: x\n")
        .task("bad.yaml", "description: x\nbogus: 1\n");
    root.run_until_idle();
    for args in [
        &["status", "--json"][..],
        &["list", "--json"],
        &["list", "--state", "failed", "--json"],
        &["show", "a", "--json"],
        &["show", "bad", "--json"],
        &["agents", "--json"],
        &["wait", "a", "--json"],
    ] {
        let out = root.mailroom(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let v: Result<serde_json::Value, _> = serde_json::from_slice(&out.stdout);
        assert!(v.is_ok(), "{args:?} printed invalid JSON: {}", stdout(&out));
    }
    let logs = root.mailroom(&["logs", "a"]);
    assert!(stdout(&logs).contains("ran a"), "{}", stdout(&logs));
    let c = root.mailroom(&["completions", "bash"]);
    assert!(stdout(&c).contains("mailroom"));
    let m = root.mailroom(&["man"]);
    assert!(stdout(&m).contains(".TH"));
}

#[test]
fn a_second_sigterm_stops_at_once_and_requeues() {
    let root = Root::new();
    let pidfile = root.p("pid");
    let root = root
        .config(&format!(
            "shutdown_grace: 10m\nagents:\n  a:\n    command: [{:?}]\n    grace: 10m\n    env:\n      PIDFILE: {:?}\n",
            agent("hang.sh"),
            pidfile.display().to_string()
        ))
        .task("long.yaml", "description: x\n");
    let mut sup = root.spawn();
    let ag: i32 = root.pid("pid.agent");
    sup.signal(SIGTERM);
    // Within a 10-minute grace, only a second signal can end it promptly.
    wait_for(MIN, "the first signal to be taken", || {
        root.entries(".")
            .iter()
            .filter(|e| e.starts_with("sup-"))
            .any(|e| root.read(e).contains("shutting down"))
    });
    sup.signal(SIGTERM);
    assert!(sup.wait_exit(Duration::from_secs(20)).success());
    assert!(!alive(ag));
    assert_eq!(root.names("pending"), ["long"]);
}

/// `logs` shows a CLI's JSON events as text (the answer, one line per tool
/// call), and as written with `--raw`: an agent of `kind: claude` that
/// prints claude's captured `stream-json` output.
#[test]
fn logs_render_stream_json_unless_raw() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cli/claude-2.1.197/stream-ok.stdout"
    );
    let root = Root::new()
        .agent_config(&["sh", "-c", &format!("cat {fixture}"), "{prompt}"], "")
        .task("t.yaml", "description: x\n");
    let cfg = root.read("mailroom.yaml").replace(
        "    grace: 1s\n",
        "    grace: 1s\n    kind: claude\n    resume: never\n",
    );
    root.write("mailroom.yaml", &cfg);
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["t"]);
    let shown = stdout(&root.mailroom(&["logs", "t"]));
    assert_eq!(
        shown,
        "[session d40170ca-aa9d-4d52-bc5a-97933098a6a4 · model claude-opus-4-8[1m]]\n\
         MOCK ANSWER: the task is done.\n[done: ok, 0.0073 USD, 1 turns]\n"
    );
    let raw = stdout(&root.mailroom(&["logs", "--raw", "t"]));
    assert_eq!(raw, std::fs::read_to_string(fixture).unwrap());
}

#[test]
fn cancel_of_a_parent_cancels_its_unfinished_subtasks() {
    // The parent waits in pending/ while its first child runs: cancelling it
    // must not leave the children to run on for a task that is gone.
    let script = r#"echo "start $MAILROOM_TASK" >> "$MAILROOM_ROOT/agent.log"
exec sleep 60"#;
    let root = Root::new()
        .agent_config(&["/bin/sh", "-c", script], "default_agent: a\nretries: 0")
        .task(
            "sp.yaml",
            "description: parent\nsubtasks:\n  - child a\n  - child b\n",
        );
    let _sup = root.spawn();
    wait_for(Duration::from_secs(30), "the first child to run", || {
        std::fs::read_to_string(root.p("agent.log")).is_ok_and(|l| l.contains("start sp.1"))
    });
    let out = root.mailroom(&["cancel", "sp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("its unfinished subtasks are cancelled too: sp.1, sp.2"),
        "{}",
        stdout(&out)
    );
    // The command returns once the running child is stopped and filed too.
    assert!(
        root.exists("tasks/failed/sp.1.result.json"),
        "cancel returned while sp.1 still ran: {}",
        stdout(&out)
    );
    wait_for(Duration::from_secs(30), "all three to be filed", || {
        root.names("failed").len() == 3
    });
    for t in ["sp", "sp.1", "sp.2"] {
        assert_eq!(root.record("failed", t)["outcome"], "cancelled", "{t}");
    }
    let log = root.read("agent.log");
    assert!(!log.contains("start sp.2"), "a cancelled child ran: {log}");
}

#[test]
fn retry_and_cancel_take_several_names_and_retry_an_outcome() {
    // Tasks naming an agent the config no longer has fail as invalid: one
    // command puts them all back once the agent is there again.
    let mut root = Root::new().agent_config(&[&agent("ok.sh")], "");
    for n in ["x1", "x2", "x3"] {
        root = root.task(&format!("{n}.yaml"), "description: x\nagent: gone\n");
    }
    let root = root.task("ok1.yaml", "description: x\n");
    root.run_until_idle();
    assert_eq!(root.names("failed"), ["x1", "x2", "x3"]);
    assert_eq!(root.record("failed", "x1")["outcome"], "invalid");
    // Names: each on its own; an unknown one fails the command, not the rest.
    let out = root.mailroom(&["retry", "x1", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nope: no task named `nope`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.names("pending"), ["x1"]);
    let out = root.mailroom(&["cancel", "x1", "ok1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("x1: cancelled"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("already finished"),
        "{}",
        stderr(&out)
    );
    // By outcome: the two left as invalid, not the cancelled one.
    let out = root.mailroom(&["retry", "--outcome", "invalid"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.names("pending"), ["x2", "x3"]);
    assert_eq!(root.names("failed"), ["x1"]);
    let bad = root.mailroom(&["retry", "--outcome", "oops"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("use one of success, exit"),
        "{}",
        stderr(&bad)
    );
}

/// `logs` of a run whose agent put a FIFO or a link where its stdout.log was
/// ends at once, and prints what neither leads to.
#[test]
fn logs_neither_waits_on_a_fifo_nor_follows_a_link() {
    let root = Root::new()
        .agent_config(
            &[
                "sh",
                "-c",
                "echo to-stderr >&2; d=$MAILROOM_RUN_DIR; rm -f $d/stdout.log; case $MAILROOM_TASK in \
                 fifo) mkfifo $d/stdout.log ;; *) ln -s /etc/hostname $d/stdout.log ;; esac",
            ],
            "",
        )
        .task("fifo.yaml", "description: x\n")
        .task("link.yaml", "description: x\n");
    root.run_until_idle();
    for name in ["fifo", "link"] {
        let out = run_bounded(root.cmd(&["logs", name]), Duration::from_secs(20));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let shown = stdout(&out);
        assert!(shown.contains("to-stderr"), "{name}: {shown}");
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        assert!(
            host.trim().is_empty() || !shown.contains(host.trim()),
            "{name}: followed the link: {shown}"
        );
    }
}

/// Shell that sets `$sup` to the agent's supervisor: its keeper's parent, or
/// that one's parent when the keeper was forked by the keeper launcher.
const FIND_SUPERVISOR: &str = r#"sup=$(awk '{print $4}' /proc/$PPID/stat);
case "$(tr '\0' ' ' < /proc/$sup/cmdline)" in *--launcher*) sup=$(awk '{print $4}' /proc/$sup/stat) ;; esac;"#;

/// An agent that sends its supervisor SIGTERM gets no free attempt out of
/// the shutdown: its run counts against its retries (here none), so the task
/// fails instead of being requeued for ever.
#[test]
fn a_shutdown_sent_by_an_agent_costs_its_task_an_attempt() {
    // Sent by the agent itself, and by a process it started with an empty
    // environment in a session of its own (still there when mailroom looks:
    // a sender gone and reaped by then cannot be told from any other).
    for send in [
        "kill -TERM \"$sup\";",
        "env -i setsid /bin/sh -c \"kill -TERM $sup; sleep 5\" &",
    ] {
        let root = Root::new()
            .agent_config(
                &["sh", "-c", &format!("{FIND_SUPERVISOR} {send} sleep 30")],
                "retries: 0\nshutdown_grace: 1s",
            )
            .task("t.yaml", "description: stops its supervisor\n");
        let out = run_bounded(root.cmd(&["run"]), Duration::from_secs(60));
        assert!(out.status.success(), "{send}: {}", stderr(&out));
        assert_eq!(root.names("failed"), ["t"], "{send}: {}", stderr(&out));
        let rec = root.record("failed", "t");
        assert_eq!(rec["outcome"], "interrupted", "{send}: {rec}");
        let err = rec["error"].as_str().unwrap();
        assert!(err.contains("its own agent sent"), "{send}: {err}");
        assert_eq!(rec["attempts"], 1, "{rec}");
    }
}

/// A task whose dependency failed is not retried alone (it would fail again
/// at once, using up a round); retried together, the dependency goes back
/// first.
#[test]
fn retry_takes_a_failed_dependency_along_or_refuses() {
    let root = Root::new()
        .config(
            "retries: 0\nagents:\n  bad:\n    command: [sh, -c, 'exit 3']\ndefault_agent: bad\n",
        )
        .task("a.yaml", "description: x\n")
        .task("b.yaml", "description: y\nafter: [a]\n")
        .task("c.yaml", "description: z\nafter: [b]\n");
    root.run_until_idle();
    assert_eq!(root.names("failed"), ["a", "b", "c"]);
    fails_saying(
        &root.mailroom(&["retry", "b"]),
        "`b` runs after `a`, which failed: alone it would fail again at once; retry them \
         together: mailroom retry a b",
    );
    // c goes with b, but b is refused: c is too.
    let out = root.mailroom(&["retry", "b", "c"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`c` runs after `b`, which failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.names("failed"), ["a", "b", "c"], "nothing moved");
    let out = root.mailroom(&["retry", "b", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "a: moved back to pending with fresh attempts\nb: moved back to pending with fresh attempts\n"
    );
    let mut p = root.names("pending");
    p.sort();
    assert_eq!(p, ["a", "b"]);
    assert_eq!(root.names("failed"), ["c"]);
}

/// `clean` removes finished tasks whole (task file, record, run directory,
/// history) under their locks, keeps what a waiting task runs after and
/// what is not finished, leaves the context, and frees the name.
#[test]
fn clean_removes_finished_tasks_whole_and_keeps_what_others_wait_for() {
    let root = Root::new().config(&format!(
        "retries: 0\nretry_delay: 50ms\nsettle: 300ms\nrescan_interval: 1s\nagents:\n  ok:\n    command: [{:?}]\n  bad:\n    command: [{:?}]\n",
        agent("ok.sh"),
        agent("fail.sh")
    ));
    for (n, a) in [("a", "ok"), ("b", "bad"), ("c", "ok")] {
        let out = root.mailroom(&["add", n, "--name", n, "--agent", a]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // e runs after a, and fails: a retry of it would wait for a again.
    let out = root.mailroom(&["add", "e", "--name", "e", "--agent", "bad", "--after", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    root.run_until_idle();
    // b's first round goes to its history.
    assert!(root.mailroom(&["retry", "b"]).status.success());
    root.run_until_idle();
    assert!(root.exists("tasks/history/b.jsonl"));
    let out = root.mailroom(&[
        "add", "d", "--name", "d", "--agent", "ok", "--after", "c", "--delay", "1h",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A dry run removes nothing.
    let out = root.mailroom(&["clean", "--dry-run", "--failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("a: would be removed (completed)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(root.names("completed"), vec!["a", "c"]);
    // Completed ones go, but c stays (d runs after it), and so does a
    // (the failed e does).
    let out = root.mailroom(&["clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("kept `c`: `d` runs after it"), "{err}");
    assert!(
        err.contains("kept `a`: the failed task `e` runs after it"),
        "{err}"
    );
    assert_eq!(root.names("completed"), vec!["a", "c"]);
    assert_eq!(
        root.names("failed"),
        vec!["b", "e"],
        "failed ones only with --failed"
    );
    // Named: a task still waited for, a pending one, an unknown one: exit 1.
    for (name, says) in [
        ("c", "kept `c`"),
        ("d", "not finished"),
        ("zz", "no task named `zz`"),
    ] {
        let out = root.mailroom(&["clean", name]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(stderr(&out).contains(says), "{name}: {}", stderr(&out));
    }
    assert_eq!(root.names("pending"), vec!["d"]);
    // Too recent for --older-than (named: exit 1); no overflow.
    let out = root.mailroom(&["clean", "--failed", "--older-than", "1d"]);
    assert!(
        stdout(&out).contains("nothing to clean"),
        "{}",
        stdout(&out)
    );
    let out = root.mailroom(&["clean", "b", "--older-than", "1d"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("kept `b`: it finished less than 1day ago"),
        "{}",
        stderr(&out)
    );
    let out = root.mailroom(&["clean", "--older-than", "500000000000y", "-n"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // With the failed ones, a goes too: e, which ran after it, goes with it.
    let out = root.mailroom(&["clean", "--failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.names("failed").is_empty());
    assert_eq!(root.names("completed"), vec!["c"]);
    for gone in ["tasks/completed/a.result.json", "tasks/completed/a.run"] {
        assert!(!root.exists(gone), "{gone}");
    }
    assert!(
        root.exists("context/agent_outputs/a.md"),
        "the context stays"
    );
    assert!(!root.exists("tasks/history/b.jsonl"));
    assert!(!root.exists("tasks/history/b.run"));
    assert!(!root.exists("tasks/failed/b.run"));
    // Once d is cancelled (failed), c goes only together with it; no lock
    // is left behind.
    assert!(root.mailroom(&["cancel", "d"]).status.success());
    assert_eq!(root.mailroom(&["clean", "c"]).status.code(), Some(1));
    assert!(root.mailroom(&["clean", "c", "d"]).status.success());
    assert!(root.names("completed").is_empty());
    assert!(root.names("failed").is_empty());
    assert!(
        root.entries("tasks/assigned").is_empty(),
        "{:?}",
        root.entries("tasks/assigned")
    );
    // The name is free again, and its new task has no earlier rounds.
    let out = root.mailroom(&["add", "b", "--name", "b", "--agent", "ok"]);
    assert!(out.status.success(), "{}", stderr(&out));
    root.run_until_idle();
    let show = stdout(&root.mailroom(&["show", "b"]));
    assert!(!show.contains("round 1"), "{show}");
    // A retry whose dependency is gone (removed by hand) says so.
    for (n, a, after) in [("p1", "ok", None), ("q1", "bad", Some("p1"))] {
        let mut args = vec!["add", n, "--name", n, "--agent", a];
        args.extend(after.map(|x| ["--after", x]).iter().flatten());
        assert!(root.mailroom(&args).status.success());
    }
    root.run_until_idle();
    for f in ["p1.yaml", "p1.result.json"] {
        std::fs::remove_file(root.p(&format!("tasks/completed/{f}"))).unwrap();
    }
    let out = root.mailroom(&["retry", "q1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`q1` runs after `p1`, which does not exist"),
        "{}",
        stderr(&out)
    );
}

/// `clean` of a tree's first task also drops the tree's count in
/// `tasks/trees/`, so that a later task of that name (a nightly job
/// submitted under one name, cleaned between runs) starts a tree of its
/// own instead of inheriting the old one's follow-ups and failing as
/// `runaway`. A count that pending or running tasks of the tree still use
/// stays.
#[test]
fn clean_drops_the_tree_count_of_a_removed_first_task() {
    let root = Root::new().config(
        "retries: 0\nretry_delay: 50ms\nsettle: 300ms\nrescan_interval: 1s\nmax_tree_tasks: 3\n\
         default_agent: leaf\nagents:\n  spawner:\n    command: [sh, spawn.sh]\n\
         \x20 leaf:\n    command: [\"true\"]\n",
    );
    // Two follow-ups: with its first task, the tree holds 3, the limit.
    root.write(
        "spawn.sh",
        "for i in 1 2; do echo 'description: leaf' > \"$MAILROOM_OUTBOX/c$i.yaml\"; done\n",
    );
    let round = |root: &Root| {
        let out = root.mailroom(&["add", "nightly", "--name", "nightly", "--agent", "spawner"]);
        assert!(out.status.success(), "{}", stderr(&out));
        root.run_until_idle();
        let rec = root.record("completed", "nightly");
        assert_eq!(rec["outcome"], "success", "{rec}");
    };
    round(&root);
    assert_eq!(root.read("tasks/trees/nightly").trim(), "3");
    // A pending task of the tree keeps its count.
    root.write(
        "tasks/pending/later.yaml",
        "description: later\nparent: nightly\ndelay: 1h\n",
    );
    let out = root.mailroom(&["clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.names("completed").is_empty());
    assert!(root.exists("tasks/trees/nightly"), "still counted into");
    assert!(root.mailroom(&["cancel", "later"]).status.success());
    let out = root.mailroom(&["clean", "--failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.exists("tasks/trees/nightly"), "dropped with its tree");
    // The name's next task is a tree of its own: its follow-ups fit.
    round(&root);
    assert_eq!(root.read("tasks/trees/nightly").trim(), "3");
}

/// The tree count `clean` drops is only that of a tree that is over: one
/// with a failed follow-up (it may be retried) keeps its count, and so
/// does a count set aside for inspection.
#[test]
fn clean_keeps_the_count_of_a_tree_with_a_failed_task() {
    let root = Root::new().agent_config(&["true"], "retries: 0");
    assert!(
        root.mailroom(&["add", "x", "--name", "done"])
            .status
            .success()
    );
    root.run_until_idle();
    root.write("tasks/failed/kid.yaml", "description: k\nparent: first\n");
    root.write("tasks/trees/first", "2\n");
    root.write("tasks/trees/over", "3\n");
    root.write("tasks/trees/first.set-aside-1", "junk");
    let out = root.mailroom(&["clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.names("completed").is_empty());
    assert_eq!(
        root.entries("tasks/trees"),
        ["first", "first.set-aside-1"],
        "{}",
        stdout(&out)
    );
}

/// `clean` keeps a task whose commit could not merge it into `context/`
/// (the context lock was held) until it is merged: removed before that,
/// its line in `completed_tasks.jsonl` (what `agents`, `usage` and the
/// budgets count) was never written. With the lock free again, `clean`
/// makes the merge itself: no supervisor need be running.
#[test]
fn clean_keeps_a_task_not_yet_merged_into_the_context() {
    let root = Root::new().agent_config(&["true"], "retries: 0");
    assert!(root.mailroom(&["add", "x", "--name", "t"]).status.success());
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["t"]);
    // As a commit that found the lock held leaves it: noted, no line yet.
    root.write("context/.unmerged/t", "completed");
    root.write("context/completed_tasks.jsonl", "");
    let jsonl = || root.read("context/completed_tasks.jsonl");
    // A dry run says what `clean` would do with the lock free.
    let out = root.mailroom(&["clean", "--dry-run", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("t: would be merged into context/, then removed (completed)"),
        "{}",
        stdout(&out)
    );
    assert!(root.exists("context/.unmerged/t"));
    let lock = hold_context_lock(&root);
    let out = root.mailroom(&["clean", "t"]);
    drop(lock);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("not merged into context/ yet"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.names("completed"), ["t"]);
    assert!(jsonl().is_empty(), "{}", jsonl());
    // The lock free, `clean` merges it, then removes it.
    let out = root.mailroom(&["clean", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.exists("context/.unmerged/t"));
    assert!(jsonl().contains("\"task\":\"t\""), "{}", jsonl());
    assert!(root.names("completed").is_empty());
}

/// A task kept by `clean` keeps what it waits for, even when both were
/// chosen: a failed `w` that runs after `c` and is not merged yet stays, and
/// so does `c`, or `w` would wait for a task that is gone once retried.
#[test]
fn clean_keeps_what_a_kept_task_waits_for() {
    let root = Root::new().agent_config(&["sh", "-c", "test \"$MAILROOM_TASK\" = c"], "retries: 0");
    root.write("tasks/pending/c.yaml", "description: first\n");
    root.write("tasks/pending/w.yaml", "description: then\nafter: [c]\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["c"]);
    assert_eq!(root.names("failed"), ["w"]);
    root.write("context/.unmerged/w", "failed");
    let lock = hold_context_lock(&root);
    let out = root.mailroom(&["clean", "--failed"]);
    drop(lock);
    let err = stderr(&out);
    assert!(err.contains("kept `w`: it is not merged"), "{err}");
    assert!(
        err.contains("kept `c`: `w` runs after it and was kept"),
        "{err}"
    );
    assert_eq!(root.names("completed"), ["c"], "{err}");
    assert_eq!(root.names("failed"), ["w"], "{err}");
    // Merged and cleaned together, both go.
    let out = root.mailroom(&["clean", "--failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.names("completed").is_empty() && root.names("failed").is_empty());
}

/// Nor does `retry` take back a failed task before its commit is merged
/// into `context/`: the failed round's line in `completed_tasks.jsonl` is
/// written from its record, which the retry moves into the history. With
/// the lock free, `retry` merges it itself and goes on.
#[test]
fn retry_waits_for_the_merge_of_the_failed_round() {
    let root = Root::new().agent_config(&["false"], "retries: 0");
    assert!(root.mailroom(&["add", "x", "--name", "t"]).status.success());
    root.run_until_idle();
    assert_eq!(root.names("failed"), ["t"]);
    root.write("context/.unmerged/t", "failed");
    root.write("context/completed_tasks.jsonl", "");
    let lock = hold_context_lock(&root);
    let out = root.mailroom(&["retry", "t"]);
    drop(lock);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("not merged into context/ yet"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.names("failed"), ["t"]);
    let out = root.mailroom(&["retry", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.exists("context/.unmerged/t"));
    let jsonl = root.read("context/completed_tasks.jsonl");
    assert!(jsonl.contains("\"task\":\"t\""), "{jsonl}");
    assert_eq!(root.names("pending"), ["t"]);
}

/// Two `clean`s at once (a cron job and a person) share the work: the one
/// that finds a task locked by the other waits, finds it gone, and skips
/// it. Both exit 0, and nothing is left of any task.
#[test]
fn two_cleans_at_once_both_succeed() {
    let root = Root::new();
    for i in 0..400 {
        root.write(
            &format!("tasks/completed/t{i:03}.yaml"),
            "description: done\n",
        );
        root.write(
            &format!("tasks/completed/t{i:03}.result.json"),
            "{\"status\": \"completed\"}\n",
        );
    }
    let spawn = || {
        root.cmd(&["clean"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for out in [
        wait_bounded(a, Duration::from_secs(60)),
        wait_bounded(b, Duration::from_secs(60)),
    ] {
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains("busy"), "{}", stderr(&out));
    }
    assert!(root.entries("tasks/completed").is_empty());
    assert!(root.entries("tasks/assigned").is_empty());
}

/// Finished tasks whose locks another holds share one wait: `clean` takes
/// the rest first, then waits 3 s in all for the busy ones (it waited 3 s
/// for each in turn), says which stayed busy, and exits 1.
#[test]
fn clean_waits_once_for_all_busy_tasks() {
    let root = Root::new();
    for i in 0..6 {
        root.write(&format!("tasks/completed/t{i}.yaml"), "description: done\n");
        root.write(
            &format!("tasks/completed/t{i}.result.json"),
            "{\"status\": \"completed\"}\n",
        );
    }
    // Held as a supervisor holds a task's lock.
    std::fs::create_dir_all(root.p("tasks/assigned")).unwrap();
    let held: Vec<std::fs::File> = (0..5)
        .map(|i| {
            let f = std::fs::File::create(root.p(&format!("tasks/assigned/t{i}.lock"))).unwrap();
            f.lock().unwrap();
            f
        })
        .collect();
    let t0 = std::time::Instant::now();
    let out = root.mailroom(&["clean"]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    for i in 0..5 {
        assert!(err.contains(&format!("t{i}: busy for 3s")), "{err}");
    }
    assert!(
        stdout(&out).contains("t5: removed (completed)"),
        "{}",
        stdout(&out)
    );
    // One wait of 3 s, not five (15 s).
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(root.names("completed").len(), 5);
    drop(held);
    let out = root.mailroom(&["clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.names("completed").is_empty());
}

/// A reload that drops an agent while the tree is paused files none of its
/// pending tasks: they are held until the resume, and `validate` of the
/// new config names them beforehand.
#[test]
fn a_paused_tree_holds_tasks_a_reloaded_config_cannot_route() {
    let two = format!(
        "settle: 300ms\nrescan_interval: 1s\nagents:\n  a:\n    command: [{ok:?}]\n  b:\n    command: [{ok:?}]\n",
        ok = agent("ok.sh")
    );
    let one = format!(
        "settle: 300ms\nrescan_interval: 1s\nagents:\n  a:\n    command: [{:?}]\n",
        agent("ok.sh")
    );
    let root = Root::new().config(&two);
    assert!(root.mailroom(&["pause"]).status.success());
    let out = root.mailroom(&["add", "x", "--name", "on-b", "--agent", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // validate of the new config, before it is used, names the task.
    root.write("new.yaml", &one);
    let out = root.mailroom(&["validate", root.p("new.yaml").to_str().unwrap()]);
    let text = stdout(&out);
    assert!(
        text.contains("1 task in tasks/pending/ cannot be routed") && text.contains("on-b:"),
        "{text}"
    );
    let (mut sup, log) = root.spawn_cmd(root.cmd(&["run"]));
    wait_for(MIN, "the supervisor to be ready", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("supervisor ready")
    });
    std::fs::rename(root.p("new.yaml"), root.p("mailroom.yaml")).unwrap();
    sup.signal(SIGHUP);
    wait_for(MIN, "the reload", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("configuration reloaded")
    });
    // A file that never parses is still filed while paused: once it is, the
    // supervisor has been through its rejects since the reload.
    root.write("tasks/pending/junk.yaml", "description: [unclosed\n");
    wait_for(MIN, "the junk to be filed", || {
        root.names("failed").contains(&"junk".to_owned())
    });
    assert_eq!(root.names("pending"), vec!["on-b"], "filed while paused");
    // At the resume it is judged: no agent `b`.
    assert!(root.mailroom(&["resume"]).status.success());
    wait_for(MIN, "on-b to be filed", || {
        root.names("failed").contains(&"on-b".to_owned())
    });
    let rec = root.record("failed", "on-b");
    assert_eq!(rec["outcome"], "invalid", "{rec}");
    assert!(rec["error"].as_str().unwrap().contains('b'), "{rec}");
    sup.signal(SIGTERM);
    sup.wait_exit(MIN);
    // `run --exit-when-idle` does not wait for a task only the pause holds.
    assert!(root.mailroom(&["pause"]).status.success());
    root.write("tasks/pending/held.yaml", "description: x\nagent: b\n");
    root.run_until_idle();
    assert_eq!(root.names("pending"), vec!["held"]);
}
