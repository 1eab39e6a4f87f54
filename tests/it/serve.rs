//! `mailroom serve`: the real binary on 127.0.0.1 with port 0, asked over
//! plain HTTP/1.1 (a few lines of client here, no HTTP crate), its event
//! stream read as a raw socket, and its pages loaded in headless Chromium.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A running `mailroom serve`; killed and awaited on drop.
pub(crate) struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    pub(crate) fn start(root: &Root) -> Server {
        Server::start_with(root, &[])
    }

    fn start_with(root: &Root, args: &[&str]) -> Server {
        let mut a = vec!["serve", "--listen", "127.0.0.1:0"];
        a.extend_from_slice(args);
        Server::spawn(root.cmd(&a))
    }

    /// `mailroom serve` under an open-file limit of `nofile`.
    fn start_limited(root: &Root, nofile: u64) -> Server {
        use std::os::unix::process::CommandExt;
        let mut c = root.cmd(&["serve", "--listen", "127.0.0.1:0"]);
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Server::spawn(c)
    }

    fn spawn(mut c: Command) -> Server {
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve printed no address within 30 s");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.strip_suffix('/'))
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        Server { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, &[])
    }

    pub(crate) fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
    request_body(addr, method, path, extra, "")
}

/// The same with a body (a form, unless a Content-Type says otherwise).
fn request_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty()
        && !extra
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let _ = s.write_all(req.as_bytes());
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A tree with a completed, a failed and two pending tasks, one of which
/// waits for another.
fn sample() -> Root {
    let root = Root::new();
    root.write(
        "mailroom.yaml",
        &format!(
            "retry_delay: 50ms\nsettle: 300ms\nrescan_interval: 1s\nretries: 1\nagents:\n  a:\n    command: [{:?}]\n    max_instances: 3\n    prompt_template: \"{{description}}\"\n  ok:\n    command: [{:?}]\n    prompt_template: \"{{description}}\"\ndefault_agent: ok\n",
            agent("fail.sh"),
            agent("ok.sh")
        ),
    );
    root.write(
        "tasks/pending/good.yaml",
        "description: \"# Plan\\n\\nWrite **tests**\"\n",
    );
    root.write("tasks/pending/bad.yaml", "description: Break\nagent: a\n");
    root.run_until_idle();
    root.write(
        "tasks/pending/later.yaml",
        "description: After good\nafter: [good]\npriority: high\nparent: good\n",
    );
    root.write(
        "tasks/pending/waits.yaml",
        "description: Waits\nafter: [nobody]\n",
    );
    root
}

#[test]
fn serve_prints_its_address_and_answers_every_route() {
    let root = sample();
    let srv = Server::start(&root);
    assert!(srv.addr.ip().is_loopback());

    let o = srv.json("/api/overview");
    assert_eq!(o["counts"]["pending"], 2, "{o}");
    assert_eq!(o["counts"]["completed"], 1, "{o}");
    assert_eq!(o["counts"]["failed"], 1, "{o}");
    assert_eq!(o["counts"]["assigned"], 0, "{o}");
    let agents = o["agents"].as_array().unwrap();
    let a = agents.iter().find(|x| x["name"] == "a").unwrap();
    assert_eq!(
        (a["running"].as_u64(), a["max"].as_u64()),
        (Some(0), Some(3))
    );
    assert!(o["oldest_pending"]["name"].is_string(), "{o}");

    let l = srv.json("/api/tasks");
    assert_eq!(l["total"], 4, "{l}");
    let names: Vec<&str> = l["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 4);
    let bad = &l["rows"].as_array().unwrap()[names.iter().position(|n| *n == "bad").unwrap()];
    assert_eq!(bad["state"], "failed");
    assert_eq!(bad["outcome"], "exit");
    assert_eq!(bad["attempts"], 2);
    assert_eq!(bad["agent"], "a");

    let failed = srv.json("/api/tasks?state=failed");
    assert_eq!(failed["total"], 1);
    // `good` by its name, `later` by its description ("After good").
    let by_name = srv.json("/api/tasks?q=GOO");
    assert_eq!(by_name["total"], 2, "{by_name}");
    let on_a = srv.json("/api/tasks?agent=a");
    assert_eq!(on_a["rows"].as_array().unwrap().len(), 1, "{on_a}");

    let t = srv.json("/api/tasks/bad");
    assert_eq!(t["state"], "failed");
    assert_eq!(t["attempts"].as_array().unwrap().len(), 2, "{t}");
    assert!(
        t["stderr_tail"]["text"]
            .as_str()
            .unwrap()
            .contains("something broke on attempt 2"),
        "{t}"
    );
    assert_eq!(t["prompt"]["text"], "Break");

    let g = srv.json("/api/tasks/good");
    assert_eq!(g["output"]["text"], "# Plan\n\nWrite **tests**");
    assert_eq!(g["children"][0]["name"], "later", "{g}");
    let later = srv.json("/api/tasks/later");
    assert_eq!(later["parent"]["name"], "good");
    assert_eq!(later["after"][0]["state"], "completed");
    let waits = srv.json("/api/tasks/waits");
    assert_eq!(waits["waiting"], "waiting for nobody (not submitted)");

    let graph = srv.json("/api/graph");
    let edges = graph["edges"].as_array().unwrap();
    assert!(
        edges
            .iter()
            .any(|e| e["from"] == "good" && e["to"] == "later" && e["kind"] == "after"),
        "{graph}"
    );
    assert!(
        edges
            .iter()
            .any(|e| e["from"] == "good" && e["to"] == "later" && e["kind"] == "parent"),
        "{graph}"
    );
    let focused = srv.json("/api/graph?focus=later");
    assert_eq!(focused["nodes"].as_array().unwrap().len(), 2, "{focused}");

    for path in [
        "/",
        "/tasks",
        "/tasks?state=pending&q=a&page=1",
        "/tasks/good",
        "/graph",
        "/graph?focus=good",
    ] {
        let r = srv.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.body.contains("<main"), "{path}");
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
    }
    let page = srv.get("/tasks/good");
    // The output, rendered as Markdown.
    assert!(page.body.contains("<h1>Plan</h1>"), "{}", page.body);
    assert!(page.body.contains("<strong>tests</strong>"));
    let graph_page = srv.get("/graph");
    assert!(graph_page.body.contains("<svg"), "{}", graph_page.body);
    assert_eq!(srv.get("/static/app.js").status, 200);
    assert_eq!(srv.get("/static/style.css").status, 200);
}

#[test]
fn a_description_with_script_is_rendered_inert() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    // YAML's "\e" is an escape character: a terminal colour code.
    root.write(
        "tasks/pending/evil.yaml",
        r#"description: "<script>alert(\"pwn\")</script> & <img src=x onerror=alert(1)> \e[31mred""#,
    );
    root.run_until_idle();
    // ok.sh wrote the description as its output: Markdown with raw HTML.
    let srv = Server::start(&root);
    let t = srv.json("/api/tasks/evil");
    assert!(
        t["description"]
            .as_str()
            .unwrap()
            .starts_with("<script>alert(\"pwn\")</script>"),
        "the API gives the text as written: {t}"
    );
    let page = srv.get("/tasks/evil");
    assert_eq!(page.status, 200);
    let body = &page.body;
    assert!(
        body.contains("&lt;script&gt;alert(&quot;pwn&quot;)&lt;/script&gt;"),
        "{body}"
    );
    assert!(
        body.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{body}"
    );
    assert!(!body.contains("<img"), "{body}");
    assert!(
        !body.contains("\u{1b}"),
        "a terminal escape reached the page"
    );
    assert_eq!(
        body.matches("<script").count(),
        1,
        "only the page's own script: {body}"
    );
    // Lists and the overview show the name and error text escaped too.
    let list = srv.get("/tasks");
    assert_eq!(list.body.matches("<script").count(), 1);
}

