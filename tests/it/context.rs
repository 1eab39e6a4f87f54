//! Shared context, prompts, follow-up tasks and subtasks, through the real
//! binary: the merge into context/, the prompt with its context, the
//! transactional outbox, subtask expansion and the runaway limits.

use crate::common::*;
use std::time::Duration;

#[test]
fn the_seed_context_sharing_acceptance_test_with_the_demo_agent() {
    // The built-in demo agent (no config): task 1 plans, task 2 reads the plan.
    let root = Root::new();
    root.write(
        "context/project_overview.md",
        "# Project overview\n\nProject: Test System\n",
    );
    let root = root
        .task("task_1.yaml", "description: Plan the login feature\n")
        .task(
            "task_2.yaml",
            "description: Build the login page from the plan\nafter: [task_1]\n\
             context_files: [context/agent_outputs/task_1.md]\n",
        );
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["task_1", "task_2"]);
    let plan = root.read("context/agent_outputs/task_1.md");
    assert!(plan.contains("Project: Test System"), "{plan}");
    let second = root.read("context/agent_outputs/task_2.md");
    // Its prompt carried task 1's plan and the current state.
    assert!(
        second.contains("- context/agent_outputs/task_1.md: "),
        "{second}"
    );
    assert!(second.contains("context/current_state.md"), "{second}");
    let sent = root.mailroom(&["show", "task_2", "--prompt"]);
    let sent = stdout(&sent);
    assert!(
        sent.starts_with("Build the login page from the plan\n"),
        "{sent}"
    );
    assert!(
        sent.contains("## Context: context/agent_outputs/task_1.md"),
        "{sent}"
    );
    assert!(
        sent.contains("Demo agent planned \"Plan the login feature\""),
        "{sent}"
    );
    // current_state.md: the summaries of what finished.
    let state = root.read("context/current_state.md");
    assert!(
        state.contains("Demo agent planned \"Build the login page"),
        "{state}"
    );
    assert!(state.contains("2 completed and 0 failed so far"), "{state}");
    let log = root.read("context/completed_tasks.jsonl");
    assert_eq!(log.lines().count(), 2);
}

#[test]
fn summary_blocks_reach_the_record_the_log_and_current_state() {
    let root = Root::new()
        .agent_config(&[&agent("followup.sh")], "")
        .task("s.yaml", "description: x\n");
    root.run_until_idle();
    let rec = root.record("completed", "s");
    assert_eq!(rec["summary"], "s finished its part");
    assert!(
        root.read("context/completed_tasks.jsonl")
            .contains("\"summary\":\"s finished its part\"")
    );
    assert!(
        root.read("context/current_state.md")
            .contains("s finished its part")
    );
}

#[test]
fn a_missing_context_file_fails_the_task_before_any_run() {
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("m.yaml", "description: x\ncontext_files: [docs/nope.md]\n");
    root.run_until_idle();
    let rec = root.record("failed", "m");
    assert_eq!(rec["outcome"], "invalid");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("`docs/nope.md` does not exist"),
        "{rec}"
    );
}

#[test]
fn the_outbox_is_committed_on_success_and_withheld_on_failure() {
    let root = Root::new();
    let runs = root.p("runs.log");
    let root = root.config(&format!(
        "retries: 0\nagents:\n  ok:\n    command: [{f:?}]\n    env: {{FOLLOWUPS: \"next-a next-b\", RUNLOG: {r:?}}}\n\
         \n  bad:\n    command: [{f:?}]\n    env: {{FOLLOWUPS: \"never\", EXIT: \"1\", RUNLOG: {r:?}}}\n\
         \n  plain:\n    command: [{ok:?}]\n",
        f = agent("followup.sh"),
        r = runs.display().to_string(),
        ok = agent("ok.sh"),
    ));
    // The follow-ups themselves run on `plain` (routing by label is not needed:
    // they name no agent, so give the tree a default).
    let root = root
        .config(&format!(
            "retries: 0\ndefault_agent: plain\nagents:\n  ok:\n    command: [{f:?}]\n    env: {{FOLLOWUPS: \"next-a next-b\", RUNLOG: {r:?}}}\n\
             \n  bad:\n    command: [{f:?}]\n    env: {{FOLLOWUPS: \"never\", EXIT: \"1\", RUNLOG: {r:?}}}\n\
             \n  plain:\n    command: [{ok:?}]\n",
            f = agent("followup.sh"),
            r = runs.display().to_string(),
            ok = agent("ok.sh"),
        ))
        .task("good.yaml", "description: x\nagent: ok\n")
        .task("broken.yaml", "description: x\nagent: bad\n");
    root.run_until_idle();
    let rec = root.record("completed", "good");
    assert_eq!(rec["followups"], serde_json::json!(["next-a", "next-b"]));
    assert_eq!(root.names("completed"), ["good", "next-a", "next-b"]);
    assert!(
        root.read("tasks/completed/next-a.yaml")
            .contains("parent: \"good\"")
    );
    let shown = stdout(&root.mailroom(&["show", "good"]));
    assert!(shown.contains("child:  next-a (completed)"), "{shown}");
    let rec = root.record("failed", "broken");
    assert_eq!(rec["withheld_followups"], serde_json::json!(["never.yaml"]));
    assert!(root.exists("tasks/failed/broken.run/1/outbox/never.yaml"));
    assert!(root.names("pending").is_empty() && !root.exists("tasks/completed/never.yaml"));
}

