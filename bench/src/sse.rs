//! Reading the registry's `/v1/watch` server-sent events, for the probes.

use std::time::Instant;

use anyhow::bail;
use http_body_util::BodyExt;
use hyper::Method;
use tokio::sync::mpsc;

use crate::client::Connection;

/// What a watcher parsed from one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The stream's first event.
    Hello,
    /// A `change` event: its `kind` (`registered`, `cancelled`, ...) and `instance_id`.
    Change { kind: String, instance_id: String },
}

/// The length of the first complete event in `buffer`, blank line included.
pub fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|pair| pair == b"\n\n").map(|at| at + 2)
}

/// A `hello` or a `change` with an `instance_id`; `None` for anything else
/// (keep-alive comments, `resync`).
pub fn parse_event(event: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(event).ok()?;
    let mut kind = "message";
    let mut data = String::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    match kind {
        "hello" => Some(Event::Hello),
        "change" => {
            let change: serde_json::Value = serde_json::from_str(&data).ok()?;
            Some(Event::Change {
                kind: change.get("kind")?.as_str()?.to_owned(),
                instance_id: change.get("instance_id")?.as_str()?.to_owned(),
            })
        }
        _ => None,
    }
}

/// Opens `GET /v1/watch` on `authority` and spawns a task that sends every parsed
/// event, tagged with `watcher` and the moment its bytes arrived, to `events`. The task
/// ends when the stream ends, the receiver is dropped, or it is aborted.
pub async fn spawn_watcher(
    authority: &str,
    watcher: usize,
    events: mpsc::UnboundedSender<(usize, Event, Instant)>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut connection = Connection::open(authority).await?;
    let response = connection.start(Method::GET, "/v1/watch", None).await?;
    if !response.status().is_success() {
        bail!("GET /v1/watch on {authority} answered {}", response.status());
    }
    Ok(tokio::spawn(async move {
        // Keep the connection's sender alive as long as the stream is read.
        let _connection = connection;
        let mut body = response.into_body();
        let mut buffer = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let at = Instant::now();
            buffer.extend_from_slice(data);
            while let Some(end) = find_event_end(&buffer) {
                let event: Vec<u8> = buffer.drain(..end).collect();
                if let Some(event) = parse_event(&event)
                    && events.send((watcher, event, at)).is_err()
                {
                    return;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_changes_and_ignores_other_events() {
        let cancel = b"event: change\nid: 7\ndata: {\"index\":7,\"kind\":\"cancelled\",\"app\":\"A\",\"instance_id\":\"i-3\"}\n\n";
        assert_eq!(
            parse_event(cancel),
            Some(Event::Change {
                kind: "cancelled".to_owned(),
                instance_id: "i-3".to_owned()
            })
        );
        let registered = b"event: change\ndata: {\"kind\":\"registered\",\"instance_id\":\"p-1\"}\n\n";
        assert!(matches!(parse_event(registered), Some(Event::Change { kind, .. }) if kind == "registered"));
        assert_eq!(
            parse_event(b"event: hello\nid: 1\ndata: {\"index\":1}\n\n"),
            Some(Event::Hello)
        );
        assert!(parse_event(b": keep-alive\n\n").is_none());
        assert!(parse_event(b"event: resync\ndata: {\"index\":9}\n\n").is_none());
    }

    #[test]
    fn finds_where_the_first_event_ends() {
        assert_eq!(find_event_end(b"event: a\n\nevent: b"), Some(10));
        assert_eq!(find_event_end(b"event: a\n"), None);
    }
}
