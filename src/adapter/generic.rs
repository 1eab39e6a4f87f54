//! Any other CLI, described by an `output:` section in the agent's config:
//!
//! ```yaml
//! output:
//!   format: json          # json (one object) | jsonl (one event a line) | text
//!   answer: .result       # where the answer text is
//!   error: .is_error      # true / a non-empty string or object: the run failed
//!   session: .session_id
//!   cost: .total_cost_usd
//! ```
//!
//! Paths are a small jq subset: `.key.key`, `.key[0]`, `.["odd key"]`. With `jsonl` each
//! path is looked up in the last event that has it. With `text` (the default) stdout is
//! the answer and the exit status decides, with stderr's last line (minus prompt echoes)
//! as the error line.
//!
//! When `error` is configured and present, it decides: false/null/"" is a structured
//! success (never limited, whatever stderr says), anything else is a structured error
//! (a failure even with exit 0; its text, or stderr's last line, is classified).

use serde::Deserialize;
use serde_json::Value;

use super::{
    Parsed, RunFacts, Usage, Verdict, error, error_channel, error_line, json_lines,
    last_json_object,
};

/// How a generic agent's output is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Json,
    Jsonl,
    #[default]
    Text,
}

/// The `output:` section of a generic agent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default)]
    pub format: OutputFormat,
    /// Path of the answer text (json/jsonl); without it the answer is stdout.
    pub answer: Option<String>,
    /// Path of the error flag or message.
    pub error: Option<String>,
    /// Path of the session id.
    pub session: Option<String>,
    /// Path of the cost in USD.
    pub cost: Option<String>,
    /// Paths of token counts.
    pub input_tokens: Option<String>,
    pub output_tokens: Option<String>,
}

pub(crate) fn parse(spec: &OutputSpec, facts: &RunFacts<'_>) -> Parsed {
    let channel = error_channel(facts.stderr, facts.prompt);
    let docs: Vec<Value> = match spec.format {
        OutputFormat::Text => Vec::new(),
        OutputFormat::Json => last_json_object(facts.stdout).into_iter().collect(),
        OutputFormat::Jsonl => json_lines(facts.stdout),
    };
    let find = |path: &Option<String>| -> Option<&Value> {
        let path = path.as_deref()?;
        docs.iter()
            .rev()
            .find_map(|d| lookup(d, path).filter(|v| !v.is_null()))
    };
    let as_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let answer = match (&spec.answer, spec.format) {
        (Some(_), OutputFormat::Json | OutputFormat::Jsonl) => {
            find(&spec.answer).map(as_text).unwrap_or_default()
        }
        _ => facts.stdout.trim().to_string(),
    };
    let usage = Usage {
        cost_usd: find(&spec.cost).and_then(Value::as_f64),
        input_tokens: find(&spec.input_tokens).and_then(Value::as_u64),
        output_tokens: find(&spec.output_tokens).and_then(Value::as_u64),
        ..Usage::default()
    };
    let session_id = find(&spec.session).map(as_text);
    let verdict = match (spec.error.as_ref(), find(&spec.error)) {
        (Some(_), Some(v)) if is_error_value(v) => {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
                _ => error_line(&channel, "")
                    .or_else(|| (!answer.is_empty()).then(|| answer.clone()))
                    .unwrap_or_else(|| "the agent reported an error".into()),
            };
            error(facts.kind, &text, None)
        }
        (Some(_), Some(_)) => Verdict::Success,
        _ => Verdict::UnknownWith {
            error_line: error_line(&channel, &answer),
            needs_answer: spec.format != OutputFormat::Text,
        },
    };
    Parsed::new(answer, verdict, usage, session_id)
}

