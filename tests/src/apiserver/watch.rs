//! Watch streams: newline-delimited `{"type", "object"}` events from a resourceVersion on,
//! with synthetic ADDED events for the current state when started from `0` (or none, or
//! with `sendInitialEvents`), BOOKMARKs when asked, an `ERROR` event carrying a 410
//! `Expired` Status when the start is older than the kept history, and DELETED/ADDED when
//! an object leaves or enters the watch's selectors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::cluster::Cluster;
use super::object::Stored;
use super::resources::{RESOURCES, ResourceId};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::EventType;

/// Events read from the history under one lock, so a busy history cannot starve writers.
const BATCH: usize = 500;

/// What a watch asked for.
pub struct WatchRequest {
    pub resource: ResourceId,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `None` for `0` or absent: the current state first, as synthetic ADDED events.
    pub start: Option<u64>,
    /// `sendInitialEvents=true`: the current state first, then a BOOKMARK marking its end.
    pub initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub metadata_only: bool,
}

impl WatchRequest {
    fn selects(&self, object: &Stored) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == object.namespace)
            && self.labels.matches(&object.labels)
            && self.fields.matches(&object.fields)
    }

    fn object_json(&self, object: &Stored) -> String {
        if self.metadata_only {
            object.metadata_json()
        } else {
            object.full_json()
        }
    }

    fn line(&self, kind: &str, object: &Stored) -> String {
        format!(
            "{{\"type\":\"{kind}\",\"object\":{}}}\n",
            self.object_json(object)
        )
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> String {
        let r = &RESOURCES[self.resource];
        let (api_version, kind) = if self.metadata_only {
            ("meta.k8s.io/v1".to_string(), "PartialObjectMetadata")
        } else {
            (r.api_version(), r.kind)
        };
        let annotations = if initial_events_end {
            ",\"annotations\":{\"k8s.io/initial-events-end\":\"true\"}"
        } else {
            ""
        };
        format!(
            "{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":\"{kind}\",\"apiVersion\":\"{api_version}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"{annotations}}}}}}}\n"
        )
    }
}

/// What a write looks like to a watch with selectors: `before` and `now` say whether the
/// object matched before a MODIFIED and after the write. `None`: the watch sees nothing.
fn event_type(kind: EventType, before: Option<bool>, now: bool) -> Option<&'static str> {
    match (kind, before, now) {
        (EventType::Added, _, true) => Some("ADDED"),
        (EventType::Deleted, _, true) => Some("DELETED"),
        (EventType::Modified, Some(true), true) => Some("MODIFIED"),
        (EventType::Modified, Some(false) | None, true) => Some("ADDED"),
        (EventType::Modified, Some(true), false) => Some("DELETED"),
        _ => None,
    }
}

fn expired_line(too_old: u64, oldest: u64) -> String {
    let status =
        ApiError::expired(format!("too old resource version: {too_old} ({oldest})")).to_status();
    format!("{{\"type\":\"ERROR\",\"object\":{status}}}\n")
}

type Chunk = Result<Frame<Bytes>, Infallible>;

/// Starts the watch on the current runtime; its events as a response body stream, which
/// ends at `timeoutSeconds`, on an expired start, or when the client goes away.
pub fn start(cluster: Arc<Cluster>, request: WatchRequest) -> impl Stream<Item = Chunk> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(run(cluster, request, tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok(Frame::data(bytes)), rx))
    })
}

async fn run(cluster: Arc<Cluster>, request: WatchRequest, tx: mpsc::Sender<Bytes>) {
    let deadline = request.timeout.map(|t| Instant::now() + t);
    let mut changed = cluster.subscribe();
    let snapshot = request.start.is_none() || request.initial_events;
    let start = {
        let store = cluster.read();
        match request.start {
            Some(start) if start < store.compacted() => Err((start, store.compacted())),
            _ if snapshot => Ok((
                store
                    .list(
                        request.resource,
                        request.namespace.as_deref(),
                        None,
                        None,
                        |o| request.selects(o),
                    )
                    .0,
                store.resource_version(),
            )),
            start => Ok((Vec::new(), start.unwrap_or_default())),
        }
    };
    let (initial, mut cursor) = match start {
        Ok(start) => start,
        Err((too_old, oldest)) => {
            let _ = tx.send(Bytes::from(expired_line(too_old, oldest))).await;
            return;
        }
    };
    for chunk in initial.chunks(BATCH) {
        let text: String = chunk.iter().map(|o| request.line("ADDED", o)).collect();
        if tx.send(Bytes::from(text)).await.is_err() {
            return;
        }
    }
    if request.initial_events && request.bookmarks {
        let _ = tx.send(Bytes::from(request.bookmark(cursor, true))).await;
    }
    let mut next_bookmark = Instant::now();
    loop {
        // Deliver whatever is new since `cursor`.
        loop {
            let batch = cluster.read().events_after(cursor, BATCH);
            let (events, new_cursor) = match batch {
                Ok(batch) => batch,
                Err(oldest) => {
                    let _ = tx.send(Bytes::from(expired_line(cursor, oldest))).await;
                    return;
                }
            };
            cursor = new_cursor;
            let mut text = String::new();
            for event in &events {
                if event.object.resource != request.resource {
                    continue;
                }
                let now = request.selects(&event.object);
                let before = event.previous.as_deref().map(|p| request.selects(p));
                let Some(kind) = event_type(event.kind, before, now) else {
                    continue;
                };
                text.push_str(&request.line(kind, &event.object));
            }
            if !text.is_empty() && tx.send(Bytes::from(text)).await.is_err() {
                return;
            }
            if events.len() < BATCH {
                break;
            }
        }
        let bookmark_at = if request.bookmarks {
            next_bookmark
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        let wake = match deadline {
            Some(d) if d < bookmark_at => d,
            _ => bookmark_at,
        };
        tokio::select! {
            changed = changed.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = sleep_until(wake) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                if request.bookmarks && Instant::now() >= next_bookmark {
                    if tx.send(Bytes::from(request.bookmark(cursor, false))).await.is_err() {
                        return;
                    }
                    next_bookmark = Instant::now() + cluster.bookmark_interval();
                }
            }
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_entering_or_leaving_the_selector_are_added_or_deleted() {
        assert_eq!(
            event_type(EventType::Modified, Some(true), true),
            Some("MODIFIED")
        );
        assert_eq!(
            event_type(EventType::Modified, Some(false), true),
            Some("ADDED")
        );
        assert_eq!(
            event_type(EventType::Modified, Some(true), false),
            Some("DELETED")
        );
        assert_eq!(event_type(EventType::Modified, Some(false), false), None);
        assert_eq!(event_type(EventType::Added, None, false), None);
        assert_eq!(event_type(EventType::Deleted, None, true), Some("DELETED"));
    }

    #[test]
    fn an_expired_start_is_an_error_event_with_a_410_status() {
        let line = expired_line(5, 1200);
        let event: serde_json::Value = serde_json::from_str(line.trim_end()).expect("JSON");
        assert_eq!(event["type"], "ERROR");
        assert_eq!(event["object"]["code"], 410);
        assert_eq!(event["object"]["reason"], "Expired");
        assert_eq!(
            event["object"]["message"],
            "too old resource version: 5 (1200)"
        );
    }
}
