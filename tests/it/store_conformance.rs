//! One conformance suite for every repository backend (restic's model): the same checks of
//! the object interface (`repo::Store`) — round trips, ranged reads, create-if-absent and
//! replace-if-unchanged races, listing order, missing objects, deletes — run against the
//! in-memory store, a local directory, a real S3-compatible server and Azurite (Azure Blob
//! Storage's emulator); and the same
//! injected faults (failing requests, short reads, slow answers) in front of each, which
//! what sits above the stores must never take for a good answer.

use crate::azure::Azurite;
use crate::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use opsrunner::repo::faults::Faulty;
use opsrunner::repo::local::LocalStore;
use opsrunner::repo::manifest::FileEntry;
use opsrunner::repo::memory::MemoryStore;
use opsrunner::repo::s3::{S3Options, S3Store, StaticKeys};
use opsrunner::repo::{AnyStore, BackupStore, Condition, Store, pipeline};
use sha2::Digest;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend under test and what keeps it alive.
struct Subject {
    name: &'static str,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _server: Option<S3Server>,
    _azurite: Option<Azurite>,
}

/// Five MiB, S3's smallest part: files larger than this are multipart uploads there.
const PART: usize = 5 << 20;

async fn s3_store(endpoint: &str, prefix: &str) -> S3Store {
    S3Store::connect(
        &format!("s3://{BUCKET}/{prefix}"),
        &S3Options {
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint.to_string()),
            force_path_style: true,
            part_size: Some(PART),
            sse: None,
            static_keys: Some(StaticKeys {
                access_key: ACCESS_KEY.into(),
                secret_key: SECRET_KEY.into(),
            }),
        },
    )
    .await
    .unwrap()
}

/// Every backend, empty.
async fn subjects() -> Vec<Subject> {
    let local = tempfile::tempdir().unwrap();
    let root = local.path().join("repo");
    std::fs::create_dir(&root).unwrap();
    let s3_root = tempfile::tempdir().unwrap();
    let server = S3Server::start(s3_root.path());
    let s3 = s3_store(&server.endpoint, "some/prefix").await;
    let azurite = tokio::task::spawn_blocking(Azurite::start).await.unwrap();
    // Blocks of S3's smallest part: the larger files are several blocks.
    let azure = azurite.store_with("some/prefix", Some(PART));
    vec![
        Subject {
            name: "memory",
            store: Arc::new(MemoryStore::named(&format!(
                "conformance-{}",
                fastrand::u64(..)
            ))),
            _dir: None,
            _server: None,
            _azurite: None,
        },
        Subject {
            name: "local",
            store: Arc::new(LocalStore::new(root)),
            _dir: Some(local),
            _server: None,
            _azurite: None,
        },
        Subject {
            name: "s3",
            store: Arc::new(s3),
            _dir: Some(s3_root),
            _server: Some(server),
            _azurite: None,
        },
        Subject {
            name: "azure",
            store: Arc::new(azure),
            _dir: None,
            _server: None,
            _azurite: Some(azurite),
        },
    ]
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u8(..)).collect()
}

