//! Query text read with PostgreSQL's own scanner (the `pg_query` crate embeds the server's
//! lexer), so comments, nested comments, dollar quotes, `E''` strings and `U&` identifiers
//! are read exactly as the server reads them. Every place that needs statement boundaries,
//! first words or leading comments reads them here; there is no second, hand-written lexer.
//!
//! The scanner reads text as the server does only while the session keeps
//! `standard_conforming_strings` on (else `\'` inside a plain string is an escaped quote) and
//! a `client_encoding` whose multi-byte characters never contain ASCII bytes (else a quote
//! or backslash the scanner sees may be the second byte of a character):
//! [`conforming_strings`] and [`readable_encoding`] tell when that no longer holds.

use std::borrow::Cow;

use pg_query::protobuf::{KeywordKind, ScanToken, Token};

/// PostgreSQL truncates identifiers to this many bytes (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER: usize = 63;

/// A query string as PostgreSQL's scanner splits it into tokens, comments included.
#[derive(Debug)]
pub struct Scan<'s> {
    sql: &'s str,
    tokens: Vec<ScanToken>,
}

impl<'s> Scan<'s> {
    /// Scans `sql`; `None` when the scanner refuses it (an unterminated comment, string or
    /// quoted identifier, a NUL byte): the server refuses such text too.
    pub fn new(sql: &'s str) -> Option<Self> {
        // `pg_query::scan_tokens` makes a slice from the C side's null pointer when there is
        // no token (undefined behaviour; debug builds abort): text of blanks only (the
        // scanner's `space` class) has none, and any other text has a token or an error.
        if sql
            .bytes()
            .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c'))
        {
            return Some(Self {
                sql,
                tokens: Vec::new(),
            });
        }
        let tokens = pg_query::scan_tokens(sql).ok()?;
        Some(Self { sql, tokens })
    }

    /// The statements, split at the `;` tokens (a `;` in a string, comment or dollar quote
    /// is no token), each with its comments; empty statements included.
    pub fn statements(&self) -> impl Iterator<Item = Statement<'_>> {
        self.tokens
            .split(|token| token.token == Token::Ascii59 as i32)
            .map(|tokens| Statement {
                sql: self.sql,
                tokens,
            })
    }

    /// The comments before the first token that is not one, each without its `--`, `/*`
    /// and `*/`, and the text from that first token on.
    pub fn leading_comments(&self) -> (Vec<&'s str>, &'s str) {
        let mut comments = Vec::new();
        for token in &self.tokens {
            let lexeme = Lexeme::new(self.sql, token);
            let body = if lexeme.is(Token::SqlComment) {
                lexeme.text.get(2..)
            } else if lexeme.is(Token::CComment) {
                lexeme.text.get(2..lexeme.text.len().saturating_sub(2))
            } else {
                let rest = self.sql.get(lexeme.start..).unwrap_or_default();
                return (comments, rest);
            };
            comments.push(body.unwrap_or_default());
        }
        (comments, "")
    }
}

/// One statement's tokens.
#[derive(Debug, Clone, Copy)]
pub struct Statement<'s> {
    sql: &'s str,
    tokens: &'s [ScanToken],
}

impl<'s> Statement<'s> {
    /// The tokens that are not comments, in order.
    pub fn words(&self) -> impl DoubleEndedIterator<Item = Lexeme<'s>> + Clone + use<'s> {
        let sql = self.sql;
        self.tokens
            .iter()
            .map(move |token| Lexeme::new(sql, token))
            .filter(|lexeme| !lexeme.is(Token::SqlComment) && !lexeme.is(Token::CComment))
    }

    /// How many tokens it has, comments included: room enough for its words.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// The first token that is not a comment (`None`: an empty statement).
    pub fn first(&self) -> Option<Lexeme<'s>> {
        self.words().next()
    }
}

/// One token and its text.
#[derive(Debug, Clone, Copy)]
pub struct Lexeme<'s> {
    /// The token (`Token` as a number: a keyword, `Ident`, an ASCII character, ...).
    pub token: i32,
    /// The keyword category (`NoKeyword` for what is not a keyword).
    pub keyword: KeywordKind,
    /// Where it starts in the query string (a byte offset).
    pub start: usize,
    /// Its text as written.
    pub text: &'s str,
}