#[test]
fn subtasks_expand_into_ordered_children_and_the_parent_waits() {
    let root = Root::new();
    let runs = root.p("runs.log");
    let root = root
        .config(&format!(
            "agents:\n  a:\n    command: [{:?}]\n    env: {{RUNLOG: {:?}}}\n",
            agent("followup.sh"),
            runs.display().to_string()
        ))
        .task(
            "plan.yaml",
            "description: the whole job\nsubtasks:\n  - first step\n  - id: two\n    description: second step\n  - third step\n",
        );
    root.run_until_idle();
    assert_eq!(
        std::fs::read_to_string(&runs)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        ["plan.1", "plan.two", "plan.3"],
        "children run in order, the parent runs no agent"
    );
    let rec = root.record("completed", "plan");
    assert_eq!(
        rec["children"],
        serde_json::json!(["plan.1", "plan.two", "plan.3"])
    );
    assert_eq!(rec["summary"], "all 3 subtasks completed", "{rec}");
    assert!(
        root.read("tasks/completed/plan.two.yaml")
            .contains("after: [\"plan.1\"]")
    );
}

#[test]
fn a_failed_subtask_fails_its_parent() {
    let root = Root::new()
        .config(&format!(
            "retries: 0\nsubtask_order: parallel\nagents:\n  a:\n    command: [{:?}]\n  f:\n    command: [{:?}]\ndefault_agent: a\n",
            agent("ok.sh"),
            agent("fail.sh")
        ))
        .task(
            "p.yaml",
            "description: job\nsubtasks:\n  - fine\n  - {description: broken, agent: f}\n",
        );
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["p.1"]);
    let rec = root.record("failed", "p");
    assert_eq!(rec["error"], "dependency p.2 failed");
}

#[test]
fn runaway_limits_fail_the_offending_task() {
    let root = Root::new()
        .config(&format!(
            "retries: 0\nfollowups_per_task: 2\nmax_tree_depth: 2\ndefault_agent: chain\nagents:\n  many:\n    command: [{f:?}]\n    env: {{FOLLOWUPS: \"a b c\"}}\n  chain:\n    command: [{f:?}]\n    env: {{CHAIN: \"1\"}}\n",
            f = agent("followup.sh")
        ))
        .task("greedy.yaml", "description: x\nagent: many\n")
        .task("root.yaml", "description: x\n");
    root.run_until_idle();
    let rec = root.record("failed", "greedy");
    assert_eq!(rec["outcome"], "runaway");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("wrote 3 follow-up tasks; the limit is 2"),
        "{rec}"
    );
    // root -> root-n -> root-n-n; the next one would be 3 levels down.
    assert_eq!(root.names("completed"), ["root", "root-n"]);
    let rec = root.record("failed", "root-n-n");
    assert_eq!(rec["outcome"], "runaway");
    assert!(
        rec["error"].as_str().unwrap().contains("max_tree_depth"),
        "{rec}"
    );
}

