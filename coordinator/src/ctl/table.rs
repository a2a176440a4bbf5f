//! The tables of `amdimctl` and the flags that choose how records print:
//! [`Format`] (`-o table|wide|json|yaml` and `--no-headers`, flattened
//! into each listing subcommand) and [`Table`], kubectl-style columns
//! aligned with elastic tabstops (`tabwriter`): upper-case headers, three
//! spaces between columns, each column as wide as its longest cell, so a
//! long name widens its column instead of shifting the rest. Columns
//! marked wide appear only with `-o wide`. Text only: callers print.

use super::output::Output;
use std::io::Write;

/// How a listing command prints its records.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct Format {
    /// table, wide (a table with more columns), json or yaml.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    /// Print tables without their header line.
    #[arg(long)]
    pub no_headers: bool,
}

impl Format {
    /// The records as JSON or YAML, or None when a table is wanted.
    pub fn document(self, value: &serde_json::Value) -> Option<String> {
        self.output.document(value)
    }

    /// Whether `-o wide` asked for the extra columns.
    pub fn wide(self) -> bool {
        self.output == Output::Wide
    }
}

/// A table being filled: headers, which columns are wide-only, rows.
pub struct Table {
    headers: Vec<&'static str>,
    wide_only: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; a header starting with `+` is shown
    /// only with `-o wide` (the `+` is not printed). Headers are upper-cased.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            wide_only: headers.iter().map(|h| h.starts_with('+')).collect(),
            headers: headers.iter().map(|h| h.trim_start_matches('+')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; one cell per column, in order (wide-only ones included).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text in `format` (its wide columns and header line as
    /// asked), every line ending in a newline; empty cells read `<none>`
    /// and tabs or newlines inside cells become spaces.
    pub fn render(&self, format: Format) -> String {
        let shown: Vec<usize> = (0..self.headers.len()).filter(|&i| format.wide() || !self.wide_only[i]).collect();
        let mut tw = tabwriter::TabWriter::new(Vec::new()).minwidth(1).padding(3);
        let mut write_line = |cells: Vec<String>| {
            let _ = writeln!(tw, "{}", cells.join("\t"));
        };
        if !format.no_headers {
            write_line(shown.iter().map(|&i| self.headers[i].to_ascii_uppercase()).collect());
        }
        for row in &self.rows {
            write_line(
                shown
                    .iter()
                    .map(|&i| {
                        let cell = row.get(i).map(String::as_str).unwrap_or("");
                        if cell.is_empty() {
                            "<none>".to_string()
                        } else {
                            cell.replace(['\t', '\n', '\r'], " ")
                        }
                    })
                    .collect(),
            );
        }
        let bytes = tw.into_inner().unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        // tabwriter pads cells before a trailing empty column; keep lines clean.
        text.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }

    /// Prints the table to stdout.
    pub fn print(&self, format: Format) {
        print!("{}", self.render(format));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(output: Output, no_headers: bool) -> Format {
        Format { output, no_headers }
    }

    #[test]
    fn columns_align_on_the_longest_cell_and_wide_ones_show_only_when_asked() {
        let mut t = Table::new(&["id", "name", "+restarts", "message"]);
        t.row(vec!["job-000001".into(), "a".into(), "0".into(), "running".into()]);
        t.row(vec![
            "job-000002".into(),
            "a-very-long-job-name-that-goes-on".into(),
            "12".into(),
            String::new(),
        ]);
        assert_eq!(
            t.render(format(Output::Table, false)),
            "ID           NAME                                MESSAGE\n\
             job-000001   a                                   running\n\
             job-000002   a-very-long-job-name-that-goes-on   <none>\n"
        );
        assert_eq!(
            t.render(format(Output::Wide, true)),
            "job-000001   a                                   0    running\n\
             job-000002   a-very-long-job-name-that-goes-on   12   <none>\n"
        );
        let mut tabs = Table::new(&["a", "b"]);
        tabs.row(vec!["x\ty".into(), "line\nbreak".into()]);
        assert_eq!(tabs.render(format(Output::Table, true)), "x y   line break\n");
    }
}
