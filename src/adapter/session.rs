//! Sessions: how a run starts or continues its CLI's conversation. Pure: the
//! agent's command template in, the template with the CLI's session options
//! out (placeholders are filled in afterwards, as for any run).
//!
//! - claude (checked with Claude Code 2.1.197, `claude --help`): `--session-id
//!   <uuid>` names a new session, so a run that is cut off before claude prints
//!   its result still has a known session; `--resume <id>` continues one under
//!   the same id; `--resume <id> --fork-session --session-id <uuid>` starts a
//!   new session from a copy of another's conversation.
//! - codex (0.171.0, `codex exec resume --help`): `codex exec resume [OPTIONS]
//!   [SESSION_ID] [PROMPT]`; the session id is the thread id of `exec --json`'s
//!   `thread.started` event. Every option of the presets' `exec` is accepted by
//!   `exec resume` too, except `--sandbox`/`-s`, which becomes the same setting
//!   as a config override (`-c sandbox_mode="..."`).
//! - gemini (0.61.0, `gemini --help`): `--session-id <uuid>` starts a session
//!   under that id, `--resume <id>` continues one (no fork: a parent's session
//!   is continued).
//!
//! A command that already sets a session itself (`--resume`, `--continue`,
//! `--session-id`, ...) is left alone.

use super::Kind;

/// The `kind:` names whose CLI sessions mailroom can start with a known id and
/// resume.
pub const RESUMABLE: &[&str] = &["claude", "codex", "gemini"];

/// Whether agents of `kind` (a configured `kind:` name) can resume sessions.
pub fn can_resume(kind: &str) -> bool {
    RESUMABLE.contains(&kind.trim().to_ascii_lowercase().as_str())
}

/// How a run uses its CLI's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// A new session, under this id when the CLI takes one (claude).
    New(String),
    /// Continue this session (the previous attempt's, cut off).
    Resume(String),
    /// A new session, `id` if the CLI takes one, that starts from the
    /// conversation of `from` (a parent task's session).
    Fork { from: String, id: String },
}

/// Options that mean the command manages its session itself.
const CLAUDE_OWN: &[&str] = &[
    "--resume",
    "-r",
    "--continue",
    "-c",
    "--session-id",
    "--fork-session",
    "--no-session-persistence",
];

/// The command template of `kind` with the options for `session`, or None
/// when this kind cannot do that, or the command sets a session itself (the
/// run then goes on as configured: a new session the CLI names itself).
pub fn command(kind: &Kind, template: &[String], session: &Session) -> Option<Vec<String>> {
    match kind {
        Kind::Claude => claude(template, session),
        Kind::Codex => codex(template, session),
        Kind::Gemini => gemini(template, session),
        _ => None,
    }
}

/// Where options go: before a `--` (which ends claude's and codex's options),
/// else before the first argument that carries the prompt, else at the end
/// (the prompt is then appended after them).
fn option_slot(t: &[String]) -> usize {
    t.iter()
        .position(|a| a == "--")
        .or_else(|| {
            t.iter()
                .position(|a| a.contains("{prompt}") || a.contains("{prompt_file}"))
        })
        .unwrap_or(t.len())
}

fn claude(t: &[String], s: &Session) -> Option<Vec<String>> {
    let opts: Vec<String> = match s {
        Session::New(id) => vec!["--session-id".into(), id.clone()],
        Session::Resume(id) => vec!["--resume".into(), id.clone()],
        Session::Fork { from, id } => vec![
            "--resume".into(),
            from.clone(),
            "--fork-session".into(),
            "--session-id".into(),
            id.clone(),
        ],
    };
    with_options(t, CLAUDE_OWN, opts)
}

/// `t` with `opts` at its option slot, or None when `t` already manages its
/// session (one of `own`, or `--resume=`/`--session-id=`).
fn with_options(t: &[String], own: &[&str], opts: Vec<String>) -> Option<Vec<String>> {
    if t.iter().any(|a| {
        own.contains(&a.as_str()) || a.starts_with("--resume=") || a.starts_with("--session-id=")
    }) {
        return None;
    }
    let at = option_slot(t);
    let mut v = t[..at].to_vec();
    v.extend(opts);
    v.extend_from_slice(&t[at..]);
    Some(v)
}

