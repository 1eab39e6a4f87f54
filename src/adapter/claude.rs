//! Claude Code (`claude -p`), `--output-format json` or `stream-json`.
//!
//! Both end with one result object:
//! `{"type":"result","subtype":"success","is_error":false,"api_error_status":null,
//!   "result":"<answer>","session_id":"…","total_cost_usd":…,"num_turns":1,
//!   "duration_api_ms":…,"usage":{"input_tokens":…,"cache_read_input_tokens":…,
//!   "cache_creation_input_tokens":…,"output_tokens":…},"modelUsage":{"<model>":{…}}}`
//! (stream-json prints it as the last JSONL event, after `system`, `assistant`, ...).
//!
//! `subtype` says "success" even when `is_error` is true (an API error): `is_error` is
//! what counts, and then `result` holds the error message, not an answer, and
//! `api_error_status` the HTTP status. Claude Code 2.1 exits 1 then; a subscriber's limit
//! reads "You've hit your session limit · resets Jan 1, 2030, 12pm (UTC)", an API rate
//! limit "API Error: Request rejected (429) · …".
//!
//! Without a result object (killed, a bad flag, `--output-format text`), stdout is read
//! as text and stderr's last line (minus prompt echoes) is the error line. Text mode
//! prints API errors on stdout, stderr empty: after a failed exit with nothing on
//! stderr, stdout's last line is the error line and there is no answer.

use serde_json::Value;

use super::{
    ExitKind, Kind, Parsed, RunFacts, Usage, Verdict, error, error_channel, error_line, json_lines,
    last_json_object, str_at, u64_at,
};

pub(crate) fn parse(facts: &RunFacts<'_>) -> Parsed {
    parse_envelope(facts.kind, facts)
}

/// Shared with cursor-agent, whose JSON result has the same shape.
pub(crate) fn parse_envelope(kind: &Kind, facts: &RunFacts<'_>) -> Parsed {
    let events = json_lines(facts.stdout);
    let result = last_json_object(facts.stdout)
        .filter(is_result)
        .or_else(|| events.iter().rev().find(|e| is_result(e)).cloned());
    let session_id = result
        .as_ref()
        .and_then(|r| str_at(r, "session_id"))
        .or_else(|| events.iter().rev().find_map(|e| str_at(e, "session_id")))
        .map(str::to_string);
    let Some(result) = result else {
        // No result: text output, or a run that ended before its result.
        let text_mode = events.is_empty() && !super::broken_envelope(facts.stdout);
        let mut answer = if text_mode {
            facts.stdout.trim().to_string()
        } else if events.is_empty() {
            // A JSON result that was cut (max_output_bytes): no answer.
            String::new()
        } else {
            last_assistant_text(&events)
        };
        let channel = error_channel(facts.stderr, facts.prompt);
        let mut error_line = error_line(&channel, &answer);
        // `--output-format text` prints an API error (a 429, a rejected key,
        // a 500) on stdout and nothing on stderr: after a failed exit, the
        // last line of stdout is the error, and there is no answer.
        if text_mode
            && error_line.is_none()
            && matches!(facts.exit, ExitKind::Code(c) if c != 0)
            && let Some(last) = facts.stdout.lines().map(str::trim).rfind(|l| !l.is_empty())
        {
            error_line = Some(last.to_string());
            answer.clear();
        }
        return Parsed {
            answer,
            verdict: Verdict::UnknownWith {
                error_line,
                needs_answer: true,
            },
            usage: Usage::default(),
            session_id,
        };
    };
    let text = str_at(&result, "result").unwrap_or_default().to_string();
    let is_error = result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || str_at(&result, "subtype").is_some_and(|s| s.starts_with("error"));
    let usage = usage(&result);
    if is_error {
        let status = u64_at(&result, "api_error_status").and_then(|s| u16::try_from(s).ok());
        if text.trim().is_empty() {
            // An error subtype (error_max_turns, error_during_execution)
            // has no `result`; its `errors` say what happened ("Reached
            // maximum number of turns (1)").
            let subtype = str_at(&result, "subtype").unwrap_or("error");
            let errors: Vec<&str> = result
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let ended = format!("the run ended with {subtype}");
            let text = if errors.is_empty() {
                ended.clone()
            } else {
                format!("{ended}: {}", errors.join("; "))
            };
            // A turn limit is the task's, whatever its errors quote ("Reached
            // maximum number of turns (429)" is no rate limit); the errors of
            // another subtype (error_during_execution) may be the API's own.
            let class = super::classify(
                if subtype == "error_max_turns" {
                    &ended
                } else {
                    &text
                },
                status,
            );
            let text = super::short(&text);
            let hint = super::hint(kind, &class, &text, status);
            let verdict = Verdict::Error {
                class,
                message: format!("{text}{hint}"),
            };
            return Parsed {
                answer: String::new(),
                verdict,
                usage,
                session_id,
            };
        }
        return Parsed {
            answer: String::new(),
            verdict: error(kind, &text, status),
            usage,
            session_id,
        };
    }
    Parsed {
        answer: text,
        verdict: Verdict::Success,
        usage,
        session_id,
    }
}

