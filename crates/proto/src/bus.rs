//! Bus events in Spring Cloud Bus's JSON, so that Spring Boot services on the same
//! broker take part. Spring's consumers reject unknown fields, so these carry exactly
//! Spring's. The one event of our own, [`RemoteEvent::CacheInvalidation`], shares the
//! JSON shape and the relay but never Spring's exchange (see [`crate::cache`]).

use serde::{Deserialize, Serialize};

/// The exchange (topic) Spring Cloud Bus uses on RabbitMQ, and its routing key.
pub const SPRING_BUS_DESTINATION: &str = "springCloudBus";

/// The fully qualified Java class of a refresh event, as acknowledgements name it.
pub const REFRESH_EVENT_CLASS: &str = "org.springframework.cloud.bus.event.RefreshRemoteApplicationEvent";

/// An event on the bus, by Spring's `type` discriminator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum RemoteEvent {
    /// Services matching `destination_service` re-read their configuration.
    RefreshRemoteApplicationEvent {
        /// Milliseconds since the epoch.
        timestamp: u64,
        /// The bus id of the sender, `app:port:random`.
        origin_service: String,
        /// Who should act: `**`, `app:**`, `app:port:**`.
        destination_service: String,
        /// A unique id.
        id: String,
    },
    /// A service acknowledges an event it acted on.
    AckRemoteApplicationEvent {
        /// Milliseconds since the epoch.
        timestamp: u64,
        /// The acknowledging service's bus id.
        origin_service: String,
        /// Who should hear the acknowledgement (`**`).
        destination_service: String,
        /// A unique id.
        id: String,
        /// The id of the event acknowledged.
        ack_id: String,
        /// The destination of the event acknowledged.
        ack_destination_service: String,
        /// The Java class of the event acknowledged.
        event: String,
    },
    /// rtalpha's own: a cache invalidation between instances of one service. Not a
    /// Spring event; over RabbitMQ it travels on [`crate::cache::CACHE_EXCHANGE`].
    CacheInvalidation(crate::cache::CacheInvalidation),
}

impl RemoteEvent {
    /// The sender's bus id.
    pub fn origin(&self) -> &str {
        match self {
            RemoteEvent::RefreshRemoteApplicationEvent { origin_service, .. }
            | RemoteEvent::AckRemoteApplicationEvent { origin_service, .. } => origin_service,
            RemoteEvent::CacheInvalidation(invalidation) => &invalidation.origin_service,
        }
    }

    /// The destination pattern.
    pub fn destination(&self) -> &str {
        match self {
            RemoteEvent::RefreshRemoteApplicationEvent {
                destination_service, ..
            }
            | RemoteEvent::AckRemoteApplicationEvent {
                destination_service, ..
            } => destination_service,
            RemoteEvent::CacheInvalidation(invalidation) => &invalidation.destination_service,
        }
    }
}

/// Spring's normalisation of a destination: empty is `**`; `app` and `app:port` get
/// `:**` appended.
pub fn normalize_destination(destination: &str) -> String {
    let destination = destination.trim();
    if destination.is_empty() || destination == "**" {
        return "**".to_owned();
    }
    if destination.matches(':').count() <= 1 && !destination.ends_with(":**") {
        return format!("{destination}:**");
    }
    destination.to_owned()
}

/// Whether a destination pattern (Ant-style, `:` between segments, `**` any number of
/// segments, `*` and `?` within one) matches a bus id such as `user-service:9100:abc`.
pub fn destination_matches(pattern: &str, bus_id: &str) -> bool {
    let pattern: Vec<&str> = pattern.split(':').collect();
    let id: Vec<&str> = bus_id.split(':').collect();
    segments_match(&pattern, &id)
}

fn segments_match(pattern: &[&str], id: &[&str]) -> bool {
    match pattern.split_first() {
        None => id.is_empty(),
        Some((&"**", rest)) => (0..=id.len()).any(|skip| segments_match(rest, &id[skip..])),
        Some((first, rest)) => match id.split_first() {
            Some((segment, id_rest)) => glob(first, segment) && segments_match(rest, id_rest),
            None => false,
        },
    }
}

fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_have_springs_exact_json() {
        let refresh = RemoteEvent::RefreshRemoteApplicationEvent {
            timestamp: 1,
            origin_service: "config-server:8888:a".into(),
            destination_service: "user-service:**".into(),
            id: "e1".into(),
        };
        assert_eq!(
            serde_json::to_value(&refresh).unwrap(),
            json!({"type": "RefreshRemoteApplicationEvent", "timestamp": 1, "originService": "config-server:8888:a",
                   "destinationService": "user-service:**", "id": "e1"})
        );
        let ack: RemoteEvent = serde_json::from_value(json!({"type":"AckRemoteApplicationEvent","timestamp":2,
            "originService":"u:9100:b","destinationService":"**","id":"e2","ackId":"e1",
            "ackDestinationService":"user-service:**","event": REFRESH_EVENT_CLASS}))
        .unwrap();
        assert!(matches!(ack, RemoteEvent::AckRemoteApplicationEvent { ref ack_id, .. } if ack_id == "e1"));
        assert!(serde_json::from_value::<RemoteEvent>(json!({"type": "Other", "id": "x"})).is_err());
    }

    #[test]
    fn destinations_match_as_springs() {
        let cases = [
            ("**", "user-service:9100:abc", true),
            ("user-service:**", "user-service:9100:abc", true),
            ("user-service:**", "email-service:9200:abc", false),
            ("user-service:9100:**", "user-service:9100:abc", true),
            ("user-service:9101:**", "user-service:9100:abc", false),
            ("user-*:**", "user-service:9100:abc", true),
            ("*:9100:**", "user-service:9100:abc", true),
        ];
        for (pattern, id, expected) in cases {
            assert_eq!(destination_matches(pattern, id), expected, "{pattern} vs {id}");
        }
        assert_eq!(normalize_destination(""), "**");
        assert_eq!(normalize_destination("user-service"), "user-service:**");
        assert_eq!(normalize_destination("user-service:9100"), "user-service:9100:**");
        assert_eq!(normalize_destination("a:b:c"), "a:b:c");
    }
}
