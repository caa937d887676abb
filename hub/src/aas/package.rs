//! The `.aasx` package (AAS Part 5, IDTA-01005): an Open Packaging Conventions zip with
//! `[Content_Types].xml`, the package relationships pointing at the `aasx-origin` part, whose
//! own relationships point at the environment, here as JSON.
//!
//! The zip is written here with stored (uncompressed) entries: a package is a few tens of KiB
//! of JSON, and a hundred lines of format code cost less than a compression dependency.

use crc::{CRC_32_ISO_HDLC, Crc};

/// The relationship type from the package root to the origin part.
pub const ORIGIN_RELATIONSHIP: &str = "http://admin-shell.io/aasx/relationships/aasx-origin";
/// The relationship type from the origin part to an environment.
pub const SPEC_RELATIONSHIP: &str = "http://admin-shell.io/aasx/relationships/aas-spec";
/// The package's media type.
pub const CONTENT_TYPE: &str = "application/asset-administration-shell-package";

const ORIGIN_PART: &str = "aasx/aasx-origin";

/// An `.aasx` holding one environment (JSON) under `aasx/{name}/{name}.aas.json`; `name` must
/// be an idShort (letters, digits, `_`), so it needs no escaping in a part name or in XML.
pub fn aasx(name: &str, environment_json: &[u8]) -> Vec<u8> {
    let spec_part = format!("aasx/{name}/{name}.aas.json");
    let content_types = concat!(
        r#"<?xml version="1.0" encoding="utf-8"?>"#,
        r#"<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">"#,
        r#"<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>"#,
        r#"<Default Extension="json" ContentType="application/json"/>"#,
        r#"<Override PartName="/aasx/aasx-origin" ContentType="text/plain"/>"#,
        r#"</Types>"#,
    );
    let root_rels = relationships(ORIGIN_RELATIONSHIP, &format!("/{ORIGIN_PART}"));
    let origin_rels = relationships(SPEC_RELATIONSHIP, &format!("/{spec_part}"));
    let mut zip = ZipWriter::default();
    zip.add("[Content_Types].xml", content_types.as_bytes());
    zip.add("_rels/.rels", root_rels.as_bytes());
    zip.add(ORIGIN_PART, b"Intentionally empty.");
    zip.add("aasx/_rels/aasx-origin.rels", origin_rels.as_bytes());
    zip.add(&spec_part, environment_json);
    zip.finish()
}

fn relationships(kind: &str, target: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Type="{kind}" Target="{target}" Id="R1"/></Relationships>"#
    )
}

/// A zip archive of stored entries (APPNOTE.TXT 6.3: local headers, central directory, end
/// record). Entries and the archive stay far below the 4 GiB that would need ZIP64.
#[derive(Default)]
struct ZipWriter {
    out: Vec<u8>,
    central: Vec<u8>,
    entries: u16,
}

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
/// 1980-01-01 00:00 in MS-DOS date format, the earliest a zip can say: a fixed time keeps the
/// package for a given twin state byte-identical.
const DOS_DATE: u16 = (1 << 5) | 1;
/// Version 2.0: what stored entries and directories need.
const VERSION: u16 = 20;
/// Bit 11: names are UTF-8.
const FLAGS: u16 = 1 << 11;

impl ZipWriter {
    fn add(&mut self, name: &str, data: &[u8]) {
        let crc = CRC32.checksum(data);
        let offset = u32::try_from(self.out.len()).unwrap_or(u32::MAX);
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        let out = &mut self.out;
        out.extend_from_slice(&0x0403_4b50_u32.to_le_bytes());
        for field in [VERSION, FLAGS, 0, 0, DOS_DATE] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        for field in [crc, size, size] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0_u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);

