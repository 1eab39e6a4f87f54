//! Where a CLI may write. claude, codex and gemini confine their own file
//! tools to the directory they start in: claude's `acceptEdits` asks (and in
//! print mode is refused) for a file outside its working directories, codex's
//! `workspace-write` sandbox makes everything outside its cwd (and /tmp)
//! read-only, gemini refuses a path "outside the allowed workspace
//! directories". An agent that runs in a task's `workdir: sub/dir` or in a
//! worktree would then be told to write `$MAILROOM_OUTPUT`, `$MAILROOM_RESULT`
//! and its follow-ups in `$MAILROOM_OUTBOX`, and be refused: the follow-ups
//! were lost while the run completed.
//!
//! So when the run's directory is not below where the agent starts, its
//! command gets the CLI's own option that adds that one directory (checked
//! against the pinned versions, with the CLIs writing through their own
//! tools in tests/it/clis.rs):
//!
//! - claude 2.1.197: `--add-dir=DIR`. The option takes several values; in
//!   the `=` form it takes only this one, so a prompt after it stays the
//!   prompt.
//! - gemini 0.61.0: `--include-directories=DIR`, the same way. It splits
//!   the value at commas: a run directory with a comma in its path (a task
//!   name may hold one) gets nothing, rather than a wider directory (every
//!   other run's files are in `tasks/assigned/`).
//! - codex 0.171.0: `-c sandbox_workspace_write.writable_roots=[DIR]` after
//!   `exec` (or `exec resume`). codex's own `--add-dir` is refused by `exec
//!   resume` ("unexpected argument"), so a command's `--add-dir DIR` options
//!   are folded into the same list, which works for both. The setting
//!   replaces the `writable_roots` of codex's own config.toml for that run; a
//!   command that sets it itself (`-c`/`--config` among its options) is left
//!   alone.
//!
//! A directory below the agent's start is already writable: nothing is
//! added. Nor to a command whose program is not the CLI itself (a wrapper
//! script, `sh -c`, `npx`): the option could mean something else to it.

use std::path::Path;

use super::Kind;

/// The codex setting that lists writable directories besides the cwd.
const CODEX_ROOTS: &str = "sandbox_workspace_write.writable_roots";

/// Whether `argv` runs a CLI of `kind` that keeps its file tools to where
/// it starts, itself (its program's file name is the CLI's, not a
/// wrapper's), and so may need [`with_run_dir`].
pub fn confined(kind: &Kind, argv: &[String]) -> bool {
    matches!(kind, Kind::Claude | Kind::Codex | Kind::Gemini)
        && argv
            .first()
            .and_then(|p| Path::new(p).file_name())
            .is_some_and(|p| p == kind.name())
}

/// `argv` (placeholders filled in) for an agent of `kind` that starts in
/// `cwd`, with write access to the run's directory `run_dir` added when its
/// CLI would refuse it. Both paths as the file system resolves them (the
/// CLIs resolve links too); pure.
pub fn with_run_dir(kind: &Kind, argv: Vec<String>, run_dir: &Path, cwd: &Path) -> Vec<String> {
    if !confined(kind, &argv) {
        return argv;
    }
    if run_dir.starts_with(cwd) {
        return if matches!(kind, Kind::Codex) {
            codex(argv, None)
        } else {
            argv
        };
    }
    let dir = run_dir.to_string_lossy().into_owned();
    match kind {
        Kind::Claude => with_option(argv, format!("--add-dir={dir}")),
        // gemini splits the option's value at commas (task names may hold
        // them): such a directory cannot be given, and a wider one (all of
        // `tasks/assigned/`, every other run's files) must not be.
        Kind::Gemini if dir.contains(',') => argv,
        Kind::Gemini => with_option(argv, format!("--include-directories={dir}")),
        _ => codex(argv, Some(dir)),
    }
}

/// `opt` before a `--` that ends the options, else just after the program.
fn with_option(mut argv: Vec<String>, opt: String) -> Vec<String> {
    let at = argv
        .iter()
        .position(|a| a == "--")
        .unwrap_or(argv.len().min(1));
    argv.insert(at, opt);
    argv
}

