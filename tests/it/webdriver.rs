//! A minimal WebDriver client (W3C protocol, JSON over HTTP/1.1) for
//! Debian's chromedriver driving headless Chromium: new session, navigate,
//! run a script, take a screenshot. A few requests, so a few lines of HTTP
//! here rather than a WebDriver crate and its TLS stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// The first of these programs on PATH.
pub fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|b| {
        std::env::split_paths(&path)
            .map(|d| d.join(b))
            .find(|p| p.is_file())
    })
}

/// chromedriver and a Chromium session; both ended on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session
    /// whose profile lives in `profile`.
    pub fn start(driver: &Path, chromium: &Path, profile: &Path) -> Browser {
        // Its output goes to a file (never a pipe nobody drains), where
        // it says which port it took.
        std::fs::create_dir_all(profile).unwrap();
        let log = profile.join("chromedriver.out");
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let start = std::time::Instant::now();
        let port = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(p) = text
                .split("started successfully on port ")
                .nth(1)
                .and_then(|r| r.split('.').next())
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                break p;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromedriver printed no port within 60 s: {text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut b = Browser {
            driver: child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            profile: profile.to_path_buf(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--hide-scrollbars", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        eprintln!("webdriver: a Chromium session after {:?}", start.elapsed());
        b
    }

    /// One WebDriver command; returns its `value`, panicking on an error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(self.addr).unwrap();
        // Chromium can take minutes to start on a loaded machine.
        s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        // chromedriver may keep the connection open after its answer:
        // read the head, then as many bytes as Content-Length says.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let (head, body) = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "{method} {path}: the connection closed before an answer"
            );
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or_else(|| panic!("{method} {path}: no Content-Length: {head}"));
                let mut body = raw[end + 4..].to_vec();
                while body.len() < len {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "{method} {path}: the answer was cut short");
                    body.extend_from_slice(&buf[..n]);
                }
                body.truncate(len);
                break (head, String::from_utf8_lossy(&body).into_owned());
            }
        };
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {head}\n{body}"));
        let value = v["value"].clone();
        if let Some(err) = value.get("error") {
            panic!("{method} {path}: {err}: {}", value["message"]);
        }
        value
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Loads `url` and waits for it (the document's load event).
    pub fn goto(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` gives the result).
    pub fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// A PNG of the viewport, written to `to`.
    pub fn screenshot(&self, to: &Path) {
        let v = self.call("GET", &self.at("/screenshot"), None);
        let png = base64(v.as_str().expect("base64 text"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let s = std::mem::take(&mut self.session);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.call("DELETE", &format!("/session/{s}"), None)
            }));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A Chromium left behind by a driver that did not end its session:
        // found by its profile directory (ours alone), stopped by pid.
        let mark = format!("--user-data-dir={}", self.profile.display());
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if cmd.split(|b| *b == 0).any(|a| a == mark.as_bytes()) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

/// Standard base64 (with padding) to bytes.
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes_with_and_without_padding() {
    assert_eq!(base64("aGVsbG8="), b"hello");
    assert_eq!(base64("aGVsbG8h"), b"hello!");
    assert_eq!(base64("aA=="), b"h");
}