        let central = &mut self.central;
        central.extend_from_slice(&0x0201_4b50_u32.to_le_bytes());
        for field in [VERSION, VERSION, FLAGS, 0, 0, DOS_DATE] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        for field in [crc, size, size] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        // Name length, extra, comment, disk, internal attributes; then external attributes
        // and the local header's offset.
        for field in [name_len, 0, 0, 0, 0] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        for field in [0, offset] {
            central.extend_from_slice(&field.to_le_bytes());
        }
        central.extend_from_slice(name.as_bytes());
        self.entries += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        let offset = u32::try_from(self.out.len()).unwrap_or(u32::MAX);
        let size = u32::try_from(self.central.len()).unwrap_or(u32::MAX);
        self.out.append(&mut self.central);
        self.out.extend_from_slice(&0x0605_4b50_u32.to_le_bytes());
        for field in [0, 0, self.entries, self.entries] {
            self.out.extend_from_slice(&field.to_le_bytes());
        }
        for field in [size, offset] {
            self.out.extend_from_slice(&field.to_le_bytes());
        }
        self.out.extend_from_slice(&0_u16.to_le_bytes());
        self.out
    }
}

/// The entries of a stored-only zip, read back from its central directory: (name, data).
/// For tests of this writer and of the served packages; `None` for anything it did not write.
pub fn read_stored_zip(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let end = bytes.len().checked_sub(22)?;
    if u32_at(end)? != 0x0605_4b50 {
        return None;
    }
    let count = usize::from(u16_at(end + 10)?);
    let mut at = usize::try_from(u32_at(end + 16)?).ok()?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        if u32_at(at)? != 0x0201_4b50 || u16_at(at + 10)? != 0 {
            return None;
        }
        let crc = u32_at(at + 16)?;
        let size = usize::try_from(u32_at(at + 20)?).ok()?;
        let name_len = usize::from(u16_at(at + 28)?);
        let skip = usize::from(u16_at(at + 30)?) + usize::from(u16_at(at + 32)?);
        let local = usize::try_from(u32_at(at + 42)?).ok()?;
        let name = String::from_utf8(bytes.get(at + 46..at + 46 + name_len)?.to_vec()).ok()?;
        let local_name_len = usize::from(u16_at(local + 26)?);
        let local_extra = usize::from(u16_at(local + 28)?);
        let start = local + 30 + local_name_len + local_extra;
        let data = bytes.get(start..start + size)?.to_vec();
        if CRC32.checksum(&data) != crc {
            return None;
        }
        entries.push((name, data));
        at += 46 + name_len + skip;
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_has_the_opc_parts_and_the_environment() {
        let package = aasx("lab_a__mill_1", br#"{"submodels":[]}"#);
        let entries = read_stored_zip(&package).expect("a zip this module reads");
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "[Content_Types].xml",
                "_rels/.rels",
                "aasx/aasx-origin",
                "aasx/_rels/aasx-origin.rels",
                "aasx/lab_a__mill_1/lab_a__mill_1.aas.json",
            ]
        );
        let text = |i: usize| String::from_utf8(entries[i].1.clone()).expect("utf-8");
        assert!(text(1).contains(ORIGIN_RELATIONSHIP) && text(1).contains("/aasx/aasx-origin"));
        assert!(text(3).contains(SPEC_RELATIONSHIP));
        assert!(text(3).contains("Target=\"/aasx/lab_a__mill_1/lab_a__mill_1.aas.json\""));
        assert_eq!(entries[4].1, br#"{"submodels":[]}"#);
    }

    #[test]
    fn the_same_content_gives_the_same_bytes() {
        assert_eq!(aasx("a", b"{}"), aasx("a", b"{}"));
    }

    #[test]
    fn a_damaged_zip_is_refused_not_read() {
        let mut package = aasx("a", br#"{"x":1}"#);
        let at = package
            .windows(7)
            .position(|w| w == br#"{"x":1}"#)
            .expect("stored as is");
        package[at + 5] = b'2';
        assert_eq!(read_stored_zip(&package), None, "the CRC catches it");
        assert_eq!(read_stored_zip(b"not a zip"), None);
    }
}
