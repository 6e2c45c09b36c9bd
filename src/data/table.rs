//! Numeric tables a user brings: CSV (header row optional) and NumPy `.npy` (2-D, any numeric
//! dtype), read into row-major float64. Every refusal names the file, and for a bad cell its row
//! and column, so a user can find it in a spreadsheet.

use std::path::{Path, PathBuf};

use crate::error::InputError;

/// A table of `rows` rows by `columns.len()` columns, values row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// The file it came from.
    pub source: PathBuf,
    /// Column names: the CSV header, or `c0, c1, ...` when the file has none (`.npy`, a CSV
    /// whose first row is numbers).
    pub columns: Vec<String>,
    /// Whether the file named its columns (a CSV header).
    pub named: bool,
    /// What the reader decided that its user should know (a header of column numbers read as
    /// a header); callers show them as warnings.
    pub notes: Vec<String>,
    /// Number of rows.
    pub rows: usize,
    /// The file line of each data row (CSV; 1-based, the header and comments counted, as an
    /// editor numbers lines); empty for `.npy`.
    pub lines: Vec<u64>,
    /// `rows * columns.len()` values, row-major; all finite.
    pub values: Vec<f64>,
}

impl Table {
    /// A table of rows held in memory: `values` row-major, `columns.len()` values per row.
    /// `source` names the rows in messages (an argument's name: `X`, `validation`); rows are
    /// located 0-based, as numpy indexes them.
    ///
    /// # Errors
    /// [`InputError::File`] naming `source`: no columns, a length that is not a whole number of
    /// rows, no rows, a duplicated column name, or a non-finite value (its row and column).
    pub fn from_rows(
        source: &str,
        columns: Vec<String>,
        values: Vec<f64>,
    ) -> Result<Table, InputError> {
        let path = PathBuf::from(source);
        let w = columns.len();
        if w == 0 {
            return Err(InputError::file(&path, None, "has no columns"));
        }
        if !values.len().is_multiple_of(w) {
            let why = format!(
                "holds {} values, not a whole number of rows of {w} columns",
                values.len()
            );
            return Err(InputError::file(&path, None, why));
        }
        if values.is_empty() {
            return Err(InputError::file(&path, None, "holds no rows"));
        }
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].contains(c) {
                let why = format!("column name '{c}' is given twice");
                return Err(InputError::file(&path, None, why));
            }
        }
        let table = Table {
            source: path,
            rows: values.len() / w,
            columns,
            named: true,
            notes: Vec::new(),
            lines: Vec::new(),
            values,
        };
        if let Some(k) = table.values.iter().position(|v| !v.is_finite()) {
            let (r, c) = (k / w, k % w);
            return Err(InputError::file(
                &table.source,
                Some(format!(
                    "{}, column '{}'",
                    table.locate(r),
                    table.columns[c]
                )),
                format!("{} is not a finite number", table.values[k]),
            ));
        }
        Ok(table)
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Where data row `i` (0-based) is, in a user's words: `row L` (its line in a CSV file),
    /// or `row i (0-based, as numpy indexes it)` in a `.npy` file.
    pub fn locate(&self, i: usize) -> String {
        match self.lines.get(i) {
            Some(line) => format!("row {line}"),
            None => format!("row {i} (0-based, as numpy indexes it)"),
        }
    }

    /// Row `i` (0-based).
    pub fn row(&self, i: usize) -> &[f64] {
        let w = self.width();
        &self.values[i * w..(i + 1) * w]
    }

    /// Resolve column specifiers (a name from the header, or a 0-based index) to indices; the
    /// error names `flag`.
    pub fn column_indices(&self, specs: &[String], flag: &str) -> Result<Vec<usize>, InputError> {
        let mut out = Vec::with_capacity(specs.len());
        for s in specs {
            let s = s.trim();
            let i = match self.columns.iter().position(|c| c == s) {
                Some(i) => i,
                None => match s.parse::<usize>() {
                    Ok(i) if i < self.width() => i,
                    _ => {
                        return Err(InputError::option(
                            flag,
                            s,
                            format!(
                                "{}: no such column (columns: {}; or a 0-based index below {})",
                                self.source.display(),
                                preview(&self.columns),
                                self.width()
                            ),
                        ))
                    }
                },
            };
            if out.contains(&i) {
                return Err(InputError::option(flag, s, "names a column twice"));
            }
            out.push(i);
        }
        Ok(out)
    }

    /// The rows `idx`, columns `cols`, as one row-major matrix.
    pub fn gather(&self, idx: &[usize], cols: &[usize]) -> Vec<f64> {
        let mut out = Vec::with_capacity(idx.len() * cols.len());
        for &i in idx {
            let r = self.row(i);
            out.extend(cols.iter().map(|&c| r[c]));
        }
        out
    }

    /// A short fingerprint of the values (SHA-256 of their bits, first 16 hex digits): a resumed
    /// run checks that its table is unchanged.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update((self.rows as u64).to_le_bytes());
        h.update((self.width() as u64).to_le_bytes());
        for v in &self.values {
            h.update(v.to_bits().to_le_bytes());
        }
        let d = h.finalize();
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

