//! aider (`aider --message=… --no-pretty`), plain text.
//!
//! aider exits 0 when every call to the model failed (a bad key, a 500, a rate limit), so
//! its text decides. stdout holds a banner (`Aider v…`, `Model: …`, `Git repo: …`,
//! `Repo-map: …`), then the model's reply followed by a `Tokens: … sent, … received.`
//! line (with `Cost: …` when known). A failed call prints litellm's exception instead,
//! as a line starting `litellm.<Name>Error: …` (wrapped at the terminal width), a line
//! of advice ("The API provider has rate limited you. …"), and `Retrying in N seconds...`
//! while aider retries.
//!
//! The reply is the text between the banner and the last `Tokens:` line. A run whose
//! last model call produced a reply (a `Tokens:` line, and no litellm error after it) is a
//! success, whatever else the reply says; otherwise the last litellm error line (outside
//! the reply, and not a line of the prompt) is the error, classified by its exception
//! name. stderr carries argument errors (`aider: error: unrecognized arguments: …`).

use std::sync::LazyLock;

use regex::Regex;

use super::{
    ErrorClass, Parsed, RunFacts, Usage, Verdict, classify, error_channel, error_line, hint, reset,
    short,
};

static TOKENS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^Tokens: ([\d.,]+k?) sent(?:, ([\d.,]+k?) cache write)?(?:, ([\d.,]+k?) cache hit)?, ([\d.,]+k?) received\.(?: Cost: \$([\d.]+) message)?")
        .expect("tokens pattern compiles")
});
static LITELLM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:litellm\.)?([A-Z]\w*(?:Error|Exception|Exceeded|Timeout)): ")
        .expect("litellm pattern compiles")
});
/// litellm's exception printed after a reply cut mid-stream, on the same
/// line as its last words ("Partial answer that was litellm.RateLimitError:
/// ..."): only with its `litellm.` prefix, so an answer that quotes a
/// Python error is not taken for one.
static LITELLM_GLUED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"litellm\.([A-Z]\w*(?:Error|Exception|Exceeded|Timeout)): ")
        .expect("litellm pattern compiles")
});
/// aider's note when the model's reply was empty.
static EMPTY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^Empty response received from LLM").expect("empty pattern compiles")
});
/// aider's report of a reply the model stopped at its token limit
/// (finish_reason "length"): "Model openai/x has hit a token limit!", then
/// its token counts ("Output tokens: ~18 of 0 -- possibly exceeded output
/// limit!") and advice; no `Tokens:` line, exit 0.
static TOKEN_LIMIT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^Model .+ has hit a token limit!$").expect("token limit pattern compiles")
});
static BANNER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:Aider v\d|Model: |Main model: |Weak model: |Editor model: |Git repo: |Repo-map: |",
        r"Added .* to the chat|Analytics have been|Detected dumb terminal|https://aider\.chat/|",
        r"Use /help|Warning: |Cur working dir: |Git working dir: |HTTPSConnectionPool\()"
    ))
    .expect("banner pattern compiles")
});

/// A 400's words that blame the setup, not the task.
static BAD_SETUP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\bmodel\b|unsupported|not supported|unknown (?:parameter|argument)|unrecognized|api[ _-]?key|does not exist",
    )
    .expect("pattern compiles")
});

