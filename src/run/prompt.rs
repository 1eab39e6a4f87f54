//! The prompt: what an agent is told. A template renders the task's
//! description with the files it asked for (each capped), the shared context
//! (project overview and current state) when the agent or the task wants it,
//! and short instructions on reporting back through files.

use crate::parse::config::{Agent, Config};
use crate::parse::task::Task;
use crate::tree::layout::Layout;

/// The template agents use unless they set `prompt_template`.
pub const DEFAULT_TEMPLATE: &str = "{description}\n{context}{instructions}";

/// The instructions appended by `{instructions}`.
const INSTRUCTIONS: &str = "\n---\n## Reporting back (from mailroom)\n\n\
- This is task `{task}`. Write your result to the file named by $MAILROOM_OUTPUT{output} (or print it on stdout).\n\
- To hand on work, write task files (YAML, e.g. `description: ...`) into the directory $MAILROOM_OUTBOX{outbox}: \
they are queued only if this task succeeds. `mailroom add \"...\"` queues one at once.\n\
- End with a short summary between [SUMMARY] and [/SUMMARY]; the next agents read it in context/current_state.md.\n";

/// The reporting instructions for task `name` (what `{instructions}` gives),
/// with the run's own paths when `run_dir` is known: an agent that may
/// write files but not run a shell (claude's `acceptEdits`) cannot look
/// the variables up.
pub fn instructions(name: &str, run_dir: Option<&std::path::Path>) -> String {
    let at = |p: std::path::PathBuf| format!(" (`{}`)", p.display());
    INSTRUCTIONS
        .replace("{task}", name)
        .replace(
            "{output}",
            &run_dir.map(|d| at(d.join("output.md"))).unwrap_or_default(),
        )
        .replace(
            "{outbox}",
            &run_dir.map(|d| at(d.join("outbox"))).unwrap_or_default(),
        )
}

/// The shared context files, relative to the root.
pub const SHARED: [&str; 2] = ["context/project_overview.md", "context/current_state.md"];

/// Renders the prompt for `task` on `agent`. An error names what is wrong
/// (a missing or escaping context file) and fails the task without a run.
pub fn render(
    layout: &Layout,
    config: &Config,
    agent: &Agent,
    task: &Task,
    run_dir: Option<&std::path::Path>,
) -> Result<String, String> {
    let template = agent.prompt_template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
    // Checked before any file is read: nothing of the task can mend it.
    if template.contains('\0') {
        return Err(format!(
            "the prompt_template of agent `{}` has a NUL byte, which a prompt cannot carry",
            agent.name
        ));
    }
    // A listed file must exist, except the shared ones: current_state.md only
    // appears after the first finished task, and the overview is optional.
    // (file, required, added by mailroom rather than listed by the task)
    let mut files: Vec<(&str, bool, bool)> = task
        .context_files
        .iter()
        .map(|f| (f.as_str(), !SHARED.contains(&f.as_str()), false))
        .collect();
    if agent.include_context || task.context_required {
        for s in SHARED {
            if !files.iter().any(|(f, _, _)| *f == s) {
                files.push((s, false, true));
            }
        }
    }
    let mut context = String::new();
    let mut budget = config.context_max_bytes.saturating_mul(4);
    for (f, required, implicit) in files {
        let path = match resolve(layout, config, f) {
            Ok(p) => p,
            // The shared files the task did not ask for are no reason to fail
            // it: a link planted at `context/current_state.md` (derived data,
            // set aside at the next merge) is only left out.
            Err(e) if implicit => {
                tracing::warn!(task = %task.name, "{e}; left out of the prompt");
                None
            }
            Err(e) => return Err(e),
        };
        let Some(path) = path else {
            if required {
                return Err(format!(
                    "context file `{f}` does not exist (listed in `context_files`)"
                ));
            }
            continue;
        };
        let cap = config.context_max_bytes.min(budget);
        let (bytes, cut) = crate::tree::fsx::read_head(&path, cap)
            .map_err(|e| format!("context file `{f}` cannot be read: {e}"))?;
        budget = budget.saturating_sub(bytes.len() as u64);
        let text = String::from_utf8_lossy(&bytes);
        // The shared files are mailroom's (derived from what agents said,
        // and writable by them): cleaned of control characters. A file the
        // task lists is given as it is, but a NUL (a binary or UTF-16 file,
        // as a rule) could not reach an agent that takes its prompt as an
        // argument: for such an agent the task fails, naming the file.
        let text = if SHARED.contains(&f) {
            crate::tree::context::clean(&text)
        } else if let Some(at) = text.find('\0')
            && crate::run::process::prompt_in_argv(&agent.command)
        {
            return Err(format!(
                "context file `{f}` has a NUL byte (at byte {at}; a binary or UTF-16 file?), \
                 which a prompt given as an argument cannot carry (listed in `context_files`; \
                 an agent given {{prompt_file}} can take it)"
            ));
        } else {
            text
        };
        context.push_str(&format!("\n---\n## Context: {f}\n\n{}\n", text.trim_end()));
        if cut {
            let total = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            context.push_str(&format!(
                "\n[mailroom: truncated, showing {} of {total} bytes of {f}]\n",
                bytes.len()
            ));
        }
    }
    if agent.include_context || task.context_required {
        context.push_str(&excerpts(
            layout,
            config.context_max_bytes.min(budget).saturating_sub(512),
        ));
    }
    let instructions = instructions(&task.name, run_dir);
    Ok(substitute(
        template,
        &[
            ("description", &task.description),
            ("context", &context),
            ("instructions", &instructions),
            ("task", &task.name),
        ],
    ))
}

