//! An Azure Blob Storage repository against Azurite (Microsoft's emulator, started by the
//! harness): backups in blocks, verification by test restore, the parallel restore by
//! ranged reads, the catalog and pruning, client-side encryption, a wrong key, and the
//! lease that keeps two runs apart. Point-in-time recovery from Azure is in `pitr.rs`.

use crate::azure::{Azurite, CONTAINER, KEY};
use crate::common::pg::{Cluster, PASSWORD};
use crate::common::{Workspace, opsrunner};

const ALL_PASS: &str = "manifest=pass files=pass archive=pass restore=pass fingerprints=pass";

/// A database `app` of about 24 MB uncompressed: with 5 MiB blocks, five blocks.
fn source() -> Cluster {
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table noise (id int primary key, a text, b text, c text); insert into noise select g, md5(g::text), md5((g + 1)::text), md5((g + 2)::text) from generate_series(1, 200000) g");
    cluster
}

/// A plan with the repository `offsite` at `azure://backups/app`, a `db` and a `scratch`
/// target.
fn plan(azurite: &Azurite, repository_extra: &str, steps: &str) -> String {
    format!(
        r#"
version: 1
name: azure
targets:
  db: {{ url: "{{{{ env.DATABASE_URL }}}}" }}
  scratch: {{ ephemeral: true }}
repositories:
  offsite:
    url: azure://{CONTAINER}/app
    create: true
    endpoint: "{}"
    part_size_mib: 5{repository_extra}
steps:
{steps}"#,
        azurite.endpoint
    )
}

