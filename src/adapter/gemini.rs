//! Gemini CLI (`gemini --prompt=…`), `--output-format json` or `stream-json`.
//!
//! `json` prints one object on stdout on success:
//! `{"session_id":"…","response":"<answer>","stats":{"models":{"<model>":{"api":{…},
//!   "tokens":{"input":…,"prompt":…,"candidates":…,"cached":…,"thoughts":…}}}}}`
//! (one entry per model: gemini also calls a small routing model). On failure stdout is
//! empty and stderr ends with `{"session_id":"…","error":{"type":"Error","message":"…",
//! "code":429}}` after stack traces; the exit status is the HTTP status mod 256 (429 ->
//! 173, 500 -> 244, 400 -> 144), or 41 (auth), 55 (untrusted folder), 42, 53.
//!
//! `stream-json` prints JSONL: `init` (session id), `message` (user and assistant text,
//! assistant deltas), `tool_use`, `tool_result`, `error`, and a final
//! `{"type":"result","status":"success"|"error","stats":{…}}`.
//!
//! Gemini exits 0 when stopped by SIGTERM, printing nothing: an exit 0 without a result
//! is a failure.

use serde_json::Value;

use super::{
    Parsed, RunFacts, Usage, Verdict, error, error_channel, error_line, json_lines,
    last_json_object, str_at, u64_at,
};

pub(crate) fn parse(facts: &RunFacts<'_>) -> Parsed {
    let events = json_lines(facts.stdout);
    if events.iter().any(|e| str_at(e, "type") == Some("init")) {
        return parse_stream(facts, &events);
    }
    let out = last_json_object(facts.stdout);
    // The error object, on stdout (older versions) or at the end of stderr.
    let err = out
        .as_ref()
        .and_then(|o| o.get("error"))
        .cloned()
        .or_else(|| last_json_object(facts.stderr).and_then(|o| o.get("error").cloned()));
    let session_id = out
        .as_ref()
        .and_then(|o| str_at(o, "session_id"))
        .or(None)
        .map(str::to_string)
        .or_else(|| {
            last_json_object(facts.stderr)
                .and_then(|o| str_at(&o, "session_id").map(str::to_string))
        });
    let usage = out
        .as_ref()
        .and_then(|o| o.get("stats"))
        .map(usage)
        .unwrap_or_default();
    let verdict = match (&err, &out) {
        (Some(e), _) => structured_error(facts, e),
        (None, Some(o)) if o.get("response").is_some() => Verdict::Success,
        _ => by_exit_status(facts).unwrap_or_else(|| Verdict::UnknownWith {
            error_line: error_line(&error_channel(facts.stderr, facts.prompt), ""),
            needs_answer: true,
        }),
    };
    let answer = match (&verdict, &out) {
        (Verdict::Success, Some(o)) => str_at(o, "response").unwrap_or_default().to_string(),
        (Verdict::UnknownWith { .. }, None) if !super::broken_envelope(facts.stdout) => {
            facts.stdout.trim().to_string()
        }
        _ => String::new(),
    };
    Parsed {
        answer,
        verdict,
        usage,
        session_id,
    }
}

fn structured_error(facts: &RunFacts<'_>, e: &Value) -> Verdict {
    let message = str_at(e, "message").unwrap_or("gemini reported an error");
    // The API's own error, when gemini passes its JSON through as the message.
    let message = serde_json::from_str::<Value>(message)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| message.to_string());
    let code = u64_at(e, "code");
    // gemini's own codes for a CLI that cannot work as configured.
    let own = match code {
        Some(41) => Some(super::ErrorClass::Auth),
        Some(55) => Some(super::ErrorClass::Config),
        _ => None,
    };
    if let Some(class) = own {
        let text = super::short(&message);
        let hint = super::hint(facts.kind, &class, &text, None);
        return Verdict::Error {
            message: format!("{text}{hint}"),
            class,
        };
    }
    let status = code
        .filter(|c| (400..600).contains(c))
        .and_then(|c| u16::try_from(c).ok());
    error(facts.kind, &message, status)
}