fn is_result(v: &Value) -> bool {
    str_at(v, "type") == Some("result")
}

/// The text of the last assistant message in a stream (what a stopped run had said).
fn last_assistant_text(events: &[Value]) -> String {
    events
        .iter()
        .rev()
        .filter(|e| str_at(e, "type") == Some("assistant"))
        .find_map(|e| {
            let content = e.pointer("/message/content")?.as_array()?;
            let text: Vec<&str> = content
                .iter()
                .filter(|c| str_at(c, "type") == Some("text"))
                .filter_map(|c| str_at(c, "text"))
                .collect();
            (!text.is_empty()).then(|| text.join(""))
        })
        .unwrap_or_default()
}

/// The tool calls claude was not allowed to make (`permission_denials` of
/// its result), as a note for the record: an agent under `acceptEdits`
/// that tried `mailroom add`, say, queued nothing, and its run still
/// succeeds.
pub(crate) fn denials(stdout: &str) -> Option<String> {
    let result = last_json_object(stdout).filter(is_result)?;
    let list = result.get("permission_denials")?.as_array()?;
    if list.is_empty() {
        return None;
    }
    let calls: Vec<String> = list
        .iter()
        .take(5)
        .map(|d| {
            let tool = str_at(d, "tool_name").unwrap_or("a tool");
            let input = d.get("tool_input").map(|i| {
                str_at(i, "command")
                    .or_else(|| str_at(i, "file_path"))
                    .map(str::to_owned)
                    .unwrap_or_else(|| i.to_string())
            });
            match input {
                Some(i) => format!(
                    "{tool} `{}`",
                    super::short(&i).chars().take(80).collect::<String>()
                ),
                None => tool.to_owned(),
            }
        })
        .collect();
    Some(format!(
        "the CLI was denied {} tool call(s): {}{} (allow them in the agent's command, e.g. \
         --allowedTools, if the task needs them)",
        list.len(),
        calls.join(", "),
        if list.len() > 5 { ", ..." } else { "" }
    ))
}

