//! Streaming JSON as readable text, for `mailroom logs`: claude's and
//! cursor-agent's `stream-json` (and the one object of `--output-format
//! json`), codex's `exec --json` events, gemini's `stream-json`. Assistant
//! text as it comes; each tool call, tool result, error and the end of the
//! run on a line of its own. A line that is not JSON (or not an event of the
//! kind) passes through as it is. Text read from JSON is shown without
//! terminal escapes or control characters: a model's `\u001b` or `\u0000`,
//! harmless in the JSON, would otherwise reach the operator's terminal as
//! the bytes themselves (a cleared screen, a window title). Pure: lines in,
//! text out.

use serde_json::Value;

use super::Kind;

/// The longest a tool call's or result's line gets.
const WIDTH: usize = 160;

/// Renders one run's stdout, line by line.
#[derive(Debug)]
pub struct Renderer {
    kind: Kind,
    /// Streamed text (gemini's deltas) has been written without its newline.
    open_text: bool,
    /// An assistant message was shown: the result's copy of the answer is not.
    answered: bool,
}

/// Whether `kind` writes events this module renders.
pub fn renders(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Claude | Kind::Cursor | Kind::Codex | Kind::Gemini
    )
}

impl Renderer {
    pub fn new(kind: Kind) -> Renderer {
        Renderer {
            kind,
            open_text: false,
            answered: false,
        }
    }

    /// The text for one line of stdout (without its newline); empty when
    /// the event shows nothing (a turn started, the prompt echoed).
    pub fn line(&mut self, line: &str) -> String {
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            return self.plain(format!("{line}\n"));
        };
        if !v.is_object() {
            return self.plain(format!("{line}\n"));
        }
        let out = match self.kind {
            Kind::Claude | Kind::Cursor => {
                let out = claude(&v, self.answered);
                self.answered |= str_at(&v, "type") == "assistant";
                out
            }
            Kind::Codex => codex(&v),
            Kind::Gemini => {
                if let Some(delta) = gemini_delta(&v) {
                    self.open_text = true;
                    return clean(&delta);
                }
                gemini(&v)
            }
            _ => None,
        };
        match out.map(|t| clean(&t)) {
            Some(text) if text.is_empty() => String::new(),
            Some(text) => self.plain(format!("{text}\n")),
            None => self.plain(format!("{line}\n")),
        }
    }

    /// What is left at the end of the run (an unfinished line of text).
    pub fn finish(&mut self) -> String {
        self.plain(String::new())
    }

    fn plain(&mut self, text: String) -> String {
        if std::mem::take(&mut self.open_text) {
            format!("\n{text}")
        } else {
            text
        }
    }
}

/// Text decoded from JSON without terminal escapes and control characters
/// (new lines and tabs stay).
fn clean(text: &str) -> String {
    super::strip_ansi(text)
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
}

/// One line: at most [`WIDTH`] characters, newlines as spaces.
fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= WIDTH {
        return one;
    }
    let mut cut: String = one.chars().take(WIDTH - 1).collect();
    cut.push('…');
    cut
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A tool's input, shortly: its command, path, pattern or query when it has
/// one, else the JSON.
fn tool_input(input: &Value) -> String {
    for k in [
        "command",
        "file_path",
        "path",
        "pattern",
        "query",
        "url",
        "prompt",
    ] {
        if let Some(s) = input.get(k).and_then(Value::as_str) {
            return short(s);
        }
    }
    if input.is_null() {
        return String::new();
    }
    short(&input.to_string())
}

fn claude(v: &Value, answered: bool) -> Option<String> {
    match str_at(v, "type") {
        "system" if str_at(v, "subtype") == "init" => Some(format!(
            "[session {} · model {}]",
            str_at(v, "session_id"),
            str_at(v, "model")
        )),
        "system" => Some(String::new()),
        "assistant" => {
            let content = v.pointer("/message/content")?.as_array()?;
            let mut lines = Vec::new();
            for c in content {
                match str_at(c, "type") {
                    "text" => lines.push(str_at(c, "text").trim_end().to_owned()),
                    "tool_use" => lines.push(format!(
                        "→ {} {}",
                        str_at(c, "name"),
                        tool_input(c.get("input").unwrap_or(&Value::Null))
                    )),
                    _ => {}
                }
            }
            Some(lines.join("\n"))
        }
        "user" => {
            let content = v.pointer("/message/content")?.as_array()?;
            let lines: Vec<String> = content
                .iter()
                .filter(|c| str_at(c, "type") == "tool_result")
                .map(|c| {
                    let text = match c.get("content") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|x| str_at(x, "text"))
                            .collect::<Vec<_>>()
                            .join(" "),
                        _ => String::new(),
                    };
                    let err = c.get("is_error").and_then(Value::as_bool) == Some(true);
                    format!("← {}{}", if err { "error: " } else { "" }, short(&text))
                })
                .collect();
            Some(lines.join("\n"))
        }
        "result" => {
            let cost = v
                .get("total_cost_usd")
                .and_then(Value::as_f64)
                .map(|c| format!(", {c:.4} USD"))
                .unwrap_or_default();
            let turns = v
                .get("num_turns")
                .and_then(Value::as_u64)
                .map(|n| format!(", {n} turns"))
                .unwrap_or_default();
            let is_error = v.get("is_error").and_then(Value::as_bool) == Some(true);
            // The one object of `--output-format json`: the answer is here only.
            let answer = str_at(v, "result").trim_end();
            let head = if is_error {
                format!("! error: {}", short(answer))
            } else if answered {
                String::new()
            } else {
                answer.to_owned()
            };
            let tail = format!(
                "[done: {}{cost}{turns}]",
                if is_error { "error" } else { "ok" }
            );
            Some(if head.is_empty() {
                tail
            } else {
                format!("{head}\n{tail}")
            })
        }
        _ => None,
    }
}

