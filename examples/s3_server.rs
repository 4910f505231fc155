//! The tests' S3-compatible server (s3s with its file-system backend, SigV4 with the test
//! credentials) as a program, for benchmarks and for trying S3 repositories by hand:
//!
//!     cargo run --release --example s3_server -- DIR PORT
//!
//! serves the buckets under DIR (creating `backups-bucket`) on 127.0.0.1:PORT until killed.
//! Credentials: AWS_ACCESS_KEY_ID=AKIAOPSRUNNERTEST
//! AWS_SECRET_ACCESS_KEY=opsrunner-test-secret-key-0123456789.

#[path = "../tests/common/s3.rs"]
mod s3;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(port)) = (args.next(), args.next()) else {
        eprintln!("usage: s3_server DIR PORT");
        std::process::exit(2);
    };
    let port: u16 = port.parse().unwrap_or_else(|_| {
        eprintln!("PORT must be a number");
        std::process::exit(2);
    });
    let endpoint = s3::serve(
        std::path::Path::new(&dir),
        std::sync::Arc::default(),
        Some(port),
    );
    println!("{endpoint}");
    loop {
        std::thread::park();
    }
}