pub(crate) fn parse(facts: &RunFacts<'_>) -> Parsed {
    let lines: Vec<&str> = facts.stdout.lines().collect();
    let tokens_at = lines.iter().rposition(|l| TOKENS.is_match(l.trim()));
    let prompt_lines: std::collections::HashSet<&str> = facts
        .prompt
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The last exception line after the last reply (a reply's own text is not looked at).
    let errors_from = tokens_at.map_or(0, |t| t + 1);
    let error_at = (errors_from..lines.len())
        .rev()
        .find(|&i| LITELLM.is_match(lines[i].trim()) && !prompt_lines.contains(lines[i].trim()))
        .map(|i| (i, 0))
        .or_else(|| {
            // No reply after it (no `Tokens:` line): an exception glued to
            // the last words of a cut reply.
            tokens_at.is_none().then_some(())?;
            (0..lines.len()).rev().find_map(|i| {
                let m = LITELLM_GLUED.find(lines[i])?;
                (!prompt_lines.contains(lines[i].trim())).then_some((i, m.start()))
            })
        });

    let (answer, usage) = match tokens_at {
        Some(t) => {
            // The reply starts after the banner (from its `Aider v` line,
            // with what aider prints before it) and the banner's lines
            // that follow one another. A line of the reply that starts as
            // a banner line does (`Warning: `, `Model: `) is the reply's.
            let from = lines[..t]
                .iter()
                .rposition(|l| l.trim_start().starts_with("Aider v"))
                .unwrap_or(0);
            let start = (from..t)
                .find(|&i| {
                    let l = lines[i].trim();
                    !l.is_empty() && !BANNER.is_match(l)
                })
                .unwrap_or(t);
            (
                lines[start..t].join("\n").trim().to_string(),
                usage(lines[t].trim()),
            )
        }
        None => (String::new(), Usage::default()),
    };
    // aider's note of an empty reply comes last, right before the `Tokens:`
    // line, after whatever else it printed first (the pages it scraped for
    // URLs in the prompt, say): that note is no answer either.
    let empty_reply = tokens_at.is_some()
        && usage.output_tokens == Some(0)
        && answer
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .is_none_or(|l| EMPTY.is_match(l));
    // The model stopped at its token limit after the last reply: the
    // report's line and the counts it says were exhausted.
    let token_limit = (errors_from..lines.len())
        .find(|&i| TOKEN_LIMIT.is_match(lines[i].trim()) && !prompt_lines.contains(lines[i].trim()))
        .map(|i| {
            let counts = lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .take_while(|l| !l.starts_with("To reduce"))
                .filter(|l| l.contains("possibly"));
            std::iter::once(lines[i].trim())
                .chain(counts)
                .collect::<Vec<_>>()
                .join(" ")
        });
    let verdict = match (error_at, tokens_at) {
        (Some((i, from)), _) => {
            // The exception and its wrapped continuation, up to a blank line.
            let text: Vec<&str> = std::iter::once(&lines[i][from..])
                .chain(lines[i + 1..].iter().copied())
                .map(|l| l.trim())
                .take_while(|l| !l.is_empty())
                .collect();
            let text = text.join(" ");
            let name = LITELLM
                .captures(&text)
                .map(|c| c[1].to_string())
                .unwrap_or_default();
            let class = class_of(&name, &text);
            let h = hint(facts.kind, &class, &text, None);
            Verdict::Error {
                class,
                message: format!("{}{h}", short(&text)),
            }
        }
        (None, _) if token_limit.is_some() => Verdict::Error {
            class: ErrorClass::Task,
            message: short(&format!(
                "the model's reply was cut at its token limit: {}",
                token_limit.unwrap_or_default()
            )),
        },
        // aider says so and exits 0; 0 tokens came back.
        (None, Some(_)) if empty_reply => Verdict::Error {
            class: ErrorClass::Task,
            message: "the model's reply was empty (0 tokens received)".into(),
        },
        (None, Some(_)) => Verdict::Success,
        (None, None) => Verdict::UnknownWith {
            error_line: error_line(&error_channel(facts.stderr, facts.prompt), ""),
            needs_answer: true,
        },
    };
    Parsed::new(answer, verdict, usage, None)
}

/// litellm's exception names (they mirror the OpenAI SDK's), then the text.
fn class_of(name: &str, text: &str) -> ErrorClass {
    match name {
        "RateLimitError" => ErrorClass::Limit { reset: reset(text) },
        "AuthenticationError" | "PermissionDeniedError" => ErrorClass::Auth,
        "InternalServerError"
        | "ServiceUnavailableError"
        | "APIConnectionError"
        | "APIError"
        | "Timeout"
        | "BadGatewayError" => ErrorClass::Transient,
        "NotFoundError" | "UnsupportedParamsError" => ErrorClass::Config,
        // A request the API refused: the setup's when it names the model or
        // a parameter, else the task's (a prompt too long, say), as claude,
        // codex and gemini file a 400.
        // litellm files some 403s as a bad request ("You have insufficient
        // permissions for this operation"): a key refused, not a setup.
        "BadRequestError" if super::refused_permission(text) => ErrorClass::Auth,
        "BadRequestError" if BAD_SETUP.is_match(text) => ErrorClass::Config,
        "BadRequestError" => ErrorClass::Task,
        "ContextWindowExceededError" | "ContentPolicyViolationError" => ErrorClass::Task,
        _ => classify(text, None),
    }
}

/// `Tokens: 2.3k sent, 1.1k cache write, 4.5k cache hit, 300 received. Cost: $0.01 message, …`
fn usage(line: &str) -> Usage {
    let Some(c) = TOKENS.captures(line) else {
        return Usage::default();
    };
    let num = |i: usize| c.get(i).and_then(|m| count(m.as_str()));
    Usage {
        input_tokens: num(1),
        cache_write_tokens: num(2),
        cache_read_tokens: num(3),
        output_tokens: num(4),
        cost_usd: c.get(5).and_then(|m| m.as_str().parse().ok()),
        ..Usage::default()
    }
}

/// "608", "1,234", "2.3k" (aider rounds large counts to thousands).
fn count(s: &str) -> Option<u64> {
    let s = s.replace(',', "");
    match s.strip_suffix('k') {
        Some(k) => k.parse::<f64>().ok().map(|k| (k * 1000.0).round() as u64),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        ANSWER_429, ANSWER_OK, Fixture, fixture, prompt, run, run_stopped,
    };
    use super::super::{Class, ErrorClass, Kind};
    use super::*;

    const K: Kind = Kind::Aider;

    const BANNER_LINES: &str = "Aider v0.86.1\nModel: openai/mock with whole edit format\nGit repo: none\nRepo-map: disabled\n";

    /// aider's report of a run (exit 0) whose stdout is the banner, then `rest`.
    fn after_banner(rest: &str, stderr: &'static str) -> super::super::RunReport {
        let f = Fixture {
            stdout: Box::leak(format!("{BANNER_LINES}{rest}").into_boxed_str()),
            stderr,
            exit: "code 0",
        };
        run(&K, &f, "")
    }

    /// A reply whose lines start as banner lines do is the reply, whole.
    #[test]
    fn a_reply_line_that_looks_like_the_banner_is_kept() {
        let reply = "Here is the plan.\nWarning: this migration drops the users table, back it up first.\nModel: the data model stays the same.\nStep 3: run it.";
        let r = after_banner(
            &format!(
                "\nhttps://aider.chat/HISTORY.html#release-notes\n\n{reply}\nTokens: 782 sent, 35 received.\n"
            ),
            "",
        );
        assert!(r.is_success(), "{r:?}");
        assert_eq!(r.answer, reply);
    }

    /// A 400 for the task's own request (too long) is the task's, not a
    /// misconfiguration; one naming the model is the setup's.
    #[test]
    fn a_bad_request_blames_the_setup_only_when_it_names_it() {
        for (text, class) in [
            (
                "litellm.BadRequestError: OpenAIException - Error code: 400 - {'error': {'message': 'string too long', 'type': 'invalid_request_error'}}",
                ErrorClass::Task,
            ),
            (
                "litellm.BadRequestError: OpenAIException - The model `gpt-9` does not exist",
                ErrorClass::Config,
            ),
        ] {
            let r = after_banner(&format!("{text}\n"), "");
            assert_eq!(r.outcome, Class::Failed(class), "{text}: {r:?}");
        }
    }

    /// A reply the model stopped at its token limit: aider says "Model ...
    /// has hit a token limit!" and exits 0. A failure that says so, with
    /// no answer (not "exited 0 without printing a result"), and never a
    /// usage limit.
    #[test]
    fn a_reply_cut_at_the_token_limit_says_so() {
        let r = run(
            &K,
            &fixture!("aider-0.86.1", "max-tokens"),
            &prompt("max-tokens"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
        assert_eq!(r.answer, "");
        let m = r.message.unwrap();
        assert!(
            m.contains("token limit: Model openai/mock-gpt has hit a token limit!")
                && m.contains("Output tokens: ~18 of 0 -- possibly exceeded output limit!"),
            "{m}"
        );
    }

    /// aider says "Empty response received from LLM" and exits 0: no answer.
    #[test]
    fn an_empty_reply_is_no_success() {
        let r = after_banner(
            "Empty response received from LLM. Check your provider account?\n\nTokens: 1.4k sent, 0 received.\n",
            "",
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task), "{r:?}");
        assert!(r.message.unwrap().contains("reply was empty"));
    }

    /// A stream cut by a rate limit: litellm's exception follows the last
    /// words of the reply on the same line, with no `Tokens:` line after.
    #[test]
    fn an_exception_glued_to_a_cut_reply_is_the_error() {
        let r = after_banner(
            "Partial answer that was litellm.RateLimitError: RateLimitError: OpenAIException - rate_limit_exceeded\nThe API provider has rate limited you. Try again later or check your quotas.\n",
            "Warning: Input is not a terminal (fd=0).\n",
        );
        assert!(
            matches!(r.outcome, Class::Failed(ErrorClass::Limit { .. })),
            "{r:?}"
        );
        let m = r.message.unwrap();
        assert!(m.starts_with("aider: litellm.RateLimitError"), "{m}");
        // An answer that only quotes such a line, with its reply done, is a success.
        assert_eq!(after_banner(
            "The log said litellm.RateLimitError: too fast, so I waited.\n\nTokens: 1.2k sent, 30 received.\n",
            "",
        ).outcome, Class::Success);
    }

    #[test]
    fn token_counts() {
        let u = usage(
            "Tokens: 2.3k sent, 1.1k cache write, 4.5k cache hit, 300 received. Cost: $0.01 message, $0.02 session.",
        );
        assert_eq!(u.input_tokens, Some(2300));
        assert_eq!(u.cache_write_tokens, Some(1100));
        assert_eq!(u.cache_read_tokens, Some(4500));
        assert_eq!(u.output_tokens, Some(300));
        assert_eq!(u.cost_usd, Some(0.01));
    }

    #[test]
    fn ok() {
        let r = run(&K, &fixture!("aider-0.86.1", "ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        // aider counts tokens itself.
        assert_eq!(r.usage.input_tokens, Some(608));
        assert_eq!(r.usage.output_tokens, Some(10));
    }

    #[test]
    fn answer_that_mentions_429_is_success() {
        let r = run(&K, &fixture!("aider-0.86.1", "ok-429"), &prompt("ok-429"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_429);
        // Even a reply that starts a line with litellm's exception shape.
        let f = fixture!("aider-0.86.1", "ok");
        let quoted = f.stdout.replace(
            ANSWER_OK,
            "litellm.RateLimitError: RateLimitError: that is what the log said.\nFixed.",
        );
        let f = Fixture {
            stdout: Box::leak(quoted.into_boxed_str()),
            ..f
        };
        let r = run(&K, &f, &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
    }

    #[test]
    fn rate_limit_exits_0_but_is_a_limit() {
        let f = fixture!("aider-0.86.1", "429");
        assert_eq!(f.exit.trim(), "code 0");
        let r = run(&K, &f, &prompt("429"));
        assert!(
            matches!(r.outcome, Class::Failed(ErrorClass::Limit { .. })),
            "{r:?}"
        );
        assert_eq!(r.answer, "");
        let r = run(
            &K,
            &fixture!("aider-0.86.1", "usage-limit"),
            &prompt("usage-limit"),
        );
        assert!(
            matches!(r.outcome, Class::Failed(ErrorClass::Limit { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn server_error_exits_0_but_is_transient() {
        let r = run(&K, &fixture!("aider-0.86.1", "500"), &prompt("500"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient), "{r:?}");
    }

    /// litellm files OpenAI's 403 as a BadRequestError: still a refused
    /// key, whose fix is the model or the key's scopes, not a new key.
    #[test]
    fn forbidden_is_auth_with_its_own_fix() {
        let f = fixture!("aider-0.86.1", "403");
        assert_eq!(f.exit.trim(), "code 0");
        let r = run(&K, &f, &prompt("403"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth), "{r:?}");
        let m = r.message.unwrap();
        assert!(m.contains("insufficient permissions"), "{m}");
        assert!(m.ends_with("and the key's project, plan or region)"), "{m}");
    }

    #[test]
    fn bad_key_exits_0_but_is_auth() {
        let f = fixture!("aider-0.86.1", "401");
        assert_eq!(f.exit.trim(), "code 0");
        let r = run(&K, &f, &prompt("401"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
        let m = r.message.unwrap();
        assert!(m.contains("Incorrect API key provided"), "{m}");
        assert!(m.contains("fix: set the model provider's key"), "{m}");
    }

    #[test]
    fn stopped_and_dash_and_bad_flag() {
        let r = run_stopped(&K, &fixture!("aider-0.86.1", "hang"), &prompt("hang"), true);
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Stopped));
        let r = run(&K, &fixture!("aider-0.86.1", "dash-v"), &prompt("dash-v"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        let r = run(&K, &fixture!("aider-0.86.1", "bad-flag"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Config));
    }

    /// The stream dropped after the first words: aider prints them with
    /// litellm's exception glued on, retries, and exits 0. Transient, and
    /// the first words are no answer.
    #[test]
    fn a_cut_stream_is_transient_and_its_first_words_no_answer() {
        let r = run(&K, &fixture!("aider-0.86.1", "cut"), &prompt("cut"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert_eq!(r.answer, "");
        let m = r.message.unwrap();
        assert!(m.contains("APIConnectionError"), "{m}");
        assert!(m.contains("incomplete chunked read"), "{m}");
    }

    /// A 200 whose body is a proxy's page reads, to aider (litellm), as an
    /// empty reply ("Empty response received from LLM", 0 tokens received):
    /// no answer, a failure that says so. It cannot be told from a model
    /// that answered nothing, so it is the task's, like that one.
    #[test]
    fn a_response_that_is_not_the_apis_is_no_answer() {
        let r = run(&K, &fixture!("aider-0.86.1", "garbage"), &prompt("garbage"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task));
        assert_eq!(r.answer, "");
        assert!(r.message.unwrap().contains("reply was empty"));
    }

    #[test]
    fn overloaded_and_unreachable_are_transient() {
        let r = run(
            &K,
            &fixture!("aider-0.86.1", "overloaded"),
            &prompt("overloaded"),
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert!(r.message.unwrap().contains("overloaded"));
        let r = run(&K, &fixture!("aider-0.86.1", "refused"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
        assert!(r.message.unwrap().contains("Connection error"));
    }

    /// A URL in the prompt (here an earlier task's error, as the context
    /// quotes it): aider scrapes it (and tries to install playwright for
    /// that) before it asks the model, then gets a proxy's page: "Empty
    /// response received from LLM", 0 tokens. That was filed completed, the
    /// scraping log as its answer.
    #[test]
    fn an_empty_reply_after_other_output_is_no_success() {
        let f = fixture!("aider-0.86.1", "garbage-url");
        assert!(f.stdout.contains("Scraping https://"));
        let r = run(
            &K,
            &f,
            "MOCK:garbage Reply with one short sentence. The last run said: You can find your API key at https://platform.openai.com/account/api-keys.",
        );
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Task), "{r:?}");
        assert_eq!(r.answer, "");
        assert!(r.message.unwrap().contains("reply was empty"));
    }
}
