//! Reading a finished agent run: what the agent answered and how the run ended.
//!
//! A CLI's exit code and stdout are not its outcome. Claude Code exits 1 on API errors
//! and still says `subtype: "success"`; gemini exits with the HTTP status mod 256, and
//! prints its error as JSON on stderr; aider exits 0 when every call failed; codex echoes
//! the whole prompt on stderr. Each agent kind therefore has an adapter that reads the
//! CLI's documented output (a JSON envelope, JSONL events, or text) into a [`RunReport`]:
//! the answer text (not the envelope), the outcome and its error class, token usage and
//! cost, and the session id.
//!
//! The rules every adapter follows (issue #10):
//! - limit and error patterns are matched only on the CLI's error channel: structured
//!   error fields, stderr minus any echo of the prompt, and the CLI's final error line;
//!   never on the answer, the prompt, or context the agent quotes;
//! - a run whose structured result says success is never limited;
//! - a structured error is a failure even when the CLI exits 0;
//! - a run that the supervisor stopped (timeout, cancel, shutdown) is never a success,
//!   whatever its exit code.
//!
//! The module does no I/O and reads no clock: a reset time is passed on as the CLI gave
//! it ([`Reset`]); turning "resets 1pm" into an instant needs the clock and the time zone
//! (see `crate::limits`).
//!
//! Each kind's tests run on output captured from the real CLI against
//! `tests/mock_model.py` (see `tests/fixtures/cli/README.md`).

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

pub mod access;
mod aider;
mod claude;
mod codex;
mod cursor;
mod gemini;
mod generic;
pub mod render;
pub mod session;

pub use generic::{OutputFormat, OutputSpec};
pub use session::{RESUMABLE, can_resume};

/// Which adapter reads a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Claude Code, `-p --output-format json|stream-json` (text is read as text).
    Claude,
    /// Codex CLI, `exec --json` (JSONL events), or `exec` with its human-readable stderr.
    Codex,
    /// Gemini CLI, `--output-format json|stream-json`.
    Gemini,
    /// aider, plain text.
    Aider,
    /// Cursor's agent CLI, `-p --output-format json|stream-json`.
    Cursor,
    /// Any other program, described by an `output:` section in the config.
    Generic(OutputSpec),
}

impl Kind {
    /// The adapter for a configured `kind:` name; `spec` is the agent's `output:` section,
    /// used by `generic` (and by unknown names, which are read as generic).
    pub fn from_name(name: &str, spec: Option<OutputSpec>) -> Kind {
        match name.trim().to_ascii_lowercase().as_str() {
            "claude" => Kind::Claude,
            "codex" => Kind::Codex,
            "gemini" => Kind::Gemini,
            "aider" => Kind::Aider,
            "cursor" | "cursor-agent" => Kind::Cursor,
            _ => Kind::Generic(spec.unwrap_or_default()),
        }
    }

    /// The name used in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Claude => "claude",
            Kind::Codex => "codex",
            Kind::Gemini => "gemini",
            Kind::Aider => "aider",
            Kind::Cursor => "cursor-agent",
            Kind::Generic(_) => "agent",
        }
    }
}

/// How the agent process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// It exited with this status.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// Everything known about a finished run.
#[derive(Debug, Clone, Copy)]
pub struct RunFacts<'a> {
    pub kind: &'a Kind,
    /// The run's whole stdout.
    pub stdout: &'a str,
    /// The run's whole stderr.
    pub stderr: &'a str,
    pub exit: ExitKind,
    /// The supervisor stopped the run (timeout, cancel, shutdown).
    pub stopped_by_supervisor: bool,
    /// The prompt the agent was given (its echoes are not part of the error channel).
    pub prompt: &'a str,
}

/// When a limit resets, as the CLI said it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reset {
    /// An instant, in seconds since the Unix epoch.
    Unix(i64),
    /// The CLI's words ("Jan 1, 2030, 12pm (UTC)", "1pm"), to be read with the clock and
    /// the local time zone.
    Text(String),
}

/// Why a run failed, which decides what the supervisor does next.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum ErrorClass {
    /// A usage or rate limit: cool the agent down (until `reset` when known), requeue the
    /// task without using up an attempt.
    Limit {
        #[serde(skip_serializing_if = "Option::is_none")]
        reset: Option<Reset>,
    },
    /// A server error, overload or network failure: retry with backoff.
    Transient,
    /// Not logged in, missing or rejected key: fail at once, no retries.
    Auth,
    /// The command line or the working tree is wrong (unknown flag, untrusted folder, not
    /// a git repository): fail at once, no retries.
    Config,
    /// The agent failed the work: normal retries.
    Task,
    /// The supervisor stopped the run (timeout, cancel, shutdown).
    Stopped,
    /// The session the run was to resume is not there (the CLI never saved
    /// it: gemini after a usage limit on its first request): the CLI did
    /// nothing. Run again in a new session, without using an attempt.
    Session,
}

impl ErrorClass {
    /// The class name as written in records ("limit", "transient", ...).
    pub fn name(&self) -> &'static str {
        match self {
            ErrorClass::Limit { .. } => "limit",
            ErrorClass::Transient => "transient",
            ErrorClass::Auth => "auth",
            ErrorClass::Config => "config",
            ErrorClass::Task => "task",
            ErrorClass::Stopped => "stopped",
            ErrorClass::Session => "session",
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Class {
    Success,
    Failed(ErrorClass),
}

impl Serialize for Class {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Class::Success => "success",
            Class::Failed(_) => "failed",
        })
    }
}

/// What a run used, as the CLI reported it (None: not reported).
///
/// `input_tokens` counts the input read at the full rate: cache reads and cache writes
/// are counted apart (codex and gemini report cached tokens inside their input count;
/// the adapters take them out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Usage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_ms: Option<u64>,
}

impl Usage {
    /// Adds another run's usage: counts and cost are summed (a count either
    /// side lacks stays as the other side has it); model and the like keep
    /// the latest.
    pub fn add(&mut self, o: &Usage) {
        // Counts an agent's CLI reported (or a forged log line): a sum
        // near `u64::MAX` saturates, it neither wraps nor panics.
        fn sum<T: Copy>(a: Option<T>, b: Option<T>, add: impl Fn(T, T) -> T) -> Option<T> {
            match (a, b) {
                (Some(x), Some(y)) => Some(add(x, y)),
                (x, y) => x.or(y),
            }
        }
        self.input_tokens = sum(self.input_tokens, o.input_tokens, u64::saturating_add);
        self.output_tokens = sum(self.output_tokens, o.output_tokens, u64::saturating_add);
        self.cache_read_tokens = sum(
            self.cache_read_tokens,
            o.cache_read_tokens,
            u64::saturating_add,
        );
        self.cache_write_tokens = sum(
            self.cache_write_tokens,
            o.cache_write_tokens,
            u64::saturating_add,
        );
        self.cost_usd = sum(self.cost_usd, o.cost_usd, |a, b| a + b);
        self.turns = sum(self.turns, o.turns, u32::saturating_add);
        self.api_ms = sum(self.api_ms, o.api_ms, u64::saturating_add);
        if o.model.is_some() {
            self.model = o.model.clone();
        }
    }

