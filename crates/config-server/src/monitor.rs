//! `POST /monitor`: push webhooks from git hosts, turned into the paths that changed.
//!
//! GitHub, GitLab, Gitea and Gogs list the files of each pushed commit; Bitbucket's
//! push payload does not, so it means "anything may have changed". A plain form
//! `path=foo.yml` (repeatable) names files directly.

use std::collections::BTreeSet;

use http::HeaderMap;
use serde_json::Value;

/// What a webhook says changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// These paths.
    Paths(BTreeSet<String>),
    /// Unknown: treat every application as touched.
    Everything,
}

/// A webhook body that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed webhook: {0}")]
pub struct WebhookError(pub String);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads a webhook by its event headers, or as a plain `path=` form.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Changed, WebhookError> {
    let commit_lists = ["x-github-event", "x-gitlab-event", "x-gitea-event", "x-gogs-event"];
    if commit_lists.iter().any(|name| header(headers, name).is_some()) {
        let json: Value = serde_json::from_slice(body).map_err(|err| WebhookError(err.to_string()))?;
        let commits = json
            .get("commits")
            .and_then(Value::as_array)
            .ok_or_else(|| WebhookError("no `commits` list".to_owned()))?;
        let mut paths = BTreeSet::new();
        for commit in commits {
            for kind in ["added", "modified", "removed"] {
                if let Some(list) = commit.get(kind).and_then(Value::as_array) {
                    paths.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
                }
            }
        }
        return Ok(Changed::Paths(paths));
    }
    if header(headers, "x-event-key").is_some() {
        // Bitbucket: check it is JSON, then refresh everything.
        serde_json::from_slice::<Value>(body).map_err(|err| WebhookError(err.to_string()))?;
        return Ok(Changed::Everything);
    }
    let text = std::str::from_utf8(body).map_err(|_| WebhookError("the body is not UTF-8".to_owned()))?;
    let mut paths = BTreeSet::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| WebhookError(format!("`{pair}` is not key=value")))?;
        if key == "path" {
            paths.insert(decode_form(value)?);
        }
    }
    if paths.is_empty() {
        return Err(WebhookError(
            "neither a known git host's event nor a `path=` form".to_owned(),
        ));
    }
    Ok(Changed::Paths(paths))
}

fn decode_form(text: &str) -> Result<String, WebhookError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| WebhookError(format!("bad escape in `{text}`")))?;
                out.push(hex);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| WebhookError("a path is not UTF-8".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        headers
    }

    #[test]
    fn reads_each_hosts_payload() {
        let body = br#"{"commits":[{"added":["a.yml"],"modified":["foo-dev.yml"],"removed":[]},{"removed":["b.properties"]}]}"#;
        for header in ["x-github-event", "x-gitlab-event", "x-gitea-event", "x-gogs-event"] {
            let Changed::Paths(paths) = parse(&with(header, "push"), body).unwrap() else {
                panic!("paths")
            };
            assert_eq!(
                paths.into_iter().collect::<Vec<_>>(),
                ["a.yml", "b.properties", "foo-dev.yml"],
                "{header}"
            );
        }
        assert_eq!(
            parse(&with("x-event-key", "repo:push"), b"{\"push\":{}}").unwrap(),
            Changed::Everything
        );
        let Changed::Paths(paths) = parse(&HeaderMap::new(), b"path=foo.yml&path=conf%2Fbar+baz.yml").unwrap() else {
            panic!("paths")
        };
        assert_eq!(paths.into_iter().collect::<Vec<_>>(), ["conf/bar baz.yml", "foo.yml"]);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(parse(&with("x-github-event", "push"), b"{not json").is_err());
        assert!(parse(&with("x-github-event", "push"), b"{}").is_err());
        assert!(parse(&with("x-event-key", "repo:push"), b"<xml/>").is_err());
        assert!(parse(&HeaderMap::new(), b"").is_err());
        assert!(parse(&HeaderMap::new(), b"path=%zz").is_err());
        assert!(parse(&HeaderMap::new(), b"nonsense").is_err());
    }
}
