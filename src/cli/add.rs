//! `mailroom add`: a new task file through `tasks/tmp/` into `pending/` (inside an agent: with its parent and the runaway limits).

use crate::parse::config::Config;
use crate::parse::task;
use crate::tree::fsx;
use crate::tree::layout::Layout;
use crate::tree::moves;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::Read;
use std::path::Path;

#[derive(Serialize)]
struct NewTask<'a> {
    description: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    after: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    labels: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    context_files: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    workdir: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<&'a str>,
}

/// Arguments of `mailroom add`.
pub struct AddArgs<'a> {
    pub description: Option<&'a str>,
    pub agent: Option<&'a str>,
    pub priority: Option<&'a str>,
    pub name: Option<&'a str>,
    pub file: Option<&'a Path>,
    pub after: &'a [String],
    pub timeout: Option<&'a str>,
    /// The task file's other keys, from the flags of the same names.
    pub more: More<'a>,
}

/// The keys of a task file that `add` takes as flags besides the common
/// ones (`--retries`, `--delay`, `--not-before`, `--label`, `--context`,
/// `--workdir`).
#[derive(Default)]
pub struct More<'a> {
    pub retries: Option<u32>,
    pub delay: Option<&'a str>,
    pub not_before: Option<&'a str>,
    pub labels: &'a [String],
    pub context_files: &'a [String],
    pub workdir: Option<&'a str>,
}

impl More<'_> {
    /// The flags given, as `--flag` names (they go with a DESCRIPTION).
    fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (set, flag) in [
            (self.retries.is_some(), "--retries"),
            (self.delay.is_some(), "--delay"),
            (self.not_before.is_some(), "--not-before"),
            (!self.labels.is_empty(), "--label"),
            (!self.context_files.is_empty(), "--context"),
            (self.workdir.is_some(), "--workdir"),
        ] {
            if set {
                v.push(flag);
            }
        }
        v
    }
}

