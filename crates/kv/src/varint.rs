//! The compact, deterministic binary encoding used for log entries and
//! snapshots: LEB128 varints, zigzag for signed values, length-prefixed bytes.
//!
//! Decoding never trusts a length or count: each is checked against the bytes
//! that remain before anything is allocated, so a malformed input costs at most
//! its own size in memory and returns [`KvError::Corrupt`].

use crate::error::KvError;

/// Appends encoded fields to a byte vector.
#[derive(Default)]
pub(crate) struct Encoder {
    pub(crate) bytes: Vec<u8>,
}

impl Encoder {
    pub(crate) fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    pub(crate) fn bool(&mut self, value: bool) {
        self.bytes.push(u8::from(value));
    }

    pub(crate) fn u64(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.bytes.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.bytes.push(value as u8);
    }

    pub(crate) fn i64(&mut self, value: i64) {
        self.u64(((value << 1) ^ (value >> 63)) as u64);
    }

    pub(crate) fn len(&mut self, value: usize) {
        self.u64(value as u64);
    }

    pub(crate) fn bytes(&mut self, value: &[u8]) {
        self.len(value.len());
        self.bytes.extend_from_slice(value);
    }

    pub(crate) fn u32_fixed(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn u64_fixed(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }
}

/// Reads fields from a byte slice, failing (never panicking) on bad input.
pub(crate) struct Decoder<'a> {
    bytes: &'a [u8],
}

const TRUNCATED: KvError = KvError::Corrupt("truncated input");

impl<'a> Decoder<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Decoder { bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, KvError> {
        let (&first, rest) = self.bytes.split_first().ok_or(TRUNCATED)?;
        self.bytes = rest;
        Ok(first)
    }

    pub(crate) fn bool(&mut self) -> Result<bool, KvError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(KvError::Corrupt("invalid boolean")),
        }
    }

    pub(crate) fn u64(&mut self) -> Result<u64, KvError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            if shift == 63 && byte > 1 {
                return Err(KvError::Corrupt("varint overflow"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(KvError::Corrupt("varint overflow"))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, KvError> {
        let raw = self.u64()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// A count of elements each taking at least `element_bytes_min` encoded
    /// bytes; rejected if the remaining input cannot hold that many.
    pub(crate) fn count(&mut self, element_bytes_min: usize) -> Result<usize, KvError> {
        let count = self.u64()?;
        let count = usize::try_from(count).map_err(|_| KvError::Corrupt("count too large"))?;
        if count.saturating_mul(element_bytes_min.max(1)) > self.bytes.len() {
            return Err(KvError::Corrupt("count exceeds input"));
        }
        Ok(count)
    }

    pub(crate) fn slice(&mut self) -> Result<&'a [u8], KvError> {
        let length = self.count(1)?;
        let (head, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, KvError> {
        Ok(self.slice()?.to_vec())
    }

    pub(crate) fn fixed<const N: usize>(&mut self) -> Result<[u8; N], KvError> {
        if self.bytes.len() < N {
            return Err(TRUNCATED);
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }

    pub(crate) fn u32_fixed(&mut self) -> Result<u32, KvError> {
        Ok(u32::from_le_bytes(self.fixed::<4>()?))
    }

    pub(crate) fn u64_fixed(&mut self) -> Result<u64, KvError> {
        Ok(u64::from_le_bytes(self.fixed::<8>()?))
    }

    pub(crate) fn finish(&self) -> Result<(), KvError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(KvError::Corrupt("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        let values = [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1 << 40];
        let mut encoder = Encoder::default();
        for value in values {
            encoder.i64(value);
            encoder.u64(value as u64);
        }
        let mut decoder = Decoder::new(&encoder.bytes);
        for value in values {
            assert_eq!(decoder.i64().unwrap(), value);
            assert_eq!(decoder.u64().unwrap(), value as u64);
        }
        decoder.finish().unwrap();
    }

    #[test]
    fn malformed_varints_and_lengths_are_errors() {
        assert!(Decoder::new(&[0xff; 11]).u64().is_err());
        assert!(Decoder::new(&[0x80]).u64().is_err());
        // A length far beyond the input must not allocate.
        assert!(Decoder::new(&[0xff, 0xff, 0xff, 0xff, 0x0f]).bytes().is_err());
        assert!(Decoder::new(&[2]).bool().is_err());
    }
}
