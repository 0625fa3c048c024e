//! Which keys of a configuration changed: both versions flattened to dotted keys (lists
//! as `list[0]`, as the config server writes them) and compared key by key. It compares
//! the typed configurations, so a key counts only if the service sees a different value.

use std::collections::BTreeMap;

use serde_json::Value;

/// The keys whose values differ, were added or were removed, sorted.
pub(crate) fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
    flatten(old, String::new(), &mut before);
    flatten(new, String::new(), &mut after);
    let mut keys: Vec<String> = before
        .iter()
        .filter(|(key, value)| after.get(*key) != Some(*value))
        .map(|(key, _)| key.clone())
        .collect();
    keys.extend(after.keys().filter(|key| !before.contains_key(*key)).cloned());
    // An empty list or map that gained (or lost) entries is told by those entries:
    // `tags[0]`, not `tags` as well.
    keys.retain(|key| {
        let empty = |side: &BTreeMap<String, &Value>| side.get(key).is_some_and(|value| is_empty_container(value));
        let has_children = |side: &BTreeMap<String, &Value>| {
            side.keys().any(|other| {
                other.len() > key.len()
                    && other.starts_with(key.as_str())
                    && matches!(other.as_bytes()[key.len()], b'.' | b'[')
            })
        };
        !((empty(&before) && has_children(&after)) || (empty(&after) && has_children(&before)))
    });
    keys.sort();
    keys
}

fn is_empty_container(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.is_empty()) || matches!(value, Value::Array(items) if items.is_empty())
}

fn flatten<'a>(value: &'a Value, prefix: String, out: &mut BTreeMap<String, &'a Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(child, path, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (index, item) in items.iter().enumerate() {
                flatten(item, format!("{prefix}[{index}]"), out);
            }
        }
        // Values, and empty maps and lists, are leaves.
        leaf => {
            out.insert(prefix, leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reports_changed_added_and_removed_keys() {
        let old = json!({"a": 1, "b": {"c": "x", "d": [1, 2]}, "e": {}, "same": true});
        let new = json!({"a": 2, "b": {"c": "x", "d": [1]}, "e": {"f": null}, "g": [], "same": true});
        assert_eq!(changed_keys(&old, &new), ["a", "b.d[1]", "e.f", "g"]);
        assert_eq!(changed_keys(&json!({"l": []}), &json!({"l": [1, 2]})), ["l[0]", "l[1]"]);
        assert_eq!(changed_keys(&json!({"l": [1]}), &json!({"l": []})), ["l[0]"]);
        assert!(changed_keys(&new, &new).is_empty());
    }
}
