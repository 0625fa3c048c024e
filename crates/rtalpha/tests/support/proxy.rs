//! A fault-injecting TCP proxy for partition tests: it passes bytes through, cuts the
//! link (refusing and closing every connection), or answers HTTP requests itself with
//! an empty success so that what was sent is lost after an acknowledgement.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward both ways.
    Pass = 0,
    /// Close every connection at once: a partition.
    Cut = 1,
    /// Read each request and answer `200 {"results":[]}` without forwarding it.
    AckAndDrop = 2,
}

/// A proxy listening on loopback in front of `target`.
pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    /// Bumped on every mode change: connections of an older generation close.
    generation: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("address").port();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let generation = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (m, g, d) = (mode.clone(), generation.clone(), dropped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (m, g, d) = (m.clone(), g.clone(), d.clone());
                std::thread::spawn(move || serve(client, target, &m, &g, &d));
            }
        });
        Proxy {
            port,
            mode,
            generation,
            dropped,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Requests answered without forwarding.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

fn mode_of(mode: &AtomicU8) -> Mode {
    match mode.load(Ordering::SeqCst) {
        1 => Mode::Cut,
        2 => Mode::AckAndDrop,
        _ => Mode::Pass,
    }
}

fn serve(client: TcpStream, target: u16, mode: &AtomicU8, generation: &Arc<AtomicU64>, dropped: &AtomicU64) {
    let born = generation.load(Ordering::SeqCst);
    match mode_of(mode) {
        Mode::Cut => {
            let _ = client.shutdown(Shutdown::Both);
        }
        Mode::AckAndDrop => acknowledge_and_drop(client, dropped),
        Mode::Pass => {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                let _ = client.shutdown(Shutdown::Both);
                return;
            };
            let (c2, u2) = (client.try_clone(), upstream.try_clone());
            let (Ok(c2), Ok(u2)) = (c2, u2) else { return };
            let g = generation.clone();
            let forward = std::thread::spawn(move || pump(client, upstream, born, &g));
            pump(u2, c2, born, generation);
            let _ = forward.join();
        }
    }
}

/// Copies `from` to `to` until either closes or the mode changes.
fn pump(mut from: TcpStream, mut to: TcpStream, born: u64, generation: &AtomicU64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if generation.load(Ordering::SeqCst) != born {
            break;
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            // Bytes read across a mode change belong to the new mode: a
            // request sent on a pooled connection just after the change must
            // not slip through, so it is dropped with the connection.
            Ok(_) if generation.load(Ordering::SeqCst) != born => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn acknowledge_and_drop(mut client: TcpStream, dropped: &AtomicU64) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    // Read the head, then as much body as content-length says.
    loop {
        match client.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    dropped.fetch_add(1, Ordering::SeqCst);
    let body = r#"{"results":[]}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes());
    let _ = client.shutdown(Shutdown::Both);
}