/// `mailroom add`: returns the new task's name.
pub fn add(root: &Path, a: AddArgs) -> Result<String> {
    let layout = Layout::new(root);
    if !layout.pending.is_dir() {
        super::not_a_root(&layout.pending)?;
        bail!(
            "{} has no tasks/pending/; run `mailroom init` there first, or pass --root",
            root.display()
        );
    }
    fsx::create_dir_all(&layout.tmp)?;
    // A file keeps its extension (.yaml, .yml or .md); a description is YAML.
    let ext = a
        .file
        .and_then(|f| f.extension())
        .and_then(|e| e.to_str())
        .and_then(task::task_ext)
        .unwrap_or("yaml");
    let parent = std::env::var("MAILROOM_TASK")
        .ok()
        .filter(|p| task::check_name(p).is_ok());
    // Inside an agent: the tree of follow-ups may not grow past max_tree_depth.
    if let Some(p) = &parent
        && let Ok(config) = Config::load(root)
    {
        let (tree, depth) = crate::tree::outbox::tree_root(&layout, p, config.max_tree_depth);
        if depth + 1 > config.max_tree_depth {
            bail!(
                "a task added by `{p}` would sit {} levels deep; the limit is {} (max_tree_depth)",
                depth + 1,
                config.max_tree_depth
            );
        }
        crate::tree::outbox::count_into_tree(&layout, &tree, 1, config.max_tree_tasks)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if a.file.is_some()
        && (a.agent.is_some()
            || a.priority.is_some()
            || !a.after.is_empty()
            || a.timeout.is_some()
            || !a.more.given().is_empty())
    {
        bail!(
            "--agent, --priority, --after, --timeout and the other keys' flags go with a \
             DESCRIPTION; with --file, write them in the file"
        );
    }
    let config = Config::load(root);
    if let Some(ag) = a.agent {
        check_agent(root, &config, ag)?;
    }
    let (bytes, default_name) = match a.file {
        Some(f) => {
            check_task_file_name(f)?;
            let mut b = Vec::new();
            if f == Path::new("-") {
                std::io::stdin()
                    .take(task::DEFAULT_MAX_TASK_BYTES + 1)
                    .read_to_end(&mut b)?;
            } else {
                b = fsx::read_task_file(f, task::DEFAULT_MAX_TASK_BYTES)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
                    .0;
            }
            let stem = f
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|_| f != Path::new("-"))
                .map(str::to_owned);
            // Inside an agent, the new task records its parent.
            if let Some(p) = &parent
                && let Ok(text) = std::str::from_utf8(&b)
                && let Some(linked) = if ext == "md" {
                    crate::tree::outbox::with_links_md(text, "task", p)
                } else {
                    crate::tree::outbox::with_links(text, "task", p, None)
                }
            {
                b = linked.into_bytes();
            }
            (b, stem)
        }
        None => {
            let d = a.description.unwrap_or_default();
            if d.trim().is_empty() {
                bail!("the description is empty: say what the agent should do");
            }
            if let Some(p) = a.priority
                && task::Priority::parse(p).is_none()
            {
                bail!("--priority {p}: use high, normal or low");
            }
            if let Some(t) = a.timeout {
                task::parse_duration(t).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            }
            let after = split_after(&layout, a.after);
            // `--label a,b` as `--after a,b`: a list.
            let labels: Vec<String> = a.more.labels.iter().flat_map(|l| comma_list(l)).collect();
            let nt = NewTask {
                description: d,
                priority: a.priority,
                agent: a.agent,
                after: &after,
                timeout: a.timeout,
                retries: a.more.retries,
                delay: a.more.delay,
                not_before: a.more.not_before,
                labels: &labels,
                context_files: a.more.context_files,
                workdir: a.more.workdir,
                parent: parent.as_deref(),
            };
            let y = serde_saphyr::to_string(&nt).context("serialising the task")?;
            (y.into_bytes(), None)
        }
    };
    let explicit = a.name.map(str::to_owned).or(default_name.clone());
    let mut base = match &explicit {
        Some(n) => n.clone(),
        None => generated_name(a.description.unwrap_or("task")),
    };
    task::check_name(&base).map_err(|e| anyhow::anyhow!("task name `{base}`: {e}"))?;
    let t = match a.file {
        Some(f) => {
            let shown = if f == Path::new("-") {
                "<stdin>".to_owned()
            } else {
                f.display().to_string()
            };
            task::parse_as(&base, ext, &bytes)
                .map_err(|e| anyhow::anyhow!("{}", e.display_at(&shown)))?
        }
        // The YAML was written here from the flags: a position in it means
        // nothing to the user, the message names the flag's value (and the
        // flag, for the keys whose flag is not the key's name).
        None => task::parse_as(&base, ext, &bytes).map_err(|e| {
            let flag = match e.key {
                Some("not_before") => Some("--not-before"),
                Some("labels") => Some("--label"),
                Some("context_files") => Some("--context"),
                Some("delay") => Some("--delay"),
                Some("workdir") => Some("--workdir"),
                Some("retries") => Some("--retries"),
                _ => None,
            };
            match flag {
                Some(f) => anyhow::anyhow!("{f}: {}", e.message),
                None => anyhow::anyhow!("{}", e.message),
            }
        })?,
    };
    // From standard input without --name: named after its description, as
    // a DESCRIPTION is.
    if explicit.is_none() && a.file.is_some() {
        base = generated_name(&t.description);
    }
    check_after(&layout, &t.after)?;
    let defaults = Config::default();
    let c = config.as_ref().unwrap_or(&defaults);
    for w in crate::run::prompt::context_file_problems(&layout, c, &t) {
        eprintln!("mailroom: warning: {w}");
    }
    // A DESCRIPTION's --agent was checked above.
    if a.file.is_some()
        && let Some(ag) = &t.agent
    {
        check_agent(root, &config, ag)?;
    }
    for n in 1.. {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        if let Some((st, p, _)) = layout.locate(&name) {
            if explicit.is_some() {
                bail!(
                    "the name `{name}` is already used by {} ({}); choose another with --name",
                    layout.rel(&p),
                    st.dir_name()
                );
            }
            continue;
        }
        let tmp = layout.tmp.join(fsx::tmp_name(&name));
        let res = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            // Closed before the rename: a supervisor holds back a task whose
            // writer still has it open (a lease probe), which made `add`
            // slower than `cp` and tasks added in a row start out of order.
            drop(f);
            moves::submit(&layout, &tmp, &name, ext)
        })();
        match res {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && explicit.is_none() => {
                let _ = std::fs::remove_file(&tmp);
                continue;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).context("writing the task into tasks/pending/");
            }
        }
    }
    unreachable!("the name loop only ends by returning")
}

/// The items of a flag's value written as a list (`a,b`), trimmed, empty
/// ones left out.
fn comma_list(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
}

/// `--after a,b` as `--after a --after b` (as `--agents` takes a list),
/// unless a task of that very name exists (a name may hold a comma).
fn split_after(layout: &Layout, after: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for v in after {
        if v.contains(',') && layout.locate(v).is_none() {
            out.extend(comma_list(v));
        } else {
            out.push(v.clone());
        }
    }
    out
}

/// The dependencies of a new task: one that failed is refused (the task
/// would fail at once, "dependency failed"); one that does not exist is
/// said on stderr (the task waits until a task of that name is submitted
/// and completes, which may be what an agent queueing a chain means).
fn check_after(layout: &Layout, after: &[String]) -> Result<()> {
    use crate::tree::layout::State;
    for d in after {
        match layout.locate(d) {
            Some((State::Failed, p, _)) => bail!(
                "the task would run after `{d}`, which failed ({}): it would fail at once; \
                 retry that one first (`mailroom retry {d}`), or leave it out",
                layout.rel(&p)
            ),
            Some(_) => {}
            None => match crate::tree::books::diverted_as(layout, d) {
                Some(clash) => bail!(
                    "the task would run after `{d}`, which failed (filed as {clash}): it would \
                     fail at once; leave it out"
                ),
                None => eprintln!(
                    "mailroom: warning: no task `{d}` exists yet: the new task waits until one \
                     of that name is submitted and completes"
                ),
            },
        }
    }
    Ok(())
}

