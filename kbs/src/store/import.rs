//! Moving a single broker's embedded database into PostgreSQL, so that the
//! replicas start with its approvals, tokens, secrets, digests, sessions and
//! records rather than with nothing.
//!
//! Rows are copied as they are. Sealed values stay sealed: each is bound to
//! its row's name, not to the database, so the replicas open them under the
//! same at-rest key. The copy is one transaction on the destination, which
//! must hold no data yet; it either lands whole or not at all.

use super::db::{params, DbError, Handle, Param, Row, Value};

/// Every table of the schema, in an order that writes no row before one it
/// names.
pub const TABLES: [&str; 18] = [
    "schema_migrations",
    "sessions",
    "digests",
    "secrets",
    "keysets",
    "resources",
    "connections",
    "write_probe",
    "records",
    "launch_reports",
    "approvals",
    "registration_inputs",
    "meta",
    "platform_tcbs",
    "snp_guest_reports",
    "tokens",
    "leases",
    "counters",
];

/// Tables not copied: the destination keeps its own migration history, and
/// the write probe and the leases describe running processes only.
const NOT_COPIED: [&str; 3] = ["schema_migrations", "write_probe", "leases"];

/// The rows a new destination holds as soon as it is opened: the at-rest
/// key's check and fingerprint, written under the same key as the source's,
/// whose rows replace them. Any other `meta` row means a broker has used it.
const META_OF_A_NEW_DATABASE: [&str; 2] = ["at_rest_check", "at_rest_key"];

/// Source rows read at a time.
const BATCH: i64 = 500;

/// Tables whose rows may each be megabytes (a firmware image approved with
/// its data, up to 64 MiB; a resource, up to 3 MiB): read one at a time, so
/// that the copy holds one such row in memory, not a batch of them.
const LARGE_ROWS: [&str; 2] = ["approvals", "resources"];

/// How many rows of each table were copied, in copying order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// Table and rows.
    pub tables: Vec<(&'static str, u64)>,
    /// Whether the embedded database was marked as moved, so that no broker
    /// serves it again (see `Store::import_embedded`).
    pub source_marked: bool,
}

/// Why a copy was not made.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The embedded database could not be read.
    #[error("reading the embedded database: {0}")]
    Source(DbError),
    /// The destination failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The destination holds data of its own.
    #[error("table {table} already holds rows; import only into a database no broker has used")]
    NotEmpty {
        /// The first table found with rows.
        table: &'static str,
    },
    /// A database of the wrong kind on either side.
    #[error("{0}")]
    WrongKind(&'static str),
    /// The destination's schema is not the one this broker makes.
    #[error("unexpected schema: {0}")]
    Schema(String),
    /// A source row could not be written to the destination.
    #[error("table {table}, row {rowid}: {source}")]
    Row {
        /// The table.
        table: &'static str,
        /// The row's SQLite rowid.
        rowid: i64,
        /// What the destination said.
        source: DbError,
    },
}

/// Copies every durable table of `src` (an embedded database at the same
/// schema version) into `dst` (a PostgreSQL transaction), after checking
/// that `dst` holds no data and locking its tables against writers.
pub fn copy(src: &mut Handle<'_>, dst: &mut Handle<'_>) -> Result<Copied, ImportError> {
    let copied_tables = || TABLES.into_iter().filter(|t| !NOT_COPIED.contains(t));
    for table in copied_tables() {
        dst.batch(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))?;
    }
    for table in copied_tables() {
        let [check, fingerprint] = META_OF_A_NEW_DATABASE;
        let used: bool = if table == "meta" {
            dst.query_one(
                "SELECT EXISTS (SELECT 1 FROM meta WHERE name NOT IN (?1, ?2))",
                params![check, fingerprint],
            )?
        } else {
            dst.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), params![])?
        }
        .get(0)?;
        if used {
            return Err(ImportError::NotEmpty { table });
        }
    }
    let mut copied = Copied::default();
    for table in copied_tables() {
        let n = copy_table(src, dst, table)?;
        copied.tables.push((table, n));
    }
    restart_identities(src, dst)?;
    Ok(copied)
}