/// A codex `exec` command with `extra` and its own `--add-dir` directories
/// as one `writable_roots` setting. Without `extra`, only an `exec resume`
/// is changed (which refuses `--add-dir`).
fn codex(argv: Vec<String>, extra: Option<String>) -> Vec<String> {
    let Some(exec) = argv.iter().position(|a| a == "exec") else {
        return argv;
    };
    let resume = argv.get(exec + 1).is_some_and(|a| a == "resume");
    if (extra.is_none() && !resume) || sets_roots(&argv) {
        return argv;
    }
    let mut roots: Vec<String> = extra.into_iter().collect();
    let mut out = Vec::with_capacity(argv.len() + 2);
    let mut rest = argv.into_iter();
    let mut options = true;
    while let Some(a) = rest.next() {
        if a == "--" {
            options = false;
        }
        if options && a == "--add-dir" {
            if let Some(d) = rest.next() {
                roots.push(d);
            }
        } else if let Some(d) = a.strip_prefix("--add-dir=").filter(|_| options) {
            roots.push(d.to_owned());
        } else {
            out.push(a);
        }
    }
    if roots.is_empty() {
        return out;
    }
    // A TOML array of basic strings: JSON's string escapes are TOML's, and
    // TOML also refuses DEL as it is.
    let list: Vec<String> = roots
        .iter()
        .map(|r| {
            serde_json::Value::from(r.as_str())
                .to_string()
                .replace('\u{7f}', "\\u007F")
        })
        .collect();
    let at = exec + 1 + usize::from(resume);
    out.insert(at, "-c".into());
    out.insert(at + 1, format!("{CODEX_ROOTS}=[{}]", list.join(", ")));
    out
}

