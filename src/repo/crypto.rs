//! Client-side encryption with age (<https://age-encryption.org>): backup files are encrypted
//! to the repository's recipients (public keys) before they leave the machine, so a stolen
//! bucket or disk reveals only sizes and the catalog's metadata. Only restore and verify
//! need the identity (private key); backup, list and prune run without it, so the machine
//! that takes backups never holds a key that could read them.
//!
//! Each file is one age stream: ChaCha20-Poly1305 in 64 KiB chunks with a final-chunk flag,
//! so any change or truncation of the stored bytes fails decryption rather than yielding
//! wrong data.

use age::x25519;
use futures_util::AsyncWriteExt as _;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// The environment variable naming the identity file (same as `--identity`).
pub const IDENTITY_ENV: &str = "OPSRUNNER_AGE_IDENTITY_FILE";

/// The suffix of encrypted files.
pub const EXTENSION: &str = ".age";

/// Public keys files are encrypted to; any one of their identities can decrypt.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<x25519::Recipient>,
}

/// An age identity (private key), which must never be shown.
pub fn is_private_key(text: &str) -> bool {
    text.trim()
        .to_ascii_uppercase()
        .starts_with("AGE-SECRET-KEY-")
}

/// Parses one recipient, with a hint for the mistakes people make.
pub fn parse_recipient(text: &str) -> Result<x25519::Recipient, String> {
    let text = text.trim();
    if is_private_key(text) {
        return Err(
            "this is an identity (a private key); the plan takes only recipients (public keys, `age1…`): `age-keygen -y KEYFILE` prints the public key"
                .into(),
        );
    }
    if text.starts_with("ssh-") {
        return Err("SSH keys are not supported as recipients; use an age key (`age1…`)".into());
    }
    // The text is not quoted: it may come from a file that holds something else entirely
    // (a password file named by mistake), and errors must not carry a file's content.
    x25519::Recipient::from_str(text).map_err(|e| {
        format!("not an age recipient (`age1…`): {e}; the value is not shown, it may be a secret")
    })
}

impl Recipients {
    /// The recipients of a repository's `encryption:`, with its file (relative to
    /// `base_dir`) read now.
    pub fn of(
        config: &crate::plan::model::EncryptionConfig,
        base_dir: &Path,
    ) -> Result<Recipients, String> {
        let file = config.recipients_file.as_deref().map(|f| base_dir.join(f));
        Recipients::load(&config.recipients, file.as_deref())
    }

    /// Recipients from the plan's list and a recipients file (one per line, `#` comments).
    pub fn load(inline: &[String], file: Option<&Path>) -> Result<Recipients, String> {
        let mut keys = Vec::new();
        for r in inline {
            keys.push(parse_recipient(r)?);
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("recipients file {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                keys.push(
                    parse_recipient(line)
                        .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?,
                );
            }
        }
        if keys.is_empty() {
            return Err("encryption needs at least one recipient".into());
        }
        Ok(Recipients { keys })
    }

    /// The public keys as text, for the manifest: they tell which identity is needed.
    pub fn texts(&self) -> Vec<String> {
        self.keys.iter().map(ToString::to_string).collect()
    }

    fn encryptor(&self) -> io::Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
            .map_err(io::Error::other)
    }

    /// Encrypts a small document into ASCII-armored text.
    pub fn seal(&self, plaintext: &[u8]) -> io::Result<String> {
        use std::io::Write;
        let mut out = Vec::new();
        let armor =
            age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)?;
        let mut writer = self.encryptor()?.wrap_output(armor)?;
        Write::write_all(&mut writer, plaintext)?;
        writer.finish()?.finish()?;
        Ok(String::from_utf8(out).expect("armor is ASCII"))
    }
}

/// Encrypts what is written to it into another writer.
pub struct EncryptingWriter<W: tokio::io::AsyncWrite + Unpin> {
    inner: age::stream::StreamWriter<tokio_util::compat::Compat<W>>,
}

impl<W: tokio::io::AsyncWrite + Unpin> EncryptingWriter<W> {
    pub async fn new(recipients: &Recipients, sink: W) -> io::Result<EncryptingWriter<W>> {
        use tokio_util::compat::TokioAsyncWriteCompatExt;
        let inner = recipients
            .encryptor()?
            .wrap_async_output(sink.compat_write())
            .await?;
        Ok(EncryptingWriter { inner })
    }

    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf).await
    }

    /// Writes the final chunk (without it the file does not decrypt) and closes the writer.
    pub async fn finish(mut self) -> io::Result<()> {
        self.inner.close().await
    }
}

/// Private keys for restore and verify, read from an age identity file
/// (`age-keygen -o FILE`), named by `--identity` or `OPSRUNNER_AGE_IDENTITY_FILE`.
#[derive(Clone)]
pub struct Identities {
    path: PathBuf,
    keys: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
    /// The private keys as written, to be redacted wherever they might show up.
    secrets: Arc<Vec<String>>,
}

