//! Errors of `apply -f`: each names the file, document, field path and line.

use std::fmt;

/// One problem in the input, displayed as
/// `deploy.yaml: doc 2: spec.template.spec.containers[0].ports[0].containerPort: expected
/// integer, got string "80" (line 17)`.
///
/// The parts that do not apply are left out: a file that cannot be read has no document, a
/// syntax error has no field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ManifestError {
    /// The file name as given, or `<stdin>`. (Not `source`: thiserror and
    /// `std::error::Error::source` give that name another meaning.)
    pub file: String,
    /// The 1-based document in the file, counting empty ones (`---` with nothing after it).
    pub doc: Option<usize>,
    /// The field path (`spec.template.spec.containers[0].image`), or empty for the whole
    /// document.
    pub path: String,
    /// The 1-based line.
    pub line: Option<u32>,
    /// What is wrong, and where it helps, what to do.
    pub message: String,
}

impl ManifestError {
    fn render(&self) -> String {
        let mut s = self.file.clone();
        if let Some(doc) = self.doc {
            s.push_str(&format!(": doc {doc}"));
        }
        if !self.path.is_empty() {
            s.push_str(": ");
            s.push_str(&self.path);
        }
        s.push_str(": ");
        s.push_str(&self.message);
        if let Some(line) = self.line {
            s.push_str(&format!(" (line {line})"));
        }
        s
    }
}

/// Every problem of one `parse` (non-empty), one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl ManifestErrors {
    /// Lines shown before "... and N more".
    const SHOWN: usize = 100;

    fn render(&self) -> String {
        let mut out = String::new();
        for (i, e) in self.0.iter().take(Self::SHOWN).enumerate() {
            if i > 0 {
                out.push('\n');
            }
            fmt::Write::write_fmt(&mut out, format_args!("{e}")).ok();
        }
        if self.0.len() > Self::SHOWN {
            out.push_str(&format!("\n... and {} more", self.0.len() - Self::SHOWN));
        }
        out
    }

    /// The errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ManifestError> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never, for an `Err` from `parse`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a ManifestErrors {
    type Item = &'a ManifestError;
    type IntoIter = std::slice::Iter<'a, ManifestError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
