//! The built-in demo agent (`mailroom demo-agent`): works offline and writes a
//! real, readable report from the task's description and the shared context,
//! so that the whole loop can be tried without any AI CLI installed.

use std::fmt::Write as _;
use std::path::Path;

/// Runs the demo agent with the prompt from `args` (or `$MAILROOM_PROMPT_FILE`).
/// Writes its report to `$MAILROOM_OUTPUT` when set, and always to stdout.
pub fn main(args: &[String]) -> i32 {
    let prompt = if args.is_empty() {
        std::env::var("MAILROOM_PROMPT_FILE")
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    } else {
        args.join(" ")
    };
    let task = std::env::var("MAILROOM_TASK").unwrap_or_else(|_| "(no task)".into());
    let context = std::env::var("MAILROOM_CONTEXT").ok();
    let report = report(&task, &prompt, context.as_deref().map(Path::new));
    if let Ok(out) = std::env::var("MAILROOM_OUTPUT")
        && let Err(e) = std::fs::write(&out, &report)
    {
        eprintln!("demo-agent: cannot write {out}: {e}");
        return 1;
    }
    print!("{report}");
    0
}

fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("")
}

/// The report: the task restated, what the context says, a plan, a summary.
pub fn report(task: &str, prompt: &str, context: Option<&Path>) -> String {
    let goal = crate::run::prompt::description_part(prompt).trim();
    // The files mailroom put into the prompt, with their first line.
    let given: Vec<(String, String)> = prompt
        .split("\n---\n## Context: ")
        .skip(1)
        .filter_map(|sec| {
            let (file, body) = sec.split_once('\n')?;
            let first = body
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("# ") && !l.starts_with("_"))
                .unwrap_or("")
                .chars()
                .take(160)
                .collect();
            Some((file.to_owned(), first))
        })
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "# Demo agent report: {task}\n");
    let _ = writeln!(md, "## Task\n\n{goal}\n");
    if let Some(ctx) = context {
        let overview = std::fs::read_to_string(ctx.join("project_overview.md")).unwrap_or_default();
        let project = first_line(&overview);
        if !project.is_empty() {
            let _ = writeln!(md, "## Context\n\nProject overview says: {project}\n");
        }
        let state = std::fs::read_to_string(ctx.join("current_state.md")).unwrap_or_default();
        let finished: Vec<&str> = state
            .lines()
            .filter_map(|l| l.strip_prefix("### "))
            .take(5)
            .collect();
        if !finished.is_empty() {
            let _ = writeln!(
                md,
                "Recently finished work I read from context/current_state.md:\n"
            );
            for f in &finished {
                let _ = writeln!(md, "- {f}");
            }
            md.push('\n');
        }
    }
    if !given.is_empty() {
        let _ = writeln!(md, "## What mailroom gave me\n");
        for (f, first) in &given {
            let _ = writeln!(md, "- {f}: {first}");
        }
        md.push('\n');
    }
    let words: Vec<&str> = goal
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 3)
        .take(4)
        .collect();
    let _ = writeln!(md, "## Plan\n");
    let _ = writeln!(md, "1. Read the task and the shared context above.");
    for (i, w) in words.iter().enumerate() {
        let _ = writeln!(md, "{}. Work out what \"{w}\" requires and do it.", i + 2);
    }
    let _ = writeln!(
        md,
        "{}. Write the result and a summary for the next agent.\n",
        words.len() + 2
    );
    let _ = writeln!(
        md,
        "[SUMMARY]\nDemo agent planned \"{}\" in {} steps.\n[/SUMMARY]",
        first_line(goal).chars().take(120).collect::<String>(),
        words.len() + 2
    );
    md
}
