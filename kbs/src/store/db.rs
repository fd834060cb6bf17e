//! One SQL surface over the two databases the broker keeps its state in: the
//! embedded SQLite file of a single broker, and PostgreSQL shared by replicas.
//!
//! The store's statements are written once, in the common subset of both
//! dialects, with SQLite's `?N` placeholders (rewritten to `$N` for
//! PostgreSQL). Values cross as four kinds — null, integer, text, bytes — so
//! that neither driver's type rules leak into the store: PostgreSQL's strict
//! parameter typing is met here, by converting an integer to whatever integer
//! or boolean type the server infers for its placeholder.

use std::collections::HashMap;

/// A failure of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL (or the connection to it) reported an error.
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    /// A statement that must return a row returned none.
    #[error("no row returned")]
    NoRow,
    /// A column holds a value of another kind than the store reads.
    #[error("column {column}: expected {expected}")]
    Type {
        /// Zero-based column index.
        column: usize,
        /// What the store expected.
        expected: &'static str,
    },
    /// A column of a type the store never writes.
    #[error("column {column}: unsupported PostgreSQL type {ty}")]
    UnsupportedType {
        /// Zero-based column index.
        column: usize,
        /// The type's name.
        ty: String,
    },
    /// No connection to PostgreSQL could be had.
    #[error("no database connection: {0}")]
    Unavailable(String),
    /// The caller gave up on the transaction and reports why itself.
    #[error("transaction abandoned")]
    Abandoned,
}

/// The server's own message for a server error (the driver's display says
/// only "db error"), else the driver's.
fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        // "error serializing parameter 3" says which, its cause says why.
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl DbError {
    /// Whether the failure was a uniqueness violation (a row with this key
    /// exists already).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            DbError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }
}

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// SQL NULL.
    Null,
    /// An integer (booleans are 0 and 1).
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

/// What can be bound as a [`Param`].
pub trait ToParam {
    /// The parameter.
    fn to_param(&self) -> Param<'_>;
}

