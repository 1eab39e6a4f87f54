//! The task file: what may be written in `tasks/pending/*.yaml`, and how it is
//! validated into the [`Task`] the supervisor works with.
//!
//! The raw, on-disk shape ([`RawTask`]) is kept apart from the validated type so
//! that old spellings (`dependencies`, `preferred_agent`, integer priorities,
//! `timeout_minutes`) stay accepted without leaking into the rest of the program.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

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
    /// Whether the prompt carries the shared context (`context_required: true`).
    pub context_required: bool,
    /// Child tasks to expand instead of running an agent (`subtasks:`).
    pub subtasks: Vec<Subtask>,
    /// `workspace:` (None: the agent's).
    pub workspace: Option<crate::run::workspace::Kind>,
    /// `session: parent`: the run continues the CLI session of its parent
    /// (the nearest ancestor that ran an agent with a session).
    pub session_parent: bool,
    /// Things accepted but worth telling the author (ignored fields and the like).
    pub warnings: Vec<String>,
}

impl Task {
    /// The earliest time its own fields let it start: `delay` counted from
    /// `modified`, the file's own time (not from when it was read), else
    /// `not_before`. The scanner queues it with this; `show` says it.
    pub fn starts_at(&self, modified: SystemTime) -> Option<SystemTime> {
        match self.delay {
            Some(d) => Some(modified + d),
            None => self.not_before,
        }
    }

    /// While its own start time ([`Task::starts_at`]) is still ahead of
    /// `now`: that time, and the key that holds it back, as `show`, `list`
    /// and the dashboard name it (`` `delay: 1h` `` or `` `not_before` ``).
    pub fn own_hold(&self, modified: SystemTime, now: SystemTime) -> Option<(SystemTime, String)> {
        let at = self.starts_at(modified).filter(|at| *at > now)?;
        let why = match self.delay {
            Some(d) => format!("`delay: {}`", humantime::format_duration(d)),
            None => "`not_before`".to_owned(),
        };
        Some((at, why))
    }
}

/// Why a task file was refused: what, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
    /// The key the error is about, so that [`parse`] can point at it.
    pub key: Option<&'static str>,
}