/// gemini's own exit statuses for a CLI that cannot work as configured:
/// 41 (no usable credentials, e.g. "you must specify the GEMINI_API_KEY
/// environment variable") and 55 (an untrusted folder), with the error line
/// of stderr as the message.
fn by_exit_status(facts: &RunFacts<'_>) -> Option<Verdict> {
    use super::{ErrorClass, ExitKind, hint};
    let class = match facts.exit {
        ExitKind::Code(41) => ErrorClass::Auth,
        ExitKind::Code(55) => ErrorClass::Config,
        _ => return None,
    };
    let line = error_line(&error_channel(facts.stderr, facts.prompt), "")
        .unwrap_or_else(|| "gemini exited with its configuration error status".into());
    let hint = hint(facts.kind, &class, &line, None);
    Some(Verdict::Error {
        message: format!("{line}{hint}"),
        class,
    })
}

fn parse_stream(facts: &RunFacts<'_>, events: &[Value]) -> Parsed {
    let session_id = events
        .iter()
        .find_map(|e| str_at(e, "session_id"))
        .map(str::to_string);
    // The assistant's text after the last user message.
    let last_user = events
        .iter()
        .rposition(|e| str_at(e, "type") == Some("message") && str_at(e, "role") == Some("user"))
        .map_or(0, |i| i + 1);
    let answer: String = events[last_user..]
        .iter()
        .filter(|e| str_at(e, "type") == Some("message") && str_at(e, "role") == Some("assistant"))
        .filter_map(|e| str_at(e, "content"))
        .collect();
    let result = events
        .iter()
        .rev()
        .find(|e| str_at(e, "type") == Some("result"));
    let usage = result
        .and_then(|r| r.get("stats"))
        .map(usage)
        .unwrap_or_default();
    let verdict = match result {
        Some(r) if str_at(r, "status") == Some("success") && r.get("error").is_none() => {
            Verdict::Success
        }
        Some(r) => {
            let e = r
                .get("error")
                .cloned()
                .or_else(|| {
                    events
                        .iter()
                        .rev()
                        .find(|e| str_at(e, "type") == Some("error"))
                        .cloned()
                })
                .or_else(|| last_json_object(facts.stderr).and_then(|o| o.get("error").cloned()))
                .unwrap_or(Value::Null);
            structured_error(facts, &e)
        }
        None => match last_json_object(facts.stderr).and_then(|o| o.get("error").cloned()) {
            Some(e) => structured_error(facts, &e),
            None => by_exit_status(facts).unwrap_or_else(|| Verdict::UnknownWith {
                error_line: error_line(&error_channel(facts.stderr, facts.prompt), &answer),
                needs_answer: true,
            }),
        },
    };
    Parsed::new(answer, verdict, usage, session_id)
}

/// Tool calls that failed, from `--output-format json`'s `stats.tools`
/// (`byName.<tool>.fail`), as a note for the record: gemini refuses a path
/// outside its workspace (a follow-up written to an outbox it may not
/// reach) and carries on, and the run still succeeds.
pub(crate) fn failed_tools(stdout: &str) -> Option<String> {
    let out = last_json_object(stdout)?;
    let tools = out.get("stats")?.get("tools")?;
    let total = u64_at(tools, "totalFail").filter(|n| *n > 0)?;
    let by_name: Vec<String> = tools
        .get("byName")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(name, t)| {
                    let n = u64_at(t, "fail").filter(|n| *n > 0)?;
                    Some(format!("{} x{n}", super::short(name)))
                })
                .take(5)
                .collect()
        })
        .unwrap_or_default();
    Some(format!(
        "gemini reported {total} failed tool call(s){} (a refused path or command, as a rule; \
         its answer and stdout.log say which)",
        if by_name.is_empty() {
            String::new()
        } else {
            format!(": {}", by_name.join(", "))
        }
    ))
}

