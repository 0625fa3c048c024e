//! From a snapshot of files to Spring's Environment: which files and documents apply
//! to an application and its profiles, in which order, with `{cipher}` values
//! decrypted; and the merged renderings (`.yml`, `.properties`, `.json`) with `${...}`
//! placeholders resolved.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::cipher::{CIPHER_PREFIX, Cipher};
use crate::parse::{self, Document, ParseError, Position};
use crate::repo::Tree;

/// The shared application name: its files apply to every application.
pub const SHARED_NAME: &str = "application";

/// One source of properties in an Environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropertySource {
    /// Where it comes from: the file, and the document for multi-document YAML.
    pub name: String,
    /// Flattened keys, in file order.
    pub source: Map<String, Value>,
    /// Where each value starts in its file, for the v2 media type's `origin`.
    #[serde(skip)]
    pub origins: HashMap<String, Position>,
}

/// How an Environment is written: Spring's plain JSON, or its v2 media type, where every
/// value is `{"value": …, "origin": "line:column"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvironmentShape {
    /// `application/json`: values as they are.
    Plain,
    /// `application/vnd.spring-cloud.config-server.v2+json`: values with their origin.
    WithOrigins,
}

/// Spring Cloud Config's Environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    /// The application.
    pub name: String,
    /// The profiles asked for.
    pub profiles: Vec<String>,
    /// The label asked for; null when the request named none (as Spring answers).
    pub label: Option<String>,
    /// The commit id (git), or null.
    pub version: Option<String>,
    /// Anything the client should know about what is served (stale, invalid files).
    pub state: Option<String>,
    /// Highest precedence first.
    pub property_sources: Vec<PropertySource>,
}

/// What one serialized Environment depends on besides the snapshot.
/// An answer made once: the request it answers, and its bytes.
#[derive(Debug)]
struct Answer {
    profiles: String,
    label_named: bool,
    state: Option<String>,
    shape: EnvironmentShape,
    bytes: Bytes,
}

/// A parsed configuration file of the snapshot.
#[derive(Debug, Clone)]
struct ConfigFile {
    documents: Vec<Document>,
}

/// The files of one label at one commit, parsed once, with the answers made from them.
#[derive(Debug)]
pub struct Snapshot {
    /// The files.
    pub tree: Tree,
    /// The repository's name for property source names (`file:/...` or the URI).
    origin: String,
    /// Configuration files by path.
    parsed: HashMap<String, ConfigFile>,
    /// Files that are not valid configuration, with the problem.
    pub invalid: BTreeMap<String, String>,
    /// Directories searched, relative to the root, with `{application}`, `{profile}` and
    /// `{label}` placeholders.
    search_paths: Vec<String>,
    /// Serialized Environments by (application, profiles, label named, state).
    /// Answers by application; looked up without allocating, so that a
    /// request for an answer already made costs a read lock and a scan.
    answers: RwLock<HashMap<String, Vec<Answer>>>,
}

fn is_config_file(path: &str) -> bool {
    [".yml", ".yaml", ".properties"].iter().any(|ext| path.ends_with(ext))
}

impl Snapshot {
    /// Parses every configuration file of the tree.
    pub fn new(tree: Tree, origin: String, search_paths: Vec<String>) -> Self {
        let mut parsed = HashMap::new();
        let mut invalid = BTreeMap::new();
        for (path, bytes) in &tree.files {
            if !is_config_file(path) {
                continue;
            }
            let result = std::str::from_utf8(bytes)
                .map_err(|_| ParseError("not UTF-8 text".to_owned()))
                .and_then(|text| {
                    if path.ends_with(".properties") {
                        parse::properties(text)
                    } else {
                        parse::yaml(text)
                    }
                });
            match result {
                Ok(documents) => {
                    parsed.insert(path.clone(), ConfigFile { documents });
                }
                Err(err) => {
                    invalid.insert(path.clone(), err.0);
                }
            }
        }
        Snapshot {
            tree,
            origin,
            parsed,
            invalid,
            search_paths,
            answers: RwLock::new(HashMap::new()),
        }
    }

