//! Statements sent together: writes whose results nobody reads, or reads that do
//! not depend on each other.
//!
//! On SQLite every statement is a round trip to sqlx's worker thread, ~40 µs on
//! this machine against a few µs of SQL, and the single writer is held for all of
//! them (BENCHMARKS.md: with two packs an event held it ~700 µs, 85 % of the time).
//! A [`Batch`] sends its statements as one multi-statement query: one round trip.
//! Reads come back as one list of rows; each read statement therefore starts with
//! a `part` column (a `BIGINT` of its own) that says which statement a row is of.
//! sqlx binds plain `?` across the statements of such a query in order (a `$n`
//! would bind by absolute number), so batched SQL is written with `?`; on
//! PostgreSQL, which cannot prepare several statements at once, each statement
//! runs on its own with the `?` numbered `$1`, `$2`...

use super::Result;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, Row};

/// A bound value.
#[derive(Debug, Clone)]
pub(super) enum Bind {
    Text(Option<String>),
    Int(Option<i64>),
    Real(Option<f64>),
}

impl From<&str> for Bind {
    fn from(v: &str) -> Self {
        Bind::Text(Some(v.to_string()))
    }
}
impl From<&String> for Bind {
    fn from(v: &String) -> Self {
        Bind::Text(Some(v.clone()))
    }
}
impl From<String> for Bind {
    fn from(v: String) -> Self {
        Bind::Text(Some(v))
    }
}
impl From<Option<&str>> for Bind {
    fn from(v: Option<&str>) -> Self {
        Bind::Text(v.map(str::to_string))
    }
}
impl From<&Option<String>> for Bind {
    fn from(v: &Option<String>) -> Self {
        Bind::Text(v.clone())
    }
}
impl From<i64> for Bind {
    fn from(v: i64) -> Self {
        Bind::Int(Some(v))
    }
}
impl From<Option<i64>> for Bind {
    fn from(v: Option<i64>) -> Self {
        Bind::Int(v)
    }
}
impl From<f64> for Bind {
    fn from(v: f64) -> Self {
        Bind::Real(Some(v))
    }
}

/// Statements to run later, in order, inside the caller's transaction.
#[derive(Debug, Default)]
pub struct Batch {
    statements: Vec<Statement>,
}

#[derive(Debug)]
struct Statement {
    sql: Sql,
    binds: Vec<Bind>,
}

#[derive(Debug)]
enum Sql {
    /// Written whole.
    Text(String),
    /// `head`, then `rows` rows of `width` placeholders, then `tail` (see
    /// [`Batch::push_rows`]).
    Rows {
        head: String,
        width: usize,
        tail: String,
        rows: usize,
    },
}

/// Rows in one multi-row statement at most: within both databases' limits on
/// parameters (32,766 and 65,535) at 9 values a row.
pub(super) const MAX_ROWS: usize = 1000;

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a statement written with `?` placeholders, one per value in `binds`.
    pub(super) fn push(&mut self, sql: String, binds: Vec<Bind>) {
        debug_assert_eq!(sql.matches('?').count(), binds.len(), "{sql}");
        self.statements.push(Statement {
            sql: Sql::Text(sql),
            binds,
        });
    }

    /// Adds rows to a multi-row statement `head (?, ...), (?, ...) tail`, `binds`
    /// holding `width` values a row. Rows pushed with the same `head`, `width`
    /// and `tail` go out as one statement (up to [`MAX_ROWS`] rows), where the
    /// last of them was pushed: a group of events then writes each table in one
    /// statement, not one per event. Every statement costs SQLite a prepare
    /// (a group's SQL is new text each time, so sqlx's cache never has it):
    /// preparing was still 15 % of the writer thread's time with the statements
    /// merged (BENCHMARKS.md, 2026-11-30 08:00).
    ///
    /// Moving a statement later must not change what the batch does, so the
    /// callers' rows commute with everything pushed after them: they are of
    /// different customers, or of different columns or rows of the same
    /// customer. Rows whose order matters (two stage moves of one customer) are
    /// pushed with [`Batch::push`]. An upsert must not get the same key twice in
    /// one batch (PostgreSQL refuses to update a row twice in one statement).
    pub(super) fn push_rows(&mut self, head: &str, width: usize, tail: &str, binds: Vec<Bind>) {
        debug_assert!(width > 0 && binds.len().is_multiple_of(width), "{head}");
        debug_assert_eq!(
            head.matches('?').count() + tail.matches('?').count(),
            0,
            "{head}"
        );
        let mut binds = binds.into_iter().peekable();
        while binds.peek().is_some() {
            let same = self.statements.iter().position(|s| {
                matches!(&s.sql, Sql::Rows { head: h, width: w, tail: t, rows }
                    if h == head && *w == width && t == tail && *rows < MAX_ROWS)
            });
            let mut st = match same {
                Some(i) => self.statements.remove(i),
                None => Statement {
                    sql: Sql::Rows {
                        head: head.to_string(),
                        width,
                        tail: tail.to_string(),
                        rows: 0,
                    },
                    binds: Vec::new(),
                },
            };
            let Sql::Rows { rows, .. } = &mut st.sql else {
                unreachable!("found by shape")
            };
            let room = MAX_ROWS - *rows;
            let before = st.binds.len();
            st.binds.extend(binds.by_ref().take(room * width));
            *rows += (st.binds.len() - before) / width;
            self.statements.push(st);
        }
    }

    /// Runs the statements: on SQLite as one query, on PostgreSQL one by one.
    /// Returns the rows they changed, in all.
    pub async fn run(self, conn: &mut AnyConnection) -> Result<u64> {
        if self.statements.is_empty() {
            return Ok(0);
        }
        if conn.backend_name() == "PostgreSQL" {
            let mut changed = 0;
            for st in self.statements {
                changed += execute(conn, &numbered(&st.sql.text()), st.binds).await?;
            }
            return Ok(changed);
        }
        let (sql, binds) = self.joined();
        execute(conn, &sql, binds).await
    }
}

