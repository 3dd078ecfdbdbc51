//! Structural differences between two JSON documents, by field path (`$.items[3].price`): a
//! field added or removed, a value changed, or a type changed. Paths use `.name` for object
//! keys (`["na.me"]` when the key is not a plain identifier) and `[i]` for array elements, so
//! that the same path in many responses names the same field and can be counted and ignored.

use std::fmt::Write as _;

use serde_json::Value;

use super::comparer::clipped;

/// How a field differs between the expected document and the actual one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DifferenceKind {
    /// Present in the actual document only.
    Added,
    /// Present in the expected document only.
    Removed,
    /// The same JSON type, another value.
    ValueChanged,
    /// Another JSON type (a string where a number was...).
    TypeChanged,
}

impl DifferenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::Added => "added",
            DifferenceKind::Removed => "removed",
            DifferenceKind::ValueChanged => "changed_value",
            DifferenceKind::TypeChanged => "changed_type",
        }
    }
}

/// One difference: where, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Difference {
    pub path: String,
    pub kind: DifferenceKind,
}

/// The differences from `expected` to `actual`, in document order, at most `limit` of them (a
/// response that differs everywhere must not cost without bound).
pub fn differences(expected: &Value, actual: &Value, limit: usize) -> Vec<Difference> {
    differences_except(expected, actual, limit, &|_| false)
}

/// [`differences`] without the fields whose path `ignored` accepts, nor anything under them
/// (an ignored field is not walked); `limit` counts only the differences kept.
pub fn differences_except(
    expected: &Value,
    actual: &Value,
    limit: usize,
    ignored: &dyn Fn(&str) -> bool,
) -> Vec<Difference> {
    let mut found = Vec::new();
    let path = String::from("$");
    if !ignored(&path) {
        let mut walk = Walk {
            path,
            found: &mut found,
            limit,
            ignored,
        };
        walk.walk(expected, actual);
    }
    found
}

/// One walk of two documents: where it is, and what it found so far.
struct Walk<'a> {
    path: String,
    found: &'a mut Vec<Difference>,
    limit: usize,
    ignored: &'a dyn Fn(&str) -> bool,
}

impl Walk<'_> {
    fn walk(&mut self, expected: &Value, actual: &Value) {
        if self.found.len() >= self.limit {
            return;
        }
        match (expected, actual) {
            (Value::Object(expected), Value::Object(actual)) => {
                for (key, expected_value) in expected {
                    if self.found.len() >= self.limit {
                        return;
                    }
                    let len = self.path.len();
                    push_key(&mut self.path, key);
                    match actual.get(key) {
                        Some(actual_value) => self.descend(expected_value, actual_value),
                        None => self.note(DifferenceKind::Removed),
                    }
                    self.path.truncate(len);
                }
                for key in actual.keys().filter(|key| !expected.contains_key(*key)) {
                    if self.found.len() >= self.limit {
                        break;
                    }
                    let len = self.path.len();
                    push_key(&mut self.path, key);
                    self.note(DifferenceKind::Added);
                    self.path.truncate(len);
                }
            }
            (Value::Array(expected), Value::Array(actual)) => {
                for index in 0..expected.len().max(actual.len()) {
                    if self.found.len() >= self.limit {
                        break;
                    }
                    let len = self.path.len();
                    let _ = write!(self.path, "[{index}]");
                    match (expected.get(index), actual.get(index)) {
                        (Some(expected), Some(actual)) => self.descend(expected, actual),
                        (Some(_), None) => self.note(DifferenceKind::Removed),
                        (None, Some(_)) => self.note(DifferenceKind::Added),
                        (None, None) => {}
                    }
                    self.path.truncate(len);
                }
            }
            (expected, actual) if same_type(expected, actual) => {
                if expected != actual {
                    self.note(DifferenceKind::ValueChanged);
                }
            }
            _ => self.note(DifferenceKind::TypeChanged),
        }
    }

    /// Walks into a field unless it is ignored. Asked only of fields that hold more fields:
    /// a leaf is asked only when it differs ([`Self::note`]), so equal leaves cost nothing.
    fn descend(&mut self, expected: &Value, actual: &Value) {
        let containers = matches!(
            (expected, actual),
            (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_))
        );
        if !(containers && (self.ignored)(&self.path)) {
            self.walk(expected, actual);
        }
    }

    fn note(&mut self, kind: DifferenceKind) {
        if !(self.ignored)(&self.path) {
            // Cut as it is copied: a response's keys may be megabytes long, and each of up to
            // `limit` differences would copy them.
            let path = clipped(&self.path).unwrap_or_else(|| self.path.clone());
            self.found.push(Difference { path, kind });
        }
    }
}

/// Whether two values are of the same JSON type (1 and 1.5 are both numbers).
fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// `.key`, or `["key"]` (JSON-escaped) when the key is not a plain identifier.
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Value::String(key.to_owned()).to_string());
        path.push(']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::comparer::NAME_CHARS;
    use serde_json::json;

    fn diff(expected: Value, actual: Value) -> Vec<(String, &'static str)> {
        differences(&expected, &actual, 100)
            .into_iter()
            .map(|difference| (difference.path, difference.kind.as_str()))
            .collect()
    }

    #[test]
    fn identical_documents_have_no_differences() {
        let document = json!({"items": [{"id": 1, "price": 9.5}], "next": null});
        assert!(diff(document.clone(), document).is_empty());
    }

    #[test]
    fn each_kind_is_named_by_its_path() {
        let expected =
            json!({"items": [{"id": 1, "price": 9.5}, {"id": 2}], "total": 2, "old": true});
        let actual = json!({"items": [{"id": 1, "price": 9.75}], "total": "2", "new": []});
        assert_eq!(
            diff(expected, actual),
            [
                ("$.items[0].price".to_owned(), "changed_value"),
                ("$.items[1]".to_owned(), "removed"),
                ("$.old".to_owned(), "removed"),
                ("$.total".to_owned(), "changed_type"),
                ("$.new".to_owned(), "added"),
            ]
        );
    }

    #[test]
    fn keys_that_are_not_identifiers_are_quoted() {
        let expected = json!({"a.b": 1, "x y": {"\"q\"": 1}});
        let actual = json!({"a.b": 2, "x y": {"\"q\"": 2}});
        assert_eq!(
            diff(expected, actual),
            [
                (r#"$["a.b"]"#.to_owned(), "changed_value"),
                (r#"$["x y"]["\"q\""]"#.to_owned(), "changed_value"),
            ]
        );
    }

    #[test]
    fn a_document_that_differs_everywhere_costs_at_most_the_limit() {
        let expected = Value::Array((0..10_000).map(Value::from).collect());
        let actual = Value::Array((0..10_000).map(|i| Value::from(i + 1)).collect());
        assert_eq!(differences(&expected, &actual, 50).len(), 50);
    }

    #[test]
    fn a_root_of_another_type_is_one_type_change() {
        assert_eq!(
            diff(json!([1]), json!({"a": 1})),
            [("$".to_owned(), "changed_type")]
        );
    }

    #[test]
    fn a_long_key_is_cut_in_each_path_it_names() {
        let key = "k".repeat(1 << 20);
        let found = differences(&json!({ &key: [1, 2, 3] }), &json!({ &key: [4, 5, 6] }), 10);
        assert_eq!(found.len(), 3);
        for difference in found {
            assert_eq!(difference.path.chars().count(), NAME_CHARS + 1);
            assert!(difference.path.starts_with("$.kkk") && difference.path.ends_with('…'));
        }
    }
}