#[test]
fn mailroom_add_inside_an_agent_records_the_parent_and_keeps_the_depth_limit() {
    let root = Root::new()
        .config(&format!(
            "retries: 0\nmax_tree_depth: 1\nagents:\n  a:\n    command: [{:?}]\n    env: {{MB: {:?}}}\n",
            agent("adder.sh"),
            BIN
        ))
        .task("top.yaml", "description: start\n");
    root.run_until_idle();
    // top (depth 0) adds top-c (depth 1); top-c's own child would be depth 2.
    assert_eq!(root.names("completed"), ["top"]);
    assert!(
        root.read("tasks/failed/top-c.yaml")
            .contains("parent: \"top\"")
    );
    let rec = root.record("failed", "top-c");
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("max_tree_depth"), "{err}");
    // Flags that belong to a description are refused with --file.
    root.write("x.yaml", "description: x\n");
    let out = root.mailroom(&[
        "add",
        "--file",
        root.p("x.yaml").to_str().unwrap(),
        "--agent",
        "a",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("'--file <FILE>' cannot be used with '--agent <AGENT>'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn show_lists_a_child_added_with_mailroom_add_beside_the_outbox_follow_ups() {
    // `a` queues `top-c` with `mailroom add` and `from-outbox` through its
    // outbox; both run on `plain`.
    let root = Root::new()
        .config(&format!(
            "retries: 0\ndefault_agent: plain\nagents:\n  a:\n    command: [sh, -c, {cmd:?}]\n    env: {{MB: {mb:?}, ADDER: {adder:?}, FU: {fu:?}, FOLLOWUPS: from-outbox}}\n  plain:\n    command: [{ok:?}]\n",
            cmd = "\"$ADDER\" && exec \"$FU\"",
            mb = BIN,
            adder = agent("adder.sh"),
            fu = agent("followup.sh"),
            ok = agent("ok.sh"),
        ))
        .task("top.yaml", "description: start\nagent: a\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["from-outbox", "top", "top-c"]);
    assert!(
        root.read("tasks/completed/top-c.yaml")
            .contains("parent: \"top\"")
    );
    let shown = stdout(&root.mailroom(&["show", "top"]));
    for c in ["from-outbox", "top-c"] {
        assert!(
            shown.contains(&format!("child:  {c} (completed)")),
            "{shown}"
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["show", "top", "--json"]).stdout).unwrap();
    assert_eq!(
        v["children"],
        serde_json::json!(["from-outbox", "top-c"]),
        "{v}"
    );
    // The children's own pages name their parent.
    let shown = stdout(&root.mailroom(&["show", "top-c"]));
    assert!(shown.contains("parent: top (completed)"), "{shown}");
}

#[test]
fn a_tree_may_not_grow_past_max_tree_tasks() {
    // Every task of the tree writes two follow-ups; the tree may hold 4 tasks.
    let root = Root::new()
        .config(&format!(
            "retries: 0\nmax_tree_tasks: 4\nmax_tree_depth: 9\nagents:\n  a:\n    command: [{:?}]\n    env: {{FOLLOWUPS: \"x y\"}}\n",
            agent("followup.sh")
        ))
        .task("seed.yaml", "description: x\n");
    // The follow-ups are named x, y (then x-2, y-2, ...): run until nothing moves.
    root.run_until_idle();
    let completed = root.names("completed");
    let failed = root.names("failed");
    // seed (1) + x + y = 3; the next task's two more would make 5 > 4.
    assert_eq!(completed, ["seed"], "{completed:?} / {failed:?}");
    assert_eq!(failed.len(), 2, "{failed:?}");
    for f in &failed {
        let rec = root.record("failed", f);
        assert_eq!(rec["outcome"], "runaway");
        assert!(
            rec["error"].as_str().unwrap().contains("max_tree_tasks"),
            "{rec}"
        );
    }
    assert_eq!(root.read("tasks/trees/seed").trim(), "3");
}

/// A symbolic link planted at `context/completed_tasks.jsonl` (or at the
/// context lock) made every merge fail, and with it every commit of the tree,
/// with an error that named no path. The context is derived data: the link
/// is set aside, a fresh file takes its place, the log names the path, and
/// the link's target is never written.
#[test]
fn a_symlink_in_context_is_set_aside_and_never_blocks_a_commit() {
    use std::os::unix::fs::symlink;
    let outside = Root::new();
    outside.write("log.jsonl", "precious\n");
    outside.write("state.md", "precious\n");
    outside.write("lock", "precious\n");
    let root = Root::new()
        .agent_config(&[&agent("ok.sh")], "")
        .task("a.yaml", "description: first\n");
    symlink(
        outside.p("log.jsonl"),
        root.p("context/completed_tasks.jsonl"),
    )
    .unwrap();
    symlink(outside.p("state.md"), root.p("context/current_state.md")).unwrap();
    symlink(outside.p("lock"), root.p("context/.lock")).unwrap();
    let out = root.run_until_idle_within(std::time::Duration::from_secs(30));
    assert_eq!(root.names("completed"), ["a"]);
    assert!(root.entries("tasks/assigned").is_empty());
    for f in ["log.jsonl", "state.md", "lock"] {
        assert_eq!(
            outside.read(f),
            "precious\n",
            "{f} was written through a link"
        );
    }
    for f in ["completed_tasks.jsonl", "current_state.md", ".lock"] {
        let m = std::fs::symlink_metadata(root.p(&format!("context/{f}"))).unwrap();
        assert!(m.is_file(), "context/{f} is still not a regular file");
    }
    assert!(
        root.read("context/completed_tasks.jsonl")
            .contains("\"task\":\"a\"")
    );
    let entries = root.entries("context");
    assert!(
        entries
            .iter()
            .any(|e| e.starts_with("completed_tasks.jsonl.set-aside")),
        "{entries:?}"
    );
    let log = stderr(&out);
    assert!(log.contains("context/completed_tasks.jsonl"), "{log}");
}

#[test]
fn without_a_summary_the_next_prompt_carries_the_head_and_tail_of_each_recent_output() {
    // `big` prints 200 KB with no [SUMMARY]; `brief` prints a summary;
    // `next` runs after both and sees an excerpt of `big` only.
    let big = "printf 'HEAD-OF-BIG\\n'; i=0; while [ $i -lt 4000 ]; do \
               printf 'filler line %05d of the middle part of the output\\n' $i; i=$((i+1)); done; \
               printf 'TAIL-OF-BIG\\n'";
    let root = Root::new()
        .config(&format!(
            "context_max_bytes: 8192\nagents:\n  big:\n    command: [sh, -c, {big:?}]\n  \
             brief:\n    command: [sh, -c, \"echo BRIEF-BODY; echo '[SUMMARY]brief summary[/SUMMARY]'\"]\n  \
             ok:\n    command: [{:?}, \"{{prompt}}\"]\n",
            agent("ok.sh")
        ))
        .task("a-big.yaml", "description: x\nagent: big\n")
        .task("b-brief.yaml", "description: x\nagent: brief\nafter: [a-big]\n")
        .task(
            "next.yaml",
            "description: carry on\nagent: ok\nafter: [a-big, b-brief]\n",
        );
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["a-big", "b-brief", "next"]);
    let sent = stdout(&root.mailroom(&["show", "next", "--prompt"]));
    let section = sent
        .split("## Context: recent outputs without a [SUMMARY] (excerpts)")
        .nth(1)
        .unwrap_or_else(|| panic!("no excerpt section in:\n{sent}"));
    let section = section.split("\n---\n## Reporting back").next().unwrap();
    assert!(section.contains("### a-big (completed, context/agent_outputs/a-big.md)"));
    assert!(section.contains("HEAD-OF-BIG") && section.contains("TAIL-OF-BIG"));
    let omitted: u64 = section
        .split("[... ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no omission marker in:\n{section}"));
    assert!(omitted > 190_000, "{omitted}");
    // A task with a summary is not excerpted (its summary is in current_state.md).
    assert!(!section.contains("BRIEF-BODY"), "{section}");
    assert!(sent.contains("brief summary"), "{sent}");
    // Within context_max_bytes.
    assert!(section.len() <= 8192, "{}", section.len());
}

#[test]
fn an_outbox_entry_that_cannot_be_a_follow_up_is_named_and_never_wedges_the_commit() {
    // A directory and a symlink named like task files and a name with a
    // newline: none is queued (and nothing in their place), each is named
    // in the record's warnings and left in the outbox. A 200-byte name
    // already in use is queued shortened (`L…L-2`); the good follow-up is
    // queued, and the task commits.
    let long = "L".repeat(200);
    let script = format!(
        r#"[ "$MAILROOM_TASK" = p ] || exit 0
cd "$MAILROOM_OUTBOX"
mkdir dir.yaml
ln -s /etc/hostname link.yaml
printf 'description: a\n' > "$(printf 'n\nl').yaml"
printf 'description: long\n' > {long}.yaml
printf 'description: fine\n' > fine.yaml
printf 'description: txt\n' > meant.txt
printf 'scratch\n' > .scratch.swp
echo done"#
    );
    let root = Root::new()
        // Two follow-ups allowed: the directory and the link named like
        // task files are never queued, so they do not count.
        .agent_config(
            &["/bin/sh", "-c", &script],
            "default_agent: a\nretries: 0\nfollowups_per_task: 2",
        )
        .task("p.yaml", "description: x\n")
        .task(&format!("{long}.yaml"), "description: the name is taken\n");
    let out = root.run_until_idle_within(std::time::Duration::from_secs(60));
    assert!(
        root.names("completed").contains(&"p".to_owned()),
        "{}",
        stderr(&out)
    );
    let rec = root.record("completed", "p");
    let short = format!("{}-2", &long[..198]);
    assert_eq!(
        rec["followups"],
        serde_json::json!([short, "fine"]),
        "{rec}"
    );
    let warnings = rec["warnings"].to_string();
    for want in ["dir.yaml", "link.yaml", "n\\\\nl.yaml", "meant.txt"] {
        assert!(warnings.contains(want), "{want} not named: {warnings}");
    }
    // An editor's leftover is nobody's follow-up: not named.
    assert!(!warnings.contains("scratch"), "{warnings}");
    for left in ["dir.yaml", "link.yaml"] {
        assert!(
            std::fs::symlink_metadata(root.p(&format!("tasks/completed/p.run/1/outbox/{left}")))
                .is_ok(),
            "{left} was not left in the outbox"
        );
    }
    // Nothing else was queued: no `dir`, no `link`.
    let mut all: Vec<String> = ["pending", "completed", "failed"]
        .iter()
        .flat_map(|s| root.names(s))
        .collect();
    all.sort();
    let mut want = vec!["fine".to_owned(), long.clone(), short, "p".to_owned()];
    want.sort();
    assert_eq!(all, want);
}

/// An agent that replaces its outbox with a link to a directory outside the
/// tree (or with a file): nothing is queued from it, nothing there is
/// removed, and the record says why.
#[test]
fn an_outbox_replaced_by_a_link_or_a_file_queues_nothing_and_touches_nothing() {
    let outside = tempfile_outside();
    std::fs::write(outside.join("stolen.yaml"), "description: from outside\n").unwrap();
    // For `above`: a directory that looks like an attempt's, whose outbox
    // holds a task file.
    std::fs::create_dir_all(outside.join("attempt/outbox")).unwrap();
    std::fs::write(
        outside.join("attempt/outbox/taken.yaml"),
        "description: from outside\n",
    )
    .unwrap();
    let script = format!(
        r#"case "$MAILROOM_TASK" in
  link) rm -rf "$MAILROOM_OUTBOX"; ln -s {outside:?} "$MAILROOM_OUTBOX" ;;
  file) rm -rf "$MAILROOM_OUTBOX"; printf 'description: x\n' > "$MAILROOM_OUTBOX" ;;
  above) d=$(dirname "$MAILROOM_OUTBOX"); mv "$d" "$d.moved"; ln -s {attempt:?} "$d" ;;
