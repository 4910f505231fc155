//! One table back: some tables of a custom-format archive restored into a database beside
//! the live ones, in a schema of their own, never over a live table unless asked.
//!
//! pg_restore cannot restore into another schema, and a live schema is never touched, so
//! the tables go through a scratch database on the same server: the archive's entries for
//! the tables and what hangs on them (data, sequences, defaults, indexes, constraints,
//! triggers, grants, comments — found by the archive's own dependencies, not by names)
//! are restored there, their schema renamed, and that schema moved into the database with
//! pg_dump and pg_restore. With `overwrite` on a table, its rows then replace the live
//! table's in one transaction (the live definition — indexes, grants, foreign keys —
//! stays), and the restored copy is dropped.

use super::conn::ConnInfo;
use super::custom_archive::{Toc, TocEntry, toc_of_any};
use super::database::quote_ident;
use super::process::PgProcess;
use super::server::classify;
use super::tools::Want;
use crate::exec::{StepContext, StepError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A table asked for: its schema and name, and whether its rows replace the live table's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub schema: String,
    pub name: String,
    pub overwrite: bool,
}

/// `orders` (in `public`), `sales.orders`, `"Odd Schema"."Odd Table"`: a table's schema and
/// name as the plan writes it.
pub fn parse_name(text: &str) -> Result<(String, String), String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    let mut part = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if part.is_empty() => {
                quoted = true;
                was_quoted = true;
            }
            ('.', false) => {
                parts.push((std::mem::take(&mut part), was_quoted));
                was_quoted = false;
            }
            (c, _) => part.push(c),
        }
    }
    if quoted {
        return Err(format!("`{text}`: a quote is not closed"));
    }
    parts.push((part, was_quoted));
    // Unquoted names are folded to lower case, as PostgreSQL does.
    let mut names = parts
        .into_iter()
        .map(|(p, q)| if q { p } else { p.to_lowercase() });
    match (names.next(), names.next(), names.next()) {
        (Some(t), None, None) if !t.is_empty() => Ok(("public".into(), t)),
        (Some(s), Some(t), None) if !s.is_empty() && !t.is_empty() => Ok((s, t)),
        _ => Err(format!(
            "`{text}` is not a table's name: write `table` or `schema.table` (quote a name with capitals, dots or spaces: '\"Orders\"')"
        )),
    }
}

/// What hangs on a table and goes with it. A foreign key goes only when the table it
/// references is restored too.
const WITH_TABLE: &[&str] = &[
    "TABLE DATA",
    "SEQUENCE",
    "SEQUENCE OWNED BY",
    "SEQUENCE SET",
    "DEFAULT",
    "INDEX",
    "INDEX ATTACH",
    "CONSTRAINT",
    "FK CONSTRAINT",
    "TRIGGER",
    "RULE",
    "POLICY",
    "ROW SECURITY",
    "ACL",
    "COMMENT",
    "STATISTICS",
];

/// What a table's entries need to exist before them (in a scratch database that starts
/// empty): types, domains, functions, collations and schemas they depend on.
const NEEDED_BY_TABLE: &[&str] = &[
    "SCHEMA",
    "TYPE",
    "DOMAIN",
    "FUNCTION",
    "PROCEDURE",
    "COLLATION",
    "SEQUENCE",
    "EXTENSION",
];

/// The archive entries to restore for the tables asked for.
#[derive(Debug, Default)]
pub struct Selection {
    pub ids: BTreeSet<i64>,
    /// The same, in archive order: the order pg_restore restores a list in.
    pub order: Vec<i64>,
    /// The tables, as (schema, name), in archive order.
    pub tables: Vec<(String, String)>,
    /// Foreign keys left out, and why.
    pub left_out: Vec<String>,
}

