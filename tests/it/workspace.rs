//! Workspaces: a run's own git worktree (created, recorded, isolated from the
//! main checkout, cleaned up; its branch kept), and files_modified for a
//! shared workdir from the agent's report or from git status.

use crate::common::*;
use std::process::Command;
use std::time::Duration;

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A root that is also a git repository with one commit.
pub(crate) fn repo(config: &str) -> Root {
    let root = Root::new().config(config);
    git(&root.path, &["init", "-q", "-b", "main"]);
    root.write("README.md", "the project\n");
    root.write(
        ".gitignore",
        "tasks/\ncontext/\n.mailroom/\nmailroom.yaml\n*.cwd\nsup-*.log\nrun-*.log\n",
    );
    git(&root.path, &["add", "README.md", ".gitignore"]);
    git(
        &root.path,
        &[
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "-m",
            "start",
        ],
    );
    root
}

#[test]
fn a_worktree_per_run_is_created_recorded_isolated_and_cleaned_up() {
    let edit = agent("edit.sh");
    let root = repo(&format!(
        "agents:\n  coder:\n    command: [{edit:?}]\n    workspace: worktree\n    env: {{COMMIT: \"1\"}}\n  scratch:\n    command: [{edit:?}]\n    workspace: worktree\ndefault_agent: coder\n"
    ))
    .task("t1.yaml", "description: commit something\n")
    .task("t2.yaml", "description: leave it uncommitted\nagent: scratch\n");
    root.run_until_idle();
    let rec = root.record("completed", "t1");
    let ws = &rec["workspace"];
    assert_eq!(ws["kind"], "worktree");
    assert_eq!(ws["branch"], "mailroom/t1");
    assert_eq!(ws["source"], "git");
    assert_eq!(
        ws["files_modified"],
        serde_json::json!(["edited-by-t1.txt"])
    );
    assert_eq!(ws["removed"], true);
    // The agent ran in the worktree, not in the main checkout.
    let cwd = root.read("t1.cwd");
    assert!(cwd.trim().ends_with(".mailroom/worktrees/t1"), "{cwd}");
    assert!(
        !root.exists("edited-by-t1.txt"),
        "the main checkout was touched"
    );
    assert!(
        !root.exists(".mailroom/worktrees/t1"),
        "the worktree was not removed"
    );
    // The work survives on its branch.
    assert_eq!(
        git(&root.path, &["log", "-1", "--format=%s", "mailroom/t1"]),
        "work of t1"
    );
    assert!(rec["workspace"].get("saved").is_none(), "{rec}");
    // What an agent left uncommitted is committed onto its branch before
    // the worktree goes: the work is never removed with it.
    let rec = root.record("completed", "t2");
    assert_eq!(
        rec["workspace"]["files_modified"],
        serde_json::json!(["edited-by-t2.txt"])
    );
    assert_eq!(rec["workspace"]["removed"], true, "{rec}");
    assert!(!root.exists(".mailroom/worktrees/t2"));
    let saved = rec["workspace"]["saved"].as_str().unwrap();
    assert_eq!(git(&root.path, &["rev-parse", "mailroom/t2"]), saved);
    assert_eq!(
        git(&root.path, &["show", "mailroom/t2:edited-by-t2.txt"]),
        "t2"
    );
    assert_eq!(
        git(&root.path, &["log", "-1", "--format=%s", "mailroom/t2"]),
        "mailroom: what t2 left uncommitted"
    );
}

#[test]
fn worktrees_are_kept_when_asked_and_a_non_repository_is_a_clear_error() {
    let edit = agent("edit.sh");
    let root = repo(&format!(
        "worktree_cleanup: keep\nagents:\n  coder:\n    command: [{edit:?}]\n    workspace: worktree\n"
    ))
    .task("k.yaml", "description: keep my worktree\n");
    root.run_until_idle();
    assert_eq!(root.record("completed", "k")["workspace"]["removed"], false);
    assert!(root.exists(".mailroom/worktrees/k/edited-by-k.txt"));

    let plain = Root::new()
        .agent_config(&[&edit], "")
        .task("w.yaml", "description: x\nworkspace: worktree\n");
    plain.run_until_idle();
    let rec = plain.record("failed", "w");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("needs a git repository"),
        "{rec}"
    );
}

