//! Workspaces: with `workspace: worktree` a run gets its own git worktree and
//! branch (`mailroom/<task>`), so coding agents working at the same time do
//! not overwrite each other's files; with `workspace: shared` (the default)
//! the run works in its workdir, and the files it changed are taken from the
//! agent's own report (`$MAILROOM_RESULT`) or, best effort, from `git status`.
//! Git runs here, blocking: callers use `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// How a run's files are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Shared,
    Worktree,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "shared" => Some(Kind::Shared),
            "worktree" => Some(Kind::Worktree),
            _ => None,
        }
    }
}

/// When a run's worktree is removed (its branch always stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cleanup {
    Keep,
    #[default]
    OnSuccess,
    Always,
}

/// What the result record says about a run's workspace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// `worktree` or `shared`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The commit the worktree started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default)]
    pub files_modified: Vec<String>,
    /// Where `files_modified` came from: `git` (the worktree), `agent`
    /// (`$MAILROOM_RESULT`), `git-status` (best effort in a shared
    /// workdir), or `none`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
    /// With `source: git-status`: false when other runs of this supervisor
    /// worked in the same workdir meanwhile, so that their changes may be in
    /// the list too; true when none did (changes people made there before the
    /// run are still listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_modified_exact: Option<bool>,
    /// The commit mailroom made on the run's branch of what the agent left
    /// uncommitted in its worktree, before removing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<String>,
    /// What was wrong with the agent's `$MAILROOM_RESULT`, for the record's
    /// `warnings` (not part of `workspace`).
    #[serde(skip)]
    pub warning: Option<String>,
}

/// `$MAILROOM_RESULT` as the agent wrote it. Each key is read on its own,
/// so that a wrong type in one never hides another: a `status: failed`
/// beside a malformed `files_modified` still says the run failed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AgentResult {
    /// None: no `files_modified` key; Err: what is wrong with it.
    pub files_modified: Option<Result<Vec<String>, String>>,
    pub status: Option<String>,
    /// A `status` that is not a string (`status: 42`), as JSON: the agent
    /// meant to say how it ended, and what it said cannot be read.
    pub status_invalid: Option<String>,
    pub summary: Option<String>,
}

/// Whether a `$MAILROOM_RESULT` that [`read_agent_result`] could not use
/// may have said how the run ended: it could not be read at all (not a
/// regular file, too large), or its text has a `status` key. A file that
/// only lists `files_modified` badly hides no failure.
pub fn unusable_result_had_status(path: &Path) -> bool {
    static STATUS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"(?m)(?:^|[{,])\s*["']?status["']?\s*:"#).expect("compiles")
    });
    match crate::tree::fsx::read_task_file(path, 1024 * 1024) {
        Ok((b, _)) => STATUS.is_match(&result_text(&b)),
        Err(e) => !e.is_gone(),
    }
}

