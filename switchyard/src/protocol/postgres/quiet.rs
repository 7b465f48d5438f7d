//! The transaction pooler's cheap look at a statement before the parser runs: [`is_quiet`]
//! says a query string certainly leaves no session state behind, so ordinary statements
//! (SELECT, INSERT, UPDATE, DELETE, transaction control) cost a scan, not a parse.
//!
//! It must never say so wrongly: whatever it passes, the full classification
//! (`classify::classify`) finds no session change, no pin and nothing untracked in (or the
//! parser refuses it, and then so does the server). So it passes only what it can read
//! whole with PostgreSQL's own scanner: every statement starts with a word that cannot
//! begin a session-changing statement; no `TEMP`/`TEMPORARY`, no `pg_temp` name, no `U&`
//! identifier (its escapes could spell any name); and every function called by name is a
//! built-in known to be free of session effects ([`quiet_function`]), unqualified or in
//! `pg_catalog`. Anything else is left to the classification.
//!
//! Like the classification, it sees only what the text calls: code the server runs without
//! the text naming it (triggers, operators, casts, column defaults, a function in another
//! schema overloading a built-in's name) is for the ParameterStatus backstop.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::LazyLock;

use pg_query::protobuf::{KeywordKind, Token};

use super::scanner::{Lexeme, Scan, Statement};

/// Words a statement with no session effect of its own may start with. A statement of
/// these kinds changes session state only by calling something, which is checked apart.
const QUIET_FIRST: &[Token] = &[
    Token::Select,
    Token::Insert,
    Token::Update,
    Token::DeleteP,
    Token::Merge,
    Token::With,
    Token::Values,
    Token::Table,
    Token::Ascii40,
    Token::BeginP,
    Token::Start,
    Token::Commit,
    Token::EndP,
    Token::Rollback,
    Token::AbortP,
    Token::Savepoint,
    Token::Release,
    Token::Show,
    Token::Fetch,
    Token::Move,
    Token::Close,
];

/// Words after which a name followed by `(` is not a function call: a table (`INTO t (a)`),
/// an alias or type (`AS t (a)`, `::numeric(10, 2)`, `t x (a)`, `t JOIN (…)`), a CTE
/// (`WITH x (a) AS`), the column list of `UPDATE … SET (a, b) =`.
const NOT_A_CALL_AFTER: &[Token] = &[
    Token::Into,
    Token::As,
    Token::Ident,
    Token::With,
    Token::Recursive,
    Token::Update,
    Token::Typecast,
];

/// Built-in functions known to leave no session state behind, one name per line (see the
/// file for how it was made).
static QUIET_FUNCTIONS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("quiet_functions.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
});

/// Whether `name` (as the server resolves it: unquoted names in lower case) is a built-in
/// function whose calls leave no session state behind. A function of the same name in
/// another schema, or an overload of it for other argument types, is not known to be.
pub fn quiet_function(name: &str) -> bool {
    QUIET_FUNCTIONS.contains(name)
}

/// Texts longer than this are scanned every time, never remembered.
const REMEMBERED_TEXT_BYTES: usize = 4096;

/// What the texts a worker remembers may hold in all; past it the worker starts over.
const REMEMBERED_BYTES: usize = 256 * 1024;

/// What a remembered text costs beyond its bytes: its box and its slot in the set.
const REMEMBERED_ENTRY_BYTES: usize = 64;

/// Slots of the table of texts seen once (a power of two): 16 KiB per worker.
const SEEN_SLOTS: usize = 4096;

/// Texts this worker thread found quiet, by shape (see [`respell_numbers`]). Applications
/// send the same texts again and again (an extended-protocol query is parsed anew at every
/// execution, transaction control is always the same few words, a simple query differs
/// from the last only in its numbers), and a hash lookup costs a fraction of a pass of the
/// scanner. Per thread, so workers never contend; bounded by [`REMEMBERED_BYTES`].
///
/// Shapes that carry their values as strings are seldom sent twice, and remembering each
/// would cost more than the scan it never saves: a box, a hash table that grows and
/// rehashes, and a start over every few thousand texts. So a shape is remembered only the
/// second time it is found quiet: the first time, only a fingerprint of its hash is noted
/// in a fixed table ([`SEEN_SLOTS`]), where a later shape may overwrite it (that shape is
/// then remembered one sighting later).
struct RememberedQuiet {
    shapes: HashSet<Box<[u8]>, foldhash::fast::RandomState>,
    bytes: usize,
    /// Per slot (the hash's low bits), the high half of the hash of the last quiet shape
    /// seen once there; zero for none.
    seen: Box<[u32]>,
    /// The shape of the text being looked up (kept to spare an allocation per lookup).
    shape: Vec<u8>,
}

