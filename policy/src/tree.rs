//! Walks over the spanned TOML tree, before it is turned into typed values: line numbers,
//! field paths, the secret-literal scan and the unknown-field sweep.
//!
//! serde's `deny_unknown_fields` stops at the first unknown field; operators want every
//! problem at once. So the unknown fields are found here first, using the field lists serde
//! itself derives from the raw types (see [`fields_of`]), reported with their lines and
//! removed; the typed pass then sees only known fields and keeps `deny_unknown_fields` as a
//! backstop.

use std::cell::Cell;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::Problem;
use crate::secret_like;

/// Maps byte offsets to 1-based line numbers.
pub(crate) struct Lines {
    starts: Vec<usize>,
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

// === impl Lines ===

impl Lines {
    pub(crate) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    /// The 1-based line that holds byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// The line a span starts on; line 1 when the span is unknown.
    pub(crate) fn of(&self, span: Option<Range<usize>>) -> usize {
        span.map_or(1, |s| self.line(s.start))
    }
}

/// Renders a path such as `providers[2].base_url`.
pub(crate) fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&shown_key(k));
            }
            Step::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Joins a parent path and a key.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        shown_key(key)
    } else {
        format!("{parent}.{}", shown_key(key))
    }
}

/// A key as it may appear in a message: quoted if unusual, hidden if it looks like a secret.
fn shown_key(key: &str) -> String {
    if secret_like::detect(key).is_some() {
        "<key hidden: looks like a secret>".to_owned()
    } else if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Reports every string (and key) in the tree that looks like a secret, by path, never
/// by value.
pub(crate) fn scan_secrets(table: &DeTable<'_>, lines: &Lines, path: &str, out: &mut Vec<Problem>) {
    for (key, value) in table.iter() {
        let key_text: &str = key.get_ref();
        let here = join(path, key_text);
        if let Some(kind) = secret_like::detect(key_text) {
            out.push(Problem::new(
                lines.of(Some(key.span())),
                here.clone(),
                format!(
                    "a key name looks like a secret ({kind}); secrets never belong in the policy"
                ),
            ));
        }
        scan_value(value, lines, &here, out);
    }
}

fn scan_value(value: &Spanned<DeValue<'_>>, lines: &Lines, path: &str, out: &mut Vec<Problem>) {
    match value.get_ref() {
        DeValue::String(s) => {
            if let Some(kind) = secret_like::detect(s) {
                out.push(Problem::new(
                    lines.of(Some(value.span())),
                    path,
                    format!(
                        "looks like a secret ({kind}); secrets never belong in the policy: store provider \
                         credentials with `krouter-admin credentials set NAME` and refer to them by name"
                    ),
                ));
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                scan_value(item, lines, &format!("{path}[{i}]"), out);
            }
        }
        DeValue::Table(t) => scan_secrets(t, lines, path, out),
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
}

/// Removes the keys of `table` that `fields` does not list, reporting each.
pub(crate) fn sweep_unknown(
    table: &mut DeTable<'_>,
    fields: &[&str],
    path: &str,
    lines: &Lines,
    out: &mut Vec<Problem>,
) {
    let unknown: Vec<(String, Range<usize>)> = table
        .iter()
        .filter(|(key, _)| !fields.contains(&key.get_ref().as_ref()))
        .map(|(key, value)| (key.get_ref().to_string(), value.span()))
        .collect();
    for (key, span) in unknown {
        table.remove(key.as_str());
        out.push(Problem::new(
            lines.of(Some(span)),
            join(path, &key),
            format!("unknown field; expected one of: {}", fields.join(", ")),
        ));
    }
}

/// Checks the shape the schema expects where it expects a table, so that serde never sees
/// a struct written as a positional array (`access = [false, ...]`), which it would accept
/// field by field and so bypass `deny_unknown_fields`. A value of the wrong shape is
/// reported, removed, and its path recorded as dropped.
pub(crate) struct Shape<'a> {
    pub(crate) lines: &'a Lines,
    pub(crate) out: &'a mut Vec<Problem>,
    pub(crate) dropped: &'a mut Vec<String>,
}

impl Shape<'_> {
    /// The table under `key`, if present and a table.
    pub(crate) fn table<'t, 'i>(
        &mut self,
        parent: &'t mut DeTable<'i>,
        key: &str,
        parent_path: &str,
    ) -> Option<&'t mut DeTable<'i>> {
        let path = join(parent_path, key);
        let value = parent.get(key)?;
        if !value.get_ref().is_table() {
            self.wrong(&path, value, "a table");
            parent.remove(key);
            return None;
        }
        match parent.get_mut(key)?.get_mut() {
            DeValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The tables of the array of tables under `key`, with their indices; other elements are
    /// reported and replaced by empty tables marked as dropped.
    pub(crate) fn tables<'t, 'i>(
        &mut self,
        parent: &'t mut DeTable<'i>,
        key: &str,
        parent_path: &str,
    ) -> Vec<(usize, &'t mut DeTable<'i>)> {
        let path = join(parent_path, key);
        let Some(value) = parent.get(key) else {
            return Vec::new();
        };
        if !value.get_ref().is_array() {
            self.wrong(&path, value, "an array of tables");
            parent.remove(key);
            return Vec::new();
        }
        let Some(DeValue::Array(items)) = parent.get_mut(key).map(Spanned::get_mut) else {
            return Vec::new();
        };
        let mut tables = Vec::new();
        for (i, item) in items.iter_mut().enumerate() {
            if !item.get_ref().is_table() {
                self.wrong(&format!("{path}[{i}]"), item, "a table");
                *item = Spanned::new(item.span(), DeValue::Table(DeTable::new()));
            }
            if let DeValue::Table(t) = item.get_mut() {
                tables.push((i, t));
            }
        }
        tables
    }

    /// Reports and removes the keys of `table` that `fields` does not list.
    pub(crate) fn fields(&mut self, table: &mut DeTable<'_>, fields: &[&str], path: &str) {
        sweep_unknown(table, fields, path, self.lines, self.out);
    }

    fn wrong(&mut self, path: &str, value: &Spanned<DeValue<'_>>, expected: &str) {
        self.out.push(Problem::new(
            self.lines.of(Some(value.span())),
            path,
            format!(
                "wrong type: found {}, expected {expected}",
                article(value.get_ref().type_str())
            ),
        ));
        self.dropped.push(path.to_owned());
    }
}

/// A TOML type name with its article, as messages say it.
pub(crate) fn article(type_name: &str) -> String {
    match type_name {
        "integer" | "array" => format!("an {type_name}"),
        "datetime" => "a date-time".to_owned(),
        other => format!("a {other}"),
    }
}

/// The value at `steps`, if there is one.
pub(crate) fn value_at<'t, 'i>(table: &'t DeTable<'i>, steps: &[Step]) -> Option<&'t DeValue<'i>> {
    let (first, rest) = steps.split_first()?;
    let Step::Key(key) = first else {
        return None;
    };
    let (_, value) = table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key.as_str())?;
    let mut current = value.get_ref();
    for step in rest {
        current = match (current, step) {
            (DeValue::Table(t), Step::Key(k)) => t
                .iter()
                .find(|(key, _)| key.get_ref().as_ref() == k.as_str())?
                .1
                .get_ref(),
            (DeValue::Array(items), Step::Index(i)) => items.get(*i)?.get_ref(),
            _ => return None,
        };
    }
    Some(current)
}

/// The path of the innermost value whose span holds `offset`.
pub(crate) fn path_at(table: &DeTable<'_>, offset: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    if locate_in_table(table, offset, &mut steps) {
        steps
    } else {
        Vec::new()
    }
}