    /// True when the CLI reported nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

/// What the supervisor learns from a finished run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The agent's answer text (not the JSON envelope); empty when there is none. A
    /// stopped run keeps what it had answered so far.
    pub answer: String,
    pub outcome: Class,
    /// The class of a failure (the same as in `outcome`), None on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
    /// A short, one-line description of a failure, without ANSI codes; for `auth` and
    /// `config` it says how to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Usage::is_empty")]
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// For a run mailroom stopped (a timeout, say): the last error the CLI
    /// had reported before, which may say why it never finished (codex
    /// reconnecting to an address where nothing listens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// What the record's `warnings` should say of the run beside its
    /// outcome (tool calls the CLI was not allowed to make).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RunReport {
    pub fn is_success(&self) -> bool {
        self.outcome == Class::Success
    }
}

/// Reads a finished run.
pub fn report(facts: &RunFacts<'_>) -> RunReport {
    let parsed = match facts.kind {
        Kind::Claude => claude::parse(facts),
        Kind::Codex => codex::parse(facts),
        Kind::Gemini => gemini::parse(facts),
        Kind::Aider => aider::parse(facts),
        Kind::Cursor => cursor::parse(facts),
        Kind::Generic(spec) => generic::parse(spec, facts),
    };
    let mut r = finish(facts, parsed);
    if !facts.stopped_by_supervisor
        && facts.exit != ExitKind::Code(0)
        && let Some(line) = session_missing(facts)
    {
        r.outcome = Class::Failed(ErrorClass::Session);
        r.error_class = Some(ErrorClass::Session);
        r.message = Some(short(&format!(
            "{}: the session to resume is not there ({line}); the next attempt starts a new one",
            facts.kind.name()
        )));
    }
    if matches!(facts.kind, Kind::Claude | Kind::Cursor) {
        r.notes.extend(claude::denials(facts.stdout));
    }
    if matches!(facts.kind, Kind::Gemini) {
        r.notes.extend(gemini::failed_tools(facts.stdout));
    }
    r
}

/// The line of the CLI's error channel (stderr) that says the session it
/// was asked to resume does not exist, as each CLI words it: claude and
/// cursor-agent (`--resume ID`), gemini (`--resume ID`, exit 42) and codex
/// (`exec resume ID`). Checked on stderr only: an answer may quote them.
fn session_missing(facts: &RunFacts<'_>) -> Option<String> {
    let needles: &[&str] = match facts.kind {
        Kind::Claude | Kind::Cursor => &["No conversation found with session ID"],
        Kind::Gemini => &[
            "Error resuming session: No previous sessions found",
            "Error resuming session: Invalid session identifier",
        ],
        Kind::Codex => &[
            "no rollout found for thread id",
            "no rollout found for conversation id",
        ],
        _ => return None,
    };
    facts
        .stderr
        .lines()
        .find(|l| needles.iter().any(|n| l.contains(n)))
        .map(|l| l.trim().to_owned())
}

/// What an adapter read from the output, before the rules common to all kinds.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub answer: String,
    pub verdict: Verdict,
    pub usage: Usage,
    pub session_id: Option<String>,
}