impl Default for RememberedQuiet {
    fn default() -> Self {
        // Made once per worker and kept for its life (see `memory`).
        crate::memory::lasting(|| Self {
            shapes: HashSet::default(),
            bytes: 0,
            seen: vec![0; SEEN_SLOTS].into_boxed_slice(),
            shape: Vec::with_capacity(REMEMBERED_TEXT_BYTES),
        })
    }
}

impl RememberedQuiet {
    /// [`is_quiet`] for `sql` (short enough to remember): from memory when its shape is
    /// remembered, else by a scan, noting the shape when the text is quiet.
    fn answer(&mut self, sql: &[u8]) -> bool {
        respell_numbers(sql, b"0", &mut self.shape);
        if self.shapes.contains(self.shape.as_slice()) {
            // Only UTF-8 text is scanned, so a shape remembered is UTF-8, and so is every
            // text of its shape (they differ in ASCII digits): no need to check it first.
            return true;
        }
        let quiet = scan_text_is_quiet(sql);
        if quiet {
            self.found_quiet();
        }
        quiet
    }

    /// Notes that the text whose shape is `self.shape` was found quiet: remembers the
    /// shape if it was seen before.
    fn found_quiet(&mut self) {
        let hash = self.shapes.hasher().hash_one(self.shape.as_slice());
        let slot = (hash as usize) & (SEEN_SLOTS - 1);
        // Never zero, so that zero can mean an empty slot.
        let fingerprint = ((hash >> 32) as u32).max(1);
        if self.seen[slot] != fingerprint {
            self.seen[slot] = fingerprint;
            return;
        }
        self.seen[slot] = 0;
        let cost = self.shape.len() + REMEMBERED_ENTRY_BYTES;
        if self.bytes + cost > REMEMBERED_BYTES {
            self.shapes.clear();
            self.bytes = 0;
        }
        self.bytes += cost;
        // Kept for the worker's life, not the transaction's (see `memory`).
        crate::memory::lasting(|| self.shapes.insert(self.shape.as_slice().into()));
    }
}

thread_local! {
    static REMEMBERED: std::cell::RefCell<RememberedQuiet> =
        std::cell::RefCell::new(RememberedQuiet::default());
}

/// Whether `sql` certainly changes no session state, pins nothing and runs nothing the
/// pooler cannot see (see the module documentation); `false` means "classify it". The
/// answer depends on the text's shape alone (see [`respell_numbers`]), so shapes found
/// quiet twice are remembered per worker. Text that is not UTF-8 is left to the
/// classification, which reads it with its other bytes replaced.
pub fn is_quiet(sql: impl AsRef<[u8]>) -> bool {
    let sql = sql.as_ref();
    if sql.len() > REMEMBERED_TEXT_BYTES {
        return scan_text_is_quiet(sql);
    }
    REMEMBERED.with_borrow_mut(|remembered| remembered.answer(sql))
}