#[test]
fn names_from_urls_cannot_leave_the_tree() {
    let root = Root::new();
    let outside = root.p("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("stdout.log"), "SECRET-LOG").unwrap();
    std::fs::write(outside.join("secret.yaml"), "description: SECRET-TASK\n").unwrap();
    // A task file that is a symlink, and a real task whose run directory is one.
    std::os::unix::fs::symlink(
        outside.join("secret.yaml"),
        root.p("tasks/completed/link.yaml"),
    )
    .unwrap();
    root.write("tasks/completed/real.yaml", "description: Real\n");
    std::os::unix::fs::symlink(&outside, root.p("tasks/completed/real.run")).unwrap();
    let srv = Server::start(&root);

    for path in [
        "/tasks/..%2F..%2Foutside%2Fsecret",
        "/api/tasks/..%2Foutside",
        "/api/tasks/.hidden",
        "/api/tasks/a%5Cb",
        "/api/tasks/%00",
        "/graph?focus=..%2Fx",
    ] {
        let r = srv.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(!r.body.contains("SECRET"), "{path}");
    }
    assert_eq!(srv.get("/tasks/../../etc/passwd").status, 404);
    assert_eq!(srv.get("/api/tasks/nobody").status, 404);
    assert_eq!(srv.get("/nothing/here").status, 404);
    let link = srv.get("/api/tasks/link");
    assert!(!link.body.contains("SECRET-TASK"), "{}", link.body);
    let real = srv.get("/tasks/real");
    assert_eq!(real.status, 200);
    assert!(
        !real.body.contains("SECRET-LOG"),
        "followed a run-directory symlink"
    );
    // Read-only: nothing but GET.
    for m in ["POST", "PUT", "DELETE"] {
        let r = request(srv.addr, m, "/api/tasks/real", &[]);
        assert_eq!(r.status, 405, "{m}");
    }
    // DNS rebinding: another host name for a loopback listener is refused.
    let r = request(
        srv.addr,
        "GET",
        "/api/overview",
        &[("Host", "evil.example:80")],
    );
    assert_eq!(r.status, 421);
    assert!(root.exists("tasks/completed/real.yaml"));
}

#[test]
fn the_task_list_pages_and_filters_from_listings() {
    let root = Root::new();
    for i in 0..120 {
        root.write(
            &format!("tasks/pending/t{i:03}.yaml"),
            &format!(
                "description: task {i}\nagent: {}\n",
                if i % 3 == 0 { "x" } else { "y" }
            ),
        );
    }
    let srv = Server::start(&root);
    let p1 = srv.json("/api/tasks?per_page=50");
    assert_eq!(
        (p1["total"].as_u64(), p1["has_more"].as_bool()),
        (Some(120), Some(true))
    );
    assert_eq!(p1["rows"].as_array().unwrap().len(), 50);
    let p3 = srv.json("/api/tasks?per_page=50&page=3");
    assert_eq!(p3["rows"].as_array().unwrap().len(), 20);
    assert_eq!(p3["has_more"], false);
    let q = srv.json("/api/tasks?q=t11");
    assert_eq!(q["total"], 10);
    let x = srv.json("/api/tasks?agent=x&per_page=200");
    assert_eq!(x["rows"].as_array().unwrap().len(), 40, "{x}");
    assert!(
        x["total"].is_null(),
        "an agent filter reads files; no total is claimed"
    );
    assert_eq!(srv.get("/api/tasks?state=bogus").status, 400);
    // A query that does not parse is refused the same way: JSON from the
    // API, a page from the pages.
    for (path, json) in [
        ("/api/tasks?page=abc", true),
        ("/api/tasks?per_page=-1", true),
        ("/api/graph?focus=a&focus=b", true),
        ("/api/tasks/%FF", true),
        ("/tasks?page=abc", false),
    ] {
        let r = srv.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        let ct = r.header("content-type").unwrap_or_default();
        if json {
            assert!(ct.starts_with("application/json"), "{path}: {ct}");
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        } else {
            assert!(ct.starts_with("text/html"), "{path}: {ct}");
        }
    }
    let html = srv.get("/tasks?per_page=50&page=2");
    assert!(html.body.contains("rel=\"next\"") && html.body.contains("rel=\"prev\""));
    // A page number far past the end is an empty page, not a panic (an
    // overflow of the first row's number).
    for page in ["18446744073709551615", "1000000000000000000"] {
        let far = srv.get(&format!("/tasks?per_page=200&page={page}"));
        assert_eq!(far.status, 200, "page={page}");
        assert!(far.body.contains("No task matches."), "page={page}");
    }
}

/// A raw SSE reader: the lines of `/events` as they come.
fn events(addr: SocketAddr) -> std::sync::mpsc::Receiver<String> {
    sse_lines(addr, "/events")
}

/// The lines of the answer to `GET path` as they come, status line first.
fn sse_lines(addr: SocketAddr, path: &str) -> std::sync::mpsc::Receiver<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_event(rx: &std::sync::mpsc::Receiver<String>, what: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let left = within.checked_sub(start.elapsed()).unwrap_or_default();
        match rx.recv_timeout(left) {
            Ok(l) if l == format!("event: {what}") => return start.elapsed(),
            Ok(_) => {}
            Err(_) => panic!("no `{what}` event within {within:?}"),
        }
    }
}

/// A finished task whose record cannot be used is said to be so (with the
/// file and why) on its page and in its JSON, instead of showing nothing.
#[test]
fn a_record_that_cannot_be_used_is_named_on_the_task_page() {
    let root = sample();
    std::fs::write(root.p("tasks/failed/bad.result.json"), "{not json").unwrap();
    std::fs::remove_file(root.p("tasks/completed/good.result.json")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.p("tasks/completed/good.result.json"))
        .unwrap();
    let srv = Server::start(&root);
    let bad = srv.json("/api/tasks/bad");
    assert!(bad["record"].is_null(), "{bad}");
    let why = bad["record_error"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("tasks/failed/bad.result.json: does not parse"),
        "{bad}"
    );
    let good = srv.json("/api/tasks/good");
    let why = good["record_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("tasks/completed/good.result.json: cannot be read: it is a symbolic link"),
        "{good}"
    );
    let page = srv.get("/tasks/bad");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("tasks/failed/bad.result.json: does not parse"),
        "{}",
        page.body
    );
    // A pending task has no record, and no error for it.
    let waits = srv.json("/api/tasks/waits");
    assert!(waits.get("record_error").is_none(), "{waits}");
}

/// A state directory moved away is said to be so on the overview (its count
/// of 0 is not the truth), not shown as an empty queue.
#[test]
fn a_missing_state_directory_is_named_on_the_overview() {
    let root = sample();
    let srv = Server::start(&root);
    assert!(srv.json("/api/overview").get("tree_errors").is_none());
    std::fs::rename(root.p("tasks/pending"), root.p("pending-away")).unwrap();
    wait_for(
        Duration::from_secs(20),
        "the overview to name pending/",
        || {
            srv.json("/api/overview")["tree_errors"]
                .as_array()
                .is_some_and(|e| {
                    e.len() == 1 && e[0].as_str().unwrap().starts_with("tasks/pending: ")
                })
        },
    );
    let page = srv.get("/");
    assert!(
        page.body
            .contains("tasks/pending: No such file or directory"),
        "{}",
        page.body
    );
}

