//! Codex CLI (`codex exec`).
//!
//! With `--json`, stdout is a JSONL event stream:
//! `{"type":"thread.started","thread_id":"…"}`, `{"type":"turn.started"}`,
//! `{"type":"item.completed","item":{"type":"agent_message","text":"<answer>"}}`,
//! `{"type":"turn.completed","usage":{"input_tokens":…,"cached_input_tokens":…,
//!   "cache_write_input_tokens":…,"output_tokens":…}}`, and on failure
//! `{"type":"error","message":"…"}` notices (retries: "Reconnecting... 1/5 (…)") and a
//! final `{"type":"turn.failed","error":{"message":"…"}}`. An `item.completed` whose item
//! has `"type":"error"` is a warning, not a failure.
//!
//! Without `--json`, stdout holds only the final message and stderr a human-readable log:
//! a header (`model: …`, `session id: …`), the prompt echoed after a `user` line, the
//! answer again after a `codex` line, and errors as `ERROR: …` lines. Only those `ERROR:`
//! lines (minus echoes of the prompt and of the answer) are the error channel.
//!
//! Codex exits 1 on API errors (a ChatGPT plan's limit: "You've hit your usage limit. …
//! try again at Jan 1st, 2030 12:00 PM."), 2 on a bad flag, and dies of the signal when
//! stopped.

use serde_json::Value;

use super::{
    Kind, Parsed, RunFacts, Usage, Verdict, error, error_channel, error_line, json_lines, str_at,
    u64_at,
};

pub(crate) fn parse(facts: &RunFacts<'_>) -> Parsed {
    let events = json_lines(facts.stdout);
    let is_stream = events.iter().any(|e| {
        str_at(e, "type").is_some_and(|t| t.starts_with("thread.") || t.starts_with("turn."))
    });
    if is_stream {
        parse_events(facts, &events)
    } else {
        parse_text(facts)
    }
}

fn parse_events(facts: &RunFacts<'_>, events: &[Value]) -> Parsed {
    let kind: &Kind = facts.kind;
    let session_id = events
        .iter()
        .find_map(|e| str_at(e, "thread_id"))
        .map(str::to_string);
    let answer = events
        .iter()
        .rev()
        .filter(|e| str_at(e, "type") == Some("item.completed"))
        .filter_map(|e| e.get("item"))
        .find(|i| str_at(i, "type") == Some("agent_message"))
        .and_then(|i| str_at(i, "text"))
        .unwrap_or_default()
        .to_string();
    let mut usage = Usage::default();
    let mut turns = 0u32;
    for u in events
        .iter()
        .filter(|e| str_at(e, "type") == Some("turn.completed"))
        .filter_map(|e| e.get("usage"))
    {
        turns += 1;
        let cached = u64_at(u, "cached_input_tokens").unwrap_or(0);
        let add = |acc: &mut Option<u64>, n: Option<u64>| {
            if let Some(n) = n {
                *acc = Some(acc.unwrap_or(0) + n);
            }
        };
        add(
            &mut usage.input_tokens,
            u64_at(u, "input_tokens").map(|n| n.saturating_sub(cached)),
        );
        add(
            &mut usage.cache_read_tokens,
            u64_at(u, "cached_input_tokens"),
        );
        add(
            &mut usage.cache_write_tokens,
            u64_at(u, "cache_write_input_tokens"),
        );
        add(&mut usage.output_tokens, u64_at(u, "output_tokens"));
    }
    if turns > 0 {
        usage.turns = Some(turns);
    }
    let failed = events
        .iter()
        .rev()
        .find(|e| str_at(e, "type") == Some("turn.failed"))
        .map(|e| {
            e.pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("the turn failed")
                .to_string()
        });
    let verdict = if let Some(message) = failed {
        error(kind, &message, None)
    } else if events
        .iter()
        .any(|e| str_at(e, "type") == Some("turn.completed"))
    {
        Verdict::Success
    } else {
        // Ended before the turn did: the last error notice, else stderr's error line.
        let last_notice = events
            .iter()
            .rev()
            .find(|e| str_at(e, "type") == Some("error"))
            .and_then(|e| str_at(e, "message"))
            .map(str::to_string);
        Verdict::UnknownWith {
            error_line: last_notice
                .or_else(|| error_line(&error_channel(facts.stderr, facts.prompt), &answer)),
            needs_answer: true,
        }
    };
    Parsed::new(answer, verdict, usage, session_id)
}