#[test]
fn shared_workdirs_take_files_modified_from_the_agent_or_git_status() {
    let edit = agent("edit.sh");
    let root = repo(&format!(
        "agents:\n  reporter:\n    command: [{edit:?}]\n    env: {{REPORT: \"1\"}}\n  silent:\n    command: [{edit:?}]\ndefault_agent: silent\n"
    ))
    .task("r.yaml", "description: x\nagent: reporter\n")
    .task("s.yaml", "description: x\n");
    root.run_until_idle();
    let ws = root.record("completed", "r")["workspace"].clone();
    assert_eq!(ws["source"], "agent");
    assert_eq!(
        ws["files_modified"],
        serde_json::json!(["edited-by-r.txt", "notes/plan.md"])
    );
    let ws = root.record("completed", "s")["workspace"].clone();
    assert_eq!(ws["source"], "git-status");
    let files = ws["files_modified"].as_array().unwrap();
    assert!(files.iter().any(|f| f == "edited-by-s.txt"), "{ws}");
    assert!(
        files
            .iter()
            .all(|f| !f.as_str().unwrap().starts_with("tasks/")),
        "{ws}"
    );
}

/// Two runs that work in the same shared workdir at the same time: each
/// one's `git status` may hold the other's changes, and the record says so.
/// A run alone says its list is exact.
#[test]
fn overlapping_runs_in_a_shared_workdir_say_their_file_list_is_not_exact() {
    // Each run waits (bounded) until both are running, then writes a file.
    let meet = "touch \"$MAILROOM_ROOT/$MAILROOM_TASK.here\"; i=0; \
                while [ \"$(ls \"$MAILROOM_ROOT\" | grep -c '[.]here$')\" -lt 2 ] && [ $i -lt 600 ]; \
                do sleep 0.05; i=$((i+1)); done; echo x > \"$MAILROOM_ROOT/by-$MAILROOM_TASK.txt\"";
    let root = repo(&format!(
        "concurrency: 2\ndefault_agent: m\nagents:\n  m:\n    command: [sh, -c, {meet:?}]\n    max_instances: 2\n  \
         alone:\n    command: [sh, -c, \"echo y > \\\"$MAILROOM_ROOT/alone.txt\\\"\"]\n"
    ))
    .task("a.yaml", "description: x\n")
    .task("b.yaml", "description: x\n");
    root.run_until_idle();
    for t in ["a", "b"] {
        let ws = root.record("completed", t)["workspace"].clone();
        assert_eq!(ws["source"], "git-status", "{ws}");
        assert_eq!(ws["files_modified_exact"], false, "{t}: {ws}");
    }
    root.write("tasks/pending/c.yaml", "description: x\nagent: alone\n");
    root.run_until_idle();
    let ws = root.record("completed", "c")["workspace"].clone();
    assert_eq!(ws["source"], "git-status", "{ws}");
    assert_eq!(ws["files_modified_exact"], true, "{ws}");
    assert!(
        ws["files_modified"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "alone.txt"),
        "{ws}"
    );
}

