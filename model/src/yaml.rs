//! From bytes to a tree of nodes that know their line: document splitting and the YAML parse.
//!
//! The stream is split into documents here, at `---` lines, rather than by the YAML library's
//! multi-document reader, for two reasons: that reader skips empty documents, so it cannot tell
//! which document number an error is in; and a syntax error in one document ends its stream,
//! whereas splitting lets every other document still be checked. A line that starts with `---`
//! followed by a space or the end of the line is a document marker wherever it appears (YAML
//! forbids it inside content, even in block scalars), so the split is exact for what YAML
//! accepts.
//!
//! JSON is YAML, so it goes through the same parser (and gets lines). A stream of concatenated
//! JSON objects, which kubectl also accepts, is split into one document per object.
//!
//! Each document is parsed into a [`Node`] tree with serde-saphyr's `Spanned`, which records
//! the line of every value and key. Aliases, merge keys (`<<`) and tags are resolved by the
//! parser; duplicate keys and budget overruns (nesting deeper than 32, alias bombs) are errors.
//!
//! Scalars follow YAML 1.2 (`yes` is a string), except that integers with a leading zero are
//! octal (`0644` is 420), as in the YAML 1.1 Kubernetes reads, so that the file modes of
//! Kubernetes' examples mean what they mean there.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};

/// How deep values may nest.
pub(crate) const MAX_DEPTH: usize = 32;

/// One document's text and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Document<'a> {
    /// 1-based number in the stream, counting empty documents.
    pub(crate) number: usize,
    /// 1-based line of the document's first line in the whole input.
    pub(crate) first_line: u32,
    /// The document's text (including its `---` marker line, if any).
    pub(crate) text: &'a str,
}

/// A parsed value and the line it is on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) line: u32,
    pub(crate) value: Value,
    /// A number's text as written, when that is not how the number prints (`010`, `1.10`,
    /// `0x1F`): what messages quote, so that "quote it" suggests what the user meant.
    written: Option<Box<str>>,
    /// Where a number's text is in the document, until `written` is filled in.
    number_span: Option<(usize, usize)>,
}

impl Node {
    /// The scalar's text as written (numbers as the user wrote them).
    pub(crate) fn text(&self) -> Option<String> {
        match &self.written {
            Some(w) => Some(w.to_string()),
            None => self.value.scalar_text(),
        }
    }

    /// What the value is, for "expected X, got Y" messages, numbers as written.
    pub(crate) fn describe(&self) -> String {
        match (&self.written, &self.value) {
            (Some(w), Value::Int(_)) => format!("integer {w}"),
            (Some(w), Value::Float(_)) => format!("number {w}"),
            _ => self.value.describe(),
        }
    }
}