fn preview(cols: &[String]) -> String {
    let shown: Vec<&str> = cols.iter().take(12).map(String::as_str).collect();
    let more = if cols.len() > 12 { ", ..." } else { "" };
    format!("{}{more}", shown.join(", "))
}

/// Largest table read, bytes of float64 values (the memory check comes on top).
pub const MAX_TABLE_VALUES: usize = 1 << 30;

/// Read a `.npy` file or a CSV file (any other extension is read as CSV).
///
/// # Errors
/// [`InputError::File`] naming the file, and the row and column of a bad cell: unreadable
/// file, an empty file or one with a header and no rows, ragged rows, text or a missing value
/// in a data cell, NaN or infinity, a `.npy` array that is not 2-D or not numeric.
pub fn read_table(path: &Path) -> Result<Table, InputError> {
    read_table_as(path, true)
}

/// [`read_table`], with `numbers_header` saying whether a CSV's first row `0,1,2,...` is a
/// header of column numbers (pandas' header for unnamed columns) or data, as runs saved
/// before the header was recognised read it.
///
/// # Errors
/// As [`read_table`].
pub fn read_table_as(path: &Path, numbers_header: bool) -> Result<Table, InputError> {
    let bytes = std::fs::read(path)
        .map_err(|e| InputError::file(path, None, format!("cannot read: {e}")))?;
    let table = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        read_npy(path, &bytes)?
    } else {
        read_csv(path, &bytes, numbers_header)?
    };
    if table.rows == 0 {
        let why = if table.named {
            "has a header row but no data rows"
        } else {
            "holds no rows"
        };
        return Err(InputError::file(path, None, why));
    }
    if let Some(why) = crate::limits::memory_shortfall((table.values.len() * 8 * 4) as f64) {
        return Err(InputError::file(path, None, why));
    }
    Ok(table)
}