/// No git process after a run whose workdir is in no repository, nor with
/// `git_status: false` in one: a `git` first on PATH that leaves a mark
/// is never started.
#[test]
fn no_git_process_runs_outside_a_repository_or_when_turned_off() {
    let check = |root: &Root, want_source: &str| {
        let bin = root.p("fakebin");
        std::fs::create_dir_all(&bin).unwrap();
        let mark = root.p("git-was-run");
        let fake = bin.join("git");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> {:?}\nexit 1\n",
                mark.display().to_string()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut sup = root.spawn_with(&[("PATH", path.as_str())]);
        wait_for(Duration::from_secs(30), "the task to complete", || {
            root.p("tasks/completed/t.result.json").exists()
        });
        sup.signal(15);
        sup.wait_exit(Duration::from_secs(30));
        let ws = root.record("completed", "t")["workspace"].clone();
        assert_eq!(ws["source"], want_source, "{ws}");
        assert!(
            !mark.exists(),
            "git was started: {}",
            std::fs::read_to_string(&mark).unwrap_or_default()
        );
    };
    let plain = Root::new()
        .config("default_agent: a\nagents:\n  a:\n    command: [\"true\"]\n")
        .task("t.yaml", "description: x\n");
    check(&plain, "none");
    let off = repo("git_status: false\ndefault_agent: a\nagents:\n  a:\n    command: [\"true\"]\n")
        .task("t.yaml", "description: x\n");
    check(&off, "none");
}

#[test]
fn a_malformed_result_file_is_named_in_the_warnings_and_odd_paths_are_left_out() {
    let script = r#"case "$MAILROOM_TASK" in
  bad) printf 'files_modified: [unclosed\n' > "$MAILROOM_RESULT" ;;
  paths) printf 'files_modified: ["src/a.rs", "../../etc/passwd", "/etc/shadow"]\n' > "$MAILROOM_RESULT" ;;
  badstatus) printf 'status: failed\nsummary: [the tests broke\n' > "$MAILROOM_RESULT" ;;
  number) printf 'status: 42\n' > "$MAILROOM_RESULT" ;;
  fifo) mkfifo "$MAILROOM_RESULT" ;;
esac
echo done"#;
    let root = Root::new()
        .agent_config(
            &["/bin/sh", "-c", script],
            "default_agent: a\ngit_status: false\nretries: 0",
        )
        .task("bad.yaml", "description: x\n")
        .task("paths.yaml", "description: x\n")
        .task("badstatus.yaml", "description: x\n")
        .task("number.yaml", "description: x\n")
        .task("fifo.yaml", "description: x\n");
    root.run_until_idle();
    // A result file that may have said how the run ended, and cannot be
    // read, never passes for a success.
    assert_eq!(root.names("failed"), ["badstatus", "fifo", "number"]);
    for (task, want) in [
        ("badstatus", "may have said how the run ended"),
        ("fifo", "may have said how the run ended"),
        ("number", "`status: 42`, which is not a word"),
    ] {
        let rec = root.record("failed", task);
        assert_eq!(rec["outcome"], "agent_error", "{rec}");
        let err = rec["error"].as_str().unwrap();
        assert!(err.contains(want), "{task}: {err}");
    }
    let rec = root.record("completed", "bad");
    let w = rec["warnings"].to_string();
    assert!(w.contains("$MAILROOM_RESULT was not used"), "{rec}");
    assert_eq!(rec["workspace"]["source"], "none", "{rec}");
    let rec = root.record("completed", "paths");
    assert_eq!(
        rec["workspace"]["files_modified"],
        serde_json::json!(["src/a.rs"]),
        "{rec}"
    );
    assert!(
        rec["warnings"]
            .to_string()
            .contains("2 entries of files_modified left out"),
        "{rec}"
    );
}

#[test]
fn changes_made_before_a_run_are_not_put_down_to_it() {
    // sub/old.txt and sub/keep.txt are untracked before any run: a run that
    // writes new.txt lists new.txt only; one that appends to old.txt lists it.
    let root = repo(
        "default_agent: w\nagents:\n  w:\n    command: [sh, -c, \"case $MAILROOM_TASK in n) echo x > new.txt ;; o) echo more >> sub/old.txt ;; esac\"]\n",
    );
    root.write("sub/old.txt", "before\n");
    root.write("sub/keep.txt", "before\n");
    let root = root.task("n.yaml", "description: x\n");
    root.run_until_idle();
    let ws = root.record("completed", "n")["workspace"].clone();
    assert_eq!(ws["files_modified"], serde_json::json!(["new.txt"]), "{ws}");
    assert_eq!(ws["files_modified_exact"], true, "{ws}");
    root.write("tasks/pending/o.yaml", "description: x\n");
    root.run_until_idle();
    let ws = root.record("completed", "o")["workspace"].clone();
    assert_eq!(
        ws["files_modified"],
        serde_json::json!(["sub/old.txt"]),
        "{ws}"
    );
}