esac
echo done"#,
        attempt = outside.join("attempt"),
    );
    let root = Root::new()
        .agent_config(&["/bin/sh", "-c", &script], "retries: 0")
        .task("link.yaml", "description: x\n")
        .task("file.yaml", "description: x\n")
        .task("above.yaml", "description: x\n");
    root.run_until_idle();
    // The attempt directory replaced above the outbox: nothing was queued from the directory the link leads to, and
    // nothing there was removed.
    assert!(
        outside.join("attempt/outbox/taken.yaml").exists(),
        "a file outside the tree was removed"
    );
    assert!(!root.names("pending").contains(&"taken".to_owned()));
    assert!(!root.names("completed").contains(&"taken".to_owned()));
    assert_eq!(root.names("completed"), ["above", "file", "link"]);
    let above = root.record("completed", "above");
    assert!(above.get("followups").is_none(), "{above}");
    assert!(
        above["warnings"]
            .to_string()
            .contains("is reached through a symbolic link"),
        "{above}"
    );
    assert!(
        root.names("pending").is_empty(),
        "{:?}",
        root.names("pending")
    );
    assert!(
        outside.join("stolen.yaml").exists(),
        "a file outside the tree was removed"
    );
    for (task, what) in [("link", "a symbolic link"), ("file", "not a directory")] {
        let rec = root.record("completed", task);
        assert!(rec.get("followups").is_none(), "{rec}");
        let w = rec["warnings"].to_string();
        assert!(
            w.contains(what) && w.contains("no follow-up was queued"),
            "{rec}"
        );
    }
    std::fs::remove_dir_all(&outside).unwrap();
}