/// A mapping key: its text and line. Non-string scalar keys (`80: x`) become their text, as
/// Kubernetes' YAML-to-JSON conversion does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) line: u32,
}

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// What the value is, for "expected X, got Y" messages.
    pub(crate) fn describe(&self) -> String {
        fn clip(s: &str) -> String {
            if s.chars().count() > 40 {
                format!("{:?}...", s.chars().take(40).collect::<String>())
            } else {
                format!("{s:?}")
            }
        }
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("boolean {b}"),
            Value::Int(i) => format!("integer {i}"),
            Value::Float(f) => format!("number {}", format_float(*f)),
            Value::Str(s) => format!("string {}", clip(s)),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    /// The text of a scalar (numbers and booleans as written in canonical form).
    pub(crate) fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(format_float(*f)),
            Value::Str(s) => Some(s.clone()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// A float as YAML would write it: the shortest text that reads back to the same value, with
/// a `.0` for whole numbers (`1.0` stays `1.0`, not `1`).
fn format_float(f: f64) -> String {
    format!("{f:?}")
}

/// Splits a stream into documents. Text before the first `---` that holds only comments,
/// blank lines and directives belongs to the first document rather than being one itself.
pub(crate) fn split_documents(text: &str) -> Vec<Document<'_>> {
    struct Chunk {
        start: usize,
        first_line: u32,
        has_marker: bool,
        has_content: bool,
        ended: bool,
    }
    let mut chunks = Vec::new();
    let mut cur = Chunk {
        start: 0,
        first_line: 1,
        has_marker: false,
        has_content: false,
        ended: false,
    };
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = |m: &str| {
            bare.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if marker("---") {
            if cur.has_marker || cur.has_content {
                chunks.push((cur, offset));
                cur = Chunk {
                    start: offset,
                    first_line: line_no,
                    has_marker: true,
                    has_content: false,
                    ended: false,
                };
            } else {
                // Comments or directives before the first marker belong to its document.
                cur.has_marker = true;
            }
            // `--- value` puts content on the marker line itself.
            if !bare[3..].trim().is_empty() && !bare[3..].trim_start().starts_with('#') {
                cur.has_content = true;
            }
        } else if marker("...") {
            cur.ended = true;
        } else {
            let trimmed = bare.trim_start();
            let is_content = !trimmed.is_empty() && !trimmed.starts_with('#');
            if cur.ended && is_content {
                // A directive or a bare document after `...` starts the next document.
                chunks.push((cur, offset));
                cur = Chunk {
                    start: offset,
                    first_line: line_no,
                    has_marker: false,
                    has_content: false,
                    ended: false,
                };
            }
            // Directives (`%YAML`) before a document's marker are not content.
            let directive = bare.starts_with('%') && !cur.has_marker;
            if is_content && !directive {
                cur.has_content = true;
            }
        }
        offset += line.len();
    }
    chunks.push((cur, text.len()));

    let mut docs = Vec::new();
    for (chunk, end) in chunks {
        if !(chunk.has_marker || chunk.has_content) {
            continue;
        }
        let piece = &text[chunk.start..end];
        let number = docs.len() + 1;
        docs.push(Document {
            number,
            first_line: chunk.first_line,
            text: piece,
        });
    }
    split_json_streams(docs)
}

/// Splits documents that are several concatenated JSON values (`{...}{...}`) into one document
/// per value, numbering them in order.
fn split_json_streams(docs: Vec<Document<'_>>) -> Vec<Document<'_>> {
    let mut out: Vec<Document<'_>> = Vec::with_capacity(docs.len());
    for doc in docs {
        let trimmed = doc.text.trim_start();
        let pieces = if trimmed.starts_with('{') {
            json_values(doc.text)
        } else {
            None
        };
        match pieces {
            Some(pieces) if pieces.len() > 1 => {
                for (start, end) in pieces {
                    let lines_before = doc.text[..start].matches('\n').count();
                    out.push(Document {
                        number: 0,
                        first_line: doc
                            .first_line
                            .saturating_add(u32::try_from(lines_before).unwrap_or(u32::MAX)),
                        text: &doc.text[start..end],
                    });
                }
            }
            _ => out.push(doc),
        }
    }
    for (i, doc) in out.iter_mut().enumerate() {
        doc.number = i + 1;
    }
    out
}

/// The byte ranges of the JSON values in `text`, if it is a whitespace-separated sequence of
/// them.
fn json_values(text: &str) -> Option<Vec<(usize, usize)>> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<de::IgnoredAny>();
    let mut ranges = Vec::new();
    let mut start = 0;
    while let Some(item) = stream.next() {
        item.ok()?;
        let end = stream.byte_offset();
        ranges.push((start, end));
        start = end;
    }
    Some(ranges)
}

/// Why a document did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: Option<u32>,
    pub(crate) message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Parses one document: `Ok(None)` for an empty (null) document.
pub(crate) fn parse_document(doc: &Document<'_>) -> Result<Option<Node>, SyntaxError> {
    let options = serde_saphyr::options! {
        // YAML 1.2: `yes`/`no`/`on`/`off` are strings, not booleans.
        strict_booleans: true,
        // But an integer with a leading zero is octal, as in the YAML 1.1 Kubernetes reads:
        // `defaultMode: 0644` is 420 (rw-r--r--) there, and must mean the same here (YAML 1.2
        // would read it as 644, another mode, or worse, a valid one: 0400 would be 400).
        legacy_octal_numbers: true,
        // Tags shoal does not know would otherwise be dropped silently.
        reject_unsupported_tags: true,
        with_snippet: false,
        // Manifests nest about 12 deep. The parser recurses per level, and in a debug build a
        // level costs ~40 KiB of stack, so the library's default of 64 could overflow a 2 MiB
        // thread (tokio workers, test threads).
        budget: serde_saphyr::budget! { max_depth: MAX_DEPTH },
    };
    let offset = doc.first_line - 1;
    let parsed: Result<Option<Spanned<Value>>, _> =
        serde_saphyr::from_str_with_options(doc.text, options);
    match parsed {
        Ok(None) => Ok(None),
        Ok(Some(root)) => {
            let mut node = to_node(root);
            if matches!(node.value, Value::Null) {
                return Ok(None);
            }
            shift_lines(&mut node, offset);
            fill_written(&mut node, doc.text);
            Ok(Some(node))
        }
        Err(e) => {
            let line = e
                .location()
                .map(|l| u32::try_from(l.line()).unwrap_or(u32::MAX))
                .filter(|l| *l > 0)
                .map(|l| l.saturating_add(offset));
            let message = match &e {
                serde_saphyr::Error::Budget {
                    breach: BudgetBreach::Depth { .. },
                    ..
                } => format!("nested more than {MAX_DEPTH} levels deep"),
                _ => format!(
                    "invalid YAML: {}",
                    sanitize(&UserMessageFormatter.format_message(&e))
                ),
            };
            Err(SyntaxError { line, message })
        }
    }
}

/// Control characters out of parser messages (they may quote the input).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn shift_lines(node: &mut Node, offset: u32) {
    node.line = node.line.saturating_add(offset);
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| shift_lines(n, offset)),
        Value::Map(entries) => {
            for (k, v) in entries {
                k.line = k.line.saturating_add(offset);
                shift_lines(v, offset);
            }
        }
        _ => {}
    }
}

