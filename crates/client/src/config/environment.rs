//! Spring Cloud Config's Environment as the client reads it, and its property sources
//! made into one nested tree for the remote configuration layer.
//!
//! Sources come highest precedence first with flattened keys (`server.port`,
//! `list[0].name`, `map[key.with.dots]`). A key set by a higher source wins; maps merge
//! key by key across sources, but a list is taken whole from the highest source that
//! has it (Spring's rule: lists are replaced, not merged element by element).

use serde::Deserialize;
use serde_json::{Map, Value};

/// The longest list index accepted; a larger one is taken for a mistake rather than
/// allocated.
const MAX_LIST_INDEX: usize = 10_000;

/// What the config server answers for `/{name}/{profiles}[/{label}]`. Only read here:
/// the server's own type is the contract (docs/api/config-server.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Environment {
    /// The commit id (git), or none (a plain directory).
    #[serde(default)]
    pub version: Option<String>,
    /// What the server says about the answer (stale, invalid files not served).
    #[serde(default)]
    pub state: Option<String>,
    /// Highest precedence first.
    #[serde(default)]
    pub property_sources: Vec<PropertySource>,
}

/// One source of properties.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct PropertySource {
    /// The file (and document) it comes from.
    #[serde(default)]
    pub name: String,
    /// Flattened keys.
    #[serde(default)]
    pub source: Map<String, Value>,
}

/// An Environment that cannot be used as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvironmentError {
    /// The server could not decrypt these values: using the configuration without them
    /// would silently fall back to local values for secrets.
    #[error("the config server could not decrypt {}", .0.join(", "))]
    Undecryptable(Vec<String>),
}

/// One step of a flattened key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Environment {
    /// The property sources as one nested JSON object.
    pub(crate) fn nested(&self) -> Result<Value, EnvironmentError> {
        let undecryptable: Vec<String> = self
            .property_sources
            .iter()
            .flat_map(|source| source.source.iter())
            .filter(|(key, value)| key.starts_with("invalid.") && value.as_str() == Some("<n/a>"))
            .map(|(key, _)| format!("`{}`", &key["invalid.".len()..]))
            .collect();
        if !undecryptable.is_empty() {
            return Err(EnvironmentError::Undecryptable(undecryptable));
        }
        let mut merged = Value::Object(Map::new());
        for source in &self.property_sources {
            let mut tree = Value::Object(Map::new());
            for (key, value) in &source.source {
                let segments = segments(key);
                if segments.is_empty() || !insert(&mut tree, &segments, value.clone()) {
                    tracing::debug!(key = %key, source = %source.name, "property left out: it conflicts with another key of the same source");
                }
            }
            merge_under(&mut merged, tree);
        }
        Ok(merged)
    }
}

/// `a.b[0].c` → `a`, `b`, 0, `c`; `map[x.y]` → `map`, `x.y`.
fn segments(key: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if !current.is_empty() {
                    segments.push(Segment::Key(std::mem::take(&mut current)));
                }
            }
            '[' => {
                let mut inside = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    inside.push(c);
                }
                if !closed {
                    // Not an index after all: keep the text as part of the key.
                    current.push('[');
                    current.push_str(&inside);
                    continue;
                }
                if !current.is_empty() {
                    segments.push(Segment::Key(std::mem::take(&mut current)));
                }
                match inside.parse::<usize>() {
                    Ok(index) if inside.bytes().all(|b| b.is_ascii_digit()) => segments.push(Segment::Index(index)),
                    _ => segments.push(Segment::Key(inside)),
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        segments.push(Segment::Key(current));
    }
    segments
}

