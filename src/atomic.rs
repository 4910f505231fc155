//! Writing a file so that a reader sees the old content or the new, never half of it: a
//! hidden temporary file beside it (`.NAME.tmp.PID`, which no `*.json` or `*.prom` reader
//! picks up), renamed over it. On any failure — a full disk midway — the temporary file is
//! removed. A leaf: it imports nothing of the crate.

use std::io;
use std::path::Path;

pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    // Flushed before the rename: a crash (or a full disk found only at flush time) never
    // leaves a half-written file under the real name.
    let written = (|| {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
