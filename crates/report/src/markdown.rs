//! Markdown building blocks for generated `report.md` files.
//!
//! Tables are padded so the committed Markdown source is itself readable
//! (and diffs line up), and cell text is escaped so a value containing `|`
//! or a newline cannot break the table it sits in.

/// Column alignment in a Markdown table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Align {
    /// Left-aligned, `---`; the default.
    #[default]
    Left,
    /// Centred, `:---:`.
    Center,
    /// For numbers, so digits line up in rendered tables.
    Right,
}

/// Renders a GitHub-flavoured Markdown table with every column left-aligned.
///
/// Rows shorter than the header are padded with empty cells; rows longer than
/// the header get extra, untitled columns rather than losing data silently.
/// Ends with a newline.
///
/// ```
/// use hessfree_report::markdown_table;
/// let t = markdown_table(&["a", "b"], &[vec!["1".into(), "x|y".into()]]);
/// assert_eq!(t, "| a | b    |\n| - | ---- |\n| 1 | x\\|y |\n");
/// ```
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    markdown_table_aligned(headers, &[], rows)
}

/// Like [`markdown_table`], with per-column alignment; columns beyond
/// `align.len()` are left-aligned.
pub fn markdown_table_aligned(headers: &[&str], align: &[Align], rows: &[Vec<String>]) -> String {
    let columns = rows
        .iter()
        .map(Vec::len)
        .chain(std::iter::once(headers.len()))
        .max()
        .unwrap_or(0);
    if columns == 0 {
        return String::new();
    }

    let cell = |row: &[String], i: usize| row.get(i).map(|c| escape_cell(c)).unwrap_or_default();
    let header: Vec<String> = (0..columns)
        .map(|i| headers.get(i).map(|h| escape_cell(h)).unwrap_or_default())
        .collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| (0..columns).map(|i| cell(row, i)).collect())
        .collect();

    let alignment = |i: usize| align.get(i).copied().unwrap_or_default();
    // Width in characters, not bytes, so "µs" or "−" do not over-pad; at
    // least wide enough for the delimiter (`-`, `-:` or `:-:`).
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            let min = match alignment(i) {
                Align::Left => 1,
                Align::Right => 2,
                Align::Center => 3,
            };
            std::iter::once(&header[i])
                .chain(body.iter().map(|r| &r[i]))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
                .max(min)
        })
        .collect();

    let mut out = String::new();
    push_row(&mut out, &header, &widths, alignment);
    let delimiter: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| match alignment(i) {
            Align::Left => "-".repeat(w),
            Align::Center => format!(":{}:", "-".repeat(w - 2)),
            Align::Right => format!("{}:", "-".repeat(w - 1)),
        })
        .collect();
    push_row(&mut out, &delimiter, &widths, |_| Align::Left);
    for row in &body {
        push_row(&mut out, row, &widths, alignment);
    }
    out
}

fn push_row(out: &mut String, cells: &[String], widths: &[usize], align: impl Fn(usize) -> Align) {
    out.push('|');
    for (i, (cell, &width)) in cells.iter().zip(widths).enumerate() {
        let pad = width.saturating_sub(cell.chars().count());
        let (left, right) = match align(i) {
            Align::Left => (0, pad),
            Align::Right => (pad, 0),
            Align::Center => (pad / 2, pad - pad / 2),
        };
        out.push(' ');
        out.push_str(&" ".repeat(left));
        out.push_str(cell);
        out.push_str(&" ".repeat(right));
        out.push_str(" |");
    }
    out.push('\n');
}

/// Makes `text` safe inside a table cell: `|` is escaped, line breaks become
/// `<br>` (a raw newline would end the row), and backslashes that would
/// otherwise escape the next character are doubled only where they precede a
/// `|`.
pub fn escape_cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' => out.push_str("\\|"),
            '\\' if chars.peek() == Some(&'|') => out.push_str("\\\\"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("<br>");
            }
            '\n' => out.push_str("<br>"),
            other => out.push(other),
        }
    }
    out
}

/// `![alt](path)`, with the path's spaces and parentheses percent-encoded
/// so that any relative file name renders.
pub fn markdown_image(alt: &str, path: &str) -> String {
    let alt = alt.replace('[', "\\[").replace(']', "\\]");
    let path = path
        .replace(' ', "%20")
        .replace('(', "%28")
        .replace(')', "%29");
    format!("![{alt}]({path})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pads_columns_and_escapes_pipes() {
        let t = markdown_table(
            &["optimizer", "acc"],
            &[row(&["sgd", "0.915"]), row(&["a|b", "1"])],
        );
        let expected = "\
| optimizer | acc   |
| --------- | ----- |
| sgd       | 0.915 |
| a\\|b      | 1     |
";
        assert_eq!(t, expected);
        // Every line has the same number of unescaped pipes: the table is
        // rectangular after escaping.
        for line in t.lines() {
            assert_eq!(line.replace("\\|", "").matches('|').count(), 3, "{line}");
        }
    }

    #[test]
    fn newlines_and_backslash_pipes() {
        assert_eq!(escape_cell("a\nb\r\nc"), "a<br>b<br>c");
        assert_eq!(escape_cell("x\\|y"), "x\\\\\\|y");
        assert_eq!(escape_cell("C:\\dir"), "C:\\dir");
    }

    #[test]
    fn ragged_rows_and_alignment() {
        let t = markdown_table_aligned(
            &["name", "n"],
            &[Align::Left, Align::Right],
            &[row(&["a"]), row(&["b", "10", "extra"])],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| name |  n |       |");
        assert_eq!(lines[1], "| ---- | -: | ----- |");
        assert_eq!(lines[2], "| a    |    |       |");
        assert_eq!(lines[3], "| b    | 10 | extra |");
    }

    #[test]
    fn centered_and_empty() {
        assert_eq!(markdown_table(&[], &[]), "");
        let t = markdown_table_aligned(&["x"], &[Align::Center], &[row(&["µs"])]);
        assert_eq!(t, "|  x  |\n| :-: |\n| µs  |\n");
    }

    #[test]
    fn image_links() {
        assert_eq!(
            markdown_image("loss [log]", "plots/a b(1).svg"),
            "![loss \\[log\\]](plots/a%20b%281%29.svg)"
        );
    }
}
