//! Azurite, Microsoft's Azure Storage emulator (npm `azurite`, installed by
//! `.ci/install-azurite`), started by the harness on a free loopback port with a container
//! ready, and stopped when the test ends.

// Each test uses a different part of this.
#![allow(dead_code)]

use opsrunner::repo::azure::{AzureOptions, AzureStore, SharedKey};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const CONTAINER: &str = "backups";

pub struct Azurite {
    /// `http://127.0.0.1:PORT/devstoreaccount1`.
    pub endpoint: String,
    child: Child,
    _dir: tempfile::TempDir,
}

fn azurite_blob() -> PathBuf {
    let ci = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci");
    let program = ci.join("node/node_modules/.bin/azurite-blob");
    if !program.exists() {
        let status = Command::new(ci.join("install-azurite"))
            .status()
            .expect("run .ci/install-azurite");
        assert!(status.success(), ".ci/install-azurite failed");
    }
    program
}

impl Azurite {
    /// Starts Azurite's Blob service and creates [`CONTAINER`].
    pub fn start() -> Azurite {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(azurite_blob())
            .args(["--blobHost", "127.0.0.1", "--blobPort", "0", "--location"])
            .arg(dir.path())
            .args(["--disableTelemetry", "--skipApiVersionCheck"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Azurite says where it listens ("… successfully listens on http://127.0.0.1:PORT");
        // what it says later is read and dropped, so that its pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(at) = line.find("http://127.0.0.1:") {
                    let _ = tx.send(line[at..].trim().to_string());
                }
            }
        });
        let started = Instant::now();
        let address = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(address) => break address,
                Err(_) if started.elapsed() > Duration::from_secs(60) => {
                    let _ = child.kill();
                    panic!("Azurite did not start within 60 s");
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("Azurite exited at start: {status}");
                    }
                }
            }
        };
        let azurite = Azurite {
            endpoint: format!("{address}/{ACCOUNT}"),
            child,
            _dir: dir,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(azurite.store("").create_container())
            .expect("create the container");
        azurite
    }

    /// The repository `azure://backups/PREFIX` in this Azurite, in this process.
    pub fn store(&self, prefix: &str) -> AzureStore {
        self.store_with(prefix, None)
    }

    pub fn store_with(&self, prefix: &str, block_size: Option<usize>) -> AzureStore {
        AzureStore::connect(
            &format!("azure://{CONTAINER}/{prefix}"),
            AzureOptions {
                endpoint: Some(self.endpoint.clone()),
                block_size,
                account: Some(SharedKey {
                    account: ACCOUNT.into(),
                    key: KEY.into(),
                    endpoint: None,
                }),
            },
        )
        .unwrap()
    }

    /// Runs `f` on this Azurite's container (no prefix) on a runtime of its own: for
    /// synchronous tests that look at what is stored.
    pub fn with_store<T>(&self, f: impl AsyncFnOnce(&AzureStore) -> T) -> T {
        let store = self.store("");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f(&store))
    }

    /// Every blob name under `prefix`, committed ones.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        use opsrunner::repo::Store;
        self.with_store(async |store| {
            store
                .list(prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect()
        })
    }

    /// A blob's bytes, `None` when there is none.
    pub fn read(&self, key: &str) -> Option<Vec<u8>> {
        use opsrunner::repo::Store;
        self.with_store(async |store| {
            store
                .read_small(key, 1 << 30)
                .await
                .unwrap()
                .and_then(|small| small.bytes)
        })
    }

    /// The environment an `opsrunner` process needs to reach this Azurite, as a user sets
    /// it: a connection string.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![(
            "AZURE_STORAGE_CONNECTION_STRING",
            format!(
                "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={};",
                self.endpoint
            ),
        )]
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
