//! Every attempt keeps its run directory (`<name>.run/<attempt>/`): a retry
//! after a failure, a `mailroom retry`, and a cancel of a task waiting for
//! its next attempt never delete an earlier attempt's answer.

use crate::common::*;
use std::time::Duration;

fn config(extra: &str) -> String {
    format!(
        "retries: 2\nretry_delay: 20ms\nsettle: 300ms\n{extra}\nagents:\n  a:\n    command: [{:?}]\n    grace: 1s\n    prompt_template: \"{{description}}\"\n",
        agent("twice.sh")
    )
}

#[test]
fn a_retried_task_keeps_the_first_attempts_files_beside_the_second() {
    let root = Root::new()
        .config(&config(""))
        .task("f.yaml", "description: twice\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["f"]);
    for n in [1, 2] {
        let d = format!("tasks/completed/f.run/{n}");
        assert_eq!(
            root.read(&format!("{d}/stdout.log")),
            format!("stdout of attempt {n}\n")
        );
        assert_eq!(
            root.read(&format!("{d}/output.md")),
            format!("answer of attempt {n}\n")
        );
        assert!(root.exists(&format!("{d}/prompt.md")), "{d}");
    }
    assert!(
        root.read("tasks/completed/f.run/1/stderr.log")
            .contains("attempt 1 broke")
    );
    let rec = root.record("completed", "f");
    assert_eq!(rec["attempts"], 2, "{rec}");
    assert_eq!(rec["run_dir"], "tasks/completed/f.run/2", "{rec}");
    let h = rec["history"].as_array().unwrap();
    assert_eq!(h.len(), 2, "{rec}");
    assert_eq!(h[0]["outcome"], "exit");
    assert_eq!(h[0]["run_dir"], "tasks/completed/f.run/1", "{rec}");
    assert_eq!(h[1]["run_dir"], "tasks/completed/f.run/2", "{rec}");
    // The context holds the answer of the attempt that succeeded.
    let out = root.read("context/agent_outputs/f.md");
    assert!(out.contains("answer of attempt 2"), "{out}");
    // `logs` and `show` read the latest attempt.
    let logs = root.mailroom(&["logs", "f"]);
    assert!(
        stdout(&logs).contains("stdout of attempt 2"),
        "{}",
        stdout(&logs)
    );
    assert!(!stdout(&logs).contains("attempt 1"), "{}", stdout(&logs));
    assert!(
        root.entries("tasks/assigned").is_empty(),
        "{:?}",
        root.entries("tasks/assigned")
    );
}

#[test]
fn mailroom_retry_keeps_the_failed_rounds_run_directory_in_the_history() {
    let root = Root::new()
        .config(&config("").replace("retries: 2", "retries: 0"))
        .task("f.yaml", "description: twice\n");
    root.run_until_idle();
    assert_eq!(root.names("failed"), vec!["f"]);
    assert_eq!(
        root.record("failed", "f")["run_dir"],
        "tasks/failed/f.run/1"
    );
    let out = root.mailroom(&["retry", "f"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.exists("tasks/failed/f.run"));
    // Round 1, attempt 1: its answer is kept.
    assert_eq!(
        root.read("tasks/history/f.run/1/1/output.md"),
        "answer of attempt 1\n"
    );
    let line = root.read("tasks/history/f.jsonl");
    let old: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(old["run_dir"], "tasks/history/f.run/1/1", "{old}");
    assert_eq!(
        old["history"][0]["run_dir"], "tasks/history/f.run/1/1",
        "{old}"
    );
    // The new round starts again at attempt 1, which fails again (the agent
    // fails every first attempt); its round is kept as round 2.
    root.run_until_idle();
    assert_eq!(root.names("failed"), vec!["f"]);
    let out = root.mailroom(&["retry", "f"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.exists("tasks/history/f.run/1/1/stdout.log"));
    assert!(root.exists("tasks/history/f.run/2/1/stdout.log"));
}

/// `retry --completed` runs a completed task again, its finished round kept
/// in its history as a failed one's is; without the flag it is refused,
/// naming the flag.
#[test]
fn retry_completed_runs_a_completed_task_again_and_keeps_its_round() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("c.yaml", "description: once more\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["c"]);
    let first = root.record("completed", "c")["run_id"].clone();
    let out = root.mailroom(&["retry", "c"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("mailroom retry --completed c"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.names("completed"), vec!["c"]);
    let out = root.mailroom(&["retry", "--completed", "c"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.names("pending"), vec!["c"]);
    assert!(!root.exists("tasks/completed/c.result.json"));
    assert!(!root.exists("tasks/completed/c.run"));
    assert!(root.exists("tasks/history/c.run/1/1/stdout.log"));
    let line = root.read("tasks/history/c.jsonl");
    let old: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(old["run_id"], first, "{old}");
    assert_eq!(old["run_dir"], "tasks/history/c.run/1/1", "{old}");
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["c"]);
    assert_ne!(root.record("completed", "c")["run_id"], first);
    let show = stdout(&root.mailroom(&["show", "c"]));
    assert!(show.contains("round 1: completed"), "{show}");
    assert!(show.contains("round 2: completed"), "{show}");
    // `usage` counts the task once, as `agents` does, and both rounds.
    let rows: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["usage", "--json"]).stdout).unwrap();
    assert_eq!(rows[0]["key"], "a", "{rows}");
    assert_eq!(rows[0]["tasks"], 1, "{rows}");
    assert_eq!(rows[0]["rounds"], 2, "{rows}");
}

/// `retry --completed` of a subtask parent whose subtasks are still there
/// would complete at once and run none of them: refused, naming them; once
/// they are cleaned, the parent runs them again.
#[test]
fn retry_completed_of_a_subtask_parent_needs_its_subtasks_gone() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task(
            "p.yaml",
            "description: job\nsubtasks:\n  - id: one\n    description: first\n  - id: two\n    description: second\n",
        );
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["p", "p.one", "p.two"]);
    let out = root.mailroom(&["retry", "--completed", "p"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`p` is a subtask parent")
            && stderr(&out).contains("mailroom clean p.one p.two"),
        "{}",
        stderr(&out)
    );
    assert_eq!(root.names("completed"), vec!["p", "p.one", "p.two"]);
    assert!(root.mailroom(&["clean", "p.one", "p.two"]).status.success());
    let out = root.mailroom(&["retry", "--completed", "p"]);
    assert!(out.status.success(), "{}", stderr(&out));
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["p", "p.one", "p.two"]);
    assert_eq!(root.record("completed", "p.one")["attempts"], 1);
}

/// A history file that an agent replaced with a link (to any file of the
/// user's) or a directory is refused before anything moves, with its path:
/// `retry` never appends through a link.
#[test]
fn retry_refuses_a_history_file_that_is_a_link_or_a_directory() {
    let root = Root::new()
        .config(&config("").replace("retries: 2", "retries: 0"))
        .task("f.yaml", "description: twice\n");
    root.run_until_idle();
    std::fs::create_dir_all(root.p("tasks/history")).unwrap();
    let victim = root.p("victim.txt");
    std::fs::write(&victim, "mine\n").unwrap();
    std::os::unix::fs::symlink(&victim, root.p("tasks/history/f.jsonl")).unwrap();
    let out = root.mailroom(&["retry", "f"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("tasks/history/f.jsonl is not a regular file but a symbolic link"),
        "{e}"
    );
    assert_eq!(root.read("victim.txt"), "mine\n");
    // Nothing moved: the task, its record and its run directory are as they were.
    assert_eq!(root.names("failed"), vec!["f"]);
    assert!(root.exists("tasks/failed/f.result.json"));
    assert!(root.exists("tasks/failed/f.run/1"));
    std::fs::remove_file(root.p("tasks/history/f.jsonl")).unwrap();
    std::fs::create_dir(root.p("tasks/history/f.jsonl")).unwrap();
    let e = stderr(&root.mailroom(&["retry", "f"]));
    assert!(e.contains("but a directory"), "{e}");
    std::fs::remove_dir(root.p("tasks/history/f.jsonl")).unwrap();
    // Nor does the round's run directory move through a link.
    std::os::unix::fs::symlink(root.p("elsewhere"), root.p("tasks/history/f.run")).unwrap();
    let e = stderr(&root.mailroom(&["retry", "f"]));
    assert!(
        e.contains("tasks/history/f.run is not a directory but a symbolic link"),
        "{e}"
    );
    std::fs::remove_file(root.p("tasks/history/f.run")).unwrap();
    let out = root.mailroom(&["retry", "f"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.names("pending"), vec!["f"]);
}

#[test]
fn a_task_waiting_for_its_retry_keeps_its_run_directory_and_a_cancel_files_it() {
    let root = Root::new()
        .config(&config("").replace("retry_delay: 20ms", "retry_delay: 1h"))
        .task("f.yaml", "description: twice\n");
    let sup = root.spawn();
    wait_for(
        Duration::from_secs(60),
        "the first attempt to fail and wait for its retry",
        || {
            root.names("pending") == vec!["f"]
                && root.exists("tasks/assigned/f.run/1/stdout.log")
                && root
                    .read("tasks/assigned/f.state.json")
                    .contains("not_before")
        },
    );
    // While it waits, the run directory stays in assigned/ and `logs` reads it.
    let logs = root.mailroom(&["logs", "f"]);
    assert!(
        stdout(&logs).contains("stdout of attempt 1"),
        "{}",
        stdout(&logs)
    );
    drop(sup);
    // A new supervisor's recovery pass (made before it says it is ready)
    // leaves it alone.
    let sup = root.spawn();
    wait_for(Duration::from_secs(60), "the second supervisor", || {
        let ready = root
            .entries("")
            .iter()
            .filter(|f| f.starts_with("sup-") && root.read(f).contains("supervisor ready"))
            .count();
        ready == 2
    });
    drop(sup);
    assert_eq!(root.names("pending"), vec!["f"]);
    assert!(root.exists("tasks/assigned/f.run/1/output.md"));
    // A cancel files the task with its earlier attempt's files.
    let out = root.mailroom(&["cancel", "f"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(root.names("failed"), vec!["f"]);
    assert_eq!(
        root.read("tasks/failed/f.run/1/output.md"),
        "answer of attempt 1\n"
    );
    let rec = root.record("failed", "f");
    assert_eq!(rec["run_dir"], "tasks/failed/f.run/1", "{rec}");
    assert!(!root.exists("tasks/assigned/f.run"));
    assert!(!root.exists("tasks/assigned/f.state.json"));
}

/// `logs -f` of a task that has not started waits for it, and follows it
/// through a failed attempt into its retry, until it is filed: it ends by
/// itself, with both attempts' output.
#[test]
fn logs_follow_waits_for_the_start_and_follows_every_attempt() {
    let root = Root::new()
        .config(&config(""))
        .task("f.yaml", "description: twice\n");
    let follower = root
        .cmd(&["logs", "-f", "f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _sup = root.spawn();
    let out = wait_bounded(follower, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(o.contains("stdout of attempt 1"), "{o}");
    assert!(o.contains("stdout of attempt 2"), "{o}");
    assert!(o.contains("attempt 1 broke"), "{o}");
    assert!(e.contains("waiting for `f` to start"), "{e}");
    assert!(e.contains("attempt 2 of `f`"), "{e}");
    assert!(e.ends_with("mailroom: `f` completed\n"), "{e}");
    assert_eq!(root.names("completed"), vec!["f"]);
}
