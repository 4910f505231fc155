//! Table fingerprints: per table its row count and, in `full` mode, an order-independent
//! hash of its rows (the sum of the first 64 bits of each row's MD5, as numeric so it
//! cannot overflow). Taken inside the backup's own snapshot, so they describe exactly what
//! the dump holds, and recomputed after a test restore to prove the data came back.

use crate::repo::manifest::{FingerprintMode, TableFingerprint};
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;

/// Ordinary tables (leaf partitions included, their parents not, as those hold no rows of
/// their own) outside the system schemas and not owned by extensions.
const TABLES: &str = "
select format('%I.%I', n.nspname, c.relname)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind = 'r'
  and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass
                  and d.objid = c.oid and d.deptype = 'e')
order by 1";

/// The tables fingerprints are taken of, each as (`schema.table` quoted as the
/// fingerprints name it, schema, table).
pub async fn table_names(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    let sql = TABLES.replace(
        "select format('%I.%I', n.nspname, c.relname)",
        "select format('%I.%I', n.nspname, c.relname), n.nspname::text, c.relname::text",
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// Fingerprints (row counts) from the rows counted in the dump's own stream: every table
/// the catalogue lists in the snapshot must have its data in the archive, or the dump is
/// not what it should be.
pub fn from_stream(
    tables: &[(String, String, String)],
    counts: &crate::pg::custom_archive::RowCounts,
) -> Result<BTreeMap<String, TableFingerprint>, String> {
    let mut out = BTreeMap::new();
    for (key, schema, table) in tables {
        let rows = counts
            .get(&(schema.clone(), table.clone()))
            .ok_or_else(|| format!("pg_dump's archive holds no data for table {key}"))?;
        out.insert(
            key.clone(),
            TableFingerprint {
                rows: *rows,
                hash: None,
            },
        );
    }
    Ok(out)
}

pub async fn tables(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(TABLES).fetch_all(conn).await?;
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
}

pub async fn take(
    conn: &mut PgConnection,
    mode: FingerprintMode,
    only: Option<&[String]>,
) -> Result<BTreeMap<String, TableFingerprint>, sqlx::Error> {
    let mut out = BTreeMap::new();
    if mode == FingerprintMode::None {
        return Ok(out);
    }
    // A set: `only` can be as long as a mark says, and a mark is read from the repository.
    let only: Option<std::collections::BTreeSet<&String>> = only.map(|o| o.iter().collect());
    for table in tables(conn).await? {
        if only.as_ref().is_some_and(|o| !o.contains(&table)) {
            continue;
        }
        // `table` comes from format('%I.%I'): quoted where needed, safe to interpolate.
        let sql = match mode {
            FingerprintMode::Full => format!(
                "select count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 16))::bit(64)::bigint::numeric), 0)::text from {table} t"
            ),
            _ => format!("select count(*), null::text from {table}"),
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        out.insert(
            table,
            TableFingerprint {
                rows: row.try_get(0)?,
                hash: row.try_get(1)?,
            },
        );
    }
    Ok(out)
}

/// Row counts taken while a restore still runs: each table once its data is loaded, in
/// up to `sessions` sessions of their own, so that counting overlaps the index builds
/// still going on instead of following them. [`count_rows`] counts what is left.
/// Dropped unfinished (the restore failed), it stops counting at once.
pub struct EarlyCounts {
    queue: Option<tokio::sync::mpsc::UnboundedSender<(String, String)>>,
    task: Option<Counting>,
}

type Counting = tokio::task::JoinHandle<Result<BTreeMap<String, TableFingerprint>, sqlx::Error>>;

impl Drop for EarlyCounts {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl EarlyCounts {
    pub fn start(info: super::conn::ConnInfo, sessions: u32) -> EarlyCounts {
        let (queue, tables) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let tables = tokio::sync::Mutex::new(tables);
        let task = tokio::spawn(async move {
            let counted = futures_util::future::try_join_all(
                (0..sessions.max(1)).map(|_| count_queued(&info, &tables)),
            )
            .await?;
            Ok(counted.into_iter().flatten().collect())
        });
        EarlyCounts {
            queue: Some(queue),
            task: Some(task),
        }
    }

    /// Counts the rows of `schema.table`, whose data is loaded (and stays as it is).
    pub fn count(&self, schema: &str, table: &str) {
        if let Some(queue) = &self.queue {
            let _ = queue.send((schema.to_string(), table.to_string()));
        }
    }

    /// The counts taken, once those asked for are done.
    pub async fn finish(mut self) -> Result<BTreeMap<String, TableFingerprint>, sqlx::Error> {
        self.queue = None;
        let Some(task) = self.task.take() else {
            return Ok(BTreeMap::new());
        };
        task.await
            .map_err(|e| sqlx::Error::Protocol(format!("counting rows failed: {e}")))?
    }
}

/// One session of [`EarlyCounts`]: counts the tables it takes from the queue until the
/// queue is closed, connecting when the first one comes.
async fn count_queued(
    info: &super::conn::ConnInfo,
    tables: &tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(String, String)>>,
) -> Result<BTreeMap<String, TableFingerprint>, sqlx::Error> {
    use sqlx::Connection;
    let mut out = BTreeMap::new();
    let mut conn = None;
    loop {
        let next = tables.lock().await.recv().await;
        let Some((schema, table)) = next else { break };
        let conn = match &mut conn {
            Some(conn) => conn,
            None => conn.insert(info.connect().await?),
        };
        // The name as the catalogue's list spells it (format('%I.%I')), which is then
        // safe to interpolate.
        let key: String = sqlx::query_scalar("select format('%I.%I', $1::text, $2::text)")
            .bind(&schema)
            .bind(&table)
            .fetch_one(&mut *conn)
            .await?;
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {key}")))
                .fetch_one(&mut *conn)
                .await?;
        out.insert(key, TableFingerprint { rows, hash: None });
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
    Ok(out)
}

/// The row count of every table, counted over `connections` sessions at once (at least
/// one), the largest tables first so that the sessions finish together: what a restore
/// checks afterwards, as fast as its `jobs` allow. Tables in `known` (counted while the
/// restore ran, [`EarlyCounts`]) are taken from there.
pub async fn count_rows(
    info: &super::conn::ConnInfo,
    connections: u32,
    known: BTreeMap<String, TableFingerprint>,
) -> Result<BTreeMap<String, TableFingerprint>, sqlx::Error> {
    use sqlx::Connection;
    let mut first = info.connect().await?;
    let sql = TABLES.replace(
        "select format('%I.%I', n.nspname, c.relname)",
        "select format('%I.%I', n.nspname, c.relname), c.relpages::bigint",
    );
    let mut listed: Vec<(String, i64)> = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut first)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    // Every table the catalogue lists is in the result, and nothing else: a table counted
    // early that is gone is not reported as present.
    let mut known = known;
    let mut out = BTreeMap::new();
    listed.retain(|(table, _)| match known.remove(table) {
        Some(counted) => {
            out.insert(table.clone(), counted);
            false
        }
        None => true,
    });
    // Popped from the end: the largest last in the vector.
    listed.sort_by_key(|(_, pages)| *pages);
    let queue = std::sync::Mutex::new(listed);
    let wanted =
        (connections.max(1) as usize).min(queue.lock().expect("not poisoned").len().max(1));
    let mut sessions = vec![first];
    for _ in 1..wanted {
        sessions.push(info.connect().await?);
    }
    let counted = futures_util::future::try_join_all(sessions.into_iter().map(|mut conn| {
        let queue = &queue;
        async move {
            let mut out = Vec::new();
            loop {
                let next = queue.lock().expect("not poisoned").pop();
                let Some((table, _)) = next else { break };
                // `table` comes from format('%I.%I'): quoted, safe to interpolate.
                let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "select count(*) from {table}"
                )))
                .fetch_one(&mut conn)
                .await?;
                out.push((table, rows));
            }
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(out)
        }
    }))
    .await?;
    out.extend(
        counted
            .into_iter()
            .flatten()
            .map(|(table, rows)| (table, TableFingerprint { rows, hash: None })),
    );
    Ok(out)
}

/// Differences between two fingerprint sets, one line each.
pub fn compare(
    expected: &BTreeMap<String, TableFingerprint>,
    actual: &BTreeMap<String, TableFingerprint>,
) -> Vec<String> {
    compare_with(expected, actual, "in the backup")
}

/// [`compare`], saying where the expected fingerprints were taken (`in the backup`, `at
/// the mark`).
pub fn compare_with(
    expected: &BTreeMap<String, TableFingerprint>,
    actual: &BTreeMap<String, TableFingerprint>,
    taken: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, want) in expected {
        match actual.get(table) {
            None => problems.push(format!("{table}: missing after restore")),
            Some(got) if got.rows != want.rows => problems.push(format!(
                "{table}: {} rows after restore, {} {taken}",
                got.rows, want.rows
            )),
            Some(got) if want.hash.is_some() && got.hash != want.hash => {
                problems.push(format!("{table}: same row count, different content"))
            }
            _ => {}
        }
    }
    for table in actual.keys() {
        if !expected.contains_key(table) {
            problems.push(format!("{table}: present after restore but not {taken}"));
        }
    }
    problems
}