/// Chooses the entries of `toc` for `tables` and every table of `schemas`. A table or
/// schema the archive does not hold is an error naming what it does hold.
pub fn select(toc: &Toc, tables: &[Wanted], schemas: &[String]) -> Result<Selection, String> {
    let all_tables: Vec<&TocEntry> = toc.0.iter().filter(|e| e.desc == "TABLE").collect();
    let mut chosen: BTreeSet<i64> = BTreeSet::new();
    for w in tables {
        match all_tables
            .iter()
            .find(|e| e.namespace == w.schema && e.tag == w.name)
        {
            Some(e) => {
                chosen.insert(e.id);
            }
            None => {
                let names: Vec<String> = all_tables
                    .iter()
                    .map(|e| format!("{}.{}", e.namespace, e.tag))
                    .collect();
                let wanted = format!("{}.{}", w.schema, w.name);
                let hint = crate::diag::did_you_mean(&wanted, names.iter().map(String::as_str))
                    .unwrap_or_else(|| {
                        if names.is_empty() {
                            format!(
                                "it holds no table at all (of database `{}`?)",
                                toc_database(toc)
                            )
                        } else {
                            format!("it holds {}", names.join(", "))
                        }
                    });
                return Err(format!("table {wanted} is not in the backup; {hint}"));
            }
        }
    }
    for s in schemas {
        let of_schema: Vec<i64> = all_tables
            .iter()
            .filter(|e| &e.namespace == s)
            .map(|e| e.id)
            .collect();
        if of_schema.is_empty() {
            let names: BTreeSet<&str> = all_tables.iter().map(|e| e.namespace.as_str()).collect();
            return Err(if names.is_empty() {
                format!(
                    "schema {s} holds no table in the backup: the backup holds no table at all (of database `{}`?)",
                    toc_database(toc)
                )
            } else {
                format!(
                    "schema {s} holds no table in the backup; its tables are in {}",
                    names.into_iter().collect::<Vec<_>>().join(", ")
                )
            });
        }
        chosen.extend(of_schema);
    }
    let by_id: BTreeMap<i64, &TocEntry> = toc.0.iter().map(|e| (e.id, e)).collect();
    let mut ids = chosen.clone();
    let mut left_out = Vec::new();
    // What hangs on the tables (and on what hangs on them: a sequence's value, an
    // index's attachment), and what those need to exist, until nothing more is found. An
    // entry that names a table not restored (a foreign key to it, the default of its
    // column that uses a shared sequence) stays out.
    loop {
        let before = ids.len();
        for e in &toc.0 {
            if ids.contains(&e.id) || !WITH_TABLE.contains(&e.desc.as_str()) {
                continue;
            }
            if !e.deps.iter().any(|d| ids.contains(d)) {
                continue;
            }
            let other_table = e
                .deps
                .iter()
                .filter_map(|d| by_id.get(d))
                .find(|d| d.desc == "TABLE" && !chosen.contains(&d.id));
            if let Some(other) = other_table {
                if e.desc == "FK CONSTRAINT" {
                    // The tag is the table's name and the constraint's.
                    let name = e.tag.split_once(' ').map_or(e.tag.as_str(), |(_, c)| c);
                    let note = format!(
                        "foreign key {name} not restored: it references {}.{}, which is not restored (restore both tables together to keep it)",
                        other.namespace, other.tag
                    );
                    if !left_out.contains(&note) {
                        left_out.push(note);
                    }
                }
                continue;
            }
            ids.insert(e.id);
        }
        let mut stack: Vec<i64> = ids.iter().copied().collect();
        while let Some(id) = stack.pop() {
            let Some(e) = by_id.get(&id) else { continue };
            for d in &e.deps {
                if let Some(dep) = by_id.get(d)
                    && NEEDED_BY_TABLE.contains(&dep.desc.as_str())
                    && !(dep.desc == "SCHEMA" && dep.tag == "public")
                    && ids.insert(dep.id)
                {
                    stack.push(dep.id);
                }
            }
        }
        if ids.len() == before {
            break;
        }
    }
    // Schemas of the tables that the archive creates (not `public`, which every new
    // database has).
    for e in &toc.0 {
        if e.desc == "SCHEMA"
            && e.tag != "public"
            && all_tables
                .iter()
                .any(|t| chosen.contains(&t.id) && t.namespace == e.tag)
        {
            ids.insert(e.id);
        }
    }
    let tables = all_tables
        .iter()
        .filter(|e| chosen.contains(&e.id))
        .map(|e| (e.namespace.clone(), e.tag.clone()))
        .collect();
    let order = toc
        .0
        .iter()
        .map(|e| e.id)
        .filter(|id| ids.contains(id))
        .collect();
    Ok(Selection {
        ids,
        order,
        tables,
        left_out,
    })
}