/// Sums the per-model token counts (`json`: `models.<m>.tokens`, `stream-json`:
/// `models.<m>`); the model named is the one that wrote the most.
fn usage(stats: &Value) -> Usage {
    let Some(models) = stats.get("models").and_then(Value::as_object) else {
        return Usage::default();
    };
    let mut u = Usage::default();
    let mut api_ms: Option<u64> = None;
    let mut best: Option<(u64, &String)> = None;
    let add = |acc: &mut Option<u64>, n: Option<u64>| {
        if let Some(n) = n {
            *acc = Some(acc.unwrap_or(0) + n);
        }
    };
    for (name, m) in models {
        let t = m.get("tokens").unwrap_or(m);
        let output = u64_at(t, "candidates")
            .or_else(|| u64_at(t, "output_tokens"))
            .map(|n| n + u64_at(t, "thoughts").unwrap_or(0));
        add(&mut u.input_tokens, u64_at(t, "input"));
        add(&mut u.output_tokens, output);
        add(&mut u.cache_read_tokens, u64_at(t, "cached"));
        add(
            &mut api_ms,
            m.pointer("/api/totalLatencyMs").and_then(Value::as_u64),
        );
        let out = output.unwrap_or(0);
        if best.is_none_or(|(b, _)| out > b) {
            best = Some((out, name));
        }
    }
    u.api_ms = api_ms;
    u.model = best.map(|(_, n)| n.clone());
    u
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        ANSWER_429, ANSWER_OK, Fixture, fixture, prompt, run, run_stopped,
    };
    use super::super::{Class, ErrorClass, Kind};

    const K: Kind = Kind::Gemini;

    /// gemini 0.61.0's `stats.tools` after a `write_file` it refused
    /// ("Path not in workspace"), from a run against tests/mock_model.py's
    /// `write-outbox` scenario in a task's `workdir:` (answer shortened).
    #[test]
    fn failed_tool_calls_become_a_note() {
        let stdout = r#"{"session_id":"s","response":"MOCK ANSWER: wrote it",
            "stats":{"models":{},"tools":{"totalCalls":1,"totalSuccess":0,"totalFail":1,
            "totalDurationMs":0,"totalDecisions":{"accept":0,"reject":0,"modify":0,
            "auto_accept":0},"byName":{"write_file":{"count":1,"success":0,"fail":1,
            "durationMs":0}}},"files":{"totalLinesAdded":0,"totalLinesRemoved":0}}}"#;
        let note = super::failed_tools(stdout).unwrap();
        assert!(
            note.starts_with("gemini reported 1 failed tool call(s): write_file x1"),
            "{note}"
        );
        let r = run(
            &K,
            &Fixture {
                stdout,
                stderr: "",
                exit: "code 0",
            },
            &prompt("ok"),
        );
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.notes, vec![note]);
        // None failed: no note.
        let ok = fixture!("gemini-0.61.0", "ok");
        assert_eq!(super::failed_tools(ok.stdout), None);
        assert!(run(&K, &ok, &prompt("ok")).notes.is_empty());
    }

    #[test]
    fn ok() {
        let r = run(&K, &fixture!("gemini-0.61.0", "ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        assert!(r.session_id.is_some());
        // Two calls (the router and the main model), 1200 fresh + 300 cached input each.
        assert_eq!(r.usage.input_tokens, Some(2400));
        assert_eq!(r.usage.output_tokens, Some(68));
        assert_eq!(r.usage.cache_read_tokens, Some(600));
        assert!(r.usage.model.is_some());
        assert!(r.usage.api_ms.is_some());
    }

    #[test]
    fn answer_that_mentions_429_is_success() {
        let r = run(&K, &fixture!("gemini-0.61.0", "ok-429"), &prompt("ok-429"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_429);
    }

    #[test]
    fn rate_limit_429() {
        let f = fixture!("gemini-0.61.0", "429");
        assert_eq!(f.exit.trim(), "code 173");
        let r = run(&K, &f, &prompt("429"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Limit { reset: None }));
        assert_eq!(r.answer, "");
        assert!(r.session_id.is_some());
    }

    #[test]
    fn daily_quota() {
        let r = run(
            &K,
            &fixture!("gemini-0.61.0", "usage-limit"),
            &prompt("usage-limit"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Limit { reset: None }));
        assert_eq!(
            r.message.as_deref(),
            Some("gemini: You have exhausted your daily quota on this model.")
        );
    }

    #[test]
    fn server_error_is_transient() {
        let r = run(&K, &fixture!("gemini-0.61.0", "500"), &prompt("500"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
    }

    #[test]
    fn bad_key_is_auth_with_a_fix() {
        let r = run(&K, &fixture!("gemini-0.61.0", "401"), &prompt("401"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
        let m = r.message.unwrap();
        assert!(m.starts_with("gemini: API key not valid."), "{m}");
        assert!(m.contains("fix: set GEMINI_API_KEY"), "{m}");
        let r = run(&K, &fixture!("gemini-0.61.0", "no-auth"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
    }

    #[test]
    fn stopped_run_exits_0_but_is_not_success() {
        let f = fixture!("gemini-0.61.0", "hang");
        assert_eq!(f.exit.trim(), "code 0");
        let r = run_stopped(&K, &f, &prompt("hang"), true);
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Stopped));
        // Start-up notes on stderr ("Ripgrep is not available...") are not a cause.
        assert_eq!(r.cause, None);
        // Not stopped by mailroom: still no result, so not a success.
        let r = run(&K, &f, &prompt("hang"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
    }

    #[test]
    fn prompt_with_leading_dash_as_prompt_value() {
        let r = run(&K, &fixture!("gemini-0.61.0", "dash-v"), &prompt("dash-v"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
    }

    #[test]
    fn untrusted_folder_is_config_with_a_fix() {
        let f = fixture!("gemini-0.61.0", "untrusted");
        assert_eq!(f.exit.trim(), "code 55");
        let r = run(&K, &f, &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Config));
        assert!(r.message.unwrap().contains("fix: add --skip-trust"));
        // The same message in red, as a terminal-less gemini may still print it.
        let red = Fixture {
            stderr: "\x1b[31mGemini CLI is not running in a trusted directory. To proceed, either use `--skip-trust`.\x1b[0m\n",
            ..f
        };
        let r = run(&K, &red, &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Config));
        assert!(!r.message.unwrap().contains('\x1b'));
    }

    #[test]
    fn unknown_flag_is_config() {
        let r = run(&K, &fixture!("gemini-0.61.0", "bad-flag"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Config));
    }

    #[test]
    fn stream_json() {
        let r = run(&K, &fixture!("gemini-0.61.0", "stream-ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        assert_eq!(r.usage.input_tokens, Some(2400));
        assert!(r.session_id.is_some());
        let r = run(&K, &fixture!("gemini-0.61.0", "stream-429"), &prompt("429"));
        assert!(matches!(r.outcome, Class::Failed(ErrorClass::Limit { .. })));
        assert_eq!(r.answer, "");
    }

    #[test]
    fn an_empty_response_is_no_answer() {
        let r = run(&K, &fixture!("gemini-0.61.0", "empty"), &prompt("empty"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
        assert_eq!(r.answer, "");
    }

    #[test]
    fn a_missing_key_is_auth_with_a_fix() {
        let f = fixture!("gemini-0.61.0", "no-key");
        assert_eq!(f.exit.trim(), "code 41");
        let r = run(&K, &f, &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
        let m = r.message.unwrap();
        assert!(m.contains("must specify the GEMINI_API_KEY"), "{m}");
        assert!(m.contains("fix: set GEMINI_API_KEY"), "{m}");
    }

    /// The stream dropped mid-answer: gemini exits 0 and prints the partial
    /// text as `response`, beside an INVALID_STREAM error. Never a success,
    /// and the partial text is no answer; a network fault, so transient.
    #[test]
    fn a_cut_stream_is_transient_and_its_partial_text_no_answer() {
        let f = fixture!("gemini-0.61.0", "cut");
        assert_eq!(f.exit.trim(), "code 0");
        assert!(f.stdout.contains("\"response\": \"MOCK ANSWER: "));
        let r = run(&K, &f, &prompt("cut"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert_eq!(r.answer, "");
        assert_eq!(
            r.message.as_deref(),
            Some("gemini: Model stream ended without a finish reason.")
        );
    }

    /// A 200 whose body is a proxy's HTML page: gemini exits 1 with
    /// "Incomplete JSON segment at the end".
    #[test]
    fn a_response_that_is_not_the_apis_is_transient() {
        let r = run(
            &K,
            &fixture!("gemini-0.61.0", "garbage"),
            &prompt("garbage"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert_eq!(r.answer, "");
        assert!(
            r.message.unwrap().contains("Incomplete JSON segment"),
            "the message names the cause"
        );
    }

    #[test]
    fn overloaded_and_unreachable_are_transient() {
        let f = fixture!("gemini-0.61.0", "overloaded");
        assert_eq!(f.exit.trim(), "code 247"); // 503 mod 256
        let r = run(&K, &f, &prompt("overloaded"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert!(r.message.unwrap().contains("The model is overloaded"));
        let r = run(&K, &fixture!("gemini-0.61.0", "refused"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert!(r.message.unwrap().contains("fetch failed"));
    }
}
