//! Recognising usage-limit and rate-limit messages in an agent CLI's output.
//!
//! Agent CLIs do not signal limits through exit codes (`claude -p` prints
//! "API Error: Rate limit reached" and exits 0), so the supervisor scans the
//! tail of a run's output for the messages' characteristic shapes and, when the
//! message says when the limit resets, works out that instant.
//!
//! The module is pure: the clock and the local time zone are parameters.
//!
//! Matching is line by line, on the last 64 KiB of output with ANSI escapes
//! removed. Lines that look like diff hunks or source comments (starting with
//! `+`, `-`, `@@`, `//`, `/*`, `* ` or `#`) never match, and patterns require
//! the shapes of real messages ("rate limit reached", "hit your limit",
//! "Too Many Requests", "RESOURCE_EXHAUSTED", a 429 status, ...), not mere
//! words like "rate limit". The last matching line wins; its reset time is
//! looked for on that line, then up to 20 lines after it, then up to 10 lines
//! before it (JSON errors are often pretty-printed over several lines).

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use regex::Regex;

/// How much of the output is scanned (its end).
const TAIL_BYTES: usize = 64 * 1024;
/// Longest message kept, in characters.
const MAX_MESSAGE_CHARS: usize = 300;
/// Reset times further ahead than this are not believed.
const MAX_AHEAD: Duration = Duration::from_secs(7 * 24 * 3600);
/// A printed clock time this little in the past is the reset under way.
const IMMINENT: Duration = Duration::from_secs(5 * 60);
const LINES_AFTER: usize = 20;
const LINES_BEFORE: usize = 10;

/// Whether a reset at `t` is believable: after `now`, and at most 7 days on.
pub fn believable(t: SystemTime, now: SystemTime) -> bool {
    t.duration_since(now)
        .is_ok_and(|d| !d.is_zero() && d <= MAX_AHEAD)
}

/// Patterns for every agent: the shapes of real limit messages.
const GENERIC: &[&str] = &[
    r"(?i)\brate[ -]limit (?:reached|exceeded)\b",
    r"(?i)\b(?:been|being|are|you're|got) rate[ -]limited\b",
    r"(?i)\busage limit (?:reached|exceeded)\b",
    r"(?i)\b(?:hit|reached) your (?:[\w.-]+ ){0,3}?(?:usage |rate |request |quota )?limits?\b",
    r"(?i)\blimit reached\b.*\bresets?\b",
    r"(?i)\btoo many requests\b",
    r"(?i)\bquota exceeded\b|\bexceeded your (?:current )?quota\b",
    r"\bRESOURCE_EXHAUSTED\b",
    // Error identifiers, only as values ("type": "rate_limit_error", code=...).
    r#"(?i)[\\"'=:]\s*[\\"']?(?:rate_limit_exceeded|rate_limit_error|usage_limit_reached|insufficient_quota)\b"#,
    // A 429 status in an error's shape, not any number 429.
    r#"(?i)\b(?:status(?:[ _]?code)?|code|error|http(?:/[\d.]+)?|rejected)\b[\\"'\s:=(]*(?:code[\\"'\s:=]*)?429\b|\(429\)"#,
];

const CLAUDE: &[&str] = &[
    r"(?i)\bAPI Error\b.*(?:\brate[ _-]?limit|\b429\b)",
    r"(?i)\b(?:5-hour|weekly|session|daily|opus|sonnet) limit reached\b",
    r"(?i)\busage limit reached\|\d+",
];

const CODEX: &[&str] = &[
    r"(?i)\bexceeded retry limit, last status: 429\b",
    r"(?i)\brate limit reached for \S+ in organization\b",
];

const GEMINI: &[&str] = &[
    r"(?i)\bquota exceeded for quota metric\b",
    r"(?i)\bexhausted your (?:[\w.-]+ ){0,3}?(?:quota|capacity)\b",
    r"(?i)\bresource has been exhausted\b",
];

const AIDER: &[&str] = &[
    r"\bRateLimitError\b",
    r"(?i)\bprovider has rate limited you\b",
];

const CURSOR: &[&str] = &[r"(?i)\b(?:hit|reached) (?:the|your) (?:[\w.-]+ ){0,3}?limit\b"];

/// One agent's limit patterns (compiled).
#[derive(Debug, Clone)]
pub struct LimitPatterns {
    triggers: Vec<Regex>,
    /// How many of `triggers` (the first ones) are built in; the rest are
    /// the agent's own `limit_patterns`.
    builtin: usize,
}