/// Worktrees made and removed side by side in one repository: git's
/// `worktree add` reads the other worktrees' files and fails on one being
/// made at the same moment, so mailroom makes them one at a time. Every run
/// gets its worktree.
#[test]
fn many_worktrees_at_once_in_one_repository_all_get_made() {
    let edit = agent("edit.sh");
    let mut root = repo(&format!(
        "concurrency: 4\nagents:\n  coder:\n    command: [{edit:?}]\n    workspace: worktree\n    max_instances: 4\n    env: {{COMMIT: \"1\"}}\ndefault_agent: coder\n"
    ));
    for i in 0..16 {
        root = root.task(&format!("w{i:02}.yaml"), "description: commit something\n");
    }
    root.run_until_idle();
    let done = root.names("completed");
    assert_eq!(done.len(), 16, "failed: {:?}", root.names("failed"));
}

/// What cannot be saved on the run's branch whole keeps the worktree, with
/// the reason in the record's warnings: a HEAD the agent moved off the
/// branch, a git repository of its own inside it, a file over 50 MiB. And
/// nothing of the repository's runs when mailroom commits: a hook the agent
/// planted stays unrun.
#[test]
fn work_that_cannot_be_saved_whole_keeps_its_worktree() {
    let script = r#"echo work > "work-$MAILROOM_TASK.txt"
case "$MAILROOM_TASK" in
  detached) git checkout -q --detach ;;
  nested) mkdir lib && cd lib && git init -q && echo x > code.txt ;;
  big) truncate -s 60M big.bin ;;
  hooked)
    hooks="$(git rev-parse --git-common-dir)/hooks"
    mkdir -p "$hooks"
    for h in prepare-commit-msg post-commit pre-commit; do
      printf '#!/bin/sh\ntouch "%s/hook-ran"\n' "$MAILROOM_ROOT" > "$hooks/$h"
      chmod +x "$hooks/$h"
    done ;;
esac"#;
    let root = repo(&format!(
        "agents:\n  coder:\n    command: [/bin/sh, -c, {script:?}]\n    workspace: worktree\ndefault_agent: coder\n"
    ))
    .task("detached.yaml", "description: x\n")
    .task("nested.yaml", "description: x\n")
    .task("big.yaml", "description: x\n")
    .task("hooked.yaml", "description: x\n");
    root.run_until_idle();
    for (t, why) in [
        ("detached", "its HEAD is not on mailroom/detached"),
        ("nested", "lib/ is a git repository of its own"),
        ("big", "big.bin is 62914560 bytes"),
    ] {
        let rec = root.record("completed", t);
        assert_eq!(rec["workspace"]["removed"], false, "{t}: {rec}");
        assert!(rec["workspace"].get("saved").is_none(), "{t}: {rec}");
        let w = rec["warnings"].to_string();
        assert!(w.contains("was kept") && w.contains(why), "{t}: {rec}");
        assert!(
            root.exists(&format!(".mailroom/worktrees/{t}/work-{t}.txt")),
            "{t}"
        );
    }
    let rec = root.record("completed", "hooked");
    assert!(rec["workspace"]["saved"].is_string(), "{rec}");
    assert!(!root.exists("hook-ran"), "a hook the agent planted ran");
}

