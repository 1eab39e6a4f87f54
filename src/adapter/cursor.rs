//! Cursor's agent CLI (`cursor-agent -p --output-format json|stream-json`).
//!
//! Documented output (cursor.com/docs/cli/reference/output-format): on success one result
//! object, `{"type":"result","subtype":"success","is_error":false,"duration_ms":…,
//! "duration_api_ms":…,"result":"<answer>","session_id":"…","request_id":"…"}`, the last
//! event of `stream-json` (after `system`/`init`, `user`, `assistant`, `tool_call`). On
//! failure it exits non-zero, writes the error to stderr and prints no result object.
//! That is Claude Code's envelope, so the claude reader does the work.
//!
//! cursor-agent is on no package registry this project can reach: its fixtures
//! (`tests/fixtures/cli/cursor-agent-docs/`) are written from the documentation, and the
//! error texts in them are illustrative, not captured.

use super::{Parsed, RunFacts, claude};

pub(crate) fn parse(facts: &RunFacts<'_>) -> Parsed {
    let mut p = claude::parse_envelope(facts.kind, facts);
    // cursor reports no tokens or cost; keep the API time it does report.
    if let Some(ms) = super::last_json_object(facts.stdout)
        .as_ref()
        .and_then(|r| super::u64_at(r, "duration_api_ms"))
    {
        p.usage.api_ms = Some(ms);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ANSWER_429, ANSWER_OK, fixture, prompt, run, run_stopped};
    use super::super::{Class, ErrorClass, Kind, Reset};

    const K: Kind = Kind::Cursor;

    #[test]
    fn ok() {
        let r = run(&K, &fixture!("cursor-agent-docs", "ok"), &prompt("ok"));
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        assert_eq!(
            r.session_id.as_deref(),
            Some("c6b62c6f-7ead-4fd6-9922-e952131177ff")
        );
        assert_eq!(r.usage.api_ms, Some(5210));
        let r = run(
            &K,
            &fixture!("cursor-agent-docs", "stream-ok"),
            &prompt("ok"),
        );
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_OK);
        assert_eq!(
            r.session_id.as_deref(),
            Some("7d1f0a52-2c1e-4f7a-b1d8-3e5a9c0b4f21")
        );
    }

    #[test]
    fn answer_that_mentions_429_is_success() {
        let r = run(
            &K,
            &fixture!("cursor-agent-docs", "ok-429"),
            &prompt("ok-429"),
        );
        assert_eq!(r.outcome, Class::Success);
        assert_eq!(r.answer, ANSWER_429);
    }

    #[test]
    fn errors_from_stderr() {
        let r = run(
            &K,
            &fixture!("cursor-agent-docs", "usage-limit"),
            &prompt("usage-limit"),
        );
        assert_eq!(
            r.error_class,
            Some(ErrorClass::Limit {
                reset: Some(Reset::Text("Jan 1, 2030 at 12:00 PM UTC".into()))
            })
        );
        let r = run(&K, &fixture!("cursor-agent-docs", "401"), &prompt("401"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Auth));
        assert!(r.message.unwrap().contains("fix: set CURSOR_API_KEY"));
        let r = run(&K, &fixture!("cursor-agent-docs", "500"), &prompt("500"));
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Transient));
    }

    #[test]
    fn stopped_stream_keeps_its_session() {
        let f = fixture!("cursor-agent-docs", "hang");
        let r = run_stopped(&K, &f, &prompt("hang"), true);
        assert_eq!(r.outcome, Class::Failed(ErrorClass::Stopped));
        assert_eq!(
            r.session_id.as_deref(),
            Some("7d1f0a52-2c1e-4f7a-b1d8-3e5a9c0b4f21")
        );
    }
}