impl TaskError {
    fn new(message: impl Into<String>) -> Self {
        TaskError {
            line: None,
            column: None,
            message: message.into(),
            key: None,
        }
    }
    fn at(key: &'static str, message: impl Into<String>) -> Self {
        TaskError {
            key: Some(key),
            ..TaskError::new(message)
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
    "workspace",
    "session",
];

/// The task file as written. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    pub id: Option<Text>,
    pub description: Option<Text>,
    pub prompt: Option<Text>,
    pub priority: Option<RawPriority>,
    pub agent: Option<Text>,
    pub preferred_agent: Option<Text>,
    pub requires: Option<Vec<Text>>,
    pub after: Option<Vec<Text>>,
    pub dependencies: Option<Vec<Text>>,
    pub context_files: Option<Vec<Text>>,
    /// Seed format: `true` adds the shared context (project overview and
    /// current state) to the prompt; a list adds those files, like `context_files`.
    pub context_required: Option<ContextRequired>,
    pub timeout: Option<String>,
    pub timeout_minutes: Option<u64>,
    pub retries: Option<u32>,
    pub workdir: Option<Text>,
    pub labels: Option<Vec<Text>>,
    pub parent: Option<Text>,
    pub created_at: Option<String>,
    pub not_before: Option<String>,
    pub delay: Option<String>,
    /// Seed format: child tasks, each a description or a mapping of task fields.
    pub subtasks: Option<Vec<RawSubtask>>,
    /// `shared` or `worktree` (overrides the agent's).
    pub workspace: Option<String>,
    /// `parent`: continue the parent's CLI session; `new` (the default).
    pub session: Option<String>,
}

/// `context_required:` as written: a flag or a list of files.
#[derive(Debug)]
pub enum ContextRequired {
    Flag(bool),
    Files(Vec<String>),
}

impl<'de> Deserialize<'de> for ContextRequired {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContextRequired;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, or a list of files")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ContextRequired, E> {
                Ok(ContextRequired::Flag(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ContextRequired, A::Error> {
                let mut v = Vec::new();
                while let Some(Text(s)) = seq.next_element::<Text>()? {
                    v.push(s);
                }
                Ok(ContextRequired::Files(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// One entry of `subtasks:`: a description, or a mapping of task fields.
#[derive(Debug)]
pub enum RawSubtask {
    Text(String),
    Fields(Box<SubtaskFields>),
}

/// The fields a subtask may set; the child inherits nothing else from its
/// parent (it gets `parent:` and, in sequence, `after:`).
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubtaskFields {
    #[serde(skip_serializing)]
    pub id: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_agent: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<Text>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires: Option<Vec<Text>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_files: Option<Vec<Text>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl<'de> Deserialize<'de> for RawSubtask {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSubtask;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a description or a mapping of task fields")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSubtask, E> {
                Ok(RawSubtask::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSubtask, A::Error> {
                SubtaskFields::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|f| RawSubtask::Fields(Box::new(f)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A child task to be written from a parent's `subtasks:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Subtask {
    /// The child's name suffix (its `id`, or its position from 1).
    pub suffix: String,
    /// The child's file content (YAML), without `parent`/`after`, which the
    /// expansion adds.
    pub fields: String,
}

/// A string that was written as text: a number or boolean where a
/// description belongs is almost always a mistake (a lost quote, a wrong key).
#[derive(Debug)]
pub struct Text(pub String);

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("text")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            // A null list item: say "null", so the message can name it.
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Err(E::invalid_type(de::Unexpected::Other("null"), &self))
            }
            fn visit_none<E: de::Error>(self) -> Result<Text, E> {
                self.visit_unit()
            }
        }
        d.deserialize_any(V)
    }
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
    // YAML 1.2: only true/false are booleans, so `description: n` or `yes` is text.
    opts.strict_booleans = true;
    opts
}

/// A serde-saphyr error as a task error: message and location, the message
/// built from the error's variant (an unknown key, a duplicate key, several
/// documents, a parser budget), never by reading its text. Unknown keys are
/// suggested among the task keys valid where the error is.
pub fn yaml_error(e: &serde_saphyr::Error) -> TaskError {
    yaml_error_keyed(e, &|key, expected| {
        // The parser lists the keys valid where the error is (a subtask takes
        // fewer than a task); suggest among those.
        let known: Vec<&str> = if expected.is_empty() {
            TASK_KEYS.to_vec()
        } else {
            TASK_KEYS
                .iter()
                .copied()
                .filter(|k| expected.contains(k))
                .collect()
        };
        match suggest(key, &known).filter(|s| *s != key) {
            Some(s) => format!("unknown key `{key}` (did you mean `{s}`?)"),
            None => format!("unknown key `{key}`; known keys: {}", known.join(", ")),
        }
    })
}

/// [`yaml_error`] with the caller's message for an unknown key (given the key
/// and the keys valid at that place): the config has keys of its own.
pub fn yaml_error_keyed(
    e: &serde_saphyr::Error,
    unknown_key: &dyn Fn(&str, &[&str]) -> String,
) -> TaskError {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;
    let (line, column) = match e.location() {
        Some(l) if l.line() > 0 => (Some(l.line()), Some(l.column())),
        _ => (None, None),
    };
    // An error met through an alias is the error itself, wherever it is used.
    let mut inner = e.without_snippet();
    while let E::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let message = match inner {
        E::SerdeUnknownField {
            field, expected, ..
        } => unknown_key(field, expected),
        E::DuplicateMappingKey { key: Some(k), .. } => {
            format!("duplicate key `{k}`: each key may appear once")
        }
        E::DuplicateMappingKey { key: None, .. } => {
            "a key appears twice: each key may appear once".into()
        }
        E::MultipleDocuments { .. }
        | E::Budget {
            breach: B::Documents { .. },
            ..
        } => "the file holds several YAML documents (`---`); a task file holds one".into(),
        E::Budget { breach, .. } => match breach {
            B::Depth { .. } => {
                "the YAML is nested too deeply (over 32 levels); a task file is flat"
            }
            B::ScalarBytes { .. } | B::InputBytes { .. } | B::CommentBytes { .. } => {
                "the file holds too much text for a task"
            }
            _ => {
                "the YAML expands to too much data (an alias bomb?); a task file is small and flat"
            }
        }
        .into(),
        other => {
            // The crate's own wording; the location is reported separately.
            let mut msg = other.to_string();
            strip_location_suffix(&mut msg);
            if let Some(rest) = msg.strip_prefix("error: ")
                && let Some(i) = rest.find(": ")
                && rest[..i].starts_with("line ")
            {
                msg = rest[i + 2..].to_owned();
            }
            msg
        }
    };
    TaskError {
        line,
        column,
        message,
        key: None,
    }
}

/// Drops a trailing " at line N, column M" (and nothing else).
fn strip_location_suffix(msg: &mut String) {
    if let Some(i) = msg.rfind(" at line ") {
        let tail = &msg[i + " at line ".len()..];
        let ok = tail.split_once(", column ").is_some_and(|(l, c)| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
        });
        if ok {
            msg.truncate(i);
        }
    }
}

/// What a key's value must look like, for type errors.
fn expected_value(key: &str) -> Option<&'static str> {
    Some(match key {
        "description" | "prompt" => {
            "text (put numbers and yes/no in quotes: \"42\"; a list or a mapping in a \
             block: `description: |` and the text indented below)"
        }
        "id" | "agent" | "preferred_agent" | "workdir" | "parent" => {
            "text (put numbers and yes/no in quotes: \"42\")"
        }
        "created_at" => "text",
        "priority" => "high, normal, low, or 0, 1, 2",
        "timeout" | "delay" => "a duration such as 90s, 10m or 1h 30m",
        "timeout_minutes" => "a whole number of minutes",
        "retries" => "a whole number from 0 to 100",
        "not_before" => "an RFC 3339 time such as 2026-01-15T10:00:00Z",
        "after" | "dependencies" => "a list of task names, e.g. [task_001] (quote numbers)",
        "requires" | "labels" | "context_files" => {
            "a list of text items (put numbers in quotes: [\"42\"])"
        }
        "context_required" => "true, false, or a list of files",
        "workspace" => "shared or worktree",
        "session" => "parent or new",
        "subtasks" => "a list of descriptions or of task mappings",
        _ => return None,
    })
}

/// The top-level key whose entry holds line `line` (1-based) of `text`.
fn owning_key(text: &str, line: u64) -> Option<(&str, u64)> {
    let lines: Vec<&str> = text.lines().collect();
    let start = (line as usize).min(lines.len());
    (0..start).rev().find_map(|i| {
        let l = lines[i];
        if l.starts_with([' ', '\t', '-', '#']) {
            return None;
        }
        let key = l.split(':').next()?.trim().trim_matches(['"', '\'']);
        TASK_KEYS.contains(&key).then_some((key, i as u64 + 1))
    })
}

/// Line and column of a top-level key's value (or of the key when its value
/// starts on a later line).
fn locate_key(text: &str, key: &str) -> Option<(u64, u64)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let (k, after) = l.split_once(':')?;
        if l.starts_with([' ', '\t']) || k.trim().trim_matches(['"', '\'']) != key {
            return None;
        }
        let value = after.trim_start();
        let col = if value.is_empty() || value.starts_with('#') {
            1
        } else {
            // Columns count characters, 1-based, like the parser's.
            k.chars().count() + 1 + (after.chars().count() - value.chars().count()) + 1
        };
        Some((i as u64 + 1, col as u64))
    })
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
    if name.trim().is_empty() {
        return Err("the name is only spaces".into());
    }
    if name.contains('/') {
        return Err("the name contains a slash".into());
    }
    // Not a separator here, but one on Windows shares and in tools that
    // take either; said as what it is.
    if name.contains('\\') {
        return Err("the name contains a backslash".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!("the name contains a control character {:?}", c));
    }
    if let Some(c) = name.chars().find(|c| invisible(*c)) {
        return Err(format!(
            "the name contains U+{:04X}, an invisible formatting character (a bidirectional \
             override or a zero-width one), which could make it look like another name",
            u32::from(c)
        ));
    }
    Ok(())
}

/// Characters that change how a name is shown without being seen: the
/// bidirectional controls (which can reverse what follows, "trojan
/// source"), zero-width spaces and joiners, the soft hyphen, Hangul fillers,
/// variation selectors, interlinear annotations, tag characters and the
/// byte-order mark.
pub fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// What a directory entry in `pending/` is, judged by its name alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A task file: its stem and extension.
    Task { name: &'a str, ext: &'static str },
    /// Not a task file (editor leftovers, temp files, other extensions).
    Ignored,
    /// Named like a task file but the name cannot be used (reason).
    BadName(String),
}

/// An editor's or tool's leftover, never a task: a dot file (swap files,
/// temporaries), a backup `x~`, an autosave `#x#`. [`classify`] ignores it
/// as it ignores other names; unlike those, it is nobody's mistake to report.
pub fn is_leftover(file_name: &str) -> bool {
    file_name.starts_with('.')
        || file_name.ends_with('~')
        || (file_name.starts_with('#') && file_name.ends_with('#'))
}

/// Classifies a file name found in `pending/`.
pub fn classify(file_name: &str) -> Entry<'_> {
    if is_leftover(file_name) {
        return Entry::Ignored;
    }
    let Some((name, ext)) = file_name
        .rsplit_once('.')
        .and_then(|(n, e)| Some((n, task_ext(e)?)))
    else {
        return Entry::Ignored;
    };
    match check_name(name) {
        Ok(()) => Entry::Task { name, ext },
        Err(e) => Entry::BadName(e),
    }
}