/// A directory of its own outside any test root.
fn tempfile_outside() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mailroom-outside-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_follow_up_that_names_another_parent_is_not_queued() {
    // A parent of its own would start a tree afresh (a task that does not
    // exist ends the walk): chained, such follow-ups ran past max_tree_depth
    // and max_tree_tasks for ever. Naming the task that wrote it is fine.
    let script = r#"case "$MAILROOM_TASK" in gen*) ;; *) exit 0 ;; esac
n=${MAILROOM_TASK#gen}
[ "$n" -ge 8 ] && exit 0
printf 'description: gen %s\nparent: ghost-%s\n' $((n+1)) $n > "$MAILROOM_OUTBOX/gen$((n+1)).yaml"
printf 'description: own\nparent: %s\n' "$MAILROOM_TASK" > "$MAILROOM_OUTBOX/own$n.yaml"
echo done"#;
    let root = Root::new()
        .agent_config(
            &["/bin/sh", "-c", script],
            "default_agent: a\nretries: 0\nmax_tree_depth: 2\nmax_tree_tasks: 10",
        )
        .task("gen0.yaml", "description: start\n");
    root.run_until_idle_within(std::time::Duration::from_secs(60));
    let rec = root.record("completed", "gen0");
    assert_eq!(rec["followups"], serde_json::json!(["own0"]), "{rec}");
    let warnings = rec["warnings"].to_string();
    assert!(
        warnings.contains(
            "follow-up tasks/completed/gen0.run/1/outbox/gen1.yaml not queued: it names `parent: ghost-0`"
        ),
        "{warnings}"
    );
    assert!(root.exists("tasks/completed/gen0.run/1/outbox/gen1.yaml"));
    assert!(!root.names("completed").contains(&"gen1".to_owned()));
}

/// A follow-up that does not parse is queued as written and fails in
/// pending/ with its own error and position; its record names the task that
/// wrote it.
#[test]
fn a_follow_up_that_does_not_parse_names_its_parent_when_it_fails() {
    let script = r#"case "$MAILROOM_TASK" in p) ;; *) exit 0 ;; esac
printf 'description: [unclosed\nagent: a\n' > "$MAILROOM_OUTBOX/broken.yaml"
echo done"#;
    let root = Root::new()
        .agent_config(&["/bin/sh", "-c", script], "default_agent: a\nretries: 0")
        .task("p.yaml", "description: start\n");
    root.run_until_idle();
    let rec = root.record("completed", "p");
    assert_eq!(rec["followups"], serde_json::json!(["broken"]), "{rec}");
    let rec = root.record("failed", "broken");
    assert_eq!(rec["outcome"], "invalid", "{rec}");
    let error = rec["error"].as_str().unwrap();
    assert!(error.ends_with("(its parent: `p`)"), "{error}");
    assert_eq!(rec["error_location"]["line"], 1, "{rec}");
    let file = root.read("tasks/failed/broken.yaml");
    assert!(
        file.starts_with("description: [unclosed\nagent: a\n"),
        "{file}"
    );
    assert!(file.ends_with("parent: \"p\"\n"), "{file}");
}

/// A process that holds `context/.lock` (an agent that took it) holds up no
/// commit for long: after a bounded wait the task is committed, its record
/// saying that its answer was not merged, and by whom the lock was held.
#[test]
fn a_held_context_lock_delays_a_commit_only_so_long() {
    let root = Root::new()
        .agent_config(&["sh", "-c", "echo answer"], "")
        .task("q.yaml", "description: x\n")
        // Rejected on the supervisor's loop, which waits less for the lock.
        .task("bad.yaml", "description: [unclosed\n");
    let lock = hold_context_lock(&root);
    let started = std::time::Instant::now();
    root.run_until_idle_within(Duration::from_secs(60));
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    drop(lock);
    let rec = root.record("completed", "q");
    let w = rec["warnings"].to_string();
    assert!(
        w.contains("the answer was not merged into context/ at the commit (a later pass merges it): context/.lock has been held by another process")
            && w.contains(&format!("(by pid {})", std::process::id())),
        "{rec}"
    );
    assert!(!root.exists("context/agent_outputs/q.md"));
    assert_eq!(root.record("failed", "bad")["outcome"], "invalid");
    // Once the lock is free, the next recovery pass merges what was left out.
    root.run_until_idle();
    assert!(root.read("context/agent_outputs/q.md").contains("answer"));
    let log = root.read("context/completed_tasks.jsonl");
    assert!(log.contains("\"task\":\"q\""), "{log}");
    // The reject's line too: it was lost for good (totals, usage).
    assert!(log.contains("\"task\":\"bad\""), "{log}");
    assert!(root.entries("context/.unmerged").is_empty());
}

/// Subtasks count into their tree as follow-ups do: a follow-up that brings
/// more subtasks than the tree may hold fails `runaway` and queues none.
#[test]
fn subtasks_of_a_follow_up_count_against_the_tree() {
    let mut subtasks = String::from("description: fan out\nsubtasks:\n");
    for i in 0..12 {
        subtasks.push_str(&format!("  - step {i}\n"));
    }
    let root = Root::new()
        .agent_config(
            &[
                "sh",
                "-c",
                "[ \"$MAILROOM_TASK\" = root ] && cp \"$MAILROOM_ROOT/fan.yaml\" \"$MAILROOM_OUTBOX/fan.yaml\"; exit 0",
            ],
            "max_tree_tasks: 10",
        )
        .task("root.yaml", "description: the first task\n");
    root.write("fan.yaml", &subtasks);
    root.run_until_idle();
    let rec = root.record("failed", "fan");
    assert_eq!(rec["outcome"], "runaway", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("its 12 subtasks") && err.contains("max_tree_tasks"),
        "{err}"
    );
    assert_eq!(root.names("completed"), ["root"]);
    assert_eq!(root.names("failed"), ["fan"], "no subtask was queued");
}

/// A parent expanded again (its children failed; children and parent were
/// retried) counts no child twice into its tree.
#[test]
fn a_retried_subtask_parent_counts_its_children_once() {
    let root = Root::new()
        .agent_config(
            &["sh", "-c", "[ -e \"$MAILROOM_ROOT/ok\" ]"],
            "max_tree_tasks: 6\nretries: 0",
        )
        .task(
            "fan.yaml",
            "description: fan out\nsubtasks:\n  - one\n  - two\n  - three\n",
        );
    root.run_until_idle();
    assert_eq!(root.record("failed", "fan")["outcome"], "dependency");
    root.write("ok", "");
    let mut names: Vec<String> = root.names("failed");
    names.sort();
    let args: Vec<&str> = std::iter::once("retry")
        .chain(names.iter().map(String::as_str))
        .collect();
    let out = root.mailroom(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    root.run_until_idle();
    let rec = root.record("completed", "fan");
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_eq!(root.read("tasks/trees/fan").trim(), "4");
}

/// A process that holds a tree's count (`tasks/trees/<first task>`) holds
/// up its follow-ups' commit only so long: then the run is filed, saying
/// which lock was held, and the supervisor goes on.
#[test]
fn a_held_tree_count_delays_a_commit_only_so_long() {
    let root = Root::new()
        .agent_config(
            &[
                "sh",
                "-c",
                "[ \"$MAILROOM_TASK\" = first ] && echo 'description: next' > \"$MAILROOM_OUTBOX/next.yaml\"; exit 0",
            ],
            "",
        )
        .task("first.yaml", "description: x\n");
    std::fs::create_dir_all(root.p("tasks/trees")).unwrap();
    root.write("tasks/trees/first", "1\n");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.p("tasks/trees/first"))
        .unwrap();
    lock.lock().unwrap();
    root.run_until_idle_within(Duration::from_secs(60));
    drop(lock);
    let rec = root.record("failed", "first");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("tasks/trees/first has been held by another process")
            && err.contains(&format!("(by pid {})", std::process::id())),
        "{rec}"
    );
    assert!(root.names("pending").is_empty(), "the follow-up was queued");
}