fn read_csv(path: &Path, bytes: &[u8], numbers_header: bool) -> Result<Table, InputError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(bytes);
    let mut columns: Vec<String> = Vec::new();
    let mut named = false;
    let mut notes = Vec::new();
    let mut lines = Vec::new();
    let mut values = Vec::new();
    let mut rows = 0usize;
    // A trailing comma on every line (as Excel writes): an empty last field, dropped.
    let mut trailing_comma = false;
    for (k, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| csv_error(path, &e))?;
        let line = rec.position().map_or(k as u64 + 1, |p| p.line());
        if k == 0 {
            trailing_comma = rec.len() > 1 && rec.iter().next_back() == Some("");
        }
        let rec: csv::StringRecord = if trailing_comma && rec.iter().next_back() == Some("") {
            rec.iter().take(rec.len() - 1).collect()
        } else {
            rec
        };
        let at = |col: usize, name: Option<&str>| match name {
            Some(n) => format!("row {line}, column {} ('{n}')", col + 1),
            None => format!("row {line}, column {} (c{col})", col + 1),
        };
        if k == 0 {
            let numeric = rec.iter().filter(|f| f.parse::<f64>().is_ok()).count();
            if numeric == 0 {
                if let Some(j) = rec.iter().position(str::is_empty) {
                    let why = if j == 0 {
                        "the header's first field is empty, as pandas writes its index column (to_csv without index=False): save the table with index=False, or name that column and leave it out with `columns`"
                    } else {
                        "this header field is empty: every column needs a name"
                    };
                    return Err(InputError::file(
                        path,
                        Some(format!("row {line}, column {}", j + 1)),
                        why,
                    ));
                }
            }
            if numeric == 0 && rec.iter().all(|f| !f.is_empty()) {
                columns = rec.iter().map(str::to_string).collect();
                // Columns are chosen by name: a name given twice would pick one silently.
                if let Some((j, dup)) = columns
                    .iter()
                    .enumerate()
                    .find(|(j, n)| columns[..*j].contains(n))
                {
                    let first = columns.iter().position(|n| n == dup).unwrap_or(0);
                    return Err(InputError::file(
                        path,
                        Some(format!("row {line}, column {}", j + 1)),
                        format!(
                            "header name '{dup}' is already column {} (names must be unique)",
                            first + 1
                        ),
                    ));
                }
                named = true;
                continue;
            }
            if numbers_header && column_numbers(&rec) {
                // pandas writes a DataFrame without column names as `0,1,2,...`: a header of
                // column numbers, not a data row.
                columns = rec.iter().map(str::to_string).collect();
                named = true;
                notes.push(format!(
                    "{}: row {line} ({}) is read as a header of column numbers, as pandas writes for a DataFrame without column names; the columns are named 0 to {} (`columns` takes these names). If it is a data row, add a header line.",
                    path.display(),
                    preview(&columns),
                    columns.len() - 1
                ));
                continue;
            }
            if numeric > 0 && numeric < rec.len() {
                let names: Vec<&str> = rec.iter().filter(|f| f.parse::<f64>().is_err()).collect();
                let nums: Vec<&str> = rec.iter().filter(|f| f.parse::<f64>().is_ok()).collect();
                return Err(InputError::file(
                    path,
                    Some(format!("row {line}")),
                    format!(
                        "mixes names ({}) and numbers ({}): a header row must hold only names (and no empty field), a data row only numbers",
                        preview(&names.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>()),
                        preview(&nums.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    ),
                ));
            }
            columns = (0..rec.len()).map(|i| format!("c{i}")).collect();
        }
        if rec.len() != columns.len() {
            return Err(InputError::file(
                path,
                Some(format!("row {line}")),
                format!(
                    "has {} fields but the {} has {} (ragged rows)",
                    rec.len(),
                    if named { "header" } else { "first row" },
                    columns.len()
                ),
            ));
        }
        for (c, field) in rec.iter().enumerate() {
            let name = named.then(|| columns[c].as_str());
            let v: f64 = match field.parse() {
                Ok(v) => v,
                Err(_) if field.is_empty() => {
                    return Err(InputError::file(path, Some(at(c, name)), "missing value"))
                }
                Err(_) => {
                    return Err(InputError::file(
                        path,
                        Some(at(c, name)),
                        format!(
                            "'{}' is not a number{}",
                            field.chars().take(40).collect::<String>(),
                            if k == 0 {
                                " (a header row must hold only names)"
                            } else {
                                ""
                            }
                        ),
                    ))
                }
            };
            if !v.is_finite() {
                return Err(InputError::file(
                    path,
                    Some(at(c, name)),
                    format!("'{field}' is not finite (a density needs finite values)"),
                ));
            }
            values.push(v);
        }
        lines.push(line);
        rows += 1;
        if values.len() > MAX_TABLE_VALUES {
            return Err(InputError::file(
                path,
                Some(format!("row {line}")),
                format!("more than {MAX_TABLE_VALUES} values"),
            ));
        }
    }
    Ok(Table {
        source: path.to_path_buf(),
        columns,
        named,
        notes,
        rows,
        lines,
        values,
    })
}

