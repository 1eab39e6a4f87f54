//! The Prometheus textfile: valid text format, and the numbers add up.

use crate::common::*;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Parses the Prometheus text exposition format strictly enough to catch a
/// malformed line: `# HELP`/`# TYPE` comments, then `name{labels} value`.
pub(crate) fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let (kind, name) = (w.next().unwrap(), w.next().unwrap_or(""));
            assert!(kind == "HELP" || kind == "TYPE", "bad comment: {line}");
            assert!(name_ok(name), "bad metric name in: {line}");
            if kind == "TYPE" {
                let t = w.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
                assert!(typed.insert(name.to_owned()), "TYPE given twice: {line}");
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad name: {line}");
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
            let inner = inner.unwrap_or_else(|| panic!("bad labels: {line}"));
            for pair in inner.split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(name_ok(k), "bad label name: {line}");
                assert!(
                    !v.trim_end_matches('"').contains('"') || v.contains("\\\""),
                    "{line}"
                );
            }
        }
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            typed.contains(base) || typed.contains(name),
            "sample before its TYPE: {line}"
        );
        out.insert(series.to_owned(), v);
    }
    out
}

#[test]
fn the_metrics_file_is_valid_and_counts_the_runs() {
    let ok = agent("ok.sh");
    let fail = agent("fail.sh");
    let root = Root::new()
        .config(&format!(
            "retries: 0\nmetrics_file: metrics.prom\nagents:\n  good:\n    command: [{ok:?}]\n  bad:\n    command: [{fail:?}]\ndefault_agent: good\n"
        ))
        .task("a.yaml", "description: x\n")
        .task("b.yaml", "description: x\n")
        .task("c.yaml", "description: x\nagent: bad\n");
    // Under a unit's `UMask=0077`, the collector must still read the file.
    let mut c = std::process::Command::new("/bin/sh");
    c.args(["-c", "umask 077; exec \"$0\" \"$@\"", BIN, "--root"])
        .arg(&root.path)
        .args(["run", "--exit-when-idle"])
        .env_remove("MAILROOM_ROOT");
    let out = run_bounded(c, std::time::Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.p("metrics.prom"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{mode:o}");
    }
    let text = root.read("metrics.prom");
    let m = parse(&text);
    assert_eq!(
        m["mailroom_runs_total{agent=\"good\",outcome=\"success\"}"], 2.0,
        "{text}"
    );
    assert_eq!(
        m["mailroom_runs_total{agent=\"bad\",outcome=\"exit\"}"], 1.0,
        "{text}"
    );
    assert_eq!(m["mailroom_tasks{state=\"completed\"}"], 2.0);
    assert_eq!(m["mailroom_tasks{state=\"failed\"}"], 1.0);
    assert_eq!(m["mailroom_tasks{state=\"pending\"}"], 0.0);
    assert_eq!(
        m["mailroom_run_duration_seconds_count{agent=\"good\"}"],
        2.0
    );
    assert_eq!(
        m["mailroom_run_duration_seconds_bucket{agent=\"good\",le=\"+Inf\"}"],
        2.0
    );
    assert_eq!(m["mailroom_paused"], 0.0);
}

#[test]
fn tokens_and_cost_the_clis_reported_are_counted_for_every_attempt() {
    let paid = agent("paid.sh");
    let root = Root::new()
        .config(&format!(
            "retries: 1\nretry_delay: 20ms\nmetrics_file: metrics.prom\nagents:\n  paid:\n    command: [{paid:?}]\n    kind: generic\n    output: {{format: json, answer: .result, cost: .cost, input_tokens: .in, output_tokens: .out}}\n    env: {{FAIL_FIRST: \"1\"}}\n"
        ))
        .task("a.yaml", "description: x\n")
        .task("b.yaml", "description: y\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["a", "b"]);
    let text = root.read("metrics.prom");
    let m = parse(&text);
    // Two tasks, each failed once then succeeded: four runs of 0.6 USD,
    // 1000 input and 10 output tokens.
    assert_eq!(
        m["mailroom_tokens_total{agent=\"paid\",kind=\"input\"}"], 4000.0,
        "{text}"
    );
    assert_eq!(
        m["mailroom_tokens_total{agent=\"paid\",kind=\"output\"}"], 40.0,
        "{text}"
    );
    assert_eq!(
        m["mailroom_tokens_total{agent=\"paid\",kind=\"cache_read\"}"], 0.0,
        "{text}"
    );
    let cost = m["mailroom_cost_usd_total{agent=\"paid\"}"];
    assert!((cost - 2.4).abs() < 1e-9, "{text}");
}

/// `mailroom_runs_total` counts tasks by their last run; the attempts that
/// were retried or put back on a usage limit are in `mailroom_attempts_total`,
/// by their own outcome, so that flaky agents and limits can be alerted on.
#[test]
fn attempts_retried_or_requeued_on_a_limit_are_counted() {
    let flaky = "if [ \"$MAILROOM_ATTEMPT\" = 1 ]; then exit 3; fi; echo fine";
    let root = Root::new()
        .config(&format!(
            "retries: 1\nretry_delay: 20ms\nmetrics_file: metrics.prom\nagents:\n  flaky:\n    command: [/bin/sh, -c, {flaky:?}]\n  claude:\n    command: [{:?}]\n    kind: claude\n    fallback: [backup]\n    env:\n      LIMIT_MSG: \"Claude AI usage limit reached|{}\"\n      LIMIT_EXIT: \"1\"\n  backup:\n    command: [{:?}]\n",
            agent("limited.sh"),
            (SystemTime::now() + Duration::from_secs(7200))
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            agent("ok.sh")
        ))
        .task("a.yaml", "description: x\nagent: flaky\n")
        .task("b.yaml", "description: y\nagent: flaky\n")
        .task("c.yaml", "description: z\nagent: claude\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), vec!["a", "b", "c"]);
    let text = root.read("metrics.prom");
    let m = parse(&text);
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get("mailroom_runs_total{agent=\"flaky\",outcome=\"success\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        get("mailroom_runs_total{agent=\"flaky\",outcome=\"exit\"}"),
        0.0,
        "{text}"
    );
    assert_eq!(
        get("mailroom_attempts_total{agent=\"flaky\",outcome=\"exit\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        get("mailroom_attempts_total{agent=\"flaky\",outcome=\"success\"}"),
        2.0,
        "{text}"
    );
    // The limited attempt, then the fallback's run that completed the task.
    assert_eq!(
        get("mailroom_attempts_total{agent=\"claude\",outcome=\"limited\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        get("mailroom_attempts_total{agent=\"backup\",outcome=\"success\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        get("mailroom_runs_total{agent=\"backup\",outcome=\"success\"}"),
        1.0,
        "{text}"
    );
}

#[test]
fn the_metrics_file_is_written_when_an_idle_supervisor_starts() {
    // An empty tree: nothing changes after the start, and a collector still
    // sees the queue (and an empty file a host crash left is replaced).
    let root = Root::new().config("metrics_file: metrics.prom\n");
    root.write("metrics.prom", "");
    let _sup = root.spawn();
    wait_for(
        std::time::Duration::from_secs(60),
        "the metrics file",
        || std::fs::read_to_string(root.p("metrics.prom")).is_ok_and(|t| !t.is_empty()),
    );
    let m = parse(&root.read("metrics.prom"));
    assert_eq!(
        m.get("mailroom_tasks{state=\"pending\"}"),
        Some(&0.0),
        "{m:?}"
    );
    assert_eq!(m.get("mailroom_paused"), Some(&0.0), "{m:?}");
}

/// The oldest pending age is how long a task has waited for a slot: a task
/// its own `delay` still holds is not waiting, and one whose `not_before`
/// has passed waits from then, not from its submission (an alert on this
/// gauge fired for a task meant for tomorrow).
#[test]
fn the_oldest_pending_age_leaves_out_held_tasks_and_counts_from_their_release() {
    use std::time::{Duration, SystemTime};
    let nb = humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(3600));
    let root = Root::new()
        .config("metrics_file: metrics.prom\n")
        .task("later.yaml", "description: x\ndelay: 1d\n")
        .task(
            "released.yaml",
            &format!("description: x\nnot_before: {nb}\n"),
        )
        .task("fresh.yaml", "description: x\n");
    for (f, ago) in [("later", 5), ("released", 5), ("fresh", 0)] {
        std::fs::File::options()
            .write(true)
            .open(root.p(&format!("tasks/pending/{f}.yaml")))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(ago * 3600 + 600))
            .unwrap();
    }
    assert!(root.mailroom(&["pause"]).status.success());
    let _sup = root.spawn();
    wait_for(Duration::from_secs(60), "the metrics file", || {
        std::fs::read_to_string(root.p("metrics.prom"))
            .is_ok_and(|t| parse(&t).get("mailroom_tasks{state=\"pending\"}") == Some(&3.0))
    });
    let m = parse(&root.read("metrics.prom"));
    let age = m["mailroom_oldest_pending_age_seconds"];
    // `released` has waited an hour (since its not_before), not 5h10m.
    assert!((3590.0..3700.0).contains(&age), "{age}: {m:?}");
}

/// The oldest pending age keeps up while nothing else changes: the file is
/// rewritten at each heartbeat while a task waits (it stood still at its
/// last change).
#[test]
fn the_oldest_pending_age_grows_in_the_file_while_nothing_changes() {
    use std::time::Duration;
    let root = Root::new()
        .config("metrics_file: metrics.prom\n")
        .task("waits.yaml", "description: x\n");
    assert!(root.mailroom(&["pause"]).status.success());
    let _sup = root.spawn();
    let age = || {
        std::fs::read_to_string(root.p("metrics.prom"))
            .ok()
            .and_then(|t| {
                parse(&t)
                    .get("mailroom_oldest_pending_age_seconds")
                    .copied()
            })
    };
    wait_for(Duration::from_secs(60), "the metrics file", || {
        age().is_some()
    });
    let first = age().unwrap();
    wait_for(
        Duration::from_secs(60),
        "the age to grow in the file",
        || age().is_some_and(|a| a >= first + 3.0),
    );
}
