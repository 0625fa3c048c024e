//! Reading configuration files: YAML (with multi-document files and profile
//! activation) and Java `.properties`, flattened to Spring's dotted keys
//! (`server.port`, `list[0].name`), in file order, each value with where it starts in
//! the file (Spring's "origin", served in its v2 media type).

use std::collections::HashMap;

use serde_json::{Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::{Yaml, YamlLoader};

/// One document of a file: its properties in order, and the profiles it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `None` for a document that applies to every profile.
    pub activation: Option<ProfileExpr>,
    /// Flattened keys and values, in the order they appear.
    pub properties: Vec<(String, Value)>,
    /// Where each key's value starts, when it could be told.
    pub origins: HashMap<String, Position>,
}

/// A place in a file, as Spring Boot reports a value's origin: `line:column`, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: u32,
    /// The column, from 1.
    pub column: u32,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A file that could not be read as configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// A profile expression: `dev`, `!prod`, `dev & db`, `dev | db`, with parentheses; a
/// comma-separated list means any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileExpr {
    /// This profile is active.
    Profile(String),
    /// The inner expression is false.
    Not(Box<ProfileExpr>),
    /// Both are true.
    And(Box<ProfileExpr>, Box<ProfileExpr>),
    /// Either is true.
    Or(Box<ProfileExpr>, Box<ProfileExpr>),
}

