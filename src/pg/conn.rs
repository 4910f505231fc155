//! Connection details of a target, kept apart from its password: the password goes to
//! sqlx in memory and to child processes through the environment (`PGPASSWORD`), never
//! into an argument list, a log line or a report.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use std::str::FromStr;
use url::Url;

/// Why a target's connection URL cannot be used. None of these messages repeats the URL,
/// which may carry a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("not a connection URL ({0})")]
    NotAUrl(#[from] url::ParseError),
    #[error("`{0}://` is not a PostgreSQL URL; use postgres://user@host:port/database")]
    NotPostgres(String),
    #[error("invalid connection URL: {0}")]
    Invalid(String),
}

/// A URL that cannot be used will not become usable on a retry.
impl From<ConnError> for crate::exec::StepError {
    fn from(e: ConnError) -> Self {
        crate::exec::StepError::permanent(e.to_string())
    }
}

#[derive(Clone)]
pub struct ConnInfo {
    /// The URL without its password; empty `postgresql://` means "all from PG* variables".
    url: Url,
    password: Option<String>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnInfo({})", self.url)
    }
}

impl ConnInfo {
    /// Parses a libpq URL (`postgres://` or `postgresql://`). An empty string means every
    /// setting comes from the environment (`PGHOST`, `PGUSER`, `PGPASSFILE`, …).
    pub fn parse(text: &str) -> Result<ConnInfo, ConnError> {
        let text = if text.trim().is_empty() {
            "postgresql://"
        } else {
            text.trim()
        };
        let mut url = Url::parse(text)?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConnError::NotPostgres(url.scheme().to_string()));
        }
        let password = url.password().map(percent_encoding_decode);
        let _ = url.set_password(None);
        Ok(ConnInfo { url, password })
    }

    /// The URL without password, safe to show and to pass on a command line.
    pub fn public_url(&self) -> String {
        self.url.to_string()
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The database named in the URL, if any.
    pub fn database(&self) -> Option<String> {
        let db = self.url.path().trim_start_matches('/');
        (!db.is_empty()).then(|| percent_encoding_decode(db))
    }

    /// The same server, another database.
    pub fn with_database(&self, database: &str) -> ConnInfo {
        let mut url = self.url.clone();
        url.set_path(&format!("/{}", utf8_path_encode(database)));
        ConnInfo {
            url,
            password: self.password.clone(),
        }
    }

    /// sqlx options: the environment's defaults (PG* variables, the passfile) under the URL.
    pub fn options(&self) -> Result<PgConnectOptions, ConnError> {
        let mut options = PgConnectOptions::from_str(self.url.as_str())
            .map_err(|e| ConnError::Invalid(e.to_string()))?;
        if let Some(p) = &self.password {
            options = options.password(p);
        }
        // No statement text in logs, not even at debug level: a statement can carry a
        // literal password (`alter role … password '…'`).
        Ok(options
            .application_name("opsrunner")
            .log_statements(tracing::log::LevelFilter::Off)
            .log_slow_statements(tracing::log::LevelFilter::Off, std::time::Duration::MAX))
    }

    pub async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        let options = self
            .options()
            .map_err(|e| sqlx::Error::Configuration(e.into()))?;
        options.connect().await
    }

    /// Where this connects, for messages: `host:port, database D, user U` as libpq would
    /// choose them (the URL, then the PG* variables, then the defaults). Never the password.
    pub fn place(&self) -> String {
        let query = |key: &str| {
            self.url
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let host = self
            .url
            .host_str()
            .filter(|h| !h.is_empty())
            .map(percent_encoding_decode)
            .or_else(|| query("host"))
            .or_else(|| env("PGHOST"))
            .unwrap_or_else(|| "the local socket".into());
        let port = self
            .url
            .port()
            .map(|p| p.to_string())
            .or_else(|| query("port"))
            .or_else(|| env("PGPORT"))
            .unwrap_or_else(|| "5432".into());
        let user = Some(self.url.username())
            .filter(|u| !u.is_empty())
            .map(percent_encoding_decode)
            .or_else(|| query("user"))
            .or_else(|| env("PGUSER"));
        let database = self
            .database()
            .or_else(|| query("dbname"))
            .or_else(|| env("PGDATABASE"))
            .or_else(|| user.clone());
        let at = if host.starts_with('/') || host == "the local socket" {
            format!("{host} (port {port})")
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut place = at;
        if let Some(db) = database {
            place.push_str(&format!(", database `{db}`"));
        }
        if let Some(user) = user {
            place.push_str(&format!(", user `{user}`"));
        }
        place
    }

    /// Connects, or says why not and where: `{what}` at [`ConnInfo::place`], the server's
    /// own message (transient or permanent as [`crate::pg::server::classify`] judges).
    pub async fn connect_to(&self, what: &str) -> Result<PgConnection, crate::exec::StepError> {
        self.connect()
            .await
            .map_err(|e| classify(&e, &format!("cannot connect to {what} at {}", self.place())))
    }

    /// Sets up a child process (pg_dump, psql, …) to connect here: the URL without password
    /// as `--dbname`, the password in its environment.
    pub fn apply_to(&self, command: &mut tokio::process::Command) {
        if let Some(p) = &self.password {
            command.env("PGPASSWORD", p);
        }
        command.env("PGAPPNAME", "opsrunner");
    }
}

/// Adds session settings (`-c name=value …`) to those a child process's sessions start
/// with: after any the environment's `PGOPTIONS` already holds, so that the environment's
/// other settings stay and ours win where both name the same one.
pub fn add_session_settings(command: &mut tokio::process::Command, settings: &str) {
    let mut options = std::env::var_os("PGOPTIONS").unwrap_or_default();
    if !options.is_empty() {
        options.push(" ");
    }
    options.push(settings);
    command.env("PGOPTIONS", options);
}

/// Connection trouble, serialization failures, deadlocks and server shutdowns are worth
/// another try; everything else (syntax, permissions, constraint violations) is not.
pub fn classify(error: &sqlx::Error, context: &str) -> crate::exec::StepError {
    let message = format!("{context}: {}{}", error_text(error), hint(error));
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let transient = code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("53")
                || code.starts_with("57P");
            let message = format!(
                "{context}: {} (SQLSTATE {code}){}",
                db.message(),
                hint(error)
            );
            if transient {
                crate::exec::StepError::transient(message)
            } else {
                crate::exec::StepError::permanent(message)
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_) => crate::exec::StepError::transient(message),
        _ => crate::exec::StepError::permanent(message),
    }
}