impl Batch {
    /// Runs read statements, each selecting a `part` column first, and returns
    /// their rows in order: on SQLite from one query, on PostgreSQL one by one.
    pub(super) async fn fetch(self, conn: &mut AnyConnection) -> Result<Vec<AnyRow>> {
        if conn.backend_name() == "PostgreSQL" {
            let mut rows = Vec::new();
            for st in self.statements {
                rows.extend(
                    bound(&numbered(&st.sql.text()), st.binds)
                        .fetch_all(&mut *conn)
                        .await?,
                );
            }
            return Ok(rows);
        }
        let (sql, binds) = self.joined();
        Ok(bound(&sql, binds).fetch_all(conn).await?)
    }

    /// All statements as one multi-statement query, with their values in order.
    fn joined(self) -> (String, Vec<Bind>) {
        let mut all_sql = String::new();
        let mut all_binds = Vec::new();
        for st in self.statements {
            all_sql.push_str(&st.sql.text());
            all_sql.push_str(";\n");
            all_binds.extend(st.binds);
        }
        (all_sql, all_binds)
    }

    /// How many statements the batch sends.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.statements.len()
    }
}

impl Sql {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Sql::Text(s) => s.into(),
            Sql::Rows {
                head,
                width,
                tail,
                rows,
            } => format!("{head}{}{tail}", question_rows(*rows, *width)).into(),
        }
    }
}

/// Which statement of a fetched [`Batch`] `row` came from.
pub(super) fn part(row: &AnyRow) -> Result<i64> {
    Ok(row.try_get("part")?)
}

fn bound(sql: &str, binds: Vec<Bind>) -> Query<'_, Any, AnyArguments<'_>> {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = match b {
            Bind::Text(v) => q.bind(v),
            Bind::Int(v) => q.bind(v),
            Bind::Real(v) => q.bind(v),
        };
    }
    q
}

async fn execute(conn: &mut AnyConnection, sql: &str, binds: Vec<Bind>) -> Result<u64> {
    Ok(bound(sql, binds).execute(conn).await?.rows_affected())
}