impl Parsed {
    /// What an adapter read. A structured error's "answer" is its error
    /// text, not an answer: it is dropped.
    pub(crate) fn new(
        answer: String,
        verdict: Verdict,
        usage: Usage,
        session_id: Option<String>,
    ) -> Parsed {
        let answer = match verdict {
            Verdict::Error { .. } => String::new(),
            _ => answer,
        };
        Parsed {
            answer,
            verdict,
            usage,
            session_id,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) enum Verdict {
    /// The CLI's structured result says the run succeeded.
    Success,
    /// The CLI reported an error (structured, or on its error channel).
    Error { class: ErrorClass, message: String },
    /// Nothing structured: the exit status decides. `error_line` is the CLI's last error
    /// line, already cleaned of prompt echoes, for the message (and for classification
    /// when the exit status says failure). `needs_answer`: an exit 0 without an answer
    /// is a failure (the CLI always prints one on success).
    #[default]
    Unknown,
    UnknownWith {
        error_line: Option<String>,
        needs_answer: bool,
    },
}

fn finish(facts: &RunFacts<'_>, mut p: Parsed) -> RunReport {
    let who = facts.kind.name();
    let verdict = std::mem::take(&mut p.verdict);
    if facts.stopped_by_supervisor {
        let how = match facts.exit {
            ExitKind::Code(c) => format!("it exited with status {c}"),
            ExitKind::Signal(s) => format!("it was killed by signal {s}"),
        };
        let message = format!("{who} was stopped by mailroom (timeout, cancel or shutdown); {how}");
        // What the CLI last said went wrong; a line of stderr only when it
        // reads like an error (CLIs chatter there: "Reading additional input
        // from stdin...", start-up notes), so that chatter is not named as
        // the cause.
        let cause = match verdict {
            Verdict::Error { message, .. } => Some(message),
            Verdict::UnknownWith {
                error_line: Some(l),
                ..
            } if reads_like_an_error(&l) => Some(l),
            _ => None,
        }
        .map(|c| short(&format!("{who}: {c}")));
        let mut r = failed(p, ErrorClass::Stopped, message);
        r.cause = cause;
        return r;
    }
    match (verdict, facts.exit) {
        (Verdict::Error { class, message }, _) => failed(p, class, format!("{who}: {message}")),
        (_, ExitKind::Signal(s)) => failed(
            p,
            ErrorClass::Transient,
            format!("{who} was killed by signal {s} (not by mailroom)"),
        ),
        // A CLI that says "success" with an empty result gave no answer:
        // nothing for the context, nothing done as far as anyone can tell.
        (Verdict::Success, ExitKind::Code(0))
            if p.answer.trim().is_empty()
                && matches!(
                    facts.kind,
                    Kind::Claude | Kind::Codex | Kind::Gemini | Kind::Cursor
                ) =>
        {
            failed(
                p,
                ErrorClass::Task,
                format!("{who} reported success with an empty result (no answer)"),
            )
        }
        (Verdict::Success | Verdict::Unknown, ExitKind::Code(0)) => success(p),
        (Verdict::Success, ExitKind::Code(c)) => failed(
            p,
            ErrorClass::Task,
            format!("{who} reported success but exited with status {c}"),
        ),
        (
            Verdict::UnknownWith {
                error_line,
                needs_answer,
            },
            ExitKind::Code(0),
        ) => {
            if needs_answer && p.answer.trim().is_empty() {
                let detail = error_line.map(|l| format!(": {l}")).unwrap_or_default();
                let message = format!("{who} exited 0 without printing a result{detail}");
                failed(p, ErrorClass::Task, message)
            } else {
                success(p)
            }
        }
        (
            Verdict::Unknown
            | Verdict::UnknownWith {
                error_line: None, ..
            },
            ExitKind::Code(c),
        ) => failed(
            p,
            ErrorClass::Task,
            format!("{who} exited with status {c}{}", signal_note(c)),
        ),
        (
            Verdict::UnknownWith {
                error_line: Some(line),
                ..
            },
            ExitKind::Code(c),
        ) => {
            let class = classify(&line, None);
            let hint = hint(facts.kind, &class, &line, None);
            failed(
                p,
                class,
                format!(
                    "{who} exited with status {c}{}: {line}{hint}",
                    signal_note(c)
                ),
            )
        }
    }
}

/// What an exit status above 128 says, as shells and node report a child
/// killed by a signal (143: SIGTERM, not sent by mailroom when it gets here).
fn signal_note(code: i32) -> String {
    let name = match code - 128 {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return String::new(),
    };
    format!(" (128 + {}: killed by {name})", code - 128)
}

fn failed(p: Parsed, class: ErrorClass, message: String) -> RunReport {
    RunReport {
        answer: p.answer,
        outcome: Class::Failed(class.clone()),
        error_class: Some(class),
        message: Some(short(&message)),
        usage: p.usage,
        session_id: p.session_id,
        cause: None,
        notes: Vec::new(),
    }
}

fn success(p: Parsed) -> RunReport {
    RunReport {
        answer: p.answer,
        outcome: Class::Success,
        error_class: None,
        message: None,
        usage: p.usage,
        session_id: p.session_id,
        cause: None,
        notes: Vec::new(),
    }
}

// ---- the error channel ---------------------------------------------------------------

/// Longest message kept, in characters.
const MAX_MESSAGE_CHARS: usize = 400;

/// Longest ` (fix: …)` that [`short`] keeps whole when it cuts a message
/// (every hint of [`hint`] fits, with room for the text before it).
const MAX_FIX_CHARS: usize = 300;

/// One line, no ANSI codes, no control characters, at most 400 characters.
/// A message that ends in a ` (fix: …)` hint is cut before the hint, which
/// stays whole: the fix is what the reader needs most.
pub(crate) fn short(text: &str) -> String {
    let clean = strip_ansi(text);
    let one_line: String = clean
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if one_line.chars().count() <= MAX_MESSAGE_CHARS {
        return one_line;
    }
    let (body, fix) = match one_line.rfind(" (fix: ") {
        Some(i) if one_line.ends_with(')') && one_line[i..].chars().count() <= MAX_FIX_CHARS => {
            one_line.split_at(i)
        }
        _ => (one_line.as_str(), ""),
    };
    let keep = MAX_MESSAGE_CHARS - 1 - fix.chars().count();
    let mut s: String = body.chars().take(keep).collect();
    s.push('…');
    s.push_str(fix);
    s
}

pub(crate) fn strip_ansi(s: &str) -> Cow<'_, str> {
    static ANSI: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
            .expect("ANSI pattern compiles")
    });
    ANSI.replace_all(s, "")
}

/// `stderr` without ANSI codes and without echoes of the prompt: the whole prompt where
/// it appears, and every line that is a line of the prompt (context the prompt quotes
/// included).
pub fn error_channel(stderr: &str, prompt: &str) -> String {
    let mut text = strip_ansi(stderr).into_owned();
    let prompt = prompt.trim();
    if !prompt.is_empty() {
        text = text.replace(prompt, "");
    }
    let prompt_lines: std::collections::HashSet<&str> = prompt
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    text.lines()
        .filter(|l| !prompt_lines.contains(l.trim()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The CLI's final error line in an error channel: the last line that looks like an error
/// report ("error: …", "Unknown arguments: …"), else the last line; lines of the answer
/// (which some CLIs repeat on stderr) do not count.
pub(crate) fn error_line(channel: &str, answer: &str) -> Option<String> {
    static SHAPE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?i)^(?:error|fatal)\b|^unknown (?:argument|option)s?\b|\bunexpected argument\b",
        )
        .expect("error line pattern compiles")
    });
    let answer_lines: std::collections::HashSet<&str> = answer
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let lines: Vec<&str> = channel
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !answer_lines.contains(l) && !is_chatter(l))
        .collect();
    lines
        .iter()
        .rfind(|l| SHAPE.is_match(l))
        .or(lines.last())
        .map(|l| l.to_string())
}

/// Lines the agent CLIs print on stderr at every run, which say nothing
/// about why one failed (codex's stdin and PATH notes, gemini's terminal
/// and start-up notes, aider's terminal warning): never named as a run's
/// error, nor kept in a record's stderr tail.
pub fn is_chatter(line: &str) -> bool {
    const CHATTER: [&str; 8] = [
        "Reading additional input from stdin",
        "WARNING: proceeding, even though we could not create PATH aliases",
        "Warning: Basic terminal detected",
        "Warning: 256-color support not detected",
        "Warning: Input is not a terminal",
        "Ripgrep is not available",
        "[STARTUP] ",
        // gemini 0.61.0 with `--approval-mode yolo`, once per start.
        "YOLO mode is enabled. All tool calls will be automatically approved.",
    ];
    let l = line.trim_start();
    CHATTER.iter().any(|c| l.starts_with(c))
}

/// Whether a line a CLI printed says that something went wrong (for naming
/// the cause of a run mailroom stopped), rather than being chatter.
fn reads_like_an_error(line: &str) -> bool {
    static ERRORISH: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(concat!(
            r"(?i)\b(?:error|errors|fatal|fail(?:ed|ure|s)?|unable|refused|denied|",
            r"reconnect\w*|connection|disconnected|timed out|timeout|invalid|",
            r"unauthori[sz]ed|forbidden|rate.?limit\w*|quota|exceeded|overloaded|",
            r"unavailable|panic\w*|exception)\b|\b[45]\d\d\b",
        ))
        .expect("error words pattern compiles")
    });
    ERRORISH.is_match(line)
}

