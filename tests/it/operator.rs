//! The operator's day (issue 12): a typo'd root, config reloads, start and
//! stop, the rough edges a new user hits, history across retries, hooks and
//! Markdown tasks.

use crate::common::*;
use std::time::{Duration, Instant};

const MIN: Duration = Duration::from_secs(60);

/// A directory next to the test root that is not a tree.
fn not_a_tree(root: &Root) -> std::path::PathBuf {
    root.p("typo")
}

#[test]
fn run_refuses_a_directory_without_tasks_unless_init() {
    let root = Root::new();
    let dir = not_a_tree(&root);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = std::process::Command::new(BIN);
    c.args(["--root", dir.to_str().unwrap(), "run", "--exit-when-idle"]);
    let out = run_bounded(c, MIN);
    assert!(
        !out.status.success(),
        "run accepted a directory without tasks/"
    );
    let list = {
        let mut c = std::process::Command::new(BIN);
        c.args(["--root", dir.to_str().unwrap(), "list"]);
        run_bounded(c, MIN)
    };
    // The same message as every other command.
    assert_eq!(stderr(&out), stderr(&list));
    assert!(
        stderr(&out).contains("is not a mailroom root"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("tasks").exists(), "run created a tree anyway");
    let mut c = std::process::Command::new(BIN);
    c.args([
        "--root",
        dir.to_str().unwrap(),
        "run",
        "--init",
        "--exit-when-idle",
    ]);
    let out = run_bounded(c, MIN);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("tasks/pending").is_dir());
}

fn logs(root: &Root) -> String {
    root.entries(".")
        .iter()
        .filter(|e| e.starts_with("sup-"))
        .map(|e| root.read(e))
        .collect()
}

#[test]
fn a_saved_config_is_applied_within_a_second_and_a_bad_one_reported_at_once() {
    let cfg = |n: u32| {
        format!(
            "rescan_interval: 60s\nagents:\n  a:\n    command: [{:?}]\n    max_instances: {n}\n",
            agent("ok.sh")
        )
    };
    let root = Root::new().config(&cfg(1));
    let _sup = root.spawn();
    wait_for(MIN, "the supervisor to be ready", || {
        logs(&root).contains("supervisor ready")
    });
    let replace = |text: &str| {
        root.write("mailroom.yaml.new", text);
        std::fs::rename(root.p("mailroom.yaml.new"), root.p("mailroom.yaml")).unwrap();
    };
    replace(&cfg(2));
    let saved = Instant::now();
    wait_for(MIN, "the new config to be applied", || {
        logs(&root).contains("configuration reloaded")
    });
    assert!(
        saved.elapsed() < Duration::from_secs(1),
        "reloaded {:?} after the save",
        saved.elapsed()
    );
    replace("concurency: 9\n");
    let saved = Instant::now();
    wait_for(MIN, "the bad config to be reported", || {
        logs(&root).contains("changed but is invalid")
    });
    assert!(
        saved.elapsed() < Duration::from_secs(1),
        "reported {:?} after the save",
        saved.elapsed()
    );
    let st = root.mailroom(&["status"]);
    assert!(stdout(&st).contains("config invalid"), "{}", stdout(&st));
    assert!(stdout(&st).contains("concurency"), "{}", stdout(&st));
    let js: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
    assert!(js["config_error"].is_string(), "{js}");
}

#[test]
fn status_shows_a_pause() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    assert!(root.mailroom(&["pause"]).status.success());
    assert!(root.mailroom(&["pause", "--agent", "a"]).status.success());
    let st = stdout(&root.mailroom(&["status"]));
    assert!(st.contains("paused: no new tasks"), "{st}");
    assert!(st.contains("agent a paused"), "{st}");
    let js: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
    assert_eq!(js["paused"], true);
    assert_eq!(js["paused_agents"][0], "a");
    assert!(root.mailroom(&["resume"]).status.success());
    let st = stdout(&root.mailroom(&["status"]));
    assert!(!st.contains("paused: no new tasks"), "{st}");
}