/// Event streams held open cannot take every dashboard connection: at most
/// half of them carry a stream (8 of 16 under an open-file limit of 64); one
/// more is refused with 503 and `Retry-After`, pages are still answered, and
/// a stream that closes frees its place.
#[test]
fn event_streams_cannot_take_every_connection() {
    let root = sample();
    let srv = Server::start_limited(&root, 64);
    let held: Vec<_> = (0..8).map(|_| events(srv.addr)).collect();
    for rx in &held {
        wait_event(rx, "hello", Duration::from_secs(20));
    }
    // Read as a stream: were it accepted, it would never end.
    let head = |path: &str| {
        let rx = sse_lines(srv.addr, path);
        let mut lines = Vec::new();
        while let Ok(l) = rx.recv_timeout(Duration::from_secs(20)) {
            let last = l.contains("too many event streams") || l.starts_with("event:");
            lines.push(l);
            if last {
                break;
            }
        }
        lines.join("\n")
    };
    let refused = head("/events");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 10"),
        "{refused}"
    );
    assert!(refused.contains("too many event streams"), "{refused}");
    // A task's output stream counts against the same places.
    let out = head("/tasks/waits/output");
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    // Pages still come.
    assert_eq!(srv.get("/").status, 200);
    assert_eq!(srv.get("/api/overview").status, 200);
    // One stream goes: its place is free again once the server notices
    // (at its next write to it: an event, made here, or a keep-alive).
    let mut held = held;
    drop(held.remove(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    let accepted = loop {
        i += 1;
        root.write(
            &format!("tasks/pending/nudge-{i}.yaml"),
            "description: wake the streams\n",
        );
        let rx = events(srv.addr);
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a status line");
        if first.starts_with("HTTP/1.1 200") {
            break rx;
        }
        assert!(
            first.starts_with("HTTP/1.1 503") && Instant::now() < deadline,
            "the freed place was not given to a new stream: {first}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // Seven are still open, and the new one: no second place.
    let refused = head("/events");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    drop((held, accepted));
}

#[test]
fn an_event_stream_sees_a_task_move_within_a_second() {
    let root = Root::new();
    root.write("tasks/pending/mover.yaml", "description: Move me\n");
    let srv = Server::start(&root);
    let rx = events(srv.addr);
    wait_event(&rx, "hello", Duration::from_secs(10));
    // pending → running (assigned) → completed, as a supervisor moves it.
    std::fs::rename(
        root.p("tasks/pending/mover.yaml"),
        root.p("tasks/assigned/mover.yaml"),
    )
    .unwrap();
    let t1 = wait_event(&rx, "change", Duration::from_secs(1));
    assert_eq!(srv.json("/api/tasks/mover")["state"], "assigned");
    std::fs::rename(
        root.p("tasks/assigned/mover.yaml"),
        root.p("tasks/completed/mover.yaml"),
    )
    .unwrap();
    let t2 = wait_event(&rx, "change", Duration::from_secs(1));
    assert_eq!(srv.json("/api/overview")["counts"]["completed"], 1);
    eprintln!("change events {t1:?} and {t2:?} after the moves");
}

#[test]
fn the_overview_stays_fast_with_100000_tasks() {
    let root = Root::new();
    let n = 100_000;
    for i in 0..n {
        let st = if i % 10 == 0 { "completed" } else { "pending" };
        let body = if i % 1000 == 7 {
            "description: a rare needle\nlabels: [rare]\n"
        } else {
            "x\n"
        };
        std::fs::write(root.p(&format!("tasks/{st}/bulk-{i:06}.yaml")), body).unwrap();
    }
    let srv = Server::start(&root);
    let time = |path: &str| {
        let t = Instant::now();
        let v = srv.json(path);
        (t.elapsed(), v)
    };
    let (cold, o) = time("/api/overview");
    assert_eq!(o["counts"]["pending"], 90_000);
    assert_eq!(o["counts"]["completed"], 10_000);
    // The listing is cached while the directories do not change; the
    // kernel's coarse stamps need the directories to be 2 s old first.
    let settled = Instant::now() + Duration::from_millis(2100);
    while Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(50));
    }
    time("/api/overview");
    let (warm, _) = time("/api/overview");
    let (list, l) = time("/api/tasks?page=1000&per_page=50");
    assert_eq!(l["rows"].as_array().unwrap().len(), 50);
    let t = Instant::now();
    assert_eq!(srv.get("/").status, 200);
    let page = t.elapsed();
    // Searching descriptions reads every file once; then the index has them.
    let (search_cold, s) = time("/api/tasks?q=NEEDLE");
    assert_eq!(s["total"], 100, "{s}");
    let (search_warm, s) = time("/api/tasks?q=needle&label=rare&page=2&per_page=50");
    assert_eq!(s["total"], 100);
    assert_eq!(s["rows"].as_array().unwrap().len(), 50);
    eprintln!(
        "100000 tasks: overview cold {cold:?}, warm {warm:?}; list page 1000 {list:?}; overview page {page:?}; \
         description search cold {search_cold:?}, warm {search_warm:?}"
    );
    // It still `lstat`s every pending file (they may be edited in place), but
    // reads none again: faster than the cold search that read them all, on a
    // busy machine too (an absolute bound failed under the whole suite's
    // load). scripts/bench-serve.sh gives release figures.
    assert!(
        search_warm < search_cold,
        "a cached search took {search_warm:?}, the cold one {search_cold:?}"
    );
    // Generous for debug builds on a busy machine; the README gives release figures.
    assert!(warm < Duration::from_millis(1000), "overview took {warm:?}");
    assert!(
        list < Duration::from_millis(1000),
        "task list took {list:?}"
    );
}

/// Headless Chromium from Debian, if installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| PathBuf::from(d).join(b))
                .find(|p| p.is_file())
        })
}

fn browser(bin: &PathBuf, args: &[&str], url: &str) -> std::process::Output {
    let profile = std::env::temp_dir().join(format!("mailroom-chromium-{}", std::process::id()));
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url);
    run_bounded(c, Duration::from_secs(90))
}

#[test]
fn chromium_renders_the_overview_and_a_task_page() {
    let Some(bin) = chromium() else {
        require(false, "headless Chromium (apt-get install chromium)");
        return;
    };
    let root = sample();
    root.write(
        "tasks/pending/evil.yaml",
        "description: \"<script>document.title='pwned'</script><b>bold?</b>\"\n",
    );
    let srv = Server::start(&root);
    // No --virtual-time-budget: with the page's event stream open, virtual
    // time never runs out and Chromium never dumps.
    let dom = browser(&bin, &["--dump-dom"], &srv.url("/"));
    let html = stdout(&dom);
    assert!(
        html.contains("id=\"count-pending\""),
        "{}\n{}",
        html,
        stderr(&dom)
    );
    assert!(
        html.contains("<title>Overview · mailroom</title>"),
        "{html}"
    );
    let dom = browser(&bin, &["--dump-dom"], &srv.url("/tasks/evil"));
    let html = stdout(&dom);
    assert!(html.contains("id=\"description\""), "{html}");
    assert!(
        !html.contains("pwned</title>"),
        "the task's script ran: {html}"
    );
    assert!(html.contains("&lt;script&gt;document.title="), "{html}");
    assert!(!html.contains("<b>bold?</b>"), "{html}");
}

/// A tree where a claude-kind agent reported usage and cost for two tasks,
/// a plain agent finished one and a failing one failed one.
fn costly() -> Root {
    let answer = serde_json::json!({
        "type": "result", "subtype": "success", "is_error": false, "result": "done",
        "session_id": "sess-7", "total_cost_usd": 0.25,
        "usage": {"input_tokens": 100, "output_tokens": 40}
    })
    .to_string();
    let root = Root::new()
        .config(&format!(
            "retries: 0\nagents:\n  claude:\n    command: [{:?}]\n    kind: claude\n    env:\n      LIMIT_MSG: {answer:?}\n      LIMIT_EXIT: \"0\"\n  plain:\n    command: [{:?}]\n  broken:\n    command: [{:?}]\n",
            agent("limited.sh"),
            agent("ok.sh"),
            agent("fail.sh"),
        ))
        .task("u1.yaml", "description: one\nagent: claude\nlabels: [billing]\n")
        .task("u2.yaml", "description: two\nagent: claude\n")
        .task("u3.yaml", "description: three about invoices\nagent: plain\n")
        .task("u4.yaml", "description: four\nagent: broken\n");
    root.run_until_idle();
    root
}

#[test]
fn the_agents_page_sums_runs_success_durations_and_cost_per_day() {
    let root = costly();
    assert_eq!(root.names("completed"), ["u1", "u2", "u3"]);
    let srv = Server::start(&root);
    let a = srv.json("/api/agents");
    let row = |n: &str| {
        a["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no agent {n}: {a}"))
    };
    let claude = row("claude");
    assert_eq!(claude["finished"], 2, "{a}");
    assert_eq!(claude["completed"], 2);
    assert_eq!(claude["success_rate"], 1.0);
    assert_eq!(claude["usage"]["cost_usd"], 0.5);
    assert_eq!(claude["usage"]["input_tokens"], 200);
    assert!(claude["median_duration_ms"].is_u64(), "{claude}");
    let days = claude["days"].as_array().unwrap();
    assert_eq!(days.len(), 14);
    let today = days.last().unwrap();
    assert_eq!(
        (today["tasks"].as_u64(), today["cost_usd"].as_f64()),
        (Some(2), Some(0.5))
    );
    assert_eq!(
        today["day"],
        a["days"].as_array().unwrap().last().unwrap().clone()
    );
    let broken = row("broken");
    assert_eq!(
        (broken["finished"].as_u64(), broken["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(broken["success_rate"], 0.0);
    assert_eq!(row("plain")["usage"]["cost_usd"], serde_json::Value::Null);

    let page = srv.get("/agents");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"agent-claude\""), "{}", page.body);
    assert!(page.body.contains("$0.5000"), "{}", page.body);
    assert!(page.body.contains("0%") && page.body.contains("100%"));

    // The overview has today's usage; one more task is read incrementally.
    let o = srv.json("/api/overview");
    assert_eq!(o["today"]["tasks"], 4, "{o}");
    assert_eq!(o["today"]["cost_usd"], 0.5, "{o}");
    root.write(
        "tasks/pending/u5.yaml",
        "description: five\nagent: claude\n",
    );
    root.run_until_idle();
    let o = srv.json("/api/overview");
    assert_eq!(o["today"]["tasks"], 5, "{o}");
    assert_eq!(o["today"]["cost_usd"], 0.75, "{o}");
    assert!(srv.get("/").body.contains("id=\"today-cost\">$0.7500<"));
}