fn is_error_value(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.trim().is_empty() && s != "false",
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Looks up a jq-style path (`.a.b`, `.a[0]`, `.["k"]`, `.` for the whole document).
pub(crate) fn lookup<'v>(doc: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = doc;
    let mut rest = path.trim();
    rest = rest.strip_prefix('.').unwrap_or(rest);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let key = r[..end].trim();
            cur = if let Some(q) = key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
                cur.get(q)?
            } else {
                cur.get(key.parse::<usize>().ok()?)?
            };
            rest = &r[end + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            cur = cur.get(&rest[..end])?;
            rest = &rest[end..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ANSWER_429, ANSWER_OK, fixture, prompt, run};
    use super::super::{Class, ErrorClass, Kind};
    use super::*;

    /// Claude Code's JSON described as a generic agent.
    fn claude_spec() -> Kind {
        let spec: OutputSpec = serde_json::from_value(serde_json::json!({
            "format": "json",
            "answer": ".result",
            "error": ".is_error",
            "session": ".session_id",
            "cost": ".total_cost_usd",
            "input_tokens": ".usage.input_tokens",
            "output_tokens": ".usage.output_tokens",
        }))
        .unwrap();
        Kind::Generic(spec)
    }

    #[test]
    fn paths() {
        let v = serde_json::json!({"a": {"b": [1, {"c": "x"}]}, "odd key": 2});
        assert_eq!(lookup(&v, ".a.b[1].c"), Some(&serde_json::json!("x")));
        assert_eq!(lookup(&v, ".[\"odd key\"]"), Some(&serde_json::json!(2)));
        assert_eq!(lookup(&v, "."), Some(&v));
        assert_eq!(lookup(&v, ".a.z"), None);
    }

    #[test]
    fn spec_deserialises_with_defaults() {
        let spec: OutputSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.format, OutputFormat::Text);
        assert!(serde_json::from_str::<OutputSpec>(r#"{"format":"xml"}"#).is_err());
        assert!(serde_json::from_str::<OutputSpec>(r#"{"anwser":".x"}"#).is_err());
    }

    #[test]
    fn json_ok_and_trap() {
        let k = claude_spec();
        let r = run(&k, &fixture!("claude-2.1.197", "ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        assert_eq!(r.usage.cost_usd, Some(0.0073125));
        assert_eq!(r.usage.input_tokens, Some(1200));
        assert!(r.session_id.is_some());
        let r = run(&k, &fixture!("claude-2.1.197", "ok-429"), &prompt("ok-429"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_429);
    }

    #[test]
    fn json_errors() {
        let k = claude_spec();
        let r = run(
            &k,
            &fixture!("claude-2.1.197", "usage-limit"),
            &prompt("usage-limit"),
        );
        assert!(matches!(
            r.error_class,
            Some(ErrorClass::Limit { reset: Some(_) })
        ));
        assert_eq!(r.answer, "");
        let r = run(&k, &fixture!("claude-2.1.197", "401"), &prompt("401"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
        let r = run(&k, &fixture!("claude-2.1.197", "bad-flag"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Config));
    }

    #[test]
    fn jsonl_codex_events() {
        let spec: OutputSpec = serde_json::from_value(serde_json::json!({
            "format": "jsonl",
            "answer": ".item.text",
            "error": ".error",
            "session": ".thread_id",
        }))
        .unwrap();
        let k = Kind::Generic(spec);
        let r = run(&k, &fixture!("codex-0.171.0", "ok-429"), &prompt("ok-429"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_429);
        assert!(r.session_id.is_some());
        let r = run(
            &k,
            &fixture!("codex-0.171.0", "usage-limit"),
            &prompt("usage-limit"),
        );
        assert!(matches!(
            r.error_class,
            Some(ErrorClass::Limit { reset: Some(_) })
        ));
    }

    #[test]
    fn text_answer_mentioning_429_is_success() {
        let k = Kind::Generic(OutputSpec::default());
        let r = run(
            &k,
            &fixture!("codex-0.171.0", "text-ok-429"),
            &prompt("ok-429"),
        );
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_429);
        let r = run(&k, &fixture!("codex-0.171.0", "text-429"), &prompt("429"));
        assert!(matches!(r.error_class, Some(ErrorClass::Limit { .. })));
    }
}