/// The database an archive is a dump of, from its `DATABASE` entry.
fn toc_database(toc: &Toc) -> &str {
    toc.0
        .iter()
        .find(|e| e.desc == "DATABASE")
        .map_or("?", |e| e.tag.as_str())
}

/// The table of contents of the custom archive at `path` (read from its head), or of the
/// directory archive there (its `toc.dat`).
pub fn toc_of_file(path: &Path) -> Result<Toc, String> {
    use std::io::Read;
    let path = if path.is_dir() {
        path.join("toc.dat")
    } else {
        path.to_path_buf()
    };
    let path = path.as_path();
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut head = Vec::new();
    let mut want = 1 << 20;
    loop {
        let mut chunk = Vec::new();
        let n = (&mut file)
            .take((want - head.len()) as u64)
            .read_to_end(&mut chunk)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        head.extend(chunk);
        match toc_of_any(&head) {
            Ok(toc) => return Ok(toc),
            Err(e) if n == 0 || head.len() < want => return Err(e),
            Err(_) => want *= 2,
        }
    }
}

/// Where a restore of tables goes.
pub struct Request<'a> {
    /// The database, on the target's server, that gets the tables.
    pub into: &'a ConnInfo,
    pub database: &'a str,
    pub tables: &'a [Wanted],
    pub schemas: &'a [String],
    /// The schema the tables land in (with several schemas: `AS_SCHEMA`).
    pub as_schema: &'a str,
    pub no_owner: bool,
    /// The major of the pg_dump that wrote the archive, and of the server.
    pub archive_major: u32,
    pub server_major: u32,
}

/// What a restore of tables did.
#[derive(Debug, Default)]
pub struct Restored {
    /// (where it is now, rows), `schema.table` (quoted where a name must be).
    pub tables: Vec<(String, i64)>,
    /// The schemas made beside the live ones.
    pub schemas: Vec<String>,
    pub left_out: Vec<String>,
}

