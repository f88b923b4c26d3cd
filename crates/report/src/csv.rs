//! A small CSV writer for trace tables.
//!
//! Traces are a few thousand rows of numbers and short names, so the table is
//! built in memory and written with [`write_atomic`](crate::write_atomic).
//! Fields are quoted only when they must be (RFC 4180: a comma, a double
//! quote or a line break), so numeric columns stay easy to read and diff.
//! Lines end in `\n` rather than RFC 4180's `\r\n`: the files are committed
//! to git, and every CSV reader accepts both.

use std::borrow::Cow;
use std::path::Path;

use crate::error::{ReportError, Result};
use crate::fs::write_atomic;

/// A CSV table: a header and rows with exactly as many fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    /// Starts a table with the given column names.
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row. Any `Display` value works; `f64` prints Rust's shortest
    /// round-trip form, so values read back bit-for-bit.
    ///
    /// A row with a different number of fields than the header is an error:
    /// a ragged CSV silently shifts columns in every tool that reads it.
    pub fn push_row<I, T>(&mut self, row: I) -> Result<&mut Self>
    where
        I: IntoIterator<Item = T>,
        T: std::fmt::Display,
    {
        let row: Vec<String> = row.into_iter().map(|v| v.to_string()).collect();
        if row.len() != self.header.len() {
            return Err(ReportError::invalid(
                format!("CSV row {}", self.rows.len() + 1),
                format!(
                    "has {} fields, the header has {} ({})",
                    row.len(),
                    self.header.len(),
                    self.header.join(",")
                ),
            ));
        }
        self.rows.push(row);
        Ok(self)
    }

    /// The column names.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The data rows, without the header.
    pub fn rows(&self) -> &[Vec<String>] {
        &self.rows
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there are no data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as CSV text, header first, every line ending in `\n`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (i, field) in line.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&csv_field(field));
            }
            out.push('\n');
        }
        out
    }

    /// Writes the table to `path` atomically.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, self.render())
    }
}

/// Quotes `field` if it contains a comma, a double quote or a line break,
/// doubling any quotes inside; otherwise returns it unchanged.
pub fn csv_field(field: &str) -> Cow<'_, str> {
    if field.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", field.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("1.5e-7"), "1.5e-7");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
        assert_eq!(csv_field(""), "");
    }

    #[test]
    fn renders_header_and_rows() {
        let mut csv = Csv::new(["optimizer", "iter", "objective"]);
        csv.push_row(["sgd", "1", "0.5"]).unwrap();
        csv.push_row([
            "newton-cg, damped".to_string(),
            2.to_string(),
            0.1.to_string(),
        ])
        .unwrap();
        assert_eq!(csv.len(), 2);
        assert_eq!(
            csv.render(),
            "optimizer,iter,objective\nsgd,1,0.5\n\"newton-cg, damped\",2,0.1\n"
        );
    }

    #[test]
    fn floats_round_trip() {
        let mut csv = Csv::new(["x"]);
        let x: f64 = 0.1 + 0.2;
        csv.push_row([x]).unwrap();
        let text = csv.render();
        let back: f64 = text.lines().nth(1).unwrap().parse().unwrap();
        assert_eq!(back.to_bits(), x.to_bits());
    }

    #[test]
    fn ragged_row_is_an_error() {
        let mut csv = Csv::new(["a", "b"]);
        let err = csv.push_row(["only one"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("row 1") && msg.contains("1 fields"), "{msg}");
        assert!(csv.is_empty());
    }

    #[test]
    fn writes_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.csv");
        let mut csv = Csv::new(["a"]);
        csv.push_row(["1"]).unwrap();
        csv.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\n1\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