/// What to do about the usual reasons a connection fails, for the end of its message.
fn hint(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01" | "28000") => {
                "; check the user and password (in the URL, PGPASSWORD or ~/.pgpass) and the server's pg_hba.conf"
            }
            Some("3D000") => "; check the database's name, or create it",
            Some("42501") => {
                "; the role lacks a privilege the step needs: grant it, or connect as a role that has it"
            }
            _ => "",
        },
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "; is PostgreSQL running there, listening on that address and port (listen_addresses, port)?"
        }
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "; no server socket there: is PostgreSQL running, and is this its socket directory?"
        }
        _ => "",
    }
}

/// A sqlx error as a sentence for people: the server's message and SQLSTATE, without the
/// line of PostgreSQL's C source sqlx appends ("at line 948") or sqlx's own wording.
pub fn error_text(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        },
        other => other.to_string(),
    }
}

fn percent_encoding_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn utf8_path_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_settings_follow_those_of_the_environment() {
        let mut command = tokio::process::Command::new("true");
        add_session_settings(&mut command, "-c synchronous_commit=off");
        let set: Vec<_> = command
            .as_std()
            .get_envs()
            .filter(|(k, _)| *k == "PGOPTIONS")
            .map(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
            .collect();
        let expected = match std::env::var("PGOPTIONS") {
            Ok(inherited) if !inherited.is_empty() => {
                format!("{inherited} -c synchronous_commit=off")
            }
            _ => "-c synchronous_commit=off".to_string(),
        };
        assert_eq!(set, vec![Some(expected)]);
    }

    #[test]
    fn the_place_names_host_port_database_and_user_but_no_password() {
        let c = ConnInfo::parse("postgres://app:s3cret@db.internal:5433/shop").unwrap();
        assert_eq!(c.place(), "db.internal:5433, database `shop`, user `app`");
        let c = ConnInfo::parse("postgres:///shop?host=/run/postgresql&user=ops").unwrap();
        assert!(
            c.place().starts_with("/run/postgresql (port "),
            "{}",
            c.place()
        );
        assert!(
            c.place().ends_with("database `shop`, user `ops`"),
            "{}",
            c.place()
        );
    }

    #[test]
    fn password_is_split_off() {
        let c = ConnInfo::parse("postgres://app:s%40cret+x@db:5433/app?sslmode=disable").unwrap();
        assert_eq!(c.password(), Some("s@cret+x"));
        assert_eq!(c.public_url(), "postgres://app@db:5433/app?sslmode=disable");
        assert_eq!(c.database().as_deref(), Some("app"));
        assert_eq!(
            c.with_database("verify 1").public_url(),
            "postgres://app@db:5433/verify%201?sslmode=disable"
        );
    }

    #[test]
    fn socket_urls_and_empty_urls_parse() {
        let c =
            ConnInfo::parse("postgres://postgres@localhost:5432/postgres?host=%2Ftmp%2Fx").unwrap();
        assert_eq!(c.password(), None);
        assert!(ConnInfo::parse("").is_ok());
        assert!(ConnInfo::parse("mysql://x").is_err());
    }
}
