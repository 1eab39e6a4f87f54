//! Follow-up tasks: the transactional outbox (task files an agent writes into
//! `$MAILROOM_OUTBOX` are queued only if its run succeeds), the guards against
//! runaway spawning, and the expansion of a task's `subtasks` into children.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::parse::task::{self, Entry};
use crate::tree::fsx;
use crate::tree::layout::Layout;

/// Whether `dir` is the outbox directory itself, not a symbolic link (to a
/// directory outside the tree, as a rule) or a file its agent put there.
fn is_real_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
}

/// Task files waiting in an outbox, sorted (none when it is not a directory
/// of its own): regular files named like task files, which the runaway
/// limits count (a directory or a link of such a name is never queued).
pub fn outbox_files(dir: &Path) -> Vec<String> {
    if !is_real_dir(dir) {
        return Vec::new();
    }
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|f| matches!(task::classify(f), Entry::Task { .. }))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The first task of `name`'s tree (following `parent` links), and how deep
/// `name` sits in it.
pub fn tree_root(layout: &Layout, name: &str, max: usize) -> (String, usize) {
    let mut cur = name.to_owned();
    let mut depth = 0;
    while depth <= max + 1 {
        let parent = layout
            .locate(&cur)
            .and_then(|(_, p, e)| {
                crate::tree::books::parsed_task(&p, &cur, e, task::DEFAULT_MAX_TASK_BYTES)
            })
            .and_then(|t| t.parent);
        match parent {
            Some(p) => {
                cur = p;
                depth += 1;
            }
            None => break,
        }
    }
    (cur, depth)
}

/// Counts `n` more tasks into the tree whose first task is `root`, refusing
/// when that would pass `max`: `tasks/trees/<root>` holds the count, updated
/// under its own lock so that concurrent runs of one tree add up.
pub fn count_into_tree(layout: &Layout, root: &str, n: usize, max: usize) -> Result<usize, String> {
    use std::io::{Read, Seek, Write};
    let dir = layout.tasks.join("trees");
    // Agents can write here: a link (to a file outside the tree, which the
    // count would overwrite), a FIFO (which would hold the commit for good)
    // or anything else in the place of the directory or of the count is set
    // aside, and the count starts afresh.
    let aside = |p: &Path, is_ok: fn(&std::fs::Metadata) -> bool| -> Result<(), String> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if !is_ok(&m) => {
                let to = fsx::set_aside(p).map_err(|e| {
                    format!(
                        "{} is not what mailroom made there; cannot set it aside: {e}",
                        layout.rel(p)
                    )
                })?;
                tracing::warn!(
                    path = %layout.rel(p),
                    set_aside_as = %layout.rel(&to),
                    "a tree count was a link or not a regular file; set it aside"
                );
                Ok(())
            }
            _ => Ok(()),
        }
    };
    aside(&dir, |m| m.is_dir())?;
    fsx::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(root);
    aside(&path, |m| m.file_type().is_file())?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("{}: {e}", layout.rel(&path)))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!(
            "{} is not a regular file; no follow-up was queued",
            layout.rel(&path)
        ));
    }
    // Held for moments by whoever counts into the tree: one that keeps it
    // (an agent of the tree) must not hold its commits for good.
    crate::tree::lock::flock_within(&f, std::time::Duration::from_secs(10))
        .map_err(|why| format!("tasks/trees/{root} {why}; no follow-up was queued"))?;
    // A count is a few digits: more is not read (an agent can write here).
    let mut text = String::new();
    let _ = (&mut f).take(64).read_to_string(&mut text);
    // The tree's first task counts as one.
    let have: usize = text.trim().parse().unwrap_or(1);
    // (A count near usize::MAX, written by hand or by an agent, is over
    // any limit, never wrapped under it.)
    if have.checked_add(n).is_none_or(|t| t > max) {
        return Err(format!(
            "the tree of `{root}` already has {have} tasks; {n} more would pass the limit of {max} (max_tree_tasks); none were queued"
        ));
    }
    f.set_len(0)
        .and_then(|()| f.rewind())
        .map_err(|e| e.to_string())?;
    f.write_all(format!("{}\n", have + n).as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(have + n)
}

/// A YAML text as a value (None: it is not YAML), with the task parser's
/// limits.
fn yaml_value(text: &str) -> Option<serde_json::Value> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_saphyr::from_str_with_options(text, task::yaml_options()).ok()
}