impl ProfileExpr {
    /// Parses an expression, or a comma-separated list of them (any one matches).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut alternatives = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                let tokens = tokenize(part)?;
                let mut position = 0;
                let expr = parse_or(&tokens, &mut position)?;
                if position != tokens.len() {
                    return Err(ParseError(format!(
                        "unexpected `{}` in profile expression `{part}`",
                        tokens[position]
                    )));
                }
                Ok(expr)
            });
        let first = alternatives
            .next()
            .ok_or_else(|| ParseError("empty profile expression".to_owned()))??;
        alternatives.try_fold(first, |acc, next| Ok(ProfileExpr::Or(Box::new(acc), Box::new(next?))))
    }

    /// Whether the expression holds for the active profiles.
    pub fn matches(&self, active: &[String]) -> bool {
        match self {
            ProfileExpr::Profile(name) => active.iter().any(|p| p == name),
            ProfileExpr::Not(inner) => !inner.matches(active),
            ProfileExpr::And(a, b) => a.matches(active) && b.matches(active),
            ProfileExpr::Or(a, b) => a.matches(active) || b.matches(active),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<String>, ParseError> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        match c {
            '(' | ')' | '!' | '&' | '|' => {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                tokens.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    if tokens.is_empty() {
        return Err(ParseError("empty profile expression".to_owned()));
    }
    Ok(tokens)
}

fn parse_or(tokens: &[String], position: &mut usize) -> Result<ProfileExpr, ParseError> {
    let mut left = parse_and(tokens, position)?;
    while tokens.get(*position).is_some_and(|t| t == "|") {
        *position += 1;
        left = ProfileExpr::Or(Box::new(left), Box::new(parse_and(tokens, position)?));
    }
    Ok(left)
}

fn parse_and(tokens: &[String], position: &mut usize) -> Result<ProfileExpr, ParseError> {
    let mut left = parse_unary(tokens, position)?;
    while tokens.get(*position).is_some_and(|t| t == "&") {
        *position += 1;
        left = ProfileExpr::And(Box::new(left), Box::new(parse_unary(tokens, position)?));
    }
    Ok(left)
}

fn parse_unary(tokens: &[String], position: &mut usize) -> Result<ProfileExpr, ParseError> {
    let token = tokens
        .get(*position)
        .ok_or_else(|| ParseError("profile expression ends too early".to_owned()))?;
    *position += 1;
    match token.as_str() {
        "!" => Ok(ProfileExpr::Not(Box::new(parse_unary(tokens, position)?))),
        "(" => {
            let inner = parse_or(tokens, position)?;
            if tokens.get(*position).map(String::as_str) != Some(")") {
                return Err(ParseError("unbalanced parenthesis in profile expression".to_owned()));
            }
            *position += 1;
            Ok(inner)
        }
        ")" | "&" | "|" => Err(ParseError(format!("unexpected `{token}` in profile expression"))),
        name => Ok(ProfileExpr::Profile(name.to_owned())),
    }
}

/// The keys that activate a YAML document for profiles.
const ACTIVATION_KEYS: [&str; 2] = ["spring.config.activate.on-profile", "spring.profiles"];

/// Parses a YAML file into its documents.
pub fn yaml(text: &str) -> Result<Vec<Document>, ParseError> {
    let documents = YamlLoader::load_from_str(text).map_err(|err| ParseError(format!("invalid YAML: {err}")))?;
    // The loader keeps no positions; a second pass over the same events records them.
    let mut positions = Positions::default();
    let _ = Parser::new(text.chars()).load(&mut positions, true);
    let mut origins = positions.documents.into_iter();
    let mut parsed = Vec::with_capacity(documents.len());
    for document in documents {
        let mut origins = origins.next().unwrap_or_default();
        let mut properties = Vec::new();
        match &document {
            Yaml::Hash(_) => flatten(&document, String::new(), &mut properties)?,
            Yaml::Null | Yaml::BadValue => {}
            _ => return Err(ParseError("invalid YAML: a document must be a map of keys".to_owned())),
        }
        let mut activation = None;
        for key in ACTIVATION_KEYS {
            if let Some(position) = properties.iter().position(|(k, _)| k == key) {
                let (_, value) = &properties[position];
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                activation = Some(ProfileExpr::parse(&text)?);
            }
        }
        // Containers have marks too; only the values that became properties are kept.
        let keys: std::collections::HashSet<&str> = properties.iter().map(|(key, _)| key.as_str()).collect();
        origins.retain(|key, _| keys.contains(key.as_str()));
        parsed.push(Document {
            activation,
            properties,
            origins,
        });
    }
    Ok(parsed)
}

/// Records where every value of each YAML document starts, by its flattened key, from
/// the parser's events: the same walk as [`flatten`], over marks instead of values.
#[derive(Default)]
struct Positions {
    documents: Vec<HashMap<String, Position>>,
    current: HashMap<String, Position>,
    stack: Vec<Frame>,
}

/// A mapping or sequence being read, with its flattened path.
enum Frame {
    /// `key` is the key whose value comes next, `None` while a key is expected.
    Mapping { path: String, key: Option<String> },
    /// `index` is the position of the next item.
    Sequence { path: String, index: usize },
}

impl Positions {
    /// The path of the node that starts now, in the place its parent expects; `None` for a
    /// mapping's key.
    fn next_value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping { key: None, .. }) => None,
            Some(Frame::Mapping { path, key }) => {
                let key = key.take().unwrap_or_default();
                Some(if path.is_empty() { key } else { format!("{path}.{key}") })
            }
            Some(Frame::Sequence { path, index }) => {
                *index += 1;
                Some(format!("{path}[{}]", *index - 1))
            }
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        if path.is_empty() {
            return;
        }
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        // The scanner counts lines from 1 and columns from 0.
        let position = Position {
            line: to_u32(mark.line()),
            column: to_u32(mark.col()).saturating_add(1),
        };
        self.current.insert(path.to_owned(), position);
    }
}

impl MarkedEventReceiver for Positions {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => {
                self.current.clear();
                self.stack.clear();
            }
            Event::DocumentEnd => self.documents.push(std::mem::take(&mut self.current)),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A container as a key is refused by `flatten`; track it under no name.
                let path = self.next_value_path().unwrap_or_default();
                self.record(&path, mark);
                self.stack.push(match event {
                    Event::MappingStart(..) => Frame::Mapping { path, key: None },
                    _ => Frame::Sequence { path, index: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Scalar(text, ..) => match self.next_value_path() {
                Some(path) => self.record(&path, mark),
                None => {
                    if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                        *key = Some(text);
                    }
                }
            },
            Event::Alias(_) => {
                if let Some(path) = self.next_value_path() {
                    self.record(&path, mark);
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

fn key_text(key: &Yaml) -> Result<String, ParseError> {
    match key {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Integer(i) => Ok(i.to_string()),
        Yaml::Real(r) => Ok(r.clone()),
        Yaml::Boolean(b) => Ok(b.to_string()),
        other => Err(ParseError(format!("invalid YAML: unsupported key {other:?}"))),
    }
}

fn flatten(node: &Yaml, prefix: String, out: &mut Vec<(String, Value)>) -> Result<(), ParseError> {
    match node {
        Yaml::Hash(map) => {
            if map.is_empty() && !prefix.is_empty() {
                out.push((prefix.clone(), Value::String(String::new())));
            }
            for (key, value) in map {
                let key = key_text(key)?;
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(value, path, out)?;
            }
        }
        Yaml::Array(items) => {
            if items.is_empty() {
                out.push((prefix.clone(), Value::String(String::new())));
            }
            for (index, item) in items.iter().enumerate() {
                flatten(item, format!("{prefix}[{index}]"), out)?;
            }
        }
        scalar => {
            if prefix.is_empty() {
                return Err(ParseError("invalid YAML: a document must be a map of keys".to_owned()));
            }
            out.push((prefix, scalar_value(scalar)?));
        }
    }
    Ok(())
}

fn scalar_value(scalar: &Yaml) -> Result<Value, ParseError> {
    Ok(match scalar {
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or_else(|| Value::String(text.clone()), Value::Number),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::String(String::new()),
        Yaml::Alias(_) | Yaml::BadValue => return Err(ParseError("invalid YAML: unresolvable value".to_owned())),
        Yaml::Hash(_) | Yaml::Array(_) => unreachable_scalar(),
    })
}

fn unreachable_scalar() -> Value {
    // Maps and lists are flattened by the caller and never reach here.
    Value::Null
}

/// Parses a `.properties` file: one document, every value a string.
pub fn properties(text: &str) -> Result<Vec<Document>, ParseError> {
    let map = java_properties::read(text.as_bytes()).map_err(|err| ParseError(format!("invalid properties: {err}")))?;
    // The reader returns a map; keep the file's order by the position of each key.
    let mut origins = HashMap::new();
    let mut ordered: Vec<(usize, String, Value)> = map
        .into_iter()
        .map(|(key, value)| {
            let position = find_key_position(text, &key);
            if let Some(origin) = value_position(text, position, &key) {
                origins.insert(key.clone(), origin);
            }
            (position, key, Value::String(value))
        })
        .collect();
    ordered.sort_by_key(|(position, key, _)| (*position, key.clone()));
    let mut properties: Vec<(String, Value)> = ordered.into_iter().map(|(_, k, v)| (k, v)).collect();
    let activation = match properties
        .iter()
        .position(|(k, _)| ACTIVATION_KEYS.contains(&k.as_str()))
    {
        Some(position) => {
            let (_, value) = &properties[position];
            Some(ProfileExpr::parse(value.as_str().unwrap_or_default())?)
        }
        None => None,
    };
    properties.shrink_to_fit();
    Ok(vec![Document {
        activation,
        properties,
        origins,
    }])
}

/// Where the value of `key` starts on line `index` (from 0): after the key, the blanks,
/// one `=` or `:`, and the blanks again, as Spring Boot counts it.
fn value_position(text: &str, index: usize, key: &str) -> Option<Position> {
    let line = text.lines().nth(index)?;
    let start = line.len() - line.trim_start().len();
    let after_key = line.get(start..)?.strip_prefix(key)?;
    let blanks = |s: &str| s.len() - s.trim_start_matches([' ', '\t', '\u{c}']).len();
    let mut offset = start + key.len() + blanks(after_key);
    if line[offset..].starts_with(['=', ':']) {
        offset += 1;
        offset += blanks(&line[offset..]);
    }
    let column = line[..offset].chars().count() + 1;
    Some(Position {
        line: u32::try_from(index + 1).ok()?,
        column: u32::try_from(column).ok()?,
    })
}

fn find_key_position(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            line.starts_with(key)
                && line[key.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| c == '=' || c == ':' || c.is_whitespace())
        })
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn keys(document: &Document) -> Vec<(&str, &Value)> {
        document.properties.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    #[test]
    fn yaml_is_flattened_to_dotted_keys_in_order_with_types() {
        let docs = yaml("server:\n  port: 8080\n  ssl: false\nname: users\nlist:\n  - a\n  - name: b\n    weight: 1.5\nempty: {}\nnothing:\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(
            keys(&docs[0]),
            vec![
                ("server.port", &json!(8080)),
                ("server.ssl", &json!(false)),
                ("name", &json!("users")),
                ("list[0]", &json!("a")),
                ("list[1].name", &json!("b")),
                ("list[1].weight", &json!(1.5)),
                ("empty", &json!("")),
                ("nothing", &json!("")),
            ]
        );
    }

    #[test]
    fn multi_document_yaml_carries_profile_activation() {
        let docs = yaml("a: 1\n---\nspring:\n  config:\n    activate:\n      on-profile: dev & !prod\na: 2\n---\nspring.profiles: db,cloud\na: 3\n").unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].activation, None);
        let dev = docs[1].activation.as_ref().unwrap();
        assert!(dev.matches(&["dev".into()]));
        assert!(!dev.matches(&["dev".into(), "prod".into()]));
        let any = docs[2].activation.as_ref().unwrap();
        assert!(any.matches(&["cloud".into()]) && !any.matches(&["dev".into()]));
    }

    #[test]
    fn malformed_yaml_and_expressions_are_errors() {
        assert!(yaml("a: [1, 2").is_err());
        assert!(yaml("- just\n- a list\n").is_err());
        assert!(yaml("a: 1\n  b: 2\n").is_err());
        for bad in ["", "dev &", "(dev", "dev)", "& dev"] {
            assert!(ProfileExpr::parse(bad).is_err(), "{bad}");
        }
        let expr = ProfileExpr::parse("(a | b) & !c").unwrap();
        assert!(expr.matches(&["b".into()]) && !expr.matches(&["b".into(), "c".into()]));
    }

    fn origins(document: &Document) -> Vec<(String, String)> {
        let mut origins: Vec<(String, String)> = document
            .origins
            .iter()
            .map(|(key, position)| (key.clone(), position.to_string()))
            .collect();
        origins.sort();
        origins
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn each_value_knows_the_line_and_column_it_starts_at() {
        let docs = yaml(
            "server:\n  port: 8080\nlist:\n  - a\n  - name: 'b'\nempty: {}\n---\nspring.profiles: dev\nx:   [1, 2]\n",
        )
        .unwrap();
        assert_eq!(
            origins(&docs[0]),
            pairs(&[
                ("empty", "6:8"),
                ("list[0]", "4:5"),
                ("list[1].name", "5:11"),
                ("server.port", "2:9"),
            ])
        );
        assert_eq!(
            origins(&docs[1]),
            pairs(&[("spring.profiles", "8:18"), ("x[0]", "9:7"), ("x[1]", "9:10")])
        );
        let docs = properties("# comment\nserver.port=8080\n  name : users\nflag\n").unwrap();
        assert_eq!(
            origins(&docs[0]),
            pairs(&[("flag", "4:5"), ("name", "3:10"), ("server.port", "2:13")])
        );
    }

    #[test]
    fn properties_files_keep_their_order_and_string_values() {
        let docs = properties("# comment\nserver.port=8080\nname : users\nmulti = one \\\n  two\n").unwrap();
        assert_eq!(
            keys(&docs[0]),
            vec![
                ("server.port", &json!("8080")),
                ("name", &json!("users")),
                ("multi", &json!("one two"))
            ]
        );
    }
}