static LIMIT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b429\b|too many requests|rate[ _-]?limit|usage[ _-]?limit|",
        r"hit your (?:[\w.-]+ ){0,3}limit|reached (?:your|the) (?:[\w.-]+ ){0,3}limit|",
        r"quota|resource[ _]exhausted|resource has been exhausted|",
        r"insufficient_quota|credit balance (?:is )?too low"
    ))
    .expect("limit pattern compiles")
});
static AUTH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b401\b|\b403\b|unauthori[sz]ed|forbidden|authentication|",
        r"invalid[ _-]?(?:x-)?api[ _-]?key|incorrect api key|api key not valid|api_key_invalid|",
        r"x-api-key|not logged in|please run /login|log ?in again|login required|",
        r"permission[ _]denied|missing (?:an? )?api key|no api key|",
        r"must specify the \w*api_key|missing environment variable|",
        r"auth(?:entication)? method|credentials"
    ))
    .expect("auth pattern compiles")
});
static CONFIG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)unknown option|unknown argument|unexpected argument|unrecognized (?:option|argument)|",
        r"invalid value for|not (?:running )?in(?:side)? a trusted directory|skip-trust|",
        r"skip-git-repo-check|not a git repo|untrusted|",
        // claude 2.1.197 refuses `--dangerously-skip-permissions` as root.
        r"cannot be used with root/sudo privileges|",
        r"model[ _]not[ _]found|no such model|does not exist|invalid model|\b404\b"
    ))
    .expect("config pattern compiles")
});
static TRANSIENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b5\d\d\b|internal(?: server)? error|server[ _]error|overloaded|",
        r"high demand|service unavailable|bad gateway|gateway time-?out|temporar|",
        r"try again (?:later|in a moment)|timed? ?out|connection ?(?:refused|reset|error|failed)|",
        r"unable to connect|could not connect|failed to connect|",
        r"network|econn\w+|enotfound|eai_again|socket hang up|stream disconnected|",
        r"fetch failed|\bunavailable\b|",
        // The provider has no room for the request (codex, on a 503
        // server_is_overloaded: "Selected model is at capacity").
        r"at capacity|",
        // A response that was cut or was not the API's at all (a proxy's
        // HTML page with status 200): claude "API returned an empty or
        // malformed response (HTTP 200)", gemini "Model stream ended without
        // a finish reason" and "Incomplete JSON segment at the end".
        r"malformed response|stream ended without|incomplete json|",
        // A stream whose events are not JSON (claude 2.1: "API Error:
        // Failed to parse JSON"; codex and gemini call the same fault a
        // disconnected stream and an incomplete JSON segment).
        r"api error: failed to parse json"
    ))
    .expect("transient pattern compiles")
});

/// Classifies an error-channel text (never an answer): limit, auth, config, transient,
/// else task. `status` is the HTTP status when the CLI reports one.
pub(crate) fn classify(text: &str, status: Option<u16>) -> ErrorClass {
    // A CLI that gives no status field may still print it (codex:
    // "unexpected status 503 Service Unavailable: ... too many requests"):
    // the status decides before any words of the server's message do.
    static IN_TEXT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)\b(?:unexpected status|status code|http status|http/\d(?:\.\d)?)[:\s]+([1-5]\d\d)\b")
            .expect("status pattern compiles")
    });
    let status = status.or_else(|| {
        IN_TEXT
            .captures(text)
            .and_then(|c| c[1].parse::<u16>().ok())
    });
    match status {
        Some(429) => return ErrorClass::Limit { reset: reset(text) },
        Some(401 | 403) => return ErrorClass::Auth,
        Some(s) if s >= 500 => return ErrorClass::Transient,
        _ => {}
    }
    if LIMIT.is_match(text) {
        ErrorClass::Limit { reset: reset(text) }
    } else if AUTH.is_match(text) {
        ErrorClass::Auth
    } else if CONFIG.is_match(text) {
        ErrorClass::Config
    } else if TRANSIENT.is_match(text) {
        ErrorClass::Transient
    } else {
        ErrorClass::Task
    }
}

/// Whether `stdout` is the start of a CLI's JSON envelope (`{"type": ...`,
/// `{ "session_id": ...`) that did not parse, as when the output was cut at
/// `max_output_bytes`: never an answer for the context, though no JSON
/// could be read from it.
pub(crate) fn broken_envelope(stdout: &str) -> bool {
    envelope_start(stdout) && last_json_object(stdout).is_none()
}

/// Whether text starts like a CLI's JSON envelope (whether or not it is
/// whole): `{"type": ...`, `{ "session_id": ...`.
pub(crate) fn envelope_start(text: &str) -> bool {
    static START: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"^\{\s*"(?:type|subtype|session_id|response|result|is_error|stats)"\s*:"#)
            .expect("envelope pattern compiles")
    });
    START.is_match(text.trim_start())
}

/// The reset time a limit message gives: `limit reached|<unix secs>` (Claude's
/// machine-readable form), else the words after "resets", "try again at" or "reset at".
pub(crate) fn reset(text: &str) -> Option<Reset> {
    static UNIX: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)limit reached\|(\d{9,11})\b").expect("reset pattern compiles")
    });
    static WORDS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)\b(?:resets?(?: at| on| in)?|try again (?:at|in|after)|reset at)\s+([^.;\n]*(?:\.\d+[^.;\n]*)?)")
            .expect("reset pattern compiles")
    });
    if let Some(c) = UNIX.captures(text) {
        return c[1].parse().ok().map(Reset::Unix);
    }
    let c = WORDS.captures(text)?;
    let words = c[1].trim().trim_end_matches(['.', ',']).trim();
    (!words.is_empty()).then(|| Reset::Text(words.to_string()))
}

