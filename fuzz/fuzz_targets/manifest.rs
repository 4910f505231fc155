//! Any bytes as a manifest or verification record: parsing and the whole-manifest check
//! must never panic (a damaged repository is listed as damaged, never a crash).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opsrunner::repo::manifest::{Manifest, Verification};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let _ = m.check(&m.backup_id);
        let _ = m.check("20261125T020000Z-app-0000");
        let _ = m.total_bytes();
        let _ = m.pg_dump_major();
    }
    if let Ok(v) = serde_json::from_slice::<Verification>(data) {
        let _ = v.distrust("00");
        let _ = v.clone().sealed_for("00").distrust("00");
    }
});