/// Sets `value` at `path` in `tree`, creating maps and lists on the way; false when the
/// place is taken (by a value, or by a map where a list is wanted).
fn insert(tree: &mut Value, path: &[Segment], value: Value) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let empty_child = || match rest.first() {
        Some(Segment::Index(_)) => Value::Array(Vec::new()),
        _ => Value::Object(Map::new()),
    };
    let slot = match (tree, first) {
        (Value::Object(map), Segment::Key(key)) => {
            if rest.is_empty() {
                if map.get(key).is_some_and(|existing| !existing.is_null()) {
                    return false;
                }
                map.insert(key.clone(), value);
                return true;
            }
            map.entry(key.clone()).or_insert_with(empty_child)
        }
        (Value::Array(items), Segment::Index(index)) => {
            if *index > MAX_LIST_INDEX {
                return false;
            }
            if items.len() <= *index {
                items.resize(index + 1, Value::Null);
            }
            if rest.is_empty() {
                if !items[*index].is_null() {
                    return false;
                }
                items[*index] = value;
                return true;
            }
            if items[*index].is_null() {
                items[*index] = empty_child();
            }
            &mut items[*index]
        }
        _ => return false,
    };
    insert(slot, rest, value)
}

/// Merges `lower` under `higher`: maps key by key, anything else (values, lists) stays
/// as `higher` has it.
fn merge_under(higher: &mut Value, lower: Value) {
    if let (Value::Object(high), Value::Object(low)) = (higher, lower) {
        for (key, value) in low {
            match high.get_mut(&key) {
                Some(existing) => merge_under(existing, value),
                None => {
                    high.insert(key, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn environment(sources: Value) -> Environment {
        serde_json::from_value(json!({"name": "app", "profiles": ["default"], "label": null,
            "version": "abc", "state": null, "propertySources": sources}))
        .expect("environment")
    }

    #[test]
    fn keys_are_split_into_maps_lists_and_bracketed_map_keys() {
        let cases = [
            ("a", vec![Segment::Key("a".into())]),
            ("a.b", vec![Segment::Key("a".into()), Segment::Key("b".into())]),
            (
                "list[2].name",
                vec![
                    Segment::Key("list".into()),
                    Segment::Index(2),
                    Segment::Key("name".into()),
                ],
            ),
            ("m[x.y]", vec![Segment::Key("m".into()), Segment::Key("x.y".into())]),
            ("m.[x.y]", vec![Segment::Key("m".into()), Segment::Key("x.y".into())]),
            (
                "grid[1][0]",
                vec![Segment::Key("grid".into()), Segment::Index(1), Segment::Index(0)],
            ),
            ("odd[key", vec![Segment::Key("odd[key".into())]),
        ];
        for (key, expected) in cases {
            assert_eq!(segments(key), expected, "{key}");
        }
    }

    #[test]
    fn the_first_source_wins_maps_merge_and_lists_are_replaced_whole() {
        let env = environment(json!([
            {"name": "app-dev.yml", "source": {"db.url": "dev", "tags[0]": "x", "pool.max": "8"}},
            {"name": "app.yml", "source": {"db.url": "prod", "db.user": "u", "tags[0]": "a", "tags[1]": "b",
                                           "servers[0].host": "h", "servers[0].port": 1, "m[x.y]": true}},
        ]));
        assert_eq!(
            env.nested().expect("nested"),
            json!({"db": {"url": "dev", "user": "u"}, "tags": ["x"], "pool": {"max": "8"},
                   "servers": [{"host": "h", "port": 1}], "m": {"x.y": true}})
        );
    }

    #[test]
    fn conflicting_keys_of_one_source_keep_the_first() {
        let env =
            environment(json!([{"name": "a.properties", "source": {"a": "1", "a.b": "2", "c.d": "3", "c": "4"}}]));
        assert_eq!(env.nested().expect("nested"), json!({"a": "1", "c": {"d": "3"}}));
        let holes = environment(json!([{"name": "a", "source": {"l[2]": "z", "l[0]": "x", "big[99999999]": 1}}]));
        assert_eq!(
            holes.nested().expect("nested"),
            json!({"l": ["x", null, "z"], "big": []})
        );
    }

    #[test]
    fn values_the_server_could_not_decrypt_make_it_unusable() {
        let env = environment(json!([{"name": "a", "source": {"invalid.db.password": "<n/a>", "db.user": "u"}}]));
        assert_eq!(
            env.nested(),
            Err(EnvironmentError::Undecryptable(vec!["`db.password`".to_owned()]))
        );
    }
}
