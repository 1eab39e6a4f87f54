//! The task file: what may be written in `tasks/pending/*.yaml`, and how it is
//! validated into the [`Task`] the supervisor works with.
//!
//! The raw, on-disk shape ([`RawTask`]) is kept apart from the validated type so
//! that old spellings (`dependencies`, `preferred_agent`, integer priorities,
//! `timeout_minutes`) stay accepted without leaking into the rest of the program.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

/// Largest task file mailroom reads, by default (see `max_task_bytes`).
pub const DEFAULT_MAX_TASK_BYTES: u64 = 1024 * 1024;

/// Longest task name, in bytes; leaves room for suffixes under NAME_MAX (255).
pub const MAX_NAME_BYTES: usize = 200;

/// A task's priority. Lower sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High = 0,
    Normal = 1,
    Low = 2,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" | "0" => Some(Priority::High),
            "normal" | "medium" | "1" => Some(Priority::Normal),
            "low" | "2" => Some(Priority::Low),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
    /// One level more urgent (used by ageing).
    pub fn raised(self) -> Priority {
        match self {
            Priority::Low => Priority::Normal,
            _ => Priority::High,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The file's stem: the task's identity.
    pub name: String,
    pub description: String,
    pub priority: Priority,
    pub agent: Option<String>,
    pub requires: Vec<String>,
    pub after: Vec<String>,
    pub context_files: Vec<String>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub workdir: Option<String>,
    pub labels: Vec<String>,
    pub parent: Option<String>,
    pub not_before: Option<SystemTime>,
    /// `delay`, counted from the file's modification time by the scanner.
    pub delay: Option<Duration>,
    /// Things accepted but worth telling the author (ignored fields and the like).
    pub warnings: Vec<String>,
}

/// Why a task file was refused: what, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

impl TaskError {
    fn new(message: impl Into<String>) -> Self {
        TaskError {
            line: None,
            column: None,
            message: message.into(),
        }
    }
    /// `file:line:column: message`, the form editors jump to.
    pub fn display_at(&self, file: &str) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}: {}", self.message),
            (Some(l), None) => format!("{file}:{l}: {}", self.message),
            _ => format!("{file}: {}", self.message),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// Every key a task file may hold, for "did you mean" hints.
pub const TASK_KEYS: &[&str] = &[
    "id",
    "description",
    "prompt",
    "priority",
    "agent",
    "preferred_agent",
    "requires",
    "after",
    "dependencies",
    "context_files",
    "context_required",
    "timeout",
    "timeout_minutes",
    "retries",
    "workdir",
    "labels",
    "parent",
    "created_at",
    "not_before",
    "delay",
    "subtasks",
];

/// The task file as written. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    pub id: Option<String>,
    pub description: Option<String>,
    pub prompt: Option<String>,
    pub priority: Option<RawPriority>,
    pub agent: Option<String>,
    pub preferred_agent: Option<String>,
    pub requires: Option<Vec<String>>,
    pub after: Option<Vec<String>>,
    pub dependencies: Option<Vec<String>>,
    pub context_files: Option<Vec<String>>,
    /// Seed format; accepted, its meaning is carried by `context_files`.
    pub context_required: Option<IgnoredAny>,
    pub timeout: Option<String>,
    pub timeout_minutes: Option<u64>,
    pub retries: Option<u32>,
    pub workdir: Option<String>,
    pub labels: Option<Vec<String>>,
    pub parent: Option<String>,
    pub created_at: Option<String>,
    pub not_before: Option<String>,
    pub delay: Option<String>,
    /// Seed format; accepted and reported as not expanded yet.
    pub subtasks: Option<IgnoredAny>,
}

