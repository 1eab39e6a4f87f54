//! Property tests (proptest, fixed seed, no failure files): the parsers never
//! panic and say where they failed, the run queue agrees with a simple model,
//! and any sequence of protocol moves (claim, requeue, reject, commit, crash,
//! recovery) keeps every task in exactly one state directory.
//!
//! Deterministic: every test uses the ChaCha generator with a fixed seed, so CI
//! runs the same cases every time. To explore further locally, change `SEED`
//! or raise the case counts; a failure prints the minimal input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::test_runner::{RngAlgorithm, RngSeed};

use mailroom::model::Outcome;
use mailroom::model::record::{Attempt, ResultRecord, RunInfo, Status};
use mailroom::parse::config::{Config, split_words};
use mailroom::parse::task::{self, Priority};
use mailroom::sched::queue::{Avail, Item, Pick, Queue, Route};
use mailroom::tree::books;
use mailroom::tree::layout::{Layout, State};
use mailroom::tree::lock::TaskLock;
use mailroom::tree::moves;

/// Bytes shown as an escaped string when proptest reports a failing input.
#[derive(Clone)]
struct Bytes(Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

const SEED: u64 = 0x6d61_696c_726f_6f6d; // "mailroom"

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(SEED),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Task files and the config: never panic, always say what and where.
// ---------------------------------------------------------------------------

/// Lines of a file as YAML counts them: `\n`, `\r\n` and a lone `\r` each end one.
fn yaml_line_count(bytes: &[u8]) -> u64 {
    let mut n = 1;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => n += 1,
            b'\r' if bytes.get(i + 1) != Some(&b'\n') => n += 1,
            _ => {}
        }
        i += 1;
    }
    n
}

/// What every refusal of a task file must look like.
fn check_task_result(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Err(e) = task::parse("x", bytes) {
        prop_assert!(!e.message.trim().is_empty(), "empty error message: {:?}", e);
        if let Some(line) = e.line {
            let lines = yaml_line_count(bytes);
            prop_assert!(
                line >= 1 && line <= lines + 1,
                "error at line {} of a file of {} lines: {:?}",
                line,
                lines,
                e
            );
        }
        if let Some(col) = e.column {
            prop_assert!(col >= 1, "column 0: {:?}", e);
        }
        let shown = e.display_at("tasks/pending/x.yaml");
        prop_assert!(shown.starts_with("tasks/pending/x.yaml"));
    }
    Ok(())
}

fn check_config_result(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Err(e) = Config::parse(bytes, "mailroom.yaml") {
        prop_assert!(
            !e.error.message.trim().is_empty(),
            "empty error message: {:?}",
            e
        );
        if let Some(line) = e.error.line {
            let lines = yaml_line_count(bytes);
            prop_assert!(
                line >= 1 && line <= lines + 1,
                "error at line {} of a file of {} lines: {:?}",
                line,
                lines,
                e
            );
        }
        prop_assert!(e.to_string().starts_with("mailroom.yaml"));
    }
    Ok(())
}

/// Every task key, and words near them (quoted, typos, YAML oddities).
fn task_keys_plus() -> &'static [&'static str] {
    static K: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let extra = [
            "priorty",
            "descripton",
            "\"description\"",
            "'retries'",
            "? description",
            "? timeout",
            "<<",
            "x",
            "",
            "é",
        ];
        mailroom::parse::task::TASK_KEYS
            .iter()
            .copied()
            .chain(extra)
            .collect()
    })
}

/// Every config and agent key, and words near them.
fn config_keys_plus() -> &'static [&'static str] {
    static K: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let extra = [
            "a",
            "demo",
            "agent",
            "label",
            "match",
            "min_chars",
            "concurency",
            "comand",
            "\"agents\"",
            "? agents",
            "<<",
        ];
        mailroom::parse::config::CONFIG_KEYS
            .iter()
            .chain(mailroom::parse::config::AGENT_KEYS)
            .copied()
            .chain(extra)
            .collect()
    })
}

const VALUES: &[&str] = &[
    "",
    " ",
    "hi",
    "Write a haiku",
    "high",
    "normal",
    "medium",
    "low",
    "0",
    "1",
    "2",
    "3",
    "-1",
    "99999999999999999999999",
    "1.5",
    "1e400",
    ".inf",
    "-.nan",
    "0x1F",
    "true",
    "false",
    "yes",
    "no",
    "~",
    "null",
    "90",
    "90s",
    "10m",
    "1M",
    "5 M",
    "1h 30m",
    "0s",
    "30d",
    "31d",
    "50ms",
    "500000000000y",
    "2026-01-15T10:00:00Z",
    "2026-01-15T11:00:00+01:00",
    "2026-01-15T10:00:00",
    "2026-13-45T99:99:99Z",
    "tomorrow",
    "[a, b]",
    "[x]",
    "[../etc/passwd]",
    "[/etc/passwd]",
    "[]",
    "{}",
    "[",
    "]",
    "{",
    "}",
    "[[[[[[[[[[",
    "{a: {b: {c: [1, 2]}}}",
    "\"unterminated",
    "'unterminated",
    "\"a\\0b\"",
    "\"\\x00\"",
    "\"\\u0000\"",
    "'it''s'",
    "\"tab\\there\"",
    "&a hi",
    "*a",
    "&a [x, x]",
    "*b",
    "!!str 42",
    "!!binary aGk=",
    "!<tag:x> y",
    "!!int x",
    "|",
    "|-",
    ">",
    ">+2",
    "- a",
    "- ",
    "-",
    ": x",
    "? x",
    "#comment",
    " # comment",
    "../..",
    "/abs",
    "services/api",
    "..",
    ".",
    "a/../b",
    "\u{feff}x",
    "é",
    "\u{2028}",
    "%",
    "@",
    "`",
    "(unclosed",
    "[a-",
    "x{2,5}",
    "codex exec",
    "\"a b\" 'c d' e\\ f",
    "\"unterminated double",
    "trailing\\",
    "poll",
    "auto",
    "relaxed",
    "strict",
];

