//! How backup files are compressed: `none`, `gzip[:level]`, `zstd[:level]` (default zstd,
//! level 3, on all cores). opsrunner compresses itself rather than asking pg_dump to: PG 15's
//! pg_dump knows only single-threaded gzip, which is the slowest part of a backup.

use async_compression::Level;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use tokio::io::{AsyncBufRead, AsyncRead};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub algorithm: Algorithm,
    pub level: Option<i32>,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            algorithm: Algorithm::Zstd,
            level: None,
        }
    }
}

impl Compression {
    pub fn parse(text: &str) -> Result<Compression, String> {
        let (name, level) = match text.split_once(':') {
            Some((n, l)) => (
                n,
                Some(
                    l.parse::<i32>()
                        .map_err(|_| format!("`{l}` is not a compression level"))?,
                ),
            ),
            None => (text, None),
        };
        let algorithm = match name {
            "none" => Algorithm::None,
            "gzip" => Algorithm::Gzip,
            "zstd" => Algorithm::Zstd,
            other => {
                return Err(format!(
                    "unknown compression `{other}`; use none, gzip[:1-9] or zstd[:1-19]"
                ));
            }
        };
        let range = match algorithm {
            Algorithm::None => 0..=0,
            Algorithm::Gzip => 1..=9,
            Algorithm::Zstd => 1..=19,
        };
        if let Some(l) = level
            && (algorithm == Algorithm::None || !range.contains(&l))
        {
            return Err(format!(
                "level {l} is out of range for {name} ({}–{})",
                range.start(),
                range.end()
            ));
        }
        Ok(Compression { algorithm, level })
    }