/// A priority as written: a word or an integer.
#[derive(Debug)]
pub enum RawPriority {
    Word(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for RawPriority {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawPriority;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("high, normal, low, or 0, 1, 2")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPriority, E> {
                Ok(RawPriority::Word(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPriority, E> {
                Ok(RawPriority::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPriority, E> {
                Ok(RawPriority::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A whole document: a bare string is a description, a mapping is a task.
enum Doc {
    Text(String),
    Fields(Box<RawTask>),
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Doc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of task fields, or a plain description")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Doc, E> {
                Ok(Doc::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Doc, A::Error> {
                RawTask::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|r| Doc::Fields(Box::new(r)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parser limits: a task file is small, so anything large or deep is hostile.
pub fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 32;
    budget.max_aliases = 64;
    budget.max_anchors = 64;
    budget.max_documents = 1;
    budget.max_nodes = 100_000;
    budget.max_events = 200_000;
    budget.max_total_scalar_bytes = 4 * 1024 * 1024;
    let mut opts = serde_saphyr::Options::default();
    opts.budget = Some(budget);
    opts
}

/// Splits a serde-saphyr error into its message and location.
pub fn yaml_error(e: &serde_saphyr::Error) -> TaskError {
    let (line, column) = match e.location() {
        Some(l) if l.line() > 0 => (Some(l.line()), Some(l.column())),
        _ => (None, None),
    };
    let mut msg = e.without_snippet().to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    if let Some(rest) = msg.strip_prefix("error: ")
        && let Some(i) = rest.find(": ")
        && rest[..i].starts_with("line ")
    {
        msg = rest[i + 2..].to_owned();
    }
    if msg.contains("multiple YAML documents") {
        msg = "the file holds several YAML documents (`---`); a task file holds one".into();
    }
    if let Some(key) = unknown_field(&msg) {
        msg = match suggest(&key, TASK_KEYS) {
            Some(s) => format!("unknown key `{key}` (did you mean `{s}`?)"),
            None => format!("unknown key `{key}`; known keys: {}", TASK_KEYS.join(", ")),
        };
    }
    TaskError {
        line,
        column,
        message: msg,
    }
}

fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The closest known word within a small edit distance.
pub fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&w, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses a humantime duration, with the mistakes people make spelled out.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. `90s`, `10m` or `1h 30m`".into());
    }
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "`{t}` has no unit; write e.g. `{t}s` or `{t}m` (s, m, h, d)"
        ));
    }
    if t.starts_with('-') {
        return Err(format!("`{t}` is negative; a duration must be positive"));
    }
    // humantime reads `M` as months: almost always a typo for minutes here.
    let bytes = t.as_bytes();
    for (i, c) in bytes.iter().enumerate() {
        if *c == b'M' && i > 0 && (bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b' ') {
            let next = bytes.get(i + 1).copied();
            if next.is_none() || next == Some(b' ') || next.is_some_and(|n| n.is_ascii_digit()) {
                return Err(format!(
                    "`{t}`: `M` means months; write `m` for minutes, or `30d` for a month"
                ));
            }
        }
    }
    humantime::parse_duration(t).map_err(|e| format!("`{t}` is not a duration: {e}"))
}

/// Whether a string is safe to use as one path component / task name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "the name is {} bytes long; the limit is {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err("the name starts with a dot".into());
    }
    if name.contains('/') || name.contains('\\') {
        return Err("the name contains a slash".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!("the name contains a control character {:?}", c));
    }
    Ok(())
}

/// What a directory entry in `pending/` is, judged by its name alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A task file: its stem and extension.
    Task { name: &'a str, ext: &'a str },
    /// Not a task file (editor leftovers, temp files, other extensions).
    Ignored,
    /// Named like a task file but the name cannot be used (reason).
    BadName(String),
}

/// Classifies a file name found in `pending/`.
pub fn classify(file_name: &str) -> Entry<'_> {
    if file_name.starts_with('.')
        || file_name.ends_with('~')
        || (file_name.starts_with('#') && file_name.ends_with('#'))
    {
        return Entry::Ignored;
    }
    let (name, ext) = match file_name.rsplit_once('.') {
        Some((n, e)) if e == "yaml" || e == "yml" => (n, e),
        _ => return Entry::Ignored,
    };
    match check_name(name) {
        Ok(()) => Entry::Task { name, ext },
        Err(e) => Entry::BadName(e),
    }
}

/// Parses and validates a task file's bytes. `name` is the file's stem.
pub fn parse(name: &str, bytes: &[u8]) -> Result<Task, TaskError> {
    if bytes.contains(&0) {
        return Err(TaskError::new(
            "the file holds binary data (NUL bytes); a task file is YAML text",
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let off = e.valid_up_to();
        let line = bytes[..off].iter().filter(|b| **b == b'\n').count() as u64 + 1;
        let col = (off
            - bytes[..off]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1)) as u64
            + 1;
        TaskError {
            line: Some(line),
            column: Some(col),
            message: format!("the file is not UTF-8 text (bad byte at offset {off})"),
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if is_blank_yaml(text) {
        return Err(TaskError::new(
            "the file is empty; a task needs at least a description",
        ));
    }
    let doc: Doc =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| yaml_error(&e))?;
    let raw = match doc {
        Doc::Text(s) => RawTask {
            description: Some(s),
            ..RawTask::default()
        },
        Doc::Fields(r) => *r,
    };
    validate(name, raw)
}

fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

/// Turns the raw fields into a [`Task`], checking each value.
pub fn validate(name: &str, raw: RawTask) -> Result<Task, TaskError> {
    let mut warnings = Vec::new();
    let description = match (raw.description, raw.prompt) {
        (Some(_), Some(_)) => {
            return Err(TaskError::new(
                "both `description` and `prompt` are set; they mean the same, keep one",
            ));
        }
        (Some(d), None) | (None, Some(d)) => d,
        (None, None) => {
            return Err(TaskError::new(
                "no `description` (or `prompt`): say what the agent should do",
            ));
        }
    };
    if description.trim().is_empty() {
        return Err(TaskError::new("the description is empty"));
    }
    if let Some(id) = &raw.id {
        check_name(id).map_err(|e| TaskError::new(format!("`id`: {e}")))?;
        if id != name {
            warnings.push(format!(
                "`id: {id}` differs from the file name; the file name `{name}` is the task's identity"
            ));
        }
    }
    let priority = match raw.priority {
        None => Priority::Normal,
        Some(RawPriority::Word(w)) => Priority::parse(&w).ok_or_else(|| {
            TaskError::new(format!(
                "`priority: {w}` is not a priority; use high, normal or low (or 0, 1, 2)"
            ))
        })?,
        Some(RawPriority::Int(i)) => match i {
            0 => Priority::High,
            1 => Priority::Normal,
            2 => Priority::Low,
            _ => {
                return Err(TaskError::new(format!(
                    "`priority: {i}` is out of range; use 0 (high), 1 (normal) or 2 (low)"
                )));
            }
        },
    };
    let agent = match (raw.agent, raw.preferred_agent) {
        (Some(a), Some(b)) if a != b => {
            return Err(TaskError::new(format!(
                "`agent: {a}` and `preferred_agent: {b}` disagree; keep one"
            )));
        }
        (a, b) => a.or(b),
    };
    if let Some(a) = &agent {
        check_name(a).map_err(|e| TaskError::new(format!("`agent`: {e}")))?;
    }
    let mut after = raw.after.unwrap_or_default();
    for d in raw.dependencies.unwrap_or_default() {
        if !after.contains(&d) {
            after.push(d);
        }
    }
    for d in &after {
        check_name(d).map_err(|e| TaskError::new(format!("`after: {d}`: {e}")))?;
        if d == name {
            return Err(TaskError::new(format!(
                "`after` names the task itself (`{d}`); it could never run"
            )));
        }
    }
    let timeout = match (raw.timeout, raw.timeout_minutes) {
        (Some(_), Some(_)) => {
            return Err(TaskError::new(
                "both `timeout` and `timeout_minutes` are set; keep one",
            ));
        }
        (Some(t), None) => {
            Some(parse_duration(&t).map_err(|e| TaskError::new(format!("`timeout`: {e}")))?)
        }
        (None, Some(m)) => Some(Duration::from_secs(m.saturating_mul(60))),
        (None, None) => None,
    };
    if timeout == Some(Duration::ZERO) {
        return Err(TaskError::new("`timeout` is zero"));
    }
    if let Some(r) = raw.retries
        && r > 100
    {
        return Err(TaskError::new(format!(
            "`retries: {r}` is too many; the limit is 100"
        )));
    }
    let context_files = raw.context_files.unwrap_or_default();
    for f in &context_files {
        check_relative_path(f).map_err(|e| TaskError::new(format!("`context_files`: {e}")))?;
    }
    if let Some(w) = &raw.workdir {
        check_relative_path(w).map_err(|e| TaskError::new(format!("`workdir`: {e}")))?;
    }
    if let Some(p) = &raw.parent {
        check_name(p).map_err(|e| TaskError::new(format!("`parent`: {e}")))?;
    }
    let mut not_before = match raw.not_before {
        Some(t) => Some(parse_time(&t).ok_or_else(|| {
            TaskError::new(format!(
                "`not_before: {t}` is not an RFC 3339 time; write e.g. 2026-01-15T10:00:00Z or 2026-01-15T11:00:00+01:00"
            ))
        })?),
        None => None,
    };
    let mut delay = None;
    if let Some(d) = raw.delay {
        let d = parse_duration(&d).map_err(|e| TaskError::new(format!("`delay`: {e}")))?;
        delay = Some(d);
        // A delay counts from submission; the caller replaces this with the
        // file's own time when it knows it.
        not_before = Some(SystemTime::now() + d);
    }
    if raw.subtasks.is_some() {
        warnings.push("`subtasks` are accepted but not expanded by this version".into());
    }
    Ok(Task {
        name: name.to_owned(),
        description,
        priority,
        agent,
        requires: raw.requires.unwrap_or_default(),
        after,
        context_files,
        timeout,
        retries: raw.retries,
        workdir: raw.workdir,
        labels: raw.labels.unwrap_or_default(),
        parent: raw.parent,
        not_before,
        delay,
        warnings,
    })
}

/// Parses an RFC 3339 time with `Z` or a numeric offset (`+01:00`).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Some(base) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return humantime::parse_rfc3339_weak(&format!("{base}Z")).ok();
    }
    // A trailing ±HH:MM offset, after the time part.
    let (base, off) = s.split_at(s.len().checked_sub(6)?);
    let b = off.as_bytes();
    if !(b[0] == b'+' || b[0] == b'-') || b[3] != b':' || !base.contains('T') {
        return None;
    }
    let h: u64 = off[1..3].parse().ok()?;
    let m: u64 = off[4..6].parse().ok()?;
    let shift = Duration::from_secs(h * 3600 + m * 60);
    let t = humantime::parse_rfc3339_weak(&format!("{base}Z")).ok()?;
    if b[0] == b'+' {
        t.checked_sub(shift)
    } else {
        t.checked_add(shift)
    }
}

/// A path from a task file must stay inside the root: relative, no `..`.
pub fn check_relative_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.starts_with('/') {
        return Err(format!(
            "`{p}` is absolute; paths in a task are relative to the root"
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!("`{p}` leaves the root through `..`"));
    }
    if p.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_task_001_is_accepted_as_written() {
        let y = r#"id: task_001
description: "Implement user authentication"
priority: 1
created_at: "2025-01-15T10:00:00Z"
dependencies: []
context_files: ["context/project_overview.md", "context/current_state.md"]
"#;
        let t = parse("task_001", y.as_bytes()).unwrap();
        assert_eq!(t.description, "Implement user authentication");
        assert_eq!(t.priority, Priority::Normal);
        assert_eq!(t.context_files.len(), 2);
        assert!(t.warnings.is_empty());
    }

    #[test]
    fn appendix_style_is_accepted() {
        let y = "description: Build the API\npriority: high\npreferred_agent: claude\n\
                 timeout_minutes: 30\ncontext_required:\n  - context/project_overview.md\n\
                 dependencies: [task_001]\nsubtasks:\n  - description: a\n  - description: b\n";
        let t = parse("api", y.as_bytes()).unwrap();
        assert_eq!(t.priority, Priority::High);
        assert_eq!(t.agent.as_deref(), Some("claude"));
        assert_eq!(t.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(t.after, vec!["task_001".to_string()]);
    }

    #[test]
    fn bare_string_is_a_description() {
        let t = parse("x", b"Write a haiku about queues\n").unwrap();
        assert_eq!(t.description, "Write a haiku about queues");
    }

    #[test]
    fn typo_gets_a_suggestion_with_location() {
        let e = parse("x", b"description: hi\npriorty: high\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.column, Some(1));
        assert!(
            e.message.contains("did you mean `priority`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn wrong_type_and_bad_yaml_have_locations() {
        let e = parse("x", b"description: hi\nretries: lots\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e:?}");
        let e = parse("x", b"description: [unclosed\n").unwrap_err();
        assert!(e.line.is_some(), "{e:?}");
    }

    #[test]
    fn durations_refuse_bare_numbers_and_months() {
        assert!(parse_duration("90").unwrap_err().contains("no unit"));
        assert!(parse_duration("1M").unwrap_err().contains("months"));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
    }

    #[test]
    fn times_with_offsets() {
        let z = parse_time("2026-01-15T10:00:00Z").unwrap();
        assert_eq!(parse_time("2026-01-15T11:00:00+01:00"), Some(z));
        assert_eq!(parse_time("2026-01-15T05:30:00.000-04:30"), Some(z));
        assert_eq!(parse_time("tomorrow"), None);
    }

    #[test]
    fn names_and_paths_are_confined() {
        assert!(check_relative_path("../etc/passwd").is_err());
        assert!(check_relative_path("/etc/passwd").is_err());
        assert!(check_relative_path("context/a.md").is_ok());
        assert!(parse("x", b"description: a\nid: ../../x\n").is_err());
        assert!(parse("x", b"description: a\nafter: [x]\n").is_err());
    }

    #[test]
    fn classify_ignores_editor_leftovers() {
        for n in [
            ".a.yaml.swp",
            "a.yaml~",
            "#a.yaml#",
            "4913",
            "a.tmp",
            "a.txt",
            ".hidden.yaml",
        ] {
            assert_eq!(classify(n), Entry::Ignored, "{n}");
        }
        assert_eq!(
            classify("a b.yml"),
            Entry::Task {
                name: "a b",
                ext: "yml"
            }
        );
    }

    #[test]
    fn alias_bomb_is_refused() {
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n\
                    description: *h\n";
        assert!(parse("x", bomb.as_bytes()).is_err());
    }
}