/// The task-file extensions, in the order a name is looked up: YAML, then
/// Markdown with YAML front matter.
pub const TASK_EXTS: [&str; 3] = ["yaml", "yml", "md"];

/// The extension as one of [`TASK_EXTS`], when it is one.
pub fn task_ext(ext: &str) -> Option<&'static str> {
    TASK_EXTS.into_iter().find(|e| *e == ext)
}

/// Parses a task file by its extension: `md` is Markdown with front matter
/// ([`parse_markdown`]), anything else YAML ([`parse`]).
pub fn parse_as(name: &str, ext: &str, bytes: &[u8]) -> Result<Task, TaskError> {
    if ext == "md" {
        parse_markdown(name, bytes)
    } else {
        parse(name, bytes)
    }
}

/// A task file's bytes as text: no NUL, UTF-8 (its position when not), no BOM.
fn task_text(bytes: &[u8]) -> Result<&str, TaskError> {
    // UTF-16: a byte order mark, then NUL bytes beside the ASCII ones.
    if (bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff])) && bytes.contains(&0)
    {
        return Err(TaskError::new(
            "the file is UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8",
        ));
    }
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
            key: None,
        }
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Parses and validates a YAML task file's bytes. `name` is the file's stem.
pub fn parse(name: &str, bytes: &[u8]) -> Result<Task, TaskError> {
    let text = task_text(bytes)?;
    if is_blank_yaml(text) {
        return Err(TaskError::new(
            "the file is empty; a task needs at least a description",
        ));
    }
    let doc = parse_doc(text)?;
    let bare = matches!(doc, Doc::Text(_));
    let raw = match doc {
        Doc::Text(s) => RawTask {
            description: Some(Text(s)),
            ..RawTask::default()
        },
        Doc::Fields(r) => *r,
    };
    validate_at(name, raw, text, 0, bare)
}