/// A result file's bytes as text, for a look for its `status` key: UTF-16
/// (with its byte order mark) decoded, a UTF-8 byte order mark dropped.
fn result_text(b: &[u8]) -> String {
    let utf16 = |be: bool| -> String {
        let units: Vec<u16> = b[2..]
            .chunks_exact(2)
            .map(|c| {
                if be {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    };
    match b {
        [0xff, 0xfe, ..] => utf16(false),
        [0xfe, 0xff, ..] => utf16(true),
        _ => String::from_utf8_lossy(b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b)).into_owned(),
    }
}

/// Reads `$MAILROOM_RESULT` once (a regular file, at most 1 MiB, no link):
/// `Ok(None)` when the agent wrote none, `Err` with the warning for the
/// record when it cannot be used at all.
pub fn read_agent_result(path: &Path) -> Result<Option<AgentResult>, String> {
    use serde_json::Value;
    let not_used = |why: String| format!("$MAILROOM_RESULT was not used: {why}");
    let b = match crate::tree::fsx::read_task_file(path, 1024 * 1024) {
        Ok((b, _)) => b,
        Err(e) if e.is_gone() => return Ok(None),
        Err(e) => return Err(not_used(e.to_string())),
    };
    // A UTF-8 byte order mark (Python's `utf-8-sig`) would make the first
    // key `\u{feff}status`, and a `status: failed` go unseen.
    let b = b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&b);
    let v: Value = serde_saphyr::from_slice(b).map_err(|e| {
        not_used(
            crate::parse::task::yaml_error(&e)
                .display_at("result.yaml")
                .to_string(),
        )
    })?;
    let m = match v {
        Value::Object(m) => m,
        // An empty file says nothing.
        Value::Null => return Ok(Some(AgentResult::default())),
        _ => {
            return Err(not_used(
                "result.yaml is not a mapping (of files_modified, status, summary)".into(),
            ));
        }
    };
    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let files_modified = match m.get("files_modified") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| not_used("files_modified has an entry that is not a path".into())),
        ),
        Some(_) => Some(Err(not_used(
            "files_modified is not a list of paths".into(),
        ))),
    };
    let status_invalid = match m.get("status") {
        None | Some(Value::Null) | Some(Value::String(_)) => None,
        Some(v) => Some(v.to_string()),
    };
    Ok(Some(AgentResult {
        files_modified,
        status_invalid,
        status: text("status"),
        summary: text("summary"),
    }))
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The diff of a worktree run against the commit it started from, cut at
/// `limit` bytes (git is stopped there). With the worktree still on disk:
/// its commits and its uncommitted changes to tracked files (`git diff
/// BASE`); once it is removed, `git diff BASE BRANCH` in `repo`. Repository
/// configuration that would run programs (fsmonitor, external diff, text
/// conversion) is switched off: the dashboard must not run anything a
/// repository names.
pub fn diff_against_base(
    worktree: Option<&Path>,
    repo: &Path,
    base: &str,
    branch: &str,
    limit: usize,
) -> Result<(String, bool), String> {
    use std::io::Read as _;
    if base.is_empty() || !base.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{base}` is not a commit id"));
    }
    let (dir, range): (&Path, Vec<&str>) = match worktree {
        Some(w) => (w, vec![base]),
        None => (repo, vec![base, branch]),
    };
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "core.fsmonitor=false",
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
        ])
        .args(&range)
        .arg("--")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().expect("piped");
    let _ = (&mut stdout).take(limit as u64 + 1).read_to_end(&mut out);
    let cut = out.len() > limit;
    if cut {
        out.truncate(limit);
        let _ = child.kill();
    }
    drop(stdout);
    let mut err = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = (&mut e).take(4096).read_to_end(&mut err);
    }
    let status = child.wait().map_err(|e| format!("git diff: {e}"))?;
    if !cut && !status.success() {
        return Err(format!(
            "git diff failed: {}",
            String::from_utf8_lossy(&err).trim()
        ));
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), cut))
}

/// The branch a task's worktree uses.
pub fn branch_for(task: &str) -> String {
    let clean: String = task
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("mailroom/{}", clean.trim_matches('.'))
}

/// A fresh worktree for `task` from the repository that holds `workdir`:
/// `<dir>/<task>` on branch `mailroom/<task>` (reused by a retry). Returns
/// the worktree's path, the branch, the base commit, and where in the
/// worktree the agent runs (the workdir's place in the repository).
pub fn create(
    workdir: &Path,
    dir: &Path,
    task: &str,
) -> Result<(PathBuf, String, String, PathBuf), String> {
    let top = git(workdir, &["rev-parse", "--show-toplevel"])
        .map_err(|e| format!("`workspace: worktree` needs a git repository at the workdir: {e}"))?;
    let top = PathBuf::from(top);
    let path = dir.join(task);
    let branch = branch_for(task);
    let _held = git(&top, &["rev-parse", "--git-common-dir"])
        .ok()
        .and_then(|c| lock_worktrees(&top.join(c)));
    if path.exists() {
        // A previous attempt's worktree: start it again from its branch.
        let _ = git(
            &top,
            &["worktree", "remove", "--force", &path.to_string_lossy()],
        );
        let _ = std::fs::remove_dir_all(&path);
        let _ = git(&top, &["worktree", "prune"]);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let exists = git(
        &top,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ],
    )
    .is_ok();
    let p = path.to_string_lossy().into_owned();
    if exists {
        git(&top, &["worktree", "add", &p, &branch])?;
    } else {
        git(&top, &["worktree", "add", "-b", &branch, &p, "HEAD"])?;
    }
    let base = git(&path, &["rev-parse", "HEAD"])?;
    let inner = workdir
        .canonicalize()
        .ok()
        .and_then(|w| {
            w.strip_prefix(top.canonicalize().ok()?)
                .ok()
                .map(Path::to_path_buf)
        })
        .unwrap_or_default();
    let cwd = path.join(&inner);
    if !cwd.is_dir() {
        return Err(format!(
            "the workdir `{}` is not in the repository's last commit, so the worktree lacks it",
            inner.display()
        ));
    }
    Ok((path, branch, base, cwd))
}

/// The files a run changed in its worktree: committed since `base`, and not
/// yet committed.
pub fn changed_in_worktree(path: &Path, base: &str) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    if let Ok(out) = git(path, &["diff", "--name-only", &format!("{base}..HEAD")]) {
        files.extend(out.lines().map(str::to_owned));
    }
    files.extend(porcelain(path));
    files.sort();
    files.dedup();
    files
}

fn porcelain(dir: &Path) -> Vec<String> {
    porcelain_lines(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| porcelain_path(l))
        .collect()
}

/// `git status --porcelain` of `dir`, line by line (status and path).
fn porcelain_lines(dir: &Path) -> Option<Vec<String>> {
    git(dir, &["status", "--porcelain", "--untracked-files=all"])
        .ok()
        .map(|out| out.lines().map(str::to_owned).collect())
}

/// The path of a `git status --porcelain` line (a rename's new name).
fn porcelain_path(line: &str) -> Option<String> {
    let p = line.get(3..)?;
    Some(
        p.rsplit(" -> ")
            .next()
            .unwrap_or(p)
            .trim_matches('"')
            .to_owned(),
    )
}

/// One entry of `git status` before a run: its line, and its file's
/// modification time and size then (to tell whether the run changed it).
#[derive(Debug, Clone, PartialEq)]
pub struct Dirty {
    line: String,
    stamp: Option<(i64, i64, u64)>,
}

fn stamp(dir: &Path, rel: &str) -> Option<(i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir.join(rel)).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.len()))
}

/// What is already changed in the repository that holds the shared workdir
/// `dir`, before a run; None outside any repository (no process starts
/// then) or when git fails.
pub fn dirty(dir: &Path) -> Option<Vec<Dirty>> {
    git_toplevel(dir)?;
    Some(
        porcelain_lines(dir)?
            .into_iter()
            .map(|line| {
                let stamp = porcelain_path(&line).and_then(|p| stamp(dir, &p));
                Dirty { line, stamp }
            })
            .collect(),
    )
}

/// Takes the repository's worktree lock (a `flock` on its git directory):
/// runs add and remove their worktrees one at a time, as `git worktree add`
/// reads the other worktrees' files and fails on one being made at the same
/// moment ("failed to read .git/worktrees/<x>/commondir"). Waits at most a
/// minute; without it (not a directory, or held that long), goes on.
fn lock_worktrees(git_dir: &Path) -> Option<std::fs::File> {
    let f = std::fs::File::open(git_dir).ok()?;
    crate::tree::lock::flock_within(&f, std::time::Duration::from_secs(60)).ok()?;
    Some(f)
}

/// Commits what an agent left uncommitted in its worktree onto the run's
/// branch, before the worktree is removed: agents (`claude -p`, `codex
/// exec`) edit files and seldom commit, and a removed worktree would take
/// their work with it. Returns the new commit, `Ok(None)` when there was
/// nothing to commit, and `Err` (the worktree is then kept) when the work
/// cannot be saved on `branch` whole:
/// - the worktree's HEAD is not `branch` (detached, another branch, a
///   rebase under way): a commit there would be lost or land elsewhere;
/// - an untracked git repository is inside it (git would record a bare
///   link to commits that go with the worktree);
/// - an untracked or changed file is over [`SAVE_MAX_FILE`].
///
/// Nothing of the repository's own runs: no hooks (`core.hooksPath` is
/// empty), no fsmonitor, no signing; each git call is stopped after
/// [`SAVE_TIMEOUT`] (a clean filter the repository names still runs, within
/// it). The repository's identity is used, `mailroom`'s where it has none.
pub fn save_uncommitted(
    path: &Path,
    branch: &str,
    message: &str,
) -> Result<Option<String>, String> {
    let lines =
        porcelain_lines(path).ok_or_else(|| "cannot run git status in the worktree".to_string())?;
    if lines.is_empty() {
        return Ok(None);
    }
    let head = git(path, &["symbolic-ref", "-q", "HEAD"]).unwrap_or_default();
    if head != format!("refs/heads/{branch}") {
        return Err(format!(
            "its HEAD is not on {branch} ({}): the agent left it detached, on another branch, \
             or in the middle of a rebase",
            if head.is_empty() {
                "detached"
            } else {
                head.as_str()
            }
        ));
    }
    for l in &lines {
        let Some(p) = porcelain_path(l) else { continue };
        let full = path.join(&p);
        if l.starts_with("??") && (p.ends_with('/') || full.join(".git").exists()) {
            return Err(format!(
                "{p} is a git repository of its own, which a commit would record as a bare link"
            ));
        }
        if let Ok(m) = std::fs::symlink_metadata(&full)
            && m.is_file()
            && m.len() > SAVE_MAX_FILE
        {
            return Err(format!(
                "{p} is {} bytes, over the {} MiB mailroom commits for an agent",
                m.len(),
                SAVE_MAX_FILE >> 20
            ));
        }
    }
    let mut base = vec![
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.fsmonitor=false",
        "-c",
        "commit.gpgsign=false",
    ];
    if git(path, &["config", "user.email"]).is_err() {
        base.extend([
            "-c",
            "user.name=mailroom",
            "-c",
            "user.email=mailroom@localhost",
        ]);
    }
    let with =
        |args: &[&str]| -> Vec<String> { base.iter().chain(args).map(|s| s.to_string()).collect() };
    git_bounded(path, &with(&["add", "--all"]), SAVE_TIMEOUT)?;
    git_bounded(
        path,
        &with(&["commit", "--quiet", "--no-verify", "-m", message]),
        SAVE_TIMEOUT,
    )?;
    git(path, &["rev-parse", "HEAD"]).map(Some)
}

/// The largest file mailroom commits from a worktree for an agent.
pub const SAVE_MAX_FILE: u64 = 50 << 20;
/// How long each git call of [`save_uncommitted`] may take.
pub const SAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `git -C dir args` in a process group of its own, stopped with the whole
/// group (a filter it started included) when it runs past `timeout`.
fn git_bounded(dir: &Path, args: &[String], timeout: std::time::Duration) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    // Read on a thread of its own: a git that writes much (a warning per
    // file) must not block on a full pipe. The first 4 KiB are kept.
    let reader = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = e.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = 4096usize.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    });
    let err_text = move || reader.and_then(|r| r.join().ok()).unwrap_or_default();
    let until = std::time::Instant::now() + timeout;
    let shown = args
        .iter()
        .filter(|a| !a.contains('=') && *a != "-c")
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                return Err(format!("git {shown} failed ({st}): {}", err_text().trim()));
            }
            Ok(None) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => {
                // SAFETY: the group of a child not yet reaped (its pid is
                // still its own, and the group's id).
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.wait();
                return Err(format!(
                    "git {shown} did not finish within {timeout:?}; stopped"
                ));
            }
        }
    }
}

