//! A table of realistic mistakes (issue 33, point 4): each made as a user would make it,
//! against a real cluster and a real S3-compatible server, and each message checked for
//! what went wrong, where (the file and line, the host and port, the bucket and endpoint,
//! the path) and what to do — and for what it must never hold: a password, or a source
//! location of ours ("at line 948", `src/…rs`).

use crate::common::pg::{Cluster, PASSWORD};
use crate::common::{Workspace, opsrunner, run};
use crate::s3::{BUCKET, S3Server, aws_env};

struct Mistake {
    what: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    code: i32,
    /// Every one of these is in the message (stderr and stdout together).
    says: Vec<String>,
}

fn s(v: &str) -> String {
    v.to_string()
}

fn words(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}

#[test]
fn fifteen_mistakes_each_say_what_where_and_what_to_do() {
    let ws = Workspace::new();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database shop");
    let server = S3Server::start(&ws.path("s3"));
    let url = cluster.url("shop");
    let port = url
        .rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let repo = ws.path("repo");
    let repo_url = format!("file://{}", repo.display());
    let (code, out, err) = run(opsrunner().args(["repo", "init", &repo_url]));
    assert_eq!(code, 0, "{out}{err}");
    let plan = ws.write_plan(
        r#"
version: 1
name: shop
targets:
  shop: { url: "{{ env.SHOP_URL }}", protected: true }
repositories:
  local: { url: "{{ env.REPO_URL }}" }
steps:
  - { id: backup, type: backup, target: shop, repository: local }
  - id: alert
    type: webhook
    needs: [backup]
    if: failure()
    url: "{{ env.ALERT_WEBHOOK }}"
"#,
    );
    let plan = plan.display().to_string();
    let typos = ws.path("typos.yaml");
    std::fs::write(
        &typos,
        "version: 1\nname: t\ntargets:\n  shop: { url: \"{{ env.SHOP_URL }}\" }\nsteps:\n  - id: q\n    type: sql\n    target: shop\n    qurey: select 1\n    databse: shop\n    timout: 5s\n",
    )
    .unwrap();
    let typos = typos.display().to_string();
    let base_env = vec![
        (s("SHOP_URL"), url.clone()),
        (s("REPO_URL"), repo_url.clone()),
        (s("ALERT_WEBHOOK"), s("http://127.0.0.1:9/hook")),
    ];
    let wrong_password = url.replacen(
        &crate::common::pg::urlencode(PASSWORD),
        "not-the-password",
        1,
    );
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut s3_env: Vec<(String, String)> = aws_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    s3_env.push((s("AWS_ENDPOINT_URL"), server.endpoint.clone()));

    let table = vec![
        Mistake {
            what: "a mistyped repository path",
            args: words(&format!(
                "backup --target env:SHOP_URL --repository {repo_url}-typo"
            )),
            env: base_env.clone(),
            code: 1,
            says: vec![
                s("is not an opsrunner repository"),
                format!("{repo_url}-typo"),
                s("opsrunner repo init"),
            ],
        },
        Mistake {
            what: "variables the plan needs are not set",
            args: vec![s("apply"), plan.clone()],
            env: vec![(s("SHOP_URL"), url.clone())],
            code: opsrunner::exit::INVALID,
            says: vec![
                s("REPO_URL  (used by repository `local`)"),
                s("ALERT_WEBHOOK  (used by step `alert`)"),
                s("set them"),
            ],
        },
        Mistake {
            what: "three misspelled keys in one step",
            args: vec![s("validate"), typos.clone()],
            env: base_env.clone(),
            code: opsrunner::exit::INVALID,
            says: vec![
                format!("{typos}:9:5"),
                s("did you mean `query`"),
                s("did you mean `database`"),
                s("did you mean `timeout`"),
            ],
        },
        Mistake {
            what: "a wrong password",
            args: words("sql --target env:BAD_URL -c select"),
            env: vec![(s("BAD_URL"), wrong_password.clone())],
            code: 1,
            says: vec![
                format!("127.0.0.1:{port}"),
                s("password authentication failed"),
                s("check the user and password"),
            ],
        },
        Mistake {
            what: "a server that is not running",
            args: words("sql --target env:DOWN_URL -c select"),
            env: vec![(
                s("DOWN_URL"),
                format!("postgres://shop@127.0.0.1:{closed_port}/shop"),
            )],
            code: 1,
            says: vec![
                format!("127.0.0.1:{closed_port}"),
                s("database `shop`"),
                s("is PostgreSQL running there"),
            ],
        },
        Mistake {
            what: "a database that does not exist",
            args: words("sql --target env:SHOP_URL -d shpo -c select"),
            env: base_env.clone(),
            code: 1,
            says: vec![
                format!("127.0.0.1:{port}"),
                s("database `shpo`"),
                s("does not exist"),
                s("check the database's name"),
            ],
        },
        Mistake {
            what: "a backup id that is not in the repository",
            args: words(&format!(
                "restore --repository {repo_url} --backup 20260101T000000Z-shop-0000 --target env:SHOP_URL --database copy"
            )),
            env: base_env.clone(),
            code: 1,
            says: vec![
                s("no backup `20260101T000000Z-shop-0000`"),
                repo_url.clone(),
                s("opsrunner backups list"),
            ],
        },
        Mistake {
            what: "an S3 bucket that does not exist",
            args: words("backups list --repository s3://no-such-bucket-here/app"),
            env: s3_env.clone(),
            code: 1,
            says: vec![
                s("bucket `no-such-bucket-here`"),
                server.endpoint.clone(),
                s("NoSuchBucket"),
            ],
        },
        Mistake {
            what: "wrong S3 credentials",
            args: words(&format!("backups list --repository s3://{BUCKET}/app")),
            env: {
                let mut e = s3_env.clone();
                e.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
                e.push((s("AWS_SECRET_ACCESS_KEY"), s("wrong-secret-key-0000")));
                e
            },
            code: 1,
            says: vec![
                format!("bucket `{BUCKET}`"),
                server.endpoint.clone(),
                s("check the credentials"),
            ],
        },
        Mistake {
            what: "an identity file that is not there",
            args: words(&format!(
                "verify --repository {repo_url} --identity /nonexistent/key.txt"
            )),
            env: base_env.clone(),
            code: opsrunner::exit::INVALID,
            says: vec![s("/nonexistent/key.txt"), s("No such file")],
        },
        Mistake {
            what: "--confirm of a target the plan does not have",
            args: vec![s("apply"), plan.clone(), s("--confirm"), s("shpo")],
            env: base_env.clone(),
            code: opsrunner::exit::INVALID,
            says: vec![s("--confirm shpo"), s("did you mean `shop`")],
        },
        Mistake {
            what: "a report into a directory that does not exist",
            args: vec![
                s("apply"),
                plan.clone(),
                s("--report"),
                s("/nonexistent/dir/report.json"),
            ],
            env: base_env.clone(),
            code: opsrunner::exit::INVALID,
            says: vec![s("--report"), s("/nonexistent/dir"), s("does not exist")],
        },
        Mistake {
            what: "a target name without the plan that declares it",
            args: words("sql --target shop -c select"),
            env: base_env.clone(),
            code: opsrunner::exit::INVALID,
            says: vec![s("--target shop"), s("--plan FILE"), s("env:DATABASE_URL")],
        },
        Mistake {
            what: "a plan file that is not there",
            args: words("apply plans/nigthly.yaml"),
            env: base_env.clone(),
            code: opsrunner::exit::INVALID,
            says: vec![s("plans/nigthly.yaml"), s("No such file")],
        },
        Mistake {
            what: "a destructive one-shot on a protected target without --confirm",
            args: vec![
                s("restore"),
                s("--plan"),
                plan.clone(),
                s("--repository"),
                s("local"),
                s("--target"),
                s("shop"),
                s("--database"),
                s("shop"),
                s("--overwrite"),
            ],
            env: base_env.clone(),
            code: opsrunner::exit::REFUSED,
            says: vec![s("protected"), s("shop"), s("--confirm shop")],
        },
        Mistake {
            what: "a point-in-time restore without a data directory or target",
            args: words(&format!(
                "restore --repository {repo_url} --to-time 2026-12-07T14:02:00Z"
            )),
            env: base_env.clone(),
            code: opsrunner::exit::INVALID,
            says: vec![s("--data-directory"), s("--target")],
        },
    ];
    assert!(table.len() >= 15);
    for m in &table {
        let (code, out, err) = run(opsrunner()
            .args(&m.args)
            .envs(m.env.iter().map(|(k, v)| (k, v))));
        let text = format!("{out}{err}");
        assert_eq!(code, m.code, "{}: exit {code}\n{text}", m.what);
        for said in &m.says {
            assert!(
                text.contains(said.as_str()),
                "{}: `{said}` is not in:\n{text}",
                m.what
            );
        }
        assert!(
            !text.contains(PASSWORD),
            "{}: the password is shown:\n{text}",
            m.what
        );
        assert!(
            !text.contains("not-the-password"),
            "{}: a password is shown:\n{text}",
            m.what
        );
        assert!(
            !text.contains("at line "),
            "{}: a source location:\n{text}",
            m.what
        );
        assert!(
            !text.contains("src/"),
            "{}: a source location:\n{text}",
            m.what
        );
    }
}