/// One YAML document: a plain description or a mapping of task fields.
fn parse_doc(text: &str) -> Result<Doc, TaskError> {
    serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
        let mut err = yaml_error(&e);
        // A type error: say what the key wants, not what Rust type it missed.
        let m = &err.message;
        let rust_type = m.strip_prefix("invalid ").is_some_and(|rest| {
            let word = rest.split([' ', ',', ':']).next().unwrap_or("");
            [
                "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128",
                "isize", "f32", "f64", "bool", "char", "type", "value",
            ]
            .contains(&word)
        });
        let typeish = rust_type
            || [
                "expected string",
                "expected a ",
                "expected sequence",
                "expected mapping",
                "cannot deserialize",
            ]
            .iter()
            .any(|p| m.starts_with(p))
            || m.contains("Option<");
        let got_null = m.contains("null");
        if m.contains("quoted scalar") {
            err.message =
                "a quoted string is not closed (or its next lines are not indented)".into();
        }
        if typeish
            && let Some(l) = err.line
            && let Some((key, key_line)) = owning_key(text, l)
            && let Some(want) = expected_value(key)
        {
            // Point at the value (not the line's start) when the parser could not.
            if l == key_line
                && err.column == Some(1)
                && let Some((kl, kc)) = locate_key(text, key)
            {
                err.line = Some(kl);
                err.column = Some(kc);
            }
            err.message = if got_null {
                format!("`{key}` must be {want}, not an empty value (null)")
            } else {
                format!("`{key}` must be {want}")
            };
        }
        err
    })
}

/// [`validate`], with an error that names no place pointed at its key in
/// `text` (whose first line is line `first_line + 1` of the file).
fn validate_at(
    name: &str,
    raw: RawTask,
    text: &str,
    first_line: u64,
    bare: bool,
) -> Result<Task, TaskError> {
    validate(name, raw).map_err(|mut e| {
        if e.line.is_none() {
            let pos = match e.key {
                Some(_) if bare => Some((1, 1)),
                Some(k) => locate_key(text, k),
                None => None,
            };
            if let Some((l, c)) = pos {
                e.line = Some(l + first_line);
                e.column = Some(c);
            }
        }
        e
    })
}

/// Parses and validates a Markdown task file (`NAME.md`): YAML front matter
/// between two `---` lines holds the task's keys, and the body below it is
/// the description. A file without front matter is all description. Errors
/// carry line numbers of the whole file.
pub fn parse_markdown(name: &str, bytes: &[u8]) -> Result<Task, TaskError> {
    let text = task_text(bytes)?;
    let (front, body, body_line) = split_front_matter(text)?;
    let shift = |mut e: TaskError| {
        e.line = e.line.map(|l| l + 1);
        e
    };
    let mut raw = match front {
        Some(f) if !is_blank_yaml(f) => match parse_doc(f).map_err(shift)? {
            Doc::Fields(r) => *r,
            Doc::Text(_) => {
                return Err(TaskError {
                    line: Some(2),
                    column: Some(1),
                    message: "the front matter holds `key: value` lines; the description \
                              goes below the closing `---`"
                        .into(),
                    key: None,
                });
            }
        },
        _ => RawTask::default(),
    };
    let body = body.trim_start_matches(['\n', '\r']).trim_end();
    let front = front.unwrap_or("");
    if !body.is_empty() {
        let key = match (&raw.description, &raw.prompt) {
            (Some(_), _) => Some("description"),
            (None, Some(_)) => Some("prompt"),
            _ => None,
        };
        if let Some(key) = key {
            let (l, c) = locate_key(front, key).unwrap_or((1, 1));
            return Err(TaskError {
                line: Some(l + 1),
                column: Some(c),
                message: format!(
                    "`{key}` is set in the front matter and the file has a body; in a \
                     Markdown task the body is the description: keep one"
                ),
                key: None,
            });
        }
        raw.description = Some(Text(body.to_owned()));
    } else if raw.description.is_none() && raw.prompt.is_none() {
        return Err(TaskError {
            line: Some(body_line),
            column: Some(1),
            message: if front.is_empty() && body_line == 1 {
                "the file is empty; a task needs at least a description".into()
            } else {
                "no description: write it below the front matter's closing `---`".into()
            },
            key: None,
        });
    }
    validate_at(name, raw, front, 1, false)
}

/// Splits a Markdown file into its front matter (the lines between a first
/// line `---` and the next `---` or `...` line), its body, and the body's
/// first line number. Without a first line `---` there is no front matter.
pub(crate) fn split_front_matter(text: &str) -> Result<(Option<&str>, &str, u64), TaskError> {
    let first = text.split_inclusive('\n').next().unwrap_or("");
    if first.trim_end() != "---" {
        return Ok((None, text, 1));
    }
    let start = first.len();
    let mut off = start;
    for (i, line) in text[start..].split_inclusive('\n').enumerate() {
        let t = line.trim_end();
        if t == "---" || t == "..." {
            return Ok((
                Some(&text[start..off]),
                &text[off + line.len()..],
                i as u64 + 3,
            ));
        }
        off += line.len();
    }
    Err(TaskError {
        line: Some(1),
        column: Some(1),
        message: "the front matter opened by `---` on line 1 is never closed by a `---` line"
            .into(),
        key: None,
    })
}