/// The section with excerpts of recent outputs that carry no `[SUMMARY]`
/// (whose summary `current_state.md` would otherwise show), within `max` bytes.
fn excerpts(layout: &Layout, max: u64) -> String {
    let list = crate::tree::context::output_excerpts(layout, max);
    if list.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n---\n## Context: recent outputs without a [SUMMARY] (excerpts)\n\n\
         The head and tail of what these agents produced; the whole of each is in \
         context/agent_outputs/.\n",
    );
    for e in list {
        s.push_str(&format!(
            "\n### {} ({}, context/agent_outputs/{}.md)\n\n{}\n",
            e.task, e.status, e.task, e.text
        ));
    }
    s
}

/// What would keep the task's listed `context_files` out of its prompt now
/// (a file missing, leading out of the root, not a regular file): for
/// `validate` and `add` to say before the task fails as `invalid`. A file
/// may still appear before the task starts (a dependency writes it).
pub fn context_file_problems(layout: &Layout, config: &Config, task: &Task) -> Vec<String> {
    task.context_files
        .iter()
        .filter(|f| !SHARED.contains(&f.as_str()))
        .filter_map(|f| match resolve(layout, config, f) {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!(
                "context file `{f}` does not exist (yet): the task fails as `invalid` unless \
                 it is there when the task starts"
            )),
            Err(e) => Some(format!("{e}: the task would fail as `invalid`")),
        })
        .collect()
}

/// A context file's path: inside the root (after symlinks) unless the config
/// allows more; `None` when it does not exist.
fn resolve(
    layout: &Layout,
    config: &Config,
    f: &str,
) -> Result<Option<std::path::PathBuf>, String> {
    crate::parse::task::check_relative_path(f).map_err(|e| format!("context file: {e}"))?;
    let p = layout.root.join(f);
    // As a rule no name below the root is a link, and then the path is
    // already what `canonicalize` would give (below the root): one `lstat`
    // per name instead of a `readlink` of every name from `/`.
    match unlinked_below(&layout.root, f) {
        Below::Missing => return Ok(None),
        Below::File => return Ok(Some(p)),
        Below::NotFile => return Err(format!("context file `{f}` is not a regular file")),
        Below::Linked => {}
    }
    match p.canonicalize() {
        Ok(c) if c.starts_with(&layout.root) || config.context_outside_root => {
            if c.is_file() {
                Ok(Some(c))
            } else {
                Err(format!("context file `{f}` is not a regular file"))
            }
        }
        Ok(_) => Err(format!(
            "context file `{f}` leads outside the root (through a symlink); \
             set `context_outside_root: true` to allow it"
        )),
        Err(_) => Ok(None),
    }
}

/// What the names of `rel` below `root` are, looked at without following links.
enum Below {
    Missing,
    /// No link on the way, and a regular file at its end.
    File,
    /// No link on the way, and something else at its end.
    NotFile,
    /// A link somewhere: only `canonicalize` can tell where it leads.
    Linked,
}

fn unlinked_below(root: &std::path::Path, rel: &str) -> Below {
    let mut cur = root.to_path_buf();
    let mut last = None;
    for c in std::path::Path::new(rel).components() {
        let std::path::Component::Normal(c) = c else {
            return Below::Linked;
        };
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Below::Linked,
            Ok(m) => last = Some(m),
            Err(_) => return Below::Missing,
        }
    }
    match last {
        Some(m) if m.is_file() => Below::File,
        Some(_) => Below::NotFile,
        None => Below::Linked,
    }
}

fn substitute(template: &str, vars: &[(&str, &str)]) -> String {
    crate::run::process::substitute_with(template, |k| {
        vars.iter().find(|(name, _)| *name == k).map(|(_, v)| *v)
    })
}