const SPECIAL_LINES: &[&str] = &[
    "---",
    "...",
    "--- x",
    "--- |",
    "#",
    "# retries",
    "",
    " ",
    "\t",
    "- a",
    "  - [",
    "{",
    "}",
    "]",
    "&a",
    "*a",
    "|",
    ">-",
    "%YAML 1.2",
    "%TAG ! tag:x,2000:",
    "!!str x",
    "? ",
    ": ",
    "description",
    "retries",
    "timeout",
    "priority",
    "not_before",
    "agents",
    "description: \"open",
    "  continued\"",
    "description: 'open",
    "continued'",
    "{description: a,",
    "retries: 1000}",
    "{description: hi, retries: 1000}",
    "description: hi",
    "retries: 1000",
    "timeout: 1M",
    "after: [x]",
    "\u{feff}description: hi",
];

const INDENTS: &[&str] = &[
    "", "", "", " ", "  ", "    ", "\t", "- ", "  - ", "? ", ": ",
];
const SEPS: &[&str] = &[
    ": ", ":", ":  ", " : ", ":\t", ": |\n  ", ": >\n ", ":\n  - ", ":\n  ",
];
const NEWLINES: &[&str] = &["\n", "\n", "\r\n", "\r"];

fn yamlish(keys: &'static [&'static str]) -> impl Strategy<Value = Bytes> {
    let free_text = "[ -~]{0,16}";
    let value = prop_oneof![
        4 => select(VALUES).prop_map(str::to_owned),
        1 => free_text,
    ];
    let line = prop_oneof![
        6 => (select(INDENTS), select(keys), select(SEPS), value.clone())
            .prop_map(|(i, k, s, v)| format!("{i}{k}{s}{v}")),
        2 => select(SPECIAL_LINES).prop_map(str::to_owned),
        1 => value,
    ];
    (
        prop::collection::vec(line, 0..12),
        select(NEWLINES),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(lines, nl, bom, trailing)| {
            let mut s = String::new();
            if bom {
                s.push('\u{feff}');
            }
            s.push_str(&lines.join(nl));
            if trailing {
                s.push_str(nl);
            }
            Bytes(s.into_bytes())
        })
}

const PUNCT: &[&str] = &[
    "{", "}", "[", "]", ",", ", ", ": ", ":", "\n", "\n", "\n  ", "\r\n", "- ", "? ", " #", "&a ",
    "*a", "\"", "'", " ", "|\n", "---\n",
];

/// Token soup: keys, values and YAML punctuation in any order, so that flow
/// collections, explicit keys and keys split across lines come up.
fn token_soup(keys: &'static [&'static str]) -> impl Strategy<Value = Bytes> {
    let token = prop_oneof![
        3 => select(keys),
        2 => select(VALUES),
        4 => select(PUNCT),
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| Bytes(t.concat().into_bytes()))
}

/// Key and value pairs that parse as YAML; some fail validation afterwards
/// (which is when the parser looks for the key's line itself).
const PAIRS: &[(&str, &str)] = &[
    ("description", "hi"),
    ("description", "\"\""),
    ("description", "42"),
    ("prompt", "hello"),
    ("retries", "1000"),
    ("retries", "3"),
    ("priority", "7"),
    ("priority", "urgent"),
    ("priority", "high"),
    ("timeout", "1M"),
    ("timeout", "90"),
    ("timeout", "10m"),
    ("timeout_minutes", "0"),
    ("delay", "40d"),
    ("after", "[x]"),
    ("after", "[a, b]"),
    ("dependencies", "[x]"),
    ("workdir", "../a"),
    ("context_files", "[/etc/passwd]"),
    ("id", "../x"),
    ("id", "other"),
    ("agent", "a/b"),
    ("preferred_agent", "zz"),
    ("parent", ".hidden"),
    ("not_before", "tomorrow"),
    ("not_before", "2026-01-15T10:00:00"),
    ("labels", "[a]"),
    ("subtasks", "[1]"),
];
const KEY_QUOTES: &[&str] = &["", "", "\"", "'"];
const KV_SEPS: &[&str] = &[": ", ": ", "\n: ", " : ", ":\n  ", "\n:\n  "];
const ITEM_SEPS: &[&str] = &[", ", ",\n", "\n, ", ",\n\n", " ,"];