/// The longest timeout or delay a task may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

/// Turns the raw fields into a [`Task`], checking each value.
pub fn validate(name: &str, raw: RawTask) -> Result<Task, TaskError> {
    let mut warnings = Vec::new();
    // Text fields refuse numbers and booleans alike (see `Text`); from here on
    // they are plain strings.
    let text = |t: Option<Text>| t.map(|Text(s)| s);
    let list = |v: Option<Vec<Text>>| v.map(|v| v.into_iter().map(|Text(s)| s).collect::<Vec<_>>());
    let (raw_id, raw_agent, raw_preferred) =
        (text(raw.id), text(raw.agent), text(raw.preferred_agent));
    let (raw_workdir, raw_parent) = (text(raw.workdir), text(raw.parent));
    let (raw_requires, raw_after, raw_dependencies) =
        (list(raw.requires), list(raw.after), list(raw.dependencies));
    let (raw_context_files, raw_labels) = (list(raw.context_files), list(raw.labels));
    let dkey = if raw.description.is_some() {
        "description"
    } else {
        "prompt"
    };
    let description = match (raw.description, raw.prompt) {
        (Some(_), Some(_)) => {
            return Err(TaskError::at(
                "prompt",
                "both `description` and `prompt` are set; they mean the same, keep one",
            ));
        }
        (Some(Text(d)), None) | (None, Some(Text(d))) => d,
        (None, None) => {
            return Err(TaskError::new(
                "no `description` (or `prompt`): say what the agent should do",
            ));
        }
    };
    if description.trim().is_empty() {
        return Err(TaskError::at(dkey, "the description is empty"));
    }
    if description.contains('\0') {
        return Err(TaskError::at(
            dkey,
            "the description contains a NUL character (\\0), which no program can receive",
        ));
    }
    if let Some(id) = &raw_id {
        check_name(id).map_err(|e| TaskError::at("id", format!("`id`: {e}")))?;
        if id != name {
            warnings.push(format!(
                "`id: {id}` differs from the file name; the file name `{name}` is the task's identity"
            ));
        }
    }
    let priority = match raw.priority {
        None => Priority::Normal,
        Some(RawPriority::Word(w)) => Priority::parse(&w).ok_or_else(|| {
            TaskError::at(
                "priority",
                format!("`priority: {w}` is not a priority; use high, normal or low (or 0, 1, 2)"),
            )
        })?,
        Some(RawPriority::Int(i)) => match i {
            0 => Priority::High,
            1 => Priority::Normal,
            2 => Priority::Low,
            _ => {
                return Err(TaskError::at(
                    "priority",
                    format!("`priority: {i}` is out of range; use 0 (high), 1 (normal) or 2 (low)"),
                ));
            }
        },
    };
    let akey = if raw_agent.is_some() {
        "agent"
    } else {
        "preferred_agent"
    };
    let agent = match (raw_agent, raw_preferred) {
        (Some(a), Some(b)) if a != b => {
            return Err(TaskError::at(
                "preferred_agent",
                format!("`agent: {a}` and `preferred_agent: {b}` disagree; keep one"),
            ));
        }
        (a, b) => a.or(b),
    };
    if let Some(a) = &agent {
        check_name(a).map_err(|e| TaskError::at(akey, format!("`{akey}`: {e}")))?;
    }
    let dep_key = if raw_after.is_some() {
        "after"
    } else {
        "dependencies"
    };
    let mut after = raw_after.unwrap_or_default();
    for d in raw_dependencies.unwrap_or_default() {
        if !after.contains(&d) {
            after.push(d);
        }
    }
    for d in &after {
        check_name(d).map_err(|e| TaskError::at(dep_key, format!("`{dep_key}: {d}`: {e}")))?;
        if d == name {
            return Err(TaskError::at(
                dep_key,
                format!("`{dep_key}` names the task itself (`{d}`); it could never run"),
            ));
        }
    }
    let tkey = if raw.timeout.is_some() {
        "timeout"
    } else {
        "timeout_minutes"
    };
    let timeout = match (raw.timeout, raw.timeout_minutes) {
        (Some(_), Some(_)) => {
            return Err(TaskError::at(
                "timeout_minutes",
                "both `timeout` and `timeout_minutes` are set; keep one",
            ));
        }
        (Some(t), None) => Some(
            parse_duration(&t).map_err(|e| TaskError::at("timeout", format!("`timeout`: {e}")))?,
        ),
        (None, Some(m)) => Some(Duration::from_secs(m.saturating_mul(60))),
        (None, None) => None,
    };
    if timeout == Some(Duration::ZERO) {
        return Err(TaskError::at(tkey, format!("`{tkey}` is zero")));
    }
    if let Some(t) = timeout
        && t > MAX_DURATION
    {
        return Err(TaskError::at(
            tkey,
            format!(
                "`{tkey}` of {} is over the limit of 30 days",
                humantime::format_duration(t)
            ),
        ));
    }
    if let Some(r) = raw.retries
        && r > 100
    {
        return Err(TaskError::at(
            "retries",
            format!("`retries: {r}` is too many; the limit is 100"),
        ));
    }
    let mut context_files = raw_context_files.unwrap_or_default();
    let context_required = match raw.context_required {
        Some(ContextRequired::Flag(b)) => b,
        Some(ContextRequired::Files(v)) => {
            for f in v {
                if !context_files.contains(&f) {
                    context_files.push(f);
                }
            }
            false
        }
        None => false,
    };
    for f in &context_files {
        check_relative_path(f)
            .map_err(|e| TaskError::at("context_files", format!("`context_files`: {e}")))?;
    }
    if let Some(w) = &raw_workdir {
        check_relative_path(w).map_err(|e| TaskError::at("workdir", format!("`workdir`: {e}")))?;
    }
    if let Some(p) = &raw_parent {
        check_name(p).map_err(|e| TaskError::at("parent", format!("`parent`: {e}")))?;
    }
    let mut not_before = match raw.not_before {
        Some(t) => Some(parse_time(&t).ok_or_else(|| {
            TaskError::at("not_before", format!(
                "`not_before: {t}` is not an RFC 3339 time; write e.g. 2026-01-15T10:00:00Z or 2026-01-15T11:00:00+01:00"
            ))
        })?),
        None => None,
    };
    // Like `delay`: a wait of more than 30 days is a mistake (a year 9999
    // would hold the task, `run --exit-when-idle` and `wait` for ever).
    if let Some(t) = not_before
        && t.duration_since(SystemTime::now())
            .is_ok_and(|ahead| ahead > MAX_DURATION)
    {
        return Err(TaskError::at(
            "not_before",
            "`not_before` is more than 30 days ahead (the limit); submit the task closer to its time",
        ));
    }
    let mut delay = None;
    if let Some(d) = raw.delay {
        let d = parse_duration(&d).map_err(|e| TaskError::at("delay", format!("`delay`: {e}")))?;
        if d > MAX_DURATION {
            return Err(TaskError::at(
                "delay",
                "`delay` is over the limit of 30 days",
            ));
        }
        delay = Some(d);
        // A delay counts from submission; the caller replaces this with the
        // file's own time when it knows it.
        not_before = Some(SystemTime::now() + d);
    }
    let workspace = match raw.workspace.as_deref() {
        None => None,
        Some(w) => Some(crate::run::workspace::Kind::parse(w).ok_or_else(|| {
            TaskError::at(
                "workspace",
                format!("`workspace: {w}`: use shared or worktree"),
            )
        })?),
    };
    let session_parent = match raw.session.as_deref().map(str::trim) {
        None | Some("new") => false,
        Some("parent") if raw_parent.is_some() => true,
        Some("parent") => {
            return Err(TaskError::at(
                "session",
                "`session: parent` continues the session of the task's parent, but this task \
                 has no `parent:` (follow-ups and subtasks get one when they are queued)",
            ));
        }
        Some(s) => {
            return Err(TaskError::at(
                "session",
                format!("`session: {s}`: use parent (continue the parent's session) or new"),
            ));
        }
    };
    let mut subtasks: Vec<Subtask> = Vec::new();
    for (i, st) in raw.subtasks.unwrap_or_default().into_iter().enumerate() {
        let mut fields = match st {
            RawSubtask::Text(d) => SubtaskFields {
                description: Some(Text(d)),
                ..SubtaskFields::default()
            },
            RawSubtask::Fields(f) => *f,
        };
        let suffix = match fields.id.take() {
            Some(Text(id)) => {
                check_name(&id).map_err(|e| {
                    TaskError::at("subtasks", format!("`subtasks` item {}: `id`: {e}", i + 1))
                })?;
                id
            }
            None => (i + 1).to_string(),
        };
        // Two entries of one id would be one child: the second was dropped.
        if let Some(j) = subtasks.iter().position(|s| s.suffix == suffix) {
            return Err(TaskError::at(
                "subtasks",
                format!(
                    "`subtasks` item {}: the id `{suffix}` is used twice (item {} has it too); \
                     give each subtask its own `id`",
                    i + 1,
                    j + 1
                ),
            ));
        }
        let child = format!("{name}.{suffix}");
        check_name(&child).map_err(|e| {
            TaskError::at(
                "subtasks",
                format!(
                    "`subtasks` item {}: its child would be named `{child}`, but {e}; \
                     shorten the task's name",
                    i + 1
                ),
            )
        })?;
        let yaml = serde_saphyr::to_string(&fields)
            .map_err(|e| TaskError::at("subtasks", format!("`subtasks` item {}: {e}", i + 1)))?;
        // Each child must be a valid task on its own, checked now (with the
        // `parent:` it gets when it is written, which `session` needs).
        let whole = if fields.session.is_some() {
            format!("{}\nparent: {:?}\n", yaml.trim_end(), name)
        } else {
            yaml.clone()
        };
        parse(&child, whole.as_bytes()).map_err(|e| {
            TaskError::at(
                "subtasks",
                format!("`subtasks` item {}: {}", i + 1, e.message),
            )
        })?;
        subtasks.push(Subtask {
            suffix,
            fields: yaml,
        });
    }
    if subtasks.len() > 100 {
        return Err(TaskError::at("subtasks", "more than 100 subtasks"));
    }
    Ok(Task {
        name: name.to_owned(),
        description,
        priority,
        agent,
        requires: raw_requires.unwrap_or_default(),
        after,
        context_files,
        timeout,
        retries: raw.retries,
        workdir: raw_workdir,
        labels: raw_labels.unwrap_or_default(),
        parent: raw_parent,
        not_before,
        delay,
        context_required,
        subtasks,
        workspace,
        session_parent,
        warnings,
    })
}