fn codex(v: &Value) -> Option<String> {
    let item = v.get("item");
    let it = |k: &str| item.map(|i| str_at(i, k)).unwrap_or("");
    match str_at(v, "type") {
        "thread.started" => Some(format!("[thread {}]", str_at(v, "thread_id"))),
        "turn.started" => Some(String::new()),
        "turn.completed" => {
            let u = v.get("usage");
            let n = |k: &str| {
                u.and_then(|u| u.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            Some(format!(
                "[turn done: {} in, {} out tokens]",
                n("input_tokens"),
                n("output_tokens")
            ))
        }
        "turn.failed" => Some(format!(
            "! turn failed: {}",
            short(
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )
        )),
        "error" => Some(format!("! {}", short(str_at(v, "message")))),
        "item.started" | "item.updated" | "item.completed" => {
            let done = str_at(v, "type") == "item.completed";
            Some(match (it("type"), done) {
                ("agent_message", true) => it("text").trim_end().to_owned(),
                ("reasoning", true) => format!("· {}", short(it("text"))),
                ("command_execution", false) => format!("→ run {}", short(it("command"))),
                ("command_execution", true) => {
                    let code = item
                        .and_then(|i| i.get("exit_code"))
                        .and_then(Value::as_i64)
                        .map_or("?".into(), |c| c.to_string());
                    format!("← exit {code}: {}", short(it("aggregated_output")))
                }
                ("file_change", true) => {
                    let files: Vec<String> = item
                        .and_then(|i| i.get("changes"))
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .map(|c| format!("{} {}", str_at(c, "kind"), str_at(c, "path")))
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("→ edit {}", short(&files.join(", ")))
                }
                ("mcp_tool_call", false) => {
                    format!("→ {}.{}", it("server"), it("tool"))
                }
                ("web_search", false) => format!("→ search {}", short(it("query"))),
                ("error", _) => format!("! {}", short(it("message"))),
                _ => String::new(),
            })
        }
        _ => None,
    }
}

/// Gemini's streamed assistant text (`"delta": true`): written as it comes.
fn gemini_delta(v: &Value) -> Option<String> {
    (str_at(v, "type") == "message"
        && str_at(v, "role") == "assistant"
        && v.get("delta").and_then(Value::as_bool) == Some(true))
    .then(|| str_at(v, "content").to_owned())
}

fn gemini(v: &Value) -> Option<String> {
    match str_at(v, "type") {
        "init" => Some(format!(
            "[session {} · model {}]",
            str_at(v, "session_id"),
            str_at(v, "model")
        )),
        "message" if str_at(v, "role") == "assistant" => {
            Some(str_at(v, "content").trim_end().to_owned())
        }
        // The prompt, echoed.
        "message" => Some(String::new()),
        "tool_use" => Some(format!(
            "→ {} {}",
            str_at(v, "tool_name"),
            tool_input(v.get("parameters").unwrap_or(&Value::Null))
        )),
        "tool_result" => {
            let out = v
                .get("output")
                .and_then(Value::as_str)
                .or_else(|| v.pointer("/error/message").and_then(Value::as_str))
                .unwrap_or("");
            Some(format!("← {}: {}", str_at(v, "status"), short(out)))
        }
        "error" => Some(format!("! {}", short(str_at(v, "message")))),
        "result" => {
            let tokens = v
                .pointer("/stats/total_tokens")
                .and_then(Value::as_u64)
                .map(|n| format!(", {n} tokens"))
                .unwrap_or_default();
            let err = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(|m| format!(": {}", short(m)))
                .unwrap_or_default();
            Some(format!("[done: {}{tokens}{err}]", str_at(v, "status")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::*;

    fn render(kind: Kind, text: &str) -> String {
        let mut r = Renderer::new(kind);
        let mut out: String = text.lines().map(|l| r.line(l)).collect();
        out.push_str(&r.finish());
        out
    }

    const ANSWER: &str = "MOCK ANSWER: the task is done.";

    #[test]
    fn claude_stream_json_reads_as_text() {
        let out = render(Kind::Claude, fixture!("claude-2.1.197", "stream-ok").stdout);
        assert_eq!(
            out,
            format!(
                "[session d40170ca-aa9d-4d52-bc5a-97933098a6a4 · model claude-opus-4-8[1m]]\n{ANSWER}\n[done: ok, 0.0073 USD, 1 turns]\n"
            )
        );
        // The single object of `--output-format json`: the answer and the end.
        let out = render(Kind::Claude, fixture!("claude-2.1.197", "ok").stdout);
        assert!(
            out.starts_with(ANSWER) && out.contains("[done: ok"),
            "{out}"
        );
        let out = render(Kind::Claude, fixture!("claude-2.1.197", "500").stdout);
        assert!(
            out.contains("! error:") && out.contains("[done: error"),
            "{out}"
        );
    }

    /// A model's escapes and control characters, JSON-escaped in the
    /// CLI's output, are not decoded into the operator's terminal.
    #[test]
    fn escapes_in_an_answer_do_not_reach_the_terminal() {
        let text =
            r"MOCK ANSWER: \u001b[31mred\u001b[0m, \u001b[2J\u001b]0;pwned\u0007 a NUL \u0000.";
        for (kind, line) in [
            (
                Kind::Claude,
                format!(
                    r#"{{"type":"result","subtype":"success","is_error":false,"result":"{text}"}}"#
                ),
            ),
            (
                Kind::Codex,
                format!(
                    r#"{{"type":"item.completed","item":{{"type":"agent_message","text":"{text}"}}}}"#
                ),
            ),
            (
                Kind::Gemini,
                format!(
                    r#"{{"type":"message","role":"assistant","content":"{text}","delta":true}}"#
                ),
            ),
        ] {
            let out = render(kind.clone(), &line);
            assert!(
                out.contains("MOCK ANSWER: red,  a NUL .")
                    && !out.chars().any(|c| c.is_control() && c != '\n'),
                "{kind:?}: {out:?}"
            );
        }
    }

    #[test]
    fn claude_tool_calls_and_results_are_one_line_each() {
        let lines = [
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls -la\nsrc","description":"list"}}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"a.rs\nb.rs"}]}}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t2","name":"Read","input":{"file_path":"/x/a.rs"}}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t2","is_error":true,"content":[{"type":"text","text":"no such file"}]}]}}"#,
        ];
        let out = render(Kind::Claude, &lines.join("\n"));
        assert_eq!(
            out,
            "Let me look.\n→ Bash ls -la src\n← a.rs b.rs\n→ Read /x/a.rs\n← error: no such file\n"
        );
    }

    #[test]
    fn codex_events_read_as_text() {
        let out = render(Kind::Codex, fixture!("codex-0.171.0", "ok").stdout);
        assert_eq!(
            out,
            format!(
                "[thread 01a2324c-63b0-7562-bc06-0f3a13115298]\n{ANSWER}\n[turn done: 1500 in, 34 out tokens]\n"
            )
        );
        let out = render(Kind::Codex, fixture!("codex-0.171.0", "500").stdout);
        assert!(out.contains("! Reconnecting... 1/5"), "{out}");
        let lines = [
            r#"{"type":"item.started","item":{"id":"i1","type":"command_execution","command":"bash -lc 'cargo test'","status":"in_progress"}}"#,
            r#"{"type":"item.completed","item":{"id":"i1","type":"command_execution","command":"bash -lc 'cargo test'","aggregated_output":"ok\n","exit_code":0,"status":"completed"}}"#,
            r#"{"type":"item.completed","item":{"id":"i2","type":"file_change","changes":[{"path":"src/a.rs","kind":"update"}],"status":"completed"}}"#,
        ];
        assert_eq!(
            render(Kind::Codex, &lines.join("\n")),
            "→ run bash -lc 'cargo test'\n← exit 0: ok\n→ edit update src/a.rs\n"
        );
    }

    #[test]
    fn gemini_stream_json_streams_its_text() {
        let out = render(Kind::Gemini, fixture!("gemini-0.61.0", "stream-ok").stdout);
        assert_eq!(
            out,
            format!(
                "[session 735998bf-6078-45c4-a53e-e0d94a7352c7 · model auto]\n{ANSWER}\n[done: success, 3068 tokens]\n"
            )
        );
        let lines = [
            r#"{"type":"tool_use","tool_name":"read_file","tool_id":"r1","parameters":{"path":"a.txt"}}"#,
            r#"{"type":"tool_result","tool_id":"r1","status":"success","output":"hello"}"#,
        ];
        assert_eq!(
            render(Kind::Gemini, &lines.join("\n")),
            "→ read_file a.txt\n← success: hello\n"
        );
    }

    #[test]
    fn other_lines_pass_through() {
        assert_eq!(
            render(Kind::Claude, "plain text\n[1, 2]"),
            "plain text\n[1, 2]\n"
        );
        assert_eq!(
            render(Kind::Codex, r#"{"type":"something.new","x":1}"#),
            "{\"type\":\"something.new\",\"x\":1}\n"
        );
        assert!(!renders(&Kind::Aider));
        let long = format!(
            r#"{{"type":"assistant","message":{{"content":[{{"type":"tool_use","name":"Bash","input":{{"command":"{}"}}}}]}}}}"#,
            "x".repeat(500)
        );
        let out = render(Kind::Claude, &long);
        assert_eq!(
            out.chars().count(),
            "→ Bash ".chars().count() + WIDTH + 1,
            "{out}"
        );
    }
}