impl LimitPatterns {
    /// Patterns for a preset: "claude", "codex", "gemini", "aider",
    /// "cursor-agent", or any other name (generic defaults).
    pub fn preset(agent_kind: &str) -> LimitPatterns {
        let specific: &[&str] = match agent_kind.trim().to_ascii_lowercase().as_str() {
            "claude" => CLAUDE,
            "codex" => CODEX,
            "gemini" => GEMINI,
            "aider" => AIDER,
            "cursor-agent" | "cursor" => CURSOR,
            _ => &[],
        };
        let triggers = GENERIC
            .iter()
            .chain(specific)
            .map(|p| Regex::new(p).expect("built-in limit pattern compiles"))
            .collect::<Vec<_>>();
        LimitPatterns {
            builtin: triggers.len(),
            triggers,
        }
    }

    /// The agent's own `limit_patterns` alone, without the built-in ones:
    /// what a generic agent's successful run is matched with. Its stderr
    /// may well mention a 429 it got past ("retried after 429"), and a
    /// pattern the user wrote is the user's word that the text is a limit.
    pub fn own_only(&self) -> LimitPatterns {
        LimitPatterns {
            triggers: self.triggers[self.builtin..].to_vec(),
            builtin: 0,
        }
    }

    /// No built-in pattern: for the CLI kinds, whose adapters read their own
    /// limit messages; only the agent's `limit_patterns` are added.
    pub fn none() -> LimitPatterns {
        LimitPatterns {
            triggers: Vec::new(),
            builtin: 0,
        }
    }

    /// Whether there is anything to look for.
    pub fn is_empty(&self) -> bool {
        self.triggers.is_empty()
    }

    /// Extra user regexes (from config) added to a preset; Err(message naming
    /// the bad regex) if one does not compile.
    pub fn with_extra(mut self, extra: &[String]) -> Result<LimitPatterns, String> {
        for p in extra {
            let re = Regex::new(p).map_err(|e| format!("bad limit pattern {p:?}: {e}"))?;
            self.triggers.push(re);
        }
        Ok(self)
    }

    fn matches(&self, line: &str) -> bool {
        !is_noise(line) && self.triggers.iter().any(|r| r.is_match(line))
    }
}

/// What was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// The matching line, trimmed, capped at 300 chars.
    pub message: String,
    /// The reset time, when the message gives one (and it lies within the
    /// next 7 days).
    pub until: Option<SystemTime>,
}

/// Scans `output` (stdout and stderr concatenated; only the last 64 KiB are
/// looked at) for a limit message. `now` is the current time; `local_tz` is
/// the IANA zone used for times printed without a zone (None, or a name that
/// is not a known zone: the system's local zone).
pub fn detect(
    p: &LimitPatterns,
    output: &str,
    now: SystemTime,
    local_tz: Option<&str>,
) -> Option<Limit> {
    let text = strip_ansi(tail(output));
    let lines: Vec<&str> = text
        .split(['\n', '\r'])
        .filter(|l| !l.trim().is_empty())
        .collect();
    let hit = (0..lines.len()).rev().find(|&i| p.matches(lines[i]))?;
    let message: String = lines[hit].trim().chars().take(MAX_MESSAGE_CHARS).collect();

    let after = (hit + 1..lines.len()).take(LINES_AFTER);
    let before = (0..hit).rev().take(LINES_BEFORE);
    let hint = std::iter::once(hit)
        .chain(after)
        .chain(before)
        .filter(|&i| i == hit || !is_noise(lines[i]))
        .find_map(|i| reset_hint(lines[i], now, local_tz));
    let until = hint.flatten().filter(|t| believable(*t, now));
    Some(Limit { message, until })
}

/// When a limit resets, from the words a CLI gave for it ("Jan 1, 2030,
/// 12pm (UTC)", "1pm", "in 2 hours"): only within the next 7 days.
pub fn reset_time(text: &str, now: SystemTime, local_tz: Option<&str>) -> Option<SystemTime> {
    let line = format!("resets {text}");
    reset_hint(&line, now, local_tz)
        .or_else(|| reset_hint(text, now, local_tz))
        .flatten()
        .filter(|t| believable(*t, now))
}

/// The last `TAIL_BYTES` of `s`, starting on a character boundary.
fn tail(s: &str) -> &str {
    if s.len() <= TAIL_BYTES {
        return s;
    }
    let mut start = s.len() - TAIL_BYTES;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn strip_ansi(s: &str) -> Cow<'_, str> {
    static ANSI: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]").unwrap()
    });
    if s.contains('\x1b') {
        ANSI.replace_all(s, "")
    } else {
        Cow::Borrowed(s)
    }
}