impl<'s> Lexeme<'s> {
    fn new(sql: &'s str, token: &ScanToken) -> Self {
        let start = usize::try_from(token.start).unwrap_or(0);
        let end = usize::try_from(token.end).unwrap_or(0);
        Self {
            token: token.token,
            keyword: KeywordKind::try_from(token.keyword_kind).unwrap_or(KeywordKind::NoKeyword),
            start,
            text: sql.get(start..end).unwrap_or_default(),
        }
    }

    /// Whether this is `token`.
    pub fn is(&self, token: Token) -> bool {
        self.token == token as i32
    }

    /// The name this token stands for as the server resolves it: an unquoted identifier or
    /// keyword in lower case (ASCII only, as PostgreSQL folds), a quoted identifier as
    /// written with `""` undoubled; truncated as the server truncates. `None` for anything
    /// else, a `U&""` identifier included (its escapes are not decoded here).
    pub fn name(&self) -> Option<Cow<'s, str>> {
        let name = if self.is(Token::Ident) {
            match self.text.strip_prefix('"') {
                Some(quoted) => Cow::Owned(quoted.strip_suffix('"')?.replace("\"\"", "\"")),
                None => lower(self.text),
            }
        } else if self.keyword != KeywordKind::NoKeyword {
            lower(self.text)
        } else {
            return None;
        };
        Some(truncate(name))
    }
}

