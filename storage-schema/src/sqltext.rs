//! A small lexer for the shipped SQL: enough to drop comments, split a file into statements and
//! find `{name:Type}` parameters, without being fooled by quotes or comments.

/// A piece of SQL text.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    /// Plain SQL.
    Code(&'a str),
    /// A quoted string or identifier, quotes included.
    Quoted(&'a str),
    /// A `-- ...` or `/* ... */` comment.
    Comment,
}

fn pieces(sql: &str) -> Vec<Piece<'_>> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut code_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let end = if rest.starts_with(b"--") {
            Some((false, sql[i..].find('\n').map_or(bytes.len(), |n| i + n)))
        } else if rest.starts_with(b"/*") {
            Some((
                false,
                sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2),
            ))
        } else if matches!(rest[0], b'\'' | b'"' | b'`') {
            let quote = rest[0];
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != quote {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            Some((true, (j + 1).min(bytes.len())))
        } else {
            None
        };
        match end {
            Some((quoted, end)) => {
                if code_start < i {
                    out.push(Piece::Code(&sql[code_start..i]));
                }
                out.push(if quoted {
                    Piece::Quoted(&sql[i..end])
                } else {
                    Piece::Comment
                });
                i = end;
                code_start = end;
            }
            None => i += 1,
        }
    }
    if code_start < bytes.len() {
        out.push(Piece::Code(&sql[code_start..]));
    }
    out
}

/// The text without its comments (quoted text kept as is).
pub(crate) fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for piece in pieces(sql) {
        match piece {
            Piece::Code(s) | Piece::Quoted(s) => out.push_str(s),
            Piece::Comment => out.push(' '),
        }
    }
    out
}

/// The statements of a file: comments dropped, split at `;` outside quotes, trimmed, empty ones
/// left out.
pub(crate) fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for piece in pieces(sql) {
        match piece {
            Piece::Code(s) => {
                let mut parts = s.split(';');
                current.push_str(parts.next().unwrap_or_default());
                for part in parts {
                    statements.push(std::mem::take(&mut current));
                    current.push_str(part);
                }
            }
            Piece::Quoted(s) => current.push_str(s),
            Piece::Comment => current.push(' '),
        }
    }
    statements.push(current);
    statements
        .into_iter()
        .map(|s| tidy(&s))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Trims each line's end and the whole, and drops blank lines.
fn tidy(s: &str) -> String {
    s.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

/// A `{name:Type}` query parameter in a query's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placeholder {
    /// Byte range of the whole `{...}` in the text.
    pub range: std::ops::Range<usize>,
    /// Parameter name.
    pub name: String,
    /// Declared ClickHouse type, spaces removed (`Int64`, `String`).
    pub ty: String,
}

/// The parameters of a (comment-free) query, in order of appearance, outside quoted text.
/// A `{` in code that does not open a well-formed `{name:Type}` is an error.
pub(crate) fn placeholders(sql: &str) -> Result<Vec<Placeholder>, String> {
    let mut out = Vec::new();
    let mut offset = 0;
    for piece in pieces(sql) {
        let text = match piece {
            Piece::Code(s) => s,
            Piece::Quoted(s) => {
                offset += s.len();
                continue;
            }
            Piece::Comment => return Err("comments must be stripped first".into()),
        };
        let mut from = 0;
        while let Some(open) = text[from..].find('{').map(|n| from + n) {
            let close = text[open..]
                .find('}')
                .map(|n| open + n)
                .ok_or_else(|| format!("unclosed '{{' at byte {}", offset + open))?;
            let inner = &text[open + 1..close];
            let (name, ty) = inner
                .split_once(':')
                .ok_or_else(|| format!("'{{{inner}}}' is not a {{name:Type}} parameter"))?;
            let name = name.trim();
            let ty: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
            let valid_name = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name || ty.is_empty() {
                return Err(format!("'{{{inner}}}' is not a {{name:Type}} parameter"));
            }
            out.push(Placeholder {
                range: offset + open..offset + close + 1,
                name: name.to_owned(),
                ty,
            });
            from = close + 1;
        }
        offset += text.len();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let sql = "-- header; with a semicolon\nCREATE TABLE a (x String DEFAULT 'a;b') ENGINE = Memory;\n\
                   /* block; comment */ SELECT '--not a comment', `we;ird` ;\n-- trailing; comment\n";
        assert_eq!(
            split_statements(sql),
            vec![
                "CREATE TABLE a (x String DEFAULT 'a;b') ENGINE = Memory".to_owned(),
                "SELECT '--not a comment', `we;ird`".to_owned(),
            ]
        );
        assert_eq!(
            strip_comments("SELECT 1 -- one\n, 'it''s -- x' /* c */"),
            "SELECT 1  \n, 'it''s -- x'  "
        );
        assert_eq!(strip_comments(r"SELECT 'a\'b -- c'"), r"SELECT 'a\'b -- c'");
    }

    #[test]
    fn placeholders_are_found_outside_quotes() {
        let sql = "SELECT '{not:Param}' WHERE a = { x : Int64 } AND b = {y_2:String}";
        let found = placeholders(sql).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| (p.name.as_str(), p.ty.as_str()))
            .collect();
        assert_eq!(names, vec![("x", "Int64"), ("y_2", "String")]);
        assert_eq!(&sql[found[1].range.clone()], "{y_2:String}");
        assert!(placeholders("SELECT {oops}").is_err());
        assert!(placeholders("SELECT {1x:Int64}").is_err());
        assert!(placeholders("SELECT {x:Int64").is_err());
    }
}