/// Diff hunks and source comments: text about limits, not a limit message.
fn is_noise(line: &str) -> bool {
    let t = line.trim_start();
    ["+", "-", "@@", "//", "/*", "* ", "#"]
        .iter()
        .any(|p| t.starts_with(p))
}

static PIPE_TIMESTAMP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\blimit reached\|(\d{9,11})\b").unwrap());
static RESETS_AT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(?i)\bresets_at[\\"']*\s*[:=]\s*[\\"']*(\d{9,11})\b"#).unwrap());
static RESETS_IN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\bresets_in_seconds[\\"']*\s*[:=]\s*[\\"']*(\d+(?:\.\d+)?)"#).unwrap()
});
static RETRY_DELAY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\bretry_?delay[\\"']*\s*[:=]\s*[\\"']*(\d+(?:\.\d+)?)s\b"#).unwrap()
});
const UNIT: &str = r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?)\b";
static DURATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b(?:retry|try again|resets?|available again)\s+(?:in|after)\s+((?:\d+(?:\.\d+)?\s*{UNIT}[\s,]*(?:and\s+)?)+)"
    ))
    .unwrap()
});
static DURATION_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"(?i)(\d+(?:\.\d+)?)\s*{UNIT}")).unwrap());
static RETRY_AFTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\bretry[- ]after\b[\\"']*\s*[:=]?\s*[\\"']*(\d+(?:\.\d+)?)\b"#).unwrap()
});
static CLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)\b(?:resets?|try again|available again)\s+(?:at\s+|on\s+)?",
        r"(?:(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?",
        r"(?:\s+(?P<year>\d{4}),?)?\s+(?:at\s+)?)?",
        r"(?P<h>\d{1,2})(?::(?P<m>\d{2}))?(?:\s*(?P<ap>[ap])\.?m\b\.?)?",
        r"(?:\s*\(\s*(?P<tz>[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*)\s*\))?",
    ))
    .unwrap()
});

/// A reset time stated on `line`: None if the line states none, Some(None) if
/// it states one that cannot be resolved (unknown zone, impossible date).
fn reset_hint(line: &str, now: SystemTime, local_tz: Option<&str>) -> Option<Option<SystemTime>> {
    let num = |re: &Regex| -> Option<f64> { re.captures(line)?[1].parse().ok() };
    let unix = |secs: f64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64));
    let after = |secs: f64| Some(Duration::try_from_secs_f64(secs).ok().map(|d| now + d));
    if let Some(secs) = num(&PIPE_TIMESTAMP).or_else(|| num(&RESETS_AT)) {
        return Some(unix(secs));
    }
    if let Some(secs) = num(&RESETS_IN).or_else(|| num(&RETRY_DELAY)) {
        return after(secs);
    }
    if let Some(c) = DURATION.captures(line) {
        return after(duration_secs(&c[1]));
    }
    if let Some(secs) = num(&RETRY_AFTER) {
        return after(secs);
    }
    CLOCK
        .captures_iter(line)
        .find_map(|c| clock_time(&c, now, local_tz))
}

/// Seconds in "2 days 3 hours", "35.5s", "4h 30m".
fn duration_secs(text: &str) -> f64 {
    DURATION_PART
        .captures_iter(text)
        .map(|c| {
            let n: f64 = c[1].parse().unwrap_or(0.0);
            let unit = c[2].to_ascii_lowercase();
            let scale = match unit.as_str() {
                "ms" => 0.001,
                u if u.starts_with("millisecond") => 0.001,
                u if u.starts_with('s') => 1.0,
                u if u.starts_with('m') => 60.0,
                u if u.starts_with('h') => 3600.0,
                _ => 86400.0,
            };
            n * scale
        })
        .sum()
}

