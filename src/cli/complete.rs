//! Dynamic shell completion (clap_complete's `CompleteEnv`): task names for
//! `show`, `retry`, `cancel`, `logs`, `wait` and `add --after`, agent names
//! for `--agent`, read from the tree the command line points at.

use std::ffi::OsString;
use std::path::PathBuf;

use clap_complete::engine::CompletionCandidate;

use crate::parse::config::Config;
use crate::tree::layout::{Layout, State};

/// The root the command being completed names: `--root DIR` or
/// `--root=DIR` on its line, else `$MAILROOM_ROOT`, else the current directory.
fn root() -> PathBuf {
    root_in(
        std::env::args_os().collect(),
        std::env::var_os("MAILROOM_ROOT"),
    )
}

fn root_in(args: Vec<OsString>, env: Option<OsString>) -> PathBuf {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--root" {
            if let Some(v) = it.next() {
                return PathBuf::from(v);
            }
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--root=")) {
            return PathBuf::from(v);
        }
    }
    env.filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Every task of the tree, with its state as help.
pub fn task_names() -> Vec<CompletionCandidate> {
    let layout = Layout::new(&root());
    let mut out = Vec::new();
    for s in State::ALL {
        for (name, _) in crate::tree::books::list(&layout, s).unwrap_or_default() {
            out.push(CompletionCandidate::new(name).help(Some(s.dir_name().into())));
        }
    }
    out
}

/// The priorities `--priority` offers.
pub fn priorities() -> Vec<CompletionCandidate> {
    ["high", "normal", "low"]
        .into_iter()
        .map(CompletionCandidate::new)
        .collect()
}

/// The agents of the tree's config.
pub fn agent_names() -> Vec<CompletionCandidate> {
    Config::load(&root())
        .map(|c| c.agents.into_keys().map(CompletionCandidate::new).collect())
        .unwrap_or_default()
}

/// `mailroom completions SHELL`: the shell's registration script, which
/// asks mailroom itself (`COMPLETE=SHELL mailroom -- ...`) for completions.
pub fn registration(
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let Some(sh) = shells.completer(&name) else {
        return Err(std::io::Error::other(format!("no completion for {name}")));
    };
    // As the shell will find this binary: by name when run through PATH.
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "mailroom".into());
    let arg0 = PathBuf::from(arg0);
    let completer = if arg0.components().count() > 1 {
        std::env::current_dir()
            .map(|d| d.join(&arg0))
            .unwrap_or(arg0)
    } else {
        arg0
    };
    sh.write_registration(
        "COMPLETE",
        "mailroom",
        "mailroom",
        &completer.to_string_lossy(),
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_comes_from_the_line_then_the_environment() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            root_in(
                a(&["mailroom", "--", "mailroom", "--root", "/q", "show"]),
                None
            ),
            PathBuf::from("/q")
        );
        assert_eq!(
            root_in(a(&["mailroom", "--root=/r", "show"]), Some("/e".into())),
            PathBuf::from("/r")
        );
        assert_eq!(
            root_in(a(&["mailroom", "show"]), Some("/e".into())),
            PathBuf::from("/e")
        );
        assert_eq!(root_in(a(&["mailroom", "show"]), None), PathBuf::from("."));
    }
}