/// An agent named on the command line or in the file must exist in the
/// config, or the task would only fail later, in the supervisor.
fn check_agent(
    root: &Path,
    config: &Result<Config, crate::parse::config::ConfigError>,
    agent: &str,
) -> Result<()> {
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            // The file has an error, but its `agents:` may still say that
            // the agent is not there.
            if let Some(known) = agents_leniently(root)
                && !known.iter().any(|k| k == agent)
            {
                bail!(
                    "no agent `{agent}` in mailroom.yaml (agents: {}); the file also has an error: {e}",
                    names_or_none(&known)
                );
            }
            // Supervisors keep the config they had; the task may still run.
            eprintln!("mailroom: warning: cannot check agent `{agent}`: {e}");
            return Ok(());
        }
    };
    if config.agents.contains_key(agent) {
        return Ok(());
    }
    let known: Vec<&str> = config.agents.keys().map(String::as_str).collect();
    let hint = task::suggest(agent, &known)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    bail!(
        "no agent `{agent}` in mailroom.yaml{hint}; agents: {}",
        names_or_none(&known)
    )
}

/// `a, b, c`, or `none`.
fn names_or_none<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The agents' names in a `mailroom.yaml` that does not parse as a config:
/// its `agents:` keys, whatever else is wrong. `None` when not even that
/// can be read.
fn agents_leniently(root: &Path) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Lenient {
        agents: Option<std::collections::BTreeMap<String, serde::de::IgnoredAny>>,
    }
    let text = std::fs::read_to_string(root.join(crate::parse::config::CONFIG_FILE)).ok()?;
    let l: Lenient = serde_saphyr::from_str_with_options(&text, task::yaml_options()).ok()?;
    // Without `agents:`, the built-in ones.
    Some(match l.agents {
        Some(a) => a.into_keys().collect(),
        None => Config::default().agents.into_keys().collect(),
    })
}

/// `--file` takes a task file, told by its extension: anything else (say
/// /etc/passwd) would be read as one long description.
fn check_task_file_name(f: &Path) -> Result<()> {
    if f == Path::new("-") {
        return Ok(());
    }
    match f.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml" | "md") => Ok(()),
        _ => bail!(
            "{}: --file takes a task file (.yaml, .yml, or .md with front matter); to use a text file as the \
             description, run `mailroom add \"$(cat {})\"`",
            f.display(),
            f.display()
        ),
    }
}

/// A readable, time-ordered name: `<slug>-<yyyymmddThhmmss>`. The slug is
/// the description's first words, lower-cased, in whatever script they are
/// written (`héllo-wörld`, `日本語のタスク`), up to 32 characters; anything
/// but letters and digits separates words (so no slash, dot, space, control
/// or bidi character reaches the name). A first word longer than that is cut.
fn generated_name(desc: &str) -> String {
    const MAX_CHARS: usize = 32;
    let mut slug = String::new();
    let mut chars = 0;
    for w in desc
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let n = w.chars().count();
        let room = MAX_CHARS.saturating_sub(chars + usize::from(!slug.is_empty()));
        if n > room {
            if slug.is_empty() {
                slug.extend(w.chars().take(MAX_CHARS).flat_map(char::to_lowercase));
            }
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
            chars += 1;
        }
        slug.extend(w.chars().flat_map(char::to_lowercase));
        chars += n;
    }
    if slug.is_empty() {
        slug.push_str("task");
    }
    let ts: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    format!("{slug}-{ts}")
}

#[cfg(test)]
mod tests {
    use super::generated_name;

    fn slug(desc: &str) -> String {
        let n = generated_name(desc);
        let (slug, ts) = n.rsplit_once('-').unwrap();
        assert_eq!(ts.len(), "20260115T100000".len(), "{n}");
        slug.to_owned()
    }

    #[test]
    fn names_keep_the_words_of_any_script() {
        assert_eq!(
            slug("Write a haiku about queues"),
            "write-a-haiku-about-queues"
        );
        assert_eq!(slug("Héllo Wörld, ça va?"), "héllo-wörld-ça-va");
        assert_eq!(slug("日本語のタスク"), "日本語のタスク");
        assert_eq!(slug("Ünïcödé ONLY"), "ünïcödé-only");
        // Nothing that could be a path, an option or a hidden file.
        assert_eq!(slug("-rf / ../etc/passwd"), "rf-etc-passwd");
        assert_eq!(slug("!!! ..."), "task");
        assert_eq!(slug("a\u{202e}b\tc\u{0}d"), "a-b-c-d");
        // At most 32 characters of words; a longer first word is cut.
        assert_eq!(
            slug("one two three four five six seven eight"),
            "one-two-three-four-five-six"
        );
        assert_eq!(slug(&"あ".repeat(50)), "あ".repeat(32));
        for d in [
            "x",
            &"ü".repeat(300),
            "日本語 のタスク を 実行して ください",
        ] {
            let n = generated_name(d);
            assert!(crate::parse::task::check_name(&n).is_ok(), "{n}");
        }
    }
}