const BACKUP_VERIFY_RESTORE: &str = "  - { id: backup, type: backup, target: db, database: app, repository: offsite, compression: none, fingerprint: full }
  - { id: verify, type: verify, needs: [backup], repository: offsite, backup: \"{{ steps.backup.outputs.backup_id }}\", restore_into: { target: scratch, database: check } }
  - { id: restore, type: restore, needs: [verify], repository: offsite, backup: \"{{ steps.backup.outputs.backup_id }}\", into: { target: db, database: copy }, jobs: 2 }
";

/// The connection string, the database's URL, and `extra`.
fn env(
    azurite: &Azurite,
    cluster: &Cluster,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = azurite.env();
    env.push(("DATABASE_URL", cluster.url("postgres")));
    env.push(("OPSRUNNER_LOG", "opsrunner=debug".into()));
    env.extend(extra.iter().cloned());
    env
}

#[test]
fn backups_go_to_azure_in_blocks_verify_restore_and_are_listed_and_pruned() {
    let ws = Workspace::new();
    let azurite = Azurite::start();
    let cluster = source();
    let env = env(&azurite, &cluster, &[]);
    let plan = plan(&azurite, "", BACKUP_VERIFY_RESTORE);
    let run = ws.apply_owned(&plan, &[], &env);
    assert_eq!(run.code, 0, "{}", run.everything());
    assert_eq!(run.step("verify")["outputs"]["checks"], ALL_PASS);
    let id = run.step("backup")["outputs"]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        run.step("backup")["outputs"]["uri"],
        format!("azure://{CONTAINER}/app/{id}")
    );
    let bytes: u64 = run.step("backup")["outputs"]["bytes"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes > 20 << 20, "large enough for five blocks: {bytes}");
    // The stored dump is the size the manifest says, committed from its blocks.
    let dump = azurite.read(&format!("app/{id}/dump.pgdump")).unwrap();
    assert_eq!(dump.len() as u64, bytes);
    assert!(dump.starts_with(b"PGDMP"));
    // The restore read the tables from their parts of the stored file (ranged reads).
    assert!(
        run.stderr
            .contains("loading the tables from their parts of the stored file"),
        "{}",
        run.stderr
    );
    assert_eq!(
        cluster.psql("copy", "select count(*), sum(id) from noise"),
        cluster.psql("app", "select count(*), sum(id) from noise")
    );
    assert!(!run.everything().contains(PASSWORD) && !run.everything().contains(KEY));

    // The preview says where and how.
    let (code, out, err) = crate::common::run(
        opsrunner()
            .arg("plan")
            .arg(ws.path("plan.yaml"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Azure block blob, 5 MiB blocks"), "{out}");
    assert!(!out.contains(KEY));

    // A second backup, verified too; the catalog lists both with their verifications;
    // pruning to one keeps the newest (the newest verified one is always kept) and
    // deletes every blob of the other.
    let backup_and_verify: String = BACKUP_VERIFY_RESTORE
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    let again = ws.apply_owned(
        &plan.replace(BACKUP_VERIFY_RESTORE, &backup_and_verify),
        &[],
        &env,
    );
    assert_eq!(again.code, 0, "{}", again.everything());
    let (code, stdout, stderr) = ws.backups_of("offsite", &["list", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len(), 2, "{stdout}");
    assert!(
        listed
            .iter()
            .any(|b| b["backup_id"] == id.as_str() && b["verification"]["passed"] == true),
        "{stdout}"
    );
    let prune = ws.apply_owned(
        &plan.replace(
            BACKUP_VERIFY_RESTORE,
            "  - { id: prune, type: prune, repository: offsite, keep: { last: 1 } }\n",
        ),
        &[],
        &env,
    );
    assert_eq!(prune.code, 0, "{}", prune.everything());
    let (code, stdout, stderr) = ws.backups_of("offsite", &["list", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len(), 1, "{stdout}");
    assert_ne!(listed[0]["backup_id"], id.as_str(), "the newest is kept");
    assert!(
        azurite.keys(&format!("app/{id}/")).is_empty(),
        "the pruned backup's blobs are gone"
    );
}

#[test]
fn encrypted_backups_round_trip_through_azure_as_ciphertext() {
    use age::secrecy::ExposeSecret;
    let ws = Workspace::new();
    let azurite = Azurite::start();
    let cluster = Cluster::start();
    cluster.psql("postgres", "create database app");
    cluster.psql("app", "create table salaries (id int primary key, who text); insert into salaries select g, 'employee-' || g from generate_series(1, 20000) g");
    let identity = age::x25519::Identity::generate();
    let key_file = ws.path("backup.key");
    std::fs::write(&key_file, identity.to_string().expose_secret()).unwrap();
    let extra = format!(
        "\n    encryption: {{ recipients: [\"{}\"] }}",
        identity.to_public()
    );
    let env = env(
        &azurite,
        &cluster,
        &[(
            "OPSRUNNER_AGE_IDENTITY_FILE",
            key_file.display().to_string(),
        )],
    );
    let run = ws.apply_owned(&plan(&azurite, &extra, BACKUP_VERIFY_RESTORE), &[], &env);
    assert_eq!(run.code, 0, "{}", run.everything());
    assert_eq!(run.step("verify")["outputs"]["checks"], ALL_PASS);
    assert_eq!(
        cluster.psql(
            "copy",
            "select count(*) from salaries where who like 'employee-%'"
        ),
        "20000"
    );
    let keys = azurite.keys("app/");
    assert!(keys.iter().any(|k| k.ends_with(".age")), "{keys:?}");
    for key in keys {
        let bytes = azurite.read(&key).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("employee-") && !text.contains("salaries"),
            "{key} reveals data"
        );
    }
}

#[test]
fn a_wrong_account_key_is_a_clear_error_that_prints_no_key() {
    let ws = Workspace::new();
    let azurite = Azurite::start();
    let wrong = "d3JvbmcgYnV0IHZhbGlkIGJhc2U2NCBrZXk=";
    let plan = format!(
        "version: 1\nname: denied\nrepositories:\n  offsite: {{ url: \"azure://{CONTAINER}/x\", endpoint: \"{}\", create: true }}\nsteps:\n  - {{ id: verify, type: verify, repository: offsite, backup: latest, retry: {{ attempts: 3, delay: 10ms }} }}\n",
        azurite.endpoint
    );
    let env = [
        ("AZURE_STORAGE_ACCOUNT", crate::azure::ACCOUNT.to_string()),
        ("AZURE_STORAGE_KEY", wrong.to_string()),
    ];
    let run = ws.apply_owned(&plan, &[], &env);
    assert_eq!(run.code, 1, "{}", run.everything());
    let reason = run.step("verify")["reason"].as_str().unwrap();
    assert!(
        reason.contains("403") && reason.contains(&azurite.endpoint),
        "{reason}"
    );
    assert_eq!(run.attempts("verify"), 1, "a 403 is not retried");
    assert!(!run.everything().contains(wrong));

    // No account at all: said before anything is contacted, naming the variables.
    let run = ws.apply_owned(&plan, &[], &[]);
    assert_eq!(run.code, 1, "{}", run.everything());
    let reason = run.step("verify")["reason"].as_str().unwrap();
    assert!(
        reason.contains("AZURE_STORAGE_CONNECTION_STRING") && reason.contains("AZURE_STORAGE_KEY"),
        "{reason}"
    );
}

#[test]
fn a_run_holding_an_azure_repository_keeps_the_next_out_until_it_ends() {
    let ws = Workspace::new();
    let azurite = Azurite::start();
    let cluster = source();
    let env = env(&azurite, &cluster, &[]);
    let plan = plan(
        &azurite,
        "",
        "  - { id: backup, type: backup, target: db, database: app, repository: offsite }\n  - { id: hold, type: shell, needs: [backup], command: \"touch held; sleep 60\" }\n",
    );
    let plan_path = ws.write_plan(&plan);
    let mut a = opsrunner()
        .arg("apply")
        .arg(&plan_path)
        .current_dir(ws.dir.path())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !ws.path("held").exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "the first run never held the repository"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let lease: serde_json::Value =
        serde_json::from_slice(&azurite.read("app/.opsrunner.lease").expect("a lease")).unwrap();
    assert_eq!(lease["pid"], a.id(), "{lease}");
    let b = ws.apply_owned(&plan, &[], &env);
    assert_eq!(b.code, 3, "{}", b.everything());
    assert!(
        b.stderr.contains(&format!("(pid {})", a.id())),
        "{}",
        b.stderr
    );
    // Killed, the holder cannot let go; on the machine it ran on, its lease is taken over
    // at once, and the run that took it lets go when it ends.
    a.kill().unwrap();
    a.wait().unwrap();
    let quick = plan.replace("touch held; sleep 60", "true");
    let c = ws.apply_owned(&quick, &[], &env);
    assert_eq!(c.code, 0, "{}", c.everything());
    assert!(azurite.read("app/.opsrunner.lease").is_none());
    let (code, stdout, stderr) = ws.backups_of("offsite", &["list", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&stdout)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn bad_azure_urls_are_plan_errors_and_credentials_in_them_are_not_echoed() {
    let ws = Workspace::new();
    let check = |url: &str| {
        let plan = ws.write_plan(&format!(
            "version: 1\nname: urls\nrepositories:\n  offsite: {{ url: \"{url}\", create: true }}\nsteps:\n  - {{ id: prune, type: prune, repository: offsite, keep: {{ last: 3 }} }}\n"
        ));
        crate::common::run(opsrunner().arg("plan").arg(&plan))
    };
    let (code, out, err) = check("azure://Backups_2026/app");
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("repositories.offsite.url") && err.contains("container name has 3 to 63"),
        "{err}"
    );
    let (code, out, err) = check("azure://acct:c2VjcmV0a2V5@backups/app");
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("the Azure URL carries credentials"), "{err}");
    assert!(
        !err.contains("c2VjcmV0a2V5") && !out.contains("c2VjcmV0a2V5"),
        "{err}"
    );
}