#[test]
fn the_overview_lists_live_and_dead_supervisors_from_their_heartbeats() {
    let root = Root::new().agent_config(&[&agent("hang.sh")], "");
    let srv = Server::start(&root);
    assert!(
        srv.json("/api/overview")["supervisors"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(srv.get("/").body.contains("id=\"no-supervisors\""));
    // A dead one from another host: its last beat is a minute old. One
    // whose last beat is years old is removed by the live supervisor.
    let beat = |host: &str, at: &str| {
        format!(
            r#"{{"host":"{host}","pid":4242,"start":1,"version":"0.0.9","protocol":2,"started_at":"{at}","last_beat":"{at}","running":0,"pending":0}}"#
        )
    };
    let minute_ago =
        mailroom::model::record::ts(std::time::SystemTime::now() - Duration::from_secs(60));
    root.write(
        "tasks/supervisors/far-away.4242.json",
        &beat("far-away", &minute_ago),
    );
    root.write(
        "tasks/supervisors/long-gone.4242.json",
        &beat("long-gone", "2020-01-01T00:00:05.000Z"),
    );
    let mut sup = root.spawn();
    wait_for(Duration::from_secs(20), "the old heartbeat to go", || {
        !root.exists("tasks/supervisors/long-gone.4242.json")
    });
    wait_for(Duration::from_secs(20), "a live heartbeat", || {
        srv.json("/api/overview")["supervisors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["pid"] == sup.pid() && s["alive"] == true)
    });
    let o = srv.json("/api/overview");
    let far = o["supervisors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == "far-away")
        .cloned()
        .unwrap();
    assert_eq!(far["alive"], false, "{o}");
    let me = o["supervisors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == sup.pid())
        .cloned()
        .unwrap();
    assert_eq!(me["version"], env!("CARGO_PKG_VERSION"));
    let page = srv.get("/").body;
    assert!(page.contains("id=\"supervisors\""), "{page}");
    assert!(
        page.contains("far-away") && page.contains(">gone<"),
        "{page}"
    );
    sup.signal(SIGTERM);
    sup.wait_exit(Duration::from_secs(30));
}

#[test]
fn the_task_list_filters_by_label_searches_descriptions_and_shows_usage() {
    let root = costly();
    let srv = Server::start(&root);
    let billing = srv.json("/api/tasks?label=billing");
    assert_eq!(billing["total"], 1, "{billing}");
    assert_eq!(billing["rows"][0]["name"], "u1");
    assert_eq!(srv.json("/api/tasks?label=nothing")["total"], 0);
    // "invoices" is only in u3's description; "u2" only in a name.
    let inv = srv.json("/api/tasks?q=INVOICES");
    assert_eq!(inv["total"], 1, "{inv}");
    assert_eq!(inv["rows"][0]["name"], "u3");
    assert_eq!(srv.json("/api/tasks?q=u2")["total"], 1);
    assert_eq!(srv.json("/api/tasks?q=one&label=billing")["total"], 1);
    assert_eq!(srv.json("/api/tasks?q=two&label=billing")["total"], 0);

    let all = srv.json("/api/tasks");
    let u1 = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "u1")
        .cloned()
        .unwrap();
    assert_eq!(u1["usage"]["cost_usd"], 0.25, "{u1}");
    assert_eq!(u1["usage"]["input_tokens"], 100, "{u1}");
    assert_eq!(u1["session_id"], "sess-7", "{u1}");
    let page = srv.get("/tasks?label=billing");
    assert!(page.body.contains("<th>Cost</th>"), "{}", page.body);
    assert!(page.body.contains("$0.2500"), "{}", page.body);
    assert!(
        page.body.contains(r#"<code title="sess-7">sess-7</code>"#),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"name="label" value="billing""#));
    // A task file rewritten in place is searched as it now reads.
    root.write("tasks/pending/fresh.yaml", "description: alpha\n");
    assert_eq!(srv.json("/api/tasks?q=alpha")["total"], 1);
    std::thread::sleep(Duration::from_millis(20)); // a later mtime, not a wait for a result
    root.write("tasks/pending/fresh.yaml", "description: beta\n");
    wait_for(Duration::from_secs(5), "the new description", || {
        srv.json("/api/tasks?q=beta")["total"] == 1
    });
}

/// The events of an SSE route: (event, data) pairs as they come.
fn sse(addr: SocketAddr, path: &str) -> std::sync::mpsc::Receiver<(String, String)> {
    let lines = sse_lines(addr, path);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ev = String::new();
        for l in lines {
            if let Some(e) = l.strip_prefix("event: ") {
                ev = e.to_owned();
            } else if let Some(d) = l.strip_prefix("data: ")
                && tx.send((std::mem::take(&mut ev), d.to_owned())).is_err()
            {
                break;
            }
        }
    });
    rx
}

/// The next event and its JSON data, within `within`.
fn next_event(
    rx: &std::sync::mpsc::Receiver<(String, String)>,
    within: Duration,
) -> (String, serde_json::Value) {
    let (e, d) = rx
        .recv_timeout(within)
        .unwrap_or_else(|_| panic!("no event within {within:?}"));
    let v = serde_json::from_str(&d).unwrap_or_else(|err| panic!("{e}: {d}: {err}"));
    (e, v)
}

#[test]
fn a_running_tasks_output_streams_live_and_the_stream_ends_with_the_run() {
    let scratch = Root::new();
    let slow = scratch.p("slow.sh");
    scratch.write(
        "slow.sh",
        "#!/bin/sh\necho 'first <line>'\nwhile [ ! -e \"$MAILROOM_ROOT/go\" ]; do sleep 0.05; done\necho second-line\n",
    );
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let root = Root::new()
        .agent_config(&[slow.to_str().unwrap()], "")
        .task("talk.yaml", "description: talk\n");
    let mut sup = root.spawn();
    wait_for(Duration::from_secs(20), "the task to run", || {
        root.exists("tasks/assigned/talk.run/1/stdout.log")
            && root
                .read("tasks/assigned/talk.run/1/stdout.log")
                .contains("first")
    });
    let srv = Server::start(&root);
    let page = srv.get("/tasks/talk");
    assert!(
        page.body
            .contains(r#"id="live-output" data-stream="/tasks/talk/output""#),
        "{}",
        page.body
    );
    assert!(page.body.contains("first &lt;line&gt;"), "{}", page.body);
    assert_eq!(
        srv.json("/api/tasks/talk")["live_output"],
        "/tasks/talk/output"
    );
    let rx = sse(srv.addr, "/tasks/talk/output");
    let (e, v) = next_event(&rx, Duration::from_secs(10));
    assert_eq!((e.as_str(), v.as_str()), ("reset", Some("first <line>\n")));
    root.write("go", "");
    let mut seen = String::new();
    loop {
        let (e, v) = next_event(&rx, Duration::from_secs(20));
        match e.as_str() {
            "append" => seen.push_str(v.as_str().unwrap()),
            "end" => break,
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(seen, "second-line\n");
    wait_for(Duration::from_secs(20), "the commit", || {
        root.exists("tasks/completed/talk.yaml")
    });
    let done = srv.get("/tasks/talk").body;
    assert!(!done.contains("live-output"), "{done}");
    assert_eq!(srv.get("/tasks/nobody/output").status, 404);
    assert_eq!(srv.get("/tasks/..%2Fx/output").status, 400);
    sup.signal(SIGTERM);
    sup.wait_exit(Duration::from_secs(30));
}

#[test]
fn a_worktree_runs_page_shows_its_diff_against_the_base() {
    let edit = agent("edit.sh");
    let config = format!(
        "agents:\n  coder:\n    command: [{edit:?}]\n    workspace: worktree\n    env: {{COMMIT: \"1\"}}\n"
    );
    let root = crate::workspace::repo(&config);
    let root = root.task("t1.yaml", "description: commit something\n");
    root.run_until_idle();
    let rec = root.record("completed", "t1");
    assert_eq!(rec["workspace"]["kind"], "worktree", "{rec}");
    let srv = Server::start(&root);
    let t = srv.json("/api/tasks/t1");
    let diff = t["diff"]["text"].as_str().unwrap_or_else(|| panic!("{t}"));
    assert!(diff.contains("+++ b/edited-by-t1.txt"), "{diff}");
    assert!(diff.contains("+t1"), "{diff}");
    assert_eq!(t["diff"]["truncated"], false);
    assert_eq!(rec["workspace"]["removed"], true, "from the branch: {rec}");
    let page = srv.get("/tasks/t1").body;
    assert!(page.contains(r#"<pre class="text" id="diff">"#), "{page}");
    // A worktree that is kept: its commits and its uncommitted changes.
    root.write(
        "mailroom.yaml",
        &format!("{config}worktree_cleanup: keep\n"),
    );
    root.write("tasks/pending/t2.yaml", "description: more\n");
    root.run_until_idle();
    let wt = root.p(".mailroom/worktrees/t2");
    assert!(wt.is_dir());
    std::fs::write(wt.join("README.md"), "the project <b>changed</b>\n").unwrap();
    let t = srv.json("/api/tasks/t2");
    let diff = t["diff"]["text"].as_str().unwrap_or_else(|| panic!("{t}"));
    assert!(
        diff.contains("+t2") && diff.contains("+the project <b>changed</b>"),
        "{diff}"
    );
    let page = srv.get("/tasks/t2").body;
    assert!(
        page.contains("+the project &lt;b&gt;changed&lt;/b&gt;"),
        "{page}"
    );
}

const TOKEN: &str = "s3cret-token-0123456789";

/// The CSRF value in a page's action forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no action form: {page}"));
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[test]
fn actions_need_the_token_a_session_with_csrf_and_post() {
    let root = sample();
    root.write("tasks/pending/victim.yaml", "description: cancel me\n");
    // Without a token: read-only, and it says so.
    let ro = Server::start(&root);
    let r = request_body(
        ro.addr,
        "POST",
        "/actions/cancel",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        "name=victim",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("read-only"), "{}", r.body);
    assert!(ro.get("/").body.contains("read-only view of"));
    drop(ro);

    root.write("token", &format!("{TOKEN}\n"));
    let srv = Server::start_with(&root, &["--token-file", root.p("token").to_str().unwrap()]);
    let post = |path: &str, headers: &[(&str, &str)], body: &str| {
        request_body(srv.addr, "POST", path, headers, body)
    };
    let bearer = format!("Bearer {TOKEN}");
    // No credentials, a wrong token, GET: refused, nothing changed.
    assert_eq!(post("/actions/cancel", &[], "name=victim").status, 403);
    assert_eq!(
        post(
            "/actions/cancel",
            &[("Authorization", "Bearer s3cret-token-0123456780")],
            "name=victim"
        )
        .status,
        403
    );
    assert_eq!(srv.get("/actions/cancel?name=victim").status, 405);
    assert!(root.exists("tasks/pending/victim.yaml"));
    let page = srv.get("/").body;
    assert!(
        page.contains(r#"id="sign-in""#) && !page.contains("name=\"csrf\""),
        "{page}"
    );

    // A script with the token: JSON answers.
    let r = post(
        "/actions/cancel",
        &[("Authorization", &bearer)],
        "name=victim",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"ok\":true"), "{}", r.body);
    assert_eq!(root.record("failed", "victim")["outcome"], "cancelled");
    let r = post(
        "/actions/cancel",
        &[("Authorization", &bearer)],
        "name=victim",
    );
    assert_eq!(r.status, 409, "already finished: {}", r.body);
    let r = post(
        "/actions/cancel",
        &[("Authorization", &bearer)],
        "name=..%2Fx",
    );
    assert!(
        r.status == 400 || r.status == 409,
        "{}: {}",
        r.status,
        r.body
    );
    let r = post(
        "/actions/add",
        &[("Authorization", &bearer)],
        "description=%3Cb%3Enew%3C%2Fb%3E+work&name=fresh",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        root.read("tasks/pending/fresh.yaml")
            .contains("<b>new</b> work")
    );
    // A task whose dependency failed is not retried alone.
    root.write("tasks/failed/dep.yaml", "description: x\nafter: [bad]\n");
    let r = post("/actions/retry", &[("Authorization", &bearer)], "name=dep");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body.contains("runs after `bad`, which failed"),
        "{}",
        r.body
    );
    std::fs::remove_file(root.p("tasks/failed/dep.yaml")).unwrap();
    let r = post("/actions/retry", &[("Authorization", &bearer)], "name=bad");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(root.exists("tasks/pending/bad.yaml"));
    let big = format!("description={}", "x".repeat(100 * 1024));
    assert_eq!(
        post("/actions/add", &[("Authorization", &bearer)], &big).status,
        413
    );

    // A browser: sign in, then forms with the CSRF value from the page.
    let r = post("/login", &[], "token=wrong-token-0123456789");
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none());
    // No body is no token, said as such (not a 415 for a missing type).
    let r = request_body(srv.addr, "POST", "/login", &[], "");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    let r = post("/login", &[], &format!("token={TOKEN}"));
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is a session, not the token"
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = request(srv.addr, "GET", "/", &[("Cookie", &cookie)]).body;
    let csrf = csrf_of(&page);
    assert!(page.contains(r#"id="do-pause""#), "{page}");
    fn with<'a>(cookie: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut h = vec![("Cookie", cookie)];
        h.extend_from_slice(extra);
        h
    }
    assert_eq!(
        post("/actions/pause", &with(&cookie, &[]), "agent=").status,
        403,
        "no CSRF value"
    );
    assert_eq!(
        post("/actions/pause", &with(&cookie, &[]), "csrf=0000").status,
        403
    );
    let origin = "http://evil.example";
    assert_eq!(
        post(
            "/actions/pause",
            &with(&cookie, &[("Origin", origin)]),
            &format!("csrf={csrf}")
        )
        .status,
        403
    );
    assert!(!root.exists("tasks/control/pause"));
    let r = post(
        "/actions/pause",
        &with(&cookie, &[]),
        &format!("csrf={csrf}"),
    );
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/")),
        "{}",
        r.body
    );
    assert!(root.exists("tasks/control/pause"));
    let page = request(srv.addr, "GET", "/", &[("Cookie", &cookie)]).body;
    assert!(page.contains(r#"id="do-resume""#), "{page}");
    let r = post(
        "/actions/resume",
        &with(&cookie, &[]),
        &format!("csrf={csrf}"),
    );
    assert_eq!(r.status, 303);
    assert!(!root.exists("tasks/control/pause"));
    // An agent the config does not have is not paused, and said so.
    let r = post(
        "/actions/pause",
        &with(&cookie, &[]),
        &format!("csrf={csrf}&agent=nope"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("no agent `nope` in mailroom.yaml"),
        "{}",
        r.body
    );
    assert!(!root.exists("tasks/control/pause.nope"));
    let task = request(srv.addr, "GET", "/tasks/fresh", &[("Cookie", &cookie)]).body;
    assert!(task.contains(r#"id="do-cancel""#), "{task}");
}

#[test]
fn an_action_without_a_form_body_is_refused_in_json_like_other_errors() {
    let root = sample();
    root.write("tasks/pending/victim.yaml", "description: keep me\n");
    root.write("token", &format!("{TOKEN}\n"));
    let srv = Server::start_with(&root, &["--token-file", root.p("token").to_str().unwrap()]);
    let bearer = format!("Bearer {TOKEN}");
    let big = format!("name={}", "x".repeat(100 * 1024));
    for (what, headers, body, status) in [
        // No body is the empty form: a cancel of no task.
        ("no body", vec![], "", 400),
        (
            "a JSON body",
            vec![("Content-Type", "application/json")],
            r#"{"name":"victim"}"#,
            415,
        ),
        ("a body over the limit", vec![], big.as_str(), 413),
        (
            "a field given twice",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            "name=victim&name=other",
            400,
        ),
    ] {
        let mut h = vec![("Authorization", bearer.as_str())];
        h.extend(headers);
        let r = request_body(srv.addr, "POST", "/actions/cancel", &h, body);
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{what}: {:?}",
            r.headers
        );
        let v: serde_json::Value =
            serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", r.body));
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
    }
    assert!(root.exists("tasks/pending/victim.yaml"));
    // A pause needs no field: `curl -X POST` without a body does it.
    for (path, paused) in [("/actions/pause", true), ("/actions/resume", false)] {
        let r = request_body(srv.addr, "POST", path, &[("Authorization", &bearer)], "");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.body.contains(r#""ok":true"#), "{path}: {}", r.body);
        assert_eq!(root.exists("tasks/control/pause"), paused, "{path}");
    }
}

#[test]
fn serve_in_the_config_runs_the_dashboard_inside_mailroom_run() {
    let root = Root::new();
    root.write("token", &format!("{TOKEN}\n"));
    root.write(
        "mailroom.yaml",
        &format!(
            "serve:\n  listen: 127.0.0.1:0\n  token_file: token\nagents:\n  h:\n    command: [{:?}]\n",
            agent("hang.sh")
        ),
    );
    root.write(
        "tasks/pending/long.yaml",
        "description: runs until cancelled\n",
    );
    let mut sup = root.spawn();
    let mut addr: Option<SocketAddr> = None;
    wait_for(
        Duration::from_secs(30),
        "the dashboard's address in the log",
        || {
            for f in root.entries("") {
                if f.starts_with("sup-") {
                    let log = root.read(&f);
                    if let Some(at) = log.find("dashboard on http://") {
                        let rest = &log[at + "dashboard on http://".len()..];
                        addr = rest[..rest.find('/').unwrap()].parse().ok();
                    }
                }
            }
            addr.is_some()
        },
    );
    let addr = addr.unwrap();
    let json = |path: &str| -> serde_json::Value {
        let r = request(addr, "GET", path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap()
    };
    wait_for(Duration::from_secs(20), "the task to run", || {
        json("/api/overview")["counts"]["assigned"] == 1
    });
    let sups = json("/api/overview")["supervisors"].clone();
    assert!(
        sups.as_array()
            .unwrap()
            .iter()
            .any(|s| s["pid"] == sup.pid() && s["alive"] == true),
        "{sups}"
    );
    // A cancel with the token stops the running agent.
    let r = request_body(
        addr,
        "POST",
        "/actions/cancel",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        "name=long",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(
        Duration::from_secs(30),
        "the cancelled task in failed/",
        || root.exists("tasks/failed/long.yaml"),
    );
    assert_eq!(root.record("failed", "long")["outcome"], "cancelled");
    sup.signal(SIGTERM);
    sup.wait_exit(Duration::from_secs(30));
    // The dashboard went with it. (With tests running in parallel, another
    // test's server may have been given the freed port: then it must not be
    // this tree's dashboard.)
    if TcpStream::connect(addr).is_ok() {
        let r = request(addr, "GET", "/api/overview", &[]);
        assert!(
            !r.body.contains(&format!("\"pid\":{}", sup.pid())),
            "the dashboard outlived its supervisor: {}",
            r.body
        );
    }
}

#[test]
fn status_shows_the_url_a_dashboard_on_port_0_is_bound_to() {
    let root = Root::new();
    root.write(
        "mailroom.yaml",
        &format!(
            "serve:\n  listen: 127.0.0.1:0\nagents:\n  a:\n    command: [{:?}]\n",
            agent("ok.sh")
        ),
    );
    let _sup = root.spawn();
    let mut url = String::new();
    wait_for(
        Duration::from_secs(30),
        "the supervisor's dashboard in status --json",
        || {
            let out = root.mailroom(&["status", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            match v["supervisors"][0]["dashboard"].as_str() {
                Some(u) => {
                    url = u.to_owned();
                    true
                }
                None => false,
            }
        },
    );
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|a| a.strip_suffix('/'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not a dashboard URL: {url}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{url}");
    // The port the OS chose, and the dashboard answers there.
    let r = request(addr, "GET", "/api/overview", &[]);
    assert_eq!(r.status, 200, "{url}: {}", r.body);
    let out = root.mailroom(&["status"]);
    assert!(
        stdout(&out).contains(&format!("dashboard on {url}")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_bad_serve_section_is_a_clear_config_error() {
    for (yaml, want) in [
        ("serve:\n  listen: nowhere\n", "serve.listen"),
        ("serve:\n  token: short\n", "at least 16"),
        (
            "serve:\n  token: aaaaaaaaaaaaaaaaaaaa\n  token_file: t\n",
            "not both",
        ),
        ("serve:\n  lisen: 127.0.0.1:1\n", "did you mean `listen`"),
    ] {
        let root = Root::new();
        root.write("mailroom.yaml", yaml);
        let out = root.mailroom(&["validate"]);
        assert!(!out.status.success(), "{yaml}");
        let err = format!("{}{}", stdout(&out), stderr(&out));
        assert!(err.contains(want), "{yaml}: {err}");
    }
}

/// Runs `probe` in the page every 20 ms until `done` holds for its
/// result; returns the result and how long it took.
fn poll_page(
    b: &crate::webdriver::Browser,
    what: &str,
    within: Duration,
    probe: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    loop {
        let v = b.eval(probe);
        if done(&v) {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "timed out waiting for {what}: last {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Headless Chromium and its WebDriver, or None (said loudly: see `require`).
fn chromium_and_driver() -> Option<(PathBuf, PathBuf)> {
    match (
        crate::webdriver::find(&["chromium", "chromium-browser", "google-chrome"]),
        crate::webdriver::find(&["chromedriver"]),
    ) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            require(
                false,
                "headless Chromium and its WebDriver (apt-get install chromium chromium-driver)",
            );
            None
        }
    }
}

/// A running task's output box follows the output from the bottom, as
/// `tail -f` does, also across the swaps of the page's <main> that every
/// change in the tree brings; scrolled up by the reader, it stays there.
#[test]
fn the_live_output_box_keeps_its_scroll_across_page_updates() {
    let Some((chromium, driver)) = chromium_and_driver() else {
        return;
    };
    let talk = "i=0; while :; do i=$((i+1)); echo \"line $i of a long run\"; sleep 0.01; done";
    let root = Root::new()
        .config(&format!(
            "settle: 100ms\nretries: 0\nconcurrency: 2\nagents:\n  talk:\n    command: [/bin/sh, -c, {talk:?}]\n    max_instances: 2\n"
        ))
        .task("talker.yaml", "description: talks\n");
    let _sup = root.spawn();
    wait_for(Duration::from_secs(20), "talker running", || {
        root.exists("tasks/assigned/talker.yaml")
    });
    let srv = Server::start(&root);
    let profile = root.p("chromium-profile");
    let b = crate::webdriver::Browser::start(&driver, &chromium, &profile);
    b.goto(&srv.url("/tasks/talker"));
    // [lines shown, at the bottom, scrollTop, <main>'s generation]
    let probe = "var el = document.getElementById('live-output'); \
                 var m = document.querySelector('main'); \
                 if (!el) return null; \
                 return [el.textContent.split('\\n').length, \
                         el.scrollTop + el.clientHeight >= el.scrollHeight - 4, \
                         el.scrollTop, Number(m.getAttribute('data-generation') || 0)];";
    let (v, _) = poll_page(
        &b,
        "an output longer than its box",
        Duration::from_secs(20),
        probe,
        |v| v[0].as_u64().is_some_and(|n| n > 150) && v[2].as_f64().is_some_and(|t| t > 0.0),
    );
    assert_eq!(v[1], true, "not following the output: {v}");
    // A change in the tree swaps <main>; then more output arrives.
    let swap_then_more = |before: &serde_json::Value| {
        let after = before[3].as_u64().unwrap();
        root.write(
            &format!("tasks/tmp/other{after}.yaml"),
            "description: other\nagent: talk\n",
        );
        std::fs::rename(
            root.p(&format!("tasks/tmp/other{after}.yaml")),
            root.p(&format!("tasks/pending/other{after}.yaml")),
        )
        .unwrap();
        let (swapped, _) = poll_page(&b, "<main> swapped", Duration::from_secs(20), probe, |v| {
            v[3].as_u64().is_some_and(|g| g > after)
        });
        poll_page(
            &b,
            "more output after the swap",
            Duration::from_secs(10),
            probe,
            |w| w[0].as_u64() > swapped[0].as_u64(),
        )
        .0
    };
    let v = swap_then_more(&v);
    assert_eq!(v[1], true, "the swap lost the bottom: {v}");
    // Scrolled up by the reader: it stays there through appends and swaps.
    b.eval("document.getElementById('live-output').scrollTop = 40; return true;");
    let v = swap_then_more(&v);
    assert_eq!(v[1], false, "dragged back to the bottom: {v}");
    assert_eq!(v[2].as_f64(), Some(40.0), "{v}");
    stop_runs_of(&root.path);
}

/// `pending/` removed and made anew under a running dashboard: its watch is
/// gone, and a search still sees a task file edited in place (the index
/// stamps pending files itself from then on; it kept trusting the lost
/// watch and served the old description).
#[test]
fn a_search_sees_an_edit_in_place_after_pending_was_made_anew() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "");
    let srv = Server::start(&root);
    let found = |q: &str| srv.json(&format!("/api/tasks?q={q}"))["total"] == 1;
    root.write("tasks/pending/x.yaml", "description: alpha\n");
    wait_for(Duration::from_secs(20), "alpha", || found("alpha"));
    root.write("tasks/pending/x.yaml", "description: beta\n");
    wait_for(Duration::from_secs(20), "beta, edited in place", || {
        found("beta")
    });
    std::fs::remove_dir_all(root.p("tasks/pending")).unwrap();
    std::fs::create_dir(root.p("tasks/pending")).unwrap();
    root.write("tasks/pending/x.yaml", "description: gamma\n");
    wait_for(
        Duration::from_secs(20),
        "gamma, in the new pending/",
        || found("gamma"),
    );
    root.write("tasks/pending/x.yaml", "description: delta\n");
    wait_for(
        Duration::from_secs(20),
        "delta, edited in place in the new pending/",
        || found("delta"),
    );
}

/// Idle connections to the dashboard of a running supervisor (`serve:`)
/// cannot use up its file descriptors: at most a quarter of its open-file
/// limit is accepted at once, and tasks go on being claimed and run. Before,
/// 150 connections under a limit of 128 left the supervisor unable to read
/// a task file.
#[test]
fn idle_dashboard_connections_cannot_starve_the_supervisor() {
    let root = Root::new().agent_config(&[&agent("ok.sh")], "serve:\n  listen: 127.0.0.1:0\n");
    let mut c = root.cmd(&["run"]);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 128,
                    rlim_max: 128,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let (_sup, log) = root.spawn_cmd(c);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(30), "the dashboard's address", || {
        read_log().contains("dashboard on http://")
    });
    let text = read_log();
    let at = text.find("dashboard on http://").unwrap() + "dashboard on http://".len();
    let addr: std::net::SocketAddr = text[at..].split('/').next().unwrap().parse().unwrap();
    // More idle connections than the supervisor has descriptors (beyond
    // the 32 accepted, the listen queue holds 128; more would block here).
    let held: Vec<std::net::TcpStream> = (0..150)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    root.write(
        "tasks/pending/during.yaml",
        "description: during the flood\n",
    );
    wait_for(Duration::from_secs(30), "the task to be filed", || {
        !root.names("completed").is_empty() || !root.names("failed").is_empty()
    });
    assert_eq!(
        root.names("completed"),
        ["during"],
        "{}\n{}",
        std::fs::read_to_string(root.p("tasks/failed/during.result.json")).unwrap_or_default(),
        read_log()
    );
    assert!(
        !read_log().contains("Too many open files"),
        "{}",
        read_log()
    );
    drop(held);
}

#[test]
fn a_browser_sees_a_task_appear_and_complete_without_a_reload_and_cancels_a_running_one() {
    let Some((chromium, driver)) = chromium_and_driver() else {
        return;
    };
    let answer = serde_json::json!({
        "type": "result", "subtype": "success", "is_error": false,
        "result": "## Done\n\nFixed the **login** bug; see `auth.rs`.",
        "session_id": "0f3c9a2e-sess", "total_cost_usd": 0.0421,
        "usage": {"input_tokens": 5120, "output_tokens": 830}
    })
    .to_string();
    let root = Root::new().config(&format!(
        "settle: 100ms\nrescan_interval: 1s\nretries: 0\ndefault_agent: claude\nagents:\n  claude:\n    command: [{:?}]\n    kind: claude\n    max_instances: 2\n    env:\n      LIMIT_MSG: {answer:?}\n      LIMIT_EXIT: \"0\"\n  shell:\n    command: [{:?}]\n  slow:\n    command: [{:?}]\n",
        agent("limited.sh"),
        agent("fail.sh"),
        agent("hang.sh"),
    ));
    root.write(
        "tasks/pending/fix-login.yaml",
        "description: Fix the login bug\nlabels: [auth]\n",
    );
    root.write(
        "tasks/pending/write-tests.yaml",
        "description: Tests for the login fix\nafter: [fix-login]\nparent: fix-login\n",
    );
    root.write(
        "tasks/pending/release-notes.yaml",
        "description: Release notes\nafter: [write-tests]\n",
    );
    root.write(
        "tasks/pending/flaky-deploy.yaml",
        "description: Deploy to staging\nagent: shell\n",
    );
    root.run_until_idle();
    root.write("token", &format!("{TOKEN}\n"));
    let srv = Server::start_with(&root, &["--token-file", root.p("token").to_str().unwrap()]);
    let mut sup = root.spawn();
    let profile = root.p("chromium-profile");
    let b = crate::webdriver::Browser::start(&driver, &chromium, &profile);

    // The task list, live: a task dropped into pending/ appears, then turns
    // completed, in the same document (the marker set before survives).
    root.write("tasks/control/pause", "");
    b.goto(&srv.url("/tasks"));
    let nav = b.eval("var n = performance.getEntriesByType('navigation')[0]; return [n.responseEnd - n.requestStart, n.domContentLoadedEventEnd - n.startTime, n.loadEventEnd - n.startTime];");
    poll_page(
        &b,
        "the live stream",
        Duration::from_secs(10),
        "return document.getElementById('live').className;",
        |v| v == "live on",
    );
    b.eval("window.__marker = 'same-document-7'; return true;");
    let probe = "var a = document.querySelector('main a[href=\"/tasks/dropped\"]'); \
                 return [window.__marker || null, a ? a.closest('tr').textContent : null];";
    let dropped_at = Instant::now();
    root.write(
        "tasks/tmp/dropped.yaml",
        "description: Dropped in by hand\n",
    );
    std::fs::rename(
        root.p("tasks/tmp/dropped.yaml"),
        root.p("tasks/pending/dropped.yaml"),
    )
    .unwrap();
    let (v, appeared) = poll_page(
        &b,
        "the dropped task's row",
        Duration::from_secs(10),
        probe,
        |v| v[1].as_str().is_some(),
    );
    assert_eq!(v[0], "same-document-7", "the page was reloaded: {v}");
    assert!(v[1].as_str().unwrap().contains("pending"), "{v}");
    let resumed_at = Instant::now();
    std::fs::remove_file(root.p("tasks/control/pause")).unwrap();
    let (v, completed) = poll_page(
        &b,
        "the dropped task completed",
        Duration::from_secs(30),
        probe,
        |v| v[1].as_str().is_some_and(|t| t.contains("completed")),
    );
    assert_eq!(v[0], "same-document-7", "the page was reloaded: {v}");
    let total = dropped_at.elapsed();
    eprintln!(
        "browser: /tasks loaded (request to response end, DOMContentLoaded, load) {nav} ms; \
         a dropped task appeared after {appeared:?}, turned completed {completed:?} after the \
         resume ({:?} in all, {:?} from the resume)",
        total,
        resumed_at.elapsed()
    );
    // How fast the row appeared is printed above, not asserted: with both
    // cores busy (the whole suite) a fixed bound failed a correct page. The
    // marker proves the row came live, without a reload, within the poll.

    // Sign in with the token, then cancel a running task from its page.
    root.write(
        "tasks/pending/long-job.yaml",
        "description: Runs until cancelled\nagent: slow\n",
    );
    wait_for(Duration::from_secs(20), "long-job running", || {
        root.exists("tasks/assigned/long-job.state.json")
            && root.exists("tasks/assigned/long-job.yaml")
    });
    b.goto(&srv.url("/"));
    assert_eq!(
        b.eval("return document.querySelector('#do-cancel, #do-add');"),
        serde_json::Value::Null
    );
    b.eval(&format!(
        "document.querySelector('form.login input[name=token]').value = '{TOKEN}'; \
         document.getElementById('sign-in').click(); return true;"
    ));
    poll_page(
        &b,
        "the signed-in overview",
        Duration::from_secs(10),
        "return !!document.getElementById('do-add');",
        |v| v == true,
    );
    b.goto(&srv.url("/tasks/long-job"));
    poll_page(
        &b,
        "the cancel button",
        Duration::from_secs(10),
        "return !!document.getElementById('do-cancel');",
        |v| v == true,
    );
    b.eval("window.__marker = 'before-cancel'; document.getElementById('do-cancel').click(); return true;");
    wait_for(
        Duration::from_secs(30),
        "the cancelled task in failed/",
        || root.exists("tasks/failed/long-job.yaml"),
    );
    assert_eq!(root.record("failed", "long-job")["outcome"], "cancelled");
    poll_page(
        &b,
        "the task page showing it failed",
        Duration::from_secs(10),
        "var h = document.querySelector('h1.task-name'); return h ? h.textContent : null;",
        |v| v.as_str().is_some_and(|t| t.contains("failed")),
    );

    // A screenshot of each page, kept with the build's temporary files.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    for (file, path) in [
        ("overview.png", "/"),
        ("tasks.png", "/tasks"),
        ("task.png", "/tasks/fix-login"),
        ("graph.png", "/graph"),
        ("agents.png", "/agents"),
    ] {
        b.goto(&srv.url(path));
        poll_page(
            &b,
            "the live stream",
            Duration::from_secs(10),
            "return document.getElementById('live').className;",
            |v| v == "live on",
        );
        let out = dir.join(file);
        b.screenshot(&out);
        eprintln!("screenshot of {path}: {}", out.display());
    }
    drop(b);
    sup.signal(SIGTERM);
    sup.wait_exit(Duration::from_secs(30));
}

/// `/metrics` speaks the Prometheus text format (checked by the same strict
/// parser as the textfile), computed from the tree with no supervisor
/// running: tasks by state, finished tasks by agent and outcome, their
/// durations, and the cost the CLIs reported.
#[test]
fn metrics_are_served_in_the_prometheus_format_from_the_tree() {
    let root = costly();
    let srv = Server::start(&root);
    let r = srv.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    let m = crate::metrics::parse(&r.body);
    let v = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no series {k} in:\n{}", r.body))
    };
    assert_eq!(v("mailroom_tasks{state=\"completed\"}"), 3.0);
    assert_eq!(v("mailroom_tasks{state=\"failed\"}"), 1.0);
    assert_eq!(v("mailroom_tasks{state=\"pending\"}"), 0.0);
    // Labelled by outcome, as the supervisor's textfile labels them.
    assert_eq!(
        v("mailroom_runs_total{agent=\"claude\",outcome=\"success\"}"),
        2.0
    );
    assert_eq!(
        v("mailroom_runs_total{agent=\"broken\",outcome=\"exit\"}"),
        1.0
    );
    assert_eq!(
        v("mailroom_run_duration_seconds_count{agent=\"claude\"}"),
        2.0
    );
    assert_eq!(v("mailroom_cost_usd_total{agent=\"claude\"}"), 0.5);
    assert_eq!(v("mailroom_paused"), 0.0);
    // Completed and failed count all time, as in the textfile: `clean`
    // empties the directories, not the counters.
    let out = root.mailroom(&["clean", "--failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.names("completed").is_empty());
    let r = srv.get("/metrics");
    let m = crate::metrics::parse(&r.body);
    assert_eq!(m["mailroom_tasks{state=\"completed\"}"], 3.0, "{}", r.body);
    assert_eq!(m["mailroom_tasks{state=\"failed\"}"], 1.0, "{}", r.body);
}

/// A task its own `delay:` holds is shown as held, with the time, on its
/// page (it looked stuck).
#[test]
fn the_task_page_says_until_when_its_delay_holds_a_task() {
    let root = Root::new()
        .agent_config(&["true"], "")
        .task("later.yaml", "description: x\ndelay: 1h\n")
        .task("now.yaml", "description: x\n");
    let srv = Server::start(&root);
    let later = srv.json("/api/tasks/later");
    let waiting = later["waiting"].as_str().unwrap_or_default();
    assert!(
        waiting.starts_with("held by its `delay: 1h` until 20"),
        "{later}"
    );
    assert!(srv.json("/api/tasks/now")["waiting"].is_null());
}

/// The overview's and `/metrics`' oldest pending task is the one that has
/// waited longest for a slot: a task its own `delay` still holds is left
/// out, and one whose `not_before` has passed waits from then. The task
/// list says which rows are held.
#[test]
fn the_longest_waiting_task_leaves_out_held_ones_and_the_list_says_they_are_held() {
    use std::time::{Duration, SystemTime};
    let nb = humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(3600));
    let root = Root::new()
        .agent_config(&["true"], "")
        .task("later.yaml", "description: x\ndelay: 1d\n")
        .task(
            "released.yaml",
            &format!("description: x\nnot_before: {nb}\n"),
        )
        .task("fresh.yaml", "description: x\n");
    let age = |f: &str, secs: u64| {
        std::fs::File::options()
            .write(true)
            .open(root.p(&format!("tasks/pending/{f}.yaml")))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    };
    age("later", 6 * 3600);
    age("released", 5 * 3600);
    age("fresh", 600);
    let srv = Server::start(&root);
    let o = srv.json("/api/overview");
    let old = &o["oldest_pending"];
    assert_eq!(old["name"], "released", "{o}");
    let waited = old["age_secs"].as_u64().unwrap();
    assert!((3590..3700).contains(&waited), "{o}");
    let m = crate::metrics::parse(&srv.get("/metrics").body);
    let g = m["mailroom_oldest_pending_age_seconds"];
    assert!((3590.0..3700.0).contains(&g), "{m:?}");
    let page = srv.get("/").body;
    assert!(page.contains("Longest waiting:"), "{page}");

    let rows = srv.json("/api/tasks?state=pending");
    let row = |n: &str| {
        rows["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no row {n}: {rows}"))
    };
    let held = row("later")["waiting"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        held.starts_with("held by its `delay: 1day` until 20"),
        "{rows}"
    );
    assert!(row("fresh")["waiting"].is_null(), "{rows}");
    assert!(srv.get("/tasks?state=pending").body.contains("held by its"));

    // Only held tasks left (one names its key with a YAML escape): nothing
    // waits, and the page says why.
    std::fs::remove_file(root.p("tasks/pending/released.yaml")).unwrap();
    std::fs::remove_file(root.p("tasks/pending/fresh.yaml")).unwrap();
    let tomorrow =
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(86400));
    root.write(
        "tasks/pending/escaped.yaml",
        &format!("description: x\n\"not\\x5fbefore\": {tomorrow}\n"),
    );
    age("escaped", 7 * 3600);
    wait_for(Duration::from_secs(30), "the listing to follow", || {
        srv.json("/api/overview")["counts"]["pending"] == 2
    });
    let o = srv.json("/api/overview");
    assert!(o["oldest_pending"].is_null(), "{o}");
    let page = srv.get("/").body;
    assert!(
        page.contains("None of the oldest pending tasks waits for a slot"),
        "{page}"
    );
    // A file written "in the future" (clock skew) waits from now.
    root.write("tasks/pending/skewed.yaml", "description: x\n");
    std::fs::File::options()
        .write(true)
        .open(root.p("tasks/pending/skewed.yaml"))
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the skewed file to be seen",
        || srv.json("/api/overview")["oldest_pending"]["name"] == "skewed",
    );
    let o = srv.json("/api/overview");
    assert!(
        o["oldest_pending"]["age_secs"].as_u64().unwrap() < 60,
        "{o}"
    );
}
