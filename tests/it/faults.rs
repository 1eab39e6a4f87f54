//! Fault injection at every durable step: the supervisor aborts (as if
//! killed) at the N-th write, fsync or rename of a transition, for every N in
//! turn; a second supervisor then recovers, and the protocol's invariants
//! must hold. A failure names the step that broke them.

use crate::common::*;
use std::time::Duration;

fn invariants(root: &Root, n: usize, step: u64) {
    let ctx = |what: &str| format!("crash at step {step}: {what}");
    let mut seen = std::collections::BTreeSet::new();
    for st in ["pending", "assigned", "completed", "failed"] {
        for name in root.names(st) {
            assert!(
                seen.insert(name.clone()),
                "{}",
                ctx(&format!("{name} in two states"))
            );
            assert_eq!(st, "completed", "{}", ctx(&format!("{name} ended in {st}")));
            let rec = root.record(st, &name);
            assert!(
                rec["attempts"].as_u64().unwrap() >= 1,
                "{}",
                ctx("attempts")
            );
            assert_eq!(rec["status"], "completed", "{}", ctx("record"));
        }
    }
    assert_eq!(seen.len(), n, "{}", ctx("a task was lost"));
    assert!(
        root.entries("tasks/assigned").is_empty(),
        "{}",
        ctx(&format!(
            "left in assigned/: {:?}",
            root.entries("tasks/assigned")
        ))
    );
    let tmp = root.temp_files();
    assert!(
        tmp.is_empty(),
        "{}",
        ctx(&format!("temp files left: {tmp:?}"))
    );
    let log = root.read("context/completed_tasks.jsonl");
    assert_eq!(
        log.lines().count(),
        n,
        "{}",
        ctx(&format!("log lines:\n{log}"))
    );
    for l in log.lines() {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("{}", ctx(&e.to_string())));
    }
}

/// Every task's on_complete fired at most once, and every task the aborted
/// supervisor had not filed (finished by the second one, by recovery or by
/// a run) fired it. A task filed just before the abort may have lost its
/// hook with its supervisor (at most once, never twice).
fn hooks_fired(root: &Root, filed_first: &[String], step: u64) {
    let fired = || -> Vec<String> {
        std::fs::read_to_string(root.p("hooks.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('|').next().unwrap_or_default().to_owned())
            .collect()
    };
    let second: Vec<String> = root
        .names("completed")
        .into_iter()
        .filter(|n| !filed_first.contains(n))
        .collect();
    // The second supervisor waited for its hooks before it exited.
    let got = fired();
    for name in &second {
        assert!(
            got.contains(name),
            "crash at step {step}: {name} was filed by the second supervisor and its on_complete did not fire: {got:?}"
        );
    }
    let mut names = got.clone();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        got.len(),
        "crash at step {step}: a hook fired twice: {got:?}"
    );
}

#[test]
fn an_abort_at_any_durable_step_is_recovered() {
    let n = 3;
    let mut step = 1u64;
    loop {
        // on_complete notes each task: recovery fires it for a task it files,
        // and nothing fires it twice.
        let root = Root::new();
        let hooks = root.p("hooks.log").display().to_string();
        let mut root = root.agent_config(
            &[&agent("ok.sh")],
            &format!(
                "concurrency: 1\nhooks:\n  on_complete: [{:?}, {hooks:?}, \"{{name}}\"]",
                agent("hook.sh")
            ),
        );
        for i in 0..n {
            root = root.task(&format!("t{i}.yaml"), &format!("description: task {i}\n"));
        }
        let mut c = root.cmd(&["run", "--exit-when-idle"]);
        c.env("MAILROOM_TEST_CRASH_AT", step.to_string());
        let first = run_bounded(c, Duration::from_secs(60));
        let crashed = !first.status.success();
        if crashed {
            assert!(
                stderr(&first).contains(&format!("MAILROOM_TEST_CRASH_AT={step}")),
                "step {step}: failed without the injected crash: {}",
                stderr(&first)
            );
        }
        let filed_first = root.names("completed");
        // Recovery by a fresh supervisor.
        root.run_until_idle();
        invariants(&root, n, step);
        hooks_fired(&root, &filed_first, step);
        if !crashed {
            // Past the last durable step of the whole run: every point was hit.
            assert!(step > 20, "suspiciously few durable steps: {step}");
            eprintln!(
                "recovered from an abort at each of {} durable steps",
                step - 1
            );
            break;
        }
        step += 1;
        assert!(step < 400, "the run never got past its crash points");
    }
}
