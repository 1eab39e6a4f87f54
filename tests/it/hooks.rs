//! Hooks (issue 12, item 7): `on_complete`, `on_fail` and `on_limit` run the
//! operator's argv with placeholders and MAILROOM_* environment, off the loop,
//! with a timeout, and never change what happens to a task.

use crate::common::*;
use std::time::{Duration, Instant};

const MIN: Duration = Duration::from_secs(60);

fn hook_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn all_logs(root: &Root) -> String {
    root.entries(".")
        .iter()
        .filter(|e| e.ends_with(".log") && (e.starts_with("run-") || e.starts_with("sup-")))
        .map(|e| root.read(e))
        .collect()
}

/// A config whose agents `ok` and `bad` succeed and fail, with `hooks`.
fn hooked(hooks: &str) -> Root {
    Root::new().config(&format!(
        "retries: 0\nsettle: 300ms\nhook_timeout: 2s\nhooks:\n{hooks}\nagents:\n  ok:\n    command: [{:?}]\n  bad:\n    command: [{:?}]\n",
        agent("ok.sh"),
        agent("fail.sh"),
    ))
}

#[test]
fn on_complete_and_on_fail_get_placeholders_and_environment() {
    let root = Root::new();
    let log = root.p("hooks.log");
    let l = log.display().to_string();
    let root = hooked(
        &format!(
            "  on_complete: [{h:?}, {l:?}, \"{{name}} {{state}}\", \"{{outcome}}\", \"{{agent}}\", \"{{output}}\"]\n  on_fail: [{h:?}, {l:?}, \"failed:{{name}}\", \"{{record}}\"]",
            h = agent("hook.sh")
        ),
    )
    .task("good.yaml", "description: x\nagent: ok\n")
    .task("broken.yaml", "description: x\nagent: bad\n")
    .task("typo.yaml", "description: x\npriorty: high\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["good"]);
    assert_eq!(root.names("failed"), ["broken", "typo"]);
    let mut lines = hook_lines(&log);
    lines.sort();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let rp = |s: &str, n: &str| {
        root.p(&format!("tasks/{s}/{n}.result.json"))
            .display()
            .to_string()
    };
    assert_eq!(
        lines[0],
        format!(
            "failed:broken {}|env:on_fail,broken,failed,exit,bad,{},|stdin:",
            rp("failed", "broken"),
            rp("failed", "broken")
        )
    );
    // A file that never ran fails too; it has no agent.
    assert_eq!(
        lines[1],
        format!(
            "failed:typo {}|env:on_fail,typo,failed,invalid,,{},|stdin:",
            rp("failed", "typo"),
            rp("failed", "typo")
        )
    );
    let out = root
        .p("context/agent_outputs/good.md")
        .display()
        .to_string();
    assert_eq!(
        lines[2],
        format!(
            "good completed success ok {out}|env:on_complete,good,completed,success,ok,{},|stdin:",
            rp("completed", "good")
        )
    );
    assert!(all_logs(&root).contains("hook ran"), "{}", all_logs(&root));
    // With its exit status, as the README says.
    assert!(
        all_logs(&root).contains("status=exit status: 0"),
        "{}",
        all_logs(&root)
    );
}

#[test]
fn a_hook_that_hangs_is_killed_at_its_timeout_and_does_not_hold_up_the_queue() {
    let root = Root::new();
    let log = root.p("hooks.log");
    let root = Root::new()
        .config(&format!(
            "retries: 0\nhook_timeout: 3s\nhooks:\n  on_complete: [{:?}, {:?}]\nagents:\n  ok:\n    command: [{:?}]\n",
            agent("hook.sh"),
            log.display().to_string(),
            agent("ok.sh"),
        ))
        .task("first.yaml", "description: x\n")
        .task("second.yaml", "description: x\nafter: [first]\n");
    let started = Instant::now();
    let mut sup = root.spawn_with(&[("HOOK_MODE", "hang")]);
    // The second task runs and completes while the first one's hook hangs.
    wait_for(MIN, "both tasks to complete", || {
        root.names("completed") == ["first", "second"]
    });
    assert!(
        !all_logs(&root).contains("hook timed out"),
        "the second task waited for the first one's hook"
    );
    let pid_file = format!("{}.pid", log.display());
    wait_for(MIN, "the hook's pid", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.split_whitespace().count() == 2)
    });
    let pids: Vec<i32> = std::fs::read_to_string(&pid_file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // Both hooks hang; each is killed with its grandchild at 3 s.
    wait_for(MIN, "the hooks to be killed", || {
        hook_lines(&log).len() == 2 && pids.iter().all(|p| !alive(*p))
    });
    let logs = {
        sup.signal(SIGTERM);
        sup.wait_exit(MIN);
        all_logs(&root)
    };
    assert!(logs.contains("hook timed out and was killed"), "{logs}");
    assert!(started.elapsed() < MIN);
    assert_eq!(root.names("completed"), ["first", "second"]);
}