/// Options that mean a gemini command manages its session itself.
const GEMINI_OWN: &[&str] = &["--resume", "-r", "--session-id", "--session-file"];

fn gemini(t: &[String], s: &Session) -> Option<Vec<String>> {
    let opts: Vec<String> = match s {
        Session::New(id) => vec!["--session-id".into(), id.clone()],
        // No fork: the parent's session is continued.
        Session::Resume(id) | Session::Fork { from: id, .. } => vec!["--resume".into(), id.clone()],
    };
    with_options(t, GEMINI_OWN, opts)
}

fn codex(t: &[String], s: &Session) -> Option<Vec<String>> {
    let id = match s {
        // codex names its sessions itself.
        Session::New(_) => return None,
        // No fork from the command line: the parent's session is continued.
        Session::Resume(id) | Session::Fork { from: id, .. } => id,
    };
    let exec = t.iter().position(|a| a == "exec")?;
    if t.get(exec + 1).is_some_and(|a| a == "resume") || t.iter().any(|a| a == "--last") {
        return None;
    }
    let mut v: Vec<String> = Vec::with_capacity(t.len() + 2);
    v.extend_from_slice(&t[..=exec]);
    v.push("resume".into());
    let mut rest = t[exec + 1..].iter().peekable();
    let mut options_done = false;
    while let Some(a) = rest.next() {
        if a == "--" {
            options_done = true;
        }
        let mode = if options_done {
            None
        } else if a == "--sandbox" || a == "-s" {
            rest.next().cloned()
        } else {
            a.strip_prefix("--sandbox=").map(str::to_owned)
        };
        match mode {
            Some(m) => {
                v.push("-c".into());
                v.push(format!("sandbox_mode={m:?}"));
            }
            None => v.push(a.clone()),
        }
    }
    // SESSION_ID is the first positional: after `--` when there is one, else
    // just before the prompt.
    let at = match v.iter().position(|a| a == "--") {
        Some(i) => i + 1,
        None => option_slot(&v),
    };
    v.insert(at, id.clone());
    Some(v)
}

