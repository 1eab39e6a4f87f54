//! The command-line interface: argument definitions (clap) and the commands
//! that read or write the tree without running the supervisor.

pub mod control;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::model::record::ResultRecord;
use crate::parse::config::{CONFIG_FILE, Config, SAMPLE_CONFIG};
use crate::parse::task;
use crate::tree::books;
use crate::tree::fsx;
use crate::tree::layout::{Layout, State};
use crate::tree::lock::TaskLock;
use crate::tree::moves;

/// A supervisor for command-line AI agents whose whole interface is a directory tree.
#[derive(Debug, Parser)]
#[command(name = "mailroom", version, about, propagate_version = true)]
pub struct Cli {
    /// The root of the tree (holds tasks/, context/ and mailroom.yaml).
    #[arg(long, global = true, env = "MAILROOM_ROOT", default_value = ".")]
    pub root: PathBuf,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q: warnings and errors only, -qq: errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor in the foreground.
    Run {
        /// Exit once nothing is pending or running (for scripts and CI).
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Lay out a new tree with a commented sample config.
    Init {
        /// Where (default: --root).
        dir: Option<PathBuf>,
    },
    /// Submit a task (written to tasks/tmp/, then renamed into tasks/pending/).
    Add {
        /// What the agent should do.
        #[arg(required_unless_present = "file")]
        description: Option<String>,
        /// The agent to run it on.
        #[arg(long)]
        agent: Option<String>,
        /// high, normal or low.
        #[arg(long)]
        priority: Option<String>,
        /// The task's name (its file name without .yaml); generated when absent.
        #[arg(long)]
        name: Option<String>,
        /// Submit this YAML task file as is (`-` reads standard input).
        #[arg(long, conflicts_with = "description")]
        file: Option<PathBuf>,
        /// Run only after these tasks completed.
        #[arg(long)]
        after: Vec<String>,
        /// Per-run timeout, e.g. 10m.
        #[arg(long)]
        timeout: Option<String>,
        /// Wait for the task, print its output, and exit with its outcome
        /// (0 completed, 1 failed): for scripts and editors.
        #[arg(long)]
        wait: bool,
    },
    /// Counts per state and what is running.
    Status {
        #[arg(long)]
        json: bool,
        /// Refresh every second (Ctrl-C to stop).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// List tasks.
    List {
        /// pending, assigned (or running), completed, failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a task, its result record and the tail of its output.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        /// Print the exact prompt sent to the agent (or, for a pending task,
        /// the prompt it would get now).
        #[arg(long, conflicts_with = "json")]
        prompt: bool,
    },
    /// Move a failed task back to pending with fresh attempts.
    Retry { name: String },
    /// Check task files (and the root's mailroom.yaml) without running anything.
    Validate {
        /// Task files, or a mailroom.yaml.
        files: Vec<PathBuf>,
    },
    /// Cancel a pending or running task (a running agent's process group is stopped).
    Cancel {
        name: String,
        /// How long to wait for the supervisor to stop a running agent.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Stop claiming new tasks, everywhere or for one agent (running agents carry on).
    Pause {
        #[arg(long)]
        agent: Option<String>,
    },
    /// Start claiming again.
    Resume {
        #[arg(long)]
        agent: Option<String>,
    },
    /// The output of a task's run: live while it runs, stored afterwards.
    Logs {
        name: String,
        /// Keep printing until the task finishes.
        #[arg(short, long)]
        follow: bool,
    },
    /// Wait until the named tasks (or the whole queue) are finished; exit 0
    /// if all completed, 1 if any failed, 124 on --timeout.
    Wait {
        names: Vec<String>,
        #[arg(long)]
        timeout: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Each agent's running count, limit, pause, cooldown and outcomes.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// The built-in offline demo agent.
    #[command(hide = true)]
    DemoAgent { args: Vec<String> },
}

/// `mailroom init`.
pub fn init(dir: &Path) -> Result<()> {
    let layout = Layout::new(dir);
    layout
        .ensure()
        .with_context(|| format!("creating the tree under {}", dir.display()))?;
    let mut made = Vec::new();
    let cfg = dir.join(CONFIG_FILE);
    if !cfg.exists() {
        std::fs::write(&cfg, SAMPLE_CONFIG)
            .with_context(|| format!("writing {}", cfg.display()))?;
        made.push(CONFIG_FILE.to_owned());
    }
    let ov = layout.context.join("project_overview.md");
    if !ov.exists() {
        std::fs::write(
            &ov,
            "# Project overview\n\nDescribe the project here. Every agent reads this file.\n",
        )?;
        made.push("context/project_overview.md".into());
    }
    println!("initialised {}", dir.display());
    for m in made {
        println!("  wrote {m}");
    }
    println!("next: mailroom --root {} run", dir.display());
    Ok(())
}

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

#[derive(Serialize)]
struct RunningTask {
    name: String,
    agent: Option<String>,
    attempt: Option<u32>,
    pid: Option<u32>,
    host: Option<String>,
    started_at: Option<String>,
}

#[derive(Serialize)]
struct StatusJson {
    root: String,
    pending: usize,
    running: usize,
    completed: usize,
    failed: usize,
    running_tasks: Vec<RunningTask>,
    cooldowns: Vec<crate::model::record::Cooldown>,
}

fn running_tasks(layout: &Layout) -> Vec<RunningTask> {
    books::list(layout, State::Assigned)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| {
            let st = books::read_state(layout, &name);
            let r = st.run;
            // The agent's process group, found by its MAILROOM_* environment.
            let pid = layout.root.canonicalize().ok().and_then(|root| {
                crate::run::process::find_agent_groups(&root, &name)
                    .first()
                    .map(|g| g.0)
            });
            RunningTask {
                name,
                agent: r.as_ref().map(|r| r.agent.clone()),
                attempt: r.as_ref().map(|r| r.attempt),
                pid,
                host: r.as_ref().map(|r| r.host.clone()),
                started_at: r.map(|r| r.started_at),
            }
        })
        .collect()
}

/// `mailroom status`.
pub fn status(root: &Path, json: bool) -> Result<()> {
    let layout = open_tree(root)?;
    let s = StatusJson {
        root: root.display().to_string(),
        pending: books::count(&layout, State::Pending),
        running: books::count(&layout, State::Assigned),
        completed: books::count(&layout, State::Completed),
        failed: books::count(&layout, State::Failed),
        running_tasks: running_tasks(&layout),
        cooldowns: books::cooldowns(&layout, false),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{} pending, {} running, {} completed, {} failed",
        s.pending, s.running, s.completed, s.failed
    );
    for r in &s.running_tasks {
        println!(
            "  running {}  agent={} attempt={} pid={} since {}",
            r.name,
            r.agent.as_deref().unwrap_or("?"),
            r.attempt.map(|a| a.to_string()).unwrap_or("?".into()),
            r.pid.map(|a| a.to_string()).unwrap_or("?".into()),
            r.started_at.as_deref().unwrap_or("?")
        );
    }
    for c in &s.cooldowns {
        println!(
            "  {} cooling down until {} ({})",
            c.agent, c.until, c.message
        );
    }
    Ok(())
}

/// The tree at `root`, or an error saying how to get one.
pub(crate) fn open_tree(root: &Path) -> Result<Layout> {
    let layout = Layout::new(root);
    if !layout.tasks.is_dir() {
        bail!(
            "{} is not a mailroom root (no tasks/ directory); pass --root or run `mailroom init`",
            root.display()
        );
    }
    Ok(layout)
}

/// A task name from the command line, checked like a file's.
pub(crate) fn check_task_name(name: &str) -> Result<()> {
    task::check_name(name).map_err(|e| anyhow::anyhow!("`{name}`: {e}"))
}

#[derive(Serialize)]
struct ListItem {
    name: String,
    state: State,
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `mailroom list`.
pub fn list(root: &Path, state: Option<&str>, json: bool) -> Result<()> {
    let layout = open_tree(root)?;
    let states: Vec<State> = match state {
        Some(s) => vec![State::parse(s).ok_or_else(|| {
            anyhow::anyhow!("--state {s}: use pending, assigned (or running), completed or failed")
        })?],
        None => State::ALL.to_vec(),
    };
    let mut items = Vec::new();
    for st in states {
        for (name, ext) in books::list(&layout, st)? {
            let error = if st == State::Failed {
                read_record(&layout, State::Failed, &name).and_then(|r| r.error)
            } else {
                None
            };
            items.push(ListItem {
                file: layout.rel(&layout.task_file(st, &name, &ext)),
                name,
                state: st,
                error,
            });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for i in items {
            match i.error {
                Some(e) => println!("{:<9} {}  ({})", i.state.dir_name(), i.name, e),
                None => println!("{:<9} {}", i.state.dir_name(), i.name),
            }
        }
    }
    Ok(())
}

fn read_record(layout: &Layout, st: State, name: &str) -> Option<ResultRecord> {
    let b = std::fs::read(layout.record_file(st, name)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// `mailroom show --prompt`.
pub fn show_prompt(root: &Path, name: &str) -> Result<()> {
    let layout = open_tree(root)?;
    check_task_name(name)?;
    let Some((st, path, _)) = layout.locate(name) else {
        bail!("no task named `{name}` in {}", layout.tasks.display());
    };
    let sent = layout.run_dir(st, name).join("prompt.md");
    if let Ok(p) = std::fs::read_to_string(&sent) {
        print!("{p}");
        return Ok(());
    }
    let (b, _) = fsx::read_task_file(&path, task::DEFAULT_MAX_TASK_BYTES)
        .map_err(|e| anyhow::anyhow!("{}: {e}", layout.rel(&path)))?;
    let t = task::parse(name, &b)
        .map_err(|e| anyhow::anyhow!("{}", e.display_at(&layout.rel(&path))))?;
    let config = Config::load(root).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (route, _) =
        crate::sched::routing::route(&config, &t, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent = &config.agents[&route.agents[0]];
    let root = root.canonicalize()?;
    let p = crate::run::prompt::render(&Layout::new(&root), &config, agent, &t)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "(not sent yet: this is the prompt `{name}` would get now, on agent {})",
        agent.name
    );
    print!("{p}");
    Ok(())
}

/// Tasks whose `parent` is `name`: its recorded follow-ups and children, and
/// the files named `<name>.<suffix>` (subtasks).
fn children_of(
    layout: &Layout,
    name: &str,
    record: Option<&ResultRecord>,
    st: &crate::model::record::TaskState,
) -> Vec<String> {
    let mut v: Vec<String> = record
        .map(|r| r.followups.iter().chain(&r.children).cloned().collect())
        .unwrap_or_default();
    v.extend(st.children.iter().cloned());
    let prefix = format!("{name}.");
    for s in State::ALL {
        for (n, _) in books::list(layout, s).unwrap_or_default() {
            if n.starts_with(&prefix) && !n[prefix.len()..].contains('.') && !n.contains(".clash-")
            {
                v.push(n);
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// `mailroom show`.
pub fn show(root: &Path, name: &str, json: bool) -> Result<()> {
    let layout = open_tree(root)?;
    check_task_name(name)?;
    let Some((st, path, _)) = layout.locate(name) else {
        bail!("no task named `{name}` in {}", layout.tasks.display());
    };
    let content = fsx::read_task_file(&path, task::DEFAULT_MAX_TASK_BYTES)
        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read: {e})"));
    let record = match st {
        State::Completed | State::Failed => read_record(&layout, st, name),
        _ => None,
    };
    let state_file = books::read_state(&layout, name);
    let parsed = task::parse(name, content.as_bytes());
    let output_path = layout.output_file(name);
    let output = fsx::read_tail(&output_path, 4096)
        .ok()
        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
        .or_else(|| {
            fsx::read_tail(&layout.run_dir(st, name).join("stdout.log"), 4096)
                .ok()
                .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
        });
    let parent = parsed.as_ref().ok().and_then(|t| t.parent.clone());
    let children = children_of(&layout, name, record.as_ref(), &state_file);
    if json {
        let v = serde_json::json!({
            "name": name,
            "state": st,
            "parent": parent,
            "children": children,
            "file": layout.rel(&path),
            "task": content,
            "valid": parsed.as_ref().err().map(|e| e.to_string()).is_none(),
            "record": record,
            "bookkeeping": if state_file.attempts > 0 { Some(&state_file) } else { None },
            "output_tail": output,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "name:  {name}\nstate: {}\nfile:  {}",
        st.dir_name(),
        layout.rel(&path)
    );
    if let Some(p) = &parent {
        let at = layout
            .locate(p)
            .map(|(s, _, _)| s.dir_name())
            .unwrap_or("not submitted");
        println!("parent: {p} ({at})");
    }
    for c in &children {
        let at = layout
            .locate(c)
            .map(|(s, _, _)| s.dir_name())
            .unwrap_or("?");
        println!("child:  {c} ({at})");
    }
    if let Err(e) = &parsed {
        println!("error: {}", e.display_at(&layout.rel(&path)));
    }
    match (&record, &parsed) {
        (Some(r), _) if r.agent.is_some() => println!(
            "agent: {} ({})",
            r.agent.as_deref().unwrap_or("?"),
            r.agent_reason.as_deref().unwrap_or("-")
        ),
        (_, Ok(t)) => match Config::load(root) {
            Ok(c) => match crate::sched::routing::route(&c, t, &state_file.excluded_agents) {
                Ok((r, why)) => println!("agent: {} ({why})", r.agents.join(" or ")),
                Err(e) => println!("agent: none: {e}"),
            },
            Err(e) => println!("agent: unknown ({e})"),
        },
        _ => {}
    }
    if let Ok(t) = &parsed
        && st == State::Pending
    {
        for d in &t.after {
            if layout.find(State::Completed, d).is_none() {
                let how = if layout.locate(d).is_some() {
                    ""
                } else {
                    " (not submitted)"
                };
                println!("waiting for {d}{how}");
            }
        }
    }
    if state_file.attempts > 0 {
        println!("attempts: {}", state_file.attempts);
        if let Some(nb) = &state_file.not_before {
            println!("next try: {nb}");
        }
        if let Some(e) = &state_file.last_error {
            println!("last error: {e}");
        }
    }
    println!("\n--- task ---\n{}", content.trim_end());
    if let Some(r) = &record {
        println!("\n--- result ---\n{}", serde_json::to_string_pretty(r)?);
    }
    if let Some(o) = output {
        println!("\n--- output (tail) ---\n{}", o.trim_end());
    }
    Ok(())
}

/// `mailroom retry`.
pub fn retry(root: &Path, name: &str) -> Result<()> {
    let layout = open_tree(root)?;
    check_task_name(name)?;
    let lock = TaskLock::try_acquire(&layout, name)?
        .ok_or_else(|| anyhow::anyhow!("`{name}` is busy (its lock is held); try again"))?;
    let res = (|| -> Result<()> {
        let Some((_, ext)) = layout.find(State::Failed, name) else {
            match layout.locate(name) {
                Some((st, _, _)) => bail!("`{name}` is {}, not failed", st.dir_name()),
                None => bail!("no task named `{name}`"),
            }
        };
        if let Some((st, p, _)) = [State::Pending, State::Assigned]
            .into_iter()
            .find_map(|s| layout.find(s, name).map(|(p, e)| (s, p, e)))
        {
            bail!(
                "cannot retry `{name}`: {} already holds a task of that name ({})",
                layout.rel(&p),
                st.dir_name()
            );
        }
        // Fresh attempts: the bookkeeping and the old record go first, so that
        // a crash never pairs the requeued task with a stale record.
        fsx::remove_file_if_exists(&layout.state_file(name))?;
        fsx::remove_file_if_exists(&layout.record_file(State::Failed, name))?;
        fsx::fsync_dir(&layout.failed)?;
        moves::retry(&layout, State::Failed, name, ext)?;
        fsx::remove_dir_all_if_exists(&layout.run_dir(State::Failed, name))?;
        println!("{name}: moved back to pending with fresh attempts");
        Ok(())
    })();
    lock.release();
    res
}

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

/// `mailroom validate`: true when everything is valid.
pub fn validate(root: &Path, files: &[PathBuf]) -> Result<bool> {
    let mut ok = true;
    let cfg = root.join(CONFIG_FILE);
    let mut checked_cfg = false;
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
            match Config::parse(&bytes, &shown) {
                Ok(_) => println!("ok: {shown}"),
                Err(e) => {
                    println!("{e}");
                    ok = false;
                }
            }
            continue;
        }
        let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or("task");
        match task::parse(name, &bytes) {
            Ok(t) => {
                println!("ok: {shown}");
                for w in t.warnings {
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
            Ok(_) => println!("ok: {}", cfg.display()),
            Err(e) => {
                println!("{e}");
                ok = false;
            }
        }
    }
    Ok(ok)
}
