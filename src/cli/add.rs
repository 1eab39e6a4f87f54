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
}

/// `mailroom add`: returns the new task's name.
pub fn add(root: &Path, a: AddArgs) -> Result<String> {
    let layout = Layout::new(root);
    if !layout.pending.is_dir() {
        bail!(
            "{} has no tasks/pending/; run `mailroom init` there first, or pass --root",
            root.display()
        );
    }
    fsx::create_dir_all(&layout.tmp)?;
    let ext = match a.file.and_then(|f| f.extension()).and_then(|e| e.to_str()) {
        Some("yml") => "yml",
        _ => "yaml",
    };
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
        && (a.agent.is_some() || a.priority.is_some() || !a.after.is_empty() || a.timeout.is_some())
    {
        bail!(
            "--agent, --priority, --after and --timeout go with a DESCRIPTION; with --file, write them in the file"
        );
    }
    let (bytes, default_name) = match a.file {
        Some(f) => {
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
                && let Some(linked) = crate::tree::outbox::with_links(text, "task", p, None)
            {
                b = linked.into_bytes();
            }
            (b, stem)
        }
        None => {
            let d = a.description.unwrap_or_default();
            if let Some(p) = a.priority
                && task::Priority::parse(p).is_none()
            {
                bail!("--priority {p}: use high, normal or low");
            }
            if let Some(t) = a.timeout {
                task::parse_duration(t).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            }
            let nt = NewTask {
                description: d,
                priority: a.priority,
                agent: a.agent,
                after: a.after,
                timeout: a.timeout,
                parent: parent.as_deref(),
            };
            let y = serde_saphyr::to_string(&nt).context("serialising the task")?;
            (y.into_bytes(), None)
        }
    };
    let explicit = a.name.map(str::to_owned).or(default_name.clone());
    let base = match &explicit {
        Some(n) => n.clone(),
        None => generated_name(a.description.unwrap_or("task")),
    };
    task::check_name(&base).map_err(|e| anyhow::anyhow!("task name `{base}`: {e}"))?;
    task::parse(&base, &bytes).map_err(|e| anyhow::anyhow!("{}", e.display_at("task")))?;
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

/// A readable, time-ordered name: `<slug>-<yyyymmddThhmmss>`.
fn generated_name(desc: &str) -> String {
    let mut slug = String::new();
    for w in desc
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if slug.len() + w.len() > 32 {
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&w.to_ascii_lowercase());
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
