//! Scheduling and routing through the real binary: order, ageing, dependencies,
//! capacity, routing rules, fallbacks and usage-limit cooldowns.

use crate::common::*;
use std::time::{Duration, SystemTime};

/// Sets a task file's modification time: its submission time (a test clock).
fn submitted(root: &Root, file: &str, ago: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(root.p(&format!("tasks/pending/{file}")))
        .unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

fn order(log: &str) -> Vec<String> {
    log.lines()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect()
}

fn one_agent(root: Root, runlog: &std::path::Path, extra: &str) -> Root {
    root.config(&format!(
        "concurrency: 1\nretry_delay: 10ms\nsettle: 200ms\n{extra}\nagents:\n  a:\n    command: [{:?}]\n    env:\n      RUNLOG: {:?}\n",
        agent("ok.sh"),
        runlog.display().to_string()
    ))
}

#[test]
fn priority_then_fifo_under_concurrency_one() {
    let root = Root::new();
    let log = root.p("runs.log");
    let root = one_agent(root, &log, "")
        .task("n-old.yaml", "description: n\n")
        .task("n-new.yaml", "description: n\n")
        .task("h.yaml", "description: h\npriority: high\n")
        .task("l.yaml", "description: l\npriority: 2\n");
    submitted(&root, "n-old.yaml", Duration::from_secs(60));
    submitted(&root, "n-new.yaml", Duration::from_secs(30));
    submitted(&root, "h.yaml", Duration::from_secs(10));
    submitted(&root, "l.yaml", Duration::from_secs(90));
    root.run_until_idle();
    assert_eq!(
        order(&std::fs::read_to_string(&log).unwrap()),
        ["h", "n-old", "n-new", "l"]
    );
}

#[test]
fn a_low_task_ages_past_newer_normal_work() {
    let root = Root::new();
    let log = root.p("runs.log");
    let root = one_agent(root, &log, "aging: 30m")
        .task("old-low.yaml", "description: l\npriority: low\n")
        .task("fresh-normal.yaml", "description: n\n")
        .task("fresh-high.yaml", "description: h\npriority: high\n");
    // Waited 61 minutes: two ageing periods, so it now ranks as high.
    submitted(&root, "old-low.yaml", Duration::from_secs(61 * 60));
    root.run_until_idle();
    assert_eq!(
        order(&std::fs::read_to_string(&log).unwrap()),
        ["old-low", "fresh-high", "fresh-normal"]
    );
}

#[test]
fn dependencies_order_fail_and_detect_cycles() {
    let root = Root::new();
    let log = root.p("runs.log");
    let root = root.config(&format!(
        "concurrency: 4\nretries: 0\nsettle: 200ms\ndefault_agent: a\nagents:\n  a:\n    command: [{:?}]\n    env:\n      RUNLOG: {:?}\n  bad:\n    command: [{:?}]\n",
        agent("ok.sh"),
        log.display().to_string(),
        agent("fail.sh")
    ));
    let root = root
        .task("second.yaml", "description: s\nafter: [first]\n")
        .task("first.yaml", "description: f\n")
        .task(
            "third.yaml",
            "description: t\ndependencies: [second, first]\n",
        )
        .task("broken.yaml", "description: b\nagent: bad\n")
        .task("after-broken.yaml", "description: a\nafter: [broken]\n")
        .task("x.yaml", "description: x\nafter: [y]\n")
        .task("y.yaml", "description: y\nafter: [x]\n")
        .task("orphan.yaml", "description: o\nafter: [never-submitted]\n");
    // The dependants are older: FIFO alone would run them first.
    submitted(&root, "second.yaml", Duration::from_secs(100));
    submitted(&root, "third.yaml", Duration::from_secs(100));
    let show = root.mailroom(&["show", "orphan"]);
    assert!(
        stdout(&show).contains("waiting for never-submitted (not submitted)"),
        "{}",
        stdout(&show)
    );
    root.run_until_idle();
    let runs = order(&std::fs::read_to_string(&log).unwrap());
    let pos = |t: &str| runs.iter().position(|r| r == t).unwrap();
    assert!(
        pos("first") < pos("second") && pos("second") < pos("third"),
        "{runs:?}"
    );
    let rec = root.record("failed", "after-broken");
    assert_eq!(rec["error"], "dependency broken failed");
    for t in ["x", "y"] {
        let e = root.record("failed", t)["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(e.starts_with("dependency cycle: "), "{e}");
    }
    // Waiting for something nobody submitted is not an error: it stays pending.
    assert_eq!(root.names("pending"), ["orphan"]);
}

#[test]
fn capacity_limits_are_never_exceeded() {
    let root = Root::new();
    let log = root.p("spans.log");
    let mut root = root.config(&format!(
        "concurrency: 3\nagents:\n  a:\n    command: [{sp:?}]\n    max_instances: 2\n    env: {{RUNLOG: {l:?}, SPAN_MS: \"150\"}}\n  b:\n    command: [{sp:?}]\n    max_instances: 2\n    env: {{RUNLOG: {l:?}, SPAN_MS: \"150\"}}\n",
        sp = agent("span.sh"),
        l = log.display().to_string()
    ));
    for i in 0..6 {
        root = root.task(&format!("a{i}.yaml"), "description: x\nagent: a\n");
        root = root.task(&format!("b{i}.yaml"), "description: x\nagent: b\n");
    }
    root.run_until_idle();
    assert_eq!(root.names("completed").len(), 12);
    // From the agents' own start/end times: the most running at once.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut ev: Vec<(u128, i32, char)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let d = if f[0] == "S" { 1 } else { -1 };
            (f[3].parse().unwrap(), d, f[1].chars().next().unwrap())
        })
        .collect();
    ev.sort_by_key(|e| (e.0, e.1));
    let (mut all, mut a, mut b, mut max_all, mut max_a, mut max_b) = (0, 0, 0, 0, 0, 0);
    for (_, d, agent) in ev {
        all += d;
        if agent == 'a' {
            a += d
        } else {
            b += d
        }
        max_all = max_all.max(all);
        max_a = max_a.max(a);
        max_b = max_b.max(b);
    }
    assert!(
        max_all <= 3 && max_a <= 2 && max_b <= 2,
        "{max_all} {max_a} {max_b}"
    );
    assert_eq!(max_all, 3, "the limits were never even reached");
}