/// The description part of a rendered prompt (what precedes the first
/// section mailroom added), for agents that want only the task itself.
pub fn description_part(prompt: &str) -> &str {
    prompt
        .split("\n---\n## ")
        .next()
        .unwrap_or(prompt)
        .trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(tag: &str) -> (Layout, Config) {
        let d = std::env::temp_dir().join(format!("mailroom-prompt-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let layout = Layout::new(&d);
        layout.ensure().unwrap();
        let layout = Layout::new(&d.canonicalize().unwrap());
        std::fs::write(
            layout.context.join("project_overview.md"),
            "Project: Test System\n",
        )
        .unwrap();
        (layout, Config::default())
    }

    fn task(y: &str) -> Task {
        crate::parse::task::parse("t", y.as_bytes()).unwrap()
    }

    #[test]
    fn renders_description_context_caps_and_instructions() {
        let (layout, mut config) = setup("render");
        config.context_max_bytes = 10;
        std::fs::write(layout.root.join("notes.md"), "0123456789ABCDEF").unwrap();
        let agent = config.agents["demo"].clone();
        let p = render(
            &layout,
            &config,
            &agent,
            &task("description: do {task} $(x)\ncontext_files: [notes.md]\n"),
            Some(std::path::Path::new("/r/tasks/assigned/t.run/1")),
        )
        .unwrap();
        assert!(p.starts_with("do {task} $(x)\n"), "{p}");
        assert!(p.contains("## Context: notes.md\n\n0123456789\n"), "{p}");
        assert!(
            p.contains("[mailroom: truncated, showing 10 of 16 bytes of notes.md]"),
            "{p}"
        );
        assert!(
            p.contains("## Context: context/project_overview.md\n\nProject: T\n"),
            "{p}"
        );
        assert!(p.contains("$MAILROOM_OUTBOX"), "{p}");
        // The run's own paths, for an agent that cannot run a shell.
        assert!(
            p.contains("$MAILROOM_OUTPUT (`/r/tasks/assigned/t.run/1/output.md`)"),
            "{p}"
        );
        assert!(
            p.contains("$MAILROOM_OUTBOX (`/r/tasks/assigned/t.run/1/outbox`)"),
            "{p}"
        );
        assert!(p.contains("[SUMMARY]"), "{p}");
        assert_eq!(description_part(&p), "do {task} $(x)");
        std::fs::remove_dir_all(&layout.root).unwrap();
    }

    #[test]
    fn missing_and_escaping_context_files_are_errors() {
        let (layout, config) = setup("missing");
        let agent = config.agents["demo"].clone();
        let e = render(
            &layout,
            &config,
            &agent,
            &task("description: x\ncontext_files: [nope.md]\n"),
            None,
        )
        .unwrap_err();
        assert!(e.contains("`nope.md` does not exist"), "{e}");
        std::os::unix::fs::symlink("/etc/hostname", layout.root.join("esc.md")).unwrap();
        let e = render(
            &layout,
            &config,
            &agent,
            &task("description: x\ncontext_files: [esc.md]\n"),
            None,
        )
        .unwrap_err();
        assert!(e.contains("leads outside the root"), "{e}");
        // A link on the way, not at the end, is followed too.
        std::os::unix::fs::symlink("/etc", layout.root.join("etc")).unwrap();
        let e = render(
            &layout,
            &config,
            &agent,
            &task("description: x\ncontext_files: [etc/hostname]\n"),
            None,
        )
        .unwrap_err();
        assert!(e.contains("leads outside the root"), "{e}");
        std::fs::create_dir_all(layout.root.join("docs/sub")).unwrap();
        let e = render(
            &layout,
            &config,
            &agent,
            &task("description: x\ncontext_files: [docs/sub]\n"),
            None,
        )
        .unwrap_err();
        assert!(e.contains("`docs/sub` is not a regular file"), "{e}");
        std::fs::remove_dir_all(&layout.root).unwrap();
    }

    #[test]
    fn context_files_below_the_root_are_read_through_links_that_stay_inside() {
        let (layout, config) = setup("inside");
        let agent = config.agents["demo"].clone();
        std::fs::create_dir_all(layout.root.join("docs/sub")).unwrap();
        std::fs::write(layout.root.join("docs/sub/a.md"), "plain file\n").unwrap();
        std::os::unix::fs::symlink("sub/a.md", layout.root.join("docs/b.md")).unwrap();
        std::os::unix::fs::symlink("docs/sub", layout.root.join("linked")).unwrap();
        std::fs::write(layout.root.join("docs/sub/c.md"), "through a dir link\n").unwrap();
        let p = render(
            &layout,
            &config,
            &agent,
            &task("description: x\ncontext_files: [docs/sub/a.md, docs/b.md, linked/c.md]\n"),
            None,
        )
        .unwrap();
        assert!(p.contains("## Context: docs/sub/a.md\n\nplain file"), "{p}");
        assert!(p.contains("## Context: docs/b.md\n\nplain file"), "{p}");
        assert!(
            p.contains("## Context: linked/c.md\n\nthrough a dir link"),
            "{p}"
        );
        std::fs::remove_dir_all(&layout.root).unwrap();
    }

    #[test]
    fn a_plain_template_sends_the_description_alone() {
        let (layout, config) = setup("plain");
        let mut agent = config.agents["demo"].clone();
        agent.prompt_template = Some("{description}".into());
        let p = render(
            &layout,
            &config,
            &agent,
            &task("description: exactly this\n"),
            None,
        )
        .unwrap();
        assert_eq!(p, "exactly this");
        std::fs::remove_dir_all(&layout.root).unwrap();
    }
}
