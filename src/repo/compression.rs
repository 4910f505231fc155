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

    /// Wraps a reader of compressed bytes into a reader of raw bytes.
    pub fn decoder<'a>(
        &self,
        input: impl AsyncBufRead + Send + 'a,
    ) -> Pin<Box<dyn AsyncRead + Send + 'a>> {
        use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
        match self.algorithm {
            Algorithm::None => Box::pin(input),
            Algorithm::Gzip => Box::pin(GzipDecoder::new(input)),
            Algorithm::Zstd => Box::pin(ZstdDecoder::new(input)),
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
    use tokio::io::AsyncReadExt;

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