/// Removes a worktree (the branch stays, with the agent's commits).
pub fn remove(path: &Path) -> bool {
    let ok = git(path, &["rev-parse", "--git-common-dir"])
        .ok()
        .map(PathBuf::from)
        .and_then(|common| {
            let repo = if common.is_absolute() {
                common
            } else {
                path.join(common)
            };
            Some((repo.parent()?.to_path_buf(), repo))
        })
        .is_some_and(|(top, common)| {
            let _held = lock_worktrees(&common);
            git(
                &top,
                &["worktree", "remove", "--force", &path.to_string_lossy()],
            )
            .is_ok()
        });
    ok || std::fs::remove_dir_all(path).is_ok()
}

/// `files_modified` for a shared workdir: the agent's `$MAILROOM_RESULT` if
/// it wrote one, else (with `git_status`) what `git status` of the workdir's
/// repository says changed during the run (minus mailroom's own tree): an
/// entry that was not in `dirty_before` (the status before the run), or was
/// but whose file's time or size changed, or is gone. Exact when no other
/// run worked in the workdir meanwhile (`overlapped`) and the status before
/// the run is known; else nothing. No process starts for a workdir outside
/// any repository.
pub fn shared_report(
    said: &Result<Option<AgentResult>, String>,
    workdir: &Path,
    root: &Path,
    git_status: bool,
    overlapped: bool,
    dirty_before: Option<&[Dirty]>,
) -> Report {
    let mut warning = None;
    match said
        .as_ref()
        .map(|r| r.as_ref().and_then(|r| r.files_modified.as_ref()))
    {
        Ok(Some(Ok(listed))) => {
            let (files, dropped) = plain_paths(listed.clone());
            return Report {
                kind: "shared".into(),
                files_modified: files,
                source: "agent".into(),
                warning: (dropped > 0).then(|| {
                    format!(
                        "$MAILROOM_RESULT: {dropped} entr{} of files_modified left out \
                             (absolute, `..`, or control characters: paths are relative to \
                             the workdir and inside it)",
                        if dropped == 1 { "y" } else { "ies" }
                    )
                }),
                ..Report::default()
            };
        }
        // What is wrong goes to the record; git (where it may) lists the files.
        Ok(Some(Err(e))) | Err(e) => warning = Some(e.clone()),
        // No list from the agent: git's, where it may.
        Ok(None) => {}
    }
    if git_status && git_toplevel(workdir).is_some() {
        let ours = |p: &str| {
            let abs = workdir.join(p);
            ["tasks", "context", ".mailroom"]
                .iter()
                .any(|d| abs.starts_with(root.join(d)))
        };
        let before: std::collections::HashMap<&str, &Dirty> = dirty_before
            .unwrap_or_default()
            .iter()
            .map(|d| (d.line.as_str(), d))
            .collect();
        let after = porcelain_lines(workdir).unwrap_or_default();
        let mut files: Vec<String> = after
            .iter()
            .filter_map(|l| {
                let p = porcelain_path(l)?;
                let same = before
                    .get(l.as_str())
                    .is_some_and(|d| d.stamp == stamp(workdir, &p));
                (!same).then_some(p)
            })
            .collect();
        // Changed before the run and clean after it: the run put it back.
        let after_lines: std::collections::HashSet<&str> =
            after.iter().map(String::as_str).collect();
        let after_paths: std::collections::HashSet<String> =
            after.iter().filter_map(|l| porcelain_path(l)).collect();
        files.extend(
            before
                .keys()
                .filter(|l| !after_lines.contains(*l))
                .filter_map(|l| porcelain_path(l))
                .filter(|p| !after_paths.contains(p)),
        );
        files.retain(|p| !ours(p));
        files.sort();
        files.dedup();
        return Report {
            kind: "shared".into(),
            files_modified: files,
            source: "git-status".into(),
            files_modified_exact: Some(!overlapped && dirty_before.is_some()),
            warning,
            ..Report::default()
        };
    }
    Report {
        kind: "shared".into(),
        source: "none".into(),
        warning,
        ..Report::default()
    }
}