/// Restores the tables `request` asks for from the archive `archive`: a custom archive's
/// file, or a directory archive's directory.
pub async fn restore(
    ctx: &StepContext,
    archive: &Path,
    request: &Request<'_>,
) -> Result<Restored, StepError> {
    let toc = toc_of_file(archive).map_err(StepError::permanent)?;
    let selection = select(&toc, request.tables, request.schemas).map_err(StepError::permanent)?;
    let namespaces: BTreeSet<&str> = selection.tables.iter().map(|(s, _)| s.as_str()).collect();
    let renamed: BTreeMap<String, String> = namespaces
        .iter()
        .map(|ns| {
            let new = if namespaces.len() == 1 {
                request.as_schema.to_string()
            } else {
                format!("{}_{ns}", request.as_schema)
            };
            (ns.to_string(), new)
        })
        .collect();
    let mut into = request
        .into
        .connect_to(&format!("database `{}`", request.database))
        .await?;
    for new in renamed.values() {
        let taken: bool =
            sqlx::query_scalar("select exists (select 1 from pg_namespace where nspname = $1)")
                .bind(new)
                .fetch_one(&mut into)
                .await
                .map_err(|e| classify(&e, "looking for the schema to restore into"))?;
        if taken {
            return Err(StepError::permanent(format!(
                "schema `{new}` already exists in database `{}`: tables are restored beside the live ones in a new schema; give another `as:`",
                request.database
            )));
        }
    }
    let scratch = format!("{SCRATCH_PREFIX}{:08x}", fastrand::u32(..));
    let mut admin = request
        .into
        .with_database("postgres")
        .connect_to("the server, to make a scratch database")
        .await?;
    for name in SCRATCH.remove_left(&mut admin).await? {
        ctx.events.output(
            &ctx.step_id,
            crate::exec::events::Stream::Stdout,
            format!("removed scratch database `{name}`, left by an interrupted restore"),
        );
    }
    // Held while the scratch database exists: a later restore removes only those no
    // running restore holds (what a killed run left).
    SCRATCH.try_lock(&mut admin, &scratch).await?;
    super::database::create(&mut admin, &scratch, None).await?;
    let result = match SCRATCH.mark(&mut admin, &scratch, &ctx.run_id).await {
        Ok(()) => through_scratch(ctx, archive, request, &selection, &renamed, &scratch).await,
        Err(e) => Err(e),
    };
    if let Err(e) = super::database::drop(&mut admin, &scratch).await {
        tracing::warn!("could not drop scratch database {scratch}: {}", e.message);
    }
    SCRATCH.unlock(&mut admin, &scratch).await;
    result?;
    // Rows of overwritten tables replace the live ones; the restored copies go.
    let mut restored = Restored {
        left_out: selection.left_out.clone(),
        ..Restored::default()
    };
    for (schema, name) in &selection.tables {
        let copy = format!("{}.{}", quote_ident(&renamed[schema]), quote_ident(name));
        let live = format!("{}.{}", quote_ident(schema), quote_ident(name));
        let overwrite = request
            .tables
            .iter()
            .any(|w| w.overwrite && &w.schema == schema && &w.name == name);
        let at = if overwrite {
            replace_rows(&mut into, &copy, &live, schema, name).await?;
            live
        } else {
            copy
        };
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {at}")))
                .fetch_one(&mut into)
                .await
                .map_err(|e| classify(&e, &format!("counting the rows of {at}")))?;
        let schema_now = if overwrite { schema } else { &renamed[schema] };
        restored
            .tables
            .push((format!("{}.{}", shown(schema_now), shown(name)), rows));
    }
    for new in renamed.values() {
        let left: i64 = sqlx::query_scalar(
            "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = $1 and c.relkind in ('r', 'p', 'v', 'm', 'f')",
        )
        .bind(new)
        .fetch_one(&mut into)
        .await
        .map_err(|e| classify(&e, "looking at the restored schema"))?;
        if left == 0 {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "drop schema {} cascade",
                quote_ident(new)
            )))
            .execute(&mut into)
            .await
            .map_err(|e| classify(&e, "dropping the emptied restored schema"))?;
        } else {
            restored.schemas.push(new.clone());
        }
    }
    Ok(restored)
}

/// What a scratch database's name starts with.
const SCRATCH_PREFIX: &str = "opsrunner_tables_";
/// A table restore's scratch database (see [`super::database::Scratch`]).
const SCRATCH: super::database::Scratch = super::database::Scratch {
    mark: "opsrunner restore scratch database",
    purpose: "tables",
    ended_by: "the restore",
};