/// `text` with ASCII letters in lower case, borrowed when it already is.
fn lower(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// `name` cut to [`MAX_IDENTIFIER`] bytes on a character boundary, as the server cuts it.
fn truncate(name: Cow<'_, str>) -> Cow<'_, str> {
    if name.len() <= MAX_IDENTIFIER {
        return name;
    }
    let mut end = MAX_IDENTIFIER;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(name[..end].to_string())
}

/// Encodings that only clients may use, by PostgreSQL's cleaned names and aliases (lower
/// case, letters and digits only): their two-byte characters can end in an ASCII byte such
/// as `\`, so a string the scanner reads as UTF-8 may end elsewhere on the server.
const CLIENT_ONLY_ENCODINGS: &[&str] = &[
    "big5",
    "gb18030",
    "gbk",
    "johab",
    "mskanji",
    "shiftjis",
    "shiftjis2004",
    "sjis",
    "uhc",
    "win932",
    "win936",
    "win949",
    "win950",
    "windows932",
    "windows936",
    "windows949",
    "windows950",
];

/// Whether the scanner reads text sent in `client_encoding` as the server does (every
/// server encoding keeps ASCII bytes ASCII; the client-only ones do not). A name the server
/// does not know is refused by it, so it changes nothing.
pub fn readable_encoding(client_encoding: &str) -> bool {
    // PostgreSQL compares encoding names without case and without non-alphanumerics.
    let clean: String = client_encoding
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    !CLIENT_ONLY_ENCODINGS.contains(&clean.as_str())
}

/// Whether a `standard_conforming_strings` value leaves the setting on, the way the
/// scanner reads strings; a value the server would refuse changes nothing, so it counts
/// as on.
pub fn conforming_strings(value: &str) -> bool {
    parse_bool(value) != Some(false)
}

/// A boolean setting's value as PostgreSQL's `parse_bool` reads it: `true`, `yes`, `on`,
/// `1` and `false`, `no`, `off`, `0`, in any case, the words also by an unambiguous prefix.
pub fn parse_bool(value: &str) -> Option<bool> {
    let value = value.trim().to_ascii_lowercase();
    let prefix_of = |word: &str| !value.is_empty() && word.starts_with(value.as_str());
    match value.as_str() {
        "1" => Some(true),
        "0" => Some(false),
        // "o" alone is ambiguous; "on" and "of"/"off" need two letters.
        "on" => Some(true),
        "of" | "off" => Some(false),
        _ if prefix_of("true") || prefix_of("yes") => Some(true),
        _ if prefix_of("false") || prefix_of("no") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first word of each statement, as the server would read it.
    fn first_words(sql: &str) -> Vec<String> {
        let scan = Scan::new(sql).expect("scans");
        scan.statements()
            .filter_map(|statement| statement.first())
            .map(|word| word.text.to_ascii_lowercase())
            .collect()
    }

    #[test]
    fn statements_split_where_the_server_splits_them() {
        let cases: &[(&str, &[&str])] = &[
            ("/* ; */ SET search_path TO a", &["set"]),
            ("/* /* */ */ SET search_path TO a", &["set"]),
            ("/* /* ; */ SELECT 1; */ SET x TO 1", &["set"]),
            ("SET search_path TO a -- ;\n", &["set"]),
            ("set/**/search_path to a", &["set"]),
            ("SELECT 1; SET a TO 1", &["select", "set"]),
            ("SELECT $$; SET a TO 1$$", &["select"]),
            ("SELECT $q$ $$; SET $q$; RESET a", &["select", "reset"]),
            ("SELECT E'\\'; SET a TO 1'", &["select"]),
            ("SELECT 'it''s; SET'", &["select"]),
            ("SELECT U&\"a;b\"; LISTEN c", &["select", "listen"]),
            ("SELECT \";\"; ;;", &["select"]),
            ("", &[]),
            ("-- only a comment", &[]),
        ];
        for (sql, expected) in cases {
            assert_eq!(first_words(sql), *expected, "{sql:?}");
        }
    }

    #[test]
    fn what_the_server_refuses_does_not_scan() {
        for sql in [
            "SELECT 'unterminated",
            "SELECT $$unterminated",
            "/* unterminated",
            "/* /* */",
            "SELECT \"unterminated",
            "SELECT 1\0",
        ] {
            assert!(Scan::new(sql).is_none(), "{sql:?}");
        }
    }

    #[test]
    fn names_resolve_as_the_server_resolves_them() {
        let names = |sql: &str| -> Vec<Option<String>> {
            let scan = Scan::new(sql).expect("scans");
            let statement = scan.statements().next().expect("a statement");
            statement
                .words()
                .map(|word| word.name().map(Cow::into_owned))
                .collect()
        };
        assert_eq!(
            names("Set_Config \"Set_Config\" \"a\"\"b\" U&\"x\" 'str' SELECT"),
            vec![
                Some("set_config".into()),
                Some("Set_Config".into()),
                Some("a\"b".into()),
                None,
                None,
                Some("select".into()),
            ]
        );
        let long = format!("{}é", "a".repeat(62));
        assert_eq!(names(&long), vec![Some("a".repeat(62))]);
    }

    #[test]
    fn leading_comments_are_read_whole_and_nested() {
        let scan = Scan::new("/* a /* b */ c */ -- d\n  SELECT 1 /* e */").expect("scans");
        let (comments, rest) = scan.leading_comments();
        assert_eq!(comments, vec![" a /* b */ c ", " d"]);
        assert_eq!(rest, "SELECT 1 /* e */");
        let only = Scan::new("-- x").expect("scans");
        assert_eq!(only.leading_comments(), (vec![" x"], ""));
    }

    #[test]
    fn encodings_and_strings_the_scanner_cannot_read() {
        for name in [
            "SJIS",
            "Shift_JIS",
            "s-j-i-s",
            "WIN932",
            "big5",
            "GBK",
            "UHC",
        ] {
            assert!(!readable_encoding(name), "{name}");
        }
        for name in [
            "UTF8",
            "utf-8",
            "unicode",
            "SQL_ASCII",
            "LATIN1",
            "EUC_JP",
            "nonsense",
        ] {
            assert!(readable_encoding(name), "{name}");
        }
        for value in ["off", "OF", "false", "f", "no", "0", " n "] {
            assert!(!conforming_strings(value), "{value}");
        }
        for value in ["on", "true", "t", "yes", "1", "o", "maybe", ""] {
            assert!(conforming_strings(value), "{value}");
        }
    }
}