/// The entries of an agent's `files_modified` that are plain relative
/// paths inside the workdir, and how many were left out.
fn plain_paths(files: Vec<String>) -> (Vec<String>, usize) {
    let n = files.len();
    let kept: Vec<String> = files
        .into_iter()
        .filter(|f| {
            let p = Path::new(f);
            !f.is_empty()
                && !f.chars().any(char::is_control)
                && p.is_relative()
                && !p
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
        })
        .collect();
    let dropped = n - kept.len();
    (kept, dropped)
}

/// The top of the git repository that holds `dir`: the nearest ancestor
/// with a `.git` (a directory with a `HEAD`, as git itself asks, or the
/// file of a worktree or submodule), found without starting git. An empty
/// `.git` directory (left in `/tmp` by some tool) makes no repository, as
/// for git. Found ones are remembered per directory.
pub fn git_toplevel(dir: &Path) -> Option<PathBuf> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};
    /// How long "not in a repository" is believed: a `git init` in a
    /// workdir is noticed this long after, at the latest.
    const NOT_A_REPO_FOR: Duration = Duration::from_secs(10);
    type Found = HashMap<PathBuf, (Option<PathBuf>, Instant)>;
    static FOUND: OnceLock<Mutex<Found>> = OnceLock::new();
    let found = FOUND.get_or_init(Default::default);
    if let Some((top, at)) = found.lock().ok()?.get(dir)
        && (top.is_some() || at.elapsed() < NOT_A_REPO_FOR)
    {
        return top.clone();
    }
    // Walked up once per workdir (a shared workdir that is not in a
    // repository costs a stat per ancestor, every few seconds at most).
    let top = dir
        .ancestors()
        .find(|d| {
            let git = d.join(".git");
            match std::fs::symlink_metadata(&git) {
                Ok(m) if m.is_dir() => std::fs::symlink_metadata(git.join("HEAD")).is_ok(),
                Ok(_) => true,
                Err(_) => false,
            }
        })
        .map(Path::to_path_buf);
    found
        .lock()
        .ok()?
        .insert(dir.to_path_buf(), (top.clone(), Instant::now()));
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(text: &str) -> Result<Option<AgentResult>, String> {
        let dir = std::env::temp_dir().join(format!(
            "mailroom-result-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("result.yaml");
        std::fs::write(&p, text).unwrap();
        let r = read_agent_result(&p);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn an_empty_git_directory_makes_no_repository() {
        let base = std::env::temp_dir().join(format!("mailroom-gittop-{}", std::process::id()));
        let (empty, repo, linked) = (base.join("e"), base.join("r"), base.join("l"));
        for d in [&empty, &repo, &linked] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
        }
        std::fs::create_dir_all(empty.join(".git")).unwrap();
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::write(repo.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(linked.join(".git"), "gitdir: /elsewhere\n").unwrap();
        // (Nothing above the temp directory is a repository on a test machine.)
        assert_eq!(git_toplevel(&empty.join("sub")), git_toplevel(&base));
        assert_eq!(git_toplevel(&repo.join("sub")), Some(repo.clone()));
        assert_eq!(git_toplevel(&linked.join("sub")), Some(linked.clone()));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn each_key_of_the_result_file_is_read_on_its_own() {
        let r = said("status: failed\nsummary: no luck\nfiles_modified: a.txt\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.status.as_deref(), Some("failed"));
        assert_eq!(r.summary.as_deref(), Some("no luck"));
        assert!(matches!(r.files_modified, Some(Err(ref e)) if e.contains("not a list")));
        let r = said("files_modified: [a.txt, b/c.rs]\n").unwrap().unwrap();
        assert_eq!(
            r.files_modified,
            Some(Ok(vec!["a.txt".into(), "b/c.rs".into()]))
        );
        assert_eq!(r.status, None);
        // No list: the agent said nothing of its files.
        assert_eq!(said("summary: x\n").unwrap().unwrap().files_modified, None);
        assert_eq!(said("").unwrap(), Some(AgentResult::default()));
        assert!(said("- a\n- b\n").unwrap_err().contains("not a mapping"));
        assert_eq!(
            said("status: 42\n")
                .unwrap()
                .unwrap()
                .status_invalid
                .as_deref(),
            Some("42")
        );
        assert_eq!(
            said("status: failed\n").unwrap().unwrap().status_invalid,
            None
        );
        assert!(said("status: [\n").unwrap_err().contains("result.yaml"));
        let missing = std::env::temp_dir().join("mailroom-no-such-result.yaml");
        assert_eq!(read_agent_result(&missing), Ok(None));
    }
}