/// An agent's NUL bytes, terminal escapes and carriage returns (in its
/// `[SUMMARY]`, its output without one, or a failed run's stderr) never
/// reach `context/` or a later prompt: an agent that takes its prompt as an
/// argument (NUL cannot be in one) keeps working. A context file the task
/// lists that holds a NUL fails that task alone, naming the file.
#[test]
fn control_bytes_in_an_agent_s_answer_never_poison_the_context_or_later_prompts() {
    const AGENT: &str = r#"case "$MAILROOM_TASK" in
  s) printf '[SUMMARY]bad \000 byte \033[31mred\033[0m\rover[/SUMMARY]\n' ;;
  o) printf 'no summary \000 here \033]0;title\007 end\n' ;;
  f) printf 'it broke \000 \033[1mbadly\033[0m\n' >&2; exit 3 ;;
  *) printf '%s' "$1" > "$MAILROOM_ROOT/prompt-$MAILROOM_TASK.txt"; echo '[SUMMARY]fine[/SUMMARY]' ;;
esac"#;
    let cmd = serde_json::to_string(&["/bin/sh", "-c", AGENT, "sh", "{prompt}"]).unwrap();
    let root = Root::new()
        .config(&format!(
            "retries: 0\nretry_delay: 50ms\nsettle: 300ms\ndefault_agent: a\nagents:\n  a:\n    command: {cmd}\n    grace: 1s\n  \
             file:\n    command: [cat, \"{{prompt_file}}\"]\n"
        ))
        .task("s.yaml", "description: summary with control bytes\n")
        .task("o.yaml", "description: output with control bytes\n")
        .task("f.yaml", "description: fails with control bytes\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["o", "s"]);
    assert_eq!(root.names("failed"), ["f"]);
    root.write("bin.dat", "text \0 binary\n");
    let root = root
        .task("next1.yaml", "description: reads the context\n")
        .task("next2.yaml", "description: reads it too\n")
        .task(
            "listed.yaml",
            "description: lists a binary file\ncontext_files: [bin.dat]\n",
        )
        // An agent that reads its prompt from a file can take it.
        .task(
            "by-file.yaml",
            "description: lists it too\nagent: file\ncontext_files: [bin.dat]\n",
        );
    root.run_until_idle();
    assert_eq!(
        root.names("completed"),
        ["by-file", "next1", "next2", "o", "s"]
    );
    assert_eq!(root.names("failed"), ["f", "listed"]);
    let bad = |s: &str| s.contains(['\0', '\x1b', '\r', '\x07']);
    for f in [
        "context/current_state.md",
        "context/completed_tasks.jsonl",
        "context/agent_outputs/s.md",
        "context/agent_outputs/o.md",
        "context/agent_outputs/f.md",
        "prompt-next1.txt",
    ] {
        let text = root.read(f);
        assert!(!bad(&text), "{f} carries control bytes: {text:?}");
    }
    // What the agents said is still there, the bytes made visible or cut.
    let state = root.read("context/current_state.md");
    assert!(state.contains("bad") && state.contains("red"), "{state}");
    assert!(state.contains("it broke"), "{state}");
    let prompt = root.read("prompt-next1.txt");
    assert!(prompt.contains("no summary"), "{prompt}");
    let rec = root.record("completed", "s");
    assert!(!bad(rec["summary"].as_str().unwrap()), "{}", rec["summary"]);
    // A listed file with a NUL: that task fails, and says which file.
    let rec = root.record("failed", "listed");
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("bin.dat") && err.contains("NUL"), "{err}");
}