fn parse_text(facts: &RunFacts<'_>) -> Parsed {
    let answer = facts.stdout.trim().to_string();
    let channel = error_channel(facts.stderr, facts.prompt);
    let header = |key: &str| {
        channel
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let usage = Usage {
        model: header("model: "),
        ..Usage::default()
    };
    let session_id = header("session id: ");
    // Only codex's own ERROR: lines, and not a line of the answer (codex prints the answer
    // on stderr too).
    let answer_lines: std::collections::HashSet<&str> = answer.lines().map(str::trim).collect();
    let last_error = channel
        .lines()
        .map(str::trim)
        .filter(|l| !answer_lines.contains(l))
        .filter_map(|l| {
            l.strip_prefix("ERROR: ")
                .or_else(|| l.strip_prefix("ERROR:"))
        })
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("Reconnecting..."))
        .map(str::to_string);
    let verdict = match (facts.exit, last_error) {
        (super::ExitKind::Code(c), Some(line)) if c != 0 => error(facts.kind, &line, None),
        (_, _) => Verdict::UnknownWith {
            error_line: error_line(&channel, &answer),
            needs_answer: true,
        },
    };
    Parsed {
        answer,
        verdict,
        usage,
        session_id,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        ANSWER_429, ANSWER_OK, Fixture, fixture, prompt, run, run_stopped,
    };
    use super::super::{Class, ErrorClass, Kind, Reset, Usage};

    const K: Kind = Kind::Codex;

    fn ok_usage() -> Usage {
        Usage {
            input_tokens: Some(1200),
            output_tokens: Some(34),
            cache_read_tokens: Some(300),
            cache_write_tokens: Some(0),
            turns: Some(1),
            ..Usage::default()
        }
    }

    #[test]
    fn ok() {
        let r = run(&K, &fixture!("codex-0.171.0", "ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        assert_eq!(r.usage, ok_usage());
        assert_eq!(
            r.session_id.as_deref(),
            Some("01a2324c-63b0-7562-bc06-0f3a13115298")
        );
    }

    #[test]
    fn answer_that_mentions_429_is_success() {
        let r = run(&K, &fixture!("codex-0.171.0", "ok-429"), &prompt("ok-429"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_429);
        let r = run(
            &K,
            &fixture!("codex-0.171.0", "text-ok-429"),
            &prompt("ok-429"),
        );
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_429);
    }

    #[test]
    fn prompt_echo_on_stderr_is_not_an_error() {
        // codex's human-readable stderr echoes the prompt (which talks about 429s) and the
        // answer; neither may count. Even a failed run is classified by its ERROR: line.
        let f = fixture!("codex-0.171.0", "text-ok-429");
        assert!(f.stderr.contains("429 Too Many Requests"));
        let failed = Fixture {
            exit: "code 1",
            stderr: "user\nMOCK:ok-429 Our log says '429 Too Many Requests' and 'rate limit reached'. Explain in one sentence.\nERROR: stream disconnected before completion\n",
            stdout: "",
        };
        let r = run(&K, &failed, &prompt("ok-429"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        // An echoed prompt with an ERROR: line of its own is still the prompt.
        let sneaky = "fix this\nERROR: exceeded retry limit, last status: 429 Too Many Requests";
        let f = Fixture {
            exit: "code 1",
            stderr: "user\nfix this\nERROR: exceeded retry limit, last status: 429 Too Many Requests\nERROR: boom\n",
            stdout: "",
        };
        let r = run(&K, &f, sneaky);
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
    }

    #[test]
    fn rate_limit_429() {
        for mode in ["429", "text-429"] {
            let f = match mode {
                "429" => fixture!("codex-0.171.0", "429"),
                _ => fixture!("codex-0.171.0", "text-429"),
            };
            let r = run(&K, &f, &prompt("429"));
            assert_eq!(
                r.outcome,
                Class::Failed(ErrorClass::Limit { reset: None }),
                "{mode}"
            );
            let m = r.message.unwrap();
            assert!(m.contains("exceeded retry limit, last status: 429"), "{m}");
            assert!(r.session_id.is_some(), "{mode}");
        }
    }

    #[test]
    fn plan_usage_limit_with_reset() {
        let r = run(
            &K,
            &fixture!("codex-0.171.0", "usage-limit"),
            &prompt("usage-limit"),
        );
        assert_eq!(
            r.error_class,
            Some(ErrorClass::Limit {
                reset: Some(Reset::Text("Jan 1st, 2030 12:00 PM".into()))
            })
        );
        let r = run(
            &K,
            &fixture!("codex-0.171.0", "text-usage-limit"),
            &prompt("usage-limit"),
        );
        assert_eq!(
            r.error_class,
            Some(ErrorClass::Limit {
                reset: Some(Reset::Text("Jan 1st, 2030 12:00 PM".into()))
            })
        );
    }

    #[test]
    fn server_error_is_transient() {
        let r = run(&K, &fixture!("codex-0.171.0", "500"), &prompt("500"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        let r = run(&K, &fixture!("codex-0.171.0", "text-500"), &prompt("500"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
    }

    #[test]
    fn bad_key_is_auth_with_a_fix() {
        for f in [
            fixture!("codex-0.171.0", "401"),
            fixture!("codex-0.171.0", "text-401"),
        ] {
            let r = run(&K, &f, &prompt("401"));
            assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
            let m = r.message.unwrap();
            assert!(m.contains("401 Unauthorized"), "{m}");
            assert!(m.contains("fix: set CODEX_API_KEY"), "{m}");
        }
    }

    #[test]
    fn stopped_run_keeps_its_session() {
        let r = run_stopped(
            &K,
            &fixture!("codex-0.171.0", "hang"),
            &prompt("hang"),
            true,
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Stopped));
        assert!(r.session_id.is_some());
        // Its stderr's "Reading additional input from stdin..." is chatter,
        // not the cause of anything.
        assert_eq!(r.cause, None);
        let r = run_stopped(
            &K,
            &fixture!("codex-0.171.0", "text-hang"),
            &prompt("hang"),
            true,
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Stopped));
        assert!(r.session_id.is_some());
    }

    #[test]
    fn prompt_with_leading_dash_after_double_dash() {
        let r = run(&K, &fixture!("codex-0.171.0", "dash-v"), &prompt("dash-v"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
    }

    #[test]
    fn config_errors_say_how_to_fix() {
        let r = run(&K, &fixture!("codex-0.171.0", "no-git"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Config));
        let m = r.message.unwrap();
        assert!(m.contains("fix: add --skip-git-repo-check"), "{m}");
        let r = run(&K, &fixture!("codex-0.171.0", "bad-flag"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Config));
        let m = r.message.unwrap();
        assert!(m.contains("unexpected argument '--no-such-flag'"), "{m}");
    }

    #[test]
    fn text_mode_ok() {
        let r = run(&K, &fixture!("codex-0.171.0", "text-ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        assert_eq!(r.usage.model.as_deref(), Some("gpt-6.2-sol"));
        assert!(r.session_id.is_some());
    }

    #[test]
    fn an_empty_result_is_no_answer() {
        let r = run(&K, &fixture!("codex-0.171.0", "empty"), &prompt("empty"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
        assert_eq!(r.answer, "");
    }

    #[test]
    fn a_missing_provider_key_is_auth_with_a_fix() {
        let r = run(&K, &fixture!("codex-0.171.0", "no-key"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
        let m = r.message.unwrap();
        assert!(m.contains("Missing environment variable"), "{m}");
        assert!(m.contains("fix: set CODEX_API_KEY"), "{m}");
    }

    #[test]
    fn a_run_stopped_while_reconnecting_names_the_reconnect() {
        // codex keeps reconnecting to an address where nothing listens; the
        // run ends at its timeout, and the record should say why.
        let r = run_stopped(
            &K,
            &fixture!("codex-0.171.0", "refused-hang"),
            &prompt("ok"),
            true,
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Stopped));
        let cause = r.cause.unwrap();
        assert!(
            cause.contains("Reconnecting... waiting for network (Connection failed"),
            "{cause}"
        );
    }

    /// A 503 server_is_overloaded: codex does not retry it and says
    /// "Selected model is at capacity. Please try a different model." An
    /// overload, so transient (it was filed as a failure of the task).
    #[test]
    fn an_overloaded_provider_is_transient() {
        let r = run(
            &K,
            &fixture!("codex-0.171.0", "overloaded"),
            &prompt("overloaded"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert!(r.message.unwrap().contains("at capacity"));
    }

    /// The stream dropped mid-answer, or a 200 that is no event stream:
    /// codex retries, then fails the turn with "stream disconnected".
    #[test]
    fn a_cut_or_foreign_stream_is_transient() {
        for (mode, f) in [
            ("cut", fixture!("codex-0.171.0", "cut")),
            ("garbage", fixture!("codex-0.171.0", "garbage")),
        ] {
            let r = run(&K, &f, &prompt(mode));
            assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient), "{mode}");
            assert_eq!(r.answer, "", "{mode}");
            let m = r.message.unwrap();
            assert!(
                m.contains("stream disconnected before completion"),
                "{mode}: {m}"
            );
        }
    }
}