async fn read_all(store: &dyn Store, key: &str, offset: u64, length: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .read(key, offset, length)
        .await
        .unwrap_or_else(|e| panic!("reading {key} at {offset}: {e}"))
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

async fn write(store: &dyn Store, key: &str, data: &[u8]) {
    let mut sink = store.create(key).await.unwrap();
    // In uneven pieces, as a pipeline writes.
    for piece in data.chunks(777_777) {
        sink.write_all(piece).await.unwrap();
    }
    sink.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_writes_round_trip_and_appear_only_when_committed() {
    for s in subjects().await {
        let store = &*s.store;
        // Larger than two parts (multipart on S3), and one smaller than a part.
        let big = bytes(2 * PART + 12_345, 1);
        write(store, "b1/data.dump", &big).await;
        assert_eq!(
            read_all(store, "b1/data.dump", 0, None).await,
            big,
            "{}",
            s.name
        );
        let small = bytes(1000, 2);
        write(store, "b1/small", &small).await;
        assert_eq!(
            read_all(store, "b1/small", 0, None).await,
            small,
            "{}",
            s.name
        );
        let stat = store.stat("b1/data.dump").await.unwrap().unwrap();
        assert_eq!(stat.size, big.len() as u64, "{}", s.name);
        assert!(stat.modified.is_some(), "{}", s.name);

        // A sink dropped without commit leaves nothing that lists or reads.
        let mut sink = store.create("b2/never").await.unwrap();
        sink.write_all(&bytes(PART + 10, 3)).await.unwrap();
        drop(sink);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            store.stat("b2/never").await.unwrap().is_none(),
            "{}",
            s.name
        );
        let keys: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["b1/data.dump", "b1/small"], "{}", s.name);

        // A committed write replaces what was there, and gets a new tag.
        let again = bytes(500, 4);
        write(store, "b1/small", &again).await;
        assert_eq!(
            read_all(store, "b1/small", 0, None).await,
            again,
            "{}",
            s.name
        );
        let small_stat = store.stat("b1/small").await.unwrap().unwrap();
        assert_eq!(small_stat.size, 500, "{}", s.name);

        // Small objects read whole, and larger than the limit not at all.
        let whole = store.read_small("b1/small", 500).await.unwrap().unwrap();
        assert_eq!(whole.bytes.as_deref(), Some(&again[..]), "{}", s.name);
        assert_eq!(whole.stat.tag, small_stat.tag, "{}", s.name);
        let over = store.read_small("b1/small", 499).await.unwrap().unwrap();
        assert!(over.bytes.is_none(), "{}", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranged_reads_give_exactly_the_range() {
    for s in subjects().await {
        let store = &*s.store;
        let data = bytes(PART + 4321, 5);
        write(store, "r/file", &data).await;
        let n = data.len() as u64;
        for (offset, length) in [
            (0, Some(1)),
            (0, Some(10)),
            (1, Some(4096)),
            (PART as u64 - 7, Some(100)),
            (12_345, None),
            (n - 1, None),
            (n - 10, Some(100)),
        ] {
            let start = offset as usize;
            let end = length.map_or(data.len(), |l| (start + l as usize).min(data.len()));
            assert_eq!(
                read_all(store, "r/file", offset, length).await,
                &data[start..end],
                "{}: {offset} +{length:?}",
                s.name
            );
        }
        // At or past the end, and no bytes: nothing, not an error.
        for (offset, length) in [(n, None), (n + 10, Some(5)), (3, Some(0))] {
            assert!(
                read_all(store, "r/file", offset, length).await.is_empty(),
                "{}: {offset} +{length:?}",
                s.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_writes_let_exactly_one_writer_win() {
    for s in subjects().await {
        let store = s.store.clone();
        // Eight writers create the same key at once: one succeeds.
        let racers: Vec<_> = (0..8u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.put("lease", vec![i; 64], Condition::Absent).await },
                )
            })
            .collect();
        let mut won = Vec::new();
        for racer in racers {
            if let Some(tag) = racer.await.unwrap().unwrap() {
                won.push(tag);
            }
        }
        assert_eq!(won.len(), 1, "{}: {won:?}", s.name);
        let current = store.read_small("lease", 1024).await.unwrap().unwrap();
        assert_eq!(current.stat.tag, won[0], "{}", s.name);

        // Eight writers replace it, each only if unchanged: one succeeds.
        let tag = current.stat.tag.clone();
        let racers: Vec<_> = (0..8u8)
            .map(|i| {
                let store = store.clone();
                let tag = tag.clone();
                tokio::spawn(async move {
                    store
                        .put("lease", vec![100 + i; 64], Condition::Matches(&tag))
                        .await
                })
            })
            .collect();
        let mut replaced = Vec::new();
        for racer in racers {
            if let Some(tag) = racer.await.unwrap().unwrap() {
                replaced.push(tag);
            }
        }
        assert_eq!(replaced.len(), 1, "{}: {replaced:?}", s.name);
        assert_ne!(
            replaced[0], tag,
            "{}: a replaced object keeps its tag",
            s.name
        );
        let now = store.read_small("lease", 1024).await.unwrap().unwrap();
        assert_eq!(now.stat.tag, replaced[0], "{}", s.name);
        assert!(now.bytes.unwrap()[0] >= 100, "{}", s.name);

        // A stale tag neither writes nor deletes; the current one deletes.
        assert_eq!(
            store
                .put("lease", vec![1], Condition::Matches(&tag))
                .await
                .unwrap(),
            None,
            "{}",
            s.name
        );
        assert!(
            !store
                .delete("lease", Condition::Matches(&tag))
                .await
                .unwrap(),
            "{}",
            s.name
        );
        assert!(store.stat("lease").await.unwrap().is_some(), "{}", s.name);
        assert!(
            store
                .delete("lease", Condition::Matches(&replaced[0]))
                .await
                .unwrap(),
            "{}",
            s.name
        );
        assert!(store.stat("lease").await.unwrap().is_none(), "{}", s.name);
        // Absent again: create-if-absent succeeds once more.
        assert!(
            store
                .put("lease", vec![7], Condition::Absent)
                .await
                .unwrap()
                .is_some(),
            "{}",
            s.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_are_sorted_and_bounded_by_their_prefix() {
    for s in subjects().await {
        let store = &*s.store;
        for key in [
            "b/2",
            "a/1",
            "a/10",
            "a/2",
            ".wal/000000010000000000000001",
            "a1",
            "a/x/y",
        ] {
            store
                .put(key, key.as_bytes().to_vec(), Condition::Always)
                .await
                .unwrap();
        }
        let keys = |prefix: &'static str| async move {
            store
                .list(prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys("").await,
            [
                ".wal/000000010000000000000001",
                "a/1",
                "a/10",
                "a/2",
                "a/x/y",
                "a1",
                "b/2"
            ],
            "{}",
            s.name
        );
        assert_eq!(
            keys("a/").await,
            ["a/1", "a/10", "a/2", "a/x/y"],
            "{}",
            s.name
        );
        assert_eq!(keys("a/1").await, ["a/1", "a/10"], "{}", s.name);
        assert_eq!(
            keys(".wal/").await,
            [".wal/000000010000000000000001"],
            "{}",
            s.name
        );
        assert!(keys("zzz/").await.is_empty(), "{}", s.name);
        let listed = store.list("a/1").await.unwrap();
        assert_eq!(listed[0].stat.size, 3, "{}", s.name);
        assert!(listed.iter().all(|o| o.problem.is_none()), "{}", s.name);
        // Everything under a prefix goes at once, nothing beside it.
        store.delete_under("a/").await.unwrap();
        assert_eq!(
            keys("").await,
            [".wal/000000010000000000000001", "a1", "b/2"],
            "{}",
            s.name
        );
    }
}

/// A write given up halfway (parts already sent) is never an object; whatever a backend
/// keeps of it is `unfinished` under its prefix until `delete_under` takes it, with the
/// committed objects beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_writes_are_never_objects_and_go_with_their_prefix() {
    for s in subjects().await {
        let store = &*s.store;
        write(store, "gone/kept", b"committed").await;
        let mut sink = store.create("gone/half").await.unwrap();
        sink.write_all(&bytes(2 * PART + 1, 9)).await.unwrap();
        // Time for the parts to reach the store before the writer gives up.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        drop(sink);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let keys: Vec<String> = store
            .list("gone/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["gone/kept"], "{}", s.name);
        assert!(
            store.stat("gone/half").await.unwrap().is_none(),
            "{}",
            s.name
        );
        let unfinished = store.unfinished("gone/").await.unwrap();
        if s.name == "azure" {
            // Blocks sent and never committed stay with the service (for a week).
            assert_eq!(unfinished.len(), 1, "{}: {unfinished:?}", s.name);
            assert_eq!(unfinished[0].key, "gone/half", "{}", s.name);
        }
        store.delete_under("gone/").await.unwrap();
        let left = store.list("gone/").await.unwrap();
        assert!(left.is_empty(), "{}: {left:?}", s.name);
        let left = store.unfinished("gone/").await.unwrap();
        assert!(left.is_empty(), "{}: {left:?}", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_objects_are_absent_not_errors_except_when_read() {
    for s in subjects().await {
        let store = &*s.store;
        let e = match store.read("no/such", 0, None).await {
            Err(e) => e,
            Ok(_) => panic!("{}: a missing object was read", s.name),
        };
        assert_eq!(e.kind(), ErrorKind::NotFound, "{}: {e}", s.name);
        assert!(store.stat("no/such").await.unwrap().is_none(), "{}", s.name);
        assert!(
            store.read_small("no/such", 10).await.unwrap().is_none(),
            "{}",
            s.name
        );
        assert!(store.list("no/").await.unwrap().is_empty(), "{}", s.name);
        assert!(
            store.delete("no/such", Condition::Always).await.unwrap(),
            "{}",
            s.name
        );
        assert!(
            !store
                .delete("no/such", Condition::Matches("x"))
                .await
                .unwrap(),
            "{}",
            s.name
        );
        assert_eq!(
            store
                .put("no/such", vec![1], Condition::Matches("x"))
                .await
                .unwrap(),
            None,
            "{}",
            s.name
        );
        assert!(store.stat("no/such").await.unwrap().is_none(), "{}", s.name);
        // Keys that could leave the repository are refused before any backend sees them.
        for bad in ["../x", "a//b", "./a", "a/../../b", "", "a\\b"] {
            let e = store
                .put(bad, vec![1], Condition::Always)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{}: {bad}", s.name);
        }
    }
}

/// A backup file written through the repository layout, and its manifest entry.
async fn stored_file(repo: &AnyStore, id: &str) -> (FileEntry, Vec<u8>) {
    let data = bytes(PART + 999, 9);
    let mut sink = repo.create(id, "data.dump").await.unwrap();
    sink.write_all(&data).await.unwrap();
    sink.commit().await.unwrap();
    let entry = FileEntry {
        name: "data.dump".into(),
        size: data.len() as u64,
        sha256: opsrunner::digest::hex(&sha2::Sha256::digest(&data)),
        index: None,
    };
    (entry, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_short_reads_and_slow_answers_are_never_taken_for_good_ones() {
    for s in subjects().await {
        // The same backend behind the fault injector, as the layers above see it.
        let faulty = Arc::new(Faulty::new(s.store.clone()));
        let faults = faulty.faults.clone();
        let repo = AnyStore::new(faulty);
        let id = "20261207T120000Z-app-0001";
        let (entry, _) = stored_file(&repo, id).await;
        pipeline::check(&repo, id, &entry).await.unwrap();

        // A short read: the check fails, and says the file is damaged or cut short.
        faults.cut_reads_at.store(4096, Ordering::SeqCst);
        let e = pipeline::check(&repo, id, &entry).await.unwrap_err();
        assert!(pipeline::is_damage(&e), "{}: {e}", s.name);
        faults.cut_reads_at.store(0, Ordering::SeqCst);

        // A failed request: an error that is not a verdict of damage.
        faults.fail_next.store(1, Ordering::SeqCst);
        let e = pipeline::check(&repo, id, &entry).await.unwrap_err();
        assert!(!pipeline::is_damage(&e), "{}: {e}", s.name);
        assert!(
            e.to_string().contains("injected failure"),
            "{}: {e}",
            s.name
        );
        assert_eq!(faults.failed.load(Ordering::SeqCst), 1, "{}", s.name);

        // A failed write publishes nothing.
        faults.fail_next.store(1, Ordering::SeqCst);
        assert!(
            repo.create("20261207T120001Z-app-0002", "x").await.is_err(),
            "{}",
            s.name
        );
        assert!(
            repo.slots().await.unwrap().iter().all(|slot| slot.id == id),
            "{}",
            s.name
        );

        // Slow answers are still whole answers.
        faults.delay_ms.store(150, Ordering::SeqCst);
        pipeline::check(&repo, id, &entry).await.unwrap();
        faults.delay_ms.store(0, Ordering::SeqCst);
    }
}
