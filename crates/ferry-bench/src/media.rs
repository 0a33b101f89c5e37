//! `ferry bench media`: upload throughput on the short link. One client uploads
//! `--size-mib` of random bytes with each chunk size in turn (8 KiB first), keeping
//! `--in-flight` chunk requests in flight (the SDK's default window unless told), and
//! the upload is verified (size and SHA-256) by the server at the end. Throughput counts
//! from `media/create` (the client hashes the content first) to the end of
//! `media/finish` (the server hashes it again).

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use ferry_client::{Account, ClientConfig};
use ferry_proto::v1::MediaKind;
use serde_json::json;

use super::report::Report;
use super::{bar, users, BenchArgs, Target, PASSWORD};

pub async fn run(
    args: &BenchArgs,
    size_mib: u64,
    chunks: &[u32],
    in_flight: &[usize],
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        (1..=200).contains(&size_mib),
        "--size-mib must be in 1..=200"
    );
    anyhow::ensure!(!chunks.is_empty(), "--chunk needs at least one size");
    // The SDK caps it at 32 (how far it sends past the oldest unacknowledged chunk).
    anyhow::ensure!(
        !in_flight.is_empty() && in_flight.iter().all(|n| (1..=32).contains(n)),
        "--in-flight takes values in 1..=32"
    );
    let target = Target::new(args).await?;
    let result = measure(args, &target, size_mib, chunks, in_flight).await;
    target.stop().await;
    result
}

async fn measure(
    args: &BenchArgs,
    target: &Target,
    size_mib: u64,
    chunks: &[u32],
    in_flight: &[usize],
) -> anyhow::Result<Report> {
    let addr = &target.addrs[0];
    let user = format!("{}media", args.prefix);
    users::register(&super::conn::short(addr).await?, &user, PASSWORD).await?;
    let mut cfg = ClientConfig::new(addr, &user, PASSWORD);
    cfg.security = match super::conn::server_key(addr).await? {
        Some(k) => ferry_client::Security::Pinned(k),
        None => ferry_client::Security::Plaintext,
    };
    let account = Account::open(cfg).await.context("signing in")?;
    let size = (size_mib * 1024 * 1024) as usize;
    let mut report = Report::new(format!("media upload: {size_mib} MiB"));
    let mut runs = Vec::new();
    let plan = chunks
        .iter()
        .flat_map(|&c| in_flight.iter().map(move |&n| (c, n)));
    for (i, (chunk, in_flight)) in plan.enumerate() {
        // Fresh bytes each run (xorshift), so no run reuses another's blob.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (i as u64 + 1);
        let data: Vec<u8> = (0..size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let data = Bytes::from(data);
        let pb = bar(size as u64, &format!("chunks of {chunk} B"));
        let t0 = Instant::now();
        let c = account
            .create_media(&data, MediaKind::MediaFile, chunk)
            .await
            .context("media/create")?;
        let m = account
            .upload_media_with(&c, data.clone(), in_flight, &|done, _| {
                pb.set_position(done)
            })
            .await
            .context("uploading")?;
        let secs = t0.elapsed().as_secs_f64();
        pb.finish_and_clear();
        anyhow::ensure!(m.size == size as u64, "the server stored {} bytes", m.size);
        let mbps = size as f64 / secs / 1e6;
        let requests = (size as u64).div_ceil(u64::from(c.chunk_size));
        report.row(
            format!("chunk {} B, {in_flight} in flight", c.chunk_size),
            format!(
                "{mbps:.1} MB/s ({secs:.2} s, {requests} chunks, {:.0} chunks/s)",
                requests as f64 / secs
            ),
        );
        runs.push(json!({
            "chunk_size": c.chunk_size,
            "in_flight": in_flight,
            "bytes": size,
            "seconds": secs,
            "mb_per_s": mbps,
            "chunks": requests,
            "chunks_per_s": requests as f64 / secs,
        }));
    }
    report.json = json!({
        "scenario": "media",
        "target": target.describe(),
        "machine": super::machine(),
        "runs": runs,
    });
    Ok(report)
}