/// How to fix an auth or config error, for the message.
pub(crate) fn hint(kind: &Kind, class: &ErrorClass, text: &str, status: Option<u16>) -> String {
    let fix = match (kind, class) {
        (Kind::Codex, ErrorClass::Config) if text.contains("skip-git-repo-check") => {
            "add --skip-git-repo-check to the codex command, or run it in a git repository"
        }
        (Kind::Gemini, ErrorClass::Config) if text.to_lowercase().contains("trusted") => {
            "add --skip-trust to the gemini command (or set GEMINI_CLI_TRUST_WORKSPACE=true)"
        }
        (_, ErrorClass::Config) => {
            "check the agent's command in mailroom.yaml against the CLI's --help"
        }
        // A 403: the key is good, what it asks for is not allowed; a new
        // key is the wrong fix.
        (_, ErrorClass::Auth) if status == Some(403) || forbidden(text) => {
            "the key was accepted but may not use this model or resource: check the model the agent's command or the CLI's settings name, and the key's project, plan or region"
        }
        (Kind::Claude, ErrorClass::Auth) => {
            "set ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN) to a valid key, in the supervisor's environment or the agent's `env:`, or log in with `claude` as the supervisor's user"
        }
        (Kind::Codex, ErrorClass::Auth) => {
            "set CODEX_API_KEY (or the provider's env_key) to a valid key, in the supervisor's environment or the agent's `env:`, or run `codex login` as the supervisor's user"
        }
        (Kind::Gemini, ErrorClass::Auth) => {
            "set GEMINI_API_KEY to a valid key, in the supervisor's environment or the agent's `env:`, and select the auth type (security.auth.selectedType in ~/.gemini/settings.json), or log in with `gemini`"
        }
        (Kind::Aider, ErrorClass::Auth) => {
            "set the model provider's key (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...) in the supervisor's environment and let it through the environment allowlist"
        }
        (Kind::Cursor, ErrorClass::Auth) => {
            "set CURSOR_API_KEY to a valid key, in the supervisor's environment or the agent's `env:`, or run `cursor-agent login` as the supervisor's user"
        }
        (Kind::Generic(_), ErrorClass::Auth) => {
            "check the agent's credentials in the supervisor's environment"
        }
        _ => return String::new(),
    };
    format!(" (fix: {fix})")
}

/// Whether an auth error is a refusal of a valid key (HTTP 403, "permission
/// denied"), not a rejected key (401).
pub(crate) fn forbidden(text: &str) -> bool {
    static STATUS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\b403\b").expect("403 pattern compiles"));
    STATUS.is_match(text) || refused_permission(text)
}

/// Whether a text says a key lacks a permission ("permission denied",
/// "insufficient permissions"), in words, not by a bare number that a
/// quoted request could hold too.
pub(crate) fn refused_permission(text: &str) -> bool {
    static WORDS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(concat!(
            r"(?i)\bforbidden\b|permission[ _]?denied|permission_error|",
            r"does not have permission|insufficient permissions|not have access to"
        ))
        .expect("permission pattern compiles")
    });
    WORDS.is_match(text)
}

/// A classified error with its message and fix hint.
pub(crate) fn error(kind: &Kind, text: &str, status: Option<u16>) -> Verdict {
    let text = short(text);
    let class = classify(&text, status);
    let hint = hint(kind, &class, &text, status);
    Verdict::Error {
        class,
        message: format!("{text}{hint}"),
    }
}

// ---- JSON helpers ----------------------------------------------------------------------

/// The JSON objects among `text`'s lines (JSONL), in order; other lines are skipped.
pub(crate) fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// The last top-level JSON object in `text`: the whole text when it is one, else the
/// last one that starts at the beginning of a line (pretty-printed objects included).
pub(crate) fn last_json_object(text: &str) -> Option<serde_json::Value> {
    let trimmed = text.trim();
    if let Ok(v @ serde_json::Value::Object(_)) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    let mut starts: Vec<usize> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with('{') {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.iter().rev().find_map(|&at| {
        let mut stream =
            serde_json::Deserializer::from_str(&text[at..]).into_iter::<serde_json::Value>();
        match stream.next() {
            Some(Ok(v @ serde_json::Value::Object(_))) => Some(v),
            _ => None,
        }
    })
}

pub(crate) fn u64_at(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key).and_then(serde_json::Value::as_u64)
}