/// Whether the command's options (before a `--`; a prompt may quote the
/// key) set codex's `writable_roots` themselves (`-c KEY=...`, `-cKEY=...`,
/// `--config KEY=...`, `--config=KEY=...`).
fn sets_roots(argv: &[String]) -> bool {
    let mut it = argv.iter().take_while(|a| *a != "--").peekable();
    while let Some(a) = it.next() {
        let value = match a.as_str() {
            "-c" | "--config" => it.peek().map(|v| v.as_str()),
            _ => a
                .strip_prefix("--config=")
                .or_else(|| a.strip_prefix("-c").filter(|v| !v.is_empty())),
        };
        if value.is_some_and(|v| v.trim_start().starts_with(CODEX_ROOTS)) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A tree at `/r` whose run directory is below the root but not below
    /// `/r/sub`.
    const RUN: &str = "/r/tasks/assigned/t.run/1";

    #[test]
    fn below_the_start_nothing_is_added() {
        for (kind, program) in [
            (Kind::Claude, "claude"),
            (Kind::Gemini, "gemini"),
            (Kind::Codex, "codex"),
            (Kind::Aider, "aider"),
        ] {
            let argv = v(&[program, "exec", "-p", "--", "hi"]);
            assert_eq!(
                with_run_dir(&kind, argv.clone(), Path::new(RUN), Path::new("/r")),
                argv
            );
        }
    }

    #[test]
    fn claude_and_gemini_get_the_dir_glued_to_its_option() {
        let claude = v(&["claude", "-p", "--output-format", "json", "--", "-v hi"]);
        assert_eq!(
            with_run_dir(&Kind::Claude, claude, Path::new(RUN), Path::new("/r/sub")),
            v(&[
                "claude",
                "-p",
                "--output-format",
                "json",
                "--add-dir=/r/tasks/assigned/t.run/1",
                "--",
                "-v hi"
            ])
        );
        // No `--`: just after the program, where the `=` form cannot take
        // the prompt for a second directory.
        let gemini = v(&["gemini", "--skip-trust", "--prompt=hi"]);
        assert_eq!(
            with_run_dir(&Kind::Gemini, gemini, Path::new(RUN), Path::new("/r/sub")),
            v(&[
                "gemini",
                "--include-directories=/r/tasks/assigned/t.run/1",
                "--skip-trust",
                "--prompt=hi"
            ])
        );
        // Other kinds are left alone.
        let aider = v(&["aider", "--message", "hi"]);
        assert_eq!(
            with_run_dir(
                &Kind::Aider,
                aider.clone(),
                Path::new(RUN),
                Path::new("/r/sub")
            ),
            aider
        );
        // And so are wrappers; a program named by its path is the CLI.
        let wrapped = v(&["sh", "-c", "claude -p \"$0\"", "hi"]);
        let run = Path::new(RUN);
        let sub = Path::new("/r/sub");
        assert_eq!(
            with_run_dir(&Kind::Claude, wrapped.clone(), run, sub),
            wrapped
        );
        // gemini splits at commas: no grant, rather than a wider one.
        let comma = v(&["gemini", "--prompt=hi"]);
        let at = Path::new("/r/tasks/assigned/a,b.run/1");
        assert_eq!(with_run_dir(&Kind::Gemini, comma.clone(), at, sub), comma);
        let full = v(&["/usr/local/bin/gemini", "--prompt=hi"]);
        assert_eq!(
            with_run_dir(&Kind::Gemini, full, run, sub)[1],
            "--include-directories=/r/tasks/assigned/t.run/1"
        );
    }

    #[test]
    fn codex_gets_one_writable_roots_list_with_its_own_add_dirs() {
        let argv = v(&[
            "codex",
            "exec",
            "--json",
            "--add-dir",
            "/data",
            "--add-dir=/more",
            "--sandbox",
            "workspace-write",
            "--",
            "--add-dir",
            "is the prompt",
        ]);
        assert_eq!(
            with_run_dir(&Kind::Codex, argv, Path::new(RUN), Path::new("/r/sub")),
            v(&[
                "codex",
                "exec",
                "-c",
                r#"sandbox_workspace_write.writable_roots=["/r/tasks/assigned/t.run/1", "/data", "/more"]"#,
                "--json",
                "--sandbox",
                "workspace-write",
                "--",
                "--add-dir",
                "is the prompt"
            ])
        );
        // A resume below the start: its `--add-dir` (which `exec resume`
        // refuses) becomes the setting; a new run keeps it as it is.
        let resume = v(&["codex", "exec", "resume", "--add-dir", "/d", "id", "go on"]);
        assert_eq!(
            with_run_dir(&Kind::Codex, resume, Path::new(RUN), Path::new("/r")),
            v(&[
                "codex",
                "exec",
                "resume",
                "-c",
                r#"sandbox_workspace_write.writable_roots=["/d"]"#,
                "id",
                "go on"
            ])
        );
        let new = v(&["codex", "exec", "--add-dir", "/d", "hi"]);
        assert_eq!(
            with_run_dir(&Kind::Codex, new.clone(), Path::new(RUN), Path::new("/r")),
            new
        );
        // A prompt that quotes the key is no setting.
        let quoted = v(&[
            "codex",
            "exec",
            "--",
            "set sandbox_workspace_write.writable_roots",
        ]);
        assert_eq!(
            with_run_dir(&Kind::Codex, quoted, Path::new(RUN), Path::new("/r/sub"))[2],
            "-c"
        );
        // Its own setting wins, in each of its forms.
        for own in [
            &["-c", "sandbox_workspace_write.writable_roots=[]"][..],
            &["-csandbox_workspace_write.writable_roots=[]"],
            &["--config=sandbox_workspace_write.writable_roots=[]"],
        ] {
            let own = [&["codex", "exec"][..], own, &["hi"]].concat();
            let own = v(&own);
            let got = with_run_dir(
                &Kind::Codex,
                own.clone(),
                Path::new(RUN),
                Path::new("/r/sub"),
            );
            assert_eq!(got, own);
        }
        // A path with a quote or DEL is escaped.
        for (dir, want) in [
            (
                "/r/a\"b/1",
                r#"sandbox_workspace_write.writable_roots=["/r/a\"b/1"]"#,
            ),
            (
                "/r/a\u{7f}b/1",
                r#"sandbox_workspace_write.writable_roots=["/r/a\u007Fb/1"]"#,
            ),
        ] {
            let got = with_run_dir(
                &Kind::Codex,
                v(&["codex", "exec", "hi"]),
                Path::new(dir),
                Path::new("/r/sub"),
            );
            assert_eq!(got[3], want, "{dir:?}");
        }
    }
}