impl Identities {
    pub fn load(path: &Path) -> Result<Identities, String> {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                "identity file {} can be read by other users (mode {:o}); `chmod 600` it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        let file = age::IdentityFile::from_file(path.display().to_string())
            .map_err(|e| format!("identity file {}: {e}", path.display()))?;
        let keys = file.into_identities().map_err(|e| {
            format!(
                "identity file {}: {}",
                path.display(),
                decrypt_error_text(&e)
            )
        })?;
        if keys.is_empty() {
            return Err(format!(
                "identity file {} holds no age identity (`AGE-SECRET-KEY-1…`)",
                path.display()
            ));
        }
        let secrets = std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter(|w| is_private_key(w))
            .map(str::to_string)
            .collect();
        Ok(Identities {
            path: path.to_path_buf(),
            keys: Arc::new(keys),
            secrets: Arc::new(secrets),
        })
    }

    /// The private keys as written in the identity file.
    /// The identity file they were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn secret_texts(&self) -> &[String] {
        &self.secrets
    }

    /// The public keys (`age1…`) of the identities: what a repository must encrypt to for
    /// them to read it.
    pub fn public_keys(&self) -> Vec<String> {
        self.secrets
            .iter()
            .filter_map(|s| s.parse::<age::x25519::Identity>().ok())
            .map(|i| i.to_public().to_string())
            .collect()
    }

    fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity)
    }

    /// A decryption error as an I/O error; not being a recipient says which ones are.
    fn error(&self, e: age::DecryptError, what: &str, recipients: &[String]) -> io::Error {
        match e {
            age::DecryptError::NoMatchingKeys => io::Error::new(
                io::ErrorKind::PermissionDenied,
                if recipients.is_empty() {
                    // A WAL file records no recipients: the repository's were used then.
                    format!(
                        "no identity in {} can decrypt {what}: it was encrypted to other recipients (the repository's `encryption` when it was written); use the identity file that belongs to one of them",
                        self.path.display()
                    )
                } else {
                    format!(
                        "no identity in {} can decrypt {what}: it was encrypted to {}; use the identity file of one of those recipients",
                        self.path.display(),
                        recipients.join(", ")
                    )
                },
            ),
            e => invalid(&e),
        }
    }

    /// Decrypts what [`Recipients::seal`] made.
    pub fn unseal(&self, armored: &str, recipients: &[String]) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let reader = age::armor::ArmoredReader::new(armored.as_bytes());
        let decryptor = age::Decryptor::new_buffered(reader).map_err(|e| invalid(&e))?;
        let mut plain = Vec::new();
        decryptor
            .decrypt(self.iter())
            .map_err(|e| self.error(e, "the sealed part of the manifest", recipients))?
            .read_to_end(&mut plain)?;
        Ok(plain)
    }

    /// A reader of the plaintext of an encrypted stream. A wrong key is an error here, at
    /// once; damaged data is an error when the damaged chunk is read.
    pub async fn decrypt(
        &self,
        input: impl tokio::io::AsyncRead + Send + Unpin + 'static,
        what: &str,
        recipients: &[String],
    ) -> io::Result<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>> {
        let buffered = futures_util::io::BufReader::with_capacity(1 << 16, input.compat());
        let decryptor = age::Decryptor::new_async_buffered(buffered)
            .await
            .map_err(|e| invalid(&e))?;
        let reader = decryptor
            .decrypt_async(self.iter())
            .map_err(|e| self.error(e, what, recipients))?;
        Ok(Box::pin(reader.compat()))
    }
}

fn decrypt_error_text(e: &age::DecryptError) -> String {
    match e {
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            "not an age-encrypted file (damaged or not written by opsrunner)".into()
        }
        age::DecryptError::DecryptionFailed | age::DecryptError::InvalidMac => {
            "decryption failed: the data was changed or damaged".into()
        }
        e => e.to_string(),
    }
}

fn invalid(e: &age::DecryptError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, decrypt_error_text(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_reject_private_keys_and_garbage() {
        let secret = x25519::Identity::generate();
        let private = age::secrecy::ExposeSecret::expose_secret(&secret.to_string()).to_string();
        let e = parse_recipient(&private).unwrap_err();
        assert!(e.contains("private key"), "{e}");
        assert!(!e.contains(&private), "the secret is not echoed: {e}");
        assert!(
            parse_recipient("age1nope")
                .unwrap_err()
                .contains("not an age recipient")
        );
        assert!(parse_recipient(&secret.to_public().to_string()).is_ok());
    }

    #[test]
    fn sealing_round_trips_and_needs_the_right_key() {
        let dir = tempfile::tempdir().unwrap();
        let right = x25519::Identity::generate();
        let wrong = x25519::Identity::generate();
        let write = |name: &str, id: &x25519::Identity| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!(
                    "# created: test\n{}\n",
                    age::secrecy::ExposeSecret::expose_secret(&id.to_string())
                ),
            )
            .unwrap();
            path
        };
        let recipients = Recipients::load(&[right.to_public().to_string()], None).unwrap();
        let sealed = recipients.seal(b"tables").unwrap();
        assert!(sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        let ok = Identities::load(&write("right", &right)).unwrap();
        assert_eq!(ok.unseal(&sealed, &recipients.texts()).unwrap(), b"tables");
        let bad = Identities::load(&write("wrong", &wrong)).unwrap();
        let e = bad.unseal(&sealed, &recipients.texts()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains(&recipients.texts()[0]), "{e}");
    }
}