pub(crate) fn str_at<'v>(v: &'v serde_json::Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(serde_json::Value::as_str)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Loading captured fixtures in tests.
    use super::{ExitKind, Kind, RunFacts, RunReport, report};

    /// A captured run: stdout, stderr, and the `.exit` file (`code N` or `signal N`).
    pub struct Fixture {
        pub stdout: &'static str,
        pub stderr: &'static str,
        pub exit: &'static str,
    }

    /// `fixture!("claude-2.1.197", "ok")` includes the three files of one capture.
    macro_rules! fixture {
        ($dir:literal, $mode:literal) => {
            $crate::adapter::testing::Fixture {
                stdout: include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/cli/",
                    $dir,
                    "/",
                    $mode,
                    ".stdout"
                )),
                stderr: include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/cli/",
                    $dir,
                    "/",
                    $mode,
                    ".stderr"
                )),
                exit: include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/cli/",
                    $dir,
                    "/",
                    $mode,
                    ".exit"
                )),
            }
        };
    }
    pub(crate) use fixture;

    pub fn exit_of(text: &str) -> ExitKind {
        let (what, n) = text.trim().split_once(' ').expect("`code N` or `signal N`");
        let n: i32 = n.parse().expect("a number");
        match what {
            "code" => ExitKind::Code(n),
            "signal" => ExitKind::Signal(n),
            other => panic!("bad exit line {other}"),
        }
    }

    /// Reads a fixture as a run that the supervisor did not stop.
    pub fn run(kind: &Kind, f: &Fixture, prompt: &str) -> RunReport {
        run_stopped(kind, f, prompt, false)
    }

    pub fn run_stopped(kind: &Kind, f: &Fixture, prompt: &str, stopped: bool) -> RunReport {
        report(&RunFacts {
            kind,
            stdout: f.stdout,
            stderr: f.stderr,
            exit: exit_of(f.exit),
            stopped_by_supervisor: stopped,
            prompt,
        })
    }

    /// The prompts the fixtures were captured with (tests/capture_cli_fixtures.py).
    pub fn prompt(mode: &str) -> String {
        match mode {
            "ok-429" => "MOCK:ok-429 Our log says '429 Too Many Requests' and 'rate limit reached'. Explain in one sentence.".into(),
            "dash-v" => "-v MOCK:ok this task description starts with a dash".into(),
            m => format!("MOCK:{m} Reply with one short sentence."),
        }
    }

    pub const ANSWER_OK: &str = "MOCK ANSWER: the task is done.";
    pub const ANSWER_429: &str = "MOCK ANSWER: the upstream service answered 429 Too Many Requests earlier and the log said rate limit reached (API Error: Rate limit reached; You've hit your limit · resets 1pm; Claude AI usage limit reached|1893499200; exceeded retry limit, last status: 429; RESOURCE_EXHAUSTED; RateLimitError). I added a backoff, so the task is done.";
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_is_a_line_that_reads_like_an_error() {
        for chatter in [
            "Reading additional input from stdin...",
            "Ripgrep is not available. Falling back to GrepTool.",
            "[STARTUP] Cannot measure phase 'cleanup_ops': start mark 'cleanup_ops' not found",
            "Warning: 256-color support not detected.",
        ] {
            assert!(!super::reads_like_an_error(chatter), "{chatter}");
        }
        for error in [
            "Reconnecting... waiting for network (Connection failed: error sending request)",
            "API Error: 500 Internal server error",
            "Unable to connect to API (ECONNREFUSED)",
            "stream disconnected before completion",
            "429 Too Many Requests",
        ] {
            assert!(super::reads_like_an_error(error), "{error}");
        }
    }

    use super::*;

    /// A resume of a session the CLI never saved, as claude 2.1.197, codex
    /// 0.171.0 and gemini 0.61.0 say it (captured, `no-session`): the class
    /// that runs the task again in a new session; the same words in an
    /// answer (stdout) are no such thing.
    #[test]
    fn a_resume_of_a_missing_session_is_its_own_class() {
        use testing::{fixture, prompt, run};
        for (kind, f) in [
            (Kind::Claude, fixture!("claude-2.1.197", "no-session")),
            (Kind::Codex, fixture!("codex-0.171.0", "no-session")),
            (Kind::Gemini, fixture!("gemini-0.61.0", "no-session")),
        ] {
            let r = run(&kind, &f, &prompt("ok"));
            assert_eq!(
                r.outcome,
                Class::Failed(ErrorClass::Session),
                "{kind:?}: {r:?}"
            );
            let m = r.message.unwrap_or_default();
            assert!(
                m.contains("the session to resume is not there"),
                "{kind:?}: {m}"
            );
        }
        let quoted = testing::Fixture {
            stdout: "Error resuming session: No previous sessions found for this project.\n",
            stderr: "",
            exit: "code 1",
        };
        let r = run(&Kind::Gemini, &quoted, &prompt("ok"));
        assert_ne!(r.outcome, Class::Failed(ErrorClass::Session), "{r:?}");
    }

    #[test]
    fn an_exit_status_over_128_names_its_signal() {
        assert_eq!(signal_note(143), " (128 + 15: killed by SIGTERM)");
        assert_eq!(signal_note(1), "");
        assert_eq!(signal_note(200), "");
    }

    #[test]
    fn only_an_envelope_that_does_not_parse_is_broken() {
        let whole = "{\n  \"result\": \"all 12 tests pass\",\n  \"type\": \"report\"\n}\n";
        assert!(
            !broken_envelope(whole),
            "a JSON answer that parses is no broken envelope"
        );
        assert!(broken_envelope("{\"type\":\"result\",\"result\":\"xxxx"));
        assert!(!broken_envelope("plain text answer"));
    }

    #[test]
    fn chatter_is_never_named_as_the_error() {
        assert_eq!(
            error_line(
                "Ripgrep is not available. Falling back to GrepTool.\nWarning: Input is not a terminal (fd=0).\n",
                ""
            ),
            None
        );
        assert_eq!(
            error_line("Ripgrep is not available.\nboom: it broke\n", "").as_deref(),
            Some("boom: it broke")
        );
    }

    #[test]
    fn classify_shapes() {
        // A 5xx whose message talks of requests or quotas is no usage limit.
        for text in [
            "unexpected status 503 Service Unavailable: Server busy: too many requests in flight, please retry shortly",
            "unexpected status 502 Bad Gateway: Bad gateway: upstream quota service timed out",
        ] {
            assert_eq!(classify(text, None), ErrorClass::Transient, "{text}");
        }
        assert!(matches!(
            classify("unexpected status 429 Too Many Requests: slow down", None),
            ErrorClass::Limit { .. }
        ));
        assert_eq!(
            classify("unexpected status 401 Unauthorized: bad key", None),
            ErrorClass::Auth
        );
        assert_eq!(
            classify(
                "You've hit your session limit · resets Jan 1, 2030, 12pm (UTC)",
                None
            ),
            ErrorClass::Limit {
                reset: Some(Reset::Text("Jan 1, 2030, 12pm (UTC)".into()))
            }
        );
        assert_eq!(
            classify(
                "API Error: Request rejected (429) · Claude AI usage limit reached|1893499200",
                Some(429)
            ),
            ErrorClass::Limit {
                reset: Some(Reset::Unix(1893499200))
            }
        );
        assert_eq!(
            classify("Invalid API key · Fix external API key", None),
            ErrorClass::Auth
        );
        assert_eq!(
            classify("error: unknown option '--x'", None),
            ErrorClass::Config
        );
        assert_eq!(
            classify(
                "--dangerously-skip-permissions cannot be used with root/sudo privileges for \
                 security reasons",
                None
            ),
            ErrorClass::Config
        );
        assert_eq!(
            classify("API Error: 500 Internal server error", None),
            ErrorClass::Transient
        );
        assert_eq!(classify("the tests still fail", None), ErrorClass::Task);
    }

    #[test]
    fn prompt_echo_is_not_error_channel() {
        let prompt = "fix it\nthe log says: 429 Too Many Requests";
        let stderr = "user\nfix it\nthe log says: 429 Too Many Requests\nERROR: boom\n";
        let channel = error_channel(stderr, prompt);
        assert!(!channel.contains("429"));
        assert!(channel.contains("ERROR: boom"));
    }

    #[test]
    fn short_strips_ansi_and_newlines() {
        assert_eq!(short("\x1b[31mred\x1b[0m\nnext  line"), "red next line");
        assert_eq!(short(&"x".repeat(1000)).chars().count(), MAX_MESSAGE_CHARS);
        // Every fix there is fits whole.
        for kind in [
            Kind::Claude,
            Kind::Codex,
            Kind::Gemini,
            Kind::Aider,
            Kind::Cursor,
        ] {
            for (class, text) in [
                (ErrorClass::Auth, "401"),
                (ErrorClass::Auth, "403"),
                (ErrorClass::Config, "x"),
                (ErrorClass::Config, "skip-git-repo-check"),
                (ErrorClass::Config, "not trusted"),
            ] {
                let h = hint(&kind, &class, text, None);
                let m = short(&format!("{}{h}", "w".repeat(1000)));
                assert!(m.ends_with(&h), "{kind:?} {class:?}: {m}");
            }
        }
        // A long message keeps its fix whole; a long "fix" is only text.
        let m = short(&format!("{} (fix: set THE_KEY)", "y".repeat(1000)));
        assert_eq!(m.chars().count(), MAX_MESSAGE_CHARS);
        assert!(m.ends_with("y… (fix: set THE_KEY)"), "{m}");
        let m = short(&format!("a (fix: {})", "z".repeat(1000)));
        assert_eq!(m.chars().count(), MAX_MESSAGE_CHARS);
        assert!(m.ends_with("z…"), "{m}");
    }

    #[test]
    fn last_json_object_after_noise() {
        let text = "Error: x\n    at y\n{\n  \"error\": {\n    \"code\": 1\n  }\n}\n";
        let v = last_json_object(text).unwrap();
        assert_eq!(v["error"]["code"], 1);
        assert!(last_json_object("no json here\n").is_none());
    }

    #[test]
    fn report_serialises() {
        let r = RunReport {
            answer: "a".into(),
            outcome: Class::Failed(ErrorClass::Limit {
                reset: Some(Reset::Unix(5)),
            }),
            error_class: Some(ErrorClass::Limit {
                reset: Some(Reset::Unix(5)),
            }),
            message: Some("m".into()),
            usage: Usage {
                input_tokens: Some(1),
                ..Usage::default()
            },
            session_id: None,
            cause: None,
            notes: Vec::new(),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcome"], "failed");
        assert_eq!(json["error_class"]["class"], "limit");
        assert_eq!(json["error_class"]["reset"], 5);
        assert_eq!(json["usage"]["input_tokens"], 1);
    }
}