/// The `parent` a task file that does not parse names all the same: its
/// last top-level `parent: <name>` line, when that is a valid name (a
/// follow-up that did not parse has one, added when it was queued).
pub fn parent_line(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let v = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("parent:"))?
        .trim();
    let name = if v.starts_with('"') {
        serde_json::from_str::<String>(v).ok()?
    } else {
        v.trim_matches('\'').to_owned()
    };
    check_name(&name).is_ok().then_some(name)
}

/// Parses an RFC 3339 time with `Z` or a numeric offset (`+01:00`).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Some(base) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return humantime::parse_rfc3339_weak(&format!("{base}Z")).ok();
    }
    // A trailing ±HH:MM offset, after the time part.
    let cut = s.len().checked_sub(6)?;
    if !s.is_char_boundary(cut) {
        return None;
    }
    let (base, off) = s.split_at(cut);
    let b = off.as_bytes();
    if !(b[0] == b'+' || b[0] == b'-') || b[3] != b':' || !base.contains('T') {
        return None;
    }
    let h: u64 = off[1..3].parse().ok()?;
    let m: u64 = off[4..6].parse().ok()?;
    // RFC 3339's offsets: hours 00-23, minutes 00-59.
    if h > 23
        || m > 59
        || !off[1..3]
            .bytes()
            .chain(off[4..6].bytes())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
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
    fn parse_time_refuses_offsets_out_of_range() {
        assert!(parse_time("2026-01-15T11:00:00+01:00").is_some());
        assert!(parse_time("2026-01-15T11:00:00-23:59").is_some());
        for bad in [
            "2026-01-15T11:00:00+99:99",
            "2026-01-15T11:00:00+24:00",
            "2026-01-15T11:00:00+01:60",
            "2026-01-15T11:00:00++1:00",
        ] {
            assert!(parse_time(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn parent_line_finds_the_last_top_level_parent_of_a_broken_file() {
        assert_eq!(
            parent_line(b"description: [x\nparent: \"a\"\n").as_deref(),
            Some("a")
        );
        assert_eq!(
            parent_line(b"parent: a\nx: [\nparent: b\n").as_deref(),
            Some("b")
        );
        assert_eq!(parent_line(b"  parent: a\n"), None, "not top level");
        assert_eq!(parent_line(b"parent: ../x\n"), None, "not a name");
        assert_eq!(parent_line(b"description: x\n"), None);
    }

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
    fn markdown_front_matter_holds_the_keys_and_the_body_is_the_description() {
        let md = "---\npriority: high\nagent: claude\n---\n\n# Fix login\n\nThe form *hangs*.\n\n";
        let t = parse_as("fix", "md", md.as_bytes()).unwrap();
        assert_eq!(t.priority, Priority::High);
        assert_eq!(t.agent.as_deref(), Some("claude"));
        assert_eq!(t.description, "# Fix login\n\nThe form *hangs*.");
        // No front matter: the whole file is the description.
        let t = parse_markdown("x", b"Just do it.\n").unwrap();
        assert_eq!(t.description, "Just do it.");
        // `...` closes the front matter too; CRLF lines are fine.
        let t = parse_markdown("x", b"---\r\ntimeout: 5m\r\n...\r\nGo.\r\n").unwrap();
        assert_eq!(t.timeout, Some(Duration::from_secs(300)));
        assert_eq!(t.description, "Go.");
    }

    #[test]
    fn markdown_errors_carry_lines_of_the_whole_file() {
        let e = parse_markdown("x", b"---\nagent: a\npriorty: high\n---\nBody\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(3), Some(1)), "{e:?}");
        assert!(e.message.contains("did you mean `priority`"), "{e:?}");
        let e = parse_markdown("x", b"---\nagent: a\nretries: lots\n---\nBody\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        assert!(e.message.contains("retries"), "{e:?}");
        let e = parse_markdown("x", b"---\nagent: a\ntimeout: 5\n---\nBody\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        let e = parse_markdown("x", b"---\nagent: a\n\nBody without a close\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e:?}");
        assert!(e.message.contains("never closed"), "{e:?}");
        let e = parse_markdown("x", b"---\nagent: a\n---\n\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e:?}");
        assert!(e.message.contains("no description"), "{e:?}");
        let e = parse_markdown("x", b"---\ndescription: a\n---\nBody\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(14)), "{e:?}");
        assert!(e.message.contains("keep one"), "{e:?}");
        let e = parse_markdown("x", b"---\njust text\n---\nBody\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e:?}");
        let e = parse_markdown("x", b"\n  \n").unwrap_err();
        assert!(e.message.contains("empty"), "{e:?}");
        // A description in the front matter and no body is a task too.
        let t = parse_markdown("x", b"---\ndescription: a\n---\n").unwrap();
        assert_eq!(t.description, "a");
        // The keys are checked as in YAML: numbers are not text.
        let e = parse_markdown("x", b"---\nworkdir: 5\n---\nBody\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e:?}");
    }

    #[test]
    fn md_is_a_task_extension() {
        assert_eq!(
            classify("a.md"),
            Entry::Task {
                name: "a",
                ext: "md"
            }
        );
        assert_eq!(classify("a.markdown"), Entry::Ignored);
    }

    #[test]
    fn session_parent_needs_a_parent() {
        let t = parse("c", b"description: go on\nparent: p\nsession: parent\n").unwrap();
        assert!(t.session_parent);
        assert!(
            !parse("c", b"description: x\nsession: new\n")
                .unwrap()
                .session_parent
        );
        let e = parse("c", b"description: go on\nsession: parent\n").unwrap_err();
        assert!(e.message.contains("has no `parent:`"), "{}", e.message);
        let e = parse("c", b"description: x\nparent: p\nsession: mine\n").unwrap_err();
        assert!(e.message.contains("use parent"), "{}", e.message);
        // A subtask gets its `parent:` when it is written.
        let t = parse(
            "p",
            b"description: p\nsubtasks:\n  - description: a\n    session: parent\n",
        )
        .unwrap();
        assert!(
            t.subtasks[0].fields.contains("session: parent"),
            "{:?}",
            t.subtasks
        );
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
    fn errors_after_parsing_point_at_their_key() {
        let e = parse("x", b"description: hi\nretries: 1000\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(10)), "{e:?}");
        let e = parse("x", b"description: hi\ntimeout: 1M\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = parse("x", b"description: hi\nretries: three\n").unwrap_err();
        assert_eq!(e.message, "`retries` must be a whole number from 0 to 100");
        let e = parse("x", b"description: \"a\\0b\"\n").unwrap_err();
        assert!(e.message.contains("NUL"), "{e:?}");
        let e = parse("x", b"description: hi\ntimeout: 500000000000y\n").unwrap_err();
        assert!(e.message.contains("30 days"), "{e:?}");
        let e = parse("x", b"description: a\ndescription: b\n").unwrap_err();
        assert_eq!(
            e.message,
            "duplicate key `description`: each key may appear once"
        );
        let e = parse("x", b"---\ndescription: a\n---\ndescription: b\n").unwrap_err();
        assert!(e.message.contains("several YAML documents"), "{e:?}");
    }

    #[test]
    fn yaml_1_1_booleans_are_text_but_numbers_are_refused() {
        for w in ["n", "y", "yes", "no", "on", "off"] {
            let t = parse("x", format!("description: {w}\n").as_bytes()).unwrap();
            assert_eq!(t.description, w);
        }
        let e = parse("x", b"description: 42\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(1), Some(14)), "{e:?}");
        assert!(e.message.starts_with("`description` must be text"), "{e:?}");
    }

    #[test]
    fn a_key_without_a_colon_on_its_line_is_not_located() {
        // Found by the property tests: this used to slice past the line's end.
        let e = parse("x", b"{retries: 1000,\ndescription\n: \"\"}").unwrap_err();
        assert!(!e.message.is_empty());
        assert_eq!(locate_key("description\n", "description"), None);
        assert_eq!(locate_key("retries: 5\n", "retries"), Some((1, 10)));
        assert_eq!(locate_key("é: 5\n", "é"), Some((1, 4)));
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
        assert_eq!(parse_time("éééa"), None);
        assert_eq!(parse_time("2026-01-15T10:00:00é+01:00"), None);
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

    #[test]
    fn names_of_spaces_utf16_files_and_alias_bombs_get_clear_errors() {
        assert_eq!(check_name("   ").unwrap_err(), "the name is only spaces");
        assert_eq!(
            check_name("a\\b").unwrap_err(),
            "the name contains a backslash"
        );
        assert_eq!(check_name("a/b").unwrap_err(), "the name contains a slash");
        assert!(check_name("a b").is_ok());
        // Names that could pass for others: bidirectional overrides and
        // zero-width characters. Other scripts, right-to-left ones too, are
        // names like any.
        for bad in [
            "bidi\u{202e}evil\u{202c}",
            "a\u{200b}b",
            "\u{2066}x",
            "x\u{feff}",
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("invisible formatting character"), "{bad:?}: {e}");
        }
        for good in ["עברית", "مهمة", "日本語のタスク", "café-2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let e = parse("t", b"\xff\xfed\x00e\x00").unwrap_err();
        assert!(e.message.contains("UTF-16"), "{}", e.message);
        let big = "x".repeat(100_000);
        let aliases = vec!["*a"; 60].join(",");
        let bomb = format!("description: &a \"{big}\"\nlabels: [{aliases}]\n");
        let e = parse("t", bomb.as_bytes()).unwrap_err();
        assert!(
            e.message.contains("too much") && !e.message.contains("ScalarBytes"),
            "{}",
            e.message
        );
    }
}
