//! `mailroom man`: man pages from the clap definitions (clap_mangen), one per
//! subcommand (`mailroom-run(1)`, ...) and `mailroom(1)` with the sections
//! clap cannot know: FILES, ENVIRONMENT, EXIT STATUS and SEE ALSO.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::Cli;

/// `(path, what)` pairs of the FILES section.
const FILES: &[(&str, &str)] = &[
    (
        "mailroom.yaml",
        "The configuration, in the root (optional: built-in defaults without it).",
    ),
    (
        "tasks/tmp/",
        "Where writers stage task files before renaming them into tasks/pending/.",
    ),
    (
        "tasks/pending/",
        "Tasks waiting to run: NAME.yaml, NAME.yml, or NAME.md (Markdown with YAML front matter).",
    ),
    (
        "tasks/assigned/",
        "Claimed tasks, their locks, state files and run directories.",
    ),
    (
        "tasks/completed/, tasks/failed/",
        "Finished tasks with their result records (NAME.result.json) and run directories.",
    ),
    (
        "tasks/control/",
        "Live control: pause, pause.AGENT and cancel/NAME markers.",
    ),
    (
        "tasks/cooldowns/AGENT.json",
        "An agent's usage-limit cooldown: no task goes to it before its until.",
    ),
    (
        "tasks/slots/",
        "Lock files, one per run slot of each agent (max_instances) and of the tree (concurrency), held by the runs' keepers.",
    ),
    (
        "tasks/supervisors/",
        "The supervisors' heartbeat files (HOST.PID.json), read by status and wait.",
    ),
    (
        "tasks/trees/FIRST",
        "How many tasks a tree of follow-ups holds (max_tree_tasks), by its first task.",
    ),
    (
        "tasks/history/NAME.jsonl",
        "The records of a task's earlier rounds, kept by mailroom retry.",
    ),
    (
        "context/",
        "Shared context: project_overview.md (yours), current_state.md, completed_tasks.jsonl and agent_outputs/.",
    ),
    (
        "logs/mailroom.log",
        "The log of a supervisor started with mailroom start.",
    ),
];

/// `(variable, what)` pairs of the ENVIRONMENT section.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "MAILROOM_ROOT",
        "The root of the tree when --root is not given; set for agents and hooks.",
    ),
    (
        "MAILROOM_TASK",
        "Set for agents (and hooks): the task's name. mailroom add run inside an agent records it as the new task's parent.",
    ),
    (
        "MAILROOM_TASK_FILE, MAILROOM_PROMPT_FILE, MAILROOM_OUTPUT, MAILROOM_OUTBOX, MAILROOM_RESULT, MAILROOM_RUN_DIR, MAILROOM_CONTEXT, MAILROOM_ATTEMPT, MAILROOM_AGENT",
        "Set for agents: see PROTOCOL.md, section 10.",
    ),
    (
        "MAILROOM_STATE, MAILROOM_OUTCOME, MAILROOM_RECORD, MAILROOM_AGENT, MAILROOM_UNTIL, MAILROOM_HOOK",
        "Set for hooks (hooks: in mailroom.yaml).",
    ),
    (
        "MAILROOM_KEEPER",
        "For run: self keeps runs with this binary (mailroom keeper) instead of the mailroom-keeper beside it; a path names a mailroom-keeper elsewhere (used only when it is of this build).",
    ),
    (
        "EDITOR, VISUAL",
        "The editor of mailroom new (EDITOR, else VISUAL, else vi).",
    ),
    (
        "RUST_LOG",
        "Log filter (tracing's EnvFilter syntax); overrides -v and -q.",
    ),
    (
        "NO_COLOR",
        "When set and not empty, logs carry no colour codes (they never do when stderr is not a terminal).",
    ),
    (
        "NOTIFY_SOCKET",
        "Under systemd (Type=notify): READY, STATUS and WATCHDOG notifications.",
    ),
    (
        "COMPLETE",
        "Set by the shell's completion script to ask mailroom for completions (see mailroom completions).",
    ),
];

/// `(status, meaning)` pairs of the EXIT STATUS section.
const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "Success (for add --wait and wait: every task completed).",
    ),
    ("1", "An error, or (add --wait, wait) a task that failed."),
    ("2", "The command line is wrong."),
    (
        "78",
        "run, start: the configuration cannot be used (EX_CONFIG; the systemd units do not restart on it).",
    ),
    (
        "69",
        "wait: no supervisor runs on the tree (EX_UNAVAILABLE), so nothing would ever finish.",
    ),
    ("124", "wait: the timeout passed first."),
];

/// Text for roff: backslashes and hyphens escaped, no line starting with a control character.
fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with(['.', '\'']) {
        format!("\\&{s}")
    } else {
        s
    }
}

fn tagged(out: &mut String, title: &str, items: &[(&str, &str)], bold: bool) {
    out.push_str(&format!(".SH {title}\n"));
    for (tag, text) in items {
        let tag = if bold {
            format!("\\fB{}\\fR", esc(tag))
        } else {
            format!("\\fI{}\\fR", esc(tag))
        };
        out.push_str(&format!(".TP\n{tag}\n{}\n", esc(text)));
    }
}

/// The names of the pages that exist: mailroom and each visible subcommand.
pub fn page_names() -> Vec<String> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut v = vec!["mailroom".to_owned()];
    v.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("mailroom-{}", s.get_name())),
    );
    v
}

fn see_also(out: &mut String, names: &[String], me: &str) {
    let refs: Vec<String> = names
        .iter()
        .filter(|n| *n != me)
        .map(|n| format!("\\fB{}\\fR(1)", esc(n)))
        .collect();
    out.push_str(&format!(".SH \"SEE ALSO\"\n{}\n", refs.join(",\n")));
}

/// mailroom(1): clap's sections, then FILES, ENVIRONMENT, EXIT STATUS, SEE ALSO.
pub fn main_page() -> Result<Vec<u8>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd);
    let mut w = Vec::new();
    man.render_title(&mut w)?;
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    man.render_description_section(&mut w)?;
    man.render_options_section(&mut w)?;
    man.render_subcommands_section(&mut w)?;
    let mut extra = String::new();
    tagged(&mut extra, "FILES", FILES, false);
    tagged(&mut extra, "ENVIRONMENT", ENVIRONMENT, true);
    tagged(&mut extra, "\"EXIT STATUS\"", EXIT_STATUS, true);
    extra.push_str(
        ".PP\nThe README, PROTOCOL.md (the tree's protocol, for other tools) and \
         ARCHITECTURE.md come with the sources.\n",
    );
    see_also(&mut extra, &page_names(), "mailroom");
    w.write_all(extra.as_bytes())?;
    man.render_version_section(&mut w)?;
    Ok(w)
}

/// Writes mailroom.1 and mailroom-SUBCOMMAND.1 for each visible subcommand
/// into `dir`; returns the files written.
pub fn write_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = dir.join(format!("{name}.1"));
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
        Ok(())
    };
    put("mailroom", &main_page()?)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("mailroom-{}", sub.get_name());
        let mut w = Vec::new();
        clap_mangen::Man::new(sub.clone())
            .source(format!("mailroom {}", env!("CARGO_PKG_VERSION")))
            .render(&mut w)?;
        w.extend_from_slice(
            b".SH \"SEE ALSO\"\n\\fBmailroom\\fR(1) for the tree, FILES, ENVIRONMENT and EXIT STATUS.\n",
        );
        put(&name, &w)?;
    }
    Ok(written)
}