/// A burst of filings (a queue that fails at once) does not start a hook
/// process per task at once: each holds descriptors until it ends, and
/// hundreds of them left the supervisor unable to open a lock file. At most
/// 16 run; the others wait their turn, and every one runs.
#[test]
fn a_burst_of_hooks_runs_at_most_sixteen_at_once_and_all_of_them() {
    let mut root = Root::new().config(
        "retries: 0\nsettle: 300ms\nhook_timeout: 2m\nhooks:\n  on_fail: [sh, gate.sh]\n\
         agents:\n  ok:\n    command: [\"true\"]\n",
    );
    // Each hook notes itself as running, waits for `release`, then is done.
    root.write(
        "gate.sh",
        "touch \"running/$MAILROOM_TASK\"\nls running | wc -l >> counts\n\
         while [ ! -e release ]; do sleep 0.05; done\n\
         rm \"running/$MAILROOM_TASK\"\ntouch \"done/$MAILROOM_TASK\"\n",
    );
    for d in ["running", "done"] {
        std::fs::create_dir_all(root.p(d)).unwrap();
    }
    for i in 0..40 {
        // An agent no config defines: filed in failed/ at once.
        root = root.task(&format!("t{i:02}.yaml"), "description: x\nagent: nosuch\n");
    }
    let mut sup = root.spawn();
    wait_for(MIN, "the tasks filed and the hooks started", || {
        let running = root.entries("running").len();
        root.names("failed").len() == 40
            && (running == 40 || (running == 16 && all_logs(&root).contains("waits its turn")))
    });
    assert_eq!(root.entries("running").len(), 16, "hooks at once");
    std::fs::write(root.p("release"), "").unwrap();
    wait_for(MIN, "every hook to run", || {
        root.entries("done").len() == 40
    });
    let most = root
        .read("counts")
        .lines()
        .map(|l| l.trim().parse::<usize>().unwrap())
        .max();
    assert!(most.is_some_and(|m| m <= 16), "{most:?}");
    sup.signal(SIGTERM);
    sup.wait_exit(MIN);
}

#[test]
fn a_hook_killed_at_its_timeout_keeps_what_it_printed_in_the_log() {
    // hook_timeout: 2s; the hook prints on both streams, then hangs.
    let root = hooked(
        "  on_complete: [sh, -c, \"echo said-before-the-kill; echo warned-before-the-kill >&2; exec sleep 600\"]",
    )
    .task("t.yaml", "description: x\nagent: ok\n");
    // The supervisor waits for its hook at exit: the kill is in this log.
    let logs = stderr(&root.run_until_idle());
    let killed = logs
        .find("hook timed out and was killed")
        .unwrap_or_else(|| panic!("no kill logged: {logs}"));
    for (stream, text) in [
        ("stdout", "said-before-the-kill"),
        ("stderr", "warned-before-the-kill"),
    ] {
        let at = logs
            .lines()
            .find(|l| l.contains("hook output") && l.contains(text))
            .and_then(|l| logs.find(l))
            .unwrap_or_else(|| panic!("{stream} of the killed hook is not in the log: {logs}"));
        assert!(at < killed, "{stream} logged after the kill: {logs}");
    }
}