/// Task documents built from [`PAIRS`] in block, flow and explicit-key styles,
/// with keys and values split across lines wherever YAML allows it.
fn styled_doc() -> impl Strategy<Value = Bytes> {
    let entry = (select(PAIRS), select(KEY_QUOTES), select(KV_SEPS));
    (
        prop::collection::vec(entry, 1..6),
        select(ITEM_SEPS),
        0u8..3,
    )
        .prop_map(|(entries, sep, style)| {
            let kv = |((k, v), q, s): &((&str, &str), &str, &str)| format!("{q}{k}{q}{s}{v}");
            let doc = match style {
                0 => entries.iter().map(kv).collect::<Vec<_>>().join("\n"),
                1 => format!(
                    "{{{}}}",
                    entries.iter().map(kv).collect::<Vec<_>>().join(sep)
                ),
                _ => entries
                    .iter()
                    .map(|((k, v), q, _)| format!("? {q}{k}{q}\n: {v}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            Bytes(doc.into_bytes())
        })
}

fn arbitrary_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..256).prop_map(Bytes)
}

/// Valid YAML-ish files with one byte changed, cut or duplicated.
fn mutated(keys: &'static [&'static str]) -> impl Strategy<Value = Bytes> {
    (
        yamlish(keys),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0u8..3,
    )
        .prop_map(|(Bytes(mut b), at, byte, how)| {
            if !b.is_empty() {
                let i = at.index(b.len());
                match how {
                    0 => b[i] = byte,
                    1 => b.truncate(i),
                    _ => {
                        let tail = b[i..].to_vec();
                        b.extend_from_slice(&tail);
                    }
                }
            }
            Bytes(b)
        })
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn task_parse_never_panics_on_bytes(bytes in arbitrary_bytes()) {
        check_task_result(&bytes.0)?;
    }

    #[test]
    fn task_parse_never_panics_on_yamlish_text(bytes in yamlish(task_keys_plus())) {
        check_task_result(&bytes.0)?;
    }

    #[test]
    fn task_parse_never_panics_on_mutated_text(bytes in mutated(task_keys_plus())) {
        check_task_result(&bytes.0)?;
    }

    #[test]
    fn task_parse_never_panics_on_styled_documents(bytes in styled_doc()) {
        check_task_result(&bytes.0)?;
    }

    #[test]
    fn task_parse_never_panics_on_token_soup(bytes in token_soup(task_keys_plus())) {
        check_task_result(&bytes.0)?;
    }

    #[test]
    fn config_parse_never_panics_on_bytes(bytes in arbitrary_bytes()) {
        check_config_result(&bytes.0)?;
    }

    #[test]
    fn config_parse_never_panics_on_yamlish_text(bytes in yamlish(config_keys_plus())) {
        check_config_result(&bytes.0)?;
    }

    #[test]
    fn config_parse_never_panics_on_mutated_text(bytes in mutated(config_keys_plus())) {
        check_config_result(&bytes.0)?;
    }

    #[test]
    fn config_parse_never_panics_on_token_soup(bytes in token_soup(config_keys_plus())) {
        check_config_result(&bytes.0)?;
    }

    #[test]
    fn parse_duration_never_panics(s in prop_oneof![
        any::<String>(),
        "[0-9 .MmhsdyuµnμwZT:+\\-]{0,20}",
        "[0-9]{1,30}(ns|us|ms|s|m|h|d|w|M|y)( [0-9]{1,25}[a-zA-Z]{1,3}){0,3}",
    ]) {
        if let Err(e) = task::parse_duration(&s) {
            prop_assert!(!e.trim().is_empty());
        }
    }

    #[test]
    fn parse_time_never_panics(s in prop_oneof![
        any::<String>(),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?([Zz]|[+\\-][0-9é]{2}:[0-9é]{2}|[+\\-]..:..|é|)",
        "[ -~]{0,4}[+\\-][0-9]{2}:[0-9]{2}",
        ".{0,8}[+\\-].{5}",
    ]) {
        let _ = task::parse_time(&s);
    }

    #[test]
    fn split_words_never_panics(s in prop_oneof![
        any::<String>(),
        "[a \"'\\\\\t$`{}é]{0,30}",
    ]) {
        if let Err(e) = split_words(&s) {
            prop_assert!(!e.trim().is_empty());
        }
    }

    #[test]
    fn split_words_of_plain_words_is_whitespace_split(s in "[a-z0-9_./ \t]{0,40}") {
        let want: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        prop_assert_eq!(split_words(&s).unwrap(), want);
    }

    /// A task that parses only derives names that are names: every child of
    /// its `subtasks` (`<name>.<id>`, or `<name>.<n>`) passes `check_name`,
    /// or the expansion writes a file that `pending/` refuses (or cannot even
    /// create) while the parent waits for a child that will never exist.
    #[test]
    fn subtask_children_get_usable_names(
        len in prop_oneof![1usize..20, 140usize..=200],
        id in prop::option::of("[a-z0-9_-]{1,60}"),
        n in 1usize..4,
    ) {
        let name = "p".repeat(len);
        let mut y = String::from("description: parent\nsubtasks:\n");
        for i in 0..n {
            match &id {
                Some(id) => y.push_str(&format!("  - id: {id}{i}\n    description: child\n")),
                None => y.push_str("  - child\n"),
            }
        }
        if let Ok(t) = task::parse(&name, y.as_bytes()) {
            for st in &t.subtasks {
                let child = format!("{name}.{}", st.suffix);
                prop_assert!(
                    task::check_name(&child).is_ok(),
                    "`{}` parses, but its subtask would be named `{}` ({} bytes): {}",
                    name,
                    child,
                    child.len(),
                    task::check_name(&child).unwrap_err()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Names: derived files never collide (PROTOCOL.md section 2).
// ---------------------------------------------------------------------------

/// Every file a task of this name can have in each state directory.
fn derived(l: &Layout, name: &str) -> Vec<(PathBuf, String)> {
    let mut v = Vec::new();
    for s in State::ALL {
        for ext in ["yaml", "yml"] {
            v.push((l.task_file(s, name, ext), format!("{name}: task .{ext}")));
        }
    }
    v.push((l.lock_file(name), format!("{name}: lock")));
    v.push((l.state_file(name), format!("{name}: state")));
    for s in [State::Assigned, State::Completed, State::Failed] {
        v.push((l.run_dir(s, name), format!("{name}: run {s:?}")));
    }
    for s in [State::Completed, State::Failed] {
        v.push((l.record_file(s, name), format!("{name}: record {s:?}")));
    }
    v
}

fn tricky_name() -> impl Strategy<Value = String> {
    let part = select(
        &[
            "x", "y", "state", "run", "lock", "yaml", "yml", "json", "result", "clash-1", "tmp",
        ][..],
    );
    prop::collection::vec(part, 1..5).prop_map(|p| p.join("."))
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn derived_files_of_different_names_never_collide(a in tricky_name(), b in tricky_name()) {
        prop_assume!(a != b);
        let l = Layout::new(std::path::Path::new("/r"));
        let da = derived(&l, &a);
        for (pb, wb) in derived(&l, &b) {
            for (pa, wa) in &da {
                prop_assert!(pa != &pb, "{} and {} are both {}", wa, wb, pb.display());
            }
        }
    }

    #[test]
    fn classify_never_panics_and_only_yields_valid_names(f in prop_oneof![
        any::<String>(),
        "[.#~a-z]{0,6}(\\.(yaml|yml|YAML|tmp|swp))?[~#]?",
    ]) {
        if let task::Entry::Task { name, ext } = task::classify(&f) {
            prop_assert!(task::check_name(name).is_ok());
            prop_assert!(ext == "yaml" || ext == "yml");
            prop_assert_eq!(format!("{name}.{ext}"), f);
        }
    }
}

// ---------------------------------------------------------------------------
// The run queue against a model.
// ---------------------------------------------------------------------------

const AGENTS: [&str; 3] = ["a0", "a1", "a2"];
const QNAMES: [&str; 6] = ["t0", "t1", "t2", "t3", "t4", "t5"];
const MINUTE_NS: i128 = 60_000_000_000;

#[derive(Debug, Clone)]
enum QOp {
    Insert {
        name: usize,
        prio: Priority,
        /// Submission, in units of 10 minutes.
        sub: u8,
        /// Not before, in seconds after the epoch of the test clock.
        not_before: Option<u16>,
        agents: Vec<usize>,
        least_loaded: bool,
    },
    Remove(usize),
    Pop {
        /// How far the clock moves first, in seconds.
        advance: u16,
        avail: [Avail; 3],
    },
}

fn avail_strategy() -> impl Strategy<Value = Avail> {
    prop_oneof![
        3 => (1usize..4)
            .prop_flat_map(|max| (0..max, Just(max)))
            .prop_map(|(load, max)| Avail::Free { load, max }),
        1 => Just(Avail::Busy),
        1 => Just(Avail::Unavailable),
    ]
}

fn qop_strategy() -> impl Strategy<Value = QOp> {
    let prio = select(&[Priority::High, Priority::Normal, Priority::Low][..]);
    prop_oneof![
        4 => (
            0..QNAMES.len(),
            prio,
            0u8..8,
            prop::option::weighted(0.4, 0u16..400),
            subsequence(vec![0usize, 1, 2], 1..=3).prop_shuffle(),
            any::<bool>(),
        )
            .prop_map(|(name, prio, sub, not_before, agents, least_loaded)| QOp::Insert {
                name,
                prio,
                sub,
                not_before,
                agents,
                least_loaded,
            }),
        1 => (0..QNAMES.len()).prop_map(QOp::Remove),
        4 => (
            prop_oneof![2 => Just(0u16), 1 => 0u16..120],
            [avail_strategy(), avail_strategy(), avail_strategy()],
        )
            .prop_map(|(advance, avail)| QOp::Pop { advance, avail }),
    ]
}

#[derive(Debug, Clone)]
struct ModelItem {
    vtime: i128,
    not_before: Option<SystemTime>,
    /// Moved to the ready set by a pop at a time past its `not_before`.
    promoted: bool,
    route: Route,
}

/// The agent a route gets under the documented rules, if any.
fn model_agent(route: &Route, avail: &BTreeMap<&str, Avail>) -> Option<String> {
    match route.pick {
        Pick::Ordered => {
            for a in &route.agents {
                match avail[a.as_str()] {
                    Avail::Free { .. } => return Some(a.clone()),
                    Avail::Busy => return None,
                    Avail::Unavailable => continue,
                }
            }
            None
        }
        Pick::LeastLoaded => {
            let mut best: Option<(usize, &String)> = None;
            for a in &route.agents {
                if let Avail::Free { load, max } = avail[a.as_str()] {
                    let ratio = load * 1000 / max.max(1);
                    if best.is_none_or(|(r, _)| ratio < r) {
                        best = Some((ratio, a));
                    }
                }
            }
            best.map(|(_, a)| a.clone())
        }
    }
}

fn run_queue_ops(aging_min: u64, ops: Vec<QOp>) -> Result<(), TestCaseError> {
    let aging = Duration::from_secs(aging_min * 60);
    let aging_ns = aging.as_nanos() as i128;
    let epoch = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut now = epoch;
    let mut q = Queue::new(aging);
    let mut model: BTreeMap<&str, ModelItem> = BTreeMap::new();
    for op in ops {
        match op {
            QOp::Insert {
                name,
                prio,
                sub,
                not_before,
                agents,
                least_loaded,
            } => {
                let name = QNAMES[name];
                let route = Route {
                    agents: agents.iter().map(|i| AGENTS[*i].to_owned()).collect(),
                    pick: if least_loaded {
                        Pick::LeastLoaded
                    } else {
                        Pick::Ordered
                    },
                };
                let submitted_ns = sub as i128 * 10 * MINUTE_NS;
                let not_before = not_before.map(|s| epoch + Duration::from_secs(s as u64));
                q.insert(Item {
                    name: name.into(),
                    priority: prio,
                    submitted_ns,
                    not_before,
                    route: Arc::new(route.clone()),
                });
                model.insert(
                    name,
                    ModelItem {
                        vtime: submitted_ns + prio as i128 * aging_ns,
                        not_before,
                        promoted: false,
                        route,
                    },
                );
            }
            QOp::Remove(i) => {
                let name = QNAMES[i];
                prop_assert_eq!(
                    q.remove(name),
                    model.remove(name).is_some(),
                    "remove {}",
                    name
                );
            }
            QOp::Pop { advance, avail } => {
                now += Duration::from_secs(advance as u64);
                let table: BTreeMap<&str, Avail> = AGENTS.iter().copied().zip(avail).collect();
                let expected = model
                    .iter()
                    .filter(|(_, m)| m.not_before.is_none_or(|t| t <= now))
                    .filter_map(|(n, m)| model_agent(&m.route, &table).map(|a| (m.vtime, *n, a)))
                    .min_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)))
                    .map(|(_, n, a)| (n.to_owned(), a));
                let got = q.pop(now, |a| table[a]);
                prop_assert_eq!(&got, &expected, "pop at {:?} with {:?}", now, table);
                if let Some((n, _)) = &got {
                    prop_assert!(!q.contains(n), "{} still queued after its pop", n);
                    let m = model
                        .remove(n.as_str())
                        .expect("popped a task that was not queued");
                    prop_assert!(m.not_before.is_none_or(|t| t <= now));
                }
                for m in model.values_mut() {
                    if m.not_before.is_some_and(|t| t <= now) {
                        m.promoted = true;
                    }
                }
            }
        }
        prop_assert_eq!(q.len(), model.len());
        prop_assert_eq!(q.is_empty(), model.is_empty());
        for n in QNAMES {
            prop_assert_eq!(q.contains(n), model.contains_key(n), "contains {}", n);
        }
        let due = model
            .values()
            .filter(|m| !m.promoted)
            .filter_map(|m| m.not_before)
            .min();
        prop_assert_eq!(q.next_due(), due, "next_due");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn queue_agrees_with_a_model(
        aging_min in select(&[1u64, 10, 30, 120][..]),
        ops in prop::collection::vec(qop_strategy(), 0..60),
    ) {
        run_queue_ops(aging_min, ops)?;
    }
}

// ---------------------------------------------------------------------------
// The protocol: any sequence of moves keeps one file per task in one state.
// ---------------------------------------------------------------------------

/// Task names chosen to collide on suffixes: `x`'s state file is
/// `x.state.json`, `x.state`'s task file is `x.state.yml`, and so on.
const PNAMES: [(&str, &str); 4] = [
    ("x", "yaml"),
    ("x.state", "yml"),
    ("x.run", "yaml"),
    ("z", "yml"),
];

/// Attempts a task may be charged before recovery fails it (`retries: 2`).
const RETRIES: u32 = 2;

#[derive(Debug, Clone, Copy)]
enum POp {
    /// Lock, claim, and start a run (attempt counted in the state file).
    Claim(usize),
    /// Lock, then die before the rename: a lock file is left behind.
    ClaimAbort(usize),
    /// The run failed: put it back into pending/ and release.
    Requeue(usize),
    /// Refuse the file (from pending/, or from assigned/ after a claim).
    Reject(usize, bool),
    /// The run finished: record, move, release.
    Commit(usize, bool),
    /// The record is written, then the supervisor dies before the move.
    CommitCrash(usize, bool),
    /// The supervisor dies: the lock is closed without being released.
    Crash(usize),
    /// Recovery of an orphan in assigned/ (PROTOCOL.md section 11).
    Recover(usize),
}

fn pop_strategy() -> impl Strategy<Value = POp> {
    let i = 0..PNAMES.len();
    prop_oneof![
        4 => i.clone().prop_map(POp::Claim),
        1 => i.clone().prop_map(POp::ClaimAbort),
        2 => i.clone().prop_map(POp::Requeue),
        1 => (i.clone(), any::<bool>()).prop_map(|(i, b)| POp::Reject(i, b)),
        2 => (i.clone(), any::<bool>()).prop_map(|(i, b)| POp::Commit(i, b)),
        1 => (i.clone(), any::<bool>()).prop_map(|(i, b)| POp::CommitCrash(i, b)),
        2 => i.clone().prop_map(POp::Crash),
        3 => i.prop_map(POp::Recover),
    ]
}

struct PTask {
    /// The name it is filed under now (a reject may give it a clash name).
    name: String,
    ext: &'static str,
    state: State,
    /// The lock "our supervisor" holds while it runs the task.
    held: Option<TaskLock>,
    /// The most attempts ever seen in its state file.
    max_attempts: u32,
}

struct Sim {
    dir: PathBuf,
    layout: Layout,
    tasks: Vec<PTask>,
    log: Vec<String>,
}

static SIM_SEQ: AtomicU32 = AtomicU32::new(0);

impl Sim {
    fn new() -> Sim {
        let dir = std::env::temp_dir().join(format!(
            "mailroom-props-{}-{}",
            std::process::id(),
            SIM_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let layout = Layout::new(&dir);
        layout.ensure().unwrap();
        let tasks = PNAMES
            .iter()
            .map(|(n, e)| {
                std::fs::write(
                    layout.task_file(State::Pending, n, e),
                    format!("description: task {n}\n"),
                )
                .unwrap();
                PTask {
                    name: (*n).to_owned(),
                    ext: e,
                    state: State::Pending,
                    held: None,
                    max_attempts: 0,
                }
            })
            .collect();
        Sim {
            dir,
            layout,
            tasks,
            log: Vec::new(),
        }
    }

    fn record(&self, name: &str, status: Status, outcome: Outcome, attempts: u32) -> ResultRecord {
        let mut rec = books::never_ran_record(outcome, format!("{outcome} (property test)"));
        rec.task = name.to_owned();
        rec.status = status;
        rec.attempts = attempts;
        rec
    }

    /// The `i`-th task (cyclically) among those the move applies to, so that
    /// most generated moves do something.
    fn pick(&self, op: POp) -> Option<POp> {
        let fits = |t: &PTask| {
            let (pending, assigned, held) = (
                t.state == State::Pending,
                t.state == State::Assigned,
                t.held.is_some(),
            );
            match op {
                POp::Claim(_) | POp::ClaimAbort(_) => pending && !held,
                POp::Requeue(_) | POp::Commit(..) | POp::CommitCrash(..) | POp::Crash(_) => {
                    assigned && held
                }
                POp::Reject(..) => (pending && !held) || (assigned && held),
                POp::Recover(_) => assigned && !held,
            }
        };
        let fit: Vec<usize> = (0..self.tasks.len())
            .filter(|i| fits(&self.tasks[*i]))
            .collect();
        if fit.is_empty() {
            return None;
        }
        let at = |i: usize| fit[i % fit.len()];
        Some(match op {
            POp::Claim(i) => POp::Claim(at(i)),
            POp::ClaimAbort(i) => POp::ClaimAbort(at(i)),
            POp::Requeue(i) => POp::Requeue(at(i)),
            POp::Reject(i, b) => POp::Reject(at(i), b),
            POp::Commit(i, b) => POp::Commit(at(i), b),
            POp::CommitCrash(i, b) => POp::CommitCrash(at(i), b),
            POp::Crash(i) => POp::Crash(at(i)),
            POp::Recover(i) => POp::Recover(at(i)),
        })
    }

    fn apply(&mut self, op: POp) -> Result<bool, TestCaseError> {
        let l = self.layout.clone();
        match op {
            POp::Claim(i) => {
                let t = &mut self.tasks[i];
                if t.held.is_some() || t.state != State::Pending {
                    return Ok(false);
                }
                let lock = free_lock(&l, &t.name)?;
                match moves::claim(&l, &t.name, t.ext, &lock)? {
                    moves::Claim::Claimed => {}
                    other => prop_assert!(false, "claim of {}: {:?}", t.name, other),
                }
                // 7.2: the attempt is counted before the spawn.
                let mut st = books::read_state(&l, &t.name);
                st.attempts += 1;
                st.not_before = None;
                st.run = Some(RunInfo {
                    attempt: st.attempts,
                    agent: "a".into(),
                    host: books::hostname(),
                    supervisor_pid: std::process::id(),
                    supervisor_start: 1,
                    started_at: mailroom::model::record::now(),
                    deadline: mailroom::model::record::now(),
                    reason: None,
                    run_id: Some(books::run_id()),
                    ..RunInfo::default()
                });
                books::write_state(&l, &st)?;
                t.state = State::Assigned;
                t.held = Some(lock);
            }
            POp::ClaimAbort(i) => {
                let t = &mut self.tasks[i];
                if t.held.is_some() || t.state != State::Pending {
                    return Ok(false);
                }
                drop(free_lock(&l, &t.name)?);
            }
            POp::Requeue(i) => {
                let t = &mut self.tasks[i];
                if t.state != State::Assigned {
                    return Ok(false);
                }
                let Some(lock) = t.held.take() else {
                    return Ok(false);
                };
                let mut st = books::read_state(&l, &t.name);
                let run = st.run.take().expect("a running task has a run");
                st.history.push(attempt(&run, Outcome::Exit));
                st.last_error = Some("exit 1".into());
                moves::requeue(&l, &t.name, t.ext, &st)?;
                lock.release();
                t.state = State::Pending;
            }
            POp::Reject(i, rename) => {
                let t = &mut self.tasks[i];
                let (src, lock) = match (t.state, t.held.take()) {
                    (State::Assigned, Some(lock)) => (State::Assigned, lock),
                    (State::Pending, None) => (State::Pending, free_lock(&l, &t.name)?),
                    (_, held) => {
                        t.held = held;
                        return Ok(false);
                    }
                };
                let rec =
                    books::never_ran_record(Outcome::Invalid, "refused (property test)".into());
                let filed = moves::reject(&l, src, &t.name, t.ext, rec, rename)?;
                let Some(target) = filed.map(|r| r.task) else {
                    prop_assert!(false, "reject of {} found no file", t.name);
                    unreachable!()
                };
                if !rename {
                    prop_assert_eq!(&target, &t.name);
                }
                lock.release();
                t.name = target;
                t.state = State::Failed;
            }
            POp::Commit(i, ok) | POp::CommitCrash(i, ok) => {
                let crash = matches!(op, POp::CommitCrash(..));
                let (name, ext) = (self.tasks[i].name.clone(), self.tasks[i].ext);
                if self.tasks[i].state != State::Assigned || self.tasks[i].held.is_none() {
                    return Ok(false);
                }
                let st = books::read_state(&l, &name);
                let run = st.run.clone().expect("a running task has a run");
                let (status, outcome) = if ok {
                    (Status::Completed, Outcome::Success)
                } else {
                    (Status::Failed, Outcome::Exit)
                };
                let mut rec = self.record(&name, status, outcome, st.attempts);
                rec.run_id = run.run_id.clone().expect("run_id");
                rec.history = st.history.clone();
                rec.history.push(attempt(&run, outcome));
                let dest = moves::prepare_commit(&l, &rec)?;
                let t = &mut self.tasks[i];
                let lock = t.held.take().unwrap();
                if crash {
                    drop(lock);
                    return Ok(true);
                }
                moves::finish_commit(&l, &name, ext, dest)?;
                lock.release();
                t.state = dest;
            }
            POp::Crash(i) => {
                if self.tasks[i].held.take().is_none() {
                    return Ok(false);
                }
            }
            POp::Recover(i) => {
                let (name, ext) = (self.tasks[i].name.clone(), self.tasks[i].ext);
                if self.tasks[i].state != State::Assigned || self.tasks[i].held.is_some() {
                    return Ok(false);
                }
                let lock = free_lock(&l, &name)?;
                let dest = self.recover(&name, ext)?;
                lock.release();
                self.tasks[i].state = dest;
            }
        }
        Ok(true)
    }

    /// The supervisor's own recovery (`tree::recovery`), not a copy of it.
    fn recover(&self, name: &str, ext: &str) -> Result<State, TestCaseError> {
        let (_, state) = mailroom::tree::recovery::recover(&self.layout, name, ext, RETRIES, None)?;
        Ok(state)
    }

    /// The invariants, checked after every step.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let l = &self.layout;
        // Every task file is in exactly one state directory, where the model
        // says, and no file appears or disappears.
        let mut seen: BTreeMap<String, State> = BTreeMap::new();
        for s in State::ALL {
            for (name, _) in books::list(l, s)? {
                if let Some(prev) = seen.insert(name.clone(), s) {
                    prop_assert!(false, "{} is in both {:?} and {:?}", name, prev, s);
                }
            }
        }
        let want: BTreeMap<String, State> = self
            .tasks
            .iter()
            .map(|t| (t.name.clone(), t.state))
            .collect();
        prop_assert_eq!(&seen, &want, "tasks on disk vs. the model");
        prop_assert_eq!(seen.len(), PNAMES.len());
        for t in &mut self.tasks {
            // The task file carries its original content.
            let (path, ext) = l.find(t.state, &t.name).unwrap();
            prop_assert_eq!(ext, t.ext);
            let text = std::fs::read_to_string(&path)?;
            prop_assert!(text.starts_with("description: task "), "{}", text);
            // Attempts in the state file never go down.
            if let Ok(b) = std::fs::read(l.state_file(&t.name)) {
                let st: mailroom::model::record::TaskState = serde_json::from_slice(&b)
                    .map_err(|e| TestCaseError::fail(format!("state file of {}: {e}", t.name)))?;
                prop_assert!(
                    st.attempts >= t.max_attempts,
                    "attempts of {} went from {} to {}",
                    t.name,
                    t.max_attempts,
                    st.attempts
                );
                t.max_attempts = st.attempts;
            }
            // A task in a terminal state has its record beside it.
            if matches!(t.state, State::Completed | State::Failed) {
                let b = std::fs::read(l.record_file(t.state, &t.name)).map_err(|e| {
                    TestCaseError::fail(format!("record of {} in {:?}: {e}", t.name, t.state))
                })?;
                let rec: ResultRecord = serde_json::from_slice(&b)
                    .map_err(|e| TestCaseError::fail(format!("record of {}: {e}", t.name)))?;
                prop_assert_eq!(&rec.task, &t.name);
                let want = if t.state == State::Completed {
                    Status::Completed
                } else {
                    Status::Failed
                };
                prop_assert_eq!(rec.status, want);
            }
            // A held lock is exclusive.
            if t.held.is_some() {
                prop_assert!(
                    TaskLock::try_acquire(l, &t.name)?.is_none(),
                    "the lock of {} was taken twice",
                    t.name
                );
            }
        }
        // No temp file is left behind by a finished step.
        for d in [&l.pending, &l.assigned, &l.completed, &l.failed] {
            for e in std::fs::read_dir(d)? {
                let n = e?.file_name().to_string_lossy().into_owned();
                prop_assert!(!n.ends_with(".tmp"), "temp file left: {}", n);
            }
        }
        Ok(())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        for t in &mut self.tasks {
            drop(t.held.take());
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The lock of a task nobody holds. A child that another test of this binary
/// forks copies every descriptor until its exec, so a lock just dropped can
/// stay held for that instant: wait for it, against a deadline.
fn free_lock(l: &Layout, name: &str) -> Result<TaskLock, TestCaseError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(lock) = TaskLock::try_acquire(l, name)? {
            return Ok(lock);
        }
        prop_assert!(
            std::time::Instant::now() < deadline,
            "the lock of {} stayed held for 10 s with nobody holding it",
            name
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn attempt(run: &RunInfo, outcome: Outcome) -> Attempt {
    Attempt {
        attempt: run.attempt,
        agent: run.agent.clone(),
        started_at: run.started_at.clone(),
        finished_at: mailroom::model::record::now(),
        outcome,
        exit_code: None,
        signal: None,
        error: None,
        error_class: None,
        session_id: None,
        resumed: false,
        parent_session: None,
        usage: None,
        run_dir: None,
    }
}

fn run_protocol(ops: Vec<POp>) -> Result<(), TestCaseError> {
    let mut sim = Sim::new();
    sim.check()?;
    for op in ops {
        let Some(op) = sim.pick(op) else { continue };
        sim.log.push(format!("{op:?}"));
        let applied = sim
            .apply(op)
            .map_err(|e| TestCaseError::fail(format!("{e} after {:?}", sim.log)))?;
        if applied {
            APPLIED[op.kind()].fetch_add(1, Ordering::Relaxed);
        }
        sim.check()
            .map_err(|e| TestCaseError::fail(format!("{e} after {:?}", sim.log)))?;
    }
    // In the end, recovery and the remaining moves drive every task to a
    // terminal state without losing any.
    let names: BTreeSet<String> = sim.tasks.iter().map(|t| t.name.clone()).collect();
    for _ in 0..(RETRIES as usize + 3) {
        for i in 0..PNAMES.len() {
            for op in [
                POp::Crash(i),
                POp::Recover(i),
                POp::Claim(i),
                POp::Commit(i, true),
            ] {
                sim.apply(op)?;
                sim.check()?;
            }
        }
    }
    for t in &sim.tasks {
        prop_assert!(
            matches!(t.state, State::Completed | State::Failed),
            "{} ended in {:?}",
            t.name,
            t.state
        );
    }
    let after: BTreeSet<String> = sim.tasks.iter().map(|t| t.name.clone()).collect();
    prop_assert_eq!(names, after);
    Ok(())
}

/// How often each kind of move actually happened, over all cases: a check
/// that the generator reaches every transition, not just no-ops.
static APPLIED: [AtomicU32; 8] = [const { AtomicU32::new(0) }; 8];

impl POp {
    fn kind(self) -> usize {
        match self {
            POp::Claim(_) => 0,
            POp::ClaimAbort(_) => 1,
            POp::Requeue(_) => 2,
            POp::Reject(..) => 3,
            POp::Commit(..) => 4,
            POp::CommitCrash(..) => 5,
            POp::Crash(_) => 6,
            POp::Recover(_) => 7,
        }
    }
}

#[test]
fn protocol_moves_keep_every_task_in_one_state() {
    // Fast enough without fsync; the ordering under test is the same.
    mailroom::tree::fsx::set_durable(false);
    let mut runner = proptest::test_runner::TestRunner::new(config(64));
    let ops = prop::collection::vec(pop_strategy(), 0..=30);
    if let Err(e) = runner.run(&ops, run_protocol) {
        panic!("{e}");
    }
    let counts: Vec<u32> = APPLIED.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eprintln!(
        "moves applied (claim, claim-abort, requeue, reject, commit, commit-crash, crash, recover): {counts:?}"
    );
    assert!(
        counts.iter().all(|c| *c >= 20),
        "some moves were (almost) never exercised: {counts:?} \
         (claim, claim-abort, requeue, reject, commit, commit-crash, crash, recover)"
    );
}