/// The instant a printed clock time ("1pm (Europe/Lisbon)", "Oct 9 at 2pm",
/// "13:00 (UTC)") names: the next occurrence after `now` when no date is given.
/// None if the capture is not a clock time at all (e.g. "resets 5").
fn clock_time(
    c: &regex::Captures<'_>,
    now: SystemTime,
    local_tz: Option<&str>,
) -> Option<Option<SystemTime>> {
    let mut hour: i8 = c["h"].parse().ok()?;
    let minute: i8 = match c.name("m") {
        Some(m) => m.as_str().parse().ok()?,
        None => 0,
    };
    match c.name("ap") {
        Some(ap) => {
            if !(1..=12).contains(&hour) {
                return None;
            }
            hour = hour % 12
                + if ap.as_str().eq_ignore_ascii_case("p") {
                    12
                } else {
                    0
                };
        }
        None if c.name("m").is_none() => return None,
        None => {}
    }
    if hour > 23 || minute > 59 {
        return None;
    }
    let tz = match c.name("tz") {
        Some(name) => match zone(name.as_str()) {
            Some(tz) => tz,
            None => return Some(None),
        },
        None => local_zone(local_tz),
    };
    let Ok(now) = Timestamp::try_from(now) else {
        return Some(None);
    };
    let today = now.to_zoned(tz.clone()).date();
    let at = |date: Date| {
        let z = date.at(hour, minute, 0, 0).to_zoned(tz.clone()).ok()?;
        Some(z.timestamp())
    };
    // CLIs print the minute, not the second: a time in the minute now
    // running, or a few minutes past (clocks differ), is the reset under
    // way, not the same time tomorrow (or next year).
    let imminent = |t: Timestamp| {
        let since = now.duration_since(t);
        (since.as_secs() >= 0 && since.as_secs() < IMMINENT.as_secs() as i64).then(|| {
            let minute_end = t.checked_add(jiff::SignedDuration::from_secs(60)).ok()?;
            let soon = now.checked_add(jiff::SignedDuration::from_secs(60)).ok()?;
            Some(if minute_end > now { minute_end } else { soon })
        })?
    };
    let upcoming = |t: Option<Timestamp>| -> Option<Option<Timestamp>> {
        let t = t?;
        if t > now {
            Some(Some(t))
        } else {
            imminent(t).map(Some)
        }
    };
    let found = match (c.name("mon"), c.name("day")) {
        (Some(mon), Some(day)) => {
            let month = month_number(mon.as_str())?;
            let day: i8 = day.as_str().parse().ok()?;
            let year = c.name("year").and_then(|y| y.as_str().parse::<i16>().ok());
            let on = |y: i16| Date::new(y, month, day).ok().and_then(at);
            match year {
                Some(y) => upcoming(on(y)).unwrap_or_else(|| on(y)),
                None => upcoming(on(today.year())).unwrap_or_else(|| on(today.year() + 1)),
            }
        }
        // Yesterday's, just past midnight ("11:59 PM" seen at 00:02); else
        // today's; else tomorrow's.
        _ => (|| imminent(at(today.yesterday().ok()?)?).map(Some))()
            .or_else(|| upcoming(at(today)))
            .unwrap_or_else(|| at(today.tomorrow().ok()?)),
    };
    Some(found.map(SystemTime::from))
}

fn month_number(name: &str) -> Option<i8> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let name = name.to_ascii_lowercase();
    let i = MONTHS.iter().position(|m| *m == name)?;
    Some(i as i8 + 1)
}

fn zone(name: &str) -> Option<TimeZone> {
    if name.eq_ignore_ascii_case("UTC") || name.eq_ignore_ascii_case("GMT") {
        return Some(TimeZone::UTC);
    }
    TimeZone::get(name).ok()
}

fn local_zone(local_tz: Option<&str>) -> TimeZone {
    local_tz
        .and_then(zone)
        .unwrap_or_else(|| TimeZone::try_system().unwrap_or(TimeZone::UTC))
}