#[cfg(test)]
mod table {
    //! Every captured fixture, read by its kind's adapter: the CLI x mode -> outcome table
    //! of tests/fixtures/cli/README.md (`cargo test --lib adapter::table -- --nocapture`).
    use super::testing::{Fixture, fixture, prompt, run_stopped};
    use super::{Class, Kind};

    fn outcome(kind: &Kind, f: &Fixture, mode: &str) -> String {
        let base = mode
            .trim_start_matches("text-")
            .trim_start_matches("stream-");
        let p = match base {
            "untrusted" | "no-git" | "no-auth" | "bad-flag" | "refused" | "refused-hang" => {
                prompt("ok")
            }
            m => prompt(m),
        };
        let r = run_stopped(kind, f, &p, base.ends_with("hang"));
        match r.outcome {
            Class::Success => "success".to_string(),
            Class::Failed(c) => c.name().to_string(),
        }
    }

    #[test]
    fn every_fixture() {
        let cases: Vec<(Kind, &str, &str, Fixture, &str)> = vec![
            (
                Kind::Claude,
                "claude",
                "ok",
                fixture!("claude-2.1.197", "ok"),
                "success",
            ),
            (
                Kind::Claude,
                "claude",
                "ok-429",
                fixture!("claude-2.1.197", "ok-429"),
                "success",
            ),
            (
                Kind::Claude,
                "claude",
                "429",
                fixture!("claude-2.1.197", "429"),
                "limit",
            ),
            (
                Kind::Claude,
                "claude",
                "usage-limit",
                fixture!("claude-2.1.197", "usage-limit"),
                "limit",
            ),
            (
                Kind::Claude,
                "claude",
                "500",
                fixture!("claude-2.1.197", "500"),
                "transient",
            ),
            (
                Kind::Claude,
                "claude",
                "401",
                fixture!("claude-2.1.197", "401"),
                "auth",
            ),
            (
                Kind::Claude,
                "claude",
                "hang",
                fixture!("claude-2.1.197", "hang"),
                "stopped",
            ),
            (
                Kind::Claude,
                "claude",
                "dash-v",
                fixture!("claude-2.1.197", "dash-v"),
                "success",
            ),
            (
                Kind::Claude,
                "claude",
                "bad-flag",
                fixture!("claude-2.1.197", "bad-flag"),
                "config",
            ),
            (
                Kind::Claude,
                "claude",
                "stream-ok",
                fixture!("claude-2.1.197", "stream-ok"),
                "success",
            ),
            (
                Kind::Claude,
                "claude",
                "stream-429",
                fixture!("claude-2.1.197", "stream-429"),
                "limit",
            ),
            (
                Kind::Codex,
                "codex",
                "ok",
                fixture!("codex-0.171.0", "ok"),
                "success",
            ),
            (
                Kind::Codex,
                "codex",
                "ok-429",
                fixture!("codex-0.171.0", "ok-429"),
                "success",
            ),
            (
                Kind::Codex,
                "codex",
                "429",
                fixture!("codex-0.171.0", "429"),
                "limit",
            ),
            (
                Kind::Codex,
                "codex",
                "usage-limit",
                fixture!("codex-0.171.0", "usage-limit"),
                "limit",
            ),
            (
                Kind::Codex,
                "codex",
                "500",
                fixture!("codex-0.171.0", "500"),
                "transient",
            ),
            (
                Kind::Codex,
                "codex",
                "401",
                fixture!("codex-0.171.0", "401"),
                "auth",
            ),
            (
                Kind::Codex,
                "codex",
                "hang",
                fixture!("codex-0.171.0", "hang"),
                "stopped",
            ),
            (
                Kind::Codex,
                "codex",
                "dash-v",
                fixture!("codex-0.171.0", "dash-v"),
                "success",
            ),
            (
                Kind::Codex,
                "codex",
                "no-git",
                fixture!("codex-0.171.0", "no-git"),
                "config",
            ),
            (
                Kind::Codex,
                "codex",
                "bad-flag",
                fixture!("codex-0.171.0", "bad-flag"),
                "config",
            ),
            (
                Kind::Codex,
                "codex",
                "text-ok",
                fixture!("codex-0.171.0", "text-ok"),
                "success",
            ),
            (
                Kind::Codex,
                "codex",
                "text-ok-429",
                fixture!("codex-0.171.0", "text-ok-429"),
                "success",
            ),
            (
                Kind::Codex,
                "codex",
                "text-429",
                fixture!("codex-0.171.0", "text-429"),
                "limit",
            ),
            (
                Kind::Codex,
                "codex",
                "text-usage-limit",
                fixture!("codex-0.171.0", "text-usage-limit"),
                "limit",
            ),
            (
                Kind::Codex,
                "codex",
                "text-500",
                fixture!("codex-0.171.0", "text-500"),
                "transient",
            ),
            (
                Kind::Codex,
                "codex",
                "text-401",
                fixture!("codex-0.171.0", "text-401"),
                "auth",
            ),
            (
                Kind::Codex,
                "codex",
                "text-hang",
                fixture!("codex-0.171.0", "text-hang"),
                "stopped",
            ),
            (
                Kind::Gemini,
                "gemini",
                "ok",
                fixture!("gemini-0.61.0", "ok"),
                "success",
            ),
            (
                Kind::Gemini,
                "gemini",
                "ok-429",
                fixture!("gemini-0.61.0", "ok-429"),
                "success",
            ),
            (
                Kind::Gemini,
                "gemini",
                "429",
                fixture!("gemini-0.61.0", "429"),
                "limit",
            ),
            (
                Kind::Gemini,
                "gemini",
                "usage-limit",
                fixture!("gemini-0.61.0", "usage-limit"),
                "limit",
            ),
            (
                Kind::Gemini,
                "gemini",
                "500",
                fixture!("gemini-0.61.0", "500"),
                "transient",
            ),
            (
                Kind::Gemini,
                "gemini",
                "401",
                fixture!("gemini-0.61.0", "401"),
                "auth",
            ),
            (
                Kind::Gemini,
                "gemini",
                "hang",
                fixture!("gemini-0.61.0", "hang"),
                "stopped",
            ),
            (
                Kind::Gemini,
                "gemini",
                "dash-v",
                fixture!("gemini-0.61.0", "dash-v"),
                "success",
            ),
            (
                Kind::Gemini,
                "gemini",
                "untrusted",
                fixture!("gemini-0.61.0", "untrusted"),
                "config",
            ),
            (
                Kind::Gemini,
                "gemini",
                "no-auth",
                fixture!("gemini-0.61.0", "no-auth"),
                "auth",
            ),
            (
                Kind::Gemini,
                "gemini",
                "bad-flag",
                fixture!("gemini-0.61.0", "bad-flag"),
                "config",
            ),
            (
                Kind::Gemini,
                "gemini",
                "stream-ok",
                fixture!("gemini-0.61.0", "stream-ok"),
                "success",
            ),
            (
                Kind::Gemini,
                "gemini",
                "stream-429",
                fixture!("gemini-0.61.0", "stream-429"),
                "limit",
            ),
            (
                Kind::Claude,
                "claude",
                "cut",
                fixture!("claude-2.1.197", "cut"),
                "transient",
            ),
            (
                Kind::Claude,
                "claude",
                "stream-cut",
                fixture!("claude-2.1.197", "stream-cut"),
                "transient",
            ),
            (
                Kind::Claude,
                "claude",
                "garbage",
                fixture!("claude-2.1.197", "garbage"),
                "transient",
            ),
            (
                Kind::Claude,
                "claude",
                "overloaded",
                fixture!("claude-2.1.197", "overloaded"),
                "transient",
            ),
            (
                Kind::Claude,
                "claude",
                "refused",
                fixture!("claude-2.1.197", "refused"),
                "transient",
            ),
            (
                Kind::Codex,
                "codex",
                "cut",
                fixture!("codex-0.171.0", "cut"),
                "transient",
            ),
            (
                Kind::Codex,
                "codex",
                "garbage",
                fixture!("codex-0.171.0", "garbage"),
                "transient",
            ),
            (
                Kind::Codex,
                "codex",
                "overloaded",
                fixture!("codex-0.171.0", "overloaded"),
                "transient",
            ),
            (
                Kind::Codex,
                "codex",
                "refused-hang",
                fixture!("codex-0.171.0", "refused-hang"),
                "stopped",
            ),
            (
                Kind::Gemini,
                "gemini",
                "cut",
                fixture!("gemini-0.61.0", "cut"),
                "transient",
            ),
            (
                Kind::Gemini,
                "gemini",
                "garbage",
                fixture!("gemini-0.61.0", "garbage"),
                "transient",
            ),
            (
                Kind::Gemini,
                "gemini",
                "overloaded",
                fixture!("gemini-0.61.0", "overloaded"),
                "transient",
            ),
            (
                Kind::Gemini,
                "gemini",
                "refused",
                fixture!("gemini-0.61.0", "refused"),
                "transient",
            ),
            (
                Kind::Aider,
                "aider",
                "ok",
                fixture!("aider-0.86.1", "ok"),
                "success",
            ),
            (
                Kind::Aider,
                "aider",
                "ok-429",
                fixture!("aider-0.86.1", "ok-429"),
                "success",
            ),
            (
                Kind::Aider,
                "aider",
                "429",
                fixture!("aider-0.86.1", "429"),
                "limit",
            ),
            (
                Kind::Aider,
                "aider",
                "usage-limit",
                fixture!("aider-0.86.1", "usage-limit"),
                "limit",
            ),
            (
                Kind::Aider,
                "aider",
                "500",
                fixture!("aider-0.86.1", "500"),
                "transient",
            ),
            (
                Kind::Aider,
                "aider",
                "401",
                fixture!("aider-0.86.1", "401"),
                "auth",
            ),
            (
                Kind::Aider,
                "aider",
                "hang",
                fixture!("aider-0.86.1", "hang"),
                "stopped",
            ),
            (
                Kind::Aider,
                "aider",
                "dash-v",
                fixture!("aider-0.86.1", "dash-v"),
                "success",
            ),
            (
                Kind::Aider,
                "aider",
                "bad-flag",
                fixture!("aider-0.86.1", "bad-flag"),
                "config",
            ),
            (
                Kind::Aider,
                "aider",
                "cut",
                fixture!("aider-0.86.1", "cut"),
                "transient",
            ),
            (
                Kind::Aider,
                "aider",
                "garbage",
                fixture!("aider-0.86.1", "garbage"),
                "task",
            ),
            (
                Kind::Aider,
                "aider",
                "garbage-url",
                fixture!("aider-0.86.1", "garbage-url"),
                "task",
            ),
            (
                Kind::Aider,
                "aider",
                "overloaded",
                fixture!("aider-0.86.1", "overloaded"),
                "transient",
            ),
            (
                Kind::Aider,
                "aider",
                "refused",
                fixture!("aider-0.86.1", "refused"),
                "transient",
            ),
            (
                Kind::Cursor,
                "cursor-agent*",
                "ok",
                fixture!("cursor-agent-docs", "ok"),
                "success",
            ),
            (
                Kind::Cursor,
                "cursor-agent*",
                "ok-429",
                fixture!("cursor-agent-docs", "ok-429"),
                "success",
            ),
            (
                Kind::Cursor,
                "cursor-agent*",
                "usage-limit",
                fixture!("cursor-agent-docs", "usage-limit"),
                "limit",
            ),
            (
                Kind::Cursor,
                "cursor-agent*",
                "500",
                fixture!("cursor-agent-docs", "500"),
                "transient",
            ),
            (
                Kind::Cursor,
                "cursor-agent*",
                "401",
                fixture!("cursor-agent-docs", "401"),
                "auth",
            ),
            (
                Kind::Cursor,
                "cursor-agent*",
                "hang",
                fixture!("cursor-agent-docs", "hang"),
                "stopped",
            ),
            (
                Kind::Cursor,
                "cursor-agent*",
                "stream-ok",
                fixture!("cursor-agent-docs", "stream-ok"),
                "success",
            ),
        ];
        let mut bad = Vec::new();
        for (kind, cli, mode, f, want) in &cases {
            let got = outcome(kind, f, mode);
            println!("| {cli} | {mode} | {} | {got} |", f.exit.trim());
            if got != *want {
                bad.push(format!("{cli} {mode}: want {want}, got {got}"));
            }
        }
        assert!(bad.is_empty(), "{bad:#?}");
    }
}
