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
    statements: Vec<(String, Vec<Bind>)>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a statement written with `?` placeholders, one per value in `binds`.
    pub(super) fn push(&mut self, sql: String, binds: Vec<Bind>) {
        debug_assert_eq!(sql.matches('?').count(), binds.len(), "{sql}");
        self.statements.push((sql, binds));
    }

    /// Runs the statements: on SQLite as one query, on PostgreSQL one by one.
    /// Returns the rows they changed, in all.
    pub async fn run(self, conn: &mut AnyConnection) -> Result<u64> {
        if self.statements.is_empty() {
            return Ok(0);
        }
        if conn.backend_name() == "PostgreSQL" {
            let mut changed = 0;
            for (sql, binds) in self.statements {
                changed += execute(conn, &numbered(&sql), binds).await?;
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
            for (sql, binds) in self.statements {
                rows.extend(bound(&numbered(&sql), binds).fetch_all(&mut *conn).await?);
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
        for (sql, binds) in self.statements {
            all_sql.push_str(&sql);
            all_sql.push_str(";\n");
            all_binds.extend(binds);
        }
        (all_sql, all_binds)
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
}
