//! Little-endian fields with bounds checks (decoding never reads past its
//! input and never allocates from a length it has not bounded), and the
//! 32-byte header that every file of this crate starts with.

/// Reads fixed-width little-endian fields from a byte slice.
pub(crate) struct Decoder<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes, position: 0 }
    }

    pub(crate) fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(length)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(crate) fn position(&self) -> usize {
        self.position
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.position..];
        self.position = self.bytes.len();
        rest
    }
}

pub(crate) fn put_u32(buffer: &mut Vec<u8>, value: u32) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(buffer: &mut Vec<u8>, value: u64) {
    buffer.extend_from_slice(&value.to_le_bytes());
}

/// A fixed 32-byte file header: magic, version, a file-specific number
/// (segment sequence, snapshot instance), and a checksum over them.
pub(crate) const FILE_HEADER_BYTES: usize = 32;

pub(crate) fn encode_file_header(magic: u64, version: u32, number: u64, extra: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(FILE_HEADER_BYTES);
    put_u64(&mut header, magic);
    put_u32(&mut header, version);
    put_u32(&mut header, extra);
    put_u64(&mut header, number);
    let crc = crc32c::crc32c(&header);
    put_u32(&mut header, crc);
    put_u32(&mut header, 0);
    assert_eq!(header.len(), FILE_HEADER_BYTES);
    header
}

/// Decodes a header written by [`encode_file_header`], returning
/// `(number, extra)`.
pub(crate) fn decode_file_header(
    file: &str,
    bytes: &[u8],
    magic_expected: u64,
    version_expected: u32,
) -> crate::Result<(u64, u32)> {
    use crate::StorageError;
    let mut decoder = Decoder::new(bytes);
    let truncated = || StorageError::Truncated {
        file: file.to_string(),
        offset: bytes.len() as u64,
        what: "file header",
    };
    if bytes.len() < FILE_HEADER_BYTES {
        return Err(truncated());
    }
    let magic = decoder.u64().ok_or_else(truncated)?;
    let version = decoder.u32().ok_or_else(truncated)?;
    let extra = decoder.u32().ok_or_else(truncated)?;
    let number = decoder.u64().ok_or_else(truncated)?;
    let covered = decoder.position();
    let crc = decoder.u32().ok_or_else(truncated)?;
    // The checksum first: a damaged header is corruption, while a header
    // that verifies but names another format is a foreign file.
    if crc != crc32c::crc32c(&bytes[..covered]) {
        return Err(StorageError::ChecksumMismatch {
            file: file.to_string(),
            offset: 0,
            what: "file header",
        });
    }
    if magic != magic_expected {
        return Err(StorageError::BadMagic {
            file: file.to_string(),
            found: magic,
            expected: magic_expected,
        });
    }
    if version != version_expected {
        return Err(StorageError::UnsupportedVersion {
            file: file.to_string(),
            found: version,
            expected: version_expected,
        });
    }
    Ok((number, extra))
}