/// A subtask parent merged by a later pass (its commit's merge was left to
/// `context/.unmerged/`) gets its `agent_outputs/` file as at its commit.
#[test]
fn a_later_merge_of_a_subtask_parent_writes_its_output_file() {
    let root = Root::new()
        .agent_config(&["sh", "-c", "echo answer"], "")
        .task("p.yaml", "description: parent\nsubtasks:\n  - one\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["p", "p.1"]);
    let at_commit = root.read("context/agent_outputs/p.md");
    assert!(at_commit.contains("- agent: -"), "{at_commit}");
    std::fs::remove_file(root.p("context/agent_outputs/p.md")).unwrap();
    root.write("context/.unmerged/p", "completed");
    root.run_until_idle();
    assert!(root.entries("context/.unmerged").is_empty());
    assert_eq!(root.read("context/agent_outputs/p.md"), at_commit);
}

/// A later merge of the cancel of a task that had run before (its record
/// names that run's agent) writes its log line only, as the cancel's own
/// merge does: the failed try's output is no answer for the next agents.
#[test]
fn a_later_merge_of_a_cancel_writes_no_output_file() {
    let root = Root::new()
        .config(
            "retries: 1\nretry_delay: 1h\nagents:\n  a:\n    command: [\"sh\", \"-c\", \
             \"echo partial answer of a failed try; exit 1\"]\n",
        )
        .task("f.yaml", "description: x\n");
    // Attempt 1 fails; the retry waits an hour.
    let mut sup = root.spawn();
    wait_for(Duration::from_secs(60), "attempt 1 to fail", || {
        root.exists("tasks/pending/f.yaml") && root.exists("tasks/assigned/f.state.json")
    });
    sup.kill9();
    let out = root.mailroom(&["cancel", "f"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.exists("context/agent_outputs/f.md"));
    root.write("context/.unmerged/f", "failed");
    root.run_until_idle();
    assert!(root.entries("context/.unmerged").is_empty());
    assert!(
        !root.exists("context/agent_outputs/f.md"),
        "{}",
        root.read("context/agent_outputs/f.md")
    );
}

/// A follow-up whose file name is taken gets `-2`, `-3`, ... appended, with
/// no end: on a long-lived tree where an agent always writes
/// `$MAILROOM_OUTBOX/fu.yaml`, the thousandth such follow-up was not queued
/// ("no free name") while its parent completed, with only a warning in its
/// record.
#[test]
fn a_follow_up_name_taken_a_thousand_times_is_still_queued() {
    let root = Root::new().config(&format!(
        "settle: 300ms\nrescan_interval: 1s\ndefault_agent: leaf\nagents:\n  spawner:\n    \
         command: [{:?}]\n    env: {{FOLLOWUPS: fu}}\n  leaf:\n    command: [{:?}]\n",
        agent("followup.sh"),
        agent("ok.sh")
    ));
    root.write("tasks/completed/fu.yaml", "description: done\n");
    for i in 2..=1000 {
        root.write(
            &format!("tasks/completed/fu-{i}.yaml"),
            "description: done\n",
        );
    }
    let root = root.task("p.yaml", "description: x\nagent: spawner\n");
    root.run_until_idle();
    let rec = root.record("completed", "p");
    assert_eq!(rec["followups"], serde_json::json!(["fu-1001"]), "{rec}");
    assert!(root.exists("tasks/completed/fu-1001.yaml"));
}