/// The mapping `v` as it must read once the links are added: `parent` when
/// it has none (or an empty one), `after` when it has neither `after` nor
/// `dependencies`. None when `v` is not a mapping.
fn linked_value(
    v: &serde_json::Value,
    parent: &str,
    after: Option<&str>,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut m = v.as_object()?.clone();
    if m.get("parent").is_none_or(serde_json::Value::is_null) {
        m.insert("parent".into(), parent.into());
    }
    let no_deps = |k: &str| {
        m.get(k)
            .is_none_or(|d| d.is_null() || d.as_array().is_some_and(Vec::is_empty))
    };
    if let Some(a) = after
        && no_deps("after")
        && no_deps("dependencies")
    {
        m.insert("after".into(), serde_json::json!([a]));
    }
    Some(m)
}

/// Whether `out` holds the mapping `want`: the links were added and no other
/// key changed on the way (a line appended to a flow or JSON mapping, to an
/// indented one or after a `...` would break it or cut it short).
fn reads_as(out: &str, want: &serde_json::Map<String, serde_json::Value>) -> bool {
    yaml_value(out).is_some_and(|v| v.as_object() == Some(want))
}

/// A mapping written as JSON, which YAML reads as it is: for a mapping whose
/// text takes no appended line.
fn as_json(m: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    serde_json::to_string_pretty(m).ok().map(|s| s + "\n")
}

/// Adds `parent: <name>` (and `after`) to a task file's text, keeping it
/// valid and every other key as it was: a bare description becomes a
/// mapping, and a mapping that takes no appended line (flow or JSON, or
/// indented) is written again as JSON. None if the text is not a valid task.
pub fn with_links(text: &str, name: &str, parent: &str, after: Option<&str>) -> Option<String> {
    // A task valid only with its parent (`session: parent`, which a
    // follow-up says without naming the task that writes it) does not parse
    // yet: it gets the links all the same, and the result must parse.
    let t = task::parse(name, text.as_bytes()).ok();
    let value = yaml_value(text);
    let mut out = if matches!(value, Some(serde_json::Value::String(_)))
        || value.is_none()
            && (text.trim_start().starts_with(['"', '\''])
                || !text
                    .lines()
                    .any(|l| !l.starts_with([' ', '#', '-']) && l.contains(':')))
    {
        // A bare string document: say it as a mapping.
        format!(
            "description: {}\n",
            serde_json::to_string(&t.as_ref()?.description).ok()?
        )
    } else {
        let mut s = text.to_owned();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    };
    if t.as_ref().is_none_or(|t| t.parent.is_none()) {
        // A `parent:` with no value (null, ~) is no parent: it gives way.
        let empty = |l: &str| {
            l.strip_prefix("parent:")
                .is_some_and(|v| matches!(v.trim(), "" | "null" | "~" | "Null" | "NULL"))
        };
        if out.lines().any(empty) {
            out = out
                .lines()
                .filter(|l| !empty(l))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        out.push_str(&format!(
            "parent: {}\n",
            serde_json::to_string(parent).ok()?
        ));
    }
    if let Some(a) = after
        && t.as_ref().is_none_or(|t| t.after.is_empty())
    {
        out.push_str(&format!("after: [{}]\n", serde_json::to_string(a).ok()?));
    }
    // A mapping must come out with every key it had: else it is written
    // again, as JSON.
    if let Some(want) = value.as_ref().and_then(|v| linked_value(v, parent, after))
        && !reads_as(&out, &want)
    {
        out = as_json(&want)?;
    }
    task::parse(name, out.as_bytes()).ok().map(|_| out)
}

/// [`with_links`] for a Markdown task file: the links go into its front
/// matter (which is created when the file has none; one that takes no
/// first line, a flow or JSON mapping, is written again as JSON).
pub fn with_links_md(text: &str, name: &str, parent: &str) -> Option<String> {
    // One that does not parse may need its parent (`session: parent`): the
    // link is added, and the result must parse.
    if task::parse_markdown(name, text.as_bytes()).is_ok_and(|t| t.parent.is_some()) {
        return Some(text.to_owned());
    }
    let link = format!("parent: {}\n", serde_json::to_string(parent).ok()?);
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = body.split_inclusive('\n').next().unwrap_or("");
    // Its first line, `---` (with the spaces or `\r` the parser allows),
    // opens the front matter: the link goes right below it, before any key
    // that could be a block's last, so the new key cannot join it.
    let out = if first.trim_end() == "---" && first.ends_with('\n') {
        let out = format!("{first}{link}{}", &body[first.len()..]);
        // A front matter that takes no first line (a flow or JSON mapping)
        // is written again, as JSON.
        let want = task::split_front_matter(body)
            .ok()
            .and_then(|(f, _, _)| f)
            .and_then(yaml_value)
            .and_then(|v| linked_value(&v, parent, None));
        match (want, task::split_front_matter(&out)) {
            (Some(want), Ok((Some(f), rest, _))) if !reads_as(f, &want) => {
                format!("---\n{}---\n{rest}", as_json(&want)?)
            }
            _ => out,
        }
    } else {
        format!("---\n{link}---\n{body}")
    };
    task::parse_markdown(name, out.as_bytes()).ok().map(|_| out)
}

/// Writes one new task into `pending/` through `tasks/tmp/`, under `name` or,
/// when that name is taken, `name-2`, `name-3`, ... (the name shortened to
/// make room for the suffix when it must). Returns the name used.
pub fn submit(layout: &Layout, name: &str, text: &str, ext: &str) -> io::Result<String> {
    fsx::create_dir_all(&layout.tmp)?;
    let cand = |n: u64| {
        if n == 1 {
            return name.to_owned();
        }
        let suffix = format!("-{n}");
        let mut cut = name.len().min(task::MAX_NAME_BYTES - suffix.len());
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}{suffix}", &name[..cut])
    };
    let taken = |n: u64| {
        let c = cand(n);
        task::check_name(&c).is_err() || layout.locate(&c).is_some()
    };
    // Another writer may take the name found before this one lands.
    for _ in 0..100 {
        let Some(n) = free_number(taken) else {
            break;
        };
        let cand = cand(n);
        let tmp = layout.tmp.join(fsx::tmp_name(&cand));
        fsx::write_atomic(&tmp, text.as_bytes())?;
        match crate::tree::moves::submit(layout, &tmp, &cand, ext) {
            Ok(()) => return Ok(cand),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&tmp);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free name for `{name}` (it and the names `{name}-N` tried are all taken)"),
    ))
}