/// The archive's entries into the scratch database, its schemas renamed there, then
/// moved into the database.
async fn through_scratch(
    ctx: &StepContext,
    archive: &Path,
    request: &Request<'_>,
    selection: &Selection,
    renamed: &BTreeMap<String, String>,
    scratch: &str,
) -> Result<(), StepError> {
    let spool = tempfile::Builder::new()
        .prefix("opsrunner-tables-")
        .tempdir()
        .map_err(|e| StepError::permanent(format!("cannot make a temporary directory: {e}")))?;
    let list = spool.path().join("entries.list");
    let text: String = selection
        .order
        .iter()
        .map(|id| format!("{id}; selected\n"))
        .collect();
    std::fs::write(&list, text)
        .map_err(|e| StepError::permanent(format!("{}: {e}", list.display())))?;
    let scratch_info = request.into.with_database(scratch);
    let pg_restore = super::server::tool(
        ctx,
        "pg_restore",
        Want::Reader {
            archive: request.archive_major,
            into: request.server_major,
        },
    )?;
    let owner_flags = |args: &mut Vec<String>| {
        if request.no_owner {
            args.push("--no-owner".into());
            args.push("--no-privileges".into());
        }
    };
    let mut args = vec![
        "--exit-on-error".to_string(),
        format!("--dbname={}", scratch_info.public_url()),
        format!("--use-list={}", list.display()),
    ];
    owner_flags(&mut args);
    args.push(archive.display().to_string());
    PgProcess::spawn(
        &pg_restore.path,
        &args,
        ctx,
        |c| scratch_info.apply_to(c),
        false,
        false,
    )?
    .finish(ctx)
    .await?;
    let mut conn = scratch_info.connect_to("the scratch database").await?;
    for (old, new) in renamed {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter schema {} rename to {}",
            quote_ident(old),
            quote_ident(new)
        )))
        .execute(&mut conn)
        .await
        .map_err(|e| {
            classify(
                &e,
                &format!("renaming schema {old} in the scratch database"),
            )
        })?;
    }
    let _ = sqlx::Connection::close(conn).await;
    let moved = spool.path().join("tables.pgdump");
    let pg_dump = super::server::tool(ctx, "pg_dump", Want::Client(request.server_major))?;
    let mut args = vec![
        "--format=custom".to_string(),
        "--no-sync".into(),
        format!("--file={}", moved.display()),
        format!("--dbname={}", scratch_info.public_url()),
    ];
    for new in renamed.values() {
        args.push(format!("--schema={}", quote_ident(new)));
    }
    PgProcess::spawn(
        &pg_dump.path,
        &args,
        ctx,
        |c| scratch_info.apply_to(c),
        false,
        false,
    )?
    .finish(ctx)
    .await?;
    let mut args = vec![
        "--exit-on-error".to_string(),
        "--single-transaction".into(),
        format!("--dbname={}", request.into.public_url()),
    ];
    owner_flags(&mut args);
    args.push(moved.display().to_string());
    let pg_restore = super::server::tool(
        ctx,
        "pg_restore",
        Want::Reader {
            archive: request.server_major,
            into: request.server_major,
        },
    )?;
    PgProcess::spawn(
        &pg_restore.path,
        &args,
        ctx,
        |c| request.into.apply_to(c),
        false,
        false,
    )?
    .finish(ctx)
    .await
}

