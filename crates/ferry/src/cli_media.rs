//! Media from the command line: `ferry send --image/--file/--voice/--video PATH` and
//! `ferry listen --download DIR`, with progress bars on stderr.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ferry_client::{Client, Dest};
use ferry_proto::v1;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What `ferry send` attaches instead of text.
#[derive(Args, Debug, Clone, Default)]
pub struct MediaArgs {
    /// Send an image (a thumbnail goes first, then the message, then the original).
    #[arg(long, value_name = "PATH", group = "media")]
    pub image: Option<PathBuf>,
    /// Send a file under its name.
    #[arg(long, value_name = "PATH", group = "media")]
    pub file: Option<PathBuf>,
    /// Send a voice note.
    #[arg(long, value_name = "PATH", group = "media")]
    pub voice: Option<PathBuf>,
    /// Send a video.
    #[arg(long, value_name = "PATH", group = "media")]
    pub video: Option<PathBuf>,
    /// A thumbnail for --video (JPEG or PNG).
    #[arg(long, value_name = "PATH", requires = "video")]
    pub thumb: Option<PathBuf>,
    /// Duration of a voice note or video, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub duration_ms: u32,
}

impl MediaArgs {
    pub fn any(&self) -> bool {
        self.image.is_some() || self.file.is_some() || self.voice.is_some() || self.video.is_some()
    }
}

fn bar(what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

/// Sends one media message and prints its ids.
pub async fn send(client: &Client, to: Dest, m: &MediaArgs) -> anyhow::Result<()> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let pb = bar("uploading");
    let progress = |done: u64, total: u64| {
        pb.set_length(total);
        pb.set_position(done);
    };
    let sent = if let Some(p) = &m.image {
        client.send_image(to, read(p)?, &progress).await
    } else if let Some(p) = &m.file {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        client.send_file(to, read(p)?, &name, &progress).await
    } else if let Some(p) = &m.voice {
        client
            .send_voice(to, read(p)?, m.duration_ms, &progress)
            .await
    } else if let Some(p) = &m.video {
        let thumb = m.thumb.as_deref().map(read).transpose()?;
        client
            .send_video(to, read(p)?, thumb, m.duration_ms, &progress)
            .await
    } else {
        anyhow::bail!("nothing to send");
    };
    pb.finish_and_clear();
    let sent = sent.context("sending")?;
    println!(
        "sent msg_id={} seq={} media_id={} size={} type={}",
        sent.ack.msg_id,
        sent.ack.seq,
        sent.media.media_id,
        sent.media.size,
        sent.media.content_type
    );
    Ok(())
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "audio/ogg" => "ogg",
        "audio/mpeg" => "mp3",
        "audio/wav" => "wav",
        "audio/mp4" => "m4a",
        "audio/amr" => "amr",
        "video/mp4" => "mp4",
        "video/webm" => "webm",
        "application/pdf" => "pdf",
        "application/zip" => "zip",
        "text/plain" => "txt",
        _ => "bin",
    }
}

/// A media reference as JSON, for `ferry listen`.
pub fn media_json(m: &v1::MediaRef) -> serde_json::Value {
    serde_json::json!({
        "media_id": m.media_id,
        "kind": m.kind().as_str_name(),
        "size": m.size,
        "content_type": m.content_type,
        "width": m.width,
        "height": m.height,
        "duration_ms": m.duration_ms,
        "thumb_id": m.thumb_id,
        "file_name": m.file_name,
    })
}

/// Downloads a message's thumbnail (first) and media into `dir`; returns their paths.
pub async fn download(
    client: &Client,
    m: &v1::MediaRef,
    dir: &Path,
) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = serde_json::Map::new();
    if !m.thumb_id.is_empty() {
        let bytes = client.download(&m.thumb_id, &|_, _| {}).await?;
        let path = dir.join(format!("{}.thumb.jpg", m.media_id));
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        out.insert("thumb_path".into(), path.display().to_string().into());
    }
    let pb = bar("downloading");
    let bytes = client
        .download(&m.media_id, &|done, total| {
            pb.set_length(total);
            pb.set_position(done);
        })
        .await;
    pb.finish_and_clear();
    let bytes = bytes?;
    // A file keeps its name (without any directory part), behind the id.
    let name = Path::new(&m.file_name)
        .file_name()
        .map(|n| format!("{}-{}", m.media_id, n.to_string_lossy()))
        .unwrap_or_else(|| {
            let ct = if m.content_type.is_empty() {
                ferry_logic::sniff(&bytes[..bytes.len().min(64)])
            } else {
                m.content_type.as_str()
            };
            format!("{}.{}", m.media_id, extension(ct))
        });
    let path = dir.join(name);
    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    out.insert("path".into(), path.display().to_string().into());
    Ok(serde_json::Value::Object(out))
}