/// How long an agent cools down after a limit whose message gave no reset
/// time: the agent's `cooldown`, but at most a minute for a limit the
/// message says is per minute (an API key's tokens or requests per minute,
/// claude's "rate limit ... per minute"): those are gone within the minute,
/// and a half-hour cooldown would idle the agent for nothing.
pub fn cooldown_for(message: &str, configured: Duration) -> Duration {
    static PER_MINUTE: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(?i)\bper[ -]minute\b|\b(?:tokens|requests)/min\b|\b[RT]PM\b|PerMinute")
            .expect("pattern compiles")
    });
    if PER_MINUTE.is_match(message) {
        configured.min(Duration::from_secs(60))
    } else {
        configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_minute_limit_cools_down_a_minute_at_most() {
        let half_hour = Duration::from_secs(1800);
        for per_minute in [
            "claude: API Error: Request rejected (429) · This request would exceed the rate limit for your organization (mock-org) of 50 input tokens per minute.",
            "quotaId: GenerateRequestsPerMinutePerProjectPerModel",
            "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000",
        ] {
            assert_eq!(
                cooldown_for(per_minute, half_hour),
                Duration::from_secs(60),
                "{per_minute}"
            );
        }
        assert_eq!(cooldown_for("You've hit your limit", half_hour), half_hour);
        assert_eq!(
            cooldown_for("50 input tokens per minute", Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    fn t(s: &str) -> SystemTime {
        SystemTime::from(s.parse::<Timestamp>().unwrap())
    }

    fn run(kind: &str, output: &str, now: &str, tz: Option<&str>) -> Option<Limit> {
        detect(&LimitPatterns::preset(kind), output, t(now), tz)
    }

    fn until(kind: &str, output: &str, now: &str, tz: Option<&str>) -> Option<SystemTime> {
        run(kind, output, now, tz).expect("limit detected").until
    }

    const NOW: &str = "2026-01-15T10:00:00Z";

    #[test]
    fn claude_api_error_rate_limit_has_no_reset() {
        let out = "Working on it...\nAPI Error: Rate limit reached\n";
        let l = run("claude", out, NOW, None).unwrap();
        assert_eq!(l.message, "API Error: Rate limit reached");
        assert_eq!(l.until, None);
    }

    #[test]
    fn claude_hit_limit_resets_later_today_in_named_zone() {
        let out = "You've hit your limit · resets 1pm (Europe/Lisbon)";
        let u = until("claude", out, NOW, Some("Asia/Tokyo"));
        assert_eq!(u, Some(t("2026-01-15T13:00:00Z")));
    }

    #[test]
    fn claude_reset_already_passed_today_means_tomorrow() {
        let out = "You've hit your limit · resets 1pm (Europe/Lisbon)";
        let u = until("claude", out, "2026-01-15T14:00:00Z", None);
        assert_eq!(u, Some(t("2026-01-16T13:00:00Z")));
        // CLIs print the minute: at the reset time, or within that minute,
        // the reset is under way (the minute's end), not a day off.
        let u = until("claude", out, "2026-01-15T13:00:00Z", None);
        assert_eq!(u, Some(t("2026-01-15T13:01:00Z")));
        let u = until("claude", out, "2026-01-15T13:00:30Z", None);
        assert_eq!(u, Some(t("2026-01-15T13:01:00Z")));
        // A few minutes past (clocks differ): in a minute.
        let u = until("claude", out, "2026-01-15T13:03:00Z", None);
        assert_eq!(u, Some(t("2026-01-15T13:04:00Z")));
        // Across midnight: 11:59 PM seen at 00:02 is the reset under way.
        let u = until(
            "codex",
            "You've hit your usage limit. Upgrade to Pro, or try again at 11:59 PM.",
            "2026-01-16T00:02:00Z",
            Some("UTC"),
        );
        assert_eq!(u, Some(t("2026-01-16T00:03:00Z")));
        // Codex's "try again at 9:45 AM." seen at 09:45:39.
        let u = until(
            "codex",
            "You've hit your usage limit. Upgrade to Pro, or try again at 9:45 AM.",
            "2026-01-15T09:45:39Z",
            Some("UTC"),
        );
        assert_eq!(u, Some(t("2026-01-15T09:46:00Z")));
    }

    #[test]
    fn claude_reset_respects_summer_time() {
        let out = "You've hit your limit · resets 1pm (Europe/Lisbon)";
        let u = until("claude", out, "2026-07-01T10:00:00Z", None);
        assert_eq!(u, Some(t("2026-07-01T12:00:00Z")));
    }

    #[test]
    fn claude_reset_with_minutes_and_no_zone_uses_local_tz() {
        let out = "You've hit your limit · resets 11:30pm";
        // 10:00Z is 19:00 in Tokyo; 23:30 JST is 14:30Z.
        let u = until("claude", out, NOW, Some("Asia/Tokyo"));
        assert_eq!(u, Some(t("2026-01-15T14:30:00Z")));
    }

    #[test]
    fn claude_reset_9am_new_york() {
        let out = "You've hit your limit · resets 9am (America/New_York)";
        let u = until("claude", out, NOW, None);
        assert_eq!(u, Some(t("2026-01-15T14:00:00Z")));
    }

    #[test]
    fn claude_reset_24h_clock_utc() {
        let out = "You've hit your limit · resets 13:00 (UTC)";
        assert_eq!(
            until("claude", out, NOW, None),
            Some(t("2026-01-15T13:00:00Z"))
        );
    }

    #[test]
    fn claude_reset_without_zone_and_no_local_tz_uses_system_zone() {
        let out = "You've hit your limit · resets 1pm";
        let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
        let now: Timestamp = NOW.parse().unwrap();
        let today = now.to_zoned(tz.clone()).date();
        let mut want = today
            .at(13, 0, 0, 0)
            .to_zoned(tz.clone())
            .unwrap()
            .timestamp();
        if want <= now {
            let d = today.tomorrow().unwrap();
            want = d.at(13, 0, 0, 0).to_zoned(tz).unwrap().timestamp();
        }
        assert_eq!(
            until("claude", out, NOW, None),
            Some(SystemTime::from(want))
        );
        // An unknown local_tz name also falls back to the system zone.
        assert_eq!(
            until("claude", out, NOW, Some("Not/AZone")),
            Some(SystemTime::from(want))
        );
    }

    #[test]
    fn claude_older_limit_messages() {
        let out = "Claude usage limit reached. Your limit will reset at 3pm (America/New_York).";
        assert_eq!(
            until("claude", out, NOW, None),
            Some(t("2026-01-15T20:00:00Z"))
        );
        let out = "5-hour limit reached ∙ resets 3pm";
        assert_eq!(
            until("claude", out, NOW, Some("UTC")),
            Some(t("2026-01-15T15:00:00Z"))
        );
        let out = "Weekly limit reached ∙ resets Jan 17, 2pm";
        assert_eq!(
            until("claude", out, NOW, Some("UTC")),
            Some(t("2026-01-17T14:00:00Z"))
        );
        let out =
            r#"API Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"x"}}"#;
        assert_eq!(until("claude", out, NOW, None), None);
    }

    #[test]
    fn claude_pipe_unix_timestamp() {
        let out = "Claude AI usage limit reached|1767225600";
        let u = until("claude", out, "2025-12-31T12:00:00Z", None);
        assert_eq!(u, Some(t("2026-01-01T00:00:00Z")));
        // In the past: detected, but no reset time.
        let l = run("claude", out, NOW, None).unwrap();
        assert_eq!(l.message, out);
        assert_eq!(l.until, None);
    }

    #[test]
    fn codex_usage_limit_json_resets_in_seconds() {
        let out = concat!(
            "[2026-01-15T10:00:00] ERROR: unexpected status 429 Too Many Requests: ",
            r#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","#,
            r#""plan_type":"plus","resets_in_seconds": 3600}}"#
        );
        assert_eq!(
            until("codex", out, NOW, None),
            Some(t("2026-01-15T11:00:00Z"))
        );
        let out = "stream disconnected before completion: Rate limit reached for gpt-5 in organization org-x on tokens per min (TPM): Limit 30000, Used 29000. Please try again in 1.5s.";
        assert_eq!(
            until("codex", out, NOW, None),
            Some(t(NOW) + Duration::from_millis(1500))
        );
        let out = "stream error: usage_limit_reached status=429 resets_in_seconds=3600";
        assert_eq!(
            until("codex", out, NOW, None),
            Some(t("2026-01-15T11:00:00Z"))
        );
    }

    #[test]
    fn codex_pretty_printed_json_over_several_lines() {
        let out = "{\n  \"error\": {\n    \"resets_in_seconds\": 120,\n    \"type\": \"usage_limit_reached\",\n    \"message\": \"The usage limit has been reached\"\n  }\n}\n";
        let l = run("codex", out, NOW, None).unwrap();
        assert_eq!(l.message, "\"type\": \"usage_limit_reached\",");
        assert_eq!(l.until, Some(t("2026-01-15T10:02:00Z")));
    }

    #[test]
    fn codex_plain_429_has_no_reset() {
        let l = run("codex", "ERROR: 429 Too Many Requests", NOW, None).unwrap();
        assert_eq!(l.message, "ERROR: 429 Too Many Requests");
        assert_eq!(l.until, None);
        let out = "ERROR: exceeded retry limit, last status: 429 Too Many Requests";
        assert_eq!(until("codex", out, NOW, None), None);
    }

    #[test]
    fn codex_try_again_in_and_at() {
        let out = "■ You've hit your usage limit. Upgrade to Pro or try again in 2 days 3 hours 5 minutes.";
        assert_eq!(
            until("codex", out, NOW, None),
            Some(t("2026-01-17T13:05:00Z"))
        );
        let out =
            "■ You've hit your usage limit. Upgrade to Pro or try again at Jan 16th, 2026 3:14 PM.";
        assert_eq!(
            until("codex", out, NOW, Some("UTC")),
            Some(t("2026-01-16T15:14:00Z"))
        );
    }

    #[test]
    fn gemini_retry_in_fractional_seconds() {
        let out = "[API Error: Quota exceeded for quota metric 'Gemini 2.5 Pro Requests' and limit 'Requests per minute per user'. Please retry in 35.5s.]";
        let u = until("gemini", out, NOW, None);
        assert_eq!(u, Some(t(NOW) + Duration::from_millis(35_500)));
        let out = "Error: RESOURCE_EXHAUSTED: Please retry in 35.5s";
        assert_eq!(
            until("gemini", out, NOW, None),
            Some(t(NOW) + Duration::from_millis(35_500))
        );
    }

    #[test]
    fn gemini_retry_delay_json() {
        let out = r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay": "35s"}]}}"#;
        assert_eq!(
            until("gemini", out, NOW, None),
            Some(t("2026-01-15T10:00:35Z"))
        );
        let multi = "Error when talking to Gemini API\n{\n  \"error\": {\n    \"code\": 429,\n    \"status\": \"RESOURCE_EXHAUSTED\",\n    \"details\": [\n      {\n        \"@type\": \"type.googleapis.com/google.rpc.RetryInfo\",\n        \"retryDelay\": \"35s\"\n      }\n    ]\n  }\n}\n";
        let l = run("gemini", multi, NOW, None).unwrap();
        assert_eq!(l.message, "\"status\": \"RESOURCE_EXHAUSTED\",");
        assert_eq!(l.until, Some(t("2026-01-15T10:00:35Z")));
        // Escaped JSON inside a JSON string.
        let esc = r#"[API Error: {"error":{"message":"{\n  \"error\": {\n    \"code\": 429,\n    \"status\": \"RESOURCE_EXHAUSTED\", \"retryDelay\": \"7s\"}}"}}]"#;
        assert_eq!(
            until("gemini", esc, NOW, None),
            Some(t("2026-01-15T10:00:07Z"))
        );
    }

    #[test]
    fn generic_shapes_case_insensitive_with_retry_after() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "Error: RATE LIMIT EXCEEDED, retry after 2 minutes",
                Some("2026-01-15T10:02:00Z"),
            ),
            ("error: usage limit reached", None),
            (
                "HTTP/1.1 429 Too Many Requests\nRetry-After: 30\n",
                Some("2026-01-15T10:00:30Z"),
            ),
            (
                "too many requests; retry after 45 seconds",
                Some("2026-01-15T10:00:45Z"),
            ),
            (
                "Quota exceeded. Retry after 90",
                Some("2026-01-15T10:01:30Z"),
            ),
            (
                "You exceeded your current quota, please check your plan",
                None,
            ),
            ("Error: you have been rate limited", None),
            ("request failed with status code 429", None),
        ];
        for (out, want) in cases {
            let got = until("some-agent", out, NOW, None);
            assert_eq!(got, want.map(t), "{out}");
        }
    }

    #[test]
    fn ordinary_output_about_rate_limiting_does_not_fire() {
        let outputs = [
            "+    // handle rate limit errors",
            "+    return Err(\"rate limit reached\");",
            "-    if resp.status() == 429 { // Too Many Requests",
            "@@ -10,6 +10,8 @@ fn rate_limit() {",
            "fn rate_limit() -> bool {",
            "    // handle rate limit errors",
            "// Too Many Requests: back off",
            "# Quota exceeded handling",
            "I added a rate limiter and tests for usage limits.",
            "The parser fails at line 429 of input.txt.",
            "Implemented exponential backoff for rate limiting.",
            "let usage_limit_reached = false;",
        ];
        for kind in [
            "claude",
            "codex",
            "gemini",
            "aider",
            "cursor-agent",
            "other",
        ] {
            for out in outputs {
                assert_eq!(run(kind, out, NOW, None), None, "{kind}: {out}");
            }
            assert_eq!(run(kind, &outputs.join("\n"), NOW, None), None, "{kind}");
        }
    }

    #[test]
    fn reset_too_far_or_past_is_dropped() {
        let far = [
            r#"{"type":"usage_limit_reached","resets_in_seconds": 999999}"#,
            "Claude AI usage limit reached|1800000000",
            "You've hit your limit · resets Mar 9 at 2pm (UTC)",
            "rate limit exceeded, retry after 8 days",
        ];
        for out in far {
            let l = run("claude", out, NOW, None).expect(out);
            assert_eq!(l.until, None, "{out}");
        }
        // A date with an explicit year in the past.
        let out = "You've hit your usage limit. Try again at Jan 2nd, 2025 3:14 PM.";
        assert_eq!(until("codex", out, NOW, Some("UTC")), None);
    }

    #[test]
    fn month_day_without_year_is_the_next_occurrence() {
        let out = "Weekly limit reached ∙ resets Jan 1 at 9am (UTC)";
        let u = until("claude", out, "2025-12-30T10:00:00Z", None);
        assert_eq!(u, Some(t("2026-01-01T09:00:00Z")));
    }

    #[test]
    fn unknown_zone_gives_no_reset_time() {
        let out = "You've hit your limit · resets 1pm (Mars/Olympus)";
        let l = run("claude", out, NOW, None).unwrap();
        assert_eq!(l.until, None);
    }

    #[test]
    fn only_the_last_64_kib_is_scanned() {
        let filler = "é ordinary output line\n".repeat(4000); // > 64 KiB
        let early = format!("API Error: Rate limit reached\n{filler}");
        assert_eq!(run("claude", &early, NOW, None), None);
        let late = format!("{filler}x\nAPI Error: Rate limit reached\n");
        let l = run("claude", &late, NOW, None).unwrap();
        assert_eq!(l.message, "API Error: Rate limit reached");
    }

    #[test]
    fn ansi_colour_and_carriage_returns_are_ignored() {
        let out =
            "\x1b[2K\r\x1b[31mYou've hit your \x1b[1mlimit\x1b[0m · resets 1pm (UTC)\x1b[0m\r\n";
        let l = run("claude", out, NOW, None).unwrap();
        assert_eq!(l.message, "You've hit your limit · resets 1pm (UTC)");
        assert_eq!(l.until, Some(t("2026-01-15T13:00:00Z")));
    }

    #[test]
    fn message_is_trimmed_and_capped() {
        let long = format!("   Too Many Requests {}   ", "x".repeat(1000));
        let l = run("other", &long, NOW, None).unwrap();
        assert_eq!(l.message.chars().count(), 300);
        assert!(l.message.starts_with("Too Many Requests x"));
    }

    #[test]
    fn last_message_wins() {
        let out = "You've hit your limit · resets 1pm (UTC)\nretrying...\nYou've hit your limit · resets 3pm (UTC)\n";
        assert_eq!(
            until("claude", out, NOW, None),
            Some(t("2026-01-15T15:00:00Z"))
        );
    }

    #[test]
    fn preset_specific_patterns() {
        let aider = "litellm.RateLimitError: AnthropicException - overloaded";
        assert!(run("aider", aider, NOW, None).is_some());
        assert!(run("other", aider, NOW, None).is_none());
        let aider2 = "The API provider has rate limited you. Try again later or check your quotas.";
        assert!(run("aider", aider2, NOW, None).is_some());
        let cursor = "You've hit the monthly request limit for your plan.";
        assert!(run("cursor-agent", cursor, NOW, None).is_some());
        assert!(run("claude", cursor, NOW, None).is_none());
        let gemini = "You have exhausted your daily quota on this model.";
        assert!(run("gemini", gemini, NOW, None).is_some());
        assert!(run("codex", gemini, NOW, None).is_none());
    }

    #[test]
    fn extra_patterns_and_bad_regex() {
        let p = LimitPatterns::preset("other")
            .with_extra(&["(?i)^my agent is tired".to_string()])
            .unwrap();
        let l = detect(&p, "My agent is tired, retry in 10s", t(NOW), None).unwrap();
        assert_eq!(l.until, Some(t("2026-01-15T10:00:10Z")));
        // Extra patterns also ignore diff lines.
        assert_eq!(detect(&p, "+my agent is tired", t(NOW), None), None);
        let err = LimitPatterns::preset("claude")
            .with_extra(&["ok".to_string(), "unclosed(".to_string()])
            .unwrap_err();
        assert!(err.contains("unclosed("), "{err}");
    }

    #[test]
    fn no_limit_in_normal_output() {
        let out = "Done. All 42 tests pass.\nSee https://example.com/429 for details\n";
        for kind in ["claude", "codex", "gemini", "aider", "cursor-agent", "x"] {
            assert_eq!(run(kind, out, NOW, None), None);
        }
        assert_eq!(run("claude", "", NOW, None), None);
    }
}