/// Writes `sql` into `out` with every run of digits that stands alone spelled `digits`.
/// Spelled `0`, that is the text's shape: texts of one shape differ only in such runs
/// (`WHERE aid = 56789`, `abalance + -1234`), and get one answer from [`is_quiet`].
///
/// Why one answer is right: a run of ASCII digits neither of whose neighbours could
/// continue a word (a letter, a digit, `_`, `$` or a non-ASCII byte) is, to PostgreSQL's
/// scanner, a numeric constant or part of one (`1.5`), or lies inside a string, a comment,
/// a dollar quote or a quoted identifier. Changing it changes no word, keyword, operator
/// or boundary, only a constant's value (and so at most its type), the text of a string or
/// comment, or a quoted name made of more than word characters, which no built-in
/// function and no `pg_temp` schema has; none of these is what [`quiet_statement`] reads.
/// The one other thing a run can change is whether the text scans at all (an escape in an
/// `E''` string such as `\200` makes an invalid byte where `\101` does not): then the
/// server refuses the text as the scanner does, and a refused text changes nothing.
/// `quiet::tests::numbers_do_not_change_the_answer` and the `statement_scanner` fuzz
/// target check this against the scanner.
pub fn respell_numbers(bytes: &[u8], digits: &[u8], out: &mut Vec<u8>) {
    let word =
        |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80;
    out.clear();
    let mut copied = 0;
    let mut at = next_digit(bytes, 0);
    while at < bytes.len() {
        let end = at
            + bytes[at..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
        let alone = (at == 0 || !word(bytes[at - 1])) && bytes.get(end).is_none_or(|&b| !word(b));
        if alone {
            // Digits are ASCII: both cuts fall on character boundaries.
            out.extend_from_slice(&bytes[copied..at]);
            out.extend_from_slice(digits);
            copied = end;
        }
        at = next_digit(bytes, end);
    }
    out.extend_from_slice(&bytes[copied..]);
}

/// Where the first ASCII digit at or after `at` is (`bytes.len()` if none). Most of a
/// statement's bytes are not digits, and every statement the pooler sees is looked
/// through, so eight bytes are looked at a time.
fn next_digit(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    while let Some(eight) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        // Digits become bytes below 10; "some byte below 10" is exact as a yes or no
        // (the bit trick may mark the wrong byte, never a word without one).
        let word = u64::from_ne_bytes(*eight) ^ (ONES * u64::from(b'0'));
        if word.wrapping_sub(ONES * 10) & !word & HIGHS != 0 {
            break;
        }
        at += 8;
    }
    bytes
        .get(at..)
        .and_then(|rest| rest.iter().position(u8::is_ascii_digit))
        .map_or(bytes.len(), |found| at + found)
}

/// What [`respell_numbers`] promises for `sql` respelled with `digits`, checked (for the
/// test and the fuzz target that hold it to it): the scan gives both texts one answer, or
/// the one it does not find quiet is text it (and so the server) refuses. `Err` says how
/// the promise broke; `scratch` holds the respelled text.
pub fn respelling_keeps_the_answer(
    sql: &str,
    digits: &str,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    respell_numbers(sql.as_bytes(), digits.as_bytes(), scratch);
    let respelled = std::str::from_utf8(scratch)
        .map_err(|_| format!("{sql:?} respelled with {digits:?} is not UTF-8"))?;
    let (original, other) = (scan_is_quiet(sql), scan_is_quiet(respelled));
    let not_quiet = if original { respelled } else { sql };
    if original == other || Scan::new(not_quiet).is_none() {
        return Ok(());
    }
    Err(format!("{sql:?} ({original}) and {respelled:?} ({other})"))
}

/// [`scan_is_quiet`] for text that may not be UTF-8 (which is not quiet).
fn scan_text_is_quiet(sql: &[u8]) -> bool {
    std::str::from_utf8(sql).is_ok_and(scan_is_quiet)
}

/// [`is_quiet`] by a scan of the text, remembering nothing (for tests and the fuzz target).
pub fn scan_is_quiet(sql: &str) -> bool {
    match Scan::new(sql) {
        Some(scan) => scan.statements().all(quiet_statement),
        None => false,
    }
}

/// One statement of [`is_quiet`].
fn quiet_statement(statement: Statement<'_>) -> bool {
    // Room for every token at once: collecting the filtered words would grow it 4, 8, 16...
    let mut words: Vec<Lexeme<'_>> = Vec::with_capacity(statement.token_count());
    words.extend(statement.words());
    let Some(first) = words.first() else {
        return true;
    };
    if !QUIET_FIRST.iter().any(|&token| first.is(token)) {
        return false;
    }
    words.iter().enumerate().all(|(at, word)| {
        if word.is(Token::Uident) || word.is(Token::Temp) || word.is(Token::Temporary) {
            return false;
        }
        if word.is(Token::Ident) && names_pg_temp(word.text) {
            return false;
        }
        !word.is(Token::Ascii40) || call_is_quiet(&words, at)
    })
}

/// Whether an identifier as written may name a temporary schema (`pg_temp`, `pg_temp_3`,
/// quoted or not; any case, which only over-approximates a quoted one).
fn names_pg_temp(text: &str) -> bool {
    text.trim_start_matches('"')
        .get(..7)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("pg_temp"))
}

