//! `mailroom validate`: task files and configs checked without running anything.

use crate::parse::config::{CONFIG_FILE, Config};
use crate::parse::task;
use crate::tree::fsx;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A YAML file with a top-level `agents:` or `concurrency:` key is a config
/// (whatever its name), not a task.
fn looks_like_config(f: &Path) -> bool {
    fsx::read_task_file(f, task::DEFAULT_MAX_TASK_BYTES)
        .ok()
        .map(|(b, _)| {
            String::from_utf8_lossy(&b).lines().any(|l| {
                ["agents:", "concurrency:", "default_agent:", "routing:"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
        })
        .unwrap_or(false)
}

/// Warns of agents whose program is not there (on this `PATH`, or at its
/// path): their tasks would fail as `spawn`. A warning only: the supervisor
/// may run with another `PATH` (a service's).
fn missing_commands(c: &Config, root: &Path) {
    for (name, a) in &c.agents {
        let Some(program) = a.command.first() else {
            continue;
        };
        if program.starts_with('{') {
            continue; // a placeholder, filled in per run
        }
        let found = if program.contains('/') {
            let p = crate::run::process::resolve_program(program, root);
            p.is_file()
        } else {
            std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
        };
        if !found {
            println!(
                "  warning: agent `{name}`: its command `{program}` is not found{} \
                 (its tasks would fail as `spawn`)",
                if program.contains('/') {
                    ""
                } else {
                    " on PATH"
                }
            );
        }
    }
}

/// Warns of the tasks in `pending/` that `c` cannot route (an agent it does
/// not define, a capability none of its agents has): a supervisor that
/// loaded it would fail them as `invalid` (unless the tree is paused).
/// Looks at the first 10,000 files.
fn unroutable_pending(c: &Config, layout: &crate::tree::layout::Layout) {
    use crate::tree::layout::State;
    const LOOK: usize = 10_000;
    let Ok(files) = crate::tree::books::list(layout, State::Pending) else {
        return;
    };
    let mut bad: Vec<(String, String)> = Vec::new();
    for (name, ext) in files.iter().take(LOOK) {
        let path = layout.task_file(State::Pending, name, ext);
        let Some(t) =
            crate::tree::books::parsed_task(&path, name, ext, task::DEFAULT_MAX_TASK_BYTES)
        else {
            continue;
        };
        if let Err(e) = crate::sched::routing::route(c, &t, &[]) {
            bad.push((name.clone(), e));
        }
    }
    if bad.is_empty() {
        return;
    }
    println!(
        "  warning: {} task{} in tasks/pending/{} cannot be routed by this config and would \
         fail as `invalid` once a supervisor loads it (pause the tree first to keep them: \
         `mailroom pause`):",
        bad.len(),
        if bad.len() == 1 { "" } else { "s" },
        if files.len() > LOOK {
            format!(" (of the first {LOOK} looked at)")
        } else {
            String::new()
        }
    );
    for (name, why) in bad.iter().take(10) {
        println!("    {name}: {why}");
    }
    if bad.len() > 10 {
        println!("    and {} more", bad.len() - 10);
    }
}

/// `mailroom validate`: true when everything is valid.
pub fn validate(root: &Path, files: &[PathBuf]) -> Result<bool> {
    let mut ok = true;
    let cfg = root.join(CONFIG_FILE);
    let mut checked_cfg = false;
    // The root's config, read once, when a task file is met.
    let mut root_config: Option<Option<Config>> = None;
    let layout = crate::tree::layout::Layout::new(root);
    // The scanner's directory, for files named so that it never claims them.
    let pending = layout.pending.canonicalize().ok();
    for f in files {
        let shown = f.display().to_string();
        let is_cfg =
            f.file_name().and_then(|n| n.to_str()) == Some(CONFIG_FILE) || looks_like_config(f);
        let bytes = match fsx::read_task_file(f, task::DEFAULT_MAX_TASK_BYTES) {
            Ok((b, _)) => b,
            Err(e) => {
                println!("{shown}: {e}");
                ok = false;
                continue;
            }
        };
        if is_cfg {
            checked_cfg = checked_cfg || f.canonicalize().ok() == cfg.canonicalize().ok();
            match Config::parse_file(&bytes, &shown) {
                Ok(c) => {
                    println!("ok: {shown}");
                    missing_commands(&c, root);
                    unroutable_pending(&c, &layout);
                }
                Err(e) => {
                    println!("{e}");
                    ok = false;
                }
            }
            continue;
        }
        let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or("task");
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("yaml");
        match task::parse_as(name, ext, &bytes) {
            Ok(t) => {
                // What the supervisor would refuse: no agent of the root's
                // config can run it (an unknown agent, a capability no one has).
                let config = root_config.get_or_insert_with(|| {
                    // (Only against a config file: without one, the file alone.)
                    Config::load(root).ok().filter(|c| c.source.is_some())
                });
                if let Some(Err(e)) = config
                    .as_ref()
                    .map(|c| crate::sched::routing::route(c, &t, &[]))
                {
                    println!("{shown}: {e}");
                    ok = false;
                    continue;
                }
                // What the scanner would make of the name: a file it never
                // claims is valid for nothing.
                let file_name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let never = match task::classify(file_name) {
                    task::Entry::Task { .. } => None,
                    task::Entry::Ignored => Some(
                        "a supervisor never claims a file of this name (task files end in \
                         .yaml, .yml or .md, in lower case; names starting with `.` or ending \
                         in `~` are skipped)"
                            .to_owned(),
                    ),
                    task::Entry::BadName(why) => Some(why),
                };
                let in_pending =
                    pending.is_some() && f.parent().and_then(|d| d.canonicalize().ok()) == pending;
                match never {
                    Some(why) if in_pending => {
                        println!("{shown}: {why}");
                        ok = false;
                        continue;
                    }
                    Some(why) => {
                        println!("ok: {shown}");
                        println!("  warning: in tasks/pending/, {why}");
                    }
                    None => println!("ok: {shown}"),
                }
                for w in &t.warnings {
                    println!("  warning: {w}");
                }
                let defaults = Config::default();
                let c = config.as_ref().map_or(&defaults, |c| c);
                for w in crate::run::prompt::context_file_problems(&layout, c, &t) {
                    println!("  warning: {w}");
                }
            }
            Err(e) => {
                println!("{}", e.display_at(&shown));
                ok = false;
            }
        }
    }
    if !checked_cfg && cfg.exists() {
        match Config::load(root) {
            Ok(c) => {
                println!("ok: {}", cfg.display());
                missing_commands(&c, root);
                unroutable_pending(&c, &layout);
            }
            Err(e) => {
                println!("{e}");
                ok = false;
            }
        }
    }
    Ok(ok)
}