/// Table and array-of-tables spans cover only their headers, so containers are searched
/// by their contents, and scalars and inline arrays by their own spans.
fn locate_in_table(table: &DeTable<'_>, offset: usize, steps: &mut Vec<Step>) -> bool {
    for (key, value) in table.iter() {
        steps.push(Step::Key(key.get_ref().to_string()));
        if key.span().contains(&offset) || locate_in_value(value, offset, steps) {
            return true;
        }
        steps.pop();
    }
    false
}

fn locate_in_value(value: &Spanned<DeValue<'_>>, offset: usize, steps: &mut Vec<Step>) -> bool {
    match value.get_ref() {
        DeValue::Table(t) => locate_in_table(t, offset, steps) || value.span().contains(&offset),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                steps.push(Step::Index(i));
                if locate_in_value(item, offset, steps) {
                    return true;
                }
                steps.pop();
            }
            value.span().contains(&offset)
        }
        DeValue::String(_)
        | DeValue::Integer(_)
        | DeValue::Float(_)
        | DeValue::Boolean(_)
        | DeValue::Datetime(_) => value.span().contains(&offset),
    }
}

/// Removes the entry at the deepest key of `steps`; false when there is none to remove.
pub(crate) fn remove_at(table: &mut DeTable<'_>, steps: &[Step]) -> bool {
    let last_key = steps.iter().rposition(|s| matches!(s, Step::Key(_)));
    let Some(last_key) = last_key else {
        return false;
    };
    let (parents, rest) = steps.split_at(last_key);
    let Some(Step::Key(key)) = rest.first() else {
        return false;
    };
    let Some(parent) = descend(table, parents) else {
        return false;
    };
    parent.remove(key.as_str()).is_some()
}