impl ToParam for str {
    fn to_param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl ToParam for String {
    fn to_param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl ToParam for [u8] {
    fn to_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for Vec<u8> {
    fn to_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl<const N: usize> ToParam for [u8; N] {
    fn to_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for bool {
    fn to_param(&self) -> Param<'_> {
        Param::Int(i64::from(*self))
    }
}

/// Integers bound as 64-bit; those that may not fit saturate (no value the
/// store writes comes near).
macro_rules! int_param {
    ($($t:ty),+) => {$(
        impl ToParam for $t {
            fn to_param(&self) -> Param<'_> {
                Param::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )+};
}
int_param!(i64, u8, i32, u32, u64, usize);

impl<T: ToParam + ?Sized> ToParam for &T {
    fn to_param(&self) -> Param<'_> {
        (**self).to_param()
    }
}
impl<T: ToParam> ToParam for Option<T> {
    fn to_param(&self) -> Param<'_> {
        self.as_ref().map_or(Param::Null, ToParam::to_param)
    }
}

/// Parameters of a statement, in placeholder order: `params![a, b]`.
macro_rules! params {
    () => { &[] as &[$crate::store::db::Param<'_>] };
    ($($x:expr),+ $(,)?) => {
        &[$($crate::store::db::ToParam::to_param(&$x)),+] as &[$crate::store::db::Param<'_>]
    };
}
pub(crate) use params;

/// A column value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer or boolean.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// This value as a parameter, to write it elsewhere unchanged.
    pub fn as_param(&self) -> Param<'_> {
        match self {
            Value::Null => Param::Null,
            Value::Int(i) => Param::Int(*i),
            Value::Text(t) => Param::Text(t),
            Value::Blob(b) => Param::Blob(b),
        }
    }
}

/// One result row, read out of the driver.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    /// Every column, in order.
    pub fn values(&self) -> &[Value] {
        &self.0
    }

    /// Column `i` as `T`.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, DbError> {
        let v = self.0.get(i).ok_or(DbError::Type {
            column: i,
            expected: "a column",
        })?;
        T::from_value(v).ok_or(DbError::Type {
            column: i,
            expected: T::KIND,
        })
    }
}

/// What a column can be read as.
pub trait FromValue: Sized {
    /// Named in errors.
    const KIND: &'static str;
    /// The value, if it has this kind.
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const KIND: &'static str = "an integer";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for u8 {
    const KIND: &'static str = "an integer in 0..256";
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u8::try_from(i).ok())
    }
}
impl FromValue for u32 {
    const KIND: &'static str = "an integer in 0..2^32";
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}
impl FromValue for u64 {
    const KIND: &'static str = "a non-negative integer";
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u64::try_from(i).ok())
    }
}
impl FromValue for bool {
    const KIND: &'static str = "a boolean";
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for String {
    const KIND: &'static str = "text";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    const KIND: &'static str = "bytes";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            // SQLite keeps whatever type was written; text read as bytes is
            // still the same bytes.
            Value::Text(s) => Some(s.as_bytes().to_vec()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    const KIND: &'static str = T::KIND;
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Which database a [`Handle`] speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The PostgreSQL operations a [`Handle`] needs, over a client or a
/// transaction alike.
pub trait PgExec {
    /// Prepares `sql`.
    fn pg_prepare(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error>;
    /// Runs a prepared statement and returns its rows.
    fn pg_query(
        &mut self,
        st: &postgres::Statement,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error>;
    /// Runs a prepared statement and returns how many rows it changed.
    fn pg_execute(
        &mut self,
        st: &postgres::Statement,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, postgres::Error>;
    /// Runs statements without parameters.
    fn pg_batch(&mut self, sql: &str) -> Result<(), postgres::Error>;
}

macro_rules! pg_exec {
    ($t:ty) => {
        impl PgExec for $t {
            fn pg_prepare(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
                self.prepare(sql)
            }
            fn pg_query(
                &mut self,
                st: &postgres::Statement,
                params: &[&(dyn postgres::types::ToSql + Sync)],
            ) -> Result<Vec<postgres::Row>, postgres::Error> {
                self.query(st, params)
            }
            fn pg_execute(
                &mut self,
                st: &postgres::Statement,
                params: &[&(dyn postgres::types::ToSql + Sync)],
            ) -> Result<u64, postgres::Error> {
                self.execute(st, params)
            }
            fn pg_batch(&mut self, sql: &str) -> Result<(), postgres::Error> {
                self.batch_execute(sql)
            }
        }
    };
}
pg_exec!(postgres::Client);
pg_exec!(postgres::Transaction<'_>);

/// Statements prepared on one PostgreSQL connection, by their SQLite text.
pub type StatementCache = HashMap<String, postgres::Statement>;

/// The most statements kept prepared per connection: the store has fewer,
/// but a statement built from a table name must not grow the cache forever.
const STATEMENT_CACHE_LIMIT: usize = 256;

/// A connection (or a transaction on one) to run the store's statements on.
pub enum Handle<'a> {
    /// SQLite (a rusqlite transaction dereferences to its connection).
    Sqlite(&'a rusqlite::Connection),
    /// PostgreSQL, with the connection's prepared statements.
    Postgres(&'a mut dyn PgExec, &'a mut StatementCache),
}

impl Handle<'_> {
    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        match self {
            Handle::Sqlite(_) => Dialect::Sqlite,
            Handle::Postgres(..) => Dialect::Postgres,
        }
    }

    /// Runs `sql` and returns how many rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<usize, DbError> {
        match self {
            Handle::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                Ok(st.execute(rusqlite::params_from_iter(params.iter().map(SqliteParam)))?)
            }
            Handle::Postgres(c, cache) => {
                let st = pg_statement(&mut **c, cache, sql)?;
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                let n = c.pg_execute(&st, &refs)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs `sql` and returns every row.
    pub fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        match self {
            Handle::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows =
                    st.query(rusqlite::params_from_iter(params.iter().map(SqliteParam)))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut values = Vec::with_capacity(n);
                    for i in 0..n {
                        values.push(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Value::Null,
                            rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                            // The store writes no floating-point values.
                            rusqlite::types::ValueRef::Real(_) => {
                                return Err(DbError::Type {
                                    column: i,
                                    expected: "no floating-point value",
                                })
                            }
                            // Never altered on the way: a copy must be exact.
                            rusqlite::types::ValueRef::Text(t) => match std::str::from_utf8(t) {
                                Ok(t) => Value::Text(t.to_owned()),
                                Err(_) => {
                                    return Err(DbError::Type {
                                        column: i,
                                        expected: "text in UTF-8",
                                    })
                                }
                            },
                            rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        });
                    }
                    out.push(Row(values));
                }
                Ok(out)
            }
            Handle::Postgres(c, cache) => {
                let st = pg_statement(&mut **c, cache, sql)?;
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                c.pg_query(&st, &refs)?.iter().map(pg_row).collect()
            }
        }
    }

    /// Runs `sql` and returns its first row, if any.
    pub fn query_opt(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs `sql` and returns its first row; no row is an error.
    pub fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, DbError> {
        self.query_opt(sql, params)?.ok_or(DbError::NoRow)
    }

    /// Runs statements without parameters, separated by semicolons.
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Handle::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Handle::Postgres(c, _) => Ok(c.pg_batch(sql)?),
        }
    }
}

/// The prepared statement of `sql` on this connection.
fn pg_statement(
    c: &mut dyn PgExec,
    cache: &mut StatementCache,
    sql: &str,
) -> Result<postgres::Statement, DbError> {
    if let Some(st) = cache.get(sql) {
        return Ok(st.clone());
    }
    let st = c.pg_prepare(&postgres_placeholders(sql))?;
    if cache.len() >= STATEMENT_CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(sql.to_owned(), st.clone());
    Ok(st)
}

fn pg_row(r: &postgres::Row) -> Result<Row, DbError> {
    use postgres::types::Type;
    let mut values = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::TEXT
            || *ty == Type::VARCHAR
            || *ty == Type::NAME
            || *ty == Type::BPCHAR
        {
            r.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else {
            return Err(DbError::UnsupportedType {
                column: i,
                ty: ty.name().to_owned(),
            });
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

/// A [`Param`] bound by rusqlite.
struct SqliteParam<'p, 'a>(&'p Param<'a>);

impl rusqlite::ToSql for SqliteParam<'_, '_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self.0 {
            Param::Null => ValueRef::Null,
            Param::Int(i) => ValueRef::Integer(i),
            Param::Text(t) => ValueRef::Text(t.as_bytes()),
            Param::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl postgres::types::ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::Int(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (i != 0).to_sql(ty, out)
                } else {
                    Err(format!("an integer cannot be bound as {}", ty.name()).into())
                }
            }
            // Checked here: the driver's own check is skipped when a value
            // binds itself, and raw bytes would read as any type.
            Param::Text(t) if binds_as::<&str>(ty) => t.to_sql(ty, out),
            Param::Blob(b) if binds_as::<&[u8]>(ty) => b.to_sql(ty, out),
            Param::Text(_) => Err(format!("text cannot be bound as {}", ty.name()).into()),
            Param::Blob(_) => Err(format!("bytes cannot be bound as {}", ty.name()).into()),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// Whether a `T` may be bound as `ty`, or as the type a domain `ty` is over
/// (the information schema's names are a domain over `name`).
fn binds_as<'a, T: postgres::types::ToSql + 'a>(ty: &postgres::types::Type) -> bool {
    match ty.kind() {
        postgres::types::Kind::Domain(inner) => binds_as::<T>(inner),
        _ => T::accepts(ty),
    }
}

/// `sql` with SQLite's `?N` placeholders spelled `$N`, as PostgreSQL wants
/// them; quoted literals and identifiers are left alone.
pub fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        match quote {
            Some(q) => {
                if ch == q {
                    quote = None;
                }
                out.push(ch);
            }
            None if ch == '\'' || ch == '"' => {
                quote = Some(ch);
                out.push(ch);
            }
            None if ch == '?' && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            None => out.push(ch),
        }
    }
    out
}

/// Schema text written for SQLite, spelled for PostgreSQL: bytes are
/// `BYTEA`, integers 64-bit, and an autoincrementing key an identity column.
pub fn postgres_ddl(sql: &str) -> String {
    sql.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .replace("INTEGER", "BIGINT")
    .replace("BLOB", "BYTEA")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12"
        );
        assert_eq!(
            postgres_placeholders("SELECT \"?1\", ?"),
            "SELECT \"?1\", ?"
        );
    }

    #[test]
    fn ddl_is_spelled_for_postgres() {
        assert_eq!(
            postgres_ddl("id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL, b BLOB"),
            "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL, b BYTEA"
        );
    }

    #[test]
    fn values_convert_only_to_their_kind() {
        let row = Row(vec![
            Value::Int(7),
            Value::Null,
            Value::Text("x".into()),
            Value::Int(-1),
        ]);
        assert_eq!(row.get::<u32>(0).ok(), Some(7));
        assert_eq!(row.get::<Option<String>>(1).ok(), Some(None));
        assert!(row.get::<String>(1).is_err());
        assert!(row.get::<i64>(2).is_err());
        assert!(row.get::<u32>(3).is_err());
        assert!(row.get::<i64>(4).is_err());
        assert_eq!(row.get::<Vec<u8>>(2).ok(), Some(b"x".to_vec()));
    }
}