    /// The file name suffix: `.zst`, `.gz` or nothing.
    pub fn extension(&self) -> &'static str {
        match self.algorithm {
            Algorithm::None => "",
            Algorithm::Gzip => ".gz",
            Algorithm::Zstd => ".zst",
        }
    }

    fn level(&self) -> Level {
        self.level.map_or(Level::Default, Level::Precise)
    }

    /// Wraps a reader of raw bytes into a reader of compressed bytes.
    pub fn encoder<'a>(
        &self,
        input: impl AsyncBufRead + Send + 'a,
        threads: u32,
    ) -> Pin<Box<dyn AsyncRead + Send + 'a>> {
        use async_compression::tokio::bufread::{GzipEncoder, ZstdEncoder};
        match self.algorithm {
            Algorithm::None => Box::pin(input),
            Algorithm::Gzip => Box::pin(GzipEncoder::with_quality(input, self.level())),
            Algorithm::Zstd => {
                let level = self.level.map_or(Level::Precise(3), Level::Precise);
                if threads > 1 {
                    let params = [async_compression::zstd::CParameter::nb_workers(threads)];
                    Box::pin(ZstdEncoder::with_quality_and_params(input, level, &params))
                } else {
                    Box::pin(ZstdEncoder::with_quality(input, level))
                }
            }
        }
    }

    /// A compressor that writes into memory, for a stream of unknown pace (a pipe from
    /// pg_dump or pg_basebackup). Unlike [`Compression::encoder`], which flushes its codec
    /// whenever its input has nothing ready (async-compression's reader does, so that
    /// output keeps flowing), this one flushes only at the end: the output, and its size,
    /// do not depend on how the input arrived, and zstd's workers get whole jobs.
    pub fn compressor(&self, threads: u32) -> Compressor {
        Compressor {
            codec: self.codec(threads),
            compression: *self,
            threads,
        }
    }

    fn codec(&self, threads: u32) -> Codec {
        use async_compression::tokio::write::{GzipEncoder, ZstdEncoder};
        match self.algorithm {
            Algorithm::None => Codec::None(Vec::new()),
            Algorithm::Gzip => Codec::Gzip(GzipEncoder::with_quality(Vec::new(), self.level())),
            Algorithm::Zstd => {
                let level = self.level.map_or(Level::Precise(3), Level::Precise);
                Codec::Zstd(if threads > 1 {
                    // zstd's own job size at level 3 is 8 MiB, and its workers keep several
                    // jobs' input and output buffered: 55 MiB more resident memory on two
                    // cores. 2 MiB jobs measured 46 MiB for the whole backup, no slower,
                    // and the output no larger (BENCHMARKS.md, issue 14).
                    let params = [
                        async_compression::zstd::CParameter::nb_workers(threads),
                        async_compression::zstd::CParameter::job_size(ZSTD_JOB),
                    ];
                    ZstdEncoder::with_quality_and_params(Vec::new(), level, &params)
                } else {
                    ZstdEncoder::with_quality(Vec::new(), level)
                })
            }
        }
    }

    /// Wraps a reader of compressed bytes into a reader of raw bytes.
    pub fn decoder<'a>(
        &self,
        input: impl AsyncBufRead + Send + 'a,
    ) -> Pin<Box<dyn AsyncRead + Send + 'a>> {
        use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
        // A file may hold several frames (gzip members), one after the other: see
        // [`Compressor::end_frame`]. Both formats define their concatenation as the
        // concatenation of what they hold.
        match self.algorithm {
            Algorithm::None => Box::pin(input),
            Algorithm::Gzip => {
                let mut d = GzipDecoder::new(input);
                d.multiple_members(true);
                Box::pin(d)
            }
            Algorithm::Zstd => {
                let mut d = ZstdDecoder::new(input);
                d.multiple_members(true);
                Box::pin(d)
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.algorithm {
            Algorithm::None => "none",
            Algorithm::Gzip => "gzip",
            Algorithm::Zstd => "zstd",
        };
        match self.level {
            Some(l) => write!(f, "{name}:{l}"),
            None => f.write_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Compression::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The size of a zstd worker's job when compressing on several cores.
const ZSTD_JOB: u32 = 2 << 20;

/// See [`Compression::compressor`].
pub struct Compressor {
    codec: Codec,
    compression: Compression,
    threads: u32,
}

enum Codec {
    None(Vec<u8>),
    Gzip(async_compression::tokio::write::GzipEncoder<Vec<u8>>),
    Zstd(async_compression::tokio::write::ZstdEncoder<Vec<u8>>),
}

impl Compressor {
    /// Compresses `raw`; returns the compressed bytes produced so far (often none: the
    /// codec keeps what it has not finished).
    pub async fn push(&mut self, raw: &[u8]) -> std::io::Result<Vec<u8>> {
        use tokio::io::AsyncWriteExt;
        Ok(match &mut self.codec {
            Codec::None(_) => raw.to_vec(),
            Codec::Gzip(e) => {
                e.write_all(raw).await?;
                std::mem::take(e.get_mut())
            }
            Codec::Zstd(e) => {
                e.write_all(raw).await?;
                std::mem::take(e.get_mut())
            }
        })
    }

    /// Ends the frame (gzip member) being written and starts another: what follows can
    /// be decompressed without what came before, so a reader can start there. Returns
    /// the rest of the ended frame's bytes.
    pub async fn end_frame(&mut self) -> std::io::Result<Vec<u8>> {
        let next = self.compression.codec(self.threads);
        let ended = std::mem::replace(&mut self.codec, next);
        Self::finish_codec(ended).await
    }

    /// Ends the stream; returns the rest of the compressed bytes.
    pub async fn finish(self) -> std::io::Result<Vec<u8>> {
        Self::finish_codec(self.codec).await
    }

    async fn finish_codec(codec: Codec) -> std::io::Result<Vec<u8>> {
        use tokio::io::AsyncWriteExt;
        Ok(match codec {
            Codec::None(rest) => rest,
            Codec::Gzip(mut e) => {
                e.shutdown().await?;
                e.into_inner()
            }
            Codec::Zstd(mut e) => {
                e.shutdown().await?;
                e.into_inner()
            }
        })
    }
}

impl Serialize for Compression {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl JsonSchema for Compression {
    fn schema_name() -> Cow<'static, str> {
        "Compression".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(none|gzip(:[1-9])?|zstd(:([1-9]|1[0-9]))?)$",
            "description": "`none`, `gzip[:1-9]` or `zstd[:1-19]` (default `zstd`, level 3).",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text that compresses across long distances, like repeated TOAST values.
    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..3000u32 {
            let word = format!("{:08x}", i.wrapping_mul(2654435761));
            out.extend(word.repeat(64).bytes());
            out.extend((0..512u32).map(|j| (i.wrapping_mul(31).wrapping_add(j * 7) % 251) as u8));
        }
        out
    }

    async fn compress(c: Compression, data: &[u8], piece: usize) -> Vec<u8> {
        let mut compressor = c.compressor(2);
        let mut out = Vec::new();
        for chunk in data.chunks(piece) {
            out.extend(compressor.push(chunk).await.unwrap());
        }
        out.extend(compressor.finish().await.unwrap());
        out
    }

    #[tokio::test]
    async fn the_output_does_not_depend_on_how_the_input_arrives() {
        use tokio::io::AsyncReadExt;
        let data = sample();
        for c in ["zstd", "zstd:1", "gzip", "none"] {
            let c = Compression::parse(c).unwrap();
            let whole = compress(c, &data, data.len()).await;
            for piece in [1000, 65536, 1 << 20] {
                assert_eq!(
                    compress(c, &data, piece).await,
                    whole,
                    "{c} in pieces of {piece}"
                );
            }
            let mut back = Vec::new();
            c.decoder(&whole[..]).read_to_end(&mut back).await.unwrap();
            assert_eq!(back, data, "{c}");
        }
    }
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_reader_can_start_at_any_frame_and_the_whole_still_reads_as_one() {
        let data = sample();
        let cuts = [0, data.len() / 3, data.len() / 2 + 17];
        for c in ["zstd", "gzip", "none"] {
            let c = Compression::parse(c).unwrap();
            let mut compressor = c.compressor(2);
            let mut out = Vec::new();
            let mut starts = Vec::new();
            for (i, &cut) in cuts.iter().enumerate() {
                if i > 0 {
                    out.extend(compressor.end_frame().await.unwrap());
                }
                starts.push(out.len());
                let end = cuts.get(i + 1).copied().unwrap_or(data.len());
                out.extend(compressor.push(&data[cut..end]).await.unwrap());
            }
            out.extend(compressor.finish().await.unwrap());
            let mut back = Vec::new();
            c.decoder(&out[..]).read_to_end(&mut back).await.unwrap();
            assert!(back == data, "{c}: the whole");
            for (cut, at) in cuts.iter().zip(&starts) {
                let mut back = Vec::new();
                c.decoder(&out[*at..]).read_to_end(&mut back).await.unwrap();
                assert!(back == data[*cut..], "{c}: from {cut}");
            }
        }
    }

    #[test]
    fn parses_levels_and_rejects_nonsense() {
        assert_eq!(Compression::parse("zstd:19").unwrap().level, Some(19));
        assert_eq!(
            Compression::parse("gzip").unwrap().algorithm,
            Algorithm::Gzip
        );
        assert!(Compression::parse("zstd:22").is_err());
        assert!(Compression::parse("none:1").is_err());
        assert!(Compression::parse("lz4").is_err());
    }

    #[tokio::test]
    async fn round_trips_every_algorithm() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in ["none", "gzip:1", "zstd", "zstd:5"] {
            let c = Compression::parse(c).unwrap();
            let mut compressed = Vec::new();
            c.encoder(&data[..], 2)
                .read_to_end(&mut compressed)
                .await
                .unwrap();
            let mut back = Vec::new();
            c.decoder(&compressed[..])
                .read_to_end(&mut back)
                .await
                .unwrap();
            assert_eq!(back, data, "{c}");
        }
    }
}