#[test]
fn a_failing_or_missing_hook_changes_nothing_and_is_logged() {
    let root = Root::new();
    let log = root.p("hooks.log");
    let root = Root::new()
        .config(&format!(
            "retries: 0\nhooks:\n  on_complete: [{:?}, {:?}]\n  on_fail: [\"/nonexistent/hook\"]\nagents:\n  ok:\n    command: [{:?}]\n  bad:\n    command: [{:?}]\n",
            agent("hook.sh"),
            log.display().to_string(),
            agent("ok.sh"),
            agent("fail.sh"),
        ))
        .task("good.yaml", "description: x\nagent: ok\n")
        .task("broken.yaml", "description: x\nagent: bad\n");
    let out = run_bounded(
        {
            let mut c = root.cmd(&["run", "--exit-when-idle"]);
            c.env("HOOK_MODE", "fail");
            c
        },
        MIN,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let logs = stderr(&out);
    assert_eq!(root.names("completed"), ["good"]);
    assert_eq!(root.names("failed"), ["broken"]);
    assert_eq!(root.record("completed", "good")["outcome"], "success");
    assert!(
        logs.contains("hook failed (the task is not affected)"),
        "{logs}"
    );
    assert!(logs.contains("hook broke on purpose"), "{logs}");
    assert!(logs.contains("hook could not be started"), "{logs}");
    assert_eq!(hook_lines(&log).len(), 1);
}

#[test]
fn on_limit_fires_when_an_agent_cools_down() {
    let root = Root::new();
    let log = root.p("hooks.log");
    // Claude Code's JSON result for a usage limit, with its reset time.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 7200;
    let msg = serde_json::json!({
        "type": "result", "subtype": "success", "is_error": true,
        "api_error_status": 429, "result": format!("Claude AI usage limit reached|{secs}"),
        "session_id": "s-1", "total_cost_usd": 0, "usage": {"input_tokens": 0, "output_tokens": 0}
    })
    .to_string();
    let root = Root::new()
        .config(&format!(
            "retries: 0\nhooks:\n  on_limit: [{:?}, {:?}, \"{{agent}} until {{until}}\"]\nagents:\n  lim:\n    command: [{:?}]\n    kind: claude\n    fallback: [ok]\n    env:\n      LIMIT_MSG: {msg:?}\n  ok:\n    command: [{:?}]\n",
            agent("hook.sh"),
            log.display().to_string(),
            agent("limited.sh"),
            agent("ok.sh"),
        ))
        .task("job.yaml", "description: x\nagent: lim\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["job"]);
    let lines = hook_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("lim until 20"), "{lines:?}");
    assert!(
        lines[0].contains("|env:on_limit,job,pending,limited,lim,,20"),
        "{lines:?}"
    );
}

#[test]
fn a_task_that_recovery_files_fires_its_hook_from_the_recovering_supervisor() {
    // Attempt 1 hangs and its supervisor is killed. With no retries left,
    // the next supervisor's recovery files the task in failed/: the task
    // ended there, so on_fail fires there (the killed one fired nothing).
    let root = Root::new();
    let log = root.p("hooks.log");
    let script =
        r#"echo "$$" > "$MAILROOM_ROOT/agent.pid"; trap 'exit 143' TERM; sleep 600 & wait"#;
    let root = root
        .config(&format!(
            "retries: 0\nrun_keeper: false\nhooks:\n  on_fail: [{h:?}, {l:?}, \"failed:{{name}} {{outcome}}\"]\nagents:\n  hang:\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n",
            h = agent("hook.sh"),
            l = log.display().to_string(),
        ))
        .task("orphan.yaml", "description: outlives its supervisor\n");
    let mut sup = root.spawn();
    wait_for(MIN, "the agent to start", || {
        std::fs::read_to_string(root.p("agent.pid")).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    });
    sup.kill9();
    assert!(hook_lines(&log).is_empty(), "{:?}", hook_lines(&log));
    let _sup = root.spawn();
    wait_for(MIN, "recovery to fail the orphan and fire on_fail", || {
        root.names("failed") == ["orphan"] && !hook_lines(&log).is_empty()
    });
    let lines = hook_lines(&log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let rec = root
        .p("tasks/failed/orphan.result.json")
        .display()
        .to_string();
    assert_eq!(
        lines[0],
        format!(
            "failed:orphan interrupted|env:on_fail,orphan,failed,interrupted,hang,{rec},|stdin:"
        ),
        "{}",
        all_logs(&root)
    );
}