/// A name as a person would type it: quoted only when it must be.
fn shown(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// The rows of the restored `copy` replace those of the `live` table, in one transaction;
/// the copy is dropped. Columns both have, by name; identity values as they were.
async fn replace_rows(
    into: &mut sqlx::PgConnection,
    copy: &str,
    live: &str,
    schema: &str,
    name: &str,
) -> Result<(), StepError> {
    // Each live column, its type and whether the restored copy's is the same type: a
    // type that lives in the table's schema (an enum) was moved with the copy, and its
    // values go back through their text.
    let columns: Vec<(String, String, bool)> = sqlx::query_as(
        "select a.attname::text, format_type(a.atttypid, a.atttypmod),
                coalesce(c.atttypid = a.atttypid, false)
         from pg_attribute a
         join pg_attribute c on c.attrelid = to_regclass($2) and c.attname = a.attname
                            and c.attnum > 0 and not c.attisdropped
         where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped
           and a.attgenerated = ''
         order by a.attnum",
    )
    .bind(live)
    .bind(copy)
    .fetch_all(&mut *into)
    .await
    .map_err(|e| classify(&e, &format!("reading the columns of {live}")))?;
    if columns.is_empty() {
        return Err(StepError::permanent(format!(
            "table {schema}.{name} does not exist in the database (or shares no column with the backup's): nothing to overwrite; restore it beside instead"
        )));
    }
    let list = columns
        .iter()
        .map(|(c, _, _)| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let values = columns
        .iter()
        .map(|(c, ty, same)| {
            if *same {
                quote_ident(c)
            } else {
                format!("{}::text::{ty}", quote_ident(c))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "begin;
         lock table {live} in access exclusive mode;
         truncate {live};
         insert into {live} ({list}) overriding system value select {values} from {copy};
         drop table {copy} cascade;
         commit;"
    );
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *into)
        .await
    {
        let _ = sqlx::raw_sql("rollback").execute(&mut *into).await;
        return Err(StepError::permanent(format!(
            "the rows of {live} were not replaced (it is as it was; the restored copy is {copy}): {}",
            super::conn::error_text(&e)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_parse_as_postgresql_reads_them() {
        assert_eq!(
            parse_name("orders").unwrap(),
            ("public".into(), "orders".into())
        );
        assert_eq!(
            parse_name("Sales.Orders").unwrap(),
            ("sales".into(), "orders".into())
        );
        assert_eq!(
            parse_name("\"Odd.Schema\".\"My \"\"T\"\"\"").unwrap(),
            ("Odd.Schema".into(), "My \"T\"".into())
        );
        assert!(parse_name("a.b.c").is_err());
        assert!(parse_name("\"open").is_err());
        assert!(parse_name("").is_err());
    }

    fn entry(id: i64, desc: &str, namespace: &str, tag: &str, deps: &[i64]) -> TocEntry {
        TocEntry {
            id,
            desc: desc.into(),
            namespace: namespace.into(),
            tag: tag.into(),
            section: 0,
            deps: deps.to_vec(),
        }
    }

    #[test]
    fn a_table_brings_what_hangs_on_it_and_a_foreign_key_only_with_its_other_table() {
        let toc = Toc(vec![
            entry(1, "TYPE", "public", "mood", &[]),
            entry(2, "TABLE", "public", "orders", &[1]),
            entry(3, "TABLE", "public", "customers", &[]),
            entry(4, "SEQUENCE", "public", "orders_id_seq", &[]),
            entry(5, "SEQUENCE OWNED BY", "public", "orders_id_seq", &[4, 2]),
            entry(6, "DEFAULT", "public", "orders id", &[2, 4]),
            entry(7, "TABLE DATA", "public", "orders", &[2]),
            entry(8, "SEQUENCE SET", "public", "orders_id_seq", &[4]),
            entry(9, "INDEX", "public", "orders_note_idx", &[2]),
            entry(
                10,
                "FK CONSTRAINT",
                "public",
                "orders orders_customer_fkey",
                &[2, 3],
            ),
            entry(11, "ACL", "public", "TABLE orders", &[2]),
            entry(12, "TABLE DATA", "public", "customers", &[3]),
        ]);
        let wanted = |name: &str| Wanted {
            schema: "public".into(),
            name: name.into(),
            overwrite: false,
        };
        let s = select(&toc, &[wanted("orders")], &[]).unwrap();
        assert_eq!(
            s.ids.iter().copied().collect::<Vec<_>>(),
            vec![1, 2, 4, 5, 6, 7, 8, 9, 11]
        );
        assert_eq!(s.left_out.len(), 1, "{:?}", s.left_out);
        let both = select(&toc, &[wanted("orders"), wanted("customers")], &[]).unwrap();
        assert!(both.ids.contains(&10) && both.ids.contains(&12));
        let e = select(&toc, &[wanted("order")], &[]).unwrap_err();
        assert!(
            e.contains("did you mean") && e.contains("public.orders"),
            "{e}"
        );
    }
}