    /// The directories to look in for an application and profile.
    fn directories(&self, application: &str, profile: &str) -> Vec<String> {
        let mut dirs = vec![String::new()];
        for pattern in &self.search_paths {
            let dir = pattern
                .replace("{application}", application)
                .replace("{profile}", profile)
                .replace("{label}", &self.tree.label);
            let dir = dir.trim_matches('/').to_owned();
            if !dir.is_empty() && !dir.split('/').any(|part| part == ".." || part == ".") && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// The files that exist for a base name (`foo` or `foo-dev`) in the directories:
    /// a later search path before an earlier one, `.properties` before YAML, as Spring.
    fn files_named(&self, base: &str, dirs: &[String]) -> Vec<&str> {
        let mut found = Vec::new();
        for dir in dirs.iter().rev() {
            for ext in ["properties", "yml", "yaml"] {
                let path = if dir.is_empty() {
                    format!("{base}.{ext}")
                } else {
                    format!("{dir}/{base}.{ext}")
                };
                if let Some((key, _)) = self.parsed.get_key_value(&path) {
                    found.push(key.as_str());
                }
            }
        }
        found
    }

    /// The Environment for an application and profiles, at this snapshot.
    pub fn environment(&self, application: &str, profiles: &[String], cipher: Option<&Cipher>) -> Environment {
        let mut sources = Vec::new();
        // Precedence, highest first: profile-specific files (the last profile named
        // first), then the plain files; within each, the application's own before the
        // shared `application`; within a file, later documents before earlier ones.
        let mut names: Vec<String> = vec![application.to_owned()];
        if application != SHARED_NAME {
            names.push(SHARED_NAME.to_owned());
        }
        for profile in profiles.iter().rev() {
            let dirs = self.directories(application, profile);
            for name in &names {
                for path in self.files_named(&format!("{name}-{profile}"), &dirs) {
                    self.push_documents(path, profiles, cipher, &mut sources);
                }
            }
        }
        let default_profile = profiles.last().map_or("default", String::as_str);
        let dirs = self.directories(application, default_profile);
        for name in &names {
            for path in self.files_named(name, &dirs) {
                self.push_documents(path, profiles, cipher, &mut sources);
            }
        }
        Environment {
            name: application.to_owned(),
            profiles: profiles.to_vec(),
            label: Some(self.tree.label.clone()),
            version: self.tree.version.clone(),
            state: None,
            property_sources: sources,
        }
    }

    fn push_documents(&self, path: &str, profiles: &[String], cipher: Option<&Cipher>, out: &mut Vec<PropertySource>) {
        let Some(file) = self.parsed.get(path) else { return };
        let many = file.documents.len() > 1;
        for (number, document) in file.documents.iter().enumerate().rev() {
            if document.activation.as_ref().is_some_and(|expr| !expr.matches(profiles)) {
                continue;
            }
            if document.properties.is_empty() {
                continue;
            }
            let mut name = format!("{}/{}", self.origin.trim_end_matches('/'), path);
            if many {
                name.push_str(&format!(" (document #{number})"));
            }
            let source = decrypted(&document.properties, cipher);
            // A value that could not be decrypted keeps the place of the ciphertext.
            let origins = source
                .keys()
                .filter_map(|key| {
                    let position = document.origins.get(key).or_else(|| {
                        key.strip_prefix("invalid.")
                            .and_then(|written| document.origins.get(written))
                    })?;
                    Some((key.clone(), *position))
                })
                .collect();
            out.push(PropertySource { name, source, origins });
        }
    }

    /// The serialized Environment, made once per application, profiles (as the
    /// request spelled them, comma-separated), state and shape.
    pub fn environment_json(
        &self,
        application: &str,
        profiles: &str,
        label_named: bool,
        state: Option<String>,
        cipher: Option<&Cipher>,
        shape: EnvironmentShape,
    ) -> Bytes {
        let matches = |answer: &&Answer| {
            answer.profiles == profiles
                && answer.label_named == label_named
                && answer.state == state
                && answer.shape == shape
        };
        if let Some(answers) = self.answers.read().unwrap_or_else(|p| p.into_inner()).get(application)
            && let Some(answer) = answers.iter().find(matches)
        {
            return answer.bytes.clone();
        }
        let mut environment = self.environment(application, &profiles_of(profiles), cipher);
        environment.state = state.clone();
        if !label_named {
            environment.label = None;
        }
        let bytes = match shape {
            EnvironmentShape::Plain => serde_json::to_vec(&environment),
            EnvironmentShape::WithOrigins => serde_json::to_vec(&with_origins(&environment)),
        };
        let bytes = Bytes::from(bytes.unwrap_or_default());
        let mut answers = self.answers.write().unwrap_or_else(|p| p.into_inner());
        let list = answers.entry(application.to_owned()).or_default();
        if !list.iter().any(|answer| matches(&answer)) {
            list.push(Answer {
                profiles: profiles.to_owned(),
                label_named,
                state,
                shape,
                bytes: bytes.clone(),
            });
        }
        bytes
    }

    /// A plain file for an application and profiles: the profile-specific variant
    /// (`nginx-dev.conf`) first, then the file itself, in the search directories.
    pub fn plain_file(&self, application: &str, profiles: &[String], path: &str) -> Option<&Arc<Vec<u8>>> {
        let clean = path.trim_start_matches('/');
        if clean.is_empty()
            || clean
                .split('/')
                .any(|part| part == ".." || part == "." || part.is_empty())
        {
            return None;
        }
        let (stem, extension) = match clean.rsplit_once('.') {
            Some((stem, ext)) if !stem.ends_with('/') && !stem.is_empty() => (stem, Some(ext)),
            _ => (clean, None),
        };
        // Unlike properties, the first profile named wins for plain files, as in Spring.
        let mut candidates = Vec::new();
        for profile in profiles {
            candidates.push(match extension {
                Some(ext) => format!("{stem}-{profile}.{ext}"),
                None => format!("{stem}-{profile}"),
            });
        }
        candidates.push(clean.to_owned());
        let profile = profiles.last().map_or("default", String::as_str);
        for dir in self.directories(application, profile).iter().rev() {
            for candidate in &candidates {
                let full = if dir.is_empty() {
                    candidate.clone()
                } else {
                    format!("{dir}/{candidate}")
                };
                if let Some(bytes) = self.tree.files.get(&full) {
                    return Some(bytes);
                }
            }
        }
        None
    }
}

/// Spring's v2 shape: the Environment with each value as `{"value", "origin"}`, the origin
/// left out where it is not known (as Spring leaves out a null one).
fn with_origins(environment: &Environment) -> Value {
    let mut json = serde_json::to_value(environment).unwrap_or(Value::Null);
    let Some(sources) = json.get_mut("propertySources").and_then(Value::as_array_mut) else {
        return json;
    };
    for (json_source, source) in sources.iter_mut().zip(&environment.property_sources) {
        let Some(values) = json_source.get_mut("source").and_then(Value::as_object_mut) else {
            continue;
        };
        for (key, value) in values.iter_mut() {
            let mut descriptor = Map::new();
            descriptor.insert("value".to_owned(), value.take());
            if let Some(origin) = source.origins.get(key) {
                descriptor.insert("origin".to_owned(), Value::String(origin.to_string()));
            }
            *value = Value::Object(descriptor);
        }
    }
    json
}

/// The properties with `{cipher}` values decrypted; a value that cannot be decrypted
/// appears as `invalid.<key>` = `<n/a>`, never as its ciphertext.
fn decrypted(properties: &[(String, Value)], cipher: Option<&Cipher>) -> Map<String, Value> {
    let mut map = Map::new();
    for (key, value) in properties {
        let encrypted = value.as_str().and_then(|text| text.strip_prefix(CIPHER_PREFIX));
        match encrypted {
            None => {
                map.insert(key.clone(), value.clone());
            }
            Some(text) => {
                // `{key:name}` prefixes choose among keys in Spring; one key is served here.
                let text = strip_key_prefixes(text);
                match cipher.map(|cipher| cipher.decrypt(text)) {
                    Some(Ok(plain)) => {
                        map.insert(key.clone(), Value::String(plain));
                    }
                    Some(Err(err)) => {
                        tracing::warn!(key = %key, error = %err, "cannot decrypt a {{cipher}} value");
                        map.insert(format!("invalid.{key}"), Value::String("<n/a>".to_owned()));
                    }
                    None => {
                        tracing::warn!(key = %key, "a {{cipher}} value but no encrypt.key is configured");
                        map.insert(format!("invalid.{key}"), Value::String("<n/a>".to_owned()));
                    }
                }
            }
        }
    }
    map
}

fn strip_key_prefixes(mut text: &str) -> &str {
    while text.starts_with('{') {
        match text.find('}') {
            Some(end) => text = &text[end + 1..],
            None => break,
        }
    }
    text
}

/// The Environment merged into one map, highest precedence winning.
pub fn merged(environment: &Environment) -> BTreeMap<String, Value> {
    let mut merged = BTreeMap::new();
    for source in environment.property_sources.iter().rev() {
        for (key, value) in &source.source {
            merged.insert(key.clone(), value.clone());
        }
    }
    merged
}

/// Resolves `${key}` and `${key:default}` in `text` against `properties`; an unknown
/// key without a default stays as written. Nesting is resolved up to a depth, so a
/// cycle cannot loop.
pub fn resolve_placeholders(text: &str, properties: &BTreeMap<String, Value>) -> String {
    resolve_depth(text, properties, 0)
}

const MAX_PLACEHOLDER_DEPTH: usize = 8;

fn resolve_depth(text: &str, properties: &BTreeMap<String, Value>, depth: usize) -> String {
    if depth >= MAX_PLACEHOLDER_DEPTH || !text.contains("${") {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = closing_brace(after) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        let (key, default) = match inner.split_once(':') {
            Some((key, default)) => (key, Some(default)),
            None => (inner, None),
        };
        match properties.get(key) {
            Some(value) => {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push_str(&resolve_depth(&text, properties, depth + 1));
            }
            None => match default {
                Some(default) => out.push_str(&resolve_depth(default, properties, depth + 1)),
                None => {
                    out.push_str("${");
                    out.push_str(inner);
                    out.push('}');
                }
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (index, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(index),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Merged properties as `.properties` text, keys sorted.
pub fn to_properties(merged: &BTreeMap<String, Value>) -> String {
    let lines: Vec<String> = merged
        .iter()
        .map(|(key, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{}: {}", escape_properties(key, true), escape_properties(&text, false))
        })
        .collect();
    lines.join("\n")
}

fn escape_properties(text: &str, is_key: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '=' | ':' | ' ' | '#' | '!' if is_key => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Rebuilds the nested structure from flattened keys (`a.b[0].c`), for `.json` and
/// `.yml` renderings.
pub fn to_nested(merged: &BTreeMap<String, Value>) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in merged {
        insert_path(&mut root, &path_segments(key), value.clone());
    }
    root
}

#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn path_segments(key: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                segments.push(Segment::Key(rest[..open].to_owned()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                match stripped
                    .find(']')
                    .and_then(|end| stripped[..end].parse().ok().map(|n| (end, n)))
                {
                    Some((end, index)) => {
                        segments.push(Segment::Index(index));
                        rest = &stripped[end + 1..];
                    }
                    None => {
                        segments.push(Segment::Key(rest.to_owned()));
                        rest = "";
                    }
                }
            }
            if !rest.is_empty() {
                segments.push(Segment::Key(rest.to_owned()));
            }
        } else {
            segments.push(Segment::Key(rest.to_owned()));
        }
    }
    segments
}

fn insert_path(node: &mut Value, segments: &[Segment], value: Value) {
    let Some((first, rest)) = segments.split_first() else {
        *node = value;
        return;
    };
    match first {
        Segment::Key(key) => {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            if let Value::Object(map) = node {
                let child = map.entry(key.clone()).or_insert(Value::Null);
                insert_path(child, rest, value);
            }
        }
        Segment::Index(index) => {
            if !node.is_array() {
                *node = Value::Array(Vec::new());
            }
            if let Value::Array(items) = node {
                if items.len() <= *index {
                    items.resize(*index + 1, Value::Null);
                }
                insert_path(&mut items[*index], rest, value);
            }
        }
    }
}

/// A nested value as YAML text.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_yaml(value, 0, &mut out);
    out
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::String(s) => {
            let plain = !s.is_empty()
                && !s.starts_with(|c: char| "!&*-?{}[],#|>@`\"'%: ".contains(c))
                && !s.contains(": ")
                && !s.contains(" #")
                && !s.ends_with(' ')
                && !s.ends_with(':')
                && !matches!(
                    s.to_ascii_lowercase().as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "~" | "on" | "off"
                )
                && s.parse::<f64>().is_err()
                && !s.contains('\n');
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).unwrap_or_default()
            }
        }
        Value::Null => "''".to_owned(),
        other => other.to_string(),
    }
}

fn write_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let key = yaml_scalar(&Value::String(key.clone()));
                match child {
                    Value::Object(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(child, indent + 2, out);
                    }
                    Value::Array(items) if !items.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(child, indent + 2, out);
                    }
                    scalar => out.push_str(&format!("{pad}{key}: {}\n", yaml_scalar(scalar))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(inner) if !inner.is_empty() => {
                        let mut nested = String::new();
                        write_yaml(item, indent + 2, &mut nested);
                        let trimmed = nested.trim_start();
                        out.push_str(&format!("{pad}- {trimmed}"));
                    }
                    Value::Array(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}-\n"));
                        write_yaml(item, indent + 2, out);
                    }
                    scalar => out.push_str(&format!("{pad}- {}\n", yaml_scalar(scalar))),
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{}\n", yaml_scalar(scalar))),
    }
}

/// The profiles of a request: comma-separated, blanks dropped, `default` when
/// none is left.
pub fn profiles_of(text: &str) -> Vec<String> {
    let profiles: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if profiles.is_empty() {
        vec!["default".to_owned()]
    } else {
        profiles
    }
}

#[cfg(test)]
mod tests;