/// Sets the numbers' `written` text from the document, where it differs from how they print.
fn fill_written(node: &mut Node, text: &str) {
    if let Some((start, len)) = node.number_span.take() {
        let written = text
            .get(start..start.saturating_add(len))
            .map(str::trim)
            // Only a plain number (not an alias, a tag, or a span that is not the value's).
            .filter(|w| {
                w.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '.'))
                    && !w.contains(char::is_whitespace)
            });
        if let Some(w) = written
            && Some(w) != node.value.scalar_text().as_deref()
        {
            node.written = Some(w.into());
        }
    }
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| fill_written(n, text)),
        Value::Map(entries) => entries.iter_mut().for_each(|(_, n)| fill_written(n, text)),
        _ => {}
    }
}

fn line_of<T>(s: &Spanned<T>) -> u32 {
    u32::try_from(s.referenced.line()).unwrap_or(u32::MAX)
}

fn to_node(s: Spanned<Value>) -> Node {
    let number_span = match s.value {
        Value::Int(_) | Value::Float(_) => {
            // Where the number is defined (an alias refers to it from elsewhere).
            let span = s.defined.span();
            span.byte_offset()
                .zip(span.byte_len())
                .and_then(|(o, l)| Some((usize::try_from(o).ok()?, usize::try_from(l).ok()?)))
        }
        _ => None,
    };
    Node {
        line: line_of(&s),
        value: s.value,
        written: None,
        number_span,
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer too large"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        // `!!binary` scalars: kept as text when they are UTF-8, which is all a manifest field
        // can use.
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(to_node(item));
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Value>>()? {
            let line = line_of(&key);
            let name = match key.value.scalar_text() {
                Some(text) => text,
                None if matches!(key.value, Value::Null) => "null".to_owned(),
                None => {
                    return Err(de::Error::custom(format!(
                        "mapping keys must be strings, not {} (line {line})",
                        key.value.describe()
                    )));
                }
            };
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push((Key { name, line }, to_node(value)));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_summary(text: &str) -> Vec<(usize, u32, String)> {
        split_documents(text)
            .into_iter()
            .map(|d| (d.number, d.first_line, d.text.to_owned()))
            .collect()
    }

    #[test]
    fn splits_at_markers() {
        assert_eq!(doc_summary(""), vec![]);
        assert_eq!(doc_summary("# just a comment\n\n"), vec![]);
        assert_eq!(doc_summary("a: 1\n"), vec![(1, 1, "a: 1\n".into())]);
        assert_eq!(
            doc_summary("# head\n---\na: 1\n---\n---\nb: 2\n"),
            vec![
                (1, 1, "# head\n---\na: 1\n".into()),
                (2, 4, "---\n".into()),
                (3, 5, "---\nb: 2\n".into()),
            ]
        );
        assert_eq!(
            doc_summary("a: 1\n--- # c\r\nb: |\n  ---x\n  text\n"),
            vec![
                (1, 1, "a: 1\n".into()),
                (2, 2, "--- # c\r\nb: |\n  ---x\n  text\n".into())
            ]
        );
        // `---` glued to text is not a marker.
        assert_eq!(doc_summary("a: 1\n---x: 2\n").len(), 1);
        // A document end marker followed by a bare document.
        assert_eq!(
            doc_summary("a: 1\n...\nb: 2\n"),
            vec![(1, 1, "a: 1\n...\n".into()), (2, 3, "b: 2\n".into())]
        );
        // A directive after `...` goes with the next document.
        assert_eq!(
            doc_summary("a: 1\n...\n%YAML 1.2\n---\nb: 2\n"),
            vec![
                (1, 1, "a: 1\n...\n".into()),
                (2, 3, "%YAML 1.2\n---\nb: 2\n".into())
            ]
        );
        assert_eq!(doc_summary("%YAML 1.2\n---\nb: 2\n").len(), 1);
    }

    #[test]
    fn splits_json_streams() {
        let docs = doc_summary("{\"a\": 1}\n{\"b\":\n 2}\n");
        assert_eq!(
            docs,
            vec![(1, 1, "{\"a\": 1}".into()), (2, 1, "\n{\"b\":\n 2}".into())]
        );
        // The second one's lines count from where it starts.
        let node = parse_document(&split_documents("{\"a\": 1}\n{\"b\":\n 2}\n")[1])
            .unwrap()
            .unwrap();
        let Value::Map(entries) = node.value else {
            panic!()
        };
        assert_eq!(entries[0].0.line, 2);
        assert_eq!(entries[0].1.line, 3);
        // A single JSON object or a YAML flow mapping is left alone.
        assert_eq!(doc_summary("{a: 1}\n").len(), 1);
        assert_eq!(doc_summary("{\"a\": 1}\n").len(), 1);
    }

    #[test]
    fn nodes_have_lines() {
        let text = "x: 1\n---\na:\n  b: [1, \"2\", 1.5, yes, ~]\n";
        let docs = split_documents(text);
        let node = parse_document(&docs[1]).unwrap().unwrap();
        assert_eq!(node.line, 3);
        let Value::Map(entries) = &node.value else {
            panic!()
        };
        assert_eq!((entries[0].0.name.as_str(), entries[0].0.line), ("a", 3));
        let Value::Map(inner) = &entries[0].1.value else {
            panic!()
        };
        assert_eq!(inner[0].0.line, 4);
        let Value::Seq(items) = &inner[0].1.value else {
            panic!()
        };
        let values: Vec<_> = items.iter().map(|n| (n.line, n.value.clone())).collect();
        assert_eq!(
            values,
            vec![
                (4, Value::Int(1)),
                (4, Value::Str("2".into())),
                (4, Value::Float(1.5)),
                (4, Value::Str("yes".into())),
                (4, Value::Null),
            ]
        );
    }

    #[test]
    fn syntax_errors_have_lines() {
        let text = "a: 1\n---\nb: [1, 2\n";
        let docs = split_documents(text);
        let err = parse_document(&docs[1]).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(err.message.starts_with("invalid YAML: "), "{err}");
        assert!(!err.message.contains("line"), "{err}");
        let dup = parse_document(&split_documents("a: 1\na: 2\n")[0]).unwrap_err();
        assert!(dup.message.contains("duplicate"), "{dup}");
        assert_eq!(dup.line, Some(2));
    }

    #[test]
    fn leading_zero_integers_are_octal() {
        let value = |text: &str| {
            let node = parse_document(&split_documents(&format!("a: {text}\n"))[0])
                .unwrap()
                .unwrap();
            let Value::Map(entries) = node.value else {
                panic!()
            };
            entries[0].1.value.clone()
        };
        assert_eq!(value("0644"), Value::Int(0o644));
        assert_eq!(value("0400"), Value::Int(0o400));
        assert_eq!(value("0o644"), Value::Int(0o644));
        assert_eq!(value("420"), Value::Int(420));
        assert_eq!(value("0"), Value::Int(0));
        assert_eq!(value("'0644'"), Value::Str("0644".into()));
        // Not octal digits: a number, as YAML 1.1 reads it too.
        assert_eq!(value("08"), Value::Float(8.0));
        assert_eq!(value("0.5"), Value::Float(0.5));
    }

    #[test]
    fn numbers_keep_their_text() {
        let node = parse_document(&split_documents("a: [010, 1.10, 0x1F, 5, 1.5, &n 07, *n]\n")[0])
            .unwrap()
            .unwrap();
        let Value::Map(entries) = node.value else {
            panic!()
        };
        let Value::Seq(items) = &entries[0].1.value else {
            panic!()
        };
        let described: Vec<String> = items.iter().map(Node::describe).collect();
        assert_eq!(
            described,
            [
                "integer 010",
                "number 1.10",
                "integer 0x1F",
                "integer 5",
                "number 1.5",
                "integer 07",
                "integer 07",
            ]
        );
        assert_eq!(items[0].text().as_deref(), Some("010"));
        assert_eq!(items[3].text().as_deref(), Some("5"));
    }

    #[test]
    fn empty_and_null_documents() {
        for text in ["---\n", "--- ~\n", "---\n# nothing\n", "null\n"] {
            let docs = split_documents(text);
            assert_eq!(parse_document(&docs[0]), Ok(None), "{text:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let docs = split_documents(&text);
        assert!(parse_document(&docs[0]).is_err());
        let block: String = (0..200).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        assert!(parse_document(&split_documents(&block)[0]).is_err());
    }
}
