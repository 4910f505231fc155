//! Digests as text. Below every other module: plans, manifests, staging names and seed
//! checksums all print SHA-256 the same way.

/// Lower-case hex, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
