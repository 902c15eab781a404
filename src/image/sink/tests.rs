//! Resumed and truncated compressed downloads.

use super::*;
use async_compression::tokio::write::XzEncoder;

fn xz(data: &[u8]) -> Vec<u8> {
    let mut encoder = XzEncoder::new(Vec::new());
    let done = async {
        encoder.write_all(data).await?;
        encoder.shutdown().await
    };
    done.now_or_never().expect("in memory").expect("encode");
    encoder.into_inner()
}

fn temps(dir: &Path) -> Temps {
    Temps::for_target(&dir.join("disk.raw"))
}

#[test]
fn a_resumed_compressed_download_replays_the_partial_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let temps = temps(dir.path());
    let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let packed = xz(&data);
    let (first, rest) = packed.split_at(packed.len() / 2);

    let mut sink = Sink::open(&temps, None, false, None, "t").expect("open");
    sink.feed(first).expect("feed");
    assert_eq!(sink.keep_partial().expect("keep"), first.len() as u64);

    let mut sink = Sink::open(&temps, None, true, None, "t").expect("resume");
    assert_eq!(sink.received(), first.len() as u64);
    sink.feed(rest).expect("feed");
    let finished = sink.finish().expect("finish");
    assert_eq!(finished.compression, Compression::Xz, "found by magic");
    assert_eq!(finished.sha256, hex(&Sha256::digest(&packed)));
    assert_eq!(std::fs::read(&finished.image).expect("unpacked"), data);
}

#[test]
fn a_compressed_stream_cut_short_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = vec![7u8; 100_000];
    let packed = xz(&data);
    let mut sink =
        Sink::open(&temps(dir.path()), Some(Compression::Xz), false, None, "t").expect("open");
    sink.feed(&packed[..packed.len() - 10]).expect("feed");
    let err = sink.finish().expect_err("truncated");
    assert!(matches!(err, ImageError::Decompress { .. }), "{err:?}");
}