fn usage(result: &Value) -> Usage {
    let u = result.get("usage");
    let tok = |key: &str| u.and_then(|u| u64_at(u, key));
    // The model that did most of the work (claude also calls a small model on the side).
    let model = result
        .get("modelUsage")
        .and_then(Value::as_object)
        .and_then(|models| {
            models
                .iter()
                .max_by_key(|(_, m)| u64_at(m, "outputTokens").unwrap_or(0))
                .map(|(name, _)| name.clone())
        });
    // After a fall back from streaming to a plain request, claude 2.1's
    // top-level `usage` is all zeros while `modelUsage` (per model) holds
    // what was used: then the sums over the models count, or budgets in
    // tokens would not see the run.
    let per_model = |key: &str| -> Option<u64> {
        let models = result.get("modelUsage")?.as_object()?;
        let sum: u64 = models.values().filter_map(|m| u64_at(m, key)).sum();
        (sum > 0).then_some(sum)
    };
    let top_empty = tok("input_tokens").unwrap_or(0) == 0 && tok("output_tokens").unwrap_or(0) == 0;
    let pick = |top: &str, model_key: &str| {
        if top_empty {
            per_model(model_key).or_else(|| tok(top))
        } else {
            tok(top)
        }
    };
    Usage {
        input_tokens: pick("input_tokens", "inputTokens"),
        output_tokens: pick("output_tokens", "outputTokens"),
        cache_read_tokens: pick("cache_read_input_tokens", "cacheReadInputTokens"),
        cache_write_tokens: pick("cache_creation_input_tokens", "cacheCreationInputTokens"),
        cost_usd: result.get("total_cost_usd").and_then(Value::as_f64),
        model,
        turns: u64_at(result, "num_turns").and_then(|n| u32::try_from(n).ok()),
        api_ms: u64_at(result, "duration_api_ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ANSWER_429, ANSWER_OK, fixture, prompt, run, run_stopped};
    use super::super::{Class, ErrorClass, Kind, Reset, Usage};

    const K: Kind = Kind::Claude;

    #[test]
    fn permission_denials_become_a_note() {
        let out = serde_json::json!({
            "type": "result", "subtype": "success", "is_error": false, "result": "done",
            "permission_denials": [
                {"tool_name": "Bash", "tool_use_id": "t1", "tool_input": {"command": "mailroom add \"next step\""}}
            ]
        })
        .to_string();
        let n = super::denials(&out).unwrap();
        assert!(
            n.contains("denied 1 tool call(s): Bash `mailroom add \"next step\"`"),
            "{n}"
        );
        let none = serde_json::json!({"type": "result", "result": "x", "permission_denials": []});
        assert_eq!(super::denials(&none.to_string()), None);
    }

    /// claude 2.1 after falling back from streaming: top-level `usage` all
    /// zeros, `modelUsage` with what was used. The models' sums count.
    #[test]
    fn usage_falls_back_to_the_sums_per_model() {
        let r: serde_json::Value = serde_json::json!({
            "type": "result", "subtype": "success", "is_error": false, "result": "ok",
            "total_cost_usd": 0.0073,
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0},
            "modelUsage": {
                "claude-sonnet": {"inputTokens": 900, "outputTokens": 120, "cacheReadInputTokens": 50},
                "claude-haiku": {"inputTokens": 100, "outputTokens": 5}
            }
        });
        let u = super::usage(&r);
        assert_eq!(u.input_tokens, Some(1000));
        assert_eq!(u.output_tokens, Some(125));
        assert_eq!(u.cache_read_tokens, Some(50));
        assert_eq!(u.model.as_deref(), Some("claude-sonnet"));
        // A top-level count, when there is one, is what counts.
        let r = serde_json::json!({"usage": {"input_tokens": 7, "output_tokens": 3},
            "modelUsage": {"m": {"inputTokens": 900, "outputTokens": 120}}});
        assert_eq!(super::usage(&r).input_tokens, Some(7));
    }

    fn ok_usage() -> Usage {
        Usage {
            input_tokens: Some(1200),
            output_tokens: Some(34),
            cache_read_tokens: Some(300),
            cache_write_tokens: Some(50),
            cost_usd: Some(0.0073125),
            model: Some("claude-opus-4-8[1m]".into()),
            turns: Some(1),
            api_ms: None,
        }
    }

    #[test]
    fn ok() {
        let r = run(&K, &fixture!("claude-2.1.197", "ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        assert_eq!(r.error_class, None);
        assert_eq!(
            r.session_id.as_deref(),
            Some("4351a8fe-6cde-4f28-a2f9-150b60baaa1d")
        );
        assert_eq!(
            Usage {
                api_ms: None,
                ..r.usage
            },
            ok_usage()
        );
    }

    #[test]
    fn answer_that_mentions_429_is_success() {
        let r = run(&K, &fixture!("claude-2.1.197", "ok-429"), &prompt("ok-429"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_429);
        assert!(r.message.is_none());
    }

    #[test]
    fn rate_limit_429() {
        let r = run(&K, &fixture!("claude-2.1.197", "429"), &prompt("429"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Limit { reset: None }));
        assert_eq!(r.answer, "");
        let m = r.message.unwrap();
        assert!(
            m.starts_with("claude: API Error: Request rejected (429)"),
            "{m}"
        );
        assert!(r.session_id.is_some());
    }

    #[test]
    fn subscriber_usage_limit_with_reset() {
        let r = run(
            &K,
            &fixture!("claude-2.1.197", "usage-limit"),
            &prompt("usage-limit"),
        );
        assert_eq!(
            r.error_class,
            Some(ErrorClass::Limit {
                reset: Some(Reset::Text("Jan 1, 2030, 12pm (UTC)".into()))
            })
        );
        assert_eq!(
            r.message.as_deref(),
            Some("claude: You've hit your session limit · resets Jan 1, 2030, 12pm (UTC)")
        );
    }

    #[test]
    fn server_error_is_transient() {
        let r = run(&K, &fixture!("claude-2.1.197", "500"), &prompt("500"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert_eq!(r.usage.input_tokens, Some(0));
    }

    #[test]
    fn bad_key_is_auth_with_a_fix() {
        let r = run(&K, &fixture!("claude-2.1.197", "401"), &prompt("401"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
        let m = r.message.unwrap();
        assert!(m.contains("Invalid API key"), "{m}");
        assert!(m.contains("fix: set ANTHROPIC_API_KEY"), "{m}");
    }

    /// `--output-format text`: the answer is stdout; an API error is stdout
    /// too (stderr is empty), which after a failed exit is the error line,
    /// classified like the JSON mode's, and never an answer.
    #[test]
    fn text_mode_reads_api_errors_from_stdout_after_a_failed_exit() {
        let r = run(&K, &fixture!("claude-2.1.197", "text-ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        let r = run(
            &K,
            &fixture!("claude-2.1.197", "text-ok-429"),
            &prompt("ok-429"),
        );
        assert_eq!(r.outcome, Class::Success, "{:?}", r.message);
        assert_eq!(r.answer, ANSWER_429);
        let r = run(&K, &fixture!("claude-2.1.197", "text-429"), &prompt("429"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Limit { reset: None }));
        assert_eq!(r.answer, "");
        assert!(
            r.message
                .as_deref()
                .unwrap()
                .contains("API Error: Request rejected (429)"),
            "{:?}",
            r.message
        );
        let r = run(&K, &fixture!("claude-2.1.197", "text-401"), &prompt("401"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
        assert_eq!(r.answer, "");
        assert!(r.message.as_deref().unwrap().contains("Invalid API key"));
        let r = run(&K, &fixture!("claude-2.1.197", "text-500"), &prompt("500"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert_eq!(r.answer, "");
    }

    #[test]
    fn stopped_run_is_never_success() {
        let f = fixture!("claude-2.1.197", "hang");
        let r = run_stopped(&K, &f, &prompt("hang"), true);
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Stopped));
        // Even had it exited 0.
        let f0 = super::super::testing::Fixture {
            exit: "code 0",
            ..f
        };
        let r = run_stopped(&K, &f0, &prompt("hang"), true);
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Stopped));
        // Killed by someone else: no result printed, so not a success either.
        let r = run(&K, &f0, &prompt("hang"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
    }

    #[test]
    fn prompt_with_leading_dash_after_double_dash() {
        let r = run(&K, &fixture!("claude-2.1.197", "dash-v"), &prompt("dash-v"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
    }

    #[test]
    fn unknown_flag_is_config() {
        let r = run(&K, &fixture!("claude-2.1.197", "bad-flag"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Config));
        let m = r.message.unwrap();
        assert!(m.contains("unknown option '--no-such-flag'"), "{m}");
    }

    #[test]
    fn stream_json() {
        let r = run(&K, &fixture!("claude-2.1.197", "stream-ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        assert_eq!(r.usage.output_tokens, Some(34));
        assert!(r.session_id.is_some());
        let r = run(
            &K,
            &fixture!("claude-2.1.197", "stream-429"),
            &prompt("429"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Limit { reset: None }));
        assert_eq!(r.answer, "");
    }

    #[test]
    fn structured_error_with_exit_0_is_a_failure() {
        let mut f = fixture!("claude-2.1.197", "500");
        f.exit = "code 0";
        let r = run(&K, &f, &prompt("500"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
    }

    #[test]
    fn limit_words_in_stderr_do_not_touch_a_success() {
        let f = fixture!("claude-2.1.197", "ok");
        let f = super::super::testing::Fixture {
            stderr: "API Error: Rate limit reached\nYou've hit your limit · resets 1pm\n",
            ..f
        };
        let r = run(&K, &f, &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
    }

    #[test]
    fn an_empty_result_is_no_answer() {
        let r = run(&K, &fixture!("claude-2.1.197", "empty"), &prompt("empty"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
        assert_eq!(r.answer, "");
        assert!(r.message.unwrap().contains("empty result"));
    }

    #[test]
    fn an_unreachable_api_is_transient() {
        let r = run(&K, &fixture!("claude-2.1.197", "refused"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert!(r.message.unwrap().contains("Unable to connect"));
    }

    /// The stream dropped mid-answer (json and stream-json): claude says
    /// "Connection to the API was lost (ECONNRESET)", exit 1.
    #[test]
    fn a_cut_stream_is_transient() {
        for f in [
            fixture!("claude-2.1.197", "cut"),
            fixture!("claude-2.1.197", "stream-cut"),
        ] {
            let r = run(&K, &f, &prompt("cut"));
            assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
            assert_eq!(r.answer, "");
            assert!(
                r.message
                    .unwrap()
                    .contains("Connection to the API was lost")
            );
        }
    }

    /// A 200 whose body is a proxy's HTML page: "API returned an empty or
    /// malformed response (HTTP 200)". A fault on the way to the API, not
    /// of the task: transient (it was filed as a failure of the task).
    #[test]
    fn a_response_that_is_not_the_apis_is_transient() {
        let r = run(
            &K,
            &fixture!("claude-2.1.197", "garbage"),
            &prompt("garbage"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert!(r.message.unwrap().contains("malformed response (HTTP 200)"));
    }

    /// `--max-turns 1` and a model that calls a tool: `subtype:
    /// "error_max_turns"`, no `result`, exit 1; the message says why from
    /// the result's `errors`.
    #[test]
    fn max_turns_says_why() {
        let r = run(
            &K,
            &fixture!("claude-2.1.197", "max-turns"),
            &prompt("max-turns"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
        assert_eq!(r.answer, "");
        let m = r.message.unwrap();
        assert!(
            m.contains("error_max_turns: Reached maximum number of turns (1)"),
            "{m}"
        );
    }

    /// What the `errors` of a turn limit say describes it and never classes
    /// it: a run of 429 turns is no rate limit, nor one of 500 a server
    /// error. A fix, when there is one, comes last.
    #[test]
    fn the_errors_of_an_error_subtype_do_not_class_it() {
        let f = fixture!("claude-2.1.197", "max-turns");
        for n in ["429", "500", "403"] {
            let stdout = f.stdout.replace(
                "Reached maximum number of turns (1)",
                &format!("Reached maximum number of turns ({n}); 503 rate limit"),
            );
            assert_ne!(stdout.as_str(), f.stdout);
            let g = crate::adapter::testing::Fixture {
                stdout: stdout.leak(),
                ..f
            };
            let r = run(&K, &g, &prompt("max-turns"));
            assert_eq!(r.outcome, Class::Failed(ErrorClass::Task), "{n}: {r:?}");
            assert!(r.message.unwrap().contains(&format!("turns ({n})")));
        }
        let stdout = f
            .stdout
            .replace("error_max_turns", "error_during_execution")
            .replacen(
                "\"is_error\":true",
                "\"is_error\":true,\"api_error_status\":401",
                1,
            );
        assert!(stdout.contains("api_error_status\":401"), "{stdout}");
        let g = crate::adapter::testing::Fixture {
            stdout: stdout.leak(),
            ..f
        };
        let r = run(&K, &g, &prompt("max-turns"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth), "{r:?}");
        let m = r.message.unwrap();
        assert!(
            m.contains("error_during_execution: Reached maximum number of turns (1) (fix: set ANTHROPIC_API_KEY"),
            "{m}"
        );
        assert!(m.ends_with(')'), "{m}");
    }

    /// A stream whose events are not JSON: "API Error: Failed to parse
    /// JSON", a fault on the way to the API (transient, as codex's and
    /// gemini's words for the same stream are).
    #[test]
    fn a_stream_that_is_not_json_is_transient() {
        let r = run(
            &K,
            &fixture!("claude-2.1.197", "bad-sse"),
            &prompt("bad-sse"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert!(r.message.unwrap().contains("Failed to parse JSON"));
    }

    /// A 403 (the key may not use the resource) is auth, not a limit; a
    /// reply stopped at the output-token maximum is the task's failure,
    /// with no answer.
    #[test]
    fn forbidden_is_auth_and_max_tokens_is_no_answer() {
        let r = run(&K, &fixture!("claude-2.1.197", "403"), &prompt("403"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
        // The fix is the model or the key's access, not another key.
        let m = r.message.unwrap();
        assert!(
            m.contains("fix: the key was accepted but may not use"),
            "{m}"
        );
        assert!(!m.contains("ANTHROPIC_API_KEY"), "{m}");
        let r = run(
            &K,
            &fixture!("claude-2.1.197", "max-tokens"),
            &prompt("max-tokens"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
        assert_eq!(r.answer, "");
        assert!(r.message.unwrap().contains("output token maximum"));
    }

    #[test]
    fn overloaded_is_transient() {
        let r = run(
            &K,
            &fixture!("claude-2.1.197", "overloaded"),
            &prompt("overloaded"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert!(r.message.unwrap().contains("529 Overloaded"));
    }
}
