//! Upload and download one file through Kiln's storage and print the times;
//! `scripts/bench-storage` runs it beside `cp` and plain S3 requests.
//!
//! ```text
//! bench_storage FILE OUT local DIR
//! bench_storage FILE OUT s3 ENDPOINT BUCKET ACCESS_KEY SECRET_KEY
//! ```
//! Prints `upload_secs=… download_secs=… bytes=… parts=…` on one line.
//! Run `sync` first; the example syncs between upload and download, so
//! write-back of one operation's output does not slow the next.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use kiln_config::{S3StorageConfig, Secret};
use kiln_domain::BuildKey;
use kiln_storage::{ObjectKey, ObjectName, Storage};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (file, out, storage) = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [file, out, "local", dir] => (file, out, Storage::local(&PathBuf::from(dir))?),
        [file, out, "s3", endpoint, bucket, access, secret] => {
            let config = S3StorageConfig {
                endpoint: Some(endpoint.into()),
                region: "us-east-1".into(),
                bucket: bucket.into(),
                prefix: "bench/".into(),
                access_key_id: Some(Secret::new(access)),
                secret_access_key: Some(Secret::new(secret)),
                path_style: true,
                allow_http: true,
                presign: false,
                presign_ttl_secs: 300,
            };
            (file, out, Storage::s3(&config)?)
        }
        _ => bail!(
            "usage: bench_storage FILE OUT local DIR | bench_storage FILE OUT s3 ENDPOINT BUCKET ACCESS_KEY SECRET_KEY"
        ),
    };
    let key = ObjectKey::new(&BuildKey::from_digest(&[0xbe; 32]), ObjectName::Artifact);

    let started = Instant::now();
    let put = storage.put_file(&key, file.as_ref()).await.context("upload")?;
    let upload = started.elapsed();

    // Start the download with no dirty pages queued, as every contestant does.
    std::process::Command::new("sync").status().context("sync")?;
    let started = Instant::now();
    let mut stream = storage.get(&key, None).await.context("download")?.into_stream();
    // The consumer writes synchronously, as cheaply as `dd` does: a server
    // hands the chunks to a socket, and a trip to the blocking pool per chunk
    // would measure tokio's file I/O rather than storage. Buffered, because
    // S3 bodies arrive in small chunks.
    let mut dest = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        std::io::Write::write_all(&mut dest, &chunk)?;
    }
    std::io::Write::flush(&mut dest)?;
    drop(dest);
    let download = started.elapsed();
    ensure!(bytes == put.size, "downloaded {bytes} bytes of {}", put.size);

    println!(
        "upload_secs={:.4} download_secs={:.4} bytes={bytes} parts={}",
        upload.as_secs_f64(),
        download.as_secs_f64(),
        put.parts
    );
    Ok(())
}