/// For the `(` at `paren`: false when it may call a function not known to be quiet.
fn call_is_quiet(words: &[Lexeme<'_>], paren: usize) -> bool {
    let Some(at) = paren.checked_sub(1) else {
        return true;
    };
    let named = |word: &Lexeme<'_>| {
        word.is(Token::Ident) || word.is(Token::Uident) || word.keyword != KeywordKind::NoKeyword
    };
    let name = &words[at];
    if !named(name) {
        // `((`, `= (`, `1 (`...: no name is called.
        return true;
    }
    // The qualified name ending at `at`: `schema.function` or `function`.
    let mut first = at;
    while first >= 2 && words[first - 1].is(Token::Ascii46) && named(&words[first - 2]) {
        first -= 2;
    }
    let before = first.checked_sub(1).map(|i| &words[i]);
    match before {
        // `(x).f(`: not a form this look reads.
        Some(word) if word.is(Token::Ascii46) => return false,
        Some(word) if NOT_A_CALL_AFTER.iter().any(|&token| word.is(token)) => return true,
        _ => {}
    }
    if first != at {
        let schema = words[first].name();
        return first + 2 == at
            && schema.as_deref() == Some("pg_catalog")
            && name.name().is_some_and(|name| quiet_function(&name));
    }
    match name.keyword {
        // No function is called by a reserved word (`IN (`, `ANY (`, `CAST (`...).
        KeywordKind::ReservedKeyword => return true,
        // The grammar turns these into expressions or calls of quiet built-ins (`COALESCE`,
        // `EXTRACT`, `TRIM`, `numeric(10, 2)`...), except `TREAT`, which calls a function
        // named after a type.
        KeywordKind::ColNameKeyword => return !name.is(Token::Treat),
        _ => {}
    }
    let after_paren = |word: Option<&Lexeme<'_>>| word.is_some_and(|w| w.is(Token::Ascii41));
    if (name.is(Token::Over) || name.is(Token::Filter)) && after_paren(before) {
        // `count(*) OVER (…)`, `count(*) FILTER (…)`.
        return true;
    }
    if name.is(Token::Conflict) && before.is_some_and(|w| w.is(Token::On)) {
        // `ON CONFLICT (a) DO …`; `ON conflict(a)` could be a join condition calling a
        // function named `conflict`, which no `DO` can follow.
        return closing(words, paren)
            .and_then(|close| words.get(close + 1))
            .is_some_and(|next| next.is(Token::Do));
    }
    name.name().is_some_and(|name| quiet_function(&name))
}

