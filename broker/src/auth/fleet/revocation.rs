//! A fleet's revocation list: device ids and certificate serials, read from
//! a file and kept compact (a million ids take about their own length plus
//! 4 bytes each: one sorted arena, searched by bisection).
//!
//! ```text
//! # one entry per line
//! device dev-00017
//! dev-00018                 # a bare word is a device id
//! serial 4f:1a:09           # a certificate serial, hex, colons optional
//! ```

use crate::auth::AuthFileError;

/// Sorted strings in one allocation.
#[derive(Debug, Clone, Default)]
struct SortedSet {
    arena: String,
    /// Start of each entry in `arena`; entry i ends at `starts[i + 1]`.
    starts: Vec<u32>,
}

impl SortedSet {
    fn build(mut entries: Vec<&str>) -> SortedSet {
        entries.sort_unstable();
        entries.dedup();
        let mut set = SortedSet {
            arena: String::with_capacity(entries.iter().map(|e| e.len()).sum()),
            starts: Vec::with_capacity(entries.len()),
        };
        for entry in entries {
            set.starts.push(set.arena.len() as u32);
            set.arena.push_str(entry);
        }
        set.arena.shrink_to_fit();
        set
    }

    fn get(&self, index: usize) -> &str {
        let start = self.starts[index] as usize;
        let end = self
            .starts
            .get(index + 1)
            .map_or(self.arena.len(), |&end| end as usize);
        &self.arena[start..end]
    }

    fn contains(&self, value: &str) -> bool {
        let (mut low, mut high) = (0, self.starts.len());
        while low < high {
            let mid = (low + high) / 2;
            match self.get(mid).cmp(value) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.starts.capacity() * 4
    }
}

/// Revoked device ids and certificate serials.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    devices: SortedSet,
    /// Lowercase hex without colons or leading zeros.
    serials: SortedSet,
}

/// Why an entry is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Device,
    Serial,
}

impl Revocations {
    /// Parses a revocation file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Revocations, AuthFileError> {
        let mut devices = Vec::new();
        let mut serials = Vec::new();
        let mut normalized = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let invalid = |message: String| AuthFileError::Invalid {
                file: origin.to_owned(),
                line: Some(index + 1),
                message,
            };
            let (kind, value) = match line.split_once(char::is_whitespace) {
                Some((kind, value)) => (kind, value.trim()),
                None => ("device", line),
            };
            match kind {
                "device" if !value.contains(char::is_whitespace) => devices.push(value),
                "serial" => match normalize_serial(value) {
                    Some(serial) => normalized.push((index, serial)),
                    None => return Err(invalid(format!("`{value}` is not a hex serial number"))),
                },
                "device" => return Err(invalid(format!("`{value}`: a device id has no spaces"))),
                other => {
                    return Err(invalid(format!(
                        "unknown entry `{other}` (expected `device <id>`, `serial <hex>` or an id)"
                    )))
                }
            }
        }
        serials.extend(normalized.iter().map(|(_, s)| s.as_str()));
        Ok(Revocations {
            devices: SortedSet::build(devices),
            serials: SortedSet::build(serials),
        })
    }

    /// Whether the device, or the certificate with `serial` (lowercase hex
    /// as [`normalize_serial`] makes it), is revoked.
    pub fn check(&self, device_id: &str, serial: Option<&str>) -> Option<Revoked> {
        if self.devices.contains(device_id) {
            return Some(Revoked::Device);
        }
        match serial {
            Some(serial) if self.serials.contains(serial) => Some(Revoked::Serial),
            _ => None,
        }
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.devices.len() + self.serials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory the list holds, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.devices.heap_bytes() + self.serials.heap_bytes()
    }
}

/// A serial number as lowercase hex without separators or leading zeros
/// (`0A:1b` and `a1b` are the same serial).
pub fn normalize_serial(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

/// The serial of a certificate, normalized.
pub fn serial_of(raw: &[u8]) -> String {
    normalize_serial(&super::derived::hex(raw)).unwrap_or_else(|| "0".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_serials_are_found() {
        let list = Revocations::parse(
            "# revoked\n\ndevice dev-1\ndev-2   # bare\nserial 0A:1b:FF\nserial 00ff\n",
            "revoked",
        )
        .unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list.check("dev-1", None), Some(Revoked::Device));
        assert_eq!(list.check("dev-2", Some("1")), Some(Revoked::Device));
        assert_eq!(list.check("dev-3", None), None);
        assert_eq!(list.check("dev", None), None, "no prefix match");
        assert_eq!(list.check("dev-3", Some("a1bff")), Some(Revoked::Serial));
        assert_eq!(list.check("dev-3", Some("ff")), Some(Revoked::Serial));
        assert_eq!(list.check("dev-3", Some("fe")), None);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let error = Revocations::parse("dev-1\nserial xyz\n", "/r").unwrap_err();
        assert_eq!(error.to_string(), "/r:2: `xyz` is not a hex serial number");
        let error = Revocations::parse("cert abc\n", "/r").unwrap_err();
        assert!(error.to_string().starts_with("/r:1: unknown entry `cert`"));
        let error = Revocations::parse("device a b\n", "/r").unwrap_err();
        assert!(error.to_string().contains("no spaces"));
    }

    #[test]
    fn an_empty_list_revokes_nothing() {
        let list = Revocations::parse("", "r").unwrap();
        assert!(list.is_empty());
        assert_eq!(list.check("", None), None);
    }

    #[test]
    fn many_ids_stay_small_and_exact() {
        let text: String = (0..100_000).map(|i| format!("device-{i:07}\n")).collect();
        let list = Revocations::parse(&text, "r").unwrap();
        assert_eq!(list.len(), 100_000);
        assert!(list.heap_bytes() < 100_000 * (14 + 4) + 64);
        for i in (0..100_000).step_by(997) {
            assert!(list.check(&format!("device-{i:07}"), None).is_some());
        }
        assert!(list.check("device-0100000", None).is_none());
        assert!(list.check("device-00000", None).is_none());
    }

    #[test]
    fn serials_normalize() {
        assert_eq!(normalize_serial("0A:1b").as_deref(), Some("a1b"));
        assert_eq!(normalize_serial("00").as_deref(), Some("0"));
        assert_eq!(normalize_serial("").as_deref(), None);
        assert_eq!(serial_of(&[0x00, 0x4f, 0x1a]), "4f1a");
    }
}
