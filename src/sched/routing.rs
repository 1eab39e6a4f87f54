//! Routing: which agents may run a task, in which order, and why. Explicit
//! `agent:` wins, then the first matching `routing` rule, then the agents that
//! have every capability the task `requires` (least loaded first), then
//! `default_agent`. An explicit or routed agent brings its `fallback` chain.

use crate::parse::config::Config;
use crate::parse::task::Task;
use crate::sched::queue::{Pick, Route};

/// The candidates for `t`, minus `excluded` (agents that could not be
/// spawned for it, or failed it `fallback_after` times), with a reason.
pub fn route(c: &Config, t: &Task, excluded: &[String]) -> Result<(Route, String), String> {
    let (first, reason) = if let Some(a) = &t.agent {
        c.agent_for(Some(a))?;
        (a.clone(), format!("explicit `agent: {a}`"))
    } else if let Some((i, r)) = c.routing.iter().enumerate().find(|(_, r)| r.applies(t)) {
        (r.agent.clone(), r.describe(i))
    } else if !t.requires.is_empty() {
        let agents: Vec<String> = c
            .agents
            .values()
            .filter(|a| t.requires.iter().all(|r| a.capabilities.contains(r)))
            .map(|a| a.name.clone())
            .filter(|a| !excluded.contains(a))
            .collect();
        if agents.is_empty() {
            return Err(format!(
                "no configured agent has every capability in `requires: [{}]`",
                t.requires.join(", ")
            ));
        }
        let reason = format!(
            "requires [{}]: least loaded of {}",
            t.requires.join(", "),
            agents.join(", ")
        );
        return Ok((
            Route {
                agents,
                pick: Pick::LeastLoaded,
            },
            reason,
        ));
    } else {
        let a = c.agent_for(None)?;
        (a.name.clone(), "default_agent".to_owned())
    };
    let mut agents = vec![first.clone()];
    let mut i = 0;
    // The fallback chain, breadth first, each agent once.
    while i < agents.len() {
        if let Some(a) = c.agents.get(&agents[i]) {
            for f in &a.fallback {
                if !agents.contains(f) {
                    agents.push(f.clone());
                }
            }
        }
        i += 1;
    }
    agents.retain(|a| !excluded.contains(a));
    if agents.is_empty() {
        return Err(format!(
            "every agent for this task was ruled out ({}); see the record's history",
            excluded.join(", ")
        ));
    }
    // Its first choice ruled out (it could not start, or failed the task):
    // say that this is a fallback, not the first choice.
    let reason = if agents[0] != first {
        let out: Vec<&str> = excluded.iter().map(String::as_str).collect();
        format!(
            "fallback of {first} ({reason}), as {} was ruled out",
            out.join(", ")
        )
    } else {
        reason
    };
    let reason = if agents.len() > 1 {
        format!("{reason}, then fallbacks {}", agents[1..].join(", "))
    } else {
        reason
    };
    Ok((
        Route {
            agents,
            pick: Pick::Ordered,
        },
        reason,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let y = "default_agent: demo\nrouting:\n  - label: heavy\n    agent: codex\n  - min_chars: 50\n    agent: codex\n\
                 agents:\n  demo:\n    command: [d]\n    capabilities: [web]\n  codex:\n    command: [c]\n    capabilities: [web, rust]\n    fallback: [claude]\n  claude:\n    command: [cl]\n    fallback: [demo]\n";
        Config::parse(y.as_bytes(), "m").unwrap()
    }

    fn task(y: &str) -> Task {
        crate::parse::task::parse("t", y.as_bytes()).unwrap()
    }

    #[test]
    fn explicit_agent_wins_over_routing() {
        let (r, why) = route(
            &cfg(),
            &task("description: x\nagent: demo\nlabels: [heavy]\n"),
            &[],
        )
        .unwrap();
        assert_eq!(r.agents, ["demo"]);
        assert!(why.contains("explicit"));
    }

    #[test]
    fn routing_by_label_and_size_brings_the_fallback_chain() {
        let (r, why) = route(&cfg(), &task("description: x\nlabels: [heavy]\n"), &[]).unwrap();
        assert_eq!(r.agents, ["codex", "claude", "demo"]);
        assert!(why.starts_with("routing rule 1 (label heavy)"), "{why}");
        let long = format!("description: {}\n", "y".repeat(60));
        let (r, why) = route(&cfg(), &task(&long), &[]).unwrap();
        assert_eq!(r.agents[0], "codex");
        assert!(why.contains("rule 2"), "{why}");
    }

    #[test]
    fn requires_picks_capable_agents_least_loaded() {
        let (r, _) = route(&cfg(), &task("description: x\nrequires: [rust]\n"), &[]).unwrap();
        assert_eq!(r.agents, ["codex"]);
        assert_eq!(r.pick, Pick::LeastLoaded);
        let (r, _) = route(&cfg(), &task("description: x\nrequires: [web]\n"), &[]).unwrap();
        assert_eq!(r.agents.len(), 2);
        assert!(route(&cfg(), &task("description: x\nrequires: [gpu]\n"), &[]).is_err());
    }

    #[test]
    fn exclusions_move_to_the_next_fallback() {
        let (r, why) = route(
            &cfg(),
            &task("description: x\nlabels: [heavy]\n"),
            &["codex".into()],
        )
        .unwrap();
        assert_eq!(r.agents, ["claude", "demo"]);
        // The record says it is a fallback, and why.
        assert!(
            why.starts_with("fallback of codex (routing rule 1 (label heavy))")
                && why.contains("as codex was ruled out, then fallbacks demo"),
            "{why}"
        );
        let all = ["codex".into(), "claude".into(), "demo".into()];
        assert!(route(&cfg(), &task("description: x\nlabels: [heavy]\n"), &all).is_err());
    }
}