/// `?` placeholders numbered `$1`, `$2`... for PostgreSQL. Batched SQL has no `?`
/// inside string literals; the tests run every batched statement on both databases.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// `rows` rows of `width` `?` placeholders, `(?, ?), (?, ?)`, for a multi-row
/// statement. Plain `?` matters beyond batching: sqlx's SQLite driver looks a
/// named `$n` up by name, a cost that grows with the square of their number, and a
/// rescore chunk's INSERT has thousands.
pub(super) fn question_rows(rows: usize, width: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    vec![row; rows].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered("UPDATE t SET a = ?, b = ? WHERE c IN (VALUES (?, ?))"),
            "UPDATE t SET a = $1, b = $2 WHERE c IN (VALUES ($3, $4))"
        );
        assert_eq!(question_rows(2, 3), "(?, ?, ?), (?, ?, ?)");
    }

    /// Every multi-row write an event or a rescore sends finds its rows by key,
    /// however many rows a group merged into it. Checked with the SQLite the
    /// host links: plans differ between versions (Python's SQLite 3.40 scans
    /// the whole table for `(a, b) IN (VALUES ...)`; the 3.46 linked here
    /// searches the key).
    #[tokio::test]
    async fn batched_writes_search_their_tables_by_key() {
        use crate::domain::EventRecord;
        use crate::domain::Reason;
        use crate::store::*;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite:{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let mut b = Batch::new();
        queue_metrics(&mut b, "t", "c", &Default::default(), 0);
        queue_bump_revs(&mut b, "t", &["c", "d"]);
        let score = StoredScore {
            plugin: "p".into(),
            plugin_version: "1".into(),
            value: 1.0,
            band: None,
            reasons: vec![],
            updated_at: 0,
        };
        queue_scores_over(
            &mut b,
            "t",
            Default::default(),
            &[("c".into(), score)],
            None,
        );
        let before = SegmentsBefore::from([(("c".into(), "p".into()), vec!["gone".into()])]);
        let set = SegmentSet {
            customer: "c".into(),
            plugin: "p".into(),
            segments: vec![],
        };
        queue_memberships_over(&mut b, "t", before, &[set], 0);
        let mv = StageMove {
            from: None,
            to: "s".into(),
            reason: Reason {
                code: "r".into(),
                points: 0.0,
                args: vec![],
            },
            reason_text: "r".into(),
            plugin: "p".into(),
            plugin_version: "1".into(),
        };
        queue_stage_moves(&mut b, "t", &[("c", &mv)], None, 0);
        let e = EventRecord {
            id: "e".into(),
            kind: "visit".into(),
            channel: None,
            at: 0,
            amount_cents: None,
            fields: vec![],
        };
        queue_event(&mut b, "t", "c", &e, None, &serde_json::json!({}), 0);
        let mut conn = store.conn().await.unwrap();
        let mut seen = Vec::new();
        for st in b.statements {
            let sql = format!("EXPLAIN QUERY PLAN {}", st.sql.text());
            let plan: Vec<String> = bound(&sql, st.binds)
                .fetch_all(&mut *conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get::<String, _>(3).unwrap())
                .collect();
            let scans: Vec<&String> = plan
                .iter()
                .filter(|d| d.starts_with("SCAN ") && !d.contains("CONSTANT ROW"))
                .filter(|d| !d.ends_with("VALUES CLAUSE"))
                .filter(|d| !d.starts_with("SCAN v") && !d.starts_with("SCAN (subquery"))
                .collect();
            assert!(scans.is_empty(), "{}: {plan:?}", st.sql.text());
            seen.push(
                st.sql
                    .text()
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        assert_eq!(seen.len(), 8, "{seen:?}");
    }

    fn ints(binds: &[Bind]) -> Vec<i64> {
        binds
            .iter()
            .map(|b| match b {
                Bind::Int(Some(v)) => *v,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn rows_of_one_shape_go_out_as_one_statement_where_the_last_was_pushed() {
        let mut b = Batch::new();
        b.push_rows("INSERT INTO t (a) VALUES ", 1, "", vec![1.into()]);
        b.push("DELETE FROM u WHERE a = ?".into(), vec![2.into()]);
        b.push_rows("INSERT INTO t (a) VALUES ", 1, "", vec![3.into()]);
        b.push_rows(
            "INSERT INTO v (a, b) VALUES ",
            2,
            " ON CONFLICT DO NOTHING",
            vec![4.into(), 5.into()],
        );
        b.push_rows(
            "INSERT INTO t (a) VALUES ",
            1,
            " ON CONFLICT DO NOTHING",
            vec![6.into()],
        );
        assert_eq!(b.len(), 4);
        let (sql, binds) = b.joined();
        assert_eq!(
            sql,
            "DELETE FROM u WHERE a = ?;\n\
             INSERT INTO t (a) VALUES (?), (?);\n\
             INSERT INTO v (a, b) VALUES (?, ?) ON CONFLICT DO NOTHING;\n\
             INSERT INTO t (a) VALUES (?) ON CONFLICT DO NOTHING;\n"
        );
        assert_eq!(ints(&binds), [2, 1, 3, 4, 5, 6]);
    }

    #[test]
    fn a_statement_takes_at_most_max_rows() {
        let mut b = Batch::new();
        let n = 2 * MAX_ROWS as i64 + 1;
        b.push_rows(
            "INSERT INTO t (a) VALUES ",
            1,
            "",
            (0..n - 1).map(Bind::from).collect(),
        );
        b.push_rows("INSERT INTO t (a) VALUES ", 1, "", vec![(n - 1).into()]);
        assert_eq!(b.len(), 3);
        let rows: Vec<usize> = b
            .statements
            .iter()
            .map(|s| s.sql.text().matches('?').count())
            .collect();
        assert_eq!(rows, [MAX_ROWS, MAX_ROWS, 1]);
        assert_eq!(ints(&b.joined().1), (0..n).collect::<Vec<_>>());
    }
}
