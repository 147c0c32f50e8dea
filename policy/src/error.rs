//! Policy errors with positions, and key paths such as `routes[1].split[0].upstream`.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A key path into the policy document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<PathSegment>);

impl KeyPath {
    /// The empty path: the document itself.
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a key.
    pub fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Key(key.to_owned()));
        KeyPath(segments)
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Index(index));
        KeyPath(segments)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => write!(f, "{key}")?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Key path, such as `routes[0].split[1].upstream`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    /// Formats the error the way `meshgate check` prints it: `FILE:LINE:COLUMN: path: message`.
    pub fn display_with_file(&self, file: &str) -> String {
        format!(
            "{file}:{}:{}: {}: {}",
            self.line, self.column, self.path, self.message
        )
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.line, self.column, self.path, self.message
        )
    }
}

/// Turns byte offsets into 1-based line and column numbers.
pub(crate) struct LineIndex<'a> {
    source: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(source: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex {
            source,
            line_starts,
        }
    }

    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let start = self.line_starts[line];
        let column = self
            .source
            .get(start..offset)
            .map_or(offset - start, |text| text.chars().count());
        (line + 1, column + 1)
    }
}

/// Collects errors and resolves the position of each from its key path.
pub(crate) struct ErrorSink<'a> {
    lines: LineIndex<'a>,
    document: &'a Spanned<DeTable<'a>>,
    pub(crate) errors: Vec<PolicyError>,
}

impl<'a> ErrorSink<'a> {
    pub(crate) fn new(source: &'a str, document: &'a Spanned<DeTable<'a>>) -> Self {
        ErrorSink {
            lines: LineIndex::new(source),
            document,
            errors: Vec::new(),
        }
    }

    /// Records an error at the value that `path` names (or the nearest enclosing one).
    pub(crate) fn at(&mut self, path: &KeyPath, message: impl Into<String>) {
        let span = span_of(self.document, path);
        self.at_span(path, span, message);
    }

    /// Records an error at an explicit byte span.
    pub(crate) fn at_span(
        &mut self,
        path: &KeyPath,
        span: Range<usize>,
        message: impl Into<String>,
    ) {
        let (line, column) = self.lines.position(span.start);
        self.errors.push(PolicyError {
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// The span of the value at `path`, or of the deepest part of it that exists.
pub(crate) fn span_of(document: &Spanned<DeTable<'_>>, path: &KeyPath) -> Range<usize> {
    let mut span = document.span();
    let mut current: Option<&DeValue<'_>> = None;
    let mut table: Option<&DeTable<'_>> = Some(document.get_ref());
    for segment in &path.0 {
        let next: Option<&Spanned<DeValue<'_>>> = match (segment, table, current) {
            (PathSegment::Key(key), Some(t), _) => t.get(key.as_str()),
            (PathSegment::Index(i), _, Some(DeValue::Array(array))) => array.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        span = next.span();
        current = Some(next.get_ref());
        table = next.get_ref().as_table();
    }
    span
}
