# Shared by the benchmarks that write to S3 (sourced after bench/dataset.sh): starts the
# tests' S3 server (examples/s3_server.rs, release build) on S3PORT with its root in
# $WORK/s3, stops it on exit, and exports the credentials and settings it accepts.
cargo build --release --quiet --example s3_server
mkdir -p "$WORK/s3"
target/release/examples/s3_server "$WORK/s3" "$S3PORT" >"$WORK/s3.log" 2>&1 &
S3PID=$!
trap 'kill $S3PID 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$S3PORT") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=AKIAOPSRUNNERTEST AWS_SECRET_ACCESS_KEY=opsrunner-test-secret-key-0123456789
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