/// The prompt of an attempt that resumes a session cut off by `why`: the
/// conversation is there already, so only the go-on and the reporting
/// instructions (the new attempt's files) are sent.
pub fn continuation_prompt(why: &str, instructions: &str) -> String {
    format!(
        "Your previous run of this task was cut off ({why}) before it finished. \
         The conversation so far is above; a command or tool call that was still running \
         then was stopped and did not finish (its result may be missing from the \
         conversation): do not simply run it again as it was. Continue where you left off \
         and finish the task.\n{instructions}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    /// The command of examples/presets/claude/mailroom.yaml.
    const CLAUDE: &[&str] = &[
        "claude",
        "-p",
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
        "--",
        "{prompt}",
    ];
    /// The command of examples/presets/codex/mailroom.yaml.
    const CODEX: &[&str] = &[
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--sandbox",
        "workspace-write",
        "-o",
        "{output_file}",
        "--",
        "{prompt}",
    ];

    #[test]
    fn claude_options_go_before_the_end_of_options() {
        let t = argv(CLAUDE);
        let new = command(&Kind::Claude, &t, &Session::New("u1".into())).unwrap();
        assert_eq!(
            new,
            argv(&[
                "claude",
                "-p",
                "--output-format",
                "json",
                "--permission-mode",
                "acceptEdits",
                "--session-id",
                "u1",
                "--",
                "{prompt}"
            ])
        );
        let r = command(&Kind::Claude, &t, &Session::Resume("s1".into())).unwrap();
        assert_eq!(&r[6..], &argv(&["--resume", "s1", "--", "{prompt}"])[..]);
        let f = command(
            &Kind::Claude,
            &t,
            &Session::Fork {
                from: "p1".into(),
                id: "u2".into(),
            },
        )
        .unwrap();
        assert_eq!(
            &f[6..],
            &argv(&[
                "--resume",
                "p1",
                "--fork-session",
                "--session-id",
                "u2",
                "--",
                "{prompt}"
            ])[..]
        );
        // Without `--`: before the prompt; without a prompt argument: at the end.
        let t = argv(&["claude", "-p", "{prompt}"]);
        let r = command(&Kind::Claude, &t, &Session::Resume("s".into())).unwrap();
        assert_eq!(r, argv(&["claude", "-p", "--resume", "s", "{prompt}"]));
        let t = argv(&["claude", "-p"]);
        let r = command(&Kind::Claude, &t, &Session::Resume("s".into())).unwrap();
        assert_eq!(r, argv(&["claude", "-p", "--resume", "s"]));
    }

    #[test]
    fn a_command_that_manages_its_session_is_left_alone() {
        for own in [
            &["claude", "-p", "--continue", "{prompt}"][..],
            &["claude", "-p", "--session-id=x", "{prompt}"][..],
            &["claude", "-p", "-r", "x", "{prompt}"][..],
        ] {
            assert_eq!(
                command(&Kind::Claude, &argv(own), &Session::Resume("s".into())),
                None
            );
        }
        let t = argv(&["codex", "exec", "resume", "--last", "{prompt}"]);
        assert_eq!(
            command(&Kind::Codex, &t, &Session::Resume("s".into())),
            None
        );
    }

    #[test]
    fn codex_resumes_with_the_id_as_first_positional_and_its_sandbox_as_config() {
        let t = argv(CODEX);
        assert_eq!(command(&Kind::Codex, &t, &Session::New("u".into())), None);
        let r = command(&Kind::Codex, &t, &Session::Resume("th-1".into())).unwrap();
        assert_eq!(
            r,
            argv(&[
                "codex",
                "exec",
                "resume",
                "--json",
                "--skip-git-repo-check",
                "-c",
                "sandbox_mode=\"workspace-write\"",
                "-o",
                "{output_file}",
                "--",
                "th-1",
                "{prompt}"
            ])
        );
        // Options before `exec` (`-c key=value`) stay; no `--`: the id goes
        // before the prompt.
        let t = argv(&[
            "codex",
            "-c",
            "a=b",
            "exec",
            "--sandbox=read-only",
            "{prompt}",
        ]);
        let r = command(
            &Kind::Codex,
            &t,
            &Session::Fork {
                from: "p".into(),
                id: "x".into(),
            },
        )
        .unwrap();
        assert_eq!(
            r,
            argv(&[
                "codex",
                "-c",
                "a=b",
                "exec",
                "resume",
                "-c",
                "sandbox_mode=\"read-only\"",
                "p",
                "{prompt}"
            ])
        );
        // A prompt after `--` that looks like `--sandbox` is the prompt.
        let t = argv(&["codex", "exec", "--", "--sandbox"]);
        let r = command(&Kind::Codex, &t, &Session::Resume("s".into())).unwrap();
        assert_eq!(
            r,
            argv(&["codex", "exec", "resume", "--", "s", "--sandbox"])
        );
    }

    #[test]
    fn gemini_takes_a_session_id_and_resumes_before_its_prompt() {
        let t = argv(&[
            "gemini",
            "--skip-trust",
            "--output-format",
            "json",
            "--prompt={prompt}",
        ]);
        let n = command(&Kind::Gemini, &t, &Session::New("u".into())).unwrap();
        assert_eq!(
            &n[4..],
            &argv(&["--session-id", "u", "--prompt={prompt}"])[..]
        );
        let r = command(&Kind::Gemini, &t, &Session::Resume("s".into())).unwrap();
        assert_eq!(&r[4..], &argv(&["--resume", "s", "--prompt={prompt}"])[..]);
        let f = command(
            &Kind::Gemini,
            &t,
            &Session::Fork {
                from: "p".into(),
                id: "x".into(),
            },
        )
        .unwrap();
        assert_eq!(&f[4..], &argv(&["--resume", "p", "--prompt={prompt}"])[..]);
        let own = argv(&["gemini", "--resume", "latest", "--prompt={prompt}"]);
        assert_eq!(
            command(&Kind::Gemini, &own, &Session::Resume("s".into())),
            None
        );
    }

    #[test]
    fn other_kinds_cannot_resume() {
        for k in [Kind::Aider, Kind::Cursor] {
            assert_eq!(
                command(&k, &argv(&["x", "{prompt}"]), &Session::Resume("s".into())),
                None
            );
        }
        assert!(can_resume("claude") && can_resume("Codex") && can_resume("gemini"));
        assert!(!can_resume("aider") && !can_resume("cursor-agent"));
    }
}