/// The index of the `)` closing the `(` at `open`.
fn closing(words: &[Lexeme<'_>], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (at, word) in words.iter().enumerate().skip(open) {
        if word.is(Token::Ascii40) {
            depth += 1;
        } else if word.is(Token::Ascii41) {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return Some(at);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statements as pgbench, ORMs and drivers send them: no parse needed.
    #[test]
    fn ordinary_statements_are_quiet() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
            "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 77, -4321, CURRENT_TIMESTAMP);",
            "INSERT INTO public.t AS x (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET (a, b) = (1, 2) RETURNING id",
            "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
            "SELECT count(*), max(x), coalesce(a, b), lower(name), now() FROM t GROUP BY y",
            "SELECT row_number() OVER (PARTITION BY a), count(*) FILTER (WHERE b) FROM t",
            "SELECT x::numeric(10, 2), EXTRACT(year FROM d), TRIM(BOTH FROM s), substring(s FROM 2) FROM t",
            "SELECT pg_catalog.lower(s), nextval('s'), random() FROM t t2 JOIN (SELECT 1) u ON true",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
            "SELECT * FROM generate_series(1, 3) AS g(x) WHERE x IN (1, 2) AND EXISTS (SELECT 1)",
            "BEGIN; SELECT 1; COMMIT",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "DELETE FROM t WHERE id = ANY($1)",
            "SHOW search_path",
            "SELECT $$; SET search_path TO evil$$, 'SET x', E'\\'; SET'",
            "/* SET search_path TO a */ SELECT 1 -- ; SET",
            "",
            ";;",
        ] {
            assert!(is_quiet(sql), "{sql:?}");
        }
    }

    /// Everything that could touch the session, however it is spelled, is classified.
    #[test]
    fn anything_that_may_touch_the_session_is_not() {
        for sql in [
            "/* ; */ SET search_path TO evil1",
            "/* /* */ */ SET search_path TO evil2",
            "SET search_path TO evil3 -- ;",
            "set/**/search_path to evil4",
            "SELECT 1; SET search_path TO evil5",
            "SELECT $a$ $$ $a$; SET search_path TO evil",
            "SELECT set_config('search_path', 'evil6', false)",
            "SELECT \"set_config\"('search_path', 'evil', false)",
            "SELECT U&\"\\0073et_config\"('search_path', 'evil', false)",
            "SELECT U&\"lower\"(x)",
            "SELECT pg_catalog.set_config('a', 'b', false)",
            "SELECT public.lower(x)",
            "SELECT db.pg_catalog.lower(x)",
            "SELECT my_function()",
            "SELECT pg_advisory_lock(1)",
            "SELECT setseed(0.5)",
            "SELECT 'a' OPERATOR(pg_catalog.||) set_config('a', 'b', false)",
            "SELECT (x).lower(y)",
            "SELECT * INTO TEMP t FROM u",
            "SELECT * INTO pg_temp.t FROM u",
            "INSERT INTO \"PG_TEMP_3\".t VALUES (1)",
            "SELECT TREAT(x AS mytype)",
            "SELECT * FROM a JOIN b ON conflict(a.x) WHERE true",
            "INSERT INTO t VALUES (1) ON CONFLICT (a) WHERE b DO NOTHING",
            "DO $$BEGIN PERFORM set_config('a', 'b', false); END$$",
            "CALL p()",
            "LISTEN c",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "DISCARD ALL",
            "RESET ALL",
            "EXPLAIN ANALYZE SELECT 1",
            "SELECT 'unterminated",
            "SELECT 1\0",
        ] {
            assert!(!is_quiet(sql), "{sql:?}");
        }
    }

    /// `sql`'s shape, as [`RememberedQuiet`] keeps it.
    fn shape(sql: &str) -> Vec<u8> {
        let mut out = Vec::new();
        respell_numbers(sql.as_bytes(), b"0", &mut out);
        out
    }

    /// A remembered shape gets the scan's answer, a text that is not quiet is never
    /// remembered, a shape seen once is not yet, texts that differ only in their numbers
    /// share one, and what a worker remembers stays within its bound.
    #[test]
    fn remembered_shapes_answer_as_the_scan_does_within_the_bound() {
        let remembered =
            |sql: &str| REMEMBERED.with_borrow(|r| r.shapes.contains(shape(sql).as_slice()));
        let quiet = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
        let loud = "SET search_path TO evil";
        assert!(is_quiet(quiet));
        assert!(!is_quiet(loud));
        assert!(!remembered(quiet));
        for _ in 0..3 {
            assert!(is_quiet(quiet));
            assert!(!is_quiet(loud));
        }
        assert!(remembered(quiet));
        assert!(!remembered(loud));
        let long = format!("SELECT 1 -- {}", "x".repeat(REMEMBERED_TEXT_BYTES));
        assert!(is_quiet(&long));
        assert!(!remembered(&long));
        // Two texts of one shape make it remembered; a third is answered from memory.
        assert!(is_quiet("UPDATE t SET a = a + -4321 WHERE id = 77"));
        assert!(is_quiet("UPDATE t SET a = a + -12 WHERE id = 123456"));
        assert!(remembered("UPDATE t SET a = a + -5 WHERE id = 9"));
        // Shapes seen once are not remembered...
        let before = REMEMBERED.with_borrow(|r| r.shapes.len());
        for n in 0..20_000 {
            assert!(is_quiet(format!(
                "SELECT abalance FROM t WHERE name = 'a{n}'"
            )));
        }
        assert_eq!(REMEMBERED.with_borrow(|r| r.shapes.len()), before);
        // ...shapes seen twice are, within the bound.
        for n in 0..20_000 {
            let sql = format!("SELECT abalance FROM t WHERE name = 'b{n}'");
            assert!(is_quiet(&sql));
            assert!(is_quiet(&sql));
            assert!(REMEMBERED.with_borrow(|r| r.bytes <= REMEMBERED_BYTES));
        }
        assert!(REMEMBERED.with_borrow(|r| r.shapes.len() > before));
    }

    #[test]
    fn a_shape_spells_only_the_digit_runs_that_stand_alone() {
        for (sql, expected) in [
            (
                "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77;",
                "UPDATE pgbench_accounts SET abalance = abalance + -0 WHERE aid = 0;",
            ),
            (
                "SELECT 1.5, .25, 3., 1e5, 0x1F, 1_000",
                "SELECT 0.0, .0, 0., 1e5, 0x1F, 1_000",
            ),
            (
                "SELECT $1, t1.c2, \"x 12\", E'\\101', 'é1'",
                "SELECT $1, t1.c2, \"x 0\", E'\\0', 'é1'",
            ),
            ("42", "0"),
            ("", ""),
        ] {
            assert_eq!(shape(sql), expected.as_bytes(), "{sql}");
        }
    }

    /// Statements as pgbench and applications send them, and hostile ones (comments,
    /// dollar quotes, escapes, session changes), each followed by mutations of them.
    fn mutated_statements(rounds: usize) -> impl Iterator<Item = String> {
        const SEEDS: &[&str] = &[
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 77, -4321, CURRENT_TIMESTAMP);",
            "INSERT INTO t AS x (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET (a) = (1)",
            "SELECT lower(a), pg_catalog.upper(b), count(*) OVER (w) FROM t t2 JOIN (SELECT 1) u ON true",
            "WITH RECURSIVE r(n) AS (SELECT 1) SELECT x::numeric(3, 1), TRIM(s) FROM r",
            "SELECT set_config('a.b', 'c', true), $$;SET$$, E'\\'; SET' -- ; SET x",
            "/* /* ; */ */ SELECT 1; BEGIN; SHOW x; COMMIT",
            "SELECT 1.5e3, E'\\101\\x41', U&'\\0041', \"1\"(2), log10(100), $1 FROM t LIMIT 10",
            "SELECT f(1) FROM pg_temp_1.t; SET x = 1; SELECT 2",
            "/* 1 */ SELECT $$ 2 $$, $a1$ 3 $a1$ -- 4",
        ];
        let mut mutator = crate::testing::Mutator::new();
        (0..rounds).map(move |round| {
            let mut input = SEEDS[round % SEEDS.len()].as_bytes().to_vec();
            if round >= SEEDS.len() {
                mutator.mutate(&mut input);
            }
            String::from_utf8_lossy(&input).into_owned()
        })
    }

    #[test]
    fn next_digit_finds_the_first_digit_wherever_it_is() {
        // Neighbours of the digits in every byte value's sense: '/' and ':' around them,
        // bytes whose low bits are a digit's, and the high ones.
        let others = [b'/', b':', b'a', b' ', 0x80, 0xb0, 0xb9, 0xff, 0x20, 0x10];
        for len in 0..40 {
            for filler in others {
                let mut bytes = vec![filler; len];
                assert_eq!(next_digit(&bytes, 0), len, "none in {bytes:?}");
                for digit_at in 0..len {
                    for digit in [b'0', b'5', b'9'] {
                        bytes.fill(filler);
                        bytes[digit_at] = digit;
                        for from in 0..=len {
                            let expected = if from <= digit_at { digit_at } else { len };
                            assert_eq!(next_digit(&bytes, from), expected, "{bytes:?} from {from}");
                        }
                    }
                }
            }
        }
    }

    /// What [`respell_numbers`] promises: texts that differ only in digit runs that stand alone get
    /// one answer from the scan, unless the scanner (and so the server) refuses one.
    #[test]
    fn numbers_do_not_change_the_answer() {
        let mut scratch = Vec::new();
        for sql in mutated_statements(3_000) {
            for digits in ["0", "98765", "200", "1"] {
                assert_eq!(
                    respelling_keeps_the_answer(&sql, digits, &mut scratch),
                    Ok(())
                );
            }
        }
    }

    /// The crate's stable-Rust fuzz pass, checking what the `statement_scanner` fuzz
    /// target checks: mutated statements never panic the scan or the pre-check, and what
    /// the pre-check passes the classification finds nothing in (or the parser rejects).
    #[test]
    fn mutated_statements_keep_the_pre_check_sound() {
        use crate::protocol::postgres::classify::{Rules, classify};
        let rules = Rules::default();
        for sql in mutated_statements(3_000) {
            if let Some(scan) = Scan::new(&sql) {
                for statement in scan.statements() {
                    statement.words().for_each(|word| drop(word.name()));
                }
                drop(scan.leading_comments());
            }
            if is_quiet(&sql) {
                let classification = classify(&sql, &rules);
                assert!(
                    classification.session.is_empty() && classification.pins.is_none(),
                    "{sql:?}: {classification:?}"
                );
                assert!(
                    !classification.untracked || pg_query::parse(&sql, 0).is_err(),
                    "{sql:?}: {classification:?}"
                );
            }
        }
    }

    #[test]
    fn the_function_list_holds_built_ins_and_leaves_out_session_changers() {
        for name in [
            "lower", "count", "now", "extract", "btrim", "timezone", "nextval",
        ] {
            assert!(quiet_function(name), "{name}");
        }
        for name in [
            "set_config",
            "setseed",
            "pg_advisory_lock",
            "pg_try_advisory_lock",
            "query_to_xml",
            "ts_rewrite",
            "my_function",
            "",
        ] {
            assert!(!quiet_function(name), "{name}");
        }
    }
}
