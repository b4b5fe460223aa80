//! A bounds check of MessagePack bytes (Burn's `NamedMpk` records) before a decoder sees them.
//!
//! Burn 0.21 decodes a tensor's shape into a `SmallVec`, which reserves whatever element count
//! the file claims: a 124-byte `model.mpk` claiming a shape of 1.9 billion dimensions asked for
//! 16 GB (found by fuzzing `checkpoint_mpk`). This walk reads only the type tags and length
//! prefixes and refuses any length the remaining bytes cannot hold (every element takes at
//! least one byte), so whatever a decoder then reserves is bounded by the file's size.

/// Checks that `bytes` begin with one complete MessagePack value whose every string, binary,
/// extension, array and map length fits in the bytes that follow it. Trailing bytes are left
/// to the decoder. The message names the byte offset of the first bad length.
pub(crate) fn check_claims(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut pos = 0usize;
    // values still to be read: each needs at least one byte
    let mut pending: u64 = 1;
    while pending > 0 {
        let start = pos;
        let Some(&tag) = bytes.get(pos) else {
            return Err(format!(
                "ends at byte {pos} with {pending} value(s) still to come"
            ));
        };
        pos += 1;
        pending -= 1;
        let mut len = |n: usize| -> std::result::Result<u64, String> {
            let field = bytes
                .get(pos..pos + n)
                .ok_or_else(|| format!("byte {start}: its length field runs past the end"))?;
            pos += n;
            Ok(field.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
        };
        // (payload bytes to skip, values contained)
        let (skip, items): (u64, u64) = match tag {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(tag & 0x0f)),
            0x90..=0x9f => (0, u64::from(tag & 0x0f)),
            0xa0..=0xbf => (u64::from(tag & 0x1f), 0),
            0xc1 => return Err(format!("byte {start}: 0xc1 is not a MessagePack type")),
            0xc4 | 0xd9 => (len(1)?, 0),
            0xc5 | 0xda => (len(2)?, 0),
            0xc6 | 0xdb => (len(4)?, 0),
            0xc7 => (len(1)? + 1, 0),
            0xc8 => (len(2)? + 1, 0),
            0xc9 => (len(4)? + 1, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, len(2)?),
            0xdd => (0, len(4)?),
            0xde => (0, 2 * len(2)?),
            0xdf => (0, 2 * len(4)?),
        };
        let left = (bytes.len() - pos) as u64;
        if skip > left {
            return Err(format!("byte {start}: claims {skip} bytes, {left} follow"));
        }
        pos += skip as usize;
        pending += items;
        let left = (bytes.len() - pos) as u64;
        if pending > left {
            return Err(format!(
                "byte {start}: claims {items} elements, {left} bytes follow"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_claims;

    #[test]
    fn whole_values_pass_and_overlong_claims_fail() {
        // {"a": [1, 2.5f32, "xy"], "b": bin[3]}
        let good = [
            0x82, 0xa1, b'a', 0x93, 0x01, 0xca, 0, 0, 0x20, 0x40, 0xa2, b'x', b'y', 0xa1, b'b', 0xc4, 3, 7,
            8, 9,
        ];
        assert_eq!(check_claims(&good), Ok(()));
        // every proper prefix is truncated somewhere
        for n in 0..good.len() {
            assert!(check_claims(&good[..n]).is_err(), "prefix of {n} bytes passed");
        }
        // an array32 claiming 1,942,254,848 elements in a few bytes (the fuzzer's find)
        let claim = [0xdd, 0x73, 0xc4, 0x75, 0x00, 0x01, 0x02];
        let e = check_claims(&claim).unwrap_err();
        assert!(e.contains("1942254848 elements"), "{e}");
        // a str32 claiming more bytes than follow; a map16 claiming 2·n values
        assert!(check_claims(&[0xdb, 0, 0, 1, 0, b'a']).is_err());
        assert!(check_claims(&[0xde, 0, 2, 1, 2, 3]).is_err());
        assert_eq!(check_claims(&[0xde, 0, 2, 1, 2, 3, 4]), Ok(()));
        assert!(check_claims(&[0xc1]).is_err());
    }
}