/// A `post-checkout` hook that touches `in-hook` and then holds the run's
/// preparation until `go` exists (at most a minute); with `once`, only the
/// first checkout is held.
fn held_in_checkout(root: Root, once: bool) -> Root {
    let r = root.path.display().to_string();
    let first = if once {
        format!("[ -e {r}/hooked ] && exit 0\ntouch {r}/hooked\n")
    } else {
        String::new()
    };
    let hook = root.p(".git/hooks/post-checkout");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n{first}touch {r}/in-hook\ni=0\nwhile [ ! -e {r}/go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// A keeper that cannot write `keeper.json` (a full disk, as a rule; here a
/// directory stands in its place, made while the run is prepared) starts no
/// agent, and the run is retried: it was filed `spawn`, never retried, with
/// "before it started the agent" while the agent had in fact run.
#[test]
fn a_keeper_that_cannot_write_its_file_starts_no_agent_and_the_run_is_retried() {
    let root = repo(
        "retries: 1\nretry_delay: 50ms\ndefault_agent: a\nagents:\n  a:\n    \
         command: [sh, -c, \"echo run >> \\\"$MAILROOM_ROOT/agent-runs\\\"\"]\n    workspace: worktree\n",
    );
    // The first checkout only: the retry's goes through.
    let root = held_in_checkout(root, true).task("o.yaml", "description: x\n");
    let _sup = root.spawn();
    wait_for(Duration::from_secs(30), "the worktree's checkout", || {
        root.exists("in-hook")
    });
    let attempt = root.p("tasks/assigned/o.run/1");
    assert!(attempt.is_dir(), "no attempt directory during the checkout");
    std::fs::create_dir_all(attempt.join("keeper.json/in-the-way")).unwrap();
    // A process of an earlier run of the task, still running in a group of
    // its own: found and stopped, and not taken for this run's agent.
    let mut earlier = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("600")
            .env("MAILROOM_ROOT", &root.path)
            .env("MAILROOM_TASK", "o")
            .process_group(0)
            .spawn()
            .unwrap()
    };
    root.write("go", "");
    wait_for(Duration::from_secs(60), "the task to be filed", || {
        !root.names("completed").is_empty() || !root.names("failed").is_empty()
    });
    let rec = root.record("completed", "o");
    assert_eq!(root.read("agent-runs"), "run\n", "{rec}");
    assert_eq!(rec["attempts"], 2, "{rec}");
    let first = &rec["history"][0];
    assert_ne!(first["outcome"], "spawn", "{rec}");
    let e = first["error"].as_str().unwrap();
    assert!(
        e.contains("could not write keeper.json") && e.contains("did not start the agent"),
        "{rec}"
    );
    assert!(
        e.contains("processes of an earlier run of this task still ran and were stopped"),
        "{rec}"
    );
    let ended = earlier.try_wait().unwrap().is_some() || {
        let _ = earlier.kill();
        false
    };
    let _ = earlier.wait();
    assert!(ended, "the earlier run's process was not stopped");
}

/// A cancel that lands while the run is being prepared (here: its worktree's
/// checkout, held by a `post-checkout` hook) never starts the agent: the task
/// is filed cancelled, and its worktree is cleaned up as usual.
#[test]
fn a_cancel_that_lands_before_the_spawn_never_starts_the_agent() {
    let root = repo(
        "retries: 0\ndefault_agent: a\nagents:\n  a:\n    \
         command: [sh, -c, \"touch \\\"$MAILROOM_ROOT/agent-started\\\"\"]\n    workspace: worktree\n",
    );
    let root = held_in_checkout(root, false).task("o.yaml", "description: x\n");
    let _sup = root.spawn();
    wait_for(Duration::from_secs(30), "the worktree's checkout", || {
        root.exists("in-hook")
    });
    // The marker `mailroom cancel` writes (the command itself waits for
    // the task to end).
    root.write("tasks/control/cancel/o", "");
    wait_for(
        Duration::from_secs(30),
        "the cancel to reach the run",
        || root.sup_logs().contains("cancel requested"),
    );
    root.write("go", "");
    wait_for(Duration::from_secs(30), "the task to be filed", || {
        root.names("failed") == ["o"]
    });
    assert!(!root.exists("agent-started"), "the agent was started");
    let rec = root.record("failed", "o");
    assert_eq!(rec["outcome"], "cancelled", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("before its agent started"),
        "{rec}"
    );
}