/// Whether a record is exactly the column numbers `0,1,2,...`, written as plain integers, over
/// at least two fields: the header pandas' `to_csv` writes for unnamed columns. (`1,2,...` is
/// left as data: it is the first row of many headerless tables.)
fn column_numbers(rec: &csv::StringRecord) -> bool {
    rec.len() >= 2 && rec.iter().enumerate().all(|(i, f)| f == i.to_string())
}

fn csv_error(path: &Path, e: &csv::Error) -> InputError {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => InputError::file(
            path,
            pos.as_ref().map(|p| format!("row {}", p.line())),
            format!("has {len} fields but earlier rows have {expected_len} (ragged rows)"),
        ),
        csv::ErrorKind::Utf8 { pos, .. } => InputError::file(
            path,
            pos.as_ref().map(|p| format!("row {}", p.line())),
            "is not valid UTF-8 text (a binary file? NumPy arrays need the .npy extension)",
        ),
        _ => InputError::file(path, None, format!("not a readable CSV file: {e}")),
    }
}

fn read_npy(path: &Path, bytes: &[u8]) -> Result<Table, InputError> {
    let bad = |why: String| InputError::file(path, None, why);
    let npy = npyz::NpyFile::new(bytes).map_err(|e| {
        // The header is readable text even when npyz refuses its dtype: name an object array.
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).into_owned();
        if bytes.starts_with(b"\x93NUMPY") {
            if head.contains("'descr': '|O'") {
                return bad("holds Python objects (dtype object), which only pickle can read: save a numeric array (e.g. x.astype(float))".into());
            }
            return bad(format!("a NumPy .npy file this reader cannot read: {e}"));
        }
        bad(format!("not a NumPy .npy file: {e}"))
    })?;
    let shape: Vec<u64> = npy.shape().to_vec();
    let (rows, cols) = match shape[..] {
        [r, c] => (r as usize, c as usize),
        _ => {
            return Err(bad(format!(
                "array of shape {shape:?}: a table must be 2-D (rows x columns)"
            )))
        }
    };
    if rows.saturating_mul(cols) > MAX_TABLE_VALUES {
        return Err(bad(format!("{rows} x {cols} values is too large")));
    }
    let order = npy.order();
    let dtype = npy.dtype();
    let type_str = match &dtype {
        npyz::DType::Plain(t) => t.to_string(),
        other => return Err(bad(format!("dtype {other:?} is not a plain numeric type"))),
    };
    let kind = type_str.chars().nth(1).unwrap_or('?');
    let size: usize = type_str[2..].parse().unwrap_or(0);
    let read = |e: std::io::Error| bad(format!("cannot read the {type_str} values: {e}"));
    let values: Vec<f64> = match (kind, size) {
        ('f', 8) => npy.into_vec::<f64>().map_err(read)?,
        ('f', 4) => npy
            .into_vec::<f32>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        ('i', 8) => npy
            .into_vec::<i64>()
            .map_err(read)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        ('i', 4) => npy
            .into_vec::<i32>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        ('i', 2) => npy
            .into_vec::<i16>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        ('i', 1) => npy
            .into_vec::<i8>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        ('u', 8) => npy
            .into_vec::<u64>()
            .map_err(read)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        ('u', 4) => npy
            .into_vec::<u32>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        ('u', 2) => npy
            .into_vec::<u16>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        ('u', 1) => npy
            .into_vec::<u8>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        ('f', 2) => {
            return Err(bad(
                "float16 values are not supported: save the array as float32 or float64".into(),
            ))
        }
        _ => {
            return Err(bad(format!(
                "dtype '{type_str}' is not a real number type (float32/64, int or uint)"
            )))
        }
    };
    if values.len() != rows * cols {
        return Err(bad(format!(
            "holds {} values for a {rows} x {cols} array (truncated?)",
            values.len()
        )));
    }
    // Fortran order stores column-major: transpose to rows.
    let values = if order == npyz::Order::Fortran {
        let mut t = vec![0.0; rows * cols];
        for c in 0..cols {
            for r in 0..rows {
                t[r * cols + c] = values[c * rows + r];
            }
        }
        t
    } else {
        values
    };
    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
        return Err(InputError::file(
            path,
            Some(format!(
                "row {} (0-based, as numpy indexes it), column c{}",
                k / cols,
                k % cols
            )),
            format!(
                "{} is not finite (a density needs finite values)",
                values[k]
            ),
        ));
    }
    Ok(Table {
        source: path.to_path_buf(),
        columns: (0..cols).map(|i| format!("c{i}")).collect(),
        named: false,
        notes: Vec::new(),
        rows,
        lines: Vec::new(),
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Table, InputError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, text).unwrap();
        read_table(&p)
    }

    #[test]
    fn header_is_optional() {
        let t = csv("a,b\n1,2\n3,4.5\n").unwrap();
        assert_eq!(
            (t.rows, t.columns.clone(), t.named),
            (2, vec!["a".into(), "b".into()], true)
        );
        assert_eq!(t.values, vec![1.0, 2.0, 3.0, 4.5]);
        let t = csv("1,2\n3,4\n").unwrap();
        assert_eq!((t.rows, t.named), (2, false));
        assert!(t.notes.is_empty());
    }

    /// pandas' `DataFrame(array).to_csv(index=False)` writes the header `0,1,2`: a header of
    /// column numbers, said so in a note, not a data row.
    #[test]
    fn a_header_of_column_numbers_is_a_header() {
        let t = csv("0,1,2\n5,6,7\n8,9,10\n").unwrap();
        assert_eq!((t.rows, t.named), (2, true));
        assert_eq!(t.columns, vec!["0", "1", "2"]);
        assert_eq!(t.values[0], 5.0);
        assert_eq!(t.notes.len(), 1);
        assert!(
            t.notes[0].contains("row 1") && t.notes[0].contains("pandas"),
            "{}",
            t.notes[0]
        );
        assert_eq!(t.column_indices(&["2".into()], "columns").unwrap(), vec![2]);
        // Not column numbers: data.
        for text in ["0,2,1\n5,6,7\n", "0.0,1.0\n5,6\n", "0\n5\n"] {
            let t = csv(text).unwrap();
            assert!(!t.named && t.notes.is_empty(), "{text}");
        }
    }

    #[test]
    fn bad_tables_name_row_and_column() {
        let msg = |text: &str| csv(text).unwrap_err().to_string();
        assert!(
            msg("a,b\n1,2\n3\n").contains("row 3"),
            "{}",
            msg("a,b\n1,2\n3\n")
        );
        assert!(msg("a,b\n1,2\n3\n").contains("ragged"));
        let m = msg("a,b\n1,2\n3,x\n");
        assert!(
            m.contains("row 3, column 2 ('b')") && m.contains("'x' is not a number"),
            "{m}"
        );
        let m = msg("a,b\n1,nan\n");
        assert!(
            m.contains("row 2, column 2") && m.contains("not finite"),
            "{m}"
        );
        let m = msg("a,b\n1,\n");
        assert!(m.contains("missing value"), "{m}");
        let m = msg("a,b,a\n1,2,3\n");
        assert!(
            m.contains("row 1, column 3") && m.contains("'a' is already column 1"),
            "{m}"
        );
        assert!(msg("a,b\n").contains("header row but no data rows"));
        assert!(msg("").contains("no rows"));
        let m = msg("1,abc\n2,3\n");
        assert!(
            m.contains("row 1") && m.contains("mixes names ('abc') and numbers (1)"),
            "{m}"
        );
    }
}
