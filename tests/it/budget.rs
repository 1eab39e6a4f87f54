//! Budgets (`budget:` of an agent): at its daily budget an agent pauses like a
//! cooldown until the budget is raised (or the next UTC day), and a tree of
//! follow-ups over its budget has its tasks wait while other trees run. The
//! agent is a fake CLI that reports a cost in its JSON output.

use crate::common::*;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

fn config(budget: &str, env: &str) -> String {
    format!(
        "concurrency: 1\nretry_delay: 50ms\nsettle: 200ms\nrescan_interval: 1s\nagents:\n  paid:\n    command: [{:?}]\n    kind: generic\n    output: {{format: json, answer: .result, cost: .cost, input_tokens: .in, output_tokens: .out}}\n    budget: {budget}\n    env: {env}\n",
        agent("paid.sh")
    )
}

fn logs(root: &Root) -> String {
    root.entries("")
        .iter()
        .filter(|f| f.starts_with("sup-"))
        .map(|f| root.read(f))
        .collect()
}

fn replace_config(root: &Root, text: &str) {
    root.write("mailroom.yaml.new", text);
    std::fs::rename(root.p("mailroom.yaml.new"), root.p("mailroom.yaml")).unwrap();
}

#[test]
fn an_agent_at_its_daily_budget_pauses_until_the_budget_is_raised() {
    let root = Root::new()
        .config(&config("{daily_usd: 1}", "{}"))
        .task("a.yaml", "description: one\n")
        .task("b.yaml", "description: two\n")
        .task("c.yaml", "description: three\n");
    let _sup = root.spawn();
    // 0.6 + 0.6 = 1.2 USD: the third task waits.
    wait_for(MIN, "the agent to reach its budget", || {
        logs(&root).contains("reached its budget daily_usd 1")
    });
    assert_eq!(
        root.names("completed").len(),
        2,
        "{:?}",
        root.names("completed")
    );
    assert_eq!(root.names("pending").len(), 1);
    let st = root.mailroom(&["status"]);
    let text = stdout(&st);
    assert!(
        text.contains("paid over budget until") && text.contains("daily_usd 1"),
        "{text}"
    );
    let js: serde_json::Value =
        serde_json::from_slice(&root.mailroom(&["status", "--json"]).stdout).unwrap();
    let ob = &js["over_budget"][0];
    assert_eq!(ob["agent"], "paid", "{js}");
    assert_eq!(ob["scope"], "daily", "{js}");
    assert!(
        ob["until"].as_str().unwrap().ends_with("T00:00:00.000Z"),
        "{js}"
    );
    // The spend is what the CLI reported, summed from the context log.
    let usage = root.mailroom(&["usage", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&usage.stdout).unwrap();
    let total = rows.as_array().unwrap().last().unwrap();
    assert!(
        (total["cost_usd"].as_f64().unwrap() - 1.2).abs() < 1e-9,
        "{rows}"
    );
    // A raised budget lets it go on.
    replace_config(&root, &config("{daily_usd: 10}", "{}"));
    wait_for(MIN, "the rest to run once the budget is raised", || {
        root.names("completed").len() == 3
    });
    assert!(logs(&root).contains("within its daily budget again"));
}

#[test]
fn a_tree_over_its_budget_waits_while_other_trees_run() {
    let root = Root::new()
        .config(&config("{tree_usd: 1}", "{CHAIN: \"1\", COST: \"0.4\"}"))
        .task("r.yaml", "description: the first of a chain\n");
    let _sup = root.spawn();
    // r (0.4), n-r (0.8), n-n-r (1.2): the tree's next task waits.
    wait_for(MIN, "the tree to reach its budget", || {
        logs(&root).contains("reached its budget tree_usd 1")
    });
    let done = root.names("completed");
    assert_eq!(done, vec!["n-n-r", "n-r", "r"], "{done:?}");
    assert_eq!(root.names("pending"), vec!["n-n-n-r"]);
    let st = stdout(&root.mailroom(&["status"]));
    assert!(
        st.contains("tree of r over budget") && st.contains("n-n-n-r"),
        "{st}"
    );
    // Another tree is not held: its first task runs (and queues its own next).
    replace_config(&root, &config("{tree_usd: 1}", "{COST: \"0.4\"}"));
    wait_for(MIN, "the config without CHAIN", || {
        logs(&root).contains("configuration reloaded")
    });
    root.write("tasks/pending/u.yaml", "description: another tree\n");
    wait_for(MIN, "the other tree's task to run", || {
        root.names("completed").contains(&"u".to_owned())
    });
    assert_eq!(root.names("pending"), vec!["n-n-n-r"]);
    let line = root
        .read("context/completed_tasks.jsonl")
        .lines()
        .find(|l| l.contains("\"task\":\"n-n-r\""))
        .unwrap()
        .to_owned();
    assert!(line.contains("\"tree\":\"r\""), "{line}");
    // Raised: the tree goes on.
    replace_config(&root, &config("{tree_usd: 5}", "{COST: \"0.4\"}"));
    wait_for(MIN, "the held task to run", || {
        root.names("pending").is_empty()
    });
    wait_for(MIN, "it to complete", || {
        root.names("completed").contains(&"n-n-n-r".to_owned())
    });
}
