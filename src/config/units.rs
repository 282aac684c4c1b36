//! Human-friendly durations ("15s", "5m", "500ms") and sizes ("64MiB") in the TOML file.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration like \"15s\""))?;
        let duration = match unit.trim() {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" | "min" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "d" => Duration::from_secs(number.saturating_mul(86_400)),
            "" => {
                return Err(format!(
                    "`{text}` has no unit: write e.g. \"500ms\", \"15s\", \"5m\", \"1h\" or \"1d\""
                ))
            }
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}`, use ms, s, m, h or d"
                ))
            }
        };
        Ok(Self(duration))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A byte size written as a plain integer or `<number><unit>` with unit `B`, `KiB`, `MiB` or
/// `GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: usize = number
            .parse()
            .map_err(|_| format!("`{text}` is not a size like \"64MiB\""))?;
        let factor: usize = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "kB" | "KB" => 1 << 10,
            "MiB" | "MB" => 1 << 20,
            "GiB" | "GB" => 1 << 30,
            // kB/KB/MB/GB are taken as their binary cousins, as PostgreSQL does.
            _ => return Err(format!("`{text}`: unknown unit, use B, KiB, MiB or GiB")),
        };
        number
            .checked_mul(factor)
            .map(Self)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => usize::try_from(n).map(Self).map_err(de::Error::custom),
            Raw::Text(t) => Self::parse(&t).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            HumanDuration::parse("15s").unwrap().0,
            Duration::from_secs(15)
        );
        assert_eq!(
            HumanDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            HumanDuration::parse("5m").unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(
            HumanDuration::parse("1d").unwrap().0,
            Duration::from_secs(86_400)
        );
        assert!(HumanDuration::parse("15")
            .unwrap_err()
            .contains("has no unit"));
        assert!(HumanDuration::parse("s").is_err());
        let days = HumanDuration::parse("5 days").unwrap_err();
        assert!(days.contains("unknown unit `days`"), "{days}");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MiB").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("100").unwrap().0, 100);
        assert!(ByteSize::parse("1TiB").is_err());
    }
}
