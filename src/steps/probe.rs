//! What a step type's preview probe may look at (`StepType::probe`): read-only look-ups
//! that make the preview say what *will* happen rather than what might — the migrations
//! a `migrate` would apply (over a read-only session), the backup `latest` stands for, the
//! exact SQL and files of a `reset`. Nothing a probe does writes anything.

use std::path::Path;

/// Where a step's target is, as far as a preview knows.
pub enum TargetView<'a> {
    /// A server to read from.
    Url(&'a str),
    /// An ephemeral cluster: it does not exist before `apply`, and starts empty.
    Ephemeral,
    /// Not applicable or unknown.
    None,
}

/// What a probe may look at: the plan's directory, where the step's target is, and its
/// repository (rendered) when it has one.
#[derive(Clone, Copy)]
pub struct Probe<'a> {
    pub base_dir: &'a Path,
    pub target: &'a TargetView<'a>,
    pub repo: Option<&'a crate::plan::model::Repository>,
    /// The repository the step only reads (a copy's source), rendered.
    pub source: Option<&'a crate::plan::model::Repository>,
    /// The program directories the plan names for the step (`pg_bin_dir`).
    pub pg_bin_dirs: &'a [std::path::PathBuf],
    /// The target's data directory, when the plan names one.
    pub data_directory: Option<&'a Path>,
    /// The earlier step that creates the database this step works on (a `reset`, a
    /// `restore`), when there is one: the database missing now is then expected.
    pub created_by: Option<&'a str>,
}

/// What a step runs PostgreSQL programs for, which decides the versions that will do.
#[derive(Clone, Copy)]
pub enum Uses {
    /// Clients of the target's server (pg_dump, pg_basebackup).
    Client,
    /// Loading a backup into the target's server (pg_restore, psql).
    Loading,
    /// Server programs for a copy of a cluster's files, of the base backup's major.
    Cluster,
}

impl Probe<'_> {
    /// The step's repository (named `name` in the plan) opened for reading; what the
    /// preview cannot know without it is `unknown`.
    pub async fn open(&self, name: &str, unknown: &str) -> Result<crate::repo::AnyStore, Unread> {
        self.open_definition(self.repo, name, unknown).await
    }

    /// The step's source repository (a copy's), opened for reading.
    pub async fn open_source(
        &self,
        name: &str,
        unknown: &str,
    ) -> Result<crate::repo::AnyStore, Unread> {
        self.open_definition(self.source, name, unknown).await
    }

    async fn open_definition(
        &self,
        repo: Option<&crate::plan::model::Repository>,
        name: &str,
        unknown: &str,
    ) -> Result<crate::repo::AnyStore, Unread> {
        let Some(repo) = repo else {
            return Err(Unread::repository(
                name,
                "its definition could not be rendered",
                unknown,
            ));
        };
        crate::repo::open(repo, self.base_dir)
            .await
            .map_err(|e| Unread::repository(name, e.to_string(), unknown))
    }
}

/// What a probe found: lines for the preview, and what it needed but could not read.
#[derive(Debug, Default)]
pub struct Findings {
    pub lines: Vec<String>,
    pub unread: Vec<Unread>,
    /// Backups the step would delete (a prune's victims), by id.
    pub deletes: Vec<String>,
}

/// A target or repository a probe could not read. The preview says so before anything
/// else, because silence would read as "nothing will happen" (an empty repository and an
/// unreachable one must not look alike), and `plan --strict` fails on it.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Unread {
    /// `repository` or `target`.
    pub kind: String,
    /// Its name in the plan.
    pub name: String,
    /// What went wrong.
    pub error: String,
    /// What the preview therefore cannot say, e.g. "prune victims unknown".
    pub unknown: String,
}

impl Unread {
    pub fn repository(name: &str, error: impl Into<String>, unknown: &str) -> Unread {
        Unread {
            kind: "repository".into(),
            name: name.into(),
            error: error.into(),
            unknown: unknown.into(),
        }
    }

    pub fn target(name: &str, error: impl Into<String>, unknown: &str) -> Unread {
        Unread {
            kind: "target".into(),
            name: name.into(),
            error: error.into(),
            unknown: unknown.into(),
        }
    }

    /// One line: "could not read repository `local`: …; prune victims unknown".
    pub fn line(&self) -> String {
        format!(
            "could not read {} `{}`: {}; {}",
            self.kind, self.name, self.error, self.unknown
        )
    }
}

impl From<Vec<String>> for Findings {
    fn from(lines: Vec<String>) -> Findings {
        Findings {
            lines,
            ..Findings::default()
        }
    }
}

impl Findings {
    /// Nothing could be read: the line says so, and the preview lists it among the unread.
    pub fn unread(unread: Unread) -> Findings {
        Findings {
            lines: vec![unread.line()],
            unread: vec![unread],
            deletes: Vec::new(),
        }
    }
}

/// Preview lines naming the PostgreSQL programs a step will run, with their paths and
/// versions, for the version of the step's server (asked over a read-only session;
/// nothing else is looked at). What depends on the backup is said to be chosen at run
/// time, with what is installed.
pub async fn programs(scope: &Probe<'_>, names: &[&str], uses: Uses) -> Vec<String> {
    use crate::pg::tools::{Search, Want};
    let search = Search::new(scope.pg_bin_dirs.to_vec());
    let installed = |name: &str| {
        let majors = search.majors(name);
        if majors.is_empty() {
            "none".to_string()
        } else {
            majors
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if let Uses::Cluster = uses {
        return vec![format!(
            "programs: the server programs of the base backup's major (installed: {})",
            installed("postgres")
        )];
    }
    let server = match scope.target {
        TargetView::Url(url) => match crate::pg::server::connect(url, None, "the target").await {
            Ok(server) => {
                let major = server.major;
                let version = server.version.clone();
                let _ = sqlx::Connection::close(server.conn).await;
                Ok((major, format!("server PostgreSQL {}", first_word(&version))))
            }
            Err(e) => Err(e.message),
        },
        TargetView::Ephemeral => match search.find("initdb", Want::Any) {
            Ok(initdb) => Ok((
                initdb.major,
                format!("a throwaway PostgreSQL {} cluster", initdb.major),
            )),
            Err(e) => Err(e.to_string()),
        },
        TargetView::None => Err("the target's URL could not be rendered".to_string()),
    };
    let (major, what) = match server {
        Ok(known) => known,
        Err(why) => {
            return vec![format!(
                "programs: chosen at run time by the server's version, which could not be read ({why}); installed {}: {}",
                names.join(", "),
                names
                    .iter()
                    .map(|n| installed(n))
                    .collect::<Vec<_>>()
                    .join(" / ")
            )];
        }
    };
    let mut lines = Vec::new();
    for name in names {
        let want = match uses {
            Uses::Client => Want::Client(major),
            // Before the backup is known: one written by the server's own major.
            _ => Want::Reader {
                archive: major,
                into: major,
            },
        };
        lines.push(match search.find(name, want) {
            Ok(found) => format!("programs: {name} {} for {what}", found.describe()),
            Err(e) => format!("programs: {name}: {e}"),
        });
    }
    if let Uses::Loading = uses {
        lines.push(format!(
            "programs: chosen again at run time by the backup's pg_dump version (a newer pg_restore's output is fixed for an older server); installed pg_restore majors: {}",
            installed("pg_restore")
        ));
    }
    lines
}

fn first_word(version: &str) -> &str {
    version.split_whitespace().next().unwrap_or(version)
}