/// Copies one table in batches by rowid; returns how many rows.
fn copy_table(
    src: &mut Handle<'_>,
    dst: &mut Handle<'_>,
    table: &'static str,
) -> Result<u64, ImportError> {
    // The destination's columns: its schema was made by this broker, so the
    // names are known good; a source that lacks one fails on the SELECT.
    let columns: Vec<String> = dst
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position",
            params![table],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<_, _>>()?;
    // Spliced into both databases' SQL: only plain names.
    if let Some(bad) = columns.iter().find(|c| !plain_name(c)) {
        return Err(ImportError::Schema(format!("{table}: column {bad:?}")));
    }
    let list = columns.join(", ");
    let insert = Insert {
        table,
        list: &list,
        columns: columns.len(),
    };
    let select =
        format!("SELECT rowid, {list} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2");
    let batch = if LARGE_ROWS.contains(&table) {
        1
    } else {
        // PostgreSQL takes at most 65535 parameters in one statement.
        BATCH.min(i64::try_from(60_000 / columns.len().max(1)).unwrap_or(1))
    };
    let mut after = i64::MIN;
    let mut count = 0u64;
    loop {
        let rows = src
            .query(&select, params![after, batch])
            .map_err(ImportError::Source)?;
        let Some(last) = rows.last() else {
            return Ok(count);
        };
        after = last.get(0).map_err(ImportError::Source)?;
        insert.rows(dst, &rows)?;
        count += u64::try_from(rows.len()).unwrap_or(u64::MAX);
    }
}

/// The INSERT of one table's rows into the destination.
struct Insert<'a> {
    table: &'static str,
    /// The column names, comma-separated.
    list: &'a str,
    columns: usize,
}

impl Insert<'_> {
    /// The statement for `n` rows.
    fn sql(&self, n: usize) -> String {
        let rows: Vec<String> = (0..n)
            .map(|r| {
                let row: Vec<String> = (1..=self.columns)
                    .map(|c| format!("?{}", r * self.columns + c))
                    .collect();
                format!("({})", row.join(", "))
            })
            .collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            self.table,
            self.list,
            rows.join(", ")
        );
        if self.table == "meta" {
            sql.push_str(" ON CONFLICT (name) DO UPDATE SET value = excluded.value");
        }
        sql
    }

    /// Writes `rows` (rowid first, then the columns) in one statement, a
    /// round trip for the batch rather than for each row. Should that fail,
    /// its savepoint is rolled back and the rows go one by one, so that the
    /// error names the row at fault.
    fn rows(&self, dst: &mut Handle<'_>, rows: &[Row]) -> Result<(), ImportError> {
        if rows.len() > 1 {
            let values: Vec<Param<'_>> = rows
                .iter()
                .flat_map(|r| r.values().iter().skip(1).map(Value::as_param))
                .collect();
            dst.batch("SAVEPOINT import_rows")?;
            if dst.execute(&self.sql(rows.len()), &values).is_ok() {
                dst.batch("RELEASE SAVEPOINT import_rows")?;
                return Ok(());
            }
            dst.batch("ROLLBACK TO SAVEPOINT import_rows")?;
        }
        let one = self.sql(1);
        for row in rows {
            let rowid: i64 = row.get(0).map_err(ImportError::Source)?;
            let values: Vec<Param<'_>> = row.values().iter().skip(1).map(Value::as_param).collect();
            dst.execute(&one, &values)
                .map_err(|source| ImportError::Row {
                    table: self.table,
                    rowid,
                    source,
                })?;
        }
        Ok(())
    }
}

/// Sets every identity column of the destination to go on after the largest
/// id the source ever handed out (SQLite remembers it in `sqlite_sequence`,
/// even for rows since deleted), so ids stay unique and increasing for
/// readers that page by them.
fn restart_identities(src: &mut Handle<'_>, dst: &mut Handle<'_>) -> Result<(), ImportError> {
    let identities: Vec<(String, String)> = dst
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND is_identity = 'YES'",
            params![],
        )?
        .iter()
        .map(|r| Ok((r.get(0)?, r.get(1)?)))
        .collect::<Result<_, DbError>>()?;
    for (table, column) in identities {
        // Names from the catalog, spliced into SQL: only the schema's own.
        let Some(&known) = TABLES.iter().find(|t| **t == table) else {
            continue;
        };
        if !plain_name(&column) {
            return Err(ImportError::Schema(format!(
                "{known}: identity column {column:?}"
            )));
        }
        let handed_out: i64 = src
            .query_opt(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                params![known],
            )
            .and_then(|r| r.map(|r| r.get(0)).transpose())
            .map_err(ImportError::Source)?
            .unwrap_or(0);
        // Marked as drawn (`is_called`), so that the sequence's last value
        // reads as the largest id handed out (see `Store::settled_record_ids`);
        // left alone while none was.
        dst.query_opt(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{known}', '{column}'), m, true) \
                 FROM (SELECT GREATEST(COALESCE(MAX({column}), 0), ?1) AS m FROM {known}) s \
                 WHERE m > 0"
            ),
            params![handed_out],
        )?;
    }
    Ok(())
}

/// Whether `name` is a plain lowercase SQL name, safe to splice.
fn plain_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