fn record_agent(root: &Root, t: &str) -> (String, String) {
    let r = root.record("completed", t);
    (
        r["agent"].as_str().unwrap().to_owned(),
        r["agent_reason"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn routing_by_label_size_and_capability_with_reasons() {
    let ok = agent("ok.sh");
    let root = Root::new()
        .config(&format!(
            "default_agent: light\nrouting:\n  - label: heavy\n    agent: strong\n  - min_chars: 100\n    agent: strong\n\
             agents:\n  light:\n    command: [{ok:?}]\n  strong:\n    command: [{ok:?}]\n  web:\n    command: [{ok:?}]\n    capabilities: [browser]\n"
        ))
        .task("plain.yaml", "description: small\n")
        .task("labelled.yaml", "description: small\nlabels: [heavy]\n")
        .task("big.yaml", &format!("description: {}\n", "z".repeat(150)))
        .task("explicit.yaml", "description: x\nagent: light\nlabels: [heavy]\n")
        .task("needs.yaml", "description: x\nrequires: [browser]\n");
    root.run_until_idle();
    assert_eq!(
        record_agent(&root, "plain"),
        ("light".into(), "default_agent".into())
    );
    let (a, why) = record_agent(&root, "labelled");
    assert_eq!(a, "strong");
    assert!(why.starts_with("routing rule 1 (label heavy)"), "{why}");
    let (a, why) = record_agent(&root, "big");
    assert_eq!(a, "strong");
    assert!(why.contains("over 100 characters"), "{why}");
    let (a, why) = record_agent(&root, "explicit");
    assert_eq!(a, "light");
    assert!(why.contains("explicit"), "{why}");
    let (a, why) = record_agent(&root, "needs");
    assert_eq!(a, "web");
    assert!(why.contains("requires [browser]"), "{why}");
}

#[test]
fn fallback_chain_after_a_missing_command_and_after_failures() {
    let ok = agent("ok.sh");
    let fail = agent("fail.sh");
    let root = Root::new()
        .config(&format!(
            "retries: 3\nretry_delay: 10ms\nagents:\n  gone:\n    command: [\"no-such-agent-cmd\"]\n    fallback: [flaky]\n\
             \n  flaky:\n    command: [{fail:?}]\n    fallback: [solid]\n    fallback_after: 2\n  solid:\n    command: [{ok:?}]\n"
        ))
        .task("t.yaml", "description: x\nagent: gone\n");
    root.run_until_idle();
    let rec = root.record("completed", "t");
    assert_eq!(rec["agent"], "solid");
    let tried: Vec<&str> = rec["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(tried, ["gone", "flaky", "flaky", "solid"]);
    assert_eq!(rec["history"][0]["outcome"], "spawn");
}

/// A limited agent (`kind`) that prints `out` on stdout the way its CLI does
/// and exits with `exit`, with an agent that always succeeds as its fallback.
fn cooldown_case(
    kind: &str,
    out: &str,
    exit: &str,
) -> (Root, serde_json::Value, serde_json::Value) {
    let root = Root::new();
    let log = root.p("runs.log");
    let root = root
        .config(&format!(
            "retries: 0\nagents:\n  {kind}:\n    command: [{:?}]\n    kind: {kind}\n    fallback: [backup]\n    env:\n      LIMIT_MSG: {out:?}\n      LIMIT_EXIT: {exit:?}\n      RUNLOG: {:?}\n  backup:\n    command: [{:?}]\n",
            agent("limited.sh"),
            log.display().to_string(),
            agent("ok.sh")
        ))
        .task("job.yaml", &format!("description: x\nagent: {kind}\n"));
    root.run_until_idle();
    let rec = root.record("completed", "job");
    let cd: serde_json::Value =
        serde_json::from_str(&root.read(&format!("tasks/cooldowns/{kind}.json"))).unwrap();
    (root, rec, cd)
}

/// Claude Code's `--output-format json` result for an API error.
fn claude_error(result: &str, status: u16) -> String {
    serde_json::json!({
        "type": "result", "subtype": "success", "is_error": true,
        "api_error_status": status, "result": result, "session_id": "s-1",
        "total_cost_usd": 0, "usage": {"input_tokens": 0, "output_tokens": 0}
    })
    .to_string()
}

/// A tree whose one agent, `claude` (kind claude), prints `out` on stdout as
/// the CLI does and exits with `exit`; `top` is config above `agents:`.
fn claude_root(top: &str, out: &str, exit: &str) -> Root {
    Root::new().config(&format!(
        "{top}agents:\n  claude:\n    command: [{:?}]\n    kind: claude\n    env:\n      LIMIT_MSG: {out:?}\n      LIMIT_EXIT: {exit:?}\n",
        agent("limited.sh"),
    ))
}

fn until(cd: &serde_json::Value) -> SystemTime {
    humantime::parse_rfc3339_weak(cd["until"].as_str().unwrap()).unwrap()
}

#[test]
fn cooldown_from_a_unix_timestamp_without_using_an_attempt() {
    let ts = SystemTime::now() + Duration::from_secs(7200);
    let secs = ts.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let out = claude_error(&format!("Claude AI usage limit reached|{secs}"), 429);
    let (root, rec, cd) = cooldown_case("claude", &out, "1");
    assert_eq!(
        until(&cd),
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    );
    // retries: 0, yet the task completed: the limited attempt was not charged.
    assert_eq!(rec["agent"], "backup");
    assert_eq!(rec["history"][0]["outcome"], "limited");
    assert_eq!(rec["history"][0]["error_class"], "limit");
    // Kept on disk, so a restarted supervisor still honours it; status shows it.
    let s = root.mailroom(&["status"]);
    assert!(
        stdout(&s).contains("claude cooling down until"),
        "{}",
        stdout(&s)
    );
}

/// A timestamp years ahead is not believed, however the CLI gave it (the
/// 7 days of a reset in text hold for one in a structured error too): the
/// agent cools down for its `cooldown` (15 min by default), not until 2033.
#[test]
fn a_unix_timestamp_years_ahead_is_not_believed() {
    let out = claude_error("Claude AI usage limit reached|1999999999", 429);
    let (_root, _rec, cd) = cooldown_case("claude", &out, "1");
    let ahead = until(&cd).duration_since(SystemTime::now()).unwrap();
    assert!(ahead <= Duration::from_secs(15 * 60), "{cd}");
}

#[test]
fn a_limited_task_never_runs_again_on_the_cooling_agent() {
    // The requeued file and the job's end reach the loop as two events, in either
    // order: the cooldown must hold before the file is seen again (12 of 12 trials).
    let out = claude_error("You've hit your limit · resets 1pm (Europe/Lisbon)", 429);
    for trial in 0..12 {
        let (root, rec, _cd) = cooldown_case("claude", &out, "1");
        let runs = root.read("runs.log");
        assert_eq!(runs.lines().count(), 1, "trial {trial}: {runs}\n{rec}");
        let tried: Vec<&str> = rec["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agent"].as_str().unwrap())
            .collect();
        assert_eq!(tried, ["claude", "backup"], "trial {trial}: {rec}");
    }
}

#[test]
fn cooldown_from_a_local_reset_time_with_exit_zero() {
    let out = claude_error("You've hit your limit · resets 1pm (Europe/Lisbon)", 429);
    let (_root, rec, cd) = cooldown_case("claude", &out, "0");
    let u = until(&cd);
    let now = SystemTime::now();
    assert!(
        u > now && u <= now + Duration::from_secs(24 * 3600 + 60),
        "{cd}"
    );
    assert_eq!(rec["history"][0]["outcome"], "limited");
    assert_eq!(rec["status"], "completed");
}

#[test]
fn cooldown_from_codex_resets_in_seconds() {
    let err = r#"{\"status\":429,\"error\":{\"type\":\"usage_limit_reached\",\"resets_in_seconds\":3600}}"#;
    let out = format!(
        "{{\"type\":\"thread.started\",\"thread_id\":\"t-1\"}}\n{{\"type\":\"turn.started\"}}\n\
         {{\"type\":\"error\",\"message\":\"{err}\"}}\n{{\"type\":\"turn.failed\",\"error\":{{\"message\":\"{err}\"}}}}"
    );
    let (_root, rec, cd) = cooldown_case("codex", &out, "1");
    let d = until(&cd).duration_since(SystemTime::now()).unwrap();
    assert!(
        d > Duration::from_secs(3500) && d <= Duration::from_secs(3600),
        "{d:?}"
    );
    assert_eq!(rec["agent"], "backup");
}

#[test]
fn an_answer_that_talks_about_rate_limits_cools_nothing_down() {
    // A successful claude run whose answer quotes a 429: completed, no cooldown.
    let answer = serde_json::json!({
        "type": "result", "subtype": "success", "is_error": false,
        "result": "The API returned 429 Too Many Requests: rate limit reached. [SUMMARY]explained 429[/SUMMARY]",
        "session_id": "s-2", "total_cost_usd": 0.0123,
        "usage": {"input_tokens": 10, "output_tokens": 20}
    })
    .to_string();
    let root = claude_root("", &answer, "0").task("job.yaml", "description: explain 429\n");
    root.run_until_idle();
    let rec = root.record("completed", "job");
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert!(!root.exists("tasks/cooldowns/claude.json"));
    // The record carries the CLI's usage and session; the context the answer.
    assert_eq!(rec["session_id"], "s-2", "{rec}");
    assert_eq!(rec["usage"]["cost_usd"], 0.0123, "{rec}");
    assert_eq!(rec["usage"]["output_tokens"], 20, "{rec}");
    let ctx = root.read("context/agent_outputs/job.md");
    assert!(ctx.contains("The API returned 429"), "{ctx}");
    assert!(
        !ctx.contains("\"is_error\""),
        "the JSON envelope reached the context:\n{ctx}"
    );
    assert_eq!(rec["summary"], "explained 429", "{rec}");
}

#[test]
fn a_structured_error_with_exit_zero_is_not_a_success() {
    // aider-like: exit 0, but claude's envelope says is_error (an API 500).
    let out = claude_error("API Error: 500 Internal Server Error", 500);
    let root = claude_root("retries: 0\n", &out, "0").task("job.yaml", "description: x\n");
    root.run_until_idle();
    let rec = root.record("failed", "job");
    assert_eq!(rec["outcome"], "agent_error", "{rec}");
    assert_eq!(rec["error_class"], "transient", "{rec}");
}

#[test]
fn a_rejected_key_is_not_retried() {
    let out = claude_error("Invalid API key · Please run /login", 401);
    let root = claude_root("retries: 3\nretry_delay: 10ms\n", &out, "1")
        .task("job.yaml", "description: x\n");
    root.run_until_idle();
    let rec = root.record("failed", "job");
    assert_eq!(rec["outcome"], "misconfigured", "{rec}");
    assert_eq!(rec["attempts"], 1, "{rec}");
    assert_eq!(rec["error_class"], "auth", "{rec}");
}

#[test]
fn the_last_agent_of_a_fallback_chain_is_retried_not_ruled_out() {
    let fail = agent("fail.sh");
    let root = Root::new()
        .config(&format!(
            "retries: 3\nretry_delay: 10ms\nagents:\n  first:\n    command: [{fail:?}]\n    fallback: [last]\n\
             \n  last:\n    command: [{fail:?}]\n"
        ))
        .task("t.yaml", "description: x\nagent: first\n");
    root.run_until_idle();
    let rec = root.record("failed", "t");
    // It failed for what the agents did, after all its attempts.
    assert_eq!(rec["outcome"], "exit", "{rec}");
    assert_eq!(rec["attempts"], 4, "{rec}");
    let tried: Vec<&str> = rec["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent"].as_str().unwrap())
        .collect();
    assert_eq!(tried, ["first", "last", "last", "last"]);
}

#[test]
fn usage_sums_what_the_clis_reported_by_agent_and_day() {
    let answer = serde_json::json!({
        "type": "result", "subtype": "success", "is_error": false, "result": "done",
        "session_id": "s-3", "total_cost_usd": 0.25,
        "usage": {"input_tokens": 100, "output_tokens": 40}
    })
    .to_string();
    let root = Root::new()
        .config(&format!(
            "agents:\n  claude:\n    command: [{:?}]\n    kind: claude\n    env:\n      LIMIT_MSG: {answer:?}\n      LIMIT_EXIT: \"0\"\n  plain:\n    command: [{:?}]\n",
            agent("limited.sh"),
            agent("ok.sh"),
        ))
        .task("u1.yaml", "description: one\nagent: claude\n")
        .task("u2.yaml", "description: two\nagent: claude\n")
        .task("u3.yaml", "description: three\nagent: plain\n");
    root.run_until_idle();
    assert_eq!(root.names("completed"), ["u1", "u2", "u3"]);
    let out = root.mailroom(&["usage", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let row = |k: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("no row {k} in {rows}"))
    };
    assert_eq!(row("claude")["tasks"], 2, "{rows}");
    assert_eq!(row("claude")["input_tokens"], 200, "{rows}");
    assert_eq!(row("claude")["cost_usd"], 0.5, "{rows}");
    // An agent whose CLI reports nothing is counted, with nothing to sum.
    assert_eq!(row("plain")["tasks"], 1, "{rows}");
    assert_eq!(row("plain")["reported"], 0, "{rows}");
    assert_eq!(row("total")["tasks"], 3, "{rows}");
    let text = stdout(&root.mailroom(&["usage", "--by", "day"]));
    assert!(text.contains("0.5000"), "{text}");
    let bad = root.mailroom(&["usage", "--since", "yesterday-ish"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--since"), "{}", stderr(&bad));
}

/// Issue 11 item 5: `max_instances` and `concurrency` hold across the tree.
/// Three supervisors share one tree; each alone would allow 2 runs of `a`
/// (and 3 runs in all), so per-process counting allows 6 (and 9). The
/// agents' own start/end times say how many ran at once.
#[test]
fn max_instances_holds_across_supervisors() {
    let (most, _) = limits_across_supervisors("concurrency: 4", &["a"]);
    assert!(most["a"] <= 2, "{} runs of `a` at once", most["a"]);
}

#[test]
fn concurrency_holds_across_supervisors() {
    let (most, all) = limits_across_supervisors("concurrency: 3", &["a", "b"]);
    assert!(all <= 3, "{all} runs at once across the tree ({most:?})");
}

/// Runs 12 tasks over `agents` (each `max_instances: 2`) with three
/// supervisors on one tree; returns the most runs at once per agent and in all.
fn limits_across_supervisors(
    top: &str,
    agents: &[&str],
) -> (std::collections::BTreeMap<String, i32>, i32) {
    let root = Root::new();
    let log = root.p("spans.log");
    let mut yaml =
        format!("{top}\nretry_delay: 10ms\nrescan_interval: 100ms\nsettle: 50ms\nagents:\n");
    for a in agents {
        yaml += &format!(
            "  {a}:\n    command: [{sp:?}]\n    max_instances: 2\n    env: {{RUNLOG: {l:?}, SPAN_MS: \"300\", LANE: {a}}}\n",
            sp = agent("span.sh"),
            l = log.display().to_string()
        );
    }
    let mut root = root.config(&yaml);
    let n = 12;
    for i in 0..n {
        let a = agents[i % agents.len()];
        root = root.task(
            &format!("{a}{i:02}.yaml"),
            &format!("description: x\nagent: {a}\n"),
        );
    }
    let sups: Vec<Sup> = (0..3).map(|_| root.spawn()).collect();
    wait_for(Duration::from_secs(60), "all tasks to complete", || {
        root.names("completed").len() == n
    });
    drop(sups);
    let text = std::fs::read_to_string(&log).unwrap();
    // (time, +1/-1, agent: the task name's first letter)
    let mut ev: Vec<(u128, i32, String)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let d = if f[0] == "S" { 1 } else { -1 };
            (f[3].parse().unwrap(), d, f[1][..1].to_owned())
        })
        .collect();
    // Ends before starts at the same instant.
    ev.sort();
    let mut open: std::collections::BTreeMap<String, i32> = Default::default();
    let mut most: std::collections::BTreeMap<String, i32> = Default::default();
    let (mut all, mut most_all) = (0, 0);
    for (_, d, a) in &ev {
        let o = open.entry(a.clone()).or_default();
        *o += d;
        let m = most.entry(a.clone()).or_default();
        *m = (*m).max(*o);
        all += d;
        most_all = most_all.max(all);
    }
    assert_eq!(all, 0, "a run never ended:\n{text}");
    let runs = crate::crash::check_no_overlap(&text);
    assert_eq!(runs.len(), n, "{runs:?}");
    assert!(runs.values().all(|r| *r == 1), "re-runs: {runs:?}");
    (most, most_all)
}

#[test]
fn a_prompt_echoed_on_stderr_that_talks_about_rate_limits_cools_nothing_down() {
    // codex echoes the prompt on stderr; a prompt about a 429 is not a limit.
    let script = r#"cat "$MAILROOM_PROMPT_FILE" >&2; echo "ERROR: the build broke" >&2; exit 1"#;
    let root = Root::new()
        .config(&format!(
            "retries: 0\nagents:\n  codex:\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n    kind: codex\n    prompt_template: \"{{description}}\"\n"
        ))
        .task(
            "job.yaml",
            "description: \"Why did we get 429 Too Many Requests: rate limit reached?\"\n",
        );
    root.run_until_idle_within(Duration::from_secs(60));
    let rec = root.record("failed", "job");
    assert_eq!(rec["outcome"], "exit", "{rec}");
    assert!(!root.exists("tasks/cooldowns/codex.json"), "{rec}");
}

/// A generic agent that succeeds but tells on stderr of a 429 it got past
/// (or echoes a prompt about one) hit no limit: the built-in patterns apply
/// to a generic agent's failed runs only. The same words on a failed run
/// are a limit.
#[test]
fn a_generic_agent_that_succeeds_after_a_429_hit_no_limit() {
    let script = r#"echo run >> "$MAILROOM_ROOT/runs.log"
echo "warning: rate limit exceeded (status 429), retried after 2s" >&2
[ "$MAILROOM_TASK" = fails ] && exit 1
echo done"#;
    let root = Root::new()
        .config(&format!(
            "retries: 0\nretry_delay: 10ms\nagents:\n  gen:\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n    cooldown: 1h\n"
        ))
        .task("ok.yaml", "description: succeeds\n");
    root.run_until_idle();
    let rec = root.record("completed", "ok");
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_eq!(rec["attempts"], 1, "{rec}");
    assert_eq!(root.read("runs.log").lines().count(), 1);
    assert!(!root.exists("tasks/cooldowns/gen.json"), "{rec}");
    // On a failure, the same line is a usage limit: the agent cools down.
    let root = root.task("fails.yaml", "description: fails\n");
    let mut sup = root.spawn();
    wait_for(Duration::from_secs(60), "the cooldown", || {
        root.exists("tasks/cooldowns/gen.json")
    });
    sup.kill9();
    let cd = root.read("tasks/cooldowns/gen.json");
    assert!(cd.contains("rate limit exceeded"), "{cd}");
}

/// A task that keeps hitting a usage limit gets 8 free cooldowns; past them
/// each limit uses up an attempt, and with none left the task fails
/// `limited`, though the agent exited 0: a limit is never filed as a success.
#[test]
fn a_task_past_its_free_limits_fails_limited_not_completed() {
    let root = Root::new()
        .config(
            "retry_delay: 10ms\nsettle: 300ms\nrescan_interval: 1s\nretries: 1\ndefault_agent: a\n\
             agents:\n  a:\n    command: [sh, -c, 'echo run >> \"$MAILROOM_ROOT/runs.log\"; echo \"Error: quota exceeded for today\" >&2; exit 0']\n    \
             limit_patterns: ['quota exceeded']\n    cooldown: 10ms\n",
        )
        .task("q.yaml", "description: keeps hitting its limit\n");
    root.run_until_idle_within(Duration::from_secs(120));
    assert_eq!(root.names("failed"), ["q"], "{:?}", root.names("completed"));
    let rec = root.record("failed", "q");
    assert_eq!(rec["outcome"], "limited", "{rec}");
    // 8 free, then 2 charged (retries: 1).
    assert_eq!(root.read("runs.log").lines().count(), 10, "{rec}");
    let hist = rec["history"].as_array().unwrap();
    assert_eq!(hist.len(), 10, "{rec}");
    assert!(hist.iter().all(|a| a["outcome"] == "limited"), "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("counts against its retries"), "{err}");
    assert!(err.contains("quota exceeded"), "{err}");
}

/// A dependency is completed when mailroom filed it so, with its record: a
/// failing agent that writes `completed/<its name>.yaml` does not make the
/// tasks that wait for it run.
#[test]
fn a_task_file_planted_in_completed_satisfies_no_dependency() {
    let root = Root::new()
        .agent_config(
            &[
                "sh",
                "-c",
                "[ \"$MAILROOM_TASK\" = t1 ] || exit 0; echo 'description: fake' > \"$MAILROOM_ROOT/tasks/completed/t1.yaml\"; exit 1",
            ],
            "retries: 0",
        )
        .task("t1.yaml", "description: fails\n")
        .task("t2.yaml", "description: waits\nafter: [t1]\n");
    root.run_until_idle();
    assert_eq!(root.record("failed", "t2")["outcome"], "dependency");
    assert!(root.names("completed").iter().all(|n| n != "t2"));
    // Nor does a planted record, whatever it says: the task is in failed/.
    for status in ["failed", "completed"] {
        root.write(
            "tasks/completed/t1.result.json",
            &format!("{{\"task\": \"t1\", \"status\": \"{status}\"}}"),
        );
        let waiter = format!("t3-{status}");
        root.write(
            &format!("tasks/pending/{waiter}.yaml"),
            "description: waits\nafter: [t1]\n",
        );
        root.run_until_idle();
        assert_eq!(root.record("failed", &waiter)["outcome"], "dependency");
    }
}

/// A task on its way to `failed/` (here: its dependency failed) whose lock
/// another process holds for a moment, as `mailroom retry` does while it
/// moves the file back, is filed as soon as the lock is free, not at the
/// next full rescan (an hour away here).
#[test]
fn a_reject_whose_lock_is_held_is_filed_when_it_is_free() {
    let root = Root::new()
        .config(&format!(
            "retries: 0\nrescan_interval: 1h\nagents:\n  ok:\n    command: [{:?}]\n  bad:\n    command: [{:?}]\n",
            agent("ok.sh"),
            agent("fail.sh")
        ))
        .task("broken.yaml", "description: b\nagent: bad\n");
    let _sup = root.spawn_with(&[("RUST_LOG", "mailroom=debug")]);
    wait_for(Duration::from_secs(60), "broken to fail", || {
        root.exists("tasks/failed/broken.result.json")
    });
    // The dependant's lock is held here while its file arrives.
    let lock = std::fs::File::create(root.p("tasks/assigned/d.lock")).unwrap();
    lock.lock().unwrap();
    root.write(
        "tasks/tmp/d.yaml",
        "description: x\nafter: [broken]\nagent: ok\n",
    );
    std::fs::rename(root.p("tasks/tmp/d.yaml"), root.p("tasks/pending/d.yaml")).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the supervisor to find the lock held",
        || root.sup_logs().contains("its lock is held elsewhere"),
    );
    assert_eq!(root.names("pending"), ["d"]);
    drop(lock);
    wait_for(
        Duration::from_secs(30),
        "the dependant to be filed once its lock is free",
        || root.exists("tasks/failed/d.result.json"),
    );
    assert_eq!(root.record("failed", "d")["outcome"], "dependency");
}

/// A task waiting for `b` while a second file named `b` sits in `pending/`
/// (dropped while the first `b` ran) goes as soon as that second file is
/// filed as a clash, not at the next full rescan (an hour away here): it
/// waited for it alone, as `b` was not "completed" while a file of its name
/// was still pending.
#[test]
fn a_dependant_goes_when_a_second_file_of_its_dependency_is_filed_as_a_clash() {
    let script = "if [ \"$MAILROOM_TASK\" = b ]; then while [ ! -e \"$MAILROOM_ROOT/release\" ]; do sleep 0.02; done; fi; echo done";
    let root = Root::new()
        .config(&format!(
            "retries: 0\nrescan_interval: 1h\nsettle: 1h\nconcurrency: 2\nagents:\n  s:\n    command: [/bin/sh, -c, {script:?}]\n    max_instances: 2\n"
        ))
        .task("b.yaml", "description: first b\n");
    let _sup = root.spawn_with(&[("RUST_LOG", "mailroom=debug")]);
    wait_for(Duration::from_secs(60), "b to run", || {
        root.exists("tasks/assigned/b.yaml")
    });
    let drop_in = |name: &str, content: &str| {
        root.write(&format!("tasks/tmp/{name}"), content);
        std::fs::rename(
            root.p(&format!("tasks/tmp/{name}")),
            root.p(&format!("tasks/pending/{name}")),
        )
        .unwrap();
    };
    drop_in("b.yaml", "description: second b\n");
    // Said at once, not when the run ends.
    wait_for(
        Duration::from_secs(30),
        "the second b to be reported",
        || {
            root.sup_logs()
                .contains("a second file of this name is in tasks/pending/ while the task runs")
        },
    );
    drop_in("c.yaml", "description: c\nafter: [b]\n");
    wait_for(Duration::from_secs(30), "c to wait for b", || {
        root.sup_logs().contains("waiting for b")
    });
    root.write("release", "");
    wait_for(
        Duration::from_secs(30),
        "the second b to be filed as a clash",
        || root.exists("tasks/failed/b.clash-1.result.json"),
    );
    wait_for(
        Duration::from_secs(30),
        "c to complete once b has and its second file is filed",
        || root.exists("tasks/completed/c.result.json"),
    );
    assert_eq!(root.record("completed", "b")["status"], "completed");
    assert_eq!(root.record("failed", "b.clash-1")["outcome"], "clash");
    // The same when the second file goes away: here one that does not parse
    // (and is given an hour to settle), then removed.
    drop_in("b.yaml", "description: [unclosed\n");
    drop_in("d.yaml", "description: d\nafter: [b]\n");
    wait_for(Duration::from_secs(30), "d to wait for b", || {
        root.sup_logs().contains("waiting for b task=d")
            || root.sup_logs().contains("waiting for b task=\"d\"")
    });
    std::fs::remove_file(root.p("tasks/pending/b.yaml")).unwrap();
    wait_for(
        Duration::from_secs(30),
        "d to complete once the second b is gone",
        || root.exists("tasks/completed/d.result.json"),
    );
}

/// A CLI's JSON result cut at `max_output_bytes` is no answer: the context
/// says there is none, and never holds a piece of the envelope.
#[test]
fn a_json_envelope_cut_at_the_output_limit_never_reaches_the_context() {
    let script = r#"printf '{"type":"result","subtype":"success","is_error":false,"result":"'; head -c 3000000 /dev/zero | tr '\0' x; printf '","session_id":"s"}\n'"#;
    let root = Root::new()
        .config(&format!(
            "max_output_bytes: 1000000\nretries: 0\nagents:\n  claude:\n    command: [/bin/sh, -c, {script:?}]\n    kind: claude\n"
        ))
        .task("huge.yaml", "description: x\n");
    root.run_until_idle();
    let rec = root.record("failed", "huge");
    assert_eq!(rec["outcome"], "output_limit", "{rec}");
    let out = root.read("context/agent_outputs/huge.md");
    assert!(!out.contains("{\"type\""), "{}", &out[..out.len().min(400)]);
    assert!(
        !out.contains("xxxxxxxxxx"),
        "{}",
        &out[..out.len().min(400)]
    );
    assert!(out.contains("(no answer"), "{}", &out[..out.len().min(400)]);
    // A whole JSON answer of a text-mode agent is an answer like any other.
    let json = "{\n  \"result\": \"all 12 tests pass\",\n  \"type\": \"report\"\n}";
    let root = Root::new()
        .config(&format!(
            "retries: 0\nagents:\n  claude:\n    command: [/bin/echo, {json:?}]\n    kind: claude\n    prompt_template: \"\"\n  gen:\n    command: [/bin/echo, {json:?}]\n    prompt_template: \"\"\n    output: {{format: text}}\n"
        ))
        .task("c.yaml", "description: x\nagent: claude\n")
        .task("g.yaml", "description: x\nagent: gen\n");
    root.run_until_idle();
    for t in ["c", "g"] {
        let out = root.read(&format!("context/agent_outputs/{t}.md"));
        assert!(out.contains("all 12 tests pass"), "{t}: {out}");
    }
}

/// claude's permission denials (a tool call its permission mode refused,
/// such as `mailroom add` under acceptEdits) go into the record's warnings:
/// the run succeeded, but did not do all it tried.
#[test]
fn claudes_permission_denials_are_in_the_record() {
    let out = serde_json::json!({
        "type": "result", "subtype": "success", "is_error": false, "result": "done",
        "session_id": "s1",
        "permission_denials": [{"tool_name": "Bash", "tool_use_id": "t",
            "tool_input": {"command": "mailroom add \"next\""}}]
    })
    .to_string();
    let root = claude_root("", &out, "0").task("d.yaml", "description: x\nagent: claude\n");
    root.run_until_idle();
    let rec = root.record("completed", "d");
    let w = rec["warnings"].to_string();
    assert!(
        w.contains("denied 1 tool call(s): Bash `mailroom add"),
        "{rec}"
    );
}