/// A number whose name is free (1: the name itself, else `-N` appended),
/// in a few probes however many are taken: the first free one while the
/// taken names run on from 1 without a gap (a tree that has queued
/// `fix.yaml` a thousand times gets `fix-1001`), some free one otherwise.
/// None if no name tried is free.
fn free_number(taken: impl Fn(u64) -> bool) -> Option<u64> {
    if !taken(1) {
        return Some(1);
    }
    // `lo` is taken, `hi` is free.
    let (mut lo, mut hi) = (1u64, 2u64);
    while taken(hi) {
        if hi >= 1 << 40 {
            return None;
        }
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if taken(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

/// What [`queue_outbox`] did.
#[derive(Debug, Default)]
pub struct Queued {
    /// The follow-ups queued, by the names they got.
    pub names: Vec<String>,
    /// Why each file that looks like a task file was not queued (it stays
    /// in the outbox), or was queued but could not be removed from it: for
    /// the record's `warnings`.
    pub refused: Vec<String>,
    /// An error of the tree itself (a full disk) that ended the pass: what
    /// was queued before it is in `names`, and the commit is tried again.
    pub error: Option<io::Error>,
}

/// Queues every task file left in `outbox` (after a successful run of
/// `parent`), each linked to its parent, and removes it from the outbox.
/// `shown_at` is where `refused` says the outbox is (where the commit moves
/// it).
/// Done before the result record: a crash in between reruns the task, whose
/// agent writes its follow-ups again (they may then be queued twice, as
/// `name-2`): follow-ups are at least once, like runs.
///
/// An entry that cannot be a follow-up (not a regular file, unreadable, too
/// large, a name that cannot be used, no free name) is left where it is and
/// named in `refused`; only an error of the tree itself (a full disk) ends
/// the pass (`error`), and the commit that made it is tried again.
///
/// `queued_from` holds the entries queued by earlier passes of the same
/// commit, and gets this pass's: an entry queued but not removable (an
/// immutable outbox) is queued once, whatever the retries.
pub fn queue_outbox(
    layout: &Layout,
    parent: &str,
    (outbox, shown_at): (&Path, &Path),
    queued_from: &mut Vec<String>,
) -> Queued {
    let mut done = Queued::default();
    let shown = |f: &str| format!("{}/{}", layout.rel(shown_at), f.escape_debug());
    // Replaced by a link (to a directory elsewhere, whose files must be
    // neither queued nor removed), or reached through one (a directory above
    // it replaced), or by a file: nothing is queued from it. What is read
    // and removed is then looked up in the directory opened here, never
    // through the path again, which could be swapped meanwhile.
    // (`tasks/assigned/` itself may be a link an operator made: the names
    // below it are the run's, where its agent could have put one.)
    let opened = match outbox.strip_prefix(&layout.assigned) {
        Ok(rel) => fsx::open_dir_nofollow(&layout.assigned, rel),
        Err(_) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(outbox),
    };
    let dir = match opened {
        Ok(d) => d,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            let what = match std::fs::symlink_metadata(outbox) {
                Ok(m) if m.file_type().is_symlink() => "is a symbolic link (its agent replaced it)",
                Ok(m) if !m.is_dir() => "is not a directory (its agent replaced it)",
                _ => "is reached through a symbolic link (its agent replaced a directory above it)",
            };
            done.refused.push(format!(
                "the outbox {} {what}: no follow-up was queued from it, and nothing it leads \
                 to was touched",
                layout.rel(shown_at)
            ));
            return done;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return done,
        // The system's error (out of descriptors): the commit is tried
        // again, as for a full disk, and queues the outbox then.
        Err(e) if fsx::system_error(&e) => {
            done.error = Some(e);
            return done;
        }
        Err(e) => {
            done.refused.push(unreadable(layout, shown_at, &e));
            return done;
        }
    };
    let mut entries: Vec<std::ffi::OsString> = Vec::new();
    if let Err(e) = fsx::for_each_name_in(&dir, outbox, |n| {
        use std::os::unix::ffi::OsStrExt;
        entries.push(std::ffi::OsStr::from_bytes(n).to_owned());
    }) {
        if fsx::system_error(&e) {
            done.error = Some(e);
        } else {
            done.refused.push(unreadable(layout, shown_at, &e));
        }
        return done;
    }
    entries.sort();
    let mut ignored = Vec::new();
    for raw in entries {
        let Some(f) = raw.to_str() else {
            let lossy = raw.to_string_lossy();
            if lossy.ends_with(".yaml") || lossy.ends_with(".yml") || lossy.ends_with(".md") {
                done.refused.push(format!(
                    "follow-up {} not queued: its file name is not UTF-8",
                    shown(&lossy)
                ));
            }
            continue;
        };
        if queued_from.iter().any(|q| q == f) {
            continue;
        }
        let (name, ext) = match task::classify(f) {
            Entry::Task { name, ext } => (name, ext),
            Entry::BadName(why) => {
                done.refused.push(format!(
                    "follow-up {} not queued: its name cannot be used ({why})",
                    shown(f)
                ));
                continue;
            }
            Entry::Ignored => {
                // Editors' and tools' leftovers (`.x.swp`, `x~`, `#x#`) are
                // nobody's follow-up; another extension may well have been
                // meant as one (`x.txt`, `x.json`, `x.YAML`): say so.
                if !task::is_leftover(f) {
                    ignored.push(shown(f));
                }
                continue;
            }
        };
        let text = match fsx::read_task_file_at(&dir, &raw, task::DEFAULT_MAX_TASK_BYTES) {
            Ok((b, _)) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.is_gone() => continue,
            Err(fsx::ReadError::Io(e)) if fsx::system_error(&e) => {
                done.error = Some(e);
                return done;
            }
            Err(e) => {
                done.refused
                    .push(format!("follow-up {} not queued: {e}", shown(f)));
                continue;
            }
        };
        // Its parent is the task that wrote it: the runaway limits find its
        // tree through that link, and a `parent` of its own (a task that
        // does not exist, or another tree's) would start a tree afresh.
        if let Ok(Some(p)) = task::parse_as(name, ext, text.as_bytes()).map(|t| t.parent)
            && p != parent
        {
            done.refused.push(format!(
                "follow-up {} not queued: it names `parent: {}`, but a follow-up's parent is \
                 the task that wrote it (`{parent}`), through which max_tree_depth and \
                 max_tree_tasks count its tree; leave `parent` out",
                shown(f),
                p.escape_debug()
            ));
            continue;
        }
        // A file that does not parse is queued as written: it then fails in
        // pending/ with its own error, where its author can see it. A YAML
        // one gets its parent in a last line all the same, which the
        // reject's record names (the error's position stays, unless the
        // error is at the file's end).
        let linked = if ext == "md" {
            with_links_md(&text, name, parent)
        } else {
            with_links(&text, name, parent, None)
        };
        let text = match linked {
            Some(t) => t,
            None if ext != "md" => format!(
                "{text}{}# mailroom: a follow-up from the outbox of `{parent}`, queued as \
                 written; it does not parse\nparent: {}\n",
                if text.ends_with('\n') { "" } else { "\n" },
                serde_json::to_string(parent).unwrap_or_default()
            ),
            // Valid without the link it cannot take, it would run as a
            // tree of its own, out of reach of the runaway limits.
            None if task::parse_markdown(name, text.as_bytes()).is_ok() => {
                done.refused.push(format!(
                    "follow-up {} not queued: its front matter cannot take `parent: \"{}\"`",
                    shown(f),
                    parent.escape_debug()
                ));
                continue;
            }
            None => text,
        };
        let queued = match submit(layout, name, &text, ext) {
            Ok(queued) => queued,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                done.refused
                    .push(format!("follow-up {} not queued: {e}", shown(f)));
                continue;
            }
            Err(e) => {
                done.error = Some(e);
                return done;
            }
        };
        queued_from.push(f.to_owned());
        if let Err(e) = fsx::remove_file_at(&dir, &raw) {
            done.refused.push(format!(
                "follow-up {} was queued as `{queued}` but cannot be removed from the outbox \
                 ({e}); it stays there, and this commit does not queue it again (a supervisor \
                 that dies before the commit lands leaves it to be queued once more, as \
                 follow-ups are at least once)",
                shown(f)
            ));
        }
        done.names.push(queued);
    }
    // One agent's outbox may hold any number of entries: the record names
    // a few, or it would outgrow what its readers take (16 MiB), and the
    // tasks after it would wait for good.
    let more = done.refused.len().saturating_sub(MAX_NAMED);
    if more > 0 {
        done.refused.truncate(MAX_NAMED);
        done.refused.push(format!(
            "and {more} more entries of the outbox {} not queued or not removed after \
             they were, for the reasons above or others (they stay there; only the first \
             {MAX_NAMED} are named)",
            layout.rel(shown_at)
        ));
    }
    if !ignored.is_empty() {
        let more = ignored.len().saturating_sub(MAX_NAMED);
        ignored.truncate(MAX_NAMED);
        done.refused.push(format!(
            "not queued, left in the outbox: {}{} (follow-up task files end in .yaml, .yml or .md)",
            ignored.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    done
}

/// How many entries of an outbox a record names, at most, among those not
/// queued.
pub const MAX_NAMED: usize = 20;

/// How many follow-ups of a run that did not succeed a record names, at most.
pub const MAX_WITHHELD: usize = 100;

/// The record's `withheld_followups` of a run that did not succeed: the
/// task files left in its outbox, the first [`MAX_WITHHELD`] of them, and a
/// warning that says how many more there are.
pub fn withheld(outbox: &Path) -> (Vec<String>, Option<String>) {
    let mut left = outbox_files(outbox);
    let more = left.len().saturating_sub(MAX_WITHHELD);
    left.truncate(MAX_WITHHELD);
    let warning = (more > 0).then(|| {
        format!(
            "withheld_followups names the first {MAX_WITHHELD} follow-ups in the outbox; {more} \
             more are there too"
        )
    });
    (left, warning)
}

/// Why nothing was queued from an outbox that could not be opened or listed
/// (its agent took away the permission to read it, as a rule).
fn unreadable(layout: &Layout, shown_at: &Path, e: &io::Error) -> String {
    format!(
        "the outbox {} could not be read ({e}): no follow-up was queued from it",
        layout.rel(shown_at)
    )
}

/// Writes a task's `subtasks` into `pending/` as `<name>.<suffix>`, linked to
/// it and, when `sequential`, each after the one before. Children already
/// there (an expansion interrupted by a crash) are kept.
pub fn expand(
    layout: &Layout,
    name: &str,
    subtasks: &[task::Subtask],
    sequential: bool,
) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut prev: Option<String> = None;
    for st in subtasks {
        let child = format!("{name}.{}", st.suffix);
        if layout.locate(&child).is_none() {
            let after = if sequential { prev.as_deref() } else { None };
            let text = with_links(&st.fields, &child, name, after).ok_or_else(|| {
                io::Error::other(format!("subtask `{child}` is not a valid task"))
            })?;
            let tmp = layout.tmp.join(fsx::tmp_name(&child));
            fsx::create_dir_all(&layout.tmp)?;
            fsx::write_atomic(&tmp, text.as_bytes())?;
            match crate::tree::moves::submit(layout, &tmp, &child, "yaml") {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(&tmp);
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        prev = Some(child.clone());
        names.push(child);
    }
    fsx::fsync_dir(&layout.pending)?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_number_is_found_after_any_number_of_taken_ones() {
        assert_eq!(free_number(|_| false), Some(1));
        for k in [1u64, 2, 3, 999, 1000, 4096, 100_000] {
            assert_eq!(free_number(|n| n <= k), Some(k + 1), "{k}");
        }
        // A gap (a name removed by `clean`) is a free name too.
        let got = free_number(|n| n <= 50 && n != 2).unwrap();
        assert!(got == 2 || got > 50, "{got}");
        assert_eq!(free_number(|_| true), None);
    }

    /// A count an agent wrote near `usize::MAX` (or padded to megabytes)
    /// is over the limit: it neither wraps under it nor panics the commit.
    #[test]
    fn a_forged_huge_count_is_over_the_limit() {
        let tmp = crate::tree::fsx::tests::tempdir();
        let layout = Layout::new(&tmp);
        std::fs::create_dir_all(layout.tasks.join("trees")).unwrap();
        let count = layout.tasks.join("trees").join("r");
        std::fs::write(&count, format!("{}\n", usize::MAX)).unwrap();
        let e = count_into_tree(&layout, "r", 3, 200).unwrap_err();
        assert!(e.contains("would pass the limit of 200"), "{e}");
        std::fs::write(&count, "7\n").unwrap();
        assert_eq!(count_into_tree(&layout, "r", 3, 200), Ok(10));
        std::fs::write(&count, "1".repeat(10 << 20)).unwrap();
        // Read as its first 64 bytes: not a number, so the first task only.
        assert_eq!(count_into_tree(&layout, "r", 3, 200), Ok(4));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn links_are_added_and_the_file_stays_valid() {
        let out = with_links("description: a\n", "c", "p", Some("b")).unwrap();
        assert_eq!(out, "description: a\nparent: \"p\"\nafter: [\"b\"]\n");
        let out = with_links("just words\n", "c", "p", None).unwrap();
        assert_eq!(out, "description: \"just words\"\nparent: \"p\"\n");
        let out = with_links("description: a\nparent: q\n", "c", "p", None).unwrap();
        assert!(out.ends_with("parent: q\n"), "{out}");
        assert!(with_links("description: [\n", "c", "p", None).is_none());
        let out = with_links("description: a\nparent: null\n", "c", "p", None).unwrap();
        assert_eq!(out, "description: a\nparent: \"p\"\n");
        // Valid only with its parent: the link makes it valid.
        let out = with_links("description: a\nsession: parent\n", "c", "p", None).unwrap();
        assert_eq!(out, "description: a\nsession: parent\nparent: \"p\"\n");
        let out = with_links(
            "description: a\nsession: parent\nparent: ~\n",
            "c",
            "p",
            None,
        );
        assert_eq!(
            out.as_deref(),
            Some("description: a\nsession: parent\nparent: \"p\"\n")
        );
        let md = with_links_md("---\nsession: parent\n---\nGo on.\n", "c", "p").unwrap();
        assert_eq!(md, "---\nparent: \"p\"\nsession: parent\n---\nGo on.\n");
        let md = with_links_md("---\nagent: x\n---\nDo it.\n", "c", "p").unwrap();
        assert_eq!(md, "---\nparent: \"p\"\nagent: x\n---\nDo it.\n");
        let md = with_links_md("Just do it.\n", "c", "p").unwrap();
        assert_eq!(md, "---\nparent: \"p\"\n---\nJust do it.\n");
    }
}
