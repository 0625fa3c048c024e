//! Push: blocking queries and server-sent event streams of changes.
//!
//! A blocking query (`?index=N&wait=30s`) returns as soon as the version passes `N`,
//! or when the wait ends. A watch stream first replays the changes after the caller's
//! last seen index (`?index=N` or `Last-Event-ID`) and then sends each change as it is
//! committed. When the registry can no longer replay what a watcher missed (the log
//! was pruned, or the watcher fell behind), it sends a `resync` event and the watcher
//! must fetch the whole registry again.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream;
use futures_util::{Stream, StreamExt};
use rtalpha_proto::registry::Change;
use rtalpha_runtime::ApiError;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::server::AppState;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Parses a `wait` such as `30s` or `500ms`, capped at the configured maximum.
pub fn parse_wait(wait: Option<&str>, max: Duration) -> Result<Option<Duration>, ApiError> {
    let Some(text) = wait else { return Ok(None) };
    let parsed = humantime_serde::re::humantime::parse_duration(text)
        .map_err(|err| ApiError::bad_request(format!("query parameter `wait`: {err}")))?;
    Ok(Some(parsed.min(max)))
}

/// Waits until `current()` passes `index`, the wait ends, or the registry shuts down.
pub async fn block_until_past(state: &AppState, index: u64, wait: Duration, current: impl Fn() -> u64) {
    let mut versions = state.table.version_watch();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    while current() <= index {
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            () = &mut deadline => return,
            () = state.shutdown.cancelled() => return,
        }
    }
}

struct WatchState {
    backlog: std::vec::IntoIter<Arc<Change>>,
    receiver: broadcast::Receiver<Arc<Change>>,
    app: Option<String>,
    last_sent: u64,
    resync_pending: Option<u64>,
    state: AppState,
}

/// The SSE stream of changes, of the whole registry or of one app.
pub fn stream(
    state: AppState,
    app: Option<String>,
    since: Option<u64>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let crate::table::Subscription {
        receiver,
        backlog,
        index,
    } = state.table.subscribe(since);
    let (backlog, resync_pending) = match backlog {
        Some(changes) => (changes, None),
        None => (Vec::new(), Some(index)),
    };
    let watch = WatchState {
        backlog: backlog.into_iter(),
        receiver,
        app,
        last_sent: since.unwrap_or(index),
        resync_pending,
        state,
    };
    let hello = Event::default()
        .event("hello")
        .id(index.to_string())
        .data(format!("{{\"index\":{index}}}"));
    let events = stream::once(async move { Ok(hello) }).chain(stream::unfold(watch, next_event));
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn resync_event(index: u64) -> Event {
    Event::default()
        .event("resync")
        .id(index.to_string())
        .data(format!("{{\"index\":{index}}}"))
}

fn change_event(change: &Change) -> Event {
    let data = serde_json::to_string(change).unwrap_or_default();
    Event::default().event("change").id(change.index.to_string()).data(data)
}

async fn next_event(mut watch: WatchState) -> Option<(Result<Event, Infallible>, WatchState)> {
    if let Some(index) = watch.resync_pending.take() {
        watch.last_sent = index;
        return Some((Ok(resync_event(index)), watch));
    }
    loop {
        let change = match watch.backlog.next() {
            Some(change) => change,
            None => {
                tokio::select! {
                    received = watch.receiver.recv() => match received {
                        Ok(change) => change,
                        Err(RecvError::Lagged(_)) => {
                            // The watcher fell too far behind: what it missed is gone from the
                            // channel, so it must start over from a full fetch.
                            let index = watch.state.table.index();
                            watch.receiver = watch.receiver.resubscribe();
                            watch.last_sent = index;
                            return Some((Ok(resync_event(index)), watch));
                        }
                        Err(RecvError::Closed) => return None,
                    },
                    () = watch.state.shutdown.cancelled() => return None,
                }
            }
        };
        // Send each index once, in order, whatever a resubscription replays.
        if change.index <= watch.last_sent {
            continue;
        }
        if watch.app.as_ref().is_some_and(|app| *app != change.app) {
            watch.last_sent = watch.last_sent.max(change.index);
            continue;
        }
        watch.last_sent = change.index;
        return Some((Ok(change_event(&change)), watch));
    }
}