fn descend<'a, 'i>(table: &'a mut DeTable<'i>, steps: &[Step]) -> Option<&'a mut DeTable<'i>> {
    let Some((first, rest)) = steps.split_first() else {
        return Some(table);
    };
    let Step::Key(key) = first else {
        return None;
    };
    let (_, value) = table
        .iter_mut()
        .find(|(k, _)| k.get_ref().as_ref() == key.as_str())?;
    descend_value(value.get_mut(), rest)
}

fn descend_value<'a, 'i>(
    value: &'a mut DeValue<'i>,
    steps: &[Step],
) -> Option<&'a mut DeTable<'i>> {
    match (value, steps.split_first()) {
        (DeValue::Table(t), _) => descend(t, steps),
        (DeValue::Array(items), Some((Step::Index(i), rest))) => {
            descend_value(items.get_mut(*i)?.get_mut(), rest)
        }
        _ => None,
    }
}

/// The field names serde derived for `T`, read by asking `T` to deserialize itself from a
/// deserializer that records them and stops.
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let seen = Cell::new(&[][..]);
    // The "error" is how the probe stops once it has the list; it carries nothing.
    let _stopped = T::deserialize(FieldProbe(&seen));
    seen.get()
}

struct FieldProbe<'a>(&'a Cell<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(fields);
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        let l = Lines::new("a\nbb\n\nc");
        assert_eq!(l.line(0), 1);
        assert_eq!(l.line(1), 1);
        assert_eq!(l.line(2), 2);
        assert_eq!(l.line(5), 3);
        assert_eq!(l.line(6), 4);
        assert_eq!(l.of(None), 1);
    }

    #[test]
    fn paths_render_like_an_operator_writes_them() {
        let p = [
            Step::Key("providers".into()),
            Step::Index(2),
            Step::Key("base_url".into()),
        ];
        assert_eq!(render(&p), "providers[2].base_url");
        assert_eq!(join("", "a b"), "\"a b\"");
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn field_probe_reads_serde_field_lists() {
        #[derive(Deserialize)]
        #[expect(dead_code, reason = "only the field list is read")]
        struct Sample {
            alpha: u8,
            beta: String,
        }
        assert_eq!(fields_of::<Sample>(), &["alpha", "beta"]);
        assert!(fields_of::<u8>().is_empty());
    }

    #[test]
    fn remove_at_removes_nested_entries_and_refuses_empty_paths() {
        let text = "[a]\nb = [ { c = 1, d = 2 } ]\n";
        let mut doc = DeTable::parse(text).unwrap().into_inner();
        let offset = text.find('1').unwrap();
        let steps = path_at(&doc, offset);
        assert_eq!(render(&steps), "a.b[0].c");
        assert!(remove_at(&mut doc, &steps));
        assert!(!remove_at(&mut doc, &steps));
        assert!(!remove_at(&mut doc, &[]));
    }
}
