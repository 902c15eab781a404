//! A tiny HTTP/1.1 server on 127.0.0.1 for the image tests: one request per connection, with
//! knobs for everything a bad mirror does — no Range support, cut connections, 404/500,
//! redirects, an HTML page with 200, throttling, a body that drips, an endless body without a
//! length — and a log of every request it saw (with its Authorization header).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct File {
    pub body: Arc<Vec<u8>>,
    pub etag: Option<String>,
    pub ranges: bool,
    /// The next this-many responses stop after half of their body.
    pub cut_first: usize,
    /// The next this-many requests get a 500.
    pub fail_first: usize,
    /// Says `Accept-Ranges: bytes` but answers every request with the whole file.
    pub ignores_ranges: bool,
}

#[derive(Debug, Clone)]
pub enum Route {
    File(File),
    Status(u16),
    Redirect(String),
    Html,
    /// Announces `len` bytes, then sends one every `every` (never a validator).
    Drip {
        len: usize,
        every: Duration,
    },
    /// Zeros without a Content-Length, until the client hangs up.
    Endless,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    seen: Mutex<Vec<Seen>>,
    /// Bytes per second per connection; 0 = unlimited.
    throttle: AtomicU64,
    /// Body bytes sent, per path.
    sent: Mutex<HashMap<String, u64>>,
}

pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Server {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let state = Arc::clone(&shared);
                thread::spawn(move || handle(stream, &state));
            }
        });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn route(&self, path: &str, route: Route) {
        self.state
            .routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), route);
    }

    pub fn throttle(&self, bytes_per_second: u64) {
        self.state
            .throttle
            .store(bytes_per_second, Ordering::SeqCst);
    }

    pub fn seen(&self, path: &str) -> Vec<Seen> {
        let seen = self.state.seen.lock().expect("seen");
        seen.iter().filter(|s| s.path == path).cloned().collect()
    }

    /// Body bytes sent for `path`, over all its responses.
    pub fn bytes_sent(&self, path: &str) -> u64 {
        let sent = self.state.sent.lock().expect("sent");
        sent.get(path).copied().unwrap_or(0)
    }

    /// Responses that carried the whole body from byte 0.
    pub fn full_downloads(&self, path: &str) -> usize {
        self.seen(path).iter().filter(|s| s.status == 200).count()
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
    cut: bool,
}

fn handle(mut stream: TcpStream, state: &State) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let range = headers.get("range").cloned();
    let if_range = headers.get("if-range").cloned();
    let seen = |status| Seen {
        path: path.clone(),
        range: range.clone(),
        if_range: if_range.clone(),
        authorization: headers.get("authorization").cloned(),
        status,
    };
    let special = state.routes.lock().expect("routes").get(&path).cloned();
    match special {
        Some(Route::Drip { len, every }) => {
            state.seen.lock().expect("seen").push(seen(200));
            return drip(stream, len, every);
        }
        Some(Route::Endless) => {
            state.seen.lock().expect("seen").push(seen(200));
            return endless(stream);
        }
        _ => {}
    }
    let reply = decide(state, &path, range.as_deref(), if_range.as_deref());
    state.seen.lock().expect("seen").push(seen(reply.status));
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.range.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let body = &reply.body[reply.range.clone()];
    let body = if reply.cut {
        &body[..body.len() / 2]
    } else {
        body
    };
    for chunk in body.chunks(64 << 10) {
        if stream.write_all(chunk).is_err() {
            return;
        }
        *state
            .sent
            .lock()
            .expect("sent")
            .entry(path.clone())
            .or_default() += chunk.len() as u64;
        let rate = state.throttle.load(Ordering::SeqCst);
        if rate > 0 {
            thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64));
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

fn drip(mut stream: TcpStream, len: usize, every: Duration) {
    let head = format!("HTTP/1.1 200 X\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    for _ in 0..len {
        thread::sleep(every);
        if stream.write_all(&[0]).is_err() {
            return;
        }
    }
}

fn endless(mut stream: TcpStream) {
    let head = "HTTP/1.1 200 X\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let zeros = vec![0u8; 64 << 10];
    while stream.write_all(&zeros).is_ok() {}
}

fn decide(state: &State, path: &str, range: Option<&str>, if_range: Option<&str>) -> Reply {
    let mut routes = state.routes.lock().expect("routes");
    let empty = |status| Reply {
        status,
        headers: Vec::new(),
        body: Arc::new(Vec::new()),
        range: 0..0,
        cut: false,
    };
    let Some(route) = routes.get_mut(path) else {
        return empty(404);
    };
    match route {
        Route::Status(status) => empty(*status),
        Route::Redirect(to) => Reply {
            headers: vec![("Location".into(), to.clone())],
            ..empty(302)
        },
        Route::Drip { .. } | Route::Endless => empty(500),
        Route::Html => {
            let page = b"<!DOCTYPE html>\n<html><body>Please log in</body></html>\n".to_vec();
            Reply {
                status: 200,
                headers: vec![("Content-Type".into(), "text/html".into())],
                range: 0..page.len(),
                body: Arc::new(page),
                cut: false,
            }
        }
        Route::File(file) => {
            if file.fail_first > 0 {
                file.fail_first -= 1;
                return empty(500);
            }
            let cut = file.cut_first > 0;
            if cut {
                file.cut_first -= 1;
            }
            let len = file.body.len();
            let mut headers = Vec::new();
            if let Some(etag) = &file.etag {
                headers.push(("ETag".into(), etag.clone()));
            }
            if file.ranges {
                headers.push(("Accept-Ranges".into(), "bytes".into()));
            }
            // `bytes=A-` or `bytes=A-B`.
            let asked = range
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| {
                    let start = a.parse::<usize>().ok()?;
                    let end = match b {
                        "" => len,
                        b => b.parse::<usize>().ok()?.saturating_add(1).min(len),
                    };
                    Some(start..end)
                })
                .filter(|_| file.ranges && !file.ignores_ranges)
                .filter(|_| if_range.is_none() || if_range == file.etag.as_deref())
                .filter(|r| r.start < r.end);
            match asked {
                Some(asked) => {
                    headers.push((
                        "Content-Range".into(),
                        format!("bytes {}-{}/{len}", asked.start, asked.end - 1),
                    ));
                    Reply {
                        status: 206,
                        headers,
                        body: Arc::clone(&file.body),
                        range: asked,
                        cut,
                    }
                }
                None => Reply {
                    status: 200,
                    headers,
                    body: Arc::clone(&file.body),
                    range: 0..len,
                    cut,
                },
            }
        }
    }
}
